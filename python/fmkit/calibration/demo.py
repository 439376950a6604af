"""`fmkit demo calibration`: proximity bias and ProCal, fully offline, on two datasets.

- "digits": scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes; shipped
  inside the package, no download). Real, but tiny: a few hundred test points and a few
  dozen errors per split, so calibration metrics are noisy.
- "mixture": a generated 10-class Gaussian mixture (24,000 x 32) whose points have one of
  three spreads, so dense and sparse regions exist and errors concentrate in sparse ones.
  Large enough for the KDE of Density-Ratio calibration to be estimated.

A small MLP is trained on a random 20% (digits) / 25% (mixture) until over-confident; its
penultimate activations are the features. The rest is split 50/50 into calibration and test
sets (the paper's protocol), over several random seeds. Proximity uses variant="reference"
(L2-normalised features, mean of exp(-d^2)) by default: with raw features and distances in
the tens, the paper's exp(-mean d) squashes proximities towards 0 and the KDE degenerates
(see the README).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from fmkit.calibration.bias import proximity_bias_test
from fmkit.calibration.compare import METRIC_KEYS, Split, compare_methods

DATASETS = ("digits", "mixture")


def load_dataset(name: str):
    """(x float32 [n, d], y int64 [n], description, train_fraction)."""
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            from fmkit._extras import install_hint

            raise ModuleNotFoundError(f"dataset 'digits' needs scikit-learn: {install_hint('demo')}",
                                      name="sklearn") from exc
        digits = load_digits()
        return (digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64),
                "scikit-learn digits (1,797 8x8 images, 10 classes)", 0.2)
    if name == "mixture":
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(10, 32))
        y = rng.integers(0, 10, size=24_000)
        spread = rng.choice([0.5, 1.0, 2.0], size=y.shape[0])
        x = centers[y] + rng.normal(size=(y.shape[0], 32)) * spread[:, None]
        return x.astype(np.float32), y.astype(np.int64), "generated 10-class Gaussian mixture (24,000 x 32)", 0.25
    raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")


class _MLP(torch.nn.Module):
    def __init__(self, d_in: int, n_classes: int, width: int = 128):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                        torch.nn.ReLU())
        self.head = torch.nn.Linear(width, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


def train_and_split(x, y, seed: int, train_fraction: float, epochs: int = 300):
    """Trains on a random `train_fraction`; returns calibration and test Splits of the rest."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_train = int(len(y) * train_fraction)
    train, held = perm[:n_train], perm[n_train:]
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
    return Split(logits[cal], yt[cal], feats[cal]), Split(logits[test], yt[test], feats[test])


def run_demo(out_dir: str, seeds: int = 5, datasets=DATASETS, methods=("conf", "ts", "ets", "hb", "ir", "mir"),
             variant: str = "reference", shown_dir: str | None = None) -> dict:
    """Runs each dataset and writes its table and plots to out_dir/<dataset> (printed as
    shown_dir/<dataset> when the caller renames out_dir afterwards). A dataset whose optional
    package is missing (digits: scikit-learn) is skipped with a message; the others still run."""
    from tqdm import tqdm

    report = {}
    for name in datasets:
        try:
            x, y, description, train_fraction = load_dataset(name)
        except ModuleNotFoundError as exc:
            print(f"\n=== {name}: skipped ({exc}) ===")
            report[name] = {"skipped": str(exc)}
            continue
        print(f"\n=== {description} ===")
        per_seed, biases, first = [], [], None
        for seed in tqdm(range(seeds), desc=name):
            cal, test = train_and_split(x, y, seed, train_fraction)
            result = compare_methods(cal, test, methods, seed=seed, progress=False, variant=variant)
            per_seed.append(result.metrics)
            biases.append(proximity_bias_test(result.test_confidence["conf"], result.test_correct,
                                              result.test_proximity, n_draws=2000, seed=seed))
            first = first or result
        mean = {m: {k: float(np.mean([s[m][k] for s in per_seed])) for k in METRIC_KEYS} for m in per_seed[0]}
        first.metrics = mean  # plots come from the first seed, the table is the mean
        print(f"mean over {seeds} seeds, test split:")
        print(first.table())
        print("proximity bias of the uncalibrated model (test split):")
        for seed, b in enumerate(biases):
            print(f"  seed {seed}: bias index {b.bias_index:+.3f}, rank-sum p = {b.p_value:.3g}")
        paths = first.save(os.path.join(out_dir, name), overwrite=True)
        print(f"wrote {len(paths)} files to {os.path.join(shown_dir or out_dir, name)}")
        report[name] = {"metrics": mean, "bias": biases, "dataset": description}
    if report and all("skipped" in r for r in report.values()):
        raise ModuleNotFoundError("nothing to run: " + "; ".join(r["skipped"] for r in report.values()),
                                  name="sklearn")
    return report
