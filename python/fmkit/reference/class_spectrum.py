"""Per-class Gram spectra in plain PyTorch (float64, one class at a time): the oracle of
`fmkit.ops.class_spectrum` and its `torch` backend."""
from __future__ import annotations

import torch


def class_spectrum_reference(features: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                             normalize: bool = True):
    """(eigenvalues [C, P], sums [C, d], unit_sums [C, d], row_norms [R]), all float64.

    Class c owns features[rows[offsets[c]:offsets[c + 1]]]. Row c of `eigenvalues` holds the
    eigenvalues of G_c / n_c in descending order, then zeros, with G_c the smaller of U Uᵀ and
    Uᵀ U (U: the class's rows, unit-normalised when `normalize`); P = max_c min(n_c, d).
    A class with a non-finite row, or a zero row when normalising, gets NaN eigenvalues.
    """
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
        gram = u @ u.T if n <= d else u.T @ u
        eig[c, :min(n, d)] = torch.linalg.eigvalsh(gram / n).flip(0)
    return eig, sums, unit_sums, norms
