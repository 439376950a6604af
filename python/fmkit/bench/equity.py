"""Subgroup-audit bootstrap benchmark: fmkit.equity.subgroup_audit against fairlearn's MetricFrame.

Both compute accuracy, FPR, FNR, selection rate, Brier and 15-bin ECE per group of a binary
classifier with percentile bootstrap intervals. MetricFrame (n_boot=...) re-samples the whole
data frame and recomputes every metric per replicate in Python; fmkit draws replicates from
per-group sufficient statistics. Same replicate count on both sides. The 'exact' column says
whether a contender's point estimates equal a float64 numpy computation (|diff| < 1e-9).
The 1M-row case (issue 19's <= 2 s target) has a vectorised numpy row bootstrap as its anchor
(full mode only: about a minute per call on 2 cores).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch

from fmkit.bench import unavailable

SHAPES = {  # (rows, groups, replicates, anchor)
    "quick": [(2_000, 20, 3, "metricframe"), (100_000, 20, 1000, None)],
    "full": [(50_000, 20, 100, "metricframe"), (1_000_000, 20, 1000, "numpy")],
}


def synthetic(n: int, groups: int, seed: int = 0):
    """Binary labels, P(y=1) and group ids, with accuracy and calibration that differ by group."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    shift = np.linspace(-0.15, 0.15, groups)[g]
    p = rng.beta(2, 2, n)
    y = (rng.uniform(size=n) < np.clip(p + shift, 0, 1)).astype(np.int64)
    return y, p, g


# -- the metrics, one row-level definition shared by the anchors and the correctness check ------
def accuracy(y, p):
    return float(np.mean((p >= 0.5) == y))


def fpr(y, p):
    neg = y == 0
    return float(np.mean(p[neg] >= 0.5)) if neg.any() else float("nan")


def fnr(y, p):
    pos = y == 1
    return float(np.mean(p[pos] < 0.5)) if pos.any() else float("nan")


def selection_rate(y, p):
    return float(np.mean(p >= 0.5))


def brier(y, p):
    return float(np.mean((p - y) ** 2))


def ece(y, p, n_bins: int = 15):
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == y).astype(np.float64)
    bins = np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], conf, side="right")
    return float(np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, conf, n_bins)).sum() / len(y))


METRIC_FUNCTIONS = {"accuracy": accuracy, "fpr": fpr, "fnr": fnr, "selection_rate": selection_rate,
                    "ece": ece, "brier": brier}


def reference_estimates(y, p, g) -> dict[str, np.ndarray]:
    """Per-group values of every metric, row by row in float64 numpy."""
    groups = np.unique(g)
    return {k: np.array([f(y[g == j], p[g == j]) for j in groups]) for k, f in METRIC_FUNCTIONS.items()}


def metricframe_audit(y, p, g, n_boot: int | None, seed: int = 0, alpha: float = 0.05, metrics=None):
    """fairlearn's MetricFrame with its bootstrap: (by-group estimates, lower, upper) per metric
    (lower/upper None without n_boot)."""
    from fairlearn.metrics import MetricFrame

    fns = {k: METRIC_FUNCTIONS[k] for k in (metrics or METRIC_FUNCTIONS)}
    ci = dict(n_boot=n_boot, ci_quantiles=[alpha / 2, 1 - alpha / 2], random_state=seed) if n_boot else {}
    mf = MetricFrame(metrics=fns, y_true=y, y_pred=p, sensitive_features=g, **ci)
    est = {k: mf.by_group[k].to_numpy() for k in fns}
    if not n_boot:
        return est, None, None
    lo, hi = mf.by_group_ci
    return est, {k: lo[k].to_numpy() for k in fns}, {k: hi[k].to_numpy() for k in fns}


def numpy_row_bootstrap(y, p, g, n_boot: int, seed: int = 0):
    """A vectorised row-resampling bootstrap within groups (indices drawn per group, metrics by
    bincount per replicate): accuracy, ECE and Brier percentile intervals."""
    rng = np.random.default_rng(seed)
    groups = np.unique(g)
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == y).astype(np.float64)
    bins = np.minimum((conf * 15).astype(np.int64), 14)
    idx = [np.flatnonzero(g == j) for j in groups]
    reps = np.empty((n_boot, 3, len(groups)))
    for b in range(n_boot):
        for j, rows in enumerate(idx):
            s = rows[rng.integers(0, rows.size, rows.size)]
            c, k = conf[s], correct[s]
            e = np.abs(np.bincount(bins[s], k, 15) - np.bincount(bins[s], c, 15)).sum() / s.size
            reps[b, :, j] = k.mean(), e, np.mean((c - k) ** 2)
    return np.quantile(reps, [0.025, 0.975], axis=0)


def _fmkit(y, p, g, n_boot):
    from fmkit.equity import subgroup_audit

    return subgroup_audit(y, p, g, n_boot=n_boot, min_count=1, adjust=None)


def _fmkit_exact(y, p, g) -> bool:
    m = _fmkit(y, p, g, 0).maps["group"]
    ref = reference_estimates(y, p, g)
    return all(np.allclose(m.estimate[m.metric(k)], v, atol=1e-9, equal_nan=True) for k, v in ref.items())


def _metricframe_exact(y, p, g) -> bool:
    est, _, _ = metricframe_audit(y, p, g, None)
    ref = reference_estimates(y, p, g)
    return all(np.allclose(est[k], v, atol=1e-9, equal_nan=True) for k, v in ref.items())


def cases(device: torch.device, quick: bool, shapes=None):
    out = []
    for n, groups, n_boot, anchor in shapes or SHAPES["quick" if quick else "full"]:
        y, p, g = synthetic(n, groups)
        contenders = [(f"fmkit subgroup_audit (n_boot={n_boot})", lambda y=y, p=p, g=g, b=n_boot: _fmkit(y, p, g, b),
                       False)]
        exact = {contenders[0][0]: _fmkit_exact(y, p, g)}
        if anchor == "metricframe":
            name = f"fairlearn MetricFrame (n_boot={n_boot})"
            if importlib.util.find_spec("fairlearn") is None:
                contenders.append((name, unavailable("fairlearn not installed (pip install fairlearn)"), True))
            else:
                contenders.append((name, lambda y=y, p=p, g=g, b=n_boot: metricframe_audit(y, p, g, b), True))
                exact[name] = _metricframe_exact(y[:20_000], p[:20_000], g[:20_000])
        elif anchor == "numpy":
            contenders.append((f"numpy row bootstrap (n_boot={n_boot})",
                               lambda y=y, p=p, g=g, b=n_boot: numpy_row_bootstrap(y, p, g, b), True))
        else:
            contenders.append(("numpy row bootstrap", unavailable("full mode only (about a minute per call)"), True))
        out.append({
            "shape": f"rows={n} groups={groups} replicates={n_boot}",
            "flops": float(n) * n_boot,  # row-replicates: what a row-resampling bootstrap touches
            "contenders": contenders,
            "exact": exact,
            "repeats": 1 if anchor else 2,
        })
    return out
