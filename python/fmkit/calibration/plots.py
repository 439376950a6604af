"""Reliability diagrams and proximity-bias plots (ProCal Fig. 1 / Fig. 10; spec §3.4).

Figures are built as ``matplotlib.figure.Figure`` objects with an Agg canvas attached, never
through pyplot: nothing is shown, no global backend is switched, and figures are not kept alive
by pyplot's registry (important when plotting in loops). Save with ``fig.savefig(path)``; in a
notebook the returned Figure displays as usual. matplotlib is imported lazily so that
``fmkit.calibration`` does not require it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fmkit.calibration.metrics import (
    _check_n_bins,
    _confidences,
    _correct,
    _equal_width_bins,
    _proximities,
    _quantile_bins,
    ece,
    piece,
)

__all__ = ["reliability_diagram", "proximity_bias_plot"]


def _new_figure(n_panels: int, panel_size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * n_panels, panel_size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _reliability_panel(ax, conf: torch.Tensor, corr: torch.Tensor, n_bins: int, title: str | None) -> None:
    bins = _equal_width_bins(conf, n_bins)
    count = torch.bincount(bins, minlength=n_bins).double()
    s_conf = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, bins, conf)
    s_corr = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, bins, corr)
    count, s_conf, s_corr = (t.cpu().numpy() for t in (count, s_conf, s_corr))
    ne = count > 0
    acc = s_corr[ne] / count[ne]
    mean_conf = s_conf[ne] / count[ne]
    width = 1.0 / n_bins
    centers = (np.arange(n_bins) + 0.5)[ne] * width

    ax.bar(centers, acc, width=width, color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
    # The gap runs from the bin's accuracy to its mean confidence (negative height = under-confident).
    ax.bar(centers, mean_conf - acc, bottom=acc, width=width, color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", linewidth=0.5, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.plot([], [], " ", label=f"ECE = {100 * ece(conf, corr, n_bins):.2f}%  (n = {conf.numel()})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")


def _rank_groups(prox: torch.Tensor, n_groups: int):
    # Equal-size groups by rank (ties broken by sample index), as in the bias test.
    order = np.argsort(prox.cpu().numpy(), kind="stable")
    groups = np.array_split(order, n_groups)
    dev = prox.device
    return torch.as_tensor(groups[0], device=dev), torch.as_tensor(groups[-1], device=dev)


def reliability_diagram(confidences, correct, n_bins: int = 15, *, proximities=None, n_prox_groups: int = 10,
                        title: str | None = None, ax=None):
    """Reliability diagram: accuracy per equal-width confidence bin against the diagonal.

    With `proximities`, three panels side by side: all samples, the lowest and the highest of
    `n_prox_groups` equal-size proximity groups (ProCal Fig. 1) -- proximity bias shows as the
    low group sitting below the diagonal and the high group above it.

    `ax`: an Axes to draw on (without `proximities`) or a sequence of three Axes (with
    `proximities`); by default a new Figure is created. Returns the Figure.
    """
    n_bins = _check_n_bins("n_bins", n_bins)
    conf = _confidences(confidences)
    corr = _correct(correct, conf)
    if proximities is None:
        if ax is None:
            fig, (ax,) = _new_figure(1, (5.0, 5.0))
        elif isinstance(ax, Sequence):
            raise ValueError("ax: expected a single Axes when proximities is None")
        _reliability_panel(ax, conf, corr, n_bins, title)
        return ax.figure

    n_prox_groups = _check_n_bins("n_prox_groups", n_prox_groups)
    if n_prox_groups < 2:
        raise ValueError(f"n_prox_groups: expected an integer >= 2, got {n_prox_groups}")
    prox = _proximities(proximities, conf)
    if conf.numel() < n_prox_groups:
        raise ValueError(f"confidences: need at least n_prox_groups={n_prox_groups} samples, got {conf.numel()}")
    if ax is None:
        fig, axes = _new_figure(3, (4.5, 4.5))
    else:
        if not isinstance(ax, Sequence) or len(ax) != 3:
            raise ValueError("ax: expected a sequence of three Axes when proximities are given")
        axes, fig = list(ax), ax[0].figure
    low, high = _rank_groups(prox, n_prox_groups)
    _reliability_panel(axes[0], conf, corr, n_bins, "all samples")
    _reliability_panel(axes[1], conf[low], corr[low], n_bins, f"lowest proximity (1/{n_prox_groups})")
    _reliability_panel(axes[2], conf[high], corr[high], n_bins, f"highest proximity (1/{n_prox_groups})")
    if title:
        fig.suptitle(title)
    return fig


def proximity_bias_plot(confidences, correct, proximities, n_bins: int = 10, *, labels=None, ax=None):
    """Accuracy minus mean confidence per proximity bin (equal-mass, low to high proximity).

    `confidences` is one array, or a dict ``{method_name: confidences}`` to overlay several
    methods (e.g. ``{"uncalibrated": conf, "TS": conf_ts, "TS + ProCal": conf_dr}``), one line
    each. `correct` is one array shared by all methods (ProCal scores every method at the
    original model's prediction) or a dict with the same keys. `labels` names the single series
    when `confidences` is an array. Bins use the PIECE rule (numpy "linear" quantile edges of
    `proximities`; tied proximities share a bin, so zero-width bins are simply absent). Tick
    labels show each bin's mean proximity; the legend shows each method's ECE and PIECE.
    Positive values = under-confident, negative = over-confident. Returns the Figure.
    """
    n_bins = _check_n_bins("n_bins", n_bins)
    if isinstance(confidences, Mapping):
        if labels is not None:
            raise ValueError("labels: not used when confidences is a dict (its keys name the series)")
        if len(confidences) == 0:
            raise ValueError("confidences: empty dict")
        series = {str(k): _confidences(v, f"confidences[{k!r}]") for k, v in confidences.items()}
    else:
        if labels is not None and not isinstance(labels, str):
            raise ValueError("labels: expected a string naming the series")
        series = {labels or "confidence": _confidences(confidences)}
    first_name, first = next(iter(series.items()))
    if isinstance(correct, Mapping):
        missing = set(series) - {str(k) for k in correct}
        if missing:
            raise ValueError(f"correct: no entry for {sorted(missing)}")
        corrects = {str(k): v for k, v in correct.items()}
        corr = {name: _correct(corrects[name], c, f"confidences[{name!r}]", f"correct[{name!r}]")
                for name, c in series.items()}
    else:
        shared = _correct(correct, first, "confidences")
        corr = {}
        for name, c in series.items():
            if c.shape[0] != shared.shape[0]:
                raise ValueError(f"confidences[{name!r}]: length {c.shape[0]} does not match correct "
                                 f"length {shared.shape[0]}")
            corr[name] = shared.to(c.device)
    prox = _proximities(proximities, first, "confidences")

    bins = _quantile_bins(prox, n_bins)
    count = torch.bincount(bins, minlength=n_bins).double()
    ne = (count > 0).cpu().numpy()
    s_prox = torch.zeros(n_bins, dtype=torch.float64, device=prox.device).index_add_(0, bins, prox)
    mean_prox = (s_prox / count.clamp(min=1)).cpu().numpy()
    x = np.arange(1, n_bins + 1)

    if ax is None:
        fig, (ax,) = _new_figure(1, (6.5, 4.0))
    ax.axhline(0.0, color="gray", linestyle="--", linewidth=1)
    for name, c in series.items():
        b = bins.to(c.device)
        s_conf = torch.zeros(n_bins, dtype=torch.float64, device=c.device).index_add_(0, b, c)
        s_corr = torch.zeros(n_bins, dtype=torch.float64, device=c.device).index_add_(0, b, corr[name])
        cnt = count.to(c.device)
        gap = ((s_corr - s_conf) / cnt.clamp(min=1)).cpu().numpy()
        gap[~ne] = np.nan  # empty (zero-width) bins: a break in the line, not a 0
        e = ece(c, corr[name])
        pc = piece(c, corr[name], prox.to(c.device), n_prox_bins=n_bins)
        ax.plot(x, gap, marker="o", label=f"{name} (ECE {100 * e:.2f}%, PIECE {100 * pc:.2f}%)")
    ax.set_xticks(x, [f"{m:.3g}" if ok else "-" for m, ok in zip(mean_prox, ne)], fontsize="small")
    ax.set_xlabel("proximity (mean per equal-mass bin, low to high)")
    ax.set_ylabel("accuracy - confidence")
    ax.legend(fontsize="small")
    return ax.figure
