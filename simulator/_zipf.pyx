# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled core of `simulator.zipf.ZipfSampler`: rejection-inversion over xoshiro256**.

Hörmann & Derflinger, "Rejection-inversion to generate variates from monotone discrete
distributions" (ACM TOMACS 1996), the variant Apache Commons RNG ships. Ranks are 1-based inside
and returned 0-based. The generator state is four 64-bit words seeded by the caller (from a numpy
Generator), so the same seed gives the same keys.
"""

from libc.math cimport exp, expm1, floor, log, log1p, fabs
from libc.stdint cimport int64_t, uint64_t


cdef inline uint64_t _rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline double _helper_expm1_over_x(double x) noexcept nogil:
    if fabs(x) > 1e-8:
        return expm1(x) / x
    return 1.0 + x * 0.5 * (1.0 + x / 3.0)


cdef inline double _helper_log1p_over_x(double x) noexcept nogil:
    if fabs(x) > 1e-8:
        return log1p(x) / x
    return 1.0 - x * (0.5 - x / 3.0)


cdef class ZipfCore:
    cdef uint64_t s0, s1, s2, s3
    cdef readonly int64_t n
    cdef readonly double alpha
    cdef double h_x1, h_n, s

    def __init__(self, int64_t n, double alpha, seed_words):
        self.n = n
        self.alpha = alpha
        self.s0, self.s1, self.s2, self.s3 = [int(w) for w in seed_words]
        if (self.s0 | self.s1 | self.s2 | self.s3) == 0:
            self.s0 = 0x9E3779B97F4A7C15
        self.h_x1 = self._h_integral(1.5) - 1.0
        self.h_n = self._h_integral(n + 0.5)
        self.s = 2.0 - self._h_integral_inverse(self._h_integral(2.5) - self._h(2.0))

    cdef inline double _h(self, double x) noexcept nogil:
        return exp(-self.alpha * log(x))

    cdef inline double _h_integral(self, double x) noexcept nogil:
        cdef double log_x = log(x)
        return _helper_expm1_over_x((1.0 - self.alpha) * log_x) * log_x

    cdef inline double _h_integral_inverse(self, double x) noexcept nogil:
        cdef double t = x * (1.0 - self.alpha)
        if t < -1.0:
            t = -1.0
        return exp(_helper_log1p_over_x(t) * x)

    cdef inline double _uniform(self) noexcept nogil:
        # xoshiro256** (Blackman & Vigna); top 53 bits -> [0, 1)
        cdef uint64_t result = _rotl(self.s1 * 5, 7) * 9
        cdef uint64_t t = self.s1 << 17
        self.s2 ^= self.s0
        self.s3 ^= self.s1
        self.s1 ^= self.s2
        self.s0 ^= self.s3
        self.s2 ^= t
        self.s3 = _rotl(self.s3, 45)
        return (result >> 11) * (1.0 / 9007199254740992.0)

    cdef inline int64_t _one(self) noexcept nogil:
        cdef double u, x, k
        while True:
            u = self.h_n + self._uniform() * (self.h_x1 - self.h_n)
            x = self._h_integral_inverse(u)
            k = floor(x + 0.5)
            if k < 1.0:
                k = 1.0
            elif k > self.n:
                k = <double>self.n
            if k - x <= self.s or u >= self._h_integral(k + 0.5) - self._h(k):
                return <int64_t>k - 1

    def fill(self, int64_t[::1] out):
        """Fill `out` with ranks in [0, n)."""
        cdef Py_ssize_t i
        with nogil:
            for i in range(out.shape[0]):
                out[i] = self._one()
