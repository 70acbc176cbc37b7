"""The parameter store's and the cache's fits behind `autotune.calibration` (see `autotune._fits`).

`fit_store` reads the store's lookup-latency histogram against misses per lookup; `fit_cache`
inverts the observed hit rate through a replayed cache (`autotune._fitting`) for the Zipf exponent,
checked against the share of key references the cut-off skipped.
"""

from __future__ import annotations

import math

from autotune import _fitting
from autotune._fits import BATCHES, REQUESTS, STORE, Fits, Host, Status
from simulator.cache import CachePolicy
from simulator.errors import InputError
from simulator.spec import StageSpec

__all__ = ["fit_cache", "fit_store"]

_HITS = "ray_jizhi_cache_hits_total"
_MISSES = "ray_jizhi_cache_misses_total"
_CUT = "ray_jizhi_keys_cut_total"
_ALPHA_AGREE = 0.05  # the hit-rate and keys-cut estimates of alpha agree within this


def fit_store(fits: Fits, host: Host) -> None:
    """The parameter store's latency per lookup: base + per_key × misses."""
    lookup = host.lookup
    assert lookup is not None and lookup.store is not None
    prefix, spec_store = f"stages.{lookup.name}.store", lookup.store
    counts = fits.counts(f"{STORE}_count", host.deployment)
    sums = fits.counts(f"{STORE}_sum", host.deployment)
    misses = fits.counts(_MISSES, host.deployment)
    if sum(counts) <= 0:
        for name in ("base_s", "per_key_s"):
            fits.add(
                f"{prefix}.{name}",
                getattr(spec_store, name),
                math.nan,
                "s",
                "spec",
                status=Status.KEPT,
                note="no store lookups in the window",
            )
        return
    keep = [i for i, n in enumerate(counts) if n > 0]
    x = [misses[i] / counts[i] for i in keep]
    y = [sums[i] / counts[i] for i in keep]
    source = f"{STORE} (midpoint sums), {_MISSES}"
    fits.add(
        "observed.misses_per_lookup",
        sum(misses) / sum(counts),
        math.nan,
        "",
        f"{_MISSES} / lookups",
        status=Status.OBSERVED,
        note=f"{min(x):.3g}–{max(x):.3g} across sub-windows",
    )
    approximate = "approximate: Ray builds the histogram's _sum from bucket midpoints"
    fitted = _fitting.line_or_why(x, y, [counts[i] for i in keep], fits.min_spread)
    if isinstance(fitted, _fitting.Line):
        note = f"latency per lookup as base + per_key × misses over {len(x)} sub-windows"
        fits.add(
            f"{prefix}.base_s",
            fitted.intercept,
            fitted.intercept_se,
            "s",
            source,
            note=f"{note}; {approximate}",
        )
        fits.add(f"{prefix}.per_key_s", fitted.slope, fitted.slope_se, "s", source)
        return
    per_key = spec_store.per_key_s
    base, se = _fitting.ratio(
        [sums[i] - per_key * misses[i] for i in keep], [counts[i] for i in keep]
    )
    note = f"latency per lookup less the spec's per_key_s × misses; {fitted}; {approximate}"
    fits.add(f"{prefix}.base_s", max(base, 0.0), se, "s", source, note=note)
    fits.add(f"{prefix}.per_key_s", per_key, math.nan, "s", "spec", status=Status.KEPT)


def fit_cache(fits: Fits, host: Host, seed: int) -> None:
    """The key-popularity exponent that makes a replayed cache hit as often as the live one did."""
    lookup, dep, workload = host.lookup, host.deployment, fits.spec.workload
    assert lookup is not None
    hits, misses = sum(fits.counts(_HITS, dep)), sum(fits.counts(_MISSES, dep))
    lookups = hits + misses
    if lookups <= 0:
        raise InputError(
            f"stage {lookup.name}: no cache lookups in the window ({_HITS}, {_MISSES} of "
            f"deployment '{dep}'): every key was cut, or jizhi's metrics are not exported"
        )
    hit_rate = hits / lookups
    fits.add(
        "observed.cache_hit_rate",
        hit_rate,
        math.sqrt(hit_rate * (1 - hit_rate) / lookups),
        "",
        f"{_HITS}, {_MISSES}",
        status=Status.OBSERVED,
        note=f"{hits:.0f} hits of {lookups:.0f} distinct keys per call; binomial s.e.",
    )
    requests, batches = sum(fits.counts(REQUESTS, dep)), sum(fits.counts(BATCHES, dep))
    by_cut = _alpha_from_cut(fits, lookup, dep, requests)
    policy, capacity = lookup.cache_policy or CachePolicy.NONE, lookup.cache_capacity or 0
    if policy is CachePolicy.NONE or capacity == 0:
        fits.add(
            "workload.zipf_alpha",
            workload.zipf_alpha,
            math.nan,
            "",
            "spec",
            status=Status.KEPT,
            note="no cache deployed: the hit rate says nothing of alpha",
        )
        return
    batched = host.stage.max_batch_size > 1 and batches > 0
    first = fits.subs[0].window.before  # how warm the caches were when the window opened
    before = first.total(_HITS, application=fits.app, deployment=dep) + first.total(
        _MISSES, application=fits.app, deployment=dep
    )
    replicas = host.stage.replicas
    segments = tuple(  # each sub-window's calls per replica and requests per call
        (max(1, round(c / replicas)), r / c)
        for r, c in zip(
            fits.counts(REQUESTS, dep),
            fits.counts(BATCHES, dep) if batched else fits.counts(REQUESTS, dep),
            strict=True,
        )
        if c > 0
    )
    calls = sum(c for c, _ in segments)
    setting = _fitting.CacheSetting(
        policy=policy,
        capacity=capacity,
        vocab_size=workload.vocab_size,
        keys_per_request=workload.keys_per_request,
        cutoff_rank=lookup.cutoff_rank,
        warm_calls=round(before / lookups * calls),
        segments=segments,
    )
    prefer = by_cut.alpha if by_cut is not None else workload.zipf_alpha
    fit = _fitting.alpha_from_hit_rate(setting, hit_rate, lookups, seed, prefer=prefer)
    notes = [
        f"replayed a {policy.value} cache of {capacity} keys per replica ({replicas} "
        f"replica(s), {setting.warm_calls} calls of warm-up), vocab {workload.vocab_size}, "
        f"{workload.keys_per_request} keys per request"
        + (f", cut-off {lookup.cutoff_rank}" if lookup.cutoff_rank else "")
    ]
    if fit.at_bound:
        notes.append(f"no alpha in {_fitting.ALPHA_RANGE} gives this hit rate: the nearest")
    if fit.roots:
        anchor = "the keys-cut estimate" if by_cut is not None else "the spec's alpha"
        roots = ", ".join(f"{r:.3g}" for r in fit.roots)
        notes.append(f"alphas {roots} all give this hit rate: took the one nearest {anchor}")
    if by_cut is not None and abs(fit.alpha - by_cut.alpha) > max(
        _ALPHA_AGREE, 3 * math.hypot(fit.se, by_cut.se)
    ):
        notes.append(
            f"disagrees with the keys-cut estimate {by_cut.alpha:.3g}: check "
            "vocab_size, keys per request and the cut-off against the deployment"
        )
    fits.add(
        "workload.zipf_alpha",
        fit.alpha,
        fit.se,
        "",
        f"{_HITS}, {_MISSES}",
        note="; ".join(notes),
    )


def _alpha_from_cut(
    fits: Fits, lookup: StageSpec, dep: str, requests: float
) -> _fitting.AlphaFit | None:
    """A check on alpha: the share of key references the cut-off skipped, P(rank ≥ K)."""
    workload, cutoff = fits.spec.workload, lookup.cutoff_rank
    if cutoff is None or cutoff >= workload.vocab_size:
        return None
    cut, keys = sum(fits.counts(_CUT, dep)), requests * workload.keys_per_request
    if not 0 < cut < keys:
        return None
    fit = _fitting.alpha_from_cut(workload.vocab_size, cutoff, cut / keys, keys)
    fits.add(
        "observed.zipf_alpha_from_cut",
        fit.alpha,
        fit.se,
        "",
        f"{_CUT} / key references",
        status=Status.OBSERVED,
        note=f"a check: {cut / keys:.4g} of key references had rank ≥ {cutoff}",
    )
    return fit
