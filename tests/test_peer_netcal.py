"""Differential test: fmkit's ECE and MCE against netcal's with the same equal-width binning.

netcal's metrics need only numpy, scipy and scikit-learn at import; install with
`pip install --no-deps netcal` (its declared pyro-ppl, gpytorch and tensorboard would pull
another torch and are not used by netcal.metrics).
"""
import numpy as np
import pytest

from fmkit.calibration.metrics import ece, mce

pytestmark = pytest.mark.slow  # differential tests: CI runs them with the peers installed (.ci/run)

netcal_metrics = pytest.importorskip("netcal.metrics", reason="netcal not installed (pip install --no-deps netcal)")


def problem(seed, n, n_bins, on_edges):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 1.0, n)
    if on_edges:  # half the confidences exactly on the bin edges (np.linspace's values), 0 and 1 included
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        conf[: n // 2] = edges[rng.integers(0, n_bins + 1, n // 2)]
    # Over-confident below 0.5, under-confident above, and edge points right on alternate edges:
    # calibration gaps of both signs, so moving edge points between bins changes the ECE.
    correct = (rng.random(n) < np.clip(1.3 * conf - 0.15, 0, 1)).astype(int)
    if on_edges:
        correct[: n // 2] = np.round(conf[: n // 2] * n_bins).astype(int) % 2
    return conf, correct


def ece_closed_on_the_right(conf, correct, n_bins):
    """The other edge convention, (lo, hi] (Guo et al.), to show the data separates the two."""
    b = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], conf, side="left")
    return float(sum(abs(correct[b == i].sum() - conf[b == i].sum()) for i in range(n_bins)) / len(conf))


@pytest.mark.parametrize("on_edges", [False, True])
@pytest.mark.parametrize("n_bins", [10, 15, 20])
def test_ece_mce_match_netcal_on_confidences(on_edges, n_bins):
    conf, correct = problem(100 * n_bins + on_edges, 5000, n_bins, on_edges)
    ref_ece = netcal_metrics.ECE(bins=n_bins).measure(conf, correct)
    ref_mce = netcal_metrics.MCE(bins=n_bins).measure(conf, correct)
    assert ece(conf, correct, n_bins=n_bins) == pytest.approx(ref_ece, abs=1e-12)
    assert mce(conf, correct, n_bins=n_bins) == pytest.approx(ref_mce, abs=1e-12)
    if on_edges:
        assert abs(ece_closed_on_the_right(conf, correct, n_bins) - ref_ece) > 1e-3


def test_ece_mce_match_netcal_on_multiclass_probabilities():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(4000, 10)) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.where(rng.random(4000) < 0.6, p.argmax(1), rng.integers(0, 10, 4000))
    conf, correct = p.max(1), p.argmax(1) == y
    for n_bins in (10, 15):
        assert ece(conf, correct, n_bins=n_bins) == pytest.approx(netcal_metrics.ECE(bins=n_bins).measure(p, y),
                                                                  abs=1e-12)
        assert mce(conf, correct, n_bins=n_bins) == pytest.approx(netcal_metrics.MCE(bins=n_bins).measure(p, y),
                                                                  abs=1e-12)
