"""A small supervised pre-train + linear-probe cell for `diversity_sweep` (the demo's and the
end-to-end test's `fn`): an MLP trained to classify the K sampled classes, then a ridge
linear probe on its frozen features for a downstream task of held-out classes."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int, width: int, d_feat: int, classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, d_feat), nn.ReLU())
        self.head = nn.Linear(d_feat, classes)

    def forward(self, x):
        return self.head(self.body(x))


def ridge_probe_error(train_f, train_y, test_f, test_y, ridge: float = 1e-2) -> float:
    """Test error of a one-vs-all ridge classifier on frozen features (closed form, float64)."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    a = torch.cat([(train_f - mu) / sd, torch.ones(len(train_f), 1)], 1).double()
    b = torch.cat([(test_f - mu) / sd, torch.ones(len(test_f), 1)], 1).double()
    classes = int(max(train_y.max(), test_y.max())) + 1
    targets = torch.nn.functional.one_hot(train_y, classes).double() * 2 - 1
    w = torch.linalg.solve(a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype), a.T @ targets)
    return float(((b @ w).argmax(1) != test_y).double().mean())


def make_pretrain_fn(x: torch.Tensor, y: torch.Tensor, probe: tuple, width: int = 128, d_feat: int = 64,
                     steps: int = 300, batch: int = 128, lr: float = 3e-3):
    """fn(indices, seed) -> downstream error: pre-trains on x[indices] (labels y, re-indexed to
    the K classes present) for a fixed number of steps, so every cell gets the same compute,
    and probes linearly on probe = (train_x, train_y, test_x, test_y)."""
    px_train, py_train, px_test, py_test = probe

    def fn(indices, seed):
        g = torch.Generator().manual_seed(int(seed) % 2**63)
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        xs = x[idx]
        ys = torch.unique(y[idx], return_inverse=True)[1]
        model = MLP(x.shape[1], width, d_feat, int(ys.max()) + 1)
        with torch.no_grad():  # from the cell's generator, not the global one: cells may run in threads
            for layer in model.modules():
                if isinstance(layer, nn.Linear):
                    bound = layer.in_features ** -0.5
                    layer.weight.uniform_(-bound, bound, generator=g)
                    layer.bias.uniform_(-bound, bound, generator=g)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            b = torch.randint(0, len(xs), (min(batch, len(xs)),), generator=g)
            loss = nn.functional.cross_entropy(model(xs[b]), ys[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return ridge_probe_error(model.body(px_train), py_train, model.body(px_test), py_test)

    return fn
