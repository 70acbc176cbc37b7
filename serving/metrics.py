"""jizhi's own serving metrics, declared once, exported by Ray next to its built-in Serve metrics.

Ray adds the `ray_` prefix, `_total` to counters and `_bucket/_sum/_count` to histograms, so
`jizhi_cache_hits` is scraped as `ray_jizhi_cache_hits_total`. Each metric has a unit in its name,
a description and one fixed label, `stage` (the deployment's stage name in the spec). `NAMES` lists
the exported names; dashboards and alert rules are tested against it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NAMES", "StageMetrics"]

_LATENCY_BUCKETS_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
_ROW_BUCKETS = [float(2**i) for i in range(13)]  # 1 … 4096 rows

# Exported name (as Prometheus sees it) → (kind, description)
NAMES: dict[str, tuple[str, str]] = {
    "ray_jizhi_cache_hits_total": (
        "counter",
        "distinct keys found in the replica's embedding cache",
    ),
    "ray_jizhi_cache_misses_total": ("counter", "distinct keys fetched from the parameter store"),
    "ray_jizhi_keys_cut_total": ("counter", "key references skipped by the long-tail cut-off"),
    "ray_jizhi_store_lookup_seconds": ("histogram", "parameter-store multi-get latency"),
    "ray_jizhi_ranker_batch_rows": ("histogram", "rows in each batch the ranker scored"),
    "ray_jizhi_stage_latency_seconds": ("histogram", "time a request spent in a stage's handler"),
}


class StageMetrics:
    """The metrics one replica reports; create it inside the replica (Ray Serve's requirement)."""

    def __init__(self, stage: str) -> None:
        from ray.serve.metrics import Counter, Histogram

        tags = ("stage",)
        self.cache_hits: Any = Counter(
            "jizhi_cache_hits", description=NAMES["ray_jizhi_cache_hits_total"][1], tag_keys=tags
        )
        self.cache_misses: Any = Counter(
            "jizhi_cache_misses",
            description=NAMES["ray_jizhi_cache_misses_total"][1],
            tag_keys=tags,
        )
        self.keys_cut: Any = Counter(
            "jizhi_keys_cut", description=NAMES["ray_jizhi_keys_cut_total"][1], tag_keys=tags
        )
        self.store_seconds: Any = Histogram(
            "jizhi_store_lookup_seconds",
            description=NAMES["ray_jizhi_store_lookup_seconds"][1],
            boundaries=_LATENCY_BUCKETS_S,
            tag_keys=tags,
        )
        self.batch_rows: Any = Histogram(
            "jizhi_ranker_batch_rows",
            description=NAMES["ray_jizhi_ranker_batch_rows"][1],
            boundaries=_ROW_BUCKETS,
            tag_keys=tags,
        )
        self.latency: Any = Histogram(
            "jizhi_stage_latency_seconds",
            description=NAMES["ray_jizhi_stage_latency_seconds"][1],
            boundaries=_LATENCY_BUCKETS_S,
            tag_keys=tags,
        )
        for metric in (
            self.cache_hits,
            self.cache_misses,
            self.keys_cut,
            self.store_seconds,
            self.batch_rows,
            self.latency,
        ):
            metric.set_default_tags({"stage": stage})  # a fresh dict: Ray adds its tags to it

    def lookup(self, hits: int, misses: int, cut: int, store_seconds: float) -> None:
        if hits:
            self.cache_hits.inc(hits)
        if misses:
            self.cache_misses.inc(misses)
            self.store_seconds.observe(store_seconds)
        if cut:
            self.keys_cut.inc(cut)
