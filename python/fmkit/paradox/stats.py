"""Correlations, agreement (Cohen's / Fleiss' kappa) and paired-bootstrap intervals for the
paradox reports. numpy only."""
from __future__ import annotations

import warnings

import numpy as np


class ConstantInputWarning(UserWarning):
    """A correlation was asked of a vector with no spread; the result is NaN."""


def _vector(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {arr.shape}")
    return arr


def pearson(x, y) -> float:
    """Pearson's r. On 0/1 vectors it is the phi coefficient; on 0/1 against graded scores it is
    the point-biserial correlation. NaN (with a ConstantInputWarning) when either is constant."""
    x, y = _vector(x, "x"), _vector(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x, y: expected equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        warnings.warn("correlation of a constant (or length < 2) vector is undefined; returning NaN",
                      ConstantInputWarning, stacklevel=2)
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    return float(np.clip((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)), -1.0, 1.0))


phi = pearson
point_biserial = pearson


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    x, y = _vector(x, "x"), _vector(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x, y: expected equal lengths, got {len(x)} and {len(y)}")
    return pearson(_ranks(x), _ranks(y))


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two raters' labels on the same items (any hashable labels)."""
    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise ValueError(f"a, b: expected two equally long, non-empty label lists, got {len(a)} and {len(b)}")
    labels = sorted(set(a) | set(b), key=str)
    p_o = np.mean([x == y for x, y in zip(a, b)])
    p_e = sum((a.count(c) / len(a)) * (b.count(c) / len(b)) for c in labels)
    return float("nan") if p_e == 1 else float((p_o - p_e) / (1 - p_e))


def fleiss_kappa(ratings) -> float:
    """Fleiss' kappa from per-item label lists (each item rated by the same number of raters)."""
    ratings = [list(r) for r in ratings]
    if not ratings:
        raise ValueError("ratings: expected at least one item")
    n = len(ratings[0])
    if n < 2 or any(len(r) != n for r in ratings):
        raise ValueError("ratings: every item needs the same number (>= 2) of raters")
    labels = sorted({x for r in ratings for x in r}, key=str)
    counts = np.array([[r.count(c) for c in labels] for r in ratings], dtype=float)
    p_j = counts.sum(0) / counts.sum()
    p_i = ((counts ** 2).sum(1) - n) / (n * (n - 1))
    p_e = (p_j ** 2).sum()
    return float("nan") if p_e == 1 else float((p_i.mean() - p_e) / (1 - p_e))


def paired_bootstrap(columns: dict, stat, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile CI of stat(resampled columns): items are resampled together, so differences of
    paired per-item columns (G and D on the same items) keep their pairing."""
    cols = {k: np.asarray(v, dtype=float) for k, v in columns.items()}
    sizes = {len(v) for v in cols.values()}
    if len(sizes) != 1:
        raise ValueError(f"columns: expected equally long per-item columns, got lengths {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    values = np.array([stat({k: v[i] for k, v in cols.items()}) for i in idx])
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def agreement_matrix(columns: dict) -> tuple[list[str], np.ndarray]:
    """Fraction of items on which each pair of 0/1 success columns agree (NaN entries skipped)."""
    names = list(columns)
    cols = [np.asarray(columns[k], dtype=float) for k in names]
    m = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(cols):
        for j, b in enumerate(cols):
            ok = ~(np.isnan(a) | np.isnan(b))
            if ok.any():
                m[i, j] = float(np.mean(a[ok] == b[ok]))
    return names, m
