"""Proximity-bias test (ProCal §3.1 / App. C; spec §3.3; not in the released code).

Is a model less accurate on low-proximity samples than on high-proximity samples *at the same
confidence*? Confidence-matched samples from the highest and the lowest proximity groups are
compared with a Wilcoxon rank-sum test on their correctness indicators.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmkit.calibration.metrics import _confidences, _correct, _proximities

__all__ = ["proximity_bias_test", "ProximityBiasResult"]


@dataclass(frozen=True)
class ProximityBiasResult:
    """Outcome of :func:`proximity_bias_test`.

    statistic, p_value: ``scipy.stats.ranksums(B_H, B_L)`` (two-sided; positive statistic =
    high-proximity samples more often correct). bias_index = acc_high - acc_low (0 = no bias).
    conf_high / conf_low: mean confidence of the matched samples (close by construction).
    n_pairs: accepted matched pairs over both directions. n_groups_used: 5, or 3 after the
    no-overlap fallback.
    """

    statistic: float
    p_value: float
    bias_index: float
    acc_high: float
    acc_low: float
    n_pairs: int
    n_groups_used: int
    conf_high: float
    conf_low: float

    def __str__(self) -> str:
        return (
            f"proximity bias: index {self.bias_index:+.4f} "
            f"(acc {self.acc_high:.4f} high vs {self.acc_low:.4f} low proximity, "
            f"matched conf {self.conf_high:.4f} / {self.conf_low:.4f}); "
            f"rank-sum z = {self.statistic:.3f}, p = {self.p_value:.3g}; "
            f"{self.n_pairs} pairs, {self.n_groups_used} proximity groups"
        )


def _extreme_groups(prox: np.ndarray, n_groups: int):
    # Equal-size groups by rank; a stable sort breaks proximity ties by sample index so the
    # split is deterministic even with repeated proximity values.
    order = np.argsort(prox, kind="stable")
    groups = np.array_split(order, n_groups)
    return groups[-1], groups[0]


def _ranges_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return max(a.min(), b.min()) <= min(a.max(), b.max())


def _match(rng, src_conf: np.ndarray, dst_conf: np.ndarray, n_draws: int, max_gap: float):
    """Draws n_draws source points (with replacement) and pairs each with the destination point
    of nearest confidence. Returns (src_idx, dst_idx) of the accepted pairs."""
    src = rng.integers(0, src_conf.size, n_draws)
    c = src_conf[src]
    order = np.argsort(dst_conf, kind="stable")
    sd = dst_conf[order]
    pos = np.searchsorted(sd, c)
    left = np.clip(pos - 1, 0, sd.size - 1)
    right = np.clip(pos, 0, sd.size - 1)
    take_right = np.abs(sd[right] - c) < np.abs(sd[left] - c)
    nearest = np.where(take_right, sd[right], sd[left])
    # Several destination points can share the nearest confidence (discrete or saturated
    # confidences, e.g. many 1.0); pick uniformly among them rather than always the first, which
    # would reduce B_L / B_H to copies of a single sample.
    lo = np.searchsorted(sd, nearest, side="left")
    hi = np.searchsorted(sd, nearest, side="right")
    dst = order[lo + np.floor(rng.random(n_draws) * (hi - lo)).astype(np.int64)]
    keep = np.abs(nearest - c) <= max_gap
    return src[keep], dst[keep]


def proximity_bias_test(confidences, correct, proximities, *, n_groups: int = 5, n_draws: int = 10_000,
                        max_conf_gap: float = 0.05, seed: int = 0) -> ProximityBiasResult:
    """Confidence-matched rank-sum test for proximity bias (ProCal §3.1).

    1. Split the samples into `n_groups` equal-size proximity groups (by rank) and keep the
       highest (H) and lowest (L). If the confidence ranges of H and L do not overlap, use 3
       groups instead (recorded in ``n_groups_used``).
    2. Draw `n_draws` points from H (with replacement) and pair each with the L point of nearest
       confidence, rejecting pairs more than `max_conf_gap` apart; repeat from L to H. Merge the
       accepted pairs into B_H and B_L.
    3. ``scipy.stats.ranksums`` on the correctness indicators of B_H vs B_L (the paper cites a
       modified rank-sum test for paired data; we use scipy's plain one, as the spec fixes).

    Ties in the nearest confidence are broken uniformly at random. Deterministic given `seed`.
    Draws are with replacement (a group may hold fewer than `n_draws` samples), and the test
    treats the repeated samples as independent, so p-values are optimistic when `n_draws`
    exceeds the group size; this is the paper's procedure, kept for comparability.
    Raises ValueError if no pair lies within `max_conf_gap`.
    """
    from scipy.stats import ranksums  # scipy is only needed here

    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 2:
        raise ValueError(f"n_groups: expected an integer >= 2, got {n_groups!r}")
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise ValueError(f"n_draws: expected an integer >= 1, got {n_draws!r}")
    if not np.isfinite(max_conf_gap) or max_conf_gap < 0:
        raise ValueError(f"max_conf_gap: expected a finite number >= 0, got {max_conf_gap!r}")
    conf_t = _confidences(confidences)
    corr_t = _correct(correct, conf_t)
    prox_t = _proximities(proximities, conf_t)
    if conf_t.numel() < n_groups:
        raise ValueError(f"confidences: need at least n_groups={n_groups} samples, got {conf_t.numel()}")
    # Matching and the test are sequential / scipy work: CPU numpy.
    conf = conf_t.cpu().numpy()
    corr = corr_t.cpu().numpy()
    prox = prox_t.cpu().numpy()

    n_used = int(n_groups)
    high, low = _extreme_groups(prox, n_used)
    if not _ranges_overlap(conf[high], conf[low]) and n_used > 3:
        n_used = 3
        high, low = _extreme_groups(prox, n_used)

    rng = np.random.default_rng(seed)
    h1, l1 = _match(rng, conf[high], conf[low], int(n_draws), float(max_conf_gap))
    l2, h2 = _match(rng, conf[low], conf[high], int(n_draws), float(max_conf_gap))
    b_h = np.concatenate([high[h1], high[h2]])
    b_l = np.concatenate([low[l1], low[l2]])
    if b_h.size == 0:
        raise ValueError(
            f"no confidence-matched pairs: no sample of the highest proximity group lies within "
            f"max_conf_gap={max_conf_gap} of a sample of the lowest group (confidence ranges "
            f"[{conf[high].min():.4g}, {conf[high].max():.4g}] vs [{conf[low].min():.4g}, "
            f"{conf[low].max():.4g}], {n_used} proximity groups)"
        )
    y_h, y_l = corr[b_h], corr[b_l]
    res = ranksums(y_h, y_l)
    stat, p = float(res.statistic), float(res.pvalue)
    acc_h, acc_l = float(y_h.mean()), float(y_l.mean())
    return ProximityBiasResult(
        statistic=stat, p_value=p, bias_index=acc_h - acc_l, acc_high=acc_h, acc_low=acc_l,
        n_pairs=int(b_h.size), n_groups_used=n_used,
        conf_high=float(conf[b_h].mean()), conf_low=float(conf[b_l].mean()),
    )
