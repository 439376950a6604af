"""`fmkit demo calibration`: proximity bias and ProCal on a real dataset, fully offline.

Data: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes; shipped inside
the package, no download) when scikit-learn is installed; otherwise a generated dataset (a
10-class Gaussian mixture whose clusters have different spreads, so dense and sparse regions
exist), which the output names. A small MLP is trained on half of the data until it is
over-confident; its penultimate activations are the features. The held-out half is split
50/50 into calibration and test sets (the paper's protocol), over several random seeds.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from fmkit.calibration.bias import proximity_bias_test
from fmkit.calibration.compare import METRIC_KEYS, Split, compare_methods


def load_dataset(seed: int = 0):
    """(x float32 [n, d], y int64 [n], name)."""
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.data.astype(np.float32) / 16.0
        return x, digits.target.astype(np.int64), "scikit-learn digits (1,797 images, 10 classes)"
    except ImportError:
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(10, 32)) * 2.5
        spreads = np.linspace(0.6, 2.4, 10)
        y = rng.integers(0, 10, size=6000)
        x = centers[y] + rng.normal(size=(6000, 32)) * spreads[y][:, None]
        return x.astype(np.float32), y.astype(np.int64), "generated 10-class Gaussian mixture (6,000 x 32)"


class _MLP(torch.nn.Module):
    def __init__(self, d_in: int, n_classes: int, width: int = 128):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                        torch.nn.ReLU())
        self.head = torch.nn.Linear(width, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


def train_and_split(x, y, seed: int, epochs: int = 300):
    """Trains on a random half; returns calibration and test Splits of the other half."""
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    perm = torch.randperm(n, generator=g)
    train, held = perm[: n // 2], perm[n // 2 :]
    cal, test = held[: len(held) // 2], held[len(held) // 2 :]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(seed)
    model = _MLP(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):  # full batch; long enough to become over-confident
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt[train]), yt[train]).backward()
        opt.step()
    with torch.no_grad():
        feats = model.body(xt)
        logits = model.head(feats)
    return (Split(logits[cal], yt[cal], feats[cal]), Split(logits[test], yt[test], feats[test]))


def run_demo(out_dir: str, seeds: int = 5, methods=("conf", "ts", "ets", "hb", "ir", "mir")) -> dict:
    from tqdm import tqdm

    x, y, name = load_dataset()
    print(f"dataset: {name}")
    per_seed, biases = [], []
    first = None
    for seed in tqdm(range(seeds), desc="seeds"):
        cal, test = train_and_split(x, y, seed)
        result = compare_methods(cal, test, methods, seed=seed, progress=False)
        per_seed.append(result.metrics)
        biases.append(proximity_bias_test(result.test_confidence["conf"], result.test_correct, result.test_proximity,
                                          n_draws=2000, seed=seed))
        if first is None:
            first = result
    mean = {m: {k: float(np.mean([s[m][k] for s in per_seed])) for k in METRIC_KEYS} for m in per_seed[0]}
    first.metrics = mean
    print(f"\nmean over {seeds} seeds, test split:")
    print(first.table())
    print("\nproximity bias of the uncalibrated model (test split):")
    for seed, b in enumerate(biases):
        print(f"  seed {seed}: bias index {b.bias_index:+.3f}, rank-sum p = {b.p_value:.3g}")
    paths = first.save(out_dir)
    print("\nwrote", ", ".join(os.path.basename(p) for p in paths), "to", out_dir)
    return {"metrics": mean, "bias": biases, "dataset": name}
