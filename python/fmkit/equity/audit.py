"""`subgroup_audit`: per-group metrics, worst group, gaps and ratios, each with a bootstrap CI.

Metrics (top-label, as in fmkit.calibration): accuracy; ECE (`n_bins` equal-width confidence
bins); PIECE (confidence bins x `n_prox_bins` proximity quantile bins fit within the group, the
reference variant of fmkit.calibration.piece); Brier ``mean((conf - correct)^2)`` (for binary
probabilities this is ``mean((p - y)^2)``); for binary tasks also the false-positive rate, the
false-negative rate and the selection rate (share predicted positive).

Every number gets an interval from one bootstrap (see _bootstrap.py): groups are resampled
within themselves (sizes fixed), or whole clusters are resampled when `cluster` is given.
Proximity bin edges stay those of the original sample in the replicates.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

from fmkit.equity import _bootstrap as bs

METRICS = ("accuracy", "fpr", "fnr", "selection_rate", "ece", "piece", "brier")
HIGHER_IS_BETTER = {"accuracy"}
NO_WORST = {"selection_rate"}  # neither direction is "worse"


class EquityWarning(UserWarning):
    """Something the audit can compute but should not be trusted as is (tiny group, uncorrected labels)."""


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def as_array(x: Any, name: str, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    elif hasattr(x, "to_numpy"):  # pandas
        x = x.to_numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name}: expected an array, got {type(x).__name__} ({exc})") from None
    if arr.ndim not in ndim:
        raise ValueError(f"{name}: expected a {' or '.join(f'{d}-D' for d in ndim)} array, got shape {arr.shape}")
    return arr


def check_aligned(n: int, first: str, arr: np.ndarray, name: str) -> None:
    if len(arr) != n:
        raise ValueError(f"{name}: has {len(arr)} rows but {first} has {n}; the arrays must be aligned row by row")


def _finite(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values (row {int(np.flatnonzero(~np.isfinite(arr))[0])})")
    return arr


def _unit(arr: np.ndarray, name: str) -> np.ndarray:
    bad = (arr < 0) | (arr > 1)
    if bad.any():
        raise ValueError(f"{name}: probabilities must lie in [0, 1], found {arr[bad].flat[0]:g}")
    return arr


@dataclasses.dataclass
class Predictions:
    y: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    conf: np.ndarray | None  # top-label confidence, None for hard predictions
    binary: bool


def parse_predictions(y_true, probs_or_pred, threshold: float = 0.5) -> Predictions:
    """Labels and predictions in one of three forms: binary P(y=1) [n] (floats), class
    probabilities [n, C], or hard predictions [n] (integers or booleans: no ECE/PIECE/Brier)."""
    y = as_array(y_true, "y_true")
    p = as_array(probs_or_pred, "probs_or_pred", (1, 2))
    check_aligned(len(y), "y_true", p, "probs_or_pred")
    if len(y) == 0:
        raise ValueError("y_true: empty input (need at least one row)")
    yf = _finite(y, "y_true")
    if (yf != np.round(yf)).any() or (yf < 0).any():
        raise ValueError("y_true: expected integer class labels >= 0")
    y = yf.astype(np.int64)
    if p.ndim == 2:
        probs = _unit(_finite(p, "probs_or_pred"), "probs_or_pred")
        if (y >= probs.shape[1]).any():
            raise ValueError(f"y_true: label {int(y.max())} but probs_or_pred has {probs.shape[1]} class columns")
        pred = probs.argmax(1)
        conf = probs[np.arange(len(y)), pred]
        binary = probs.shape[1] == 2
    elif p.dtype.kind in "biu":
        pred, conf = p.astype(np.int64), None
        binary = bool(np.isin(y, (0, 1)).all() and np.isin(pred, (0, 1)).all())
    else:
        probs = _unit(_finite(p, "probs_or_pred"), "probs_or_pred")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("y_true: 1-D probabilities are read as P(y=1), so labels must be 0 or 1; "
                             "pass class probabilities [n, C] for more classes")
        pred = (probs >= threshold).astype(np.int64)
        conf = np.where(pred == 1, probs, 1 - probs)
        binary = True
    return Predictions(y, pred, pred == y, conf, binary)


def group_maps(groups, n: int) -> dict[str, tuple[np.ndarray, list]]:
    """{map name: (codes [n], labels)}. `groups` is one array, or a dict of maps; a map given as a
    tuple of arrays (or of names of other maps) is their intersection, labelled by tuples."""
    if groups is None:
        raise TypeError("groups: expected an array of group labels or a dict of them, got None")
    raw = dict(groups) if isinstance(groups, dict) else {"group": groups}
    if not raw:
        raise ValueError("groups: the dict of group maps is empty")
    out = {}
    for name, spec in raw.items():
        if isinstance(spec, tuple):
            parts = [raw[s] if isinstance(s, str) and s in raw else s for s in spec]
            cols = [as_array(c, f"groups[{name!r}]") for c in parts]
        else:
            arr = as_array(spec, f"groups[{name!r}]" if isinstance(groups, dict) else "groups", (1, 2))
            cols = [arr] if arr.ndim == 1 else list(arr.T)
        for c in cols:
            check_aligned(n, "y_true", c, f"groups[{name!r}]" if isinstance(groups, dict) else "groups")
        codes = np.zeros(n, dtype=np.int64)
        uniq_cols = []
        for c in cols:
            u, inv = np.unique(c.astype(str) if c.dtype.kind == "O" else c, return_inverse=True)
            codes = codes * len(u) + inv
            uniq_cols.append(u)
        used, codes = np.unique(codes, return_inverse=True)
        labels = []
        for code in used:
            parts = []
            for u in reversed(uniq_cols):
                parts.append(u[code % len(u)].item())
                code //= len(u)
            parts.reverse()
            labels.append(tuple(parts) if len(cols) > 1 else parts[0])
        out[str(name)] = (codes, labels)
    return out


def label_str(label) -> str:
    return " & ".join(map(str, label)) if isinstance(label, tuple) else str(label)


# ----------------------------------------------------------------------------------------------
# sufficient statistics -> metrics
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Layout:
    n_conf: int  # confidence bins (1 without probabilities)
    n_prox: int  # proximity bins (1 without proximity)
    binary: bool
    has_conf: bool
    has_prox: bool

    @property
    def q(self) -> int:  # label/prediction codes: 2 * y + pred (binary) or correct (multiclass)
        return 4 if self.binary else 2

    @property
    def atoms(self) -> int:
        return self.n_conf * self.n_prox * self.q

    def metrics(self) -> tuple[str, ...]:
        names = ["accuracy"]
        if self.binary:
            names += ["fpr", "fnr", "selection_rate"]
        if self.has_conf:
            names += ["ece"] + (["piece"] if self.has_prox else []) + ["brier"]
        return tuple(names)


def metrics_from_stats(layout: _Layout, k: np.ndarray, sums: np.ndarray | None) -> np.ndarray:
    """Metric values [..., M, G] from atom counts k [..., G, A] and continuous sums [S, ..., G, A]
    (S = 2: confidence, squared error)."""
    shape = k.shape[:-1] + (layout.n_conf, layout.n_prox, layout.q)
    k = k.reshape(shape)
    corr_mask = np.array([1.0, 0.0, 0.0, 1.0]) if layout.binary else np.array([0.0, 1.0])
    corr = (k * corr_mask).sum(-1)  # [..., G, Kc, Kp]
    n = k.sum((-1, -2, -3))
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        out.append(corr.sum((-1, -2)) / n)
        if layout.binary:
            kq = k.sum((-2, -3))
            out.append(kq[..., 1] / (kq[..., 0] + kq[..., 1]))
            out.append(kq[..., 2] / (kq[..., 2] + kq[..., 3]))
            out.append((kq[..., 1] + kq[..., 3]) / n)
        if layout.has_conf:
            sconf = sums[0].reshape(shape).sum(-1)
            out.append(np.abs(corr.sum(-1) - sconf.sum(-1)).sum(-1) / n)
            if layout.has_prox:
                out.append(np.abs(corr - sconf).sum((-1, -2)) / n)
            out.append(sums[1].reshape(k.shape[:-4] + (k.shape[-4], -1)).sum(-1) / n)
    return np.stack(out, axis=-2)


def disparities(m: np.ndarray, ref: int, eligible: np.ndarray, worse_low: np.ndarray, has_worst: np.ndarray):
    """From group metrics [..., M, G]: differences and ratios to group `ref` [..., M, G], max - min
    over eligible groups [..., M] and the worst eligible value [..., M]. `eligible`: [G], or [M, G]
    when the size guard differs per metric (a rate's own denominator)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = m - m[..., ref:ref + 1]
        ratio = m / m[..., ref:ref + 1]
        me = np.where(eligible, m, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as wanted
            hi, lo = np.nanmax(me, -1), np.nanmin(me, -1)
        worst = np.where(worse_low, lo, hi)
        worst = np.where(has_worst, worst, np.nan)
    return diff, ratio, hi - lo, worst


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class MapAudit:
    """One group map's audit. Arrays over metrics (M) and groups (G); lo/hi are the CI ends."""
    name: str
    groups: list
    n: np.ndarray
    small: np.ndarray
    metrics: tuple[str, ...]
    estimate: np.ndarray  # [M, G]
    lo: np.ndarray
    hi: np.ndarray
    reference: Any
    diff: tuple[np.ndarray, np.ndarray, np.ndarray]  # estimate, lo, hi [M, G] (group - reference)
    ratio: tuple[np.ndarray, np.ndarray, np.ndarray]  # group / reference
    gap: tuple[np.ndarray, np.ndarray, np.ndarray]  # max - min over groups with n >= min_count [M]
    worst_value: tuple[np.ndarray, np.ndarray, np.ndarray]  # [M]
    worst_group: list  # per metric (None where no direction)
    p_diff: np.ndarray  # bootstrap p-value of diff == 0 [M, G]
    p_adjusted: np.ndarray  # Holm / BH across the groups of each metric
    significant: np.ndarray  # adjusted p < alpha (reference: False)
    replicates: np.ndarray  # bootstrap replicates of the group metrics [n_boot, M, G]
    denominator: np.ndarray | None = None  # [M, G] rows each metric is a rate over (FPR: negatives, FNR: positives)
    small_metric: np.ndarray | None = None  # [M, G] denominator (or rows, min_count_by="rows") < min_count
    # Bootstrap bias-corrected estimates 2 * estimate - mean(replicates) (NaN without replicates);
    # ECE, PIECE and max - min / worst values are biased upwards by resampling noise, and these
    # remove the first-order bias (clipped at 0 for ECE, PIECE and max - min).
    debiased: np.ndarray | None = None  # [M, G]
    debiased_gap: np.ndarray | None = None  # [M]
    debiased_worst: np.ndarray | None = None  # [M]
    corrected_ci: np.ndarray | None = None  # [M, G] True where the interval is bias-corrected ("debiased"/"auto")
    corrected_gap_ci: np.ndarray | None = None  # [M]

    def metric(self, name: str) -> int:
        if name not in self.metrics:
            raise ValueError(f"metric: expected one of {self.metrics}, got {name!r}")
        return self.metrics.index(name)


@dataclasses.dataclass
class AuditResult:
    maps: dict[str, MapAudit]
    alpha: float
    interval: str
    n_boot: int
    cluster: bool
    min_count: int
    scheme: str
    adjust: str | None
    min_count_by: str = "denominator"

    def group_rows(self) -> list[dict]:
        """One row per (map, group, metric): n, small flag, estimate and CI."""
        rows = []
        for m in self.maps.values():
            for j, g in enumerate(m.groups):
                for i, metric in enumerate(m.metrics):
                    rows.append({"map": m.name, "group": label_str(g), "n": int(m.n[j]),
                                 "small": bool(m.small_metric[i, j]), "metric": metric,
                                 "estimate": float(m.estimate[i, j]), "lo": float(m.lo[i, j]),
                                 "hi": float(m.hi[i, j]), "denominator": int(m.denominator[i, j]),
                                 "debiased": float(m.debiased[i, j]), "ci_bias_corrected": bool(m.corrected_ci[i, j])})
        return rows

    def disparity_rows(self) -> list[dict]:
        """Differences and ratios to the reference (with p-values), max - min gap and worst group."""
        rows = []
        for m in self.maps.values():
            ref = label_str(m.reference)
            for i, metric in enumerate(m.metrics):
                for j, g in enumerate(m.groups):
                    if m.groups[j] == m.reference:
                        continue
                    for kind, (e, lo, hi) in (("difference", m.diff), ("ratio", m.ratio)):
                        row = {"map": m.name, "metric": metric, "kind": f"{kind} vs {ref}", "group": label_str(g),
                               "estimate": float(e[i, j]), "lo": float(lo[i, j]), "hi": float(hi[i, j])}
                        if kind == "difference":
                            row.update(p=float(m.p_diff[i, j]), p_adjusted=float(m.p_adjusted[i, j]),
                                       significant=bool(m.significant[i, j]))
                        rows.append(row)
                rows.append({"map": m.name, "metric": metric, "kind": "max - min", "group": "",
                             "estimate": float(m.gap[0][i]), "lo": float(m.gap[1][i]), "hi": float(m.gap[2][i]),
                             "debiased": float(m.debiased_gap[i])})
                if m.worst_group[i] is not None:
                    rows.append({"map": m.name, "metric": metric, "kind": "worst group",
                                 "group": label_str(m.worst_group[i]), "estimate": float(m.worst_value[0][i]),
                                 "lo": float(m.worst_value[1][i]), "hi": float(m.worst_value[2][i]),
                                 "debiased": float(m.debiased_worst[i])})
        return rows

    def to_markdown(self, metrics: tuple[str, ...] | None = None, digits: int = 3) -> str:
        """Group table: one row per (map, group), 'estimate [lo, hi]' per metric. A group under
        `min_count` rows is marked * after its name; a cell whose metric has fewer than `min_count`
        rows in its own denominator (FNR: positives, FPR: negatives) is marked * after its interval.
        Where the interval is bias-corrected (interval "debiased", or "auto" for the groups' ECE
        and PIECE), the estimate shown is the bias-corrected one, 2 * estimate - mean(replicates)."""
        lines = []
        for m in self.maps.values():
            names = [x for x in (metrics or m.metrics) if x in m.metrics]
            lines.append(f"| {m.name} | n | " + " | ".join(names) + " |")
            lines.append("|---|---:|" + "---|" * len(names))
            for j, g in enumerate(m.groups):
                cells = []
                for x in names:
                    i = m.metric(x)
                    e = m.debiased[i, j] if m.corrected_ci[i, j] else m.estimate[i, j]
                    cells.append(_fmt(e, m.lo[i, j], m.hi[i, j], digits)
                                 + (" *" if m.small_metric[i, j] and not m.small[j] else ""))
                star = "*" if m.small[j] else ""
                lines.append(f"| {label_str(g)}{star} | {int(m.n[j])} | " + " | ".join(cells) + " |")
            gaps = []
            for x in names:
                i = m.metric(x)
                e = m.debiased_gap[i] if m.corrected_gap_ci[i] else m.gap[0][i]
                gaps.append(_fmt(e, m.gap[1][i], m.gap[2][i], digits))
            lines.append("| max - min | | " + " | ".join(gaps) + " |")
            lines.append("")
        basis = ("rows" if self.min_count_by == "rows" else
                 "rows in the metric's own denominator (FNR: positives, FPR: negatives)")
        kind = {"auto": "percentile intervals (bias-corrected for the groups' ECE and PIECE, shown with "
                        "their bias-corrected estimates)",
                "debiased": "bias-corrected percentile intervals and estimates"}.get(self.interval,
                                                                                   f"{self.interval} intervals")
        lines.append(f"{100 * (1 - self.alpha):g}% {kind}, {self.n_boot} bootstrap replicates"
                     f"{', cluster bootstrap' if self.cluster else ''}; * = fewer than {self.min_count} {basis} "
                     "(flagged, kept out of max - min, the worst group and the adjusted tests).")
        return "\n".join(lines)

    def to_csv(self, path: str) -> None:
        import csv

        rows = self.group_rows()
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "interval": self.interval, "n_boot": self.n_boot, "cluster": self.cluster,
                "min_count": self.min_count, "min_count_by": self.min_count_by, "scheme": self.scheme,
                "adjust": self.adjust,
                "groups": self.group_rows(), "disparities": self.disparity_rows()}

    def plot(self, metrics: tuple[str, ...] | None = None, path: str | None = None, maps=None):
        from fmkit.equity.plots import plot_audit

        return plot_audit(self, metrics=metrics, path=path, maps=maps)


def _fmt(e, lo, hi, digits):
    if not math.isfinite(e):
        return "n/a"
    return f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# ----------------------------------------------------------------------------------------------
# the audit
# ----------------------------------------------------------------------------------------------
def subgroup_audit(y_true, probs_or_pred, groups, reference_group=None, proximity=None, features=None,
                   n_boot: int = 1000, alpha: float = 0.05, cluster=None, min_count: int = 30, seed: int = 0, *,
                   interval: str = "percentile", scheme: str = "multinomial", adjust: str | None = "holm",
                   n_bins: int = 15, n_prox_bins: int = 10, threshold: float = 0.5,
                   min_count_by: str = "denominator") -> AuditResult:
    """Per-group metric table with bootstrap CIs, gaps, ratios, worst group (spec §3.1).

    Args:
        y_true: labels [n].
        probs_or_pred: P(y=1) [n] (floats), class probabilities [n, C], or hard predictions [n] (ints).
        groups: labels [n]; or a dict {map name: labels}, audited side by side; a tuple of arrays
            (or of other maps' names) is their intersection, e.g. {"race": r, "sex": s,
            "race x sex": ("race", "sex")}.
        reference_group: the group differences and ratios are taken against (default: the
            largest group of each map). With several maps, a dict {map name: group}.
        proximity / features: per-row proximity [n], or features [n, d] to compute it from
            (fmkit.calibration.proximity, exact kNN); enables PIECE.
        n_boot: replicates (0: point estimates only). alpha: 1 - coverage.
        cluster: cluster ids [n] (patient, author): whole clusters are resampled.
        min_count: a (group, metric) with fewer rows than this in the metric's denominator is
            flagged (`small_metric`) and left out of that metric's max - min, worst group and
            adjusted tests. `small` flags groups with fewer rows overall.
        min_count_by: "denominator" (default): count the rows a rate is taken over: positives
            (y = 1) for FNR, negatives for FPR, all rows for accuracy, selection rate, ECE, PIECE and
            Brier; "rows": count all rows of the group for every metric (fmkit before 2026-12-03).
            A group of 59 rows with 3 positives passes a 50-row guard, but its FNR rests on 3.
        interval: the default "percentile" (what fairlearn's MetricFrame gives); "basic"; "bca";
            "debiased": every interval is the percentile interval moved down by twice the bootstrap
            bias (mean of the replicates - estimate), i.e. centred on the bias-corrected estimate
            2 * estimate - mean(replicates); "auto": "debiased" for the per-group ECE and PIECE,
            "percentile" for everything else. ECE and PIECE are sums of |accuracy - confidence|
            over bins, biased upwards by sampling noise and again by resampling, so their
            percentile intervals sit too high: measured on 300 synthetic groups of 300 rows with a
            true ECE of 0.05, percentile coverage 0.49, "auto" 0.91 (at a true ECE of 0, 0.00 vs
            0.59: a boundary the first-order correction cannot fix). For max - min and worst
            values the evidence was mixed (3-5 groups of 300 rows, 300 trials each): percentile
            0.93-0.99 vs debiased 0.82-0.91 when groups differ, but 0.71 vs 0.89 for max - min
            accuracy when four of five groups tie and 0.81 vs 0.84 for the worst ECE; hence "auto" leaves them
            percentile and "debiased" is there for near-tie audits. The bias-corrected estimates
            are always in `MapAudit.debiased`, `debiased_gap` and `debiased_worst`. Recommended:
            "auto" for calibration audits; the default stays "percentile" (fairlearn's kind).
        scheme: "multinomial" (fixed group sizes) or "poisson". adjust: "holm", "bh" or None,
            across the groups of each metric.
    """
    alpha = bs.check_alpha(alpha)
    n_boot = bs.check_n_boot(n_boot)
    bs.check_choice("interval", interval, bs.INTERVALS)
    bs.check_choice("scheme", scheme, bs.SCHEMES)
    bs.check_choice("adjust", adjust, bs.ADJUSTMENTS)
    bs.check_choice("min_count_by", min_count_by, ("denominator", "rows"))
    for name, v in (("n_bins", n_bins), ("n_prox_bins", n_prox_bins), ("min_count", min_count)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    pr = parse_predictions(y_true, probs_or_pred, threshold)
    n = len(pr.y)
    maps = group_maps(groups, n)
    prox = _proximity(proximity, features, n)
    cl = None
    if cluster is not None:
        c = as_array(cluster, "cluster")
        check_aligned(n, "y_true", c, "cluster")
        cl = np.unique(c, return_inverse=True)[1]
    if prox is not None and pr.conf is None:
        raise ValueError("proximity/features: PIECE needs probabilities, but probs_or_pred holds hard predictions")
    layout = _Layout(n_bins if pr.conf is not None else 1, n_prox_bins if prox is not None else 1, pr.binary,
                     pr.conf is not None, prox is not None)
    rng = np.random.default_rng(seed)
    results = {}
    for name, (codes, labels) in maps.items():
        ref = reference_group.get(name) if isinstance(reference_group, dict) else reference_group
        results[name] = _audit_map(name, codes, labels, pr, prox, cl, layout, ref, n_boot, alpha, min_count, rng,
                                   interval, scheme, adjust, min_count_by)
    return AuditResult(results, alpha, interval, n_boot, cl is not None, min_count, scheme, adjust, min_count_by)


def _proximity(proximity, features, n):
    if proximity is not None and features is not None:
        raise ValueError("proximity, features: pass one of them, not both")
    if features is not None:
        from fmkit.calibration.proximity import proximity as knn_proximity

        f = as_array(features, "features", (2,))
        check_aligned(n, "y_true", f, "features")
        return np.asarray(knn_proximity(np.ascontiguousarray(f, dtype=np.float32)), dtype=np.float64)
    if proximity is None:
        return None
    p = _finite(as_array(proximity, "proximity"), "proximity")
    check_aligned(n, "y_true", p, "proximity")
    return p


def _atoms(codes, n_groups, pr: Predictions, prox, layout: _Layout) -> np.ndarray:
    cb = np.zeros(len(codes), dtype=np.int64)
    if layout.has_conf:  # fmkit.calibration's equal-width bins: numpy edges, [lo, hi), 1.0 in the last bin
        cb = np.searchsorted(np.linspace(0.0, 1.0, layout.n_conf + 1)[1:-1], pr.conf, side="right")
    pb = np.zeros(len(codes), dtype=np.int64)
    if layout.has_prox:  # quantile edges fit within each group, as piece() on that group would
        import torch

        from fmkit.calibration.metrics import _quantile_bins

        for g in range(n_groups):
            m = codes == g
            pb[m] = _quantile_bins(torch.from_numpy(prox[m]), layout.n_prox).numpy()
    q = 2 * pr.y + pr.pred if layout.binary else pr.correct.astype(np.int64)
    return ((codes * layout.n_conf + cb) * layout.n_prox + pb) * layout.q + q


def _denominators(layout: _Layout, k0: np.ndarray, names) -> np.ndarray:
    """Rows each metric is a rate over, per group [M, G]: negatives for FPR, positives for FNR, all rows otherwise."""
    k = k0.reshape(k0.shape[0], layout.n_conf, layout.n_prox, layout.q).sum((1, 2))
    rows = k.sum(-1)
    out = []
    for x in names:
        if x == "fpr":
            out.append(k[:, 0] + k[:, 1])
        elif x == "fnr":
            out.append(k[:, 2] + k[:, 3])
        else:
            out.append(rows)
    return np.stack(out)


def _audit_map(name, codes, labels, pr, prox, cl, layout, reference, n_boot, alpha, min_count, rng, interval, scheme,
               adjust, min_count_by="denominator") -> MapAudit:
    G, A = len(labels), layout.atoms
    atom = _atoms(codes, G, pr, prox, layout)
    counts = np.bincount(atom, minlength=G * A).astype(np.float64)
    n_g = counts.reshape(G, A).sum(1)
    if (n_g == 1).any():
        warnings.warn(f"groups[{name!r}]: group(s) {[label_str(labels[j]) for j in np.flatnonzero(n_g == 1)]} have "
                      "one member; their intervals are degenerate", EquityWarning, stacklevel=3)
    if reference is None:
        ref = int(np.argmax(n_g))
    else:
        if reference not in labels:
            raise ValueError(f"reference_group: {reference!r} is not a group of map {name!r}; groups: "
                             f"{[label_str(x) for x in labels][:20]}")
        ref = labels.index(reference)
    small = n_g < min_count
    names = layout.metrics()
    denom = _denominators(layout, counts.reshape(G, A), names)
    small_metric = (denom if min_count_by == "denominator" else np.broadcast_to(n_g, denom.shape)) < min_count
    # per metric: the groups passing the guard, or every group when fewer than two pass
    eligible = np.where((~small_metric).sum(1, keepdims=True) >= 2, ~small_metric, True)
    worse_low = np.array([x in HIGHER_IS_BETTER for x in names])
    has_worst = np.array([x not in NO_WORST for x in names])

    values = np.stack([pr.conf, (pr.conf - pr.correct) ** 2]) if layout.has_conf else np.zeros((0, len(atom)))
    sums = np.array([np.bincount(atom, weights=v, minlength=G * A) for v in values]).reshape(-1, G, A)
    sq = np.array([np.bincount(atom, weights=v * v, minlength=G * A) for v in values]).reshape(-1, G, A)

    def flat(mv):  # group metrics [..., M, G] -> every reported quantity [..., P]
        d, r, gap, worst = disparities(mv, ref, eligible, worse_low, has_worst)
        return np.concatenate([mv.reshape(mv.shape[:-2] + (-1,)), d.reshape(d.shape[:-2] + (-1,)),
                               r.reshape(r.shape[:-2] + (-1,)), gap, worst], axis=-1)

    k0 = counts.reshape(G, A)
    m0 = metrics_from_stats(layout, k0, sums)
    point = flat(m0)
    reps, jack = _replicates(layout, k0, sums, sq, atom, values, cl, n_boot, rng, scheme, flat, m0,
                             need_jack=interval == "bca")
    M = len(names)
    # which reported quantities get bias-corrected intervals: [M*G metrics, M*G diffs, M*G ratios, M gaps, M worst]
    calib = np.array([x in ("ece", "piece") for x in names])
    per_group = np.repeat(calib, G)
    # "auto" corrects the per-group ECE and PIECE only: there it turns a 0.49 coverage into 0.91
    # (tests/test_equity_disparity.py). Differences, max - min and worst values are left to the
    # percentile interval, whose measured coverage there was better or equal, except near ties
    # (see the docstring).
    auto_mask = np.concatenate([per_group, np.zeros(2 * M * G + 2 * M, bool)])
    corrected = np.zeros_like(auto_mask) if interval not in ("debiased", "auto") else (
        auto_mask if interval == "auto" else np.ones_like(auto_mask))
    if n_boot > 0:
        if interval == "auto":
            lo, hi = bs.intervals(point, reps, alpha, "percentile")
            dlo, dhi = bs.intervals(point, reps, alpha, "debiased")
            lo, hi = np.where(corrected, dlo, lo), np.where(corrected, dhi, hi)
        else:
            lo, hi = bs.intervals(point, reps, alpha, interval, jack)
        debiased = point - bs.bias(point, reps)
    else:
        lo = hi = np.full_like(point, np.nan)
        debiased = np.full_like(point, np.nan)
    # quantities that cannot be negative: ECE / PIECE per group, every max - min, the worst ECE / PIECE
    nonneg = np.concatenate([per_group, np.zeros(2 * M * G, bool), np.ones(M, bool), calib])
    with np.errstate(invalid="ignore"):
        debiased = np.where(nonneg, np.maximum(debiased, 0.0), debiased)
        lo = np.where(nonneg & corrected, np.maximum(lo, 0.0), lo)

    def part(v, i):
        sizes = [M * G, M * G, M * G, M, M]
        start = sum(sizes[:i])
        out = v[..., start:start + sizes[i]]
        return out.reshape(out.shape[:-1] + ((M, G) if i < 3 else (M,)))

    diff_reps = part(reps, 1) if n_boot > 0 else np.full((1, M, G), np.nan)
    p = bs.p_values(diff_reps.reshape(diff_reps.shape[0], -1)).reshape(M, G)
    p[:, ref] = np.nan
    # Groups under min_count stay out of the adjusted family and are never marked significant:
    # with a handful of rows their replicates collapse (e.g. an FNR of 0 in every replicate).
    p_adj = np.stack([bs.adjust(np.where(small_metric[i], np.nan, row), adjust) for i, row in enumerate(p)])
    sig = np.nan_to_num(p_adj, nan=1.0) < alpha
    worst_group = []
    for i in range(M):
        if not has_worst[i] or np.isnan(m0[i, eligible[i]]).all():
            worst_group.append(None)
            continue
        vals = np.where(eligible[i], m0[i], np.nan)
        worst_group.append(labels[int(np.nanargmin(vals) if worse_low[i] else np.nanargmax(vals))])
    return MapAudit(name, labels, n_g.astype(np.int64), small, names, part(point, 0), part(lo, 0), part(hi, 0),
                    labels[ref], *[tuple(part(v, i) for v in (point, lo, hi)) for i in (1, 2, 3, 4)],
                    worst_group, p, p_adj, sig, part(reps, 0), denom.astype(np.int64), small_metric,
                    part(debiased, 0), part(debiased, 3), part(debiased, 4), part(corrected, 0), part(corrected, 3))


def _replicates(layout, k0, sums, sq, atom, values, cl, n_boot, rng, scheme, flat, m0, need_jack):
    """Replicates of every reported quantity [n_boot, P], and BCa's jackknife (values, weights) or None."""
    G, A = k0.shape
    if n_boot == 0:
        return np.zeros((0, flat(m0).shape[-1])), None
    has = layout.has_conf
    if cl is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(k0 > 0, sums / np.maximum(k0, 1), 0.0)
            sds = np.sqrt(np.maximum(np.where(k0 > 0, sq / np.maximum(k0, 1), 0.0) - means**2, 0.0))
        reps = [flat(metrics_from_stats(layout, k, s if has else None))
                for k, s in bs.atom_replicates(k0, means, sds, n_boot, rng, scheme)]
        jack = _atom_jackknife(layout, k0, sums, means, flat, m0) if need_jack else None
        return np.concatenate(reps), jack
    from scipy import sparse

    C = int(cl.max()) + 1
    mats = [sparse.csr_matrix((np.ones(len(atom)), (cl, atom)), shape=(C, G * A))]
    mats += [sparse.csr_matrix((v, (cl, atom)), shape=(C, G * A)) for v in values]
    W = bs.cluster_weights(C, n_boot, rng, scheme)
    reps = []
    chunk = max(1, 4_000_000 // (G * A))
    for s in range(0, n_boot, chunk):
        w = W[s:s + chunk]
        tot = [np.asarray((mat.T @ w.T).T) for mat in mats]
        reps.append(flat(metrics_from_stats(layout, tot[0].reshape(-1, G, A),
                                            np.stack(tot[1:]).reshape(-1, len(w), G, A) if has else None)))
    jack = None
    if need_jack:  # leave one cluster out
        total = [np.asarray(mat.sum(0)).ravel() for mat in mats]
        vals = []
        for s in range(0, C, chunk):
            rows = [total[i][None] - mat[s:s + chunk].toarray() for i, mat in enumerate(mats)]
            vals.append(flat(metrics_from_stats(layout, rows[0].reshape(-1, G, A),
                                                np.stack(rows[1:]).reshape(-1, len(rows[0]), G, A) if has else None)))
        jack = (np.concatenate(vals), np.ones(C))
    return np.concatenate(reps), jack


def _atom_jackknife(layout, k0, sums, means, flat, m0):
    """Leave one row out of each non-empty atom: (values [J, P], weights = rows per atom [J])."""
    has = layout.has_conf
    G, A = k0.shape
    vals, weights = [], []
    for g in range(G):
        idx = np.flatnonzero(k0[g] > 0)
        if idx.size == 0:
            continue
        k = np.repeat(k0[g][None], idx.size, 0)
        k[np.arange(idx.size), idx] -= 1
        s = None
        if has:
            s = np.repeat(sums[:, g][:, None], idx.size, 1)
            s[:, np.arange(idx.size), idx] -= means[:, g, idx]
        mg = metrics_from_stats(layout, k[:, None], s[:, :, None] if has else None)[..., 0]  # [J, M]
        m = np.repeat(m0[None], idx.size, 0)
        m[:, :, g] = mg
        vals.append(flat(m))
        weights.append(k0[g, idx])
    return np.concatenate(vals), np.concatenate(weights)
