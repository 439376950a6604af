"""Per-group calibration slope and intercept (logistic recalibration) with bootstrap CIs.

Within each group, fit P(y=1) = sigmoid(a + b * logit(p)): a well-calibrated model has b = 1 and
a = 0; b < 1 means over-confident scores. The point estimates are exact Newton fits on the rows.
Replicates use the same sufficient-statistics idea as subgroup_audit: rows are pooled into atoms
(group x label x one of `n_bins` quantile bins of logit(p)), atom counts are redrawn
(multinomial within the group) and every replicate's fit runs on the atoms, vectorised over
replicates and groups. The binned fit differs slightly from the row fit, so the replicates are
shifted by (row fit - binned fit) before the percentile interval is read.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fmkit.equity import _bootstrap as bs
from fmkit.equity.audit import group_maps, label_str, parse_predictions


@dataclasses.dataclass
class CalibrationFit:
    groups: list
    n: np.ndarray
    slope: tuple[np.ndarray, np.ndarray, np.ndarray]  # estimate, lo, hi per group
    intercept: tuple[np.ndarray, np.ndarray, np.ndarray]

    def to_markdown(self, digits: int = 3) -> str:
        lines = ["| group | n | slope | intercept |", "|---|---:|---|---|"]
        for j, g in enumerate(self.groups):
            cells = [f"{t[0][j]:.{digits}f} [{t[1][j]:.{digits}f}, {t[2][j]:.{digits}f}]"
                     for t in (self.slope, self.intercept)]
            lines.append(f"| {label_str(g)} | {int(self.n[j])} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _newton(x, y, w, iters: int = 25):
    """Weighted logistic fits of y on (1, x), batched: x, y, w [..., m] -> (a, b) [...]."""
    a = np.zeros(x.shape[:-1])
    b = np.ones(x.shape[:-1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a[..., None] + b[..., None] * x)))
        r, v = w * (y - p), w * p * (1 - p)
        g0, g1 = r.sum(-1), (r * x).sum(-1)
        h00, h01, h11 = v.sum(-1), (v * x).sum(-1), (v * x * x).sum(-1)
        det = h00 * h11 - h01**2
        with np.errstate(invalid="ignore", divide="ignore"):
            a = a + (h11 * g0 - h01 * g1) / det
            b = b + (h00 * g1 - h01 * g0) / det
    return a, b


def calibration_fit(y_true, probs, groups, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                    n_bins: int = 50, eps: float = 1e-6) -> CalibrationFit:
    """Calibration slope and intercept per group (binary P(y=1) [n]) with percentile bootstrap CIs."""
    alpha, n_boot = bs.check_alpha(alpha), bs.check_n_boot(n_boot)
    pr = parse_predictions(y_true, probs)
    if pr.conf is None or not pr.binary or np.asarray(probs).ndim != 1:
        raise ValueError("probs: calibration slope needs binary probabilities P(y=1) [n]")
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    x = np.log(p) - np.log1p(-p)
    (codes, labels), = group_maps(groups, len(x)).values()
    G = len(labels)
    # exact fits on the rows: one padded [G, max n_g] batch
    order = np.argsort(codes, kind="stable")
    n_g = np.bincount(codes, minlength=G)
    width = int(n_g.max())
    pos = np.arange(len(x)) - np.repeat(np.cumsum(n_g) - n_g, n_g)
    X, Y, W = (np.zeros((G, width)) for _ in range(3))
    X[codes[order], pos], Y[codes[order], pos], W[codes[order], pos] = x[order], pr.y[order], 1.0
    a0, b0 = _newton(X, Y, W)
    # atoms: group x quantile bin of logit(p) (edges over all rows) x label
    edges = np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1])
    atom = (codes * n_bins + np.searchsorted(edges, x, side="right")) * 2 + pr.y
    A = n_bins * 2
    k = np.bincount(atom, minlength=G * A).reshape(G, A).astype(np.float64)
    xs = np.bincount(atom, weights=x, minlength=G * A).reshape(G, A)
    xm = np.where(k > 0, xs / np.maximum(k, 1), 0.0)
    ya = np.tile(np.array([0.0, 1.0]), n_bins)
    ab, bb = _newton(xm, np.broadcast_to(ya, k.shape), k)
    lo_hi = []
    if n_boot:
        rng = np.random.default_rng(seed)
        reps = rng.multinomial(n_g.astype(np.int64), k / n_g[:, None], size=(n_boot, G)).astype(np.float64)
        ar, br = _newton(np.broadcast_to(xm, reps.shape), np.broadcast_to(ya, reps.shape), reps)
        for point, binned, r in ((b0, bb, br), (a0, ab, ar)):
            lo_hi.append(bs.intervals(point, r + (point - binned), alpha, "percentile"))
    else:
        lo_hi = [(np.full(G, np.nan),) * 2] * 2
    return CalibrationFit(labels, n_g, (b0, *lo_hi[0]), (a0, *lo_hi[1]))
