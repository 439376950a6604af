"""Differential test: fmkit's isotonic regression and Brier score against scikit-learn's."""
import numpy as np
import pytest

from fmkit.calibration.calibrators import IsotonicCalibration, pool_adjacent_violators
from fmkit.calibration.metrics import brier

pytestmark = pytest.mark.slow  # differential tests: CI runs them with the peers installed (.ci/run)

isotonic = pytest.importorskip("sklearn.isotonic", reason="scikit-learn not installed (pip install scikit-learn)")
sk_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(4))
def test_isotonic_calibration_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = [50, 400, 3000, 20000][seed]
    p = rng.random(n)
    if seed % 2:
        p = np.round(p, 2)  # ties, merged the same way
    y = (rng.random(n) < p ** 2).astype(int)
    ref = isotonic.IsotonicRegression(out_of_bounds="clip").fit(p, y)
    mine = IsotonicCalibration().fit(p, y)
    grid = np.concatenate([np.linspace(-0.1, 1.1, 997).clip(0, 1), p[:200]])
    np.testing.assert_allclose(mine.transform(grid), ref.predict(grid), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_weighted_pav_matches_sklearn(seed):
    rng = np.random.default_rng(10 + seed)
    n = [7, 300, 5000][seed]
    y = np.cumsum(rng.normal(size=n)) * 0.1 + rng.normal(size=n)
    w = rng.uniform(0.1, 3.0, n)
    ref = isotonic.isotonic_regression(y, sample_weight=w)
    np.testing.assert_allclose(pool_adjacent_violators(y, w), ref, rtol=0, atol=1e-12)


def test_brier_matches_sklearn():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(6) * 0.5, size=3000)
    y = np.where(rng.random(3000) < 0.5, p.argmax(1), rng.integers(0, 6, 3000))
    pred = p.argmax(1)
    conf, correct = p[np.arange(3000), pred], (pred == y).astype(int)
    # fmkit's default is the top-label Brier: sklearn's binary score of (correct, confidence).
    assert brier(p, y) == pytest.approx(sk_metrics.brier_score_loss(correct, conf), abs=1e-14)
    assert brier(p, y, multiclass=True) == pytest.approx(
        sk_metrics.brier_score_loss(y, p, labels=list(range(6)), scale_by_half=False), abs=1e-14)
