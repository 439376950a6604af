"""Proximity (ProCal, arXiv:2306.04590 §3 Eq. 1): how dense the data is around each sample.

    paper      D(x) = exp(-mean_k |x - x_k|)              Euclidean, raw features
    reference  D(x) = mean_k exp(-|x' - x'_k|^2)          x' = x / |x| (the released code)

The K nearest neighbours come from a reference set (ProCal: the held-out calibration set)
and are found by the exact `fmkit.ops.knn`, on the features' device. With `reference=None`
the features are their own reference and each point's own row is excluded by index, so
duplicated samples still see each other (the released code instead drops column 0 of a K+1
search, which differs only when there are duplicates or ties).
"""
from __future__ import annotations

from typing import Any

import torch

from fmkit.calibration._arrays import as_tensor, like
from fmkit.ops import knn

VARIANTS = {
    "paper": ("euclidean", "exp_of_mean", None),
    "reference": ("sqeuclidean", "mean_of_exp", "l2"),
}


def normalize_features(x: torch.Tensor, how: str | None, stats_from: torch.Tensor | None = None) -> torch.Tensor:
    """None, "l2" (unit rows) or "zscore" (per-dimension mean/variance of `stats_from`, eps 1e-5, as the NLP code)."""
    if how is None:
        return x
    if how == "l2":
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if how == "zscore":
        ref = x if stats_from is None else stats_from
        return (x - ref.mean(0)) / torch.sqrt(ref.var(0, unbiased=False) + 1e-5)
    raise ValueError(f"normalize: expected None, 'l2' or 'zscore', got {how!r}")


def proximity(
    features: Any,
    reference: Any = None,
    *,
    k: int = 10,
    variant: str = "paper",
    exclude_self: bool | None = None,
    metric: str | None = None,
    reduce: str | None = None,
    normalize: str | None = "default",
    backend: str = "auto",
    return_neighbors: bool = False,
):
    """Proximity of each row of `features` [N, d] to its k nearest rows of `reference` [M, d].

    Args:
        variant: "paper" (exp of the mean Euclidean distance, raw features) or "reference"
            (mean of exp(-squared distance) on L2-normalised features, the released code).
        exclude_self: default True when `reference` is None (features are their own reference).
        metric / reduce / normalize: override the variant's "euclidean" | "sqeuclidean",
            "exp_of_mean" | "mean_of_exp", None | "l2" | "zscore" ("zscore" also divides squared
            distances by the dimension, as the released NLP code does).
        return_neighbors: also return the per-neighbour values [N, k] (exp(-d) or exp(-d^2)),
            the input of PTSK.

    Returns:
        proximities [N] float64 in (0, 1] (numpy if `features` was numpy), and optionally the
        per-neighbour values [N, k].
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected 'paper' or 'reference', got {variant!r}")
    v_metric, v_reduce, v_norm = VARIANTS[variant]
    metric = metric or v_metric
    reduce = reduce or v_reduce
    normalize = v_norm if normalize == "default" else normalize
    if metric not in ("euclidean", "sqeuclidean"):
        raise ValueError(f"metric: expected 'euclidean' or 'sqeuclidean', got {metric!r}")
    if reduce not in ("exp_of_mean", "mean_of_exp"):
        raise ValueError(f"reduce: expected 'exp_of_mean' or 'mean_of_exp', got {reduce!r}")

    x = as_tensor(features, "features", ndim=2, dtype=None)
    own = reference is None
    ref = x if own else as_tensor(reference, "reference", ndim=2, dtype=None, device=x.device)
    if ref.shape[1] != x.shape[1]:
        raise ValueError(f"reference: dimension {ref.shape[1]} does not match features dimension {x.shape[1]}")
    if exclude_self is None:
        exclude_self = own
    if exclude_self and not own and ref.shape[0] != x.shape[0]:
        raise ValueError("exclude_self: needs features to be the reference set (same rows)")
    available = ref.shape[0] - (1 if exclude_self else 0)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
        raise ValueError(f"k: expected an integer in [1, {available}] (reference rows{' minus self' if exclude_self else ''}), got {k!r}")
    # The search runs in float32 (exact for float32 inputs; float64 features are rounded).
    ref_n = normalize_features(ref.to(torch.float32), normalize)
    x_n = ref_n if own else normalize_features(x.to(torch.float32), normalize, stats_from=ref.to(torch.float32))
    sq, _ = knn(x_n, ref_n, k, metric="l2", exclude_self=exclude_self, backend=backend)
    sq = sq.to(torch.float64)
    if normalize == "zscore":
        sq = sq / x.shape[1]
    dist = sq.sqrt() if metric == "euclidean" else sq
    if reduce == "exp_of_mean":
        prox = torch.exp(-dist.mean(dim=1))
    else:
        prox = torch.exp(-dist).mean(dim=1)
    if return_neighbors:
        return like(features, prox), like(features, torch.exp(-dist))
    return like(features, prox)
