# distutils: language = c++
"""Compiled core of the key cache (LRU, LFU, none): one batch of int64 keys per call, no Python object
touched per key. `simulator/cache.py` is the public wrapper and documents the semantics.

Data structures, all flat C++ vectors indexed by int32:

* slots[capacity] -- one per cached key: the key, `stamp` (the epoch of the last call that touched it,
  so a second occurrence in the same call is recognised in O(1)), `hit` (whether that touch was a hit),
  and the prev/next links of an intrusive doubly linked list. Slots are handed out 0, 1, 2, ... until
  the cache is full; after that a miss reuses the victim's slot, so there is no free list.
* table -- open-addressing hash map key -> slot: a power of two >= 4 * capacity buckets (load <= 1/4;
  at 1/2 the mispredicted probe-loop branches made a cache-resident miss ~1.7x slower), multiplicative
  (Fibonacci) hashing, linear probing, backward-shift deletion (no tombstones, so probes never degrade).
* LRU: one list over the slots; head = most recently used, tail = the victim.
* LFU (Shah, Mitra & Matani 2010, O(1) per operation): buckets[capacity], a doubly linked list of
  frequency buckets in increasing count order, each holding the list of its slots, most recent first.
  A hit moves the slot to the bucket of count + 1 (created next to it if missing; if the slot is alone
  in its bucket and no such bucket exists, the count is bumped in place); a new key joins the count-1
  bucket; the victim is the least recent slot of the lowest bucket. Empty buckets go on a free list
  (through `next`); there are never more buckets than cached keys, so `capacity` of them suffice.
* ghost -- a per-call hash set of keys seen in the call but not in the cache: keys evicted later in the
  same call (more distinct keys than slots, or LFU newcomers displacing each other) and, with capacity
  0, every key. Later occurrences of them are then repeats too. An entry is live only while its stamp
  equals the call's epoch, so the set never needs clearing; it is sized on first use in a call.

Large arrays are allocated on 2 MiB boundaries with MADV_HUGEPAGE where available: with 4 KiB pages
the table and slots of a 10^5-key cache span thousands of pages and TLB misses add to every key.
"""

from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)
from libc.stdint cimport int8_t, int32_t, int64_t, uint64_t
from libcpp.vector cimport vector

cdef extern from *:
    """
    #include <cstdlib>
    #include <new>
    #include <sys/mman.h>

    static inline uint64_t jizhi_hash(int64_t key, int shift) {
        return ((uint64_t)key * 0x9E3779B97F4A7C15ULL) >> shift;
    }
    #define jizhi_prefetch(p) __builtin_prefetch((const void*)(p))

    template <class T> struct JizhiHugeAlloc {  /* std::allocator, but huge-page backed when large */
        typedef T value_type;
        JizhiHugeAlloc() noexcept {}
        template <class U> JizhiHugeAlloc(const JizhiHugeAlloc<U>&) noexcept {}
        T* allocate(size_t n) {
            const size_t huge = (size_t)2 << 20;
            size_t bytes = n * sizeof(T);
            void* p = nullptr;
            if (bytes >= huge) {
                bytes = (bytes + huge - 1) & ~(huge - 1);
                if (posix_memalign(&p, huge, bytes) != 0) throw std::bad_alloc();
    #ifdef MADV_HUGEPAGE
                madvise(p, bytes, MADV_HUGEPAGE);
    #endif
            } else if (!(p = std::malloc(bytes ? bytes : 1))) {
                throw std::bad_alloc();
            }
            return static_cast<T*>(p);
        }
        void deallocate(T* p, size_t) noexcept { std::free(p); }
        template <class U> bool operator==(const JizhiHugeAlloc<U>&) const noexcept { return true; }
        template <class U> bool operator!=(const JizhiHugeAlloc<U>&) const noexcept { return false; }
    };
    """
    uint64_t jizhi_hash(int64_t key, int shift) nogil
    void jizhi_prefetch(const void* p) nogil
    cppclass JizhiHugeAlloc[T]:
        pass

cdef enum:   # policy codes, mirrored in cache.py
    NONE = 0
    LRU = 1
    LFU = 2
cdef enum:   # per-position statuses, mirrored by cache.CacheStatus
    HIT = 0
    MISS = 1
    REPEAT = 2

# NOTE: software pipelining, for speed (5-10% per key once the tables outgrow L2). While handling key i
# the loop prefetches key i+16's table bucket, key i+8's slot and key i+4's list neighbours, reading
# the slot from the table bucket (a wrong guess, e.g. after a collision, only wastes the prefetch).
cdef enum:
    AHEAD_TABLE = 16
    AHEAD_SLOT = 8
    AHEAD_LINKS = 4

cdef struct Slot:    # 32 bytes
    int64_t key
    uint64_t stamp   # epoch of the last call that touched this key
    int32_t prev     # towards the list head (more recent)
    int32_t next     # towards the list tail (less recent)
    int32_t bucket   # LFU: the frequency bucket holding this slot
    int8_t hit       # the touch at `stamp` was a hit (1) or an insertion (0)

cdef struct Entry:
    int64_t key
    int32_t slot     # -1: empty

cdef struct Bucket:
    int64_t count
    int32_t prev, next   # bucket list, increasing count
    int32_t head, tail   # its slots, most recent first

cdef struct Ghost:
    int64_t key
    uint64_t stamp   # live iff == the current epoch


cdef int _borrow(object obj, Py_buffer* view, Py_ssize_t itemsize, bint writable) except -1:
    """Borrow obj's memory as a C-contiguous 1-D signed integer array of `itemsize` bytes.
    NOTE: the raw buffer protocol costs ~150 ns per array here; a typed memoryview ~450 ns."""
    PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (PyBUF_WRITABLE if writable else 0))
    cdef const char* f = view.format
    if f[0] == b'@' or f[0] == b'=' or f[0] == b'<':
        f += 1
    cdef bint code_ok = f[0] == b'b' if itemsize == 1 else (f[0] == b'l' or f[0] == b'q')
    if not (view.ndim == 1 and view.itemsize == itemsize and code_ok and f[1] == 0):
        PyBuffer_Release(view)
        raise ValueError(f"expected a contiguous 1-D int{8 * itemsize} array")
    return 0


cdef int _table_bits(int64_t n) noexcept:
    """log2 of the smallest power of two >= max(n, 4)."""
    cdef int bits = 2
    while (<int64_t>1 << bits) < n:
        bits += 1
    return bits


cdef inline void _list_push(Slot* slots, int32_t* head, int32_t* tail, int32_t s) noexcept nogil:
    slots[s].prev = -1
    slots[s].next = head[0]
    if head[0] >= 0:
        slots[head[0]].prev = s
    else:
        tail[0] = s
    head[0] = s


cdef inline void _list_remove(Slot* slots, int32_t* head, int32_t* tail, int32_t s) noexcept nogil:
    cdef int32_t p = slots[s].prev, n = slots[s].next
    if p >= 0:
        slots[p].next = n
    else:
        head[0] = n
    if n >= 0:
        slots[n].prev = p
    else:
        tail[0] = p


cdef class CacheCore:
    cdef readonly int policy
    cdef readonly int64_t capacity
    cdef int64_t size, total_hits, total_misses
    cdef uint64_t epoch
    cdef vector[Slot, JizhiHugeAlloc[Slot]] slots
    cdef vector[Entry, JizhiHugeAlloc[Entry]] table
    cdef uint64_t mask
    cdef int shift
    cdef int32_t lru_head, lru_tail
    cdef vector[Bucket, JizhiHugeAlloc[Bucket]] buckets
    cdef int32_t low_bucket, free_bucket   # LFU: the lowest-count bucket; head of the free list
    cdef vector[Ghost] ghost
    cdef uint64_t ghost_mask
    cdef int ghost_shift

    def __cinit__(self, int policy, int64_t capacity):
        if policy not in (NONE, LRU, LFU) or not 0 <= capacity <= (1 << 30):
            raise ValueError(f"bad cache core arguments: policy={policy}, capacity={capacity}")
        self.policy = policy
        self.capacity = 0 if policy == NONE else capacity
        cdef int bits = _table_bits(4 * self.capacity)
        self.table.resize(<size_t>1 << bits)
        self.mask = (<uint64_t>1 << bits) - 1
        self.shift = 64 - bits
        self.slots.resize(self.capacity)
        if policy == LFU:
            self.buckets.resize(self.capacity)
        self.clear()

    def clear(self):
        """Empty the cache and zero the counters."""
        cdef size_t i
        for i in range(self.table.size()):
            self.table[i].slot = -1
        self.size = 0
        self.total_hits = 0
        self.total_misses = 0
        self.lru_head = -1
        self.lru_tail = -1
        self.low_bucket = -1
        self.free_bucket = 0 if self.buckets.size() > 0 else -1
        for i in range(self.buckets.size()):
            self.buckets[i].next = i + 1 if i + 1 < self.buckets.size() else -1
        # The epoch keeps counting up across clear(), so old slot and ghost stamps never match again.

    def __len__(self):
        return self.size

    @property
    def hits(self):
        return self.total_hits

    @property
    def misses(self):
        return self.total_misses

    def contains(self, int64_t key):
        return self.table[self._probe(key)].slot >= 0

    def access(self, object keys):
        """Replay one call's keys (contiguous 1-D int64); returns (hits, misses) over distinct keys."""
        cdef Py_buffer kb
        _borrow(keys, &kb, 8, False)
        try:
            return self._run(<const int64_t*>kb.buf, kb.shape[0], NULL, NULL)
        finally:
            PyBuffer_Release(&kb)

    def lookup(self, object keys, object slots_out, object status_out):
        """As access, and writes each position's slot (int64, or -1) and status (int8)."""
        cdef Py_buffer buf[3]
        cdef int held = 0
        try:
            _borrow(keys, &buf[0], 8, False)
            held = 1
            _borrow(slots_out, &buf[1], 8, True)
            held = 2
            _borrow(status_out, &buf[2], 1, True)
            held = 3
            if buf[1].shape[0] != buf[0].shape[0] or buf[2].shape[0] != buf[0].shape[0]:
                raise ValueError(
                    f"slots_out and status_out must have len(keys) = {buf[0].shape[0]} entries "
                    f"(got {buf[1].shape[0]} and {buf[2].shape[0]})"
                )
            return self._run(<const int64_t*>buf[0].buf, buf[0].shape[0], <int64_t*>buf[1].buf,
                             <int8_t*>buf[2].buf)
        finally:
            while held > 0:
                held -= 1
                PyBuffer_Release(&buf[held])

    # ---- hash table and ghost set ---------------------------------------------------------------

    cdef inline uint64_t _probe(self, int64_t key) noexcept nogil:
        """The bucket holding key, or the empty bucket where it would be inserted."""
        cdef Entry* t = self.table.data()
        cdef uint64_t h = jizhi_hash(key, self.shift)
        while t[h].slot >= 0 and t[h].key != key:
            h = (h + 1) & self.mask
        return h

    cdef inline void _table_remove(self, int64_t key) noexcept nogil:
        """Backward-shift deletion: later entries of the probe run move back into the hole."""
        cdef Entry* t = self.table.data()
        cdef uint64_t m = self.mask, hole = self._probe(key), j = hole, home
        while True:
            j = (j + 1) & m
            if t[j].slot < 0:
                break
            home = jizhi_hash(t[j].key, self.shift)
            # The entry at j may move back to the hole unless its home lies cyclically in (hole, j].
            if ((j - home) & m) >= ((j - hole) & m):
                t[hole] = t[j]
                hole = j
        t[hole].slot = -1

    cdef int _ghost_reserve(self, Py_ssize_t n) except -1:
        cdef int bits = _table_bits(4 * n)   # load <= 1/4, as for the table
        cdef Ghost stale
        stale.key = 0
        stale.stamp = 0
        if self.ghost.size() < (<size_t>1 << bits):
            self.ghost.assign(<size_t>1 << bits, stale)
            self.ghost_mask = (<uint64_t>1 << bits) - 1
            self.ghost_shift = 64 - bits
        return 0

    cdef inline bint _ghost_seen(self, int64_t key) noexcept nogil:
        """Test-and-insert into this call's ghost set: True if key was already in it."""
        cdef Ghost* g = self.ghost.data()
        cdef uint64_t h = jizhi_hash(key, self.ghost_shift)
        while g[h].stamp == self.epoch:
            if g[h].key == key:
                return True
            h = (h + 1) & self.ghost_mask
        g[h].key = key
        g[h].stamp = self.epoch
        return False

    # ---- LFU frequency buckets ------------------------------------------------------------------

    cdef inline int32_t _bucket_new(self, int64_t count, int32_t after) noexcept nogil:
        """Take a bucket off the free list and link it after bucket `after` (-1: at the front)."""
        cdef Bucket* bk = self.buckets.data()
        cdef int32_t b = self.free_bucket
        cdef int32_t n = bk[after].next if after >= 0 else self.low_bucket
        self.free_bucket = bk[b].next
        bk[b].count = count
        bk[b].head = -1
        bk[b].tail = -1
        bk[b].prev = after
        bk[b].next = n
        if after >= 0:
            bk[after].next = b
        else:
            self.low_bucket = b
        if n >= 0:
            bk[n].prev = b
        return b

    cdef inline void _bucket_drop(self, int32_t b, int32_t s) noexcept nogil:
        """Remove slot s from bucket b, freeing b if it empties."""
        cdef Bucket* bk = self.buckets.data()
        _list_remove(self.slots.data(), &bk[b].head, &bk[b].tail, s)
        if bk[b].head >= 0:
            return
        if bk[b].prev >= 0:
            bk[bk[b].prev].next = bk[b].next
        else:
            self.low_bucket = bk[b].next
        if bk[b].next >= 0:
            bk[bk[b].next].prev = bk[b].prev
        bk[b].next = self.free_bucket
        self.free_bucket = b

    cdef inline void _lfu_hit(self, int32_t s) noexcept nogil:
        cdef Bucket* bk = self.buckets.data()
        cdef Slot* slots = self.slots.data()
        cdef int32_t b = slots[s].bucket, nb = bk[b].next
        cdef int64_t count = bk[b].count + 1
        if nb < 0 or bk[nb].count != count:
            if bk[b].head == s and bk[b].tail == s:
                bk[b].count = count   # alone in its bucket: bump the bucket in place
                return
            nb = self._bucket_new(count, b)
        self._bucket_drop(b, s)
        _list_push(slots, &bk[nb].head, &bk[nb].tail, s)
        slots[s].bucket = nb

    cdef inline void _lfu_insert(self, int32_t s) noexcept nogil:
        cdef Bucket* bk = self.buckets.data()
        cdef int32_t b = self.low_bucket
        if b < 0 or bk[b].count != 1:
            b = self._bucket_new(1, -1)
        _list_push(self.slots.data(), &bk[b].head, &bk[b].tail, s)
        self.slots[s].bucket = b

    # ---- the per-call loop ----------------------------------------------------------------------

    cdef inline int32_t _victim(self) noexcept nogil:
        if self.policy == LRU:
            return self.lru_tail
        return self.buckets[self.low_bucket].tail

    cdef inline void _evict(self, int32_t s) noexcept nogil:
        """Unlink the victim in slot s from its list and from the table (its slot is being reused)."""
        if self.policy == LRU:
            _list_remove(self.slots.data(), &self.lru_head, &self.lru_tail, s)
        else:
            self._bucket_drop(self.slots[s].bucket, s)
        self._table_remove(self.slots[s].key)
        # Prefetch what the next eviction touches: the next victim's table bucket and its predecessor.
        cdef int32_t v
        if self.capacity > 1:   # else the cache is empty now
            v = self._victim()
            jizhi_prefetch(&self.table[jizhi_hash(self.slots[v].key, self.shift)])
            jizhi_prefetch(&self.slots[max(self.slots[v].prev, 0)])

    cdef inline void _prefetch(self, const int64_t* keys, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
        """Prefetch for the keys ahead of position i (see AHEAD_*); empty buckets read as slot 0."""
        cdef Entry* t = self.table.data()
        cdef Slot* slots = self.slots.data()
        cdef int32_t s
        if i + AHEAD_TABLE < n:
            jizhi_prefetch(&t[jizhi_hash(keys[i + AHEAD_TABLE], self.shift)])
        if i + AHEAD_SLOT < n:
            jizhi_prefetch(&slots[max(t[jizhi_hash(keys[i + AHEAD_SLOT], self.shift)].slot, 0)])
        if i + AHEAD_LINKS < n:
            s = max(t[jizhi_hash(keys[i + AHEAD_LINKS], self.shift)].slot, 0)
            jizhi_prefetch(&slots[max(slots[s].prev, 0)])
            jizhi_prefetch(&slots[max(slots[s].next, 0)])

    cdef tuple _run(self, const int64_t* keys, Py_ssize_t n, int64_t* slots_out, int8_t* status_out):
        cdef Slot* slots = self.slots.data()
        cdef Entry* table = self.table.data()
        cdef bint out = slots_out != NULL, lru = self.policy == LRU, stores = self.capacity > 0
        cdef bint ghost_live = False, bypassed = False
        cdef int64_t hits = 0, misses = 0, key
        cdef int32_t s
        cdef uint64_t pos
        cdef Py_ssize_t i
        self.epoch += 1
        cdef uint64_t epoch = self.epoch
        if stores:
            for i in range(min(n, <Py_ssize_t>AHEAD_TABLE)):
                jizhi_prefetch(&table[jizhi_hash(keys[i], self.shift)])
        for i in range(n):
            key = keys[i]
            if stores:
                self._prefetch(keys, n, i)
            pos = self._probe(key)
            s = table[pos].slot
            if s >= 0:
                if slots[s].stamp == epoch:   # a repeat of a key already handled in this call
                    if out:
                        slots_out[i] = s
                        status_out[i] = REPEAT
                    continue
                slots[s].stamp = epoch
                slots[s].hit = 1
                if not lru:
                    self._lfu_hit(s)
                elif s != self.lru_head:
                    _list_remove(slots, &self.lru_head, &self.lru_tail, s)
                    _list_push(slots, &self.lru_head, &self.lru_tail, s)
                hits += 1
                if out:
                    slots_out[i] = s
                    status_out[i] = HIT
                continue
            # Not cached: a repeat of a key bypassed or evicted earlier in this call, or a miss.
            if ghost_live and self._ghost_seen(key):
                if out:
                    slots_out[i] = -1
                    status_out[i] = REPEAT
                continue
            misses += 1
            if not stores:
                if not ghost_live:
                    self._ghost_reserve(n)
                    ghost_live = True
                self._ghost_seen(key)
                if out:
                    slots_out[i] = -1
                    status_out[i] = MISS
                continue
            if self.size < self.capacity:
                s = <int32_t>self.size
                self.size += 1
                table[pos].key = key
                table[pos].slot = s
            else:
                s = self._victim()
                table[pos].key = key   # insert before removing the victim, while `pos` is still valid
                table[pos].slot = s
                self._evict(s)
                if slots[s].stamp == epoch:
                    # The victim was handled earlier in this call: its value is gone before the caller
                    # reads it, so its positions become bypasses and, if it was a hit, a miss.
                    if not ghost_live:
                        self._ghost_reserve(n)
                        ghost_live = True
                    self._ghost_seen(slots[s].key)
                    bypassed = True
                    if slots[s].hit:
                        hits -= 1
                        misses += 1
            slots[s].key = key
            slots[s].stamp = epoch
            slots[s].hit = 0
            if lru:
                _list_push(slots, &self.lru_head, &self.lru_tail, s)
            else:
                self._lfu_insert(s)
            if out:
                slots_out[i] = s
                status_out[i] = MISS
        if out and bypassed:
            for i in range(n):
                s = <int32_t>slots_out[i]
                if s >= 0 and slots[s].key != keys[i]:   # its slot was reused later in the call
                    slots_out[i] = -1
                    if status_out[i] == HIT:
                        status_out[i] = MISS
        self.total_hits += hits
        self.total_misses += misses
        return hits, misses
