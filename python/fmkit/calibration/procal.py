"""ProCal (arXiv:2306.04590 §5): proximity-informed recalibration on top of any base calibrator.

DensityRatioCalibrator (continuous confidences, §5.1, Alg. 2)
    s(p, d) = f+(p, d) / (f+(p, d) + gamma * f-(p, d)),  gamma = #incorrect / #correct,
    f+ / f- : 2-D product-Gaussian KDEs over (confidence, proximity) of the correctly /
    incorrectly classified calibration samples, one bandwidth per dimension and class.
    Evaluated exactly, in bounded chunks, on the inputs' device (GPU when they are there).

BinMeanShiftCalibrator (binned confidences, §5.2, Eq. 5)
    mode="shift" (paper): nested equal-mass bins over (proximity, base-calibrated confidence);
    P' = P + lambda * (A(B) - F(B)) with A, F the bin's accuracy and mean confidence, lambda 0.5.
    mode="refit" (released code): one independent copy of the base calibrator per proximity
    quantile bin (5 bins), selected at test time by searchsorted(side="right").

Both write the new confidence into the predicted class's column and rescale the other
columns so rows still sum to one (the released code's convention, with its NaN for a
confidence of exactly 1 guarded).
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from fmkit.calibration._arrays import as_tensor, check_finite, check_labels, check_same_length, like, unit_interval
from fmkit.ops.gaussian_kde import gaussian_kde


# ---- shared plumbing ----

def _probs_and_preds(probs, preds, name="probs"):
    p = as_tensor(probs, name, ndim=2)
    check_finite(name, p)
    p = unit_interval(name, p)
    if p.shape[0] == 0:
        raise ValueError(f"{name}: empty input")
    if preds is None:
        pr = p.argmax(dim=1)
    else:
        pr = check_labels("preds", as_tensor(preds, "preds", ndim=1, device=p.device), p.shape[1])
        check_same_length(name, p, "preds", pr)
    return p, pr


def _proximities(proximities, like_tensor, name="proximities"):
    d = as_tensor(proximities, name, ndim=1, device=like_tensor.device)
    check_same_length("probs", like_tensor, name, d)
    check_finite(name, d)
    return d


def _fit_inputs(probs, labels, proximities, preds):
    """Validated (probs, preds, labels, proximities) tensors for a ProCal fit."""
    p, pr = _probs_and_preds(probs, preds)
    y = check_labels("labels", as_tensor(labels, "labels", ndim=1, device=p.device), p.shape[1])
    check_same_length("probs", p, "labels", y)
    return p, pr, y, _proximities(proximities, p)


def write_confidence(probs: torch.Tensor, column: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """probs with probs[i, column_i] = conf_i and the other entries scaled to sum to 1 - conf_i.

    When the other entries are all zero (the original confidence was exactly 1), the rest
    of the mass is spread uniformly instead of producing 0/0 = NaN.
    """
    n, C = probs.shape
    rows = torch.arange(n, device=probs.device)
    out = probs.clone()
    out[rows, column] = 0.0
    others = out.sum(dim=1)
    uniform = torch.full_like(others, 1.0 / max(C - 1, 1))
    scale = torch.where(others > 0, (1 - conf) / others.clamp_min(1e-300), torch.zeros_like(others))
    out = out * scale[:, None]
    if C > 1:
        empty = others <= 0
        out[empty] = (1 - conf[empty])[:, None] * uniform[empty][:, None]
    out[rows, column] = conf
    return out


# ---- Density-Ratio calibration ----

def kde_bandwidth(points: torch.Tensor, rule: str | float | tuple) -> torch.Tensor:
    """Per-dimension Gaussian bandwidths for `points` [n, q].

    "paper": 1.06 * std * n^(-1/5) (App. C);  "reference": statsmodels normal_reference,
    1.06 * std * n^(-1/(4+q)) (the released code). std uses ddof=0. A constant dimension gets
    bandwidth 1e-3 (a zero bandwidth is undefined).
    """
    n, q = points.shape
    if isinstance(rule, str):
        if rule not in ("paper", "reference"):
            raise ValueError(f"bandwidth: expected 'paper', 'reference', a number or a pair, got {rule!r}")
        power = -1 / 5 if rule == "paper" else -1 / (4 + q)
        h = 1.06 * points.std(dim=0, unbiased=False) * n**power
        return torch.where(h > 0, h, torch.full_like(h, 1e-3))
    h = torch.as_tensor(rule, dtype=torch.float64, device=points.device).expand(q).clone()
    if not bool((h > 0).all()):
        raise ValueError(f"bandwidth: must be positive, got {rule!r}")
    return h


class DensityRatioCalibrator:
    """ProCal Density-Ratio calibration: P(correct | confidence, proximity) by Bayes' rule.

    Args:
        bandwidth: "paper" (1.06 std n^-1/5, default), "reference" (statsmodels
            normal_reference, n^-1/6, the released code), a number, or a (conf, proximity) pair.
        eps: floor of the denominator f+ + gamma f- (1e-10, as the released code).

    fit(probs [n, C], labels [n], proximities [n], preds=None) -> self
    transform(probs, proximities, preds=None) -> probs with the calibrated confidence in the
    argmax column (confidence = max(probs); correctness = preds == labels, preds defaulting to
    argmax(probs): pass the ORIGINAL model predictions when `probs` come from a base calibrator
    that can change the argmax).
    """

    def __init__(self, bandwidth: str | float | tuple = "paper", eps: float = 1e-10, backend: str = "auto"):
        self.bandwidth = bandwidth
        self.eps = eps
        self.backend = backend

    def fit(self, probs: Any, labels: Any, proximities: Any, preds: Any = None):
        p, pr, y, d = _fit_inputs(probs, labels, proximities, preds)
        conf = p.max(dim=1).values
        correct = pr == y
        points = torch.stack([conf, d], dim=1)
        self.correct_points_ = points[correct]
        self.incorrect_points_ = points[~correct]
        n_pos, n_neg = int(correct.sum()), int((~correct).sum())
        self.gamma_ = n_neg / max(n_pos, 1)
        self.bandwidth_correct_ = kde_bandwidth(self.correct_points_, self.bandwidth) if n_pos else None
        self.bandwidth_incorrect_ = kde_bandwidth(self.incorrect_points_, self.bandwidth) if n_neg else None
        self.n_classes_ = p.shape[1]
        return self

    def predict_confidence(self, probs: Any, proximities: Any, preds: Any = None):
        """Calibrated confidence s [n] (float64) for each row."""
        if not hasattr(self, "gamma_"):
            raise ValueError("DensityRatioCalibrator: call fit first")
        p, _ = _probs_and_preds(probs, preds)
        if p.shape[1] != self.n_classes_:
            raise ValueError(f"probs: fit saw {self.n_classes_} classes, transform got {p.shape[1]}")
        d = _proximities(proximities, p)
        queries = torch.stack([p.max(dim=1).values, d], dim=1)
        dev = queries.device
        if self.bandwidth_correct_ is None:  # nothing was ever right
            return like(probs, torch.zeros(p.shape[0], dtype=torch.float64, device=dev))
        f_pos = gaussian_kde(self.correct_points_.to(dev), self.bandwidth_correct_.to(dev), queries, backend=self.backend)
        if self.bandwidth_incorrect_ is None:  # nothing was ever wrong
            return like(probs, torch.ones(p.shape[0], dtype=torch.float64, device=dev))
        f_neg = gaussian_kde(self.incorrect_points_.to(dev), self.bandwidth_incorrect_.to(dev), queries, backend=self.backend)
        s = f_pos / torch.clamp(f_pos + self.gamma_ * f_neg, min=self.eps)
        return like(probs, s.clamp(0.0, 1.0))

    def transform(self, probs: Any, proximities: Any, preds: Any = None):
        p, _ = _probs_and_preds(probs, preds)
        s = as_tensor(self.predict_confidence(p, proximities, preds), "s", device=p.device)
        return like(probs, write_confidence(p, p.argmax(dim=1), s))


# ---- Bin-Mean-Shift ----

def quantile_edges(x: torch.Tensor, n_bins: int) -> torch.Tensor:
    """The n_bins - 1 inner quantile edges of x (numpy "linear" rule)."""
    qs = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=x.device)[1:-1]
    return torch.quantile(x.to(torch.float64), qs) if qs.numel() else qs


def bin_index(x: torch.Tensor, inner_edges: torch.Tensor) -> torch.Tensor:
    """Number of inner edges <= x: bins [e_i, e_{i+1}), out-of-range values in the end bins."""
    return torch.searchsorted(inner_edges.contiguous(), x.to(torch.float64).contiguous(), right=True)


class BinMeanShiftCalibrator:
    """ProCal Bin-Mean-Shift on top of a binning calibrator (default HistogramBinning(10)).

    Args:
        base: any calibrator with fit(probs, labels) / transform(probs) on probabilities.
        mode: "shift" (paper Eq. 5, default) or "refit" (released code: one base calibrator per
            proximity bin).
        n_prox_bins, n_conf_bins: "shift" mode's nested equal-mass grid, 5 x 5 by default (the
            paper states no number; 25 cells keep >= 400 samples per cell at n = 10k).
        shrinkage: lambda of Eq. 5 (0.5, the paper's value).
        refit_prox_bins: proximity quantile bins of "refit" mode (5, the released code).
    """

    def __init__(self, base: Any = None, *, mode: str = "shift", n_prox_bins: int = 5, n_conf_bins: int = 5,
                 shrinkage: float = 0.5, refit_prox_bins: int = 5):
        if mode not in ("shift", "refit"):
            raise ValueError(f"mode: expected 'shift' or 'refit', got {mode!r}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage: expected a value in [0, 1], got {shrinkage}")
        for name, v in (("n_prox_bins", n_prox_bins), ("n_conf_bins", n_conf_bins), ("refit_prox_bins", refit_prox_bins)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if base is None:
            from fmkit.calibration.calibrators import HistogramBinning

            base = HistogramBinning(n_bins=10)
        self.base = base
        self.mode = mode
        self.n_prox_bins = n_prox_bins
        self.n_conf_bins = n_conf_bins
        self.shrinkage = shrinkage
        self.refit_prox_bins = refit_prox_bins

    def fit(self, probs: Any, labels: Any, proximities: Any, preds: Any = None):
        p, pr, y, d = _fit_inputs(probs, labels, proximities, preds)
        self.n_classes_ = p.shape[1]
        if self.mode == "refit":
            self.prox_edges_ = quantile_edges(d, self.refit_prox_bins)
            bins = bin_index(d, self.prox_edges_)
            self.calibrators_ = []
            for b in range(self.refit_prox_bins):
                members = bins == b
                cal = copy.deepcopy(self.base)
                # An empty bin (heavy ties) borrows the calibrator fit on everything.
                idx = members if bool(members.any()) else torch.ones_like(members)
                self.calibrators_.append(cal.fit(p[idx], y[idx]))
            return self
        self.base_ = copy.deepcopy(self.base).fit(p, y)
        cal = as_tensor(self.base_.transform(p), "base output", device=p.device)
        conf = cal[torch.arange(p.shape[0], device=p.device), pr]
        correct = (pr == y).to(torch.float64)
        self.prox_edges_ = quantile_edges(d, self.n_prox_bins)
        pbin = bin_index(d, self.prox_edges_)
        self.conf_edges_ = torch.stack([
            quantile_edges(conf[pbin == b], self.n_conf_bins) if bool((pbin == b).any())
            else quantile_edges(conf, self.n_conf_bins)
            for b in range(self.n_prox_bins)
        ])
        cell = self._cells(conf, pbin)
        n_cells = self.n_prox_bins * self.n_conf_bins
        count = torch.zeros(n_cells, dtype=torch.float64, device=p.device).index_add_(0, cell, torch.ones_like(conf))
        acc = torch.zeros_like(count).index_add_(0, cell, correct)
        mean_conf = torch.zeros_like(count).index_add_(0, cell, conf)
        # Empty cells get no shift (A - F = 0).
        self.shift_ = torch.where(count > 0, (acc - mean_conf) / count.clamp_min(1), torch.zeros_like(count))
        return self

    def _cells(self, conf, pbin):
        edges = self.conf_edges_.to(conf.device)[pbin]  # [n, n_conf_bins - 1]
        cbin = (edges <= conf[:, None]).sum(dim=1)
        return pbin * self.n_conf_bins + cbin

    def transform(self, probs: Any, proximities: Any, preds: Any = None):
        if not hasattr(self, "n_classes_"):
            raise ValueError("BinMeanShiftCalibrator: call fit first")
        p, pr = _probs_and_preds(probs, preds)
        if p.shape[1] != self.n_classes_:
            raise ValueError(f"probs: fit saw {self.n_classes_} classes, transform got {p.shape[1]}")
        d = _proximities(proximities, p)
        if self.mode == "refit":
            out = torch.empty_like(p)
            bins = bin_index(d, self.prox_edges_.to(p.device))
            for b, cal in enumerate(self.calibrators_):
                members = bins == b
                if bool(members.any()):
                    out[members] = as_tensor(cal.transform(p[members]), "base output", device=p.device)
            return like(probs, out)
        cal = as_tensor(self.base_.transform(p), "base output", device=p.device)
        rows = torch.arange(p.shape[0], device=p.device)
        conf = cal[rows, pr]
        cell = self._cells(conf, bin_index(d, self.prox_edges_.to(p.device)))
        shifted = (conf + self.shrinkage * self.shift_.to(p.device)[cell]).clamp(0.0, 1.0)
        return like(probs, write_confidence(cal, pr, shifted))
