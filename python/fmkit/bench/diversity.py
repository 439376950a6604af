"""Class-diversity benchmark: fmkit.diversity.class_diversity (every class's Vendi score in one
batched pass, n×n or d×d Gram, float64) against a Python loop over vendi-score's `score_dual`,
the usual way (issue 18: target >= 100x at 1,000 classes × 100 samples × d=512, equal within
1e-6 relative).

The anchor runs at its strongest setting: float32 input (its float64 path is slower) and one
BLAS thread (scipy's OpenBLAS with two threads took ~0.9 s per 512×512 solve instead of 0.05 s
on the loaded 2-core machine). A plain per-class loop in the n×n form (numpy, float64) is shown
as a third row, not an anchor. `class_diversity` also computes the inter-class score (a 512×512
eigenproblem over the 1,000 class means) and the Fisher ratio, which the anchor does not; the
"intra scores only" row times the anchor's work alone, and the "rows in random order" row the
main call on the same data with its rows shuffled (each class gathered from anywhere). On a CPU
with AMX-INT8 the main row uses the int8 Gram route (exact products of the rows rounded to 31
bits) and a second row times the float64-product route. 'exact': every class's score within 1e-6 relative of score_dual on float64
copies of the features. GFLOP/s counts fmkit's work, 2·C·n²·d + 4/3·C·n³.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch

from fmkit.bench import unavailable
from fmkit.bench._shapes import embedded_shapes
from fmkit.diversity import class_diversity
from fmkit.diversity._threads import single_blas_thread
from fmkit.ops.class_spectrum import int8_gram_available

SHAPES = {  # (classes, samples per class, d)
    ("cpu", "quick"): [(60, 100, 256)],
    ("cpu", "full"): [(1000, 100, 512)],
    ("cuda", "quick"): [(1000, 100, 512)],
    ("cuda", "full"): [(1000, 100, 512), (10_000, 100, 512)],
}


def _data(C, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, d, generator=g)
    labels = torch.arange(C).repeat_interleave(n)
    feats = centres[labels] + 2.0 * torch.randn(C * n, d, generator=g)  # cosine spread like real embeddings
    return feats, labels


def _score_dual_loop(x: np.ndarray, C: int, n: int):
    from vendi_score import vendi

    with single_blas_thread():
        return np.array([vendi.score_dual(x[c * n:(c + 1) * n]) for c in range(C)])


def _nn_loop(x: np.ndarray, C: int, n: int):
    with single_blas_thread():
        out = np.empty(C)
        for c in range(C):
            u = x[c * n:(c + 1) * n].astype(np.float64)
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            w = np.linalg.eigvalsh(u @ u.T / n)
            w = w[w > 0]
            out[c] = np.exp(-(w * np.log(w)).sum())
        return out


def intra_scores(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Intra-class Vendi scores alone, as the score_dual loop computes them: the class_spectrum op
    and the entropy, without class_diversity's inter-class score and Fisher ratio."""
    from fmkit.diversity.metrics import vendi_from_eigenvalues
    from fmkit.ops.class_spectrum import class_spectrum

    y = labels.numpy()
    order = np.argsort(y, kind="stable")
    counts = np.unique(y, return_counts=True)[1]
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]))
    return vendi_from_eigenvalues(class_spectrum(feats, torch.from_numpy(order), offsets).eigenvalues)


def _close(values, truth):
    return bool(np.all(np.abs(np.asarray(values) - truth) <= 1e-6 * np.abs(truth)))


def cases(device: torch.device, quick: bool, shapes=None):
    have_vendi = importlib.util.find_spec("vendi_score") is not None
    out = []
    for C, n, d in embedded_shapes(SHAPES, device, quick, shapes):
        feats, labels = _data(C, n, d)
        x = feats.numpy()
        feats, labels = feats.to(device), labels.to(device)

        def ours(feats=feats, labels=labels, gram="auto"):
            return class_diversity(feats, labels, gram=gram).intra

        def intra_only(feats=feats, labels=labels):  # the anchor's work: one Vendi score per class
            return intra_scores(feats, labels)

        int8 = device.type == "cpu" and int8_gram_available()
        main = "fmkit class_diversity (intra, inter, Fisher)" + (", int8 AMX Gram" if int8 else "")
        contenders = [(main, ours, False)]
        shuffled_name = "fmkit class_diversity, rows in random order"
        if device.type == "cpu":
            contenders.append(("fmkit intra scores only (class_spectrum op)", intra_only, False))
            # Labels as they come in a shuffled data set: each class's rows gathered from anywhere
            # in the 205 MB of features, not read as one contiguous block.
            perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
            feats_s, labels_s = feats[perm], labels[perm]
            contenders.append((shuffled_name, lambda: ours(feats_s, labels_s), False))
        if int8:  # the float64-product route on the same machine
            contenders.append(("fmkit class_diversity, float64 Gram", lambda: ours(gram="float64"), False))
        exact = {}
        if device.type == "cpu":
            contenders.append(("numpy per-class n×n loop (float64)", lambda x=x, C=C, n=n: _nn_loop(x, C, n), False))
        if have_vendi:
            contenders.append(("vendi-score score_dual loop", lambda x=x, C=C, n=n: _score_dual_loop(x, C, n), True))
            truth = _score_dual_loop(x.astype(np.float64), C, n)
            exact = {main: _close(ours().cpu().numpy(), truth),
                     "vendi-score score_dual loop": _close(_score_dual_loop(x, C, n), truth)}
            if device.type == "cpu":
                exact["fmkit intra scores only (class_spectrum op)"] = _close(intra_only().numpy(), truth)
                exact[shuffled_name] = _close(ours(feats_s, labels_s).numpy(), truth)
            if int8:
                exact["fmkit class_diversity, float64 Gram"] = _close(ours(gram="float64").numpy(), truth)
            if device.type == "cpu":
                exact["numpy per-class n×n loop (float64)"] = _close(_nn_loop(x, C, n), truth)
        else:
            contenders.append(("vendi-score score_dual loop",
                               unavailable("vendi-score not installed (pip install --no-deps vendi-score)"), True))
        out.append({
            "shape": f"C={C} n={n} d={d} fp32",
            "flops": 2.0 * C * n * n * d + 4.0 / 3.0 * C * n ** 3,
            "peak_dtype": torch.float64,
            "contenders": contenders,
            "exact": exact,
            "repeats": 3,  # the full anchor takes ~20 s a call: 4 calls with the warm-up
        })
    return out
