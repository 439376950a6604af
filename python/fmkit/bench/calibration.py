"""ProCal benchmark: proximity (exact kNN) + Density-Ratio fit + transform on a cal/test split.

Anchor: the released code's pipeline, faiss IndexFlatL2 for the neighbours and a KDE library
(scipy.stats.gaussian_kde standing in for statsmodels' KDEMultivariate: same O(n_cal * n_test)
evaluation). GFLOP/s counts the kNN GEMM work, 2 * (n_cal^2 + n_test * n_cal) * d.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch

from fmkit.bench import unavailable
from fmkit.bench._shapes import embedded_shapes
from fmkit.calibration.procal import DensityRatioCalibrator
from fmkit.calibration.proximity import proximity

SHAPES = {  # (n_cal, n_test, d, classes)
    ("cpu", "quick"): [(5_000, 5_000, 128, 100)],
    ("cpu", "full"): [(50_000, 50_000, 512, 1000)],
    ("cuda", "quick"): [(20_000, 20_000, 512, 1000)],
    ("cuda", "full"): [(50_000, 50_000, 512, 1000)],
}


def synthetic_split(n: int, d: int, classes: int, device, seed: int):
    """Features with dense and sparse regions, and logits that are over-confident in sparse ones."""
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(classes, d, generator=torch.Generator().manual_seed(1234)) / d**0.5
    y = torch.randint(0, classes, (n,), generator=g)
    spread = 0.5 + 2.0 * torch.rand(n, generator=g)
    feats = centers[y] + spread[:, None] * torch.randn(n, d, generator=g) / d**0.5
    logits = 0.5 * feats @ centers.T + 1.0 * torch.randn(n, classes, generator=g)
    return logits.to(device), y.to(device), feats.to(device)


def _fmkit(cal, test):
    (c_logits, c_y, c_f), (t_logits, _, t_f) = cal, test
    c_prox = proximity(c_f)
    t_prox = proximity(t_f, c_f)
    dr = DensityRatioCalibrator().fit(torch.softmax(c_logits, 1), c_y, c_prox)
    return dr.transform(torch.softmax(t_logits, 1), t_prox)


def _released_pipeline(cal, test, k=10):
    import faiss
    from scipy.stats import gaussian_kde

    (c_logits, c_y, c_f), (t_logits, _, t_f) = [[t.cpu().numpy() for t in s] for s in (cal, test)]
    index = faiss.IndexFlatL2(c_f.shape[1])
    index.add(c_f)
    c_d, _ = index.search(c_f, k + 1)
    t_d, _ = index.search(t_f, k)
    c_prox = np.exp(-np.sqrt(np.maximum(c_d[:, 1:], 0)).mean(1))
    t_prox = np.exp(-np.sqrt(np.maximum(t_d, 0)).mean(1))
    c_conf = torch.softmax(torch.from_numpy(c_logits), 1).max(1).values.numpy()
    t_conf = torch.softmax(torch.from_numpy(t_logits), 1).max(1).values.numpy()
    correct = c_logits.argmax(1) == c_y
    f_pos = gaussian_kde(np.stack([c_conf[correct], c_prox[correct]]))
    f_neg = gaussian_kde(np.stack([c_conf[~correct], c_prox[~correct]]))
    gamma = (~correct).sum() / max(correct.sum(), 1)
    pts = np.stack([t_conf, t_prox])
    pos = f_pos(pts)
    return pos / np.maximum(pos + gamma * f_neg(pts), 1e-10)


def cases(device: torch.device, quick: bool, shapes=None):
    on_cuda = device.type == "cuda"
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    out = []
    for n_cal, n_test, d, classes in shapes:
        cal = synthetic_split(n_cal, d, classes, device, seed=0)
        test = synthetic_split(n_test, d, classes, device, seed=1)
        contenders = [("fmkit ProCal (DR)", lambda cal=cal, test=test: _fmkit(cal, test), False)]
        if not on_cuda:  # the released pipeline is CPU code
            contenders.append(("faiss + scipy KDE", unavailable("faiss not installed")
                               if importlib.util.find_spec("faiss") is None
                               else lambda cal=cal, test=test: _released_pipeline(cal, test), True))
        out.append({
            "shape": f"cal={n_cal} test={n_test} d={d} C={classes}",
            "flops": 2.0 * (n_cal * n_cal + n_test * n_cal) * d,
            "contenders": contenders,
            "repeats": 1,
        })
    return out
