"""Diversity of a labelled feature set as one batched op: intra-class Vendi score of every
class, inter-class Vendi score of the class means, and the Fisher ratio.

The Vendi score of n points with unit-normalised rows X is exp(H_q(eig(X Xᵀ / n))). X Xᵀ (n×n)
and Xᵀ X (d×d) share their non-zero eigenvalues, so each class uses the smaller of the two
(vendi-score's `score_dual` always builds the d×d one). Classes are padded with zero rows into
groups of similar size: a zero row adds a zero eigenvalue, which no entropy of order q > 0 sees,
so one batched Gram product and one batched `eigvalsh` per group serve every class in it.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from fmkit.diversity._checks import as_labels, check_q
from fmkit.diversity._threads import single_blas_thread
from fmkit.ops import _backend
from fmkit.ops.class_spectrum import GRAMS, class_spectrum

# Padded chunks hold at most this many float64 elements (the padded features or the Gram
# matrices, whichever is larger): memory stays modest at any number of classes, and there are
# enough chunks to keep every thread busy.
_CHUNK_ELEMENTS = 2 * 2**20
# Classes whose size differs by less than this factor share a padded group (<= 25% padding).
_GROUP_RATIO = 1.25


@dataclass
class ClassDiversity:
    """Result of `class_diversity`. `classes[i]` has `counts[i]` samples and intra-class Vendi
    score `intra[i]` (1 = all its samples alike, up to min(count, d) = all orthogonal)."""

    classes: torch.Tensor   # [C] the distinct labels, ascending
    counts: torch.Tensor    # [C] samples per class
    intra: torch.Tensor     # [C] float64 intra-class Vendi score per class
    inter: float            # Vendi score of the C class means (of the normalised features)
    fisher: float           # between-class over within-class scatter (traces), raw features
    q: float | str

    def as_dict(self) -> dict:
        return {"q": self.q, "inter": self.inter, "fisher": self.fisher,
                "intra_mean": float(self.intra.mean()), "intra_median": float(self.intra.median()),
                "classes": self.classes.tolist(), "counts": self.counts.tolist(), "intra": self.intra.tolist()}


def vendi_from_eigenvalues(w: torch.Tensor, q: float | str = 1.0) -> torch.Tensor:
    """exp of the order-q Rényi entropy of each row of eigenvalues `w` [..., m] (vendi-score's
    `entropy_q`). Eigenvalues within round-off of zero (|λ| <= m·eps·max λ; duplicates and
    n > d leave many) count as zero: for q < 1 their ±1e-17 noise would otherwise add ~1e-9 each
    to Σ λ^q (vendi-score keeps the positive ones)."""
    q = check_q(q)
    floor = w.shape[-1] * torch.finfo(w.dtype).eps * w.amax(-1, keepdim=True).clamp_min(0)
    p = torch.where(w > floor, w, torch.zeros_like(w))
    if q == "inf":
        return 1.0 / p.amax(-1)
    if q == 1:
        return torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return torch.exp(torch.log((p ** q).sum(-1)) / (1 - q))


def class_diversity(features: torch.Tensor, labels, q: float | str = 1.0, normalize: bool = True,
                    threads: int | None = None, gram: str = "auto") -> ClassDiversity:
    """Intra-class Vendi score per class, inter-class Vendi score of the class means, and the
    Fisher ratio, for all classes at once.

    features: [M, d] float tensor or array (any device; Gram products, eigenvalues and sums in
        float64, one chunk of classes at a time, so the input is never copied whole).
    labels: [M] integer labels (tensor, array or list).
    q: order of the entropy, a number > 0 or "inf" (vendi-score's `q`; 1 is the Vendi score).
    normalize: unit-normalise each row first (the cosine kernel, vendi-score's default); the
        class means are then means of unit vectors, normalised again for the inter-class score.
    threads: chunks of classes run in this many threads of single-threaded torch ops (default:
        torch's thread count); many small problems run faster side by side than each threaded.
    gram: the Gram products of the per-class scores on the CPU (`fmkit.ops.class_spectrum`):
        "auto" (float32 features on a CPU with AMX-INT8: exact products of the rows rounded to 31
        bits, within ~1e-9 relative of float64 products; else float64), "float64" or "int8".
        CUDA tensors always use float64 products.
    """
    features = _check_features(features, "features")
    y = as_labels(labels, "labels", device=features.device)
    if y.shape[0] != features.shape[0]:
        raise ValueError(f"labels: has {y.shape[0]} entries but features has {features.shape[0]} rows; "
                         "expected one label per row")
    q = check_q(q)
    if y.device.type == "cpu":  # numpy's unique: torch's threaded one took 140 ms for 100k labels on a busy host
        classes, inverse, counts = (torch.from_numpy(a.reshape(-1)) for a in
                                    np.unique(y.numpy(), return_inverse=True, return_counts=True))
    else:
        classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    if gram not in GRAMS:
        raise ValueError(f"gram: expected one of {GRAMS}, got {gram!r}")
    scan = _scan(features, inverse, counts, q, normalize, threads, "features", gram)
    if normalize and bool((scan.unit_means.norm(dim=1) == 0).any()):
        inter = float("nan")  # a class whose unit vectors cancel exactly has no direction
    else:
        inter = _single(scan.unit_means, q, normalize, threads)
    grand = (counts[:, None] * scan.means).sum(0) / counts.sum()
    between = float((counts[:, None] * (scan.means - grand) ** 2).sum())
    if scan.within == 0:
        fisher = float("nan") if between == 0 else float("inf")
    else:
        fisher = between / scan.within
    return ClassDiversity(classes=classes, counts=counts, intra=scan.vendi, inter=inter, fisher=fisher, q=q)


def vendi_score(x, q: float | str = 1.0, normalize: bool = True) -> float:
    """Vendi score of the rows of `x` [n, d] with the cosine (or, normalize=False, linear) kernel."""
    return _single(_check_features(x, "x"), check_q(q), normalize, None, "x")


# -- internals ------------------------------------------------------------------------------------


@dataclass
class _Scan:
    vendi: torch.Tensor       # [C] Vendi score per class
    means: torch.Tensor       # [C, d] class means of the raw rows
    unit_means: torch.Tensor  # [C, d] class means of the normalised rows (= means without normalize)
    within: float             # Σ_i ||x_i - mean of its class||², raw rows


def _single(x, q, normalize, threads, name="x") -> float:
    one = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    count = torch.tensor([x.shape[0]], device=x.device)
    return float(_scan(x, one, count, q, normalize, threads, name).vendi[0])


def _check_features(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array of shape [n, d], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating-point features, got {x.dtype}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array [n, d], got shape {tuple(x.shape)}")
    return x


def _groups(counts: torch.Tensor) -> list[torch.Tensor]:
    """Class indices grouped by size, each group's sizes within a factor _GROUP_RATIO."""
    sizes = counts.cpu().numpy()
    order = np.argsort(sizes, kind="stable")
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or sizes[order[i]] > _GROUP_RATIO * sizes[order[start]]:
            groups.append(torch.from_numpy(order[start:i].copy()))
            start = i
    return groups


# With fewer classes than this, most vector lanes of the compiled op would idle (it solves one
# class per lane); LAPACK's threaded solver is then the faster route.
_MIN_CLASSES_COMPILED = 16


def _scan(x: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor, q, normalize: bool, threads,
          name: str, gram: str = "float64") -> _Scan:
    """Per-class Vendi scores, raw and unit class means and the within-class scatter, all in
    float64: through `fmkit.ops.class_spectrum` on the CPU (always for gram="int8"), else
    `_scan_batched`."""
    compiled = x.device.type == "cpu" and "cpu" in _backend.compiled_backends()
    if compiled and (len(counts) >= _MIN_CLASSES_COMPILED or gram == "int8"):
        return _scan_compiled(x, inverse, counts, q, normalize, threads, name, gram)
    if gram == "int8":
        raise ValueError("gram: 'int8' runs in the compiled CPU op (fmkit.ops.class_spectrum); "
                         f"features are on {x.device.type} or fmkit._C is not built: use gram='auto'")
    return _scan_batched(x, inverse, counts, q, normalize, threads, name)


def _scan_compiled(x, inverse, counts, q, normalize, threads, name, gram) -> _Scan:
    """The op runs its own OpenMP threads; the small torch ops around it run single-threaded
    (on a busy machine torch's intra-op threads cost more than these ops' work)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _scan_compiled_body(x, inverse, counts, q, normalize, threads or saved, name, gram)
    finally:
        torch.set_num_threads(saved)


def _scan_compiled_body(x, inverse, counts, q, normalize, threads, name, gram) -> _Scan:
    f64 = torch.float64
    order = torch.from_numpy(np.argsort(inverse.numpy(), kind="stable"))
    offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    if x.dtype not in (torch.float32, f64):
        x = x.to(torch.float32 if torch.finfo(x.dtype).bits < 32 else f64)
    spec = class_spectrum(x, order, offsets, normalize=normalize, backend="cpu", gram=gram, num_threads=threads)
    norms = spec.row_norms
    real = torch.ones(1, len(norms), dtype=f64)
    _check_rows(norms[None], real, normalize, x, order, name)
    eig = spec.eigenvalues
    failed = torch.isnan(eig).any(1).nonzero().squeeze(1)
    if len(failed):  # overflowing norms, or a QL that did not converge: LAPACK for those classes
        redo = _scan_batched(x, inverse, counts, q, normalize, 1, name, only=failed)
        vendi = vendi_from_eigenvalues(eig.nan_to_num(0.0), q)
        vendi[failed] = redo
    else:
        vendi = vendi_from_eigenvalues(eig, q)
    n = counts.to(f64)
    means = spec.sums / n[:, None]
    unit_means = spec.unit_sums / n[:, None] if normalize else means
    squares = torch.segment_reduce(norms ** 2, "sum", lengths=counts)
    within = float((squares - n * (means ** 2).sum(1)).clamp_min(0).sum())
    return _Scan(vendi, means, unit_means, within)


def _scan_batched(x: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor, q, normalize: bool, threads,
                  name: str, only: torch.Tensor | None = None):
    """One pass over the rows of `x`, a chunk of same-sized classes at a time: per-class Vendi
    scores, raw and unit class means and the within-class scatter, all in float64. With `only`,
    just the Vendi scores of those classes.

    On the CPU the chunks run in `threads` Python threads, each with single-threaded torch ops:
    many small independent problems; torch's own intra-op threads spin at a barrier after every
    small op, which on a loaded machine cost more than the work (exp of 10k numbers: 17 ms), and
    threaded LAPACK took 0.6 s instead of 1 ms per 100×100 eigenvalue solve."""
    device, d, C = x.device, x.shape[1], len(counts)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    f64 = torch.float64
    vendi = torch.empty(C, dtype=f64, device=device)
    means = torch.empty(C, d, dtype=f64, device=device)
    unit_means = torch.empty(C, d, dtype=f64, device=device) if normalize else means
    tasks = []
    for group in _groups(counts) if only is None else [only[torch.argsort(counts[only], stable=True)]]:
        group = group.to(device)
        width = int(counts[group].max())
        step = max(1, _CHUNK_ELEMENTS // max(width * d, min(width, d) ** 2))
        tasks += [(group[c0:c0 + step], width) for c0 in range(0, len(group), step)]
    rank = []  # the general gather's row ranks, computed once on first use
    saved = torch.get_num_threads()
    # One large problem (the inter-class score of many class means): its Gram product may use all
    # of torch's threads; eigvalsh stays single-threaded (threaded LAPACK spins on a busy machine).
    product_threads = saved if device.type == "cpu" and len(tasks) == 1 else 1

    def product(a, b):
        if product_threads == 1:
            return a @ b
        torch.set_num_threads(product_threads)
        try:
            return a @ b
        finally:
            torch.set_num_threads(1)

    def work(task):
        chunk, width = task
        n = counts[chunk].to(f64)
        raw, real, rows = _gather(x, chunk, width, inverse, counts, starts, order, rank)
        if width <= d:  # n×n: the raw Gram gives the norms, and is then scaled to the cosine one
            gram = product(raw, raw.transpose(1, 2))
            norms = gram.diagonal(dim1=1, dim2=2).sqrt()
        else:
            norms = raw.norm(dim=2)
        _check_rows(norms, real, normalize, x, rows, name)
        # Σ_i x_i and Σ_i x_i / |x_i| of each class in one batched product.
        inv_norms = torch.where(real > 0, 1 / norms, 0.0) if normalize else real
        sums = torch.stack([real, inv_norms], 1) @ raw  # [B, 2, d]
        mean = sums[:, 0] / n[:, None]
        # Within-class scatter as Σ|x|² - n|mean|²: in float64 this loses accuracy only when a
        # class's spread is below ~1e-7 of its mean's norm, and saves two passes over the rows.
        within = float(((norms ** 2).sum(1) - n * (mean ** 2).sum(1)).clamp_min(0).sum())
        # The smaller Gram: n×n (with the padding's zero rows) or d×d; same non-zero eigenvalues.
        if width <= d:
            if normalize:
                gram *= inv_norms[:, :, None] * inv_norms[:, None, :]
        else:
            unit = raw * inv_norms[..., None] if normalize else raw
            gram = product(unit.transpose(1, 2), unit)
        gram /= n[:, None, None]
        score = vendi_from_eigenvalues(_eigvalsh(gram), q)
        return chunk, score, mean, sums[:, 1] / n[:, None], within

    if device.type == "cpu":
        threads = min(threads or saved, len(tasks))
        torch.set_num_threads(1)
        try:
            if threads > 1:
                with ThreadPoolExecutor(threads) as pool:
                    results = list(pool.map(work, tasks))
            else:
                results = [work(t) for t in tasks]
        finally:
            torch.set_num_threads(saved)
    else:
        results = [work(t) for t in tasks]
    if only is not None:
        for chunk, score, *_ in results:
            vendi[chunk] = score
        return vendi[only]
    within = 0.0
    for chunk, score, mean, unit_mean, w in results:
        vendi[chunk], means[chunk] = score, mean
        if normalize:
            unit_means[chunk] = unit_mean
        within += w
    return _Scan(vendi, means, unit_means, within)


# From this size, one CPU eigenproblem (the inter-class score of many class means) goes to scipy:
# its LAPACK took 11.7 ms for a 512×512 where torch's took 21 ms (one thread each, Zen 4,
# 2026-12-04); small batched problems stay with torch, which loops over them in C.
_SCIPY_EIGVALSH_MIN = 128


def _eigvalsh(gram: torch.Tensor) -> torch.Tensor:
    if gram.device.type != "cpu" or gram.shape[0] != 1 or gram.shape[-1] < _SCIPY_EIGVALSH_MIN:
        return torch.linalg.eigvalsh(gram)
    with single_blas_thread():
        w = scipy.linalg.eigh(gram[0].numpy(), eigvals_only=True, driver="evd", check_finite=False)
    return torch.from_numpy(w)[None]


def _gather(x, chunk, width, inverse, counts, starts, order, rank):
    """The rows of the classes `chunk` as float64 [B, width, d], zero-padded, with a [B, width]
    mask of real rows. Equal-sized consecutive classes (the usual case) are one copy of a slice
    of the class-sorted rows, and no copy beyond the float64 conversion when `x` is sorted."""
    device, d, B = x.device, x.shape[1], len(chunk)
    c_first, c_last = int(chunk[0]), int(chunk[-1])
    if c_last - c_first == B - 1 and bool((counts[chunk] == width).all()) and bool((chunk.diff() == 1).all()):
        lo, hi = int(starts[c_first]), int(starts[c_last] + counts[c_last])
        rows = order[lo:hi]
        src = x[lo:hi] if bool((rows == torch.arange(lo, hi, device=device)).all()) else x[rows]
        raw = torch.empty(B, width, d, dtype=torch.float64, device=device)
        raw.view(-1, d).copy_(src)
        return raw, torch.ones(B, width, dtype=torch.float64, device=device), rows
    if not rank:  # several threads may compute it; all get the same tensor
        rank_in_class = torch.empty_like(order)
        rank_in_class[order] = torch.arange(len(order), device=device) - starts[inverse[order]]
        rank.append(rank_in_class)
    slot = torch.full((len(counts),), -1, dtype=torch.long, device=device)
    slot[chunk] = torch.arange(B, device=device)
    rows = (slot[inverse] >= 0).nonzero().squeeze(1)
    where = (slot[inverse[rows]], rank[0][rows])
    raw = torch.zeros(B, width, d, dtype=torch.float64, device=device)
    raw[where] = x[rows].to(torch.float64)
    real = torch.zeros(B, width, dtype=torch.float64, device=device)
    real[where] = 1.0
    return raw, real, rows


def _check_rows(norms, real, normalize, x, rows, name):
    if not bool(torch.isfinite(norms.sum())):  # one sum: elementwise only when something is off
        bad = ~torch.isfinite(x[rows]).all(dim=1)
        if bool(bad.any()):
            raise ValueError(f"{name}: row {int(rows[bad][0])} contains NaN or infinite values")
    if normalize and bool(((norms == 0) & (real > 0)).any()):
        zero = rows[(x[rows] == 0).all(dim=1)]
        raise ValueError(f"{name}: row {int(zero.min())} is all zeros, so its cosine similarity is undefined; "
                         "drop such rows or pass normalize=False")


__all__ = ["ClassDiversity", "class_diversity", "vendi_score", "vendi_from_eigenvalues"]
