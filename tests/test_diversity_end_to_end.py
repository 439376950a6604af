"""Spec §2.3 item 5: a real (tiny) sweep on a 200-class Gaussian mixture, pre-training an MLP
per cell and probing it on held-out classes; resume, fit and prediction (slow)."""
import math

import numpy as np
import pytest
import torch

from fmkit.diversity import diversity_sweep, fit_diversity_law, predict_optimal_classes
from fmkit.diversity.pretrain import make_pretrain_fn

pytestmark = pytest.mark.slow


def mixture(classes, per_class, d, seed):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, d, generator=torch.Generator().manual_seed(99))  # shared structure
    centres = torch.randn(classes, 8, generator=g) @ basis / 2
    y = torch.arange(classes).repeat_interleave(per_class)
    return centres[y] + torch.randn(len(y), d, generator=g), y


@pytest.fixture
def one_thread():
    # Tiny MLP steps: torch's intra-op threads cost more than they do on a busy 2-core machine.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# A 10-step MLP's errors are mostly noise, so the drift check may well fire: not what is tested.
@pytest.mark.filterwarnings("ignore::fmkit.diversity.DiversityDriftWarning")
def test_small_sweep_resumes_fits_and_predicts(tmp_path, one_thread):
    x, y = mixture(200, 24, 24, seed=0)
    px, py = mixture(10, 30, 24, seed=1)  # downstream: other classes
    probe = (px[::2], py[::2], px[1::2], py[1::2])
    calls = []
    fn = make_pretrain_fn(x, y, probe, width=32, d_feat=16, steps=10)

    def counted(indices, seed):
        calls.append(seed)
        return fn(indices, seed)

    cache = str(tmp_path / "cells.jsonl")
    kwargs = dict(seeds=(0, 1), cache_path=cache, progress=False, n_jobs=2)  # default K grids, within the pool
    cells = diversity_sweep(y, [480, 1440], counted, **kwargs)
    assert len(calls) == len(cells) >= 16 and all(c["n"] <= 24 for c in cells)
    diversity_sweep(y, [480, 1440], counted, **kwargs)
    assert len(calls) == len(cells)  # resume: no cell ran twice
    fit = fit_diversity_law(cells, exponents="half", n_boot=10)
    pred = predict_optimal_classes(fit, 20_000, K_max=200)
    assert all(math.isfinite(v) for v in (fit.C0, fit.A, fit.B, fit.r_star))
    assert 1 <= pred.K_star <= 200 and pred.n_star == 20_000 // pred.K_star
    assert np.isfinite(fit.drift["a_minus_b"])
