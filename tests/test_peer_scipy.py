"""Differential test: TemperatureScaling against scipy's bounded scalar minimiser of the same NLL.

The NLL is unimodal in T (convex in 1/T), so scipy's bounded Brent search finds the minimum to
its tolerance; fmkit's T must be at least as good, and where the two disagree a fine grid
between them decides.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmkit.calibration.calibrators import TemperatureScaling

pytestmark = pytest.mark.slow  # differential tests: CI runs them with the peers installed (.ci/run)

optimize = pytest.importorskip("scipy.optimize", reason="scipy not installed (pip install scipy)")


def nll_at(z, y, t):
    a = z / t
    a = a - a.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(a).sum(1)) - a[np.arange(len(y)), y]))


@settings(derandomize=True, max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(10, 1000), c=st.integers(2, 20),
       scale=st.floats(0.05, 20.0), right=st.floats(0.0, 1.0), decimals=st.sampled_from([None, 1, 2]))
def test_temperature_is_scipys_bounded_minimum(seed, n, c, scale, right, decimals):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * scale
    if decimals is not None:
        z = np.round(z, decimals)
    y = np.where(rng.random(n) < right, z.argmax(1), rng.integers(0, c, n))
    bounds = (1e-2, 1e2)
    t = TemperatureScaling(bounds=bounds).fit(z, y).temperature_
    ref = optimize.minimize_scalar(lambda v: nll_at(z, y, v), bounds=bounds, method="bounded",
                                   options={"xatol": 1e-8})
    mine, theirs = nll_at(z, y, t), float(ref.fun)
    assert bounds[0] <= t <= bounds[1]
    assert mine <= theirs + 1e-12 * max(1.0, theirs)
    if abs(np.log(t / ref.x)) > 1e-4:  # flat NLL or a bound: the grid between them must not beat fmkit
        grid = np.geomspace(min(t, ref.x), max(t, ref.x), 101)
        assert mine <= min(nll_at(z, y, v) for v in grid) + 1e-12 * max(1.0, mine)


def test_the_issue_example():
    z = np.array([[-0.24, -0.2], [-1.04, 0.61], [-0.2, -0.44]])
    y = np.array([1, 1, 1])
    ref = optimize.minimize_scalar(lambda v: nll_at(z, y, v), bounds=(1e-2, 1e2), method="bounded",
                                   options={"xatol": 1e-10})
    assert TemperatureScaling().fit(z, y).temperature_ == pytest.approx(ref.x, rel=1e-6)
