"""Per-class Gram spectra: `fmkit.ops.class_spectrum`, the eigenvalue engine of
`fmkit.diversity.class_diversity` (intra-class Vendi scores of many classes at once).

For each class c with rows U_c (n_c × d, unit-normalised when `normalize`), the eigenvalues of
G_c / n_c, where G_c is the smaller of U Uᵀ (n × n) and Uᵀ U (d × d): they share their non-zero
eigenvalues. Plus the class sums Σ x and Σ x / |x| and every row's norm, from the same pass.

Backends: "cpu" (C++/OpenMP, float64 throughout: a register-tiled Gram kernel on the lower
triangle, then Householder tridiagonalisation and implicit QL run on one class per vector lane,
8 classes per AVX-512 register) and "torch" (`fmkit.reference.class_spectrum`, one float64
`eigvalsh` per class; also what runs on CUDA tensors: there is no GPU kernel of this op, and
`fmkit.diversity.class_diversity` uses a padded batched `eigvalsh` there instead).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from fmkit.ops import _backend
from fmkit.reference.class_spectrum import class_spectrum_reference

DTYPES = (torch.float32, torch.float64)


class ClassSpectrum(NamedTuple):
    eigenvalues: torch.Tensor  # [C, P] float64: eigenvalues of G_c / n_c, descending, then zeros
    sums: torch.Tensor         # [C, d] float64: Σ x over each class's rows
    unit_sums: torch.Tensor    # [C, d] float64: Σ x / |x| (Σ x when not normalising)
    row_norms: torch.Tensor    # [R] float64: |x| of each listed row, in `rows` order


def class_spectrum(features, rows, offsets, *, normalize: bool = True, backend: str = "auto",
                   num_threads: int | None = None) -> ClassSpectrum:
    """Spectra of the classes' Gram matrices (see the module docstring).

    features: [M, d] float32 or float64 (any strides; torch, numpy or cupy).
    rows: int64 [R] indices into features' rows, class 0's rows first, then class 1's, ...
    offsets: int64 [C + 1], strictly increasing from 0 to R: class c owns rows[offsets[c]:offsets[c + 1]].
    A class with a non-finite row, or a zero row when `normalize`, gets NaN eigenvalues; the
    caller finds the row from `row_norms`.
    """
    features, _ = _backend.to_torch(features, "features")
    _backend.check_matrix(features, "features", DTYPES, "; convert first, e.g. x.float()")
    rows = torch.as_tensor(rows, device=features.device)
    offsets = torch.as_tensor(offsets, device=features.device)
    for name, t in (("rows", rows), ("offsets", offsets)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"{name}: expected a 1-D int64 tensor, got {_backend.dtype_name(t.dtype)} "
                            f"of shape {list(t.shape)}")
    M, d = features.shape
    if d == 0:
        raise ValueError(f"features: expected at least one column, got shape {list(features.shape)}")
    if offsets.numel() == 0 or int(offsets[0]) != 0 or int(offsets[-1]) != rows.numel():
        raise ValueError(f"offsets: expected offsets[0] = 0 and offsets[-1] = len(rows) = {rows.numel()}")
    if bool((offsets[1:] <= offsets[:-1]).any()):
        raise ValueError("offsets: expected strictly increasing values (every class non-empty)")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= M):
        raise ValueError(f"rows: expected indices in [0, {M})")
    name = _backend.resolve_backend(backend, features.device, "class_spectrum", ())
    if name == "torch":
        return ClassSpectrum(*class_spectrum_reference(features, rows, offsets, normalize))
    C = offsets.numel() - 1
    counts = offsets[1:] - offsets[:-1]
    width = int(counts.clamp(max=d).max()) if C else 0
    f64 = torch.float64
    out = ClassSpectrum(torch.empty(C, width, dtype=f64), torch.empty(C, d, dtype=f64),
                        torch.empty(C, d, dtype=f64), torch.empty(rows.numel(), dtype=f64))
    dl = _backend.dlpack
    _backend._C.class_spectrum_cpu(dl(features), dl(rows.contiguous()), dl(offsets.contiguous()),
                                   *(dl(t) for t in out), bool(normalize),
                                   num_threads or _backend.cpu_threads())
    return out


__all__ = ["ClassSpectrum", "class_spectrum"]
