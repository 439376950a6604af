"""Per-class Gram spectra in plain PyTorch (float64, one class at a time): the oracle of
`fmkit.ops.class_spectrum` and its `torch` backend."""
from __future__ import annotations

import torch


def int8_rounded_rows(features: torch.Tensor) -> torch.Tensor:
    """float64 copy of `features` [M, d] with each row rounded as the int8 Gram route rounds it:
    scaled by 2^e so that max|x| 2^e lies in [0.99 · 2^30, 127 · 2^24) (e = 31 - p, or 30 - p when
    max|x| = m 2^p has m >= 127/128), rounded half to even, scaled back. A zero row stays zero."""
    x = features.to(torch.float64)
    amax = x.abs().amax(1)
    mant, p = torch.frexp(amax)
    e = torch.where(mant < 127 / 128, 31 - p, 30 - p)
    e = torch.where(amax > 0, e, torch.zeros_like(e)).to(torch.float64)[:, None]
    return torch.round(x * 2.0 ** e) * 2.0 ** -e


def class_spectrum_reference(features: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                             normalize: bool = True, gram: str = "float64"):
    """(eigenvalues [C, P], sums [C, d], unit_sums [C, d], row_norms [R]), all float64.

    Class c owns features[rows[offsets[c]:offsets[c + 1]]]. Row c of `eigenvalues` holds the
    eigenvalues of G_c / n_c in descending order, then zeros, with G_c the smaller of U Uᵀ and
    Uᵀ U (U: the class's rows, unit-normalised when `normalize`); P = max_c min(n_c, d).
    A class with a non-finite row, or a zero row when normalising, gets NaN eigenvalues.
    gram="int8": the n×n side's eigenvalues come from `int8_rounded_rows(features)` (the int8
    Gram route's contract); sums, unit sums and norms always from the rows as given.
    """
    rounded = int8_rounded_rows(features) if gram == "int8" else None
    device, d = features.device, features.shape[1]
    counts = (offsets[1:] - offsets[:-1]).tolist()
    C = len(counts)
    width = max((min(n, d) for n in counts), default=0)
    eig = torch.zeros(C, width, dtype=torch.float64, device=device)
    sums = torch.zeros(C, d, dtype=torch.float64, device=device)
    unit_sums = torch.zeros(C, d, dtype=torch.float64, device=device)
    norms = torch.empty(rows.shape[0], dtype=torch.float64, device=device)
    for c, n in enumerate(counts):
        lo = int(offsets[c])
        x = features[rows[lo:lo + n]].to(torch.float64)
        norm = x.norm(dim=1)
        norms[lo:lo + n] = norm
        inv = torch.where(norm > 0, 1 / norm, 0.0) if normalize else torch.ones_like(norm)
        u = x * inv[:, None]
        sums[c] = x.sum(0)
        unit_sums[c] = u.sum(0)
        if not bool(torch.isfinite(norm).all()) or (normalize and bool((norm == 0).any())):
            eig[c] = float("nan")
            continue
        if rounded is not None and n <= d:
            r = rounded[rows[lo:lo + n]]
            u = r / r.norm(dim=1, keepdim=True) if normalize else r
        g = u @ u.T if n <= d else u.T @ u
        eig[c, :min(n, d)] = torch.linalg.eigvalsh(g / n).flip(0)
    return eig, sums, unit_sums, norms
