"""fmkit.equity.subgroup_audit against fairlearn's MetricFrame: equal per-group point estimates,
and bootstrap intervals that agree within Monte Carlo error (skips when fairlearn is absent)."""
import numpy as np
import pytest

pytest.importorskip("fairlearn")
pytestmark = pytest.mark.slow  # MetricFrame's bootstrap recomputes every metric per replicate in Python

from fmkit.bench.equity import METRIC_FUNCTIONS, metricframe_audit, synthetic  # noqa: E402
from fmkit.equity import subgroup_audit  # noqa: E402


def test_point_estimates_equal_metricframe():
    y, p, g = synthetic(3000, 7, seed=1)
    est, _, _ = metricframe_audit(y, p, g, None)
    m = subgroup_audit(y, p, g, n_boot=0).maps["group"]
    for k in METRIC_FUNCTIONS:
        np.testing.assert_allclose(m.estimate[m.metric(k)], est[k], atol=1e-12, err_msg=k)


def test_bootstrap_intervals_agree_within_monte_carlo_error():
    y, p, g = synthetic(1500, 2, seed=2)
    b_mf, b_fm = 100, 2000
    names = ("accuracy", "ece", "brier")
    _, lo, hi = metricframe_audit(y, p, g, n_boot=b_mf, seed=0, metrics=names)
    # fairlearn resamples the whole frame (group sizes vary): fmkit's Poisson scheme does too
    m = subgroup_audit(y, p, g, n_boot=b_fm, scheme="poisson").maps["group"]
    for k in names:
        i = m.metric(k)
        sd = m.replicates[:, i].std(0)
        # SE of a 2.5% / 97.5% quantile from B draws is about 2.7 sd / sqrt(B); 4 SE of the difference
        tol = 4 * 2.7 * sd * np.sqrt(1 / b_mf + 1 / b_fm)
        assert np.all(np.abs(m.lo[i] - lo[k]) < tol), (k, m.lo[i], lo[k], tol)
        assert np.all(np.abs(m.hi[i] - hi[k]) < tol), (k, m.hi[i], hi[k], tol)
