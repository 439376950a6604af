"""Bootstrap on sufficient statistics, interval kinds, multiple-comparison adjustments.

Rows are pooled into *atoms*: rows of one group that share every discrete quantity the metrics
use (a confidence bin, a proximity bin, the label/prediction pair). Within an atom the rows
differ only in continuous values (confidence, squared error), so a replicate needs, per atom,
its resampled count k and the sum of k of its continuous values. The count is exact
(multinomial within the group, or Poisson); the sum is drawn as k * mean + sqrt(k) * sd * z,
the normal law of a sum of k draws from the atom's values. Rows in one atom sit in one
confidence bin of width 1/15, so sd is small and this term moves intervals by far less than the
Monte Carlo error (tests/test_equity.py checks against a row-resampling bootstrap).
A replicate therefore costs O(groups x atoms), independent of the number of rows.

Cluster bootstrap: whole clusters are drawn (multinomial over clusters, their number kept), and
a replicate's sums are exact: the weighted sum of per-cluster sums (a sparse product).
"""
from __future__ import annotations

import math

import numpy as np

INTERVALS = ("percentile", "basic", "bca", "debiased", "auto")
ADJUSTMENTS = ("holm", "bh", None)
SCHEMES = ("multinomial", "poisson")


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")


def atom_replicates(counts: np.ndarray, means: np.ndarray, sds: np.ndarray, n_boot: int, rng: np.random.Generator,
                    scheme: str):
    """Yields (count, continuous sums) replicate chunks.

    counts [G, A] rows per atom; means / sds [S, G, A] per-atom mean and sd of S continuous values.
    Yields counts [b, G, A] and sums [S, b, G, A], b <= n_boot in total.
    """
    g, a = counts.shape
    per_group = counts.sum(axis=1).astype(np.int64)
    pvals = counts / np.maximum(per_group, 1)[:, None]
    chunk = max(1, min(n_boot, 4_000_000 // max(g * a, 1)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if scheme == "multinomial":  # resampling within groups: every group keeps its size
            k = rng.multinomial(per_group, pvals, size=(b, g)).astype(np.float64)
        else:
            k = rng.poisson(counts.astype(np.float64), size=(b, g, a)).astype(np.float64)
        z = rng.standard_normal((means.shape[0], b, g, a))
        sums = k[None] * means[:, None] + np.sqrt(k)[None] * sds[:, None] * z
        yield k, sums


def cluster_weights(n_clusters: int, n_boot: int, rng: np.random.Generator, scheme: str) -> np.ndarray:
    """Bootstrap weights of whole clusters [n_boot, n_clusters]; multinomial rows sum to n_clusters."""
    if scheme == "multinomial":
        return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(np.float64)
    return rng.poisson(1.0, size=(n_boot, n_clusters)).astype(np.float64)


def _norm_ppf(p):
    from scipy.special import ndtri

    return ndtri(p)


def _norm_cdf(x):
    from scipy.special import ndtr

    return ndtr(x)


def intervals(point: np.ndarray, reps: np.ndarray, alpha: float, kind: str, jack=None):
    """Two-sided 1 - alpha intervals for each column of `reps` [B, P] (NaN replicates ignored).

    kind "percentile"; "basic" (reflected percentile); "debiased" (the percentile interval moved
    down by twice the bootstrap bias, mean(reps) - point: the percentile interval of the replicates
    re-centred on the bias-corrected estimate 2 * point - mean(reps); see `bias`); "bca"
    (bias-corrected and accelerated, Efron 1987), whose acceleration comes from `jack` =
    (values [J, P], weights [J]): weighted leave-one-out values (one per atom or cluster, weighted
    by the rows it stands for).
    """
    lo_q, hi_q = alpha / 2, 1 - alpha / 2
    valid = ~np.isnan(reps)
    with np.errstate(invalid="ignore"):
        if kind in ("percentile", "basic", "debiased"):
            q = _nanquantile(reps, np.array([lo_q, hi_q]))
            if kind == "percentile":
                return q[0], q[1]
            if kind == "debiased":
                b = bias(point, reps)
                return q[0] - 2 * b, q[1] - 2 * b
            return 2 * point - q[1], 2 * point - q[0]
        nv = valid.sum(0)
        below = np.where(valid, reps < point, False).sum(0) + 0.5 * np.where(valid, reps == point, False).sum(0)
        frac = below / np.maximum(nv, 1)
        # Every replicate on one side of the estimate: the bias correction is infinite and BCa is
        # undefined (typical of ECE-like statistics, biased upwards under resampling): NaN, not a
        # degenerate interval.
        z0 = np.where((frac > 0) & (frac < 1), _norm_ppf(np.clip(frac, 1e-12, 1 - 1e-12)), np.nan)
        acc = np.zeros_like(point) if jack is None else acceleration(*jack)
        zs = _norm_ppf(np.array([lo_q, hi_q]))[:, None]
        adj = _norm_cdf(z0 + (z0 + zs) / (1 - acc * (z0 + zs)))
        lo = _nanquantile_cols(reps, adj[0])
        hi = _nanquantile_cols(reps, adj[1])
    return lo, hi


def bias(point: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """Bootstrap estimate of the bias of `point`: mean(reps) - point per column (NaN replicates ignored).

    A plug-in statistic that is non-linear in noisy averages (ECE and PIECE sum |accuracy -
    confidence| over bins; max - min takes extremes over groups) is biased upwards, and a
    resampled one is biased again by about as much; point - bias = 2 * point - mean(reps) removes
    the first-order bias (Efron and Tibshirani 1993, ch. 10; per bin this is the Gaussian debiasing
    of the L1 calibration error in Kumar et al. 2019)."""
    valid = ~np.isnan(reps)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, reps, 0.0).sum(0) / valid.sum(0)
    return mean - point


def acceleration(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """BCa acceleration from weighted jackknife values [J, P]."""
    w = weights[:, None] * ~np.isnan(values)
    v = np.nan_to_num(values)
    mean = (w * v).sum(0) / np.maximum(w.sum(0), 1e-300)
    u = np.where(w > 0, mean - v, 0.0)
    num = (w * u**3).sum(0)
    den = 6 * (w * u**2).sum(0) ** 1.5
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, 0.0)


def _nanquantile(reps: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Quantiles qs of every column [len(qs), P], NaN ignored (np.nanquantile loops over columns)."""
    srt, nv = _sort(reps)
    return np.stack([_pick(srt, nv, np.full(reps.shape[1], q)) for q in qs])


def _nanquantile_cols(reps: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Quantile qs[j] of column j (numpy's linear rule on the non-NaN values)."""
    return _pick(*_sort(reps), qs)


def _sort(reps):
    return np.sort(reps, axis=0), (~np.isnan(reps)).sum(0)  # NaN sorts last


def _pick(srt, nv, qs):
    pos = np.clip(np.nan_to_num(qs), 0, 1) * np.maximum(nv - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(nv - 1, 0))
    cols = np.arange(srt.shape[1])
    frac = pos - lo
    with np.errstate(invalid="ignore"):
        out = srt[lo, cols] * (1 - frac) + srt[hi, cols] * frac
    return np.where((nv > 0) & ~np.isnan(qs), out, np.nan)


def p_values(reps: np.ndarray, null: float = 0.0) -> np.ndarray:
    """Two-sided bootstrap p-value of `null` for each column: twice the smaller tail mass."""
    valid = ~np.isnan(reps)
    nv = np.maximum(valid.sum(0), 1)
    le = np.where(valid, reps <= null, False).sum(0) / nv
    ge = np.where(valid, reps >= null, False).sum(0) / nv
    return np.minimum(1.0, 2 * np.minimum(le, ge))


def adjust(p: np.ndarray, method: str | None) -> np.ndarray:
    """Holm (family-wise error) or Benjamini-Hochberg (false discovery rate) adjusted p-values."""
    p = np.asarray(p, dtype=np.float64)
    out = p.copy()
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if method is None or m == 0:
        return out
    order = np.argsort(q, kind="stable")
    ranked = q[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ranked)
    else:
        adj = np.minimum.accumulate((m / np.arange(m, 0, -1) * ranked[::-1]))[::-1]
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def z_for(alpha: float) -> float:
    return float(_norm_ppf(1 - alpha / 2))


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 < alpha < 1 \
            or math.isnan(alpha):
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    return float(alpha)


def check_n_boot(n_boot) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot: expected an integer >= 0, got {n_boot!r}")
    return int(n_boot)
