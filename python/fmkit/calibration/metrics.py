"""Calibration metrics: ECE, ACE (adaptive), MCE, Brier, PIECE, and `evaluate`.

Conventions (spec §3; ProCal, arXiv:2306.04590):

* Inputs are torch tensors or numpy arrays; everything is computed in float64 torch on the
  device of the first argument, and each metric returns a Python float.
* Equal-width bins: edges ``np.linspace(0, 1, n_bins + 1)``; a sample goes to the bin given by
  ``np.digitize`` on the inner edges, i.e. half-open ``[lo, hi)`` with confidence 1.0 in the
  last bin (as ProCal's released code; Guo et al. use ``(lo, hi]``, which only matters for
  values exactly on an edge).
* Equal-mass (quantile) bins -- ACE, PIECE's proximity bins, the paper PIECE -- use **numpy's
  "linear" percentile rule**, bit-for-bit ``np.percentile(x, np.linspace(0, 100, n + 1))``
  (the rule of ``KBinsDiscretizer(strategy="quantile")`` in the sklearn versions ProCal used;
  newer sklearn defaults to "averaged_inverted_cdf" and subsamples large inputs, so results
  would drift if we delegated).
* Bin assignment for quantile edges = number of inner edges ``<=`` value (``searchsorted``,
  side="right"). Ties are therefore never split: when many equal values make several edges
  coincide (zero-width bins), the whole tie block lands in the bin above the last coinciding
  edge and the zero-width bins stay empty; empty bins contribute nothing. This gives the same
  partition as sklearn, which deletes zero-width bins (sklearn also merges bins narrower than
  1e-8; we merge only exactly equal edges).
* All binned errors are sums over non-empty bins of ``(n_b / N) * |acc_b - conf_b|``, computed
  as ``|sum(correct_b) - sum(conf_b)| / N``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fmkit.calibration._arrays import as_tensor, check_finite, check_labels, check_same_length, unit_interval

__all__ = ["ece", "ace", "mce", "brier", "piece", "evaluate"]

_PIECE_VARIANTS = ("reference", "paper")


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _check_n_bins(name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {n}")
    return int(n)


def _confidences(x: Any, name: str = "confidences") -> torch.Tensor:
    t = as_tensor(x, name, ndim=1)
    if t.numel() == 0:
        raise ValueError(f"{name}: empty input (need at least one sample)")
    check_finite(name, t)
    t = unit_interval(name, t)
    return t


def _correct(x: Any, ref: torch.Tensor, ref_name: str = "confidences", name: str = "correct") -> torch.Tensor:
    t = as_tensor(x, name, ndim=1, device=ref.device)
    check_same_length(ref_name, ref, name, t)
    check_finite(name, t)
    if not bool(((t == 0) | (t == 1)).all()):
        bad = t[~((t == 0) | (t == 1))][0].item()
        raise ValueError(f"{name}: expected booleans or 0/1 indicators, found {bad}")
    return t


def _proximities(x: Any, ref: torch.Tensor, ref_name: str = "confidences", name: str = "proximities") -> torch.Tensor:
    t = as_tensor(x, name, ndim=1, device=ref.device)
    check_same_length(ref_name, ref, name, t)
    check_finite(name, t)
    return t


# ----------------------------------------------------------------------------------------------
# binning
# ----------------------------------------------------------------------------------------------
def _equal_width_bins(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    # Edges from numpy so the boundaries are bit-identical to the released code's np.linspace.
    inner = torch.as_tensor(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], dtype=torch.float64, device=conf.device)
    return torch.searchsorted(inner, conf.contiguous(), right=True)


def _quantile_edges(x: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``np.percentile(x, np.linspace(0, 100, n_bins + 1))`` (method "linear"), bit-identical.

    Only the 2 * (n_bins + 1) order statistics involved leave the device; the interpolation is
    done in numpy with numpy's own formula so that edges equal to data values stay exactly equal
    (an edge one ulp above a data value would move that sample to the lower bin).
    """
    n = x.numel()
    xs = torch.sort(x).values
    q = np.true_divide(np.linspace(0.0, 100.0, n_bins + 1), 100)
    virtual = (n - 1) * q
    prev = np.floor(virtual)
    gamma = virtual - prev
    prev = prev.astype(np.int64)
    nxt = prev + 1
    at_end = virtual >= n - 1
    prev[at_end] = n - 1
    nxt[at_end] = n - 1
    idx = torch.as_tensor(np.concatenate([prev, nxt]), device=x.device)
    vals = xs[idx].cpu().numpy()
    a, b = vals[: n_bins + 1], vals[n_bins + 1:]
    diff = b - a
    edges = a + diff * gamma
    hi = gamma >= 0.5
    edges[hi] = (b - diff * (1 - gamma))[hi]
    return torch.as_tensor(edges, dtype=torch.float64, device=x.device)


def _quantile_bins(x: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-mass bin index per sample: number of inner quantile edges <= value (see module doc)."""
    if n_bins == 1:
        return torch.zeros(x.shape, dtype=torch.int64, device=x.device)
    inner = _quantile_edges(x, n_bins)[1:-1].contiguous()
    return torch.searchsorted(inner, x.contiguous(), right=True)


def _bin_sums(bins: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor, n_cells: int):
    count = torch.bincount(bins, minlength=n_cells).to(torch.float64)
    s_conf = torch.zeros(n_cells, dtype=torch.float64, device=conf.device).index_add_(0, bins, conf)
    s_corr = torch.zeros(n_cells, dtype=torch.float64, device=conf.device).index_add_(0, bins, correct)
    return count, s_conf, s_corr


def _binned_error(bins: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor, n_cells: int) -> float:
    _, s_conf, s_corr = _bin_sums(bins, conf, correct, n_cells)
    # Empty bins have both sums 0, so they drop out without masking.
    return float((s_corr - s_conf).abs().sum() / conf.numel())


def _paper_piece_cells(conf: torch.Tensor, prox: torch.Tensor, n_conf_bins: int, n_prox_bins: int) -> torch.Tensor:
    conf_bin = _quantile_bins(conf, n_conf_bins)
    cells = torch.empty_like(conf_bin)
    # A Python loop over <= n_conf_bins groups (not over samples): each group gets its own
    # proximity quantile edges, which is the nesting the paper describes.
    for b in torch.unique(conf_bin).tolist():
        m = conf_bin == b
        cells[m] = b * n_prox_bins + _quantile_bins(prox[m], n_prox_bins)
    return cells


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def ece(confidences, correct, n_bins: int = 15) -> float:
    """Expected calibration error with `n_bins` equal-width bins ([lo, hi), 1.0 in the last bin).

    ``sum_b (n_b / N) * |acc_b - conf_b|`` over non-empty bins.
    """
    n_bins = _check_n_bins("n_bins", n_bins)
    conf = _confidences(confidences)
    corr = _correct(correct, conf)
    return _binned_error(_equal_width_bins(conf, n_bins), conf, corr, n_bins)


def ace(confidences, correct, n_bins: int = 15) -> float:
    """Adaptive calibration error (Nixon et al.): `n_bins` equal-mass bins, sample-weighted.

    Not netcal's "ACE" (an unweighted average over bins). Edges follow numpy's "linear"
    percentile rule; tied confidences are never split across bins, so with many equal values
    (e.g. lots of 1.0) a bin can hold more than N / n_bins samples and some bins stay empty
    (see the module docstring).
    """
    n_bins = _check_n_bins("n_bins", n_bins)
    conf = _confidences(confidences)
    corr = _correct(correct, conf)
    return _binned_error(_quantile_bins(conf, n_bins), conf, corr, n_bins)


def mce(confidences, correct, n_bins: int = 15, weighted: bool = False) -> float:
    """Maximum calibration error over non-empty equal-width bins.

    ``weighted=False`` (paper, netcal): ``max_b |acc_b - conf_b|``. ``weighted=True`` (ProCal's
    released code, hence the published tables, where MCE < ECE): ``max_b (n_b / N) |acc_b - conf_b|``.
    """
    n_bins = _check_n_bins("n_bins", n_bins)
    conf = _confidences(confidences)
    corr = _correct(correct, conf)
    count, s_conf, s_corr = _bin_sums(_equal_width_bins(conf, n_bins), conf, corr, n_bins)
    nonempty = count > 0
    gap = (s_corr - s_conf)[nonempty].abs()
    gap = gap / conf.numel() if weighted else gap / count[nonempty]
    return float(gap.max())


def _probs_labels(probs, labels, preds=None):
    p = as_tensor(probs, "probs", ndim=2)
    if p.shape[0] == 0:
        raise ValueError("probs: empty input (need at least one sample)")
    if p.shape[1] == 0:
        raise ValueError("probs: need at least one class column")
    check_finite("probs", p)
    p = unit_interval("probs", p)
    y = as_tensor(labels, "labels", ndim=1, dtype=None, device=p.device)
    check_same_length("probs", p, "labels", y)
    y = check_labels("labels", y, p.shape[1])
    if preds is None:
        pr = p.argmax(dim=1)
    else:
        pr = as_tensor(preds, "preds", ndim=1, dtype=None, device=p.device)
        check_same_length("probs", p, "preds", pr)
        pr = check_labels("preds", pr, p.shape[1])
    return p, y, pr


def brier(probs, labels, multiclass: bool = False, *, preds=None) -> float:
    """Brier score of `probs` [N, C] against integer `labels` [N].

    Default (top-label, the binary quantity of ProCal's Theorem 5.1): ``mean((conf - correct)^2)``
    with ``conf = probs[i, pred_i]``, ``correct = pred_i == label_i`` and ``pred`` = argmax of
    `probs` unless `preds` (e.g. the uncalibrated model's predictions) is given.
    ``multiclass=True``: ``mean_i sum_c (p_ic - 1[y_i = c])^2``.
    """
    p, y, pr = _probs_labels(probs, labels, preds)
    if multiclass:
        onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)
        return float(((p - onehot) ** 2).sum(dim=1).mean())
    conf = p.gather(1, pr[:, None])[:, 0]
    corr = (pr == y).to(p.dtype)
    return float(((conf - corr) ** 2).mean())


def piece(confidences, correct, proximities, n_conf_bins: int = 15, n_prox_bins: int = 10,
          variant: str = "reference") -> float:
    """Proximity-informed expected calibration error (ProCal Eq. 4, binned).

    ``sum_cells (n_cell / N) * |acc_cell - conf_cell|`` over non-empty (confidence, proximity) cells.

    * ``variant="reference"`` (default; what produced the published tables): `n_prox_bins`
      proximity quantile bins, edges fit on the evaluated samples themselves, crossed with
      `n_conf_bins` equal-width confidence bins (the ECE bins). Refines ECE, so
      ``ece(n_bins=n_conf_bins) <= piece``.
    * ``variant="paper"``: `n_conf_bins` equal-mass confidence bins (the ACE bins), each split
      into `n_prox_bins` equal-mass proximity bins with edges fit within that confidence bin.
      Refines ACE, so ``ace(n_bins=n_conf_bins) <= piece``.

    Zero-width quantile bins (e.g. only a few distinct proximity values) are handled by the
    "number of inner edges <= value" rule: equal proximities always share a bin.
    """
    n_conf_bins = _check_n_bins("n_conf_bins", n_conf_bins)
    n_prox_bins = _check_n_bins("n_prox_bins", n_prox_bins)
    if variant not in _PIECE_VARIANTS:
        raise ValueError(f"variant: expected one of {_PIECE_VARIANTS}, got {variant!r}")
    conf = _confidences(confidences)
    corr = _correct(correct, conf)
    prox = _proximities(proximities, conf)
    if variant == "reference":
        cells = _quantile_bins(prox, n_prox_bins) * n_conf_bins + _equal_width_bins(conf, n_conf_bins)
    else:
        cells = _paper_piece_cells(conf, prox, n_conf_bins, n_prox_bins)
    return _binned_error(cells, conf, corr, n_conf_bins * n_prox_bins)


def evaluate(probs, labels, proximities, preds=None, *, n_bins: int = 15, n_prox_bins: int = 10,
             piece_variant: str = "reference", mce_weighted: bool = False,
             brier_multiclass: bool = False) -> dict[str, float]:
    """All metrics at once, ProCal style.

    ``confidence_i = probs[i, preds_i]`` and ``correct_i = preds_i == labels_i``. In ProCal
    `preds` are the *original* (uncalibrated) model's predictions, so a calibrator that changes
    the argmax is still scored at the original prediction; `preds` defaults to argmax of `probs`.
    The published tables correspond to ``mce_weighted=True`` and the default PIECE variant.

    Returns a dict with keys ``ece, ace, mce, brier, piece, accuracy`` (Python floats).
    """
    p, y, pr = _probs_labels(probs, labels, preds)
    conf = p.gather(1, pr[:, None])[:, 0]
    corr = (pr == y).to(torch.float64)
    prox = _proximities(proximities, p, "probs")
    return {
        "ece": ece(conf, corr, n_bins),
        "ace": ace(conf, corr, n_bins),
        "mce": mce(conf, corr, n_bins, weighted=mce_weighted),
        "brier": brier(p, y, brier_multiclass, preds=pr),
        "piece": piece(conf, corr, prox, n_bins, n_prox_bins, variant=piece_variant),
        "accuracy": float(corr.mean()),
    }
