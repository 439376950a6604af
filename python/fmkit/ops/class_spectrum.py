"""Per-class Gram spectra: `fmkit.ops.class_spectrum`, the eigenvalue engine of
`fmkit.diversity.class_diversity` (intra-class Vendi scores of many classes at once).

For each class c with rows U_c (n_c × d, unit-normalised when `normalize`), the eigenvalues of
G_c / n_c, where G_c is the smaller of U Uᵀ (n × n) and Uᵀ U (d × d): they share their non-zero
eigenvalues. Plus the class sums Σ x and Σ x / |x| and every row's norm, from the same pass.

Backends: "cpu" (C++/OpenMP: the Gram products as float64 products on the lower triangle, or for
float32 rows on AMX-INT8 CPUs as exact int8 tile products of the rows rounded to 31 bits (`gram`);
then Householder tridiagonalisation and implicit QL in float64 on one class per vector lane, 8
classes per AVX-512 register) and "torch" (`fmkit.reference.class_spectrum`, one float64
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


GRAMS = ("auto", "float64", "int8")


def int8_gram_available() -> bool:
    """Whether the "cpu" backend can take the int8 Gram route here (AMX-INT8 tiles: an x86-64
    Linux CPU with AMX, the avx512 SIMD level)."""
    return "cpu" in _backend.compiled_backends() and bool(_backend._C.class_spectrum_int8_available_cpu())


def class_spectrum(features, rows, offsets, *, normalize: bool = True, backend: str = "auto",
                   gram: str = "auto", num_threads: int | None = None) -> ClassSpectrum:
    """Spectra of the classes' Gram matrices (see the module docstring).

    features: [M, d] float32 or float64 (any strides; torch, numpy or cupy).
    rows: int64 [R] indices into features' rows, class 0's rows first, then class 1's, ...
    offsets: int64 [C + 1], strictly increasing from 0 to R: class c owns rows[offsets[c]:offsets[c + 1]].
    gram: how the "cpu" backend forms the n×n Gram products of float32 rows. "float64": float64
        products of the rows. "int8": each row rounded to 31 bits (a power-of-two scale, error at
        most 2^-31 of the row's largest |x|, below float32's own rounding of it), then the exact
        Gram matrix of the rounded rows from int8 AMX tile products (its Gram stages took ~176 against
        ~250 µs per 100 × 512 class on this project's Xeon; needs
        `int8_gram_available()`, float32 features, d <= 32767). "auto": "int8" where it can run,
        else "float64". float64 features and the d×d side always use float64 products; the
        torch backend follows "int8" by rounding the rows (`fmkit.reference`), "auto" as float64.
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
    if gram not in GRAMS:
        raise ValueError(f"gram: expected one of {GRAMS}, got {gram!r}")
    if gram == "int8" and features.dtype != torch.float32:
        raise TypeError(f"gram: 'int8' rounds float32 rows; features are {_backend.dtype_name(features.dtype)} "
                        "(use gram='float64', or pass float32 features)")
    if gram == "int8" and d > 32767:
        raise ValueError(f"gram: 'int8' supports d <= 32767 (int32 tile accumulators); features have d = {d}")
    name = _backend.resolve_backend(backend, features.device, "class_spectrum", ())
    if gram == "int8" and name == "cpu" and not int8_gram_available():
        raise ValueError("gram: 'int8' needs AMX-INT8 tiles (an x86-64 Linux CPU with AMX at the avx512 SIMD "
                         "level); this machine has none: use gram='auto' or 'float64'")
    if name == "torch":
        exact = "int8" if gram == "int8" and features.dtype == torch.float32 else "float64"
        return ClassSpectrum(*class_spectrum_reference(features, rows, offsets, normalize, exact))
    C = offsets.numel() - 1
    counts = offsets[1:] - offsets[:-1]
    width = int(counts.clamp(max=d).max()) if C else 0
    f64 = torch.float64
    out = ClassSpectrum(torch.empty(C, width, dtype=f64), torch.empty(C, d, dtype=f64),
                        torch.empty(C, d, dtype=f64), torch.empty(rows.numel(), dtype=f64))
    dl = _backend.dlpack
    _backend._C.class_spectrum_cpu(dl(features), dl(rows.contiguous()), dl(offsets.contiguous()),
                                   *(dl(t) for t in out), bool(normalize), GRAMS.index(gram),
                                   num_threads or _backend.cpu_threads())
    return out


__all__ = ["ClassSpectrum", "GRAMS", "class_spectrum", "int8_gram_available"]
