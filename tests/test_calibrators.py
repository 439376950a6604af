"""fmkit.calibration.calibrators: planted parameters, brute-force references, kinds, errors."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmkit.calibration import calibrators
from fmkit.calibration.calibrators import (
    EnsembleTemperatureScaling,
    HistogramBinning,
    IsotonicCalibration,
    MultiIsotonic,
    ParameterizedTemperatureScaling,
    TemperatureScaling,
    pool_adjacent_violators,
)


def sample_labels(true_logits, seed):
    rng = np.random.default_rng(seed)
    p = torch.softmax(torch.as_tensor(true_logits, dtype=torch.float64), 1).numpy()
    # Inverse-CDF sampling, vectorised: one uniform per row against the row's cumulative probabilities.
    u = rng.random((p.shape[0], 1))
    return np.minimum((p.cumsum(1) < u).sum(1), p.shape[1] - 1)


@pytest.fixture(scope="module")
def overconfident():
    """Logits 2.5x sharper than the distribution the labels come from."""
    rng = np.random.default_rng(0)
    true = rng.normal(size=(20000, 8)) * 1.5
    return true * 2.5, sample_labels(true, 1)


def nll(probs, labels):
    p = np.asarray(probs)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-300, None)).mean())


def brier(probs, labels):
    p = np.asarray(probs)
    return float(((p - np.eye(p.shape[1])[labels]) ** 2).mean())


def softmax(z):
    return torch.softmax(torch.as_tensor(z, dtype=torch.float64), 1).numpy()


def isotonic_bruteforce(y, w=None):
    """Min-max formula: fit_i = max_{j<=i} min_{k>=i} weighted mean(y[j..k])."""
    y = np.asarray(y, float)
    w = np.ones_like(y) if w is None else np.asarray(w, float)
    n = len(y)
    out = np.empty(n)
    for i in range(n):
        out[i] = max(min((w[j:k + 1] * y[j:k + 1]).sum() / w[j:k + 1].sum() for k in range(i, n))
                     for j in range(i + 1))
    return out


# ------------------------------------------------------------------------------ temperature scaling
def test_ts_recovers_planted_temperature(overconfident):
    z, y = overconfident
    ts = TemperatureScaling().fit(z, y)
    assert ts.temperature_ == pytest.approx(2.5, rel=0.05)
    assert nll(ts.transform(z), y) <= nll(softmax(z), y)


def test_ts_is_the_nll_minimiser(overconfident):
    z, y = overconfident[0][:3000], overconfident[1][:3000]
    t = TemperatureScaling().fit(z, y).temperature_
    grid = t * np.exp(np.linspace(-0.05, 0.05, 11))
    losses = [nll(softmax(z / g), y) for g in grid]
    assert int(np.argmin(losses)) == 5


def ts_problem(seed, n, c, scale, right, decimals):
    """Random logits (optionally rounded, as stored logits often are) and labels that agree with the
    argmax for a fraction `right` of the samples."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * scale
    if decimals is not None:
        z = np.round(z, decimals)
    y = np.where(rng.random(n) < right, z.argmax(1), rng.integers(0, c, n))
    return z, y


def nll_at(z, y, t):
    a = np.asarray(z, float) / t
    a = a - a.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(a).sum(1)) - a[np.arange(len(y)), y]))


def test_ts_newton_step_onto_zero_gradient():
    # Issue 12.1: a Newton step landed where the gradient is exactly 0, and the bisection fallback
    # ran before the g == 0 exit, returning T = 0.0809 (NLL 1.165) instead of the minimum.
    z = np.array([[-0.24, -0.2], [-1.04, 0.61], [-0.2, -0.44]])
    ts = TemperatureScaling().fit(z, [1, 1, 1])
    assert ts.temperature_ == pytest.approx(0.653676, rel=1e-5)
    assert nll_at(z, [1, 1, 1], ts.temperature_) == pytest.approx(0.544525, abs=1e-6)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(10, 1000), c=st.integers(2, 20),
       scale=st.floats(0.05, 20.0), right=st.floats(0.0, 1.0), decimals=st.sampled_from([None, 1, 2]),
       bounds=st.sampled_from([(1e-2, 1e2), (0.5, 2.0), (0.05, 20.0)]))
def test_ts_property_bounded_nll_minimum(seed, n, c, scale, right, decimals, bounds):
    # The NLL is unimodal in T (convex in 1/T), so "no better neighbour within the bounds" plus
    # "no better point on a coarse grid" says T is the bounded minimum (scipy-free; the scipy
    # comparison is in test_peer_scipy.py).
    z, y = ts_problem(seed, n, c, scale, right, decimals)
    t = TemperatureScaling(bounds=bounds).fit(z, y).temperature_
    lo, hi = bounds
    assert lo <= t <= hi
    best = nll_at(z, y, t)
    tol = 1e-12 * max(1.0, best)
    near = [v for v in (t * (1 - 1e-5), t * (1 + 1e-5)) if lo <= v <= hi]
    grid = np.geomspace(lo, hi, 17)
    assert best <= min(nll_at(z, y, v) for v in near + list(grid)) + tol


def test_ts_separable_data_stops_at_bound():
    # Every sample right with a margin: NLL keeps falling as T -> 0.
    z = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, -1.0]])
    ts = TemperatureScaling(bounds=(0.05, 20.0)).fit(z, [0, 1, 0])
    assert ts.temperature_ == pytest.approx(0.05)


def test_ts_binary_1d_matches_sigmoid(overconfident):
    rng = np.random.default_rng(3)
    s = rng.normal(size=4000) * 2
    y = (rng.random(4000) < 1 / (1 + np.exp(-s))).astype(int)
    ts = TemperatureScaling().fit(s * 3, y)
    out = ts.transform(s * 3)
    assert out.shape == (4000,)
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-s * 3 / ts.temperature_)))
    assert ts.temperature_ == pytest.approx(3.0, rel=0.1)


def test_ets_simplex_bounds_and_brier(overconfident):
    z, y = overconfident
    ets = EnsembleTemperatureScaling().fit(z, y)
    w = np.asarray(ets.weights_)
    assert w.shape == (3,) and (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    assert 0.05 <= ets.temperature_ <= 5.0
    out = ets.transform(z)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)
    assert brier(out, y) <= brier(softmax(z), y)
    expected = (w[0] * softmax(z / ets.temperature_) + w[1] * softmax(z) + w[2] / z.shape[1])
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_ets_temperature_clipped_to_bounds():
    # Labels independent of very sharp logits: best T is large, beyond the upper bound 5.
    rng = np.random.default_rng(4)
    z = rng.normal(size=(2000, 5)) * 30
    ets = EnsembleTemperatureScaling().fit(z, rng.integers(0, 5, 2000))
    assert ets.temperature_ == pytest.approx(5.0)
    assert ets.weights_[2] > 0.5  # mostly uniform when the logits carry no information


# ----------------------------------------------------------------------------------------- PTS
@pytest.fixture(scope="module")
def pts_data():
    rng = np.random.default_rng(5)
    true = rng.normal(size=(3000, 6)) * 1.5
    return true * 3.0, sample_labels(true, 6)


def test_pts_reduces_brier_and_learns_temperature(pts_data):
    z, y = pts_data
    pts = ParameterizedTemperatureScaling(lr=1e-2, epochs=60).fit(z, y)
    out = pts.transform(z)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)
    assert brier(out, y) < brier(softmax(z), y) - 1e-3
    assert np.median(pts.predict_temperature(z)) == pytest.approx(3.0, rel=0.25)
    assert pts.loss_history_[-1] < pts.loss_history_[0]


def test_pts_deterministic_and_keeps_global_rng(pts_data):
    z, y = pts_data
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = ParameterizedTemperatureScaling(lr=1e-2, epochs=5, seed=7).fit(z, y).transform(z)
    after = torch.rand(1)
    b = ParameterizedTemperatureScaling(lr=1e-2, epochs=5, seed=7).fit(z, y).transform(z)
    c = ParameterizedTemperatureScaling(lr=1e-2, epochs=5, seed=8).fit(z, y).transform(z)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert torch.equal(before, after)


def test_pts_release_settings_are_an_option(pts_data):
    z, y = pts_data
    assert ParameterizedTemperatureScaling().lr == 1e-2
    pts = ParameterizedTemperatureScaling.released(seed=3)
    assert (pts.top_k, pts.hidden, pts.epochs, pts.lr, pts.batch_size, pts.seed) == (10, (5, 5), 100, 5e-5, 1000, 3)
    with pytest.warns(calibrators.CalibrationWarning):
        pts.fit(z[:1000], y[:1000])
    assert pts.k_ == 6  # top_k capped at C
    assert len(pts.loss_history_) == 100


@pytest.mark.slow
def test_pts_and_ptsk_defaults_train_and_release_warns():
    # Issue 13.7: with the release's lr=5e-5 the untrained net's arbitrary temperature stays, and
    # PTS / PTSK made a generated 10-class problem worse than no calibration, silently.
    from fmkit.calibration.metrics import ece

    rng = np.random.default_rng(21)
    true = rng.normal(size=(3000, 10)) * 1.2
    z, y = true * 2.5, sample_labels(true, 22)
    extra = np.exp(-rng.random((3000, 5)) ** 2)
    fit, test = slice(0, 1500), slice(1500, None)

    def scores(probs):
        p = np.asarray(probs)
        return ece(p.max(1), p.argmax(1) == y[test]), nll(p, y[test])

    raw = scores(softmax(z[test]))
    for kw, ex in (({}, None), ({"top_k": 5}, extra)):
        fit_extra = None if ex is None else ex[fit]
        test_extra = None if ex is None else ex[test]
        with warnings.catch_warnings():
            warnings.simplefilter("error", calibrators.CalibrationWarning)
            good = ParameterizedTemperatureScaling(**kw).fit(z[fit], y[fit], extra=fit_extra)
        ece_good, nll_good = scores(good.transform(z[test], extra=test_extra))
        assert ece_good < 0.5 * raw[0] and nll_good < raw[1]
        with pytest.warns(calibrators.CalibrationWarning, match=r"ParameterizedTemperatureScaling \(PTSK?\): .*NLL"):
            bad = ParameterizedTemperatureScaling.released(**kw).fit(z[fit], y[fit], extra=fit_extra)
        assert scores(bad.transform(z[test], extra=test_extra))[1] > raw[1]


@pytest.mark.slow
def test_compare_methods_warns_when_a_calibrator_raises_val_nll():
    from fmkit.calibration.compare import Split, compare_methods

    rng = np.random.default_rng(23)
    true = rng.normal(size=(1600, 10)) * 1.2
    z, y = true * 2.5, sample_labels(true, 24)
    feats = rng.normal(size=(1600, 8)).astype(np.float32)
    val, test = Split(z[:800], y[:800], feats[:800]), Split(z[800:], y[800:], feats[800:])
    with pytest.warns(calibrators.CalibrationWarning, match="calibration method 'pts': .*NLL on the calibration"):
        bad = compare_methods(val, test, ("conf", "pts", "ts"), pts_settings="release", progress=False)
    assert bad.worse_than_uncalibrated == ["pts"]
    assert bad.metrics["pts"]["ece"] > bad.metrics["conf"]["ece"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", calibrators.CalibrationWarning)
        good = compare_methods(val, test, ("conf", "pts"), progress=False)
    assert good.worse_than_uncalibrated == []
    assert good.metrics["pts"]["ece"] < 0.5 * good.metrics["conf"]["ece"]
    with pytest.raises(ValueError, match="pts_settings: expected one of"):
        compare_methods(val, test, ("conf",), pts_settings="paper", progress=False)


def test_ptsk_extra_features(pts_data):
    z, y = pts_data
    rng = np.random.default_rng(9)
    extra = np.exp(-rng.random((len(y), 5)) ** 2)  # stand-in for exp(-d_k^2) neighbour proximities
    ptsk = ParameterizedTemperatureScaling(top_k=5, lr=1e-2, epochs=20).fit(z, y, extra=extra)
    assert ptsk.n_extra_features_ == 5
    assert ptsk.model_[0].in_features == 10
    out = ptsk.transform(z, extra=extra)
    assert out.shape == z.shape
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)
    assert brier(out, y) < brier(softmax(z), y)
    # The extra features are actually used.
    assert not np.allclose(out, ptsk.transform(z, extra=extra[::-1].copy()))
    assert ptsk.fit_transform(z, y, extra).shape == z.shape
    with pytest.raises(ValueError, match="extra: fit was given 5 extra features"):
        ptsk.transform(z)
    with pytest.raises(ValueError, match="extra: expected 5 features"):
        ptsk.transform(z, extra=extra[:, :3])
    with pytest.raises(ValueError, match="extra: length 10 does not match"):
        ptsk.transform(z, extra=extra[:10])
    one = ParameterizedTemperatureScaling(top_k=5, lr=1e-2, epochs=2).fit(z, y, extra=extra[:, 0])
    assert one.n_extra_features_ == 1
    plain = ParameterizedTemperatureScaling(epochs=1).fit(z, y)
    with pytest.raises(ValueError, match="extra: expected 0 features"):
        plain.transform(z, extra=extra)


# ------------------------------------------------------------------------------------ isotonic
def test_pav_hand_computed():
    # Pools: (1,0) -> .5, then 1 after .5 is fine, then (1,1,0) -> 2/3 once (1,0) violates the 1 before it.
    np.testing.assert_allclose(pool_adjacent_violators([0, 1, 0, 1, 1, 0]), [0, .5, .5, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(pool_adjacent_violators([1, 0, 1, 0, 1]), [.5, .5, .5, .5, 1])
    np.testing.assert_allclose(pool_adjacent_violators([3, 1], [1, 3]), [1.5, 1.5])
    np.testing.assert_allclose(pool_adjacent_violators([1, 2, 3]), [1, 2, 3])


@pytest.mark.parametrize("seed", range(6))
def test_pav_matches_bruteforce(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    y = rng.integers(0, 2, n) if seed % 2 else rng.normal(size=n)
    w = rng.random(n) + 0.1
    np.testing.assert_allclose(pool_adjacent_violators(y), isotonic_bruteforce(y), atol=1e-12)
    np.testing.assert_allclose(pool_adjacent_violators(y, w), isotonic_bruteforce(y, w), atol=1e-12)


def test_pav_cascade_uses_sequential_path(monkeypatch):
    # Each vectorised pass would merge only one block here, so the stack PAV must finish the job.
    calls = []
    seq = calibrators._pav_sequential
    monkeypatch.setattr(calibrators, "_pav_sequential", lambda *a: calls.append(1) or seq(*a))
    y = np.concatenate([np.arange(60.0), [-100.0], np.arange(60.0, 90.0)])
    np.testing.assert_allclose(pool_adjacent_violators(y), isotonic_bruteforce(y), atol=1e-9)
    assert calls
    calls.clear()
    np.testing.assert_allclose(pool_adjacent_violators([3.0, 2, 1, 5]), [2, 2, 2, 5])
    assert not calls  # one non-increasing run: a single vectorised pass suffices


def test_isotonic_monotone_interpolates_and_clips():
    x = np.array([0.1, 0.2, 0.2, 0.5, 0.9])
    y = np.array([0, 1, 0, 1, 1])
    ir = IsotonicCalibration().fit(x, y)  # 1-D: binary, one map on p(y=1)
    # ties at 0.2 merged to 0.5 (weight 2); fitted points (0.1,0), (0.2,.5), (0.5,1), (0.9,1)
    np.testing.assert_allclose(ir.transform(np.array([0.0, 0.1, 0.15, 0.2, 0.35, 0.7, 1.0])),
                               [0, 0, 0.25, 0.5, 0.75, 1, 1])
    rng = np.random.default_rng(1)
    p = rng.random(500)
    ir = IsotonicCalibration().fit(p, (rng.random(500) < p).astype(int))
    grid = np.linspace(0, 1, 1001)
    assert (np.diff(ir.transform(grid)) >= -1e-15).all()


def test_isotonic_matches_sklearn():
    iso = pytest.importorskip("sklearn.isotonic")
    rng = np.random.default_rng(2)
    p = np.round(rng.random(300), 2)  # rounding forces ties
    y = (rng.random(300) < p ** 2).astype(int)
    ref = iso.IsotonicRegression(out_of_bounds="clip").fit(p, y)
    mine = IsotonicCalibration().fit(p, y)
    grid = np.linspace(-0.1, 1.1, 777).clip(0, 1)
    np.testing.assert_allclose(mine.transform(grid), ref.predict(grid), atol=1e-12)


def test_isotonic_one_vs_all_renormalised(overconfident):
    z, y = overconfident
    p = softmax(z[:2000])
    ir = IsotonicCalibration().fit(p, y[:2000])
    out = ir.transform(p)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)
    raw = IsotonicCalibration(renormalize=False).fit(p, y[:2000]).transform(p)
    np.testing.assert_allclose(out, raw / raw.sum(1, keepdims=True))
    assert brier(out, y[:2000]) < brier(p, y[:2000])
    # Each class' map is the 1-D isotonic fit on that column.
    col = IsotonicCalibration().fit(p[:, 3], (y[:2000] == 3).astype(int)).transform(p[:, 3])
    np.testing.assert_allclose(raw[:, 3], col)


def test_all_zero_row_becomes_uniform():
    # Each class is 0 below 0.5 and 1 above, so [0.2, 0.2] maps to [0, 0]: uniform rather than 0/0.
    p = np.array([[0.2, 0.8], [0.8, 0.2]])
    for cal in (IsotonicCalibration(), HistogramBinning(n_bins=2)):
        cal.fit(p, [1, 0])
        np.testing.assert_allclose(cal.transform(np.array([[0.2, 0.2], [0.2, 0.8]])), [[0.5, 0.5], [0, 1]])


def test_multi_isotonic_single_map_not_renormalised(overconfident):
    z, y = overconfident
    p = softmax(z[:3000] / 2)
    mir = MultiIsotonic().fit(p, y[:3000])
    out = mir.transform(p)
    assert not np.allclose(out.sum(1), 1.0)
    # One shared monotone map: sorting all entries by p sorts the outputs.
    order = np.argsort(p.ravel(), kind="stable")
    assert (np.diff(out.ravel()[order]) >= 0).all()
    # output = map(p) + 1e-9 p, with map the isotonic fit on the flattened (p, one-hot) pairs
    flat = IsotonicCalibration().fit(p.ravel(), np.eye(8, dtype=int)[y[:3000]].ravel())
    np.testing.assert_allclose(out, flat.transform(p.ravel()).reshape(p.shape) + 1e-9 * p, rtol=0, atol=1e-15)
    grid = np.linspace(0, 1, 9)[None, :].repeat(2, 0)[:, :8]
    g = mir.transform(grid)
    assert np.all(np.diff(g[0]) > 0)  # strict thanks to the 1e-9 p tie-breaker


def test_multi_isotonic_tie_breaker_exact():
    p = np.array([[0.5, 0.5], [0.5, 0.5]])
    out = MultiIsotonic().fit(p, [0, 1]).transform(np.array([[0.2, 0.8]]))
    np.testing.assert_allclose(out, [[0.5 + 0.2e-9, 0.5 + 0.8e-9]], rtol=0, atol=1e-18)


# ----------------------------------------------------------------------------------- histogram
def test_histogram_binning_hand_computed():
    p = np.array([[0.95, 0.05], [0.85, 0.15], [0.55, 0.45], [0.35, 0.65], [0.05, 0.95], [1.0, 0.0]])
    y = np.array([0, 1, 0, 1, 1, 0])
    hb = HistogramBinning(n_bins=2, renormalize=False).fit(p, y)
    # class 0: bin [0,.5) holds rows 3,4 (y!=0) -> 0; bin [.5,1] holds rows 0,1,2,5 -> 3/4
    # class 1: bin [0,.5) holds rows 0,1,2,5 -> 1/4;  bin [.5,1] holds rows 3,4 -> 1
    np.testing.assert_allclose(hb.bin_values_, [[0, 0.75], [0.25, 1.0]])
    np.testing.assert_allclose(hb.transform(np.array([[0.5, 0.5], [0.2, 0.8]])), [[0.75, 1.0], [0.0, 1.0]])
    hb = HistogramBinning(n_bins=2).fit(p, y)
    out = hb.transform(np.array([[0.5, 0.5], [0.6, 0.4]]))
    np.testing.assert_allclose(out, [[0.75 / 1.75, 1 / 1.75], [0.75, 0.25]])
    np.testing.assert_allclose(out.sum(1), 1.0)


def test_histogram_binning_edges_and_empty_bins():
    p = np.array([0.0, 0.1, 0.1, 0.2])  # 1-D binary
    hb = HistogramBinning(n_bins=10).fit(p, [0, 1, 1, 0])
    out = hb.transform(np.array([0.0, 0.1, 0.19, 0.2, 0.55, 1.0]))
    # [0,.1): 0; [.1,.2): 1; [.2,.3): 0; empty bins keep their centres
    np.testing.assert_allclose(out, [0, 1, 1, 0, 0.55, 0.95])


def test_histogram_binning_rows_sum_to_one(overconfident):
    z, y = overconfident
    p = softmax(z)
    out = HistogramBinning().fit(p, y).transform(p)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)
    assert brier(out, y) < brier(p, y)


# ------------------------------------------------------------------------------- kinds, dtypes
def make(name):
    return {
        "ts": TemperatureScaling(), "ets": EnsembleTemperatureScaling(),
        "pts": ParameterizedTemperatureScaling(epochs=1), "hb": HistogramBinning(),
        "ir": IsotonicCalibration(), "mir": MultiIsotonic(),
    }[name]


LOGIT_CALS = ["ts", "ets", "pts"]
ALL = LOGIT_CALS + ["hb", "ir", "mir"]


def inputs(name, n=200, c=4, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2
    # Informative labels, so that every fitted parameter is well determined (float32 test below).
    y = sample_labels(z / 2, seed + 1)
    y[:c] = np.arange(c)
    return (z if name in LOGIT_CALS else softmax(z)), y


@pytest.mark.parametrize("name", ALL)
def test_kinds_and_float32(name):
    x, y = inputs(name)
    out_np = make(name).fit(x, y).transform(x)
    assert isinstance(out_np, np.ndarray) and out_np.shape == x.shape
    xt = torch.as_tensor(x, dtype=torch.float32)
    out_t = make(name).fit(xt, torch.as_tensor(y)).transform(xt)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64 and out_t.shape == x.shape
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-5)
    if name != "mir":
        np.testing.assert_allclose(out_np.sum(1), 1.0, atol=1e-12)
    # fit on numpy, transform torch: output kind follows the transform input
    assert isinstance(make(name).fit(x, y).transform(torch.as_tensor(x)), torch.Tensor)
    assert isinstance(make(name).fit_transform(x, y), np.ndarray)


@pytest.mark.parametrize("name", ALL)
def test_binary_1d(name):
    rng = np.random.default_rng(1)
    s = rng.normal(size=300)
    y = (rng.random(300) < 1 / (1 + np.exp(-s))).astype(int)
    x = s if name in LOGIT_CALS else 1 / (1 + np.exp(-s))
    cal = make(name).fit(x, y)
    out = cal.transform(x)
    assert out.shape == (300,) and (out >= 0).all() and (out <= 1 + 1e-8).all()
    with pytest.raises(ValueError, match="fit saw 1-D binary input"):
        cal.transform(np.stack([1 - x, x], 1) if name not in LOGIT_CALS else np.stack([0 * x, x], 1))


def test_probability_tolerance_for_float32_softmax():
    p = np.array([[1.0000001, 0.0], [0.3, 0.7]])
    out = HistogramBinning().fit(p, [0, 1]).transform(p)
    assert np.isfinite(out).all()


# --------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ALL)
def test_errors(name):
    x, y = inputs(name)
    arg = "logits" if name in LOGIT_CALS else "probs"
    with pytest.raises(ValueError, match="call fit first"):
        make(name).transform(x)
    with pytest.raises(ValueError, match=r"labels: length 199 does not match " + arg):
        make(name).fit(x, y[:-1])
    with pytest.raises(ValueError, match=arg + r": expected a 1-D \(binary\) or 2-D"):
        make(name).fit(x[None], y)
    with pytest.raises(ValueError, match=r"labels: expected a 1-D array"):
        make(name).fit(x, y[:, None])
    with pytest.raises(ValueError, match=r"labels: label 4 out of range for 4 classes"):
        make(name).fit(x, np.where(y == 0, 4, y))
    with pytest.raises(ValueError, match=r"labels: labels must be >= 0"):
        make(name).fit(x, np.where(y == 0, -1, y))
    with pytest.raises(ValueError, match=r"labels: expected integer class labels"):
        make(name).fit(x, y + 0.5)
    with pytest.raises(ValueError, match=r"labels: contains NaN or inf"):
        make(name).fit(x, np.where(y == 0, np.nan, y))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=arg + ": contains NaN or inf"):
        make(name).fit(bad, y)
    with pytest.raises(ValueError, match=arg + ": empty input"):
        make(name).fit(x[:0], y[:0])
    with pytest.raises(ValueError, match=arg + ": expected at least 2 classes"):
        make(name).fit(x[:, :1], np.zeros(len(y), int))
    with pytest.raises(ValueError, match=arg + r": expected a torch.Tensor or numpy array"):
        make(name).fit("abc", y)
    cal = make(name).fit(x, y)
    with pytest.raises(ValueError, match=arg + r": expected \[n, 4\] as in fit \(4 classes\), got shape \[200, 3\]"):
        cal.transform(x[:, :3])
    with pytest.raises(ValueError, match=arg + ": contains NaN or inf"):
        cal.transform(bad)
    with pytest.raises(ValueError, match="not fitted; call fit first"):
        make(name).transform(x)


@pytest.mark.parametrize("name", ["hb", "ir", "mir"])
def test_probs_outside_unit_interval(name):
    x, y = inputs(name)
    bad = x.copy()
    bad[0, 0] = 1.5
    with pytest.raises(ValueError, match=r"probs: values must lie in \[0, 1\], found 1.5"):
        make(name).fit(bad, y)
    with pytest.raises(ValueError, match=r"probs: values must lie in \[0, 1\], found -0.2"):
        make(name).fit(x, y).transform(np.where(x == x[1, 2], -0.2, x))


def test_hyperparameter_errors():
    x, y = inputs("hb")
    with pytest.raises(ValueError, match="n_bins"):
        HistogramBinning(n_bins=0).fit(x, y)
    with pytest.raises(ValueError, match="bounds"):
        TemperatureScaling(bounds=(0, 1)).fit(*inputs("ts"))
    with pytest.raises(ValueError, match="weights: must be > 0"):
        pool_adjacent_violators([1.0, 2.0], [1.0, 0.0])


def test_against_sklearn_larger():
    iso = pytest.importorskip("sklearn.isotonic")
    rng = np.random.default_rng(11)
    z = rng.normal(size=(3000, 5)) * 2
    y = sample_labels(z / 1.5, 12)
    p = np.round(softmax(z), 3)  # many ties
    flat_x, flat_y = p.ravel(), np.eye(5)[y].ravel()
    ref = iso.IsotonicRegression(out_of_bounds="clip").fit(flat_x, flat_y)
    mir = MultiIsotonic().fit(p, y)
    q = softmax(rng.normal(size=(500, 5)) * 3)
    np.testing.assert_allclose(mir.transform(q), ref.predict(q.ravel()).reshape(q.shape) + 1e-9 * q, atol=1e-12)
    raw = IsotonicCalibration(renormalize=False).fit(p, y).transform(q)
    for c in range(5):
        col = iso.IsotonicRegression(out_of_bounds="clip").fit(p[:, c], y == c).predict(q[:, c])
        np.testing.assert_allclose(raw[:, c], col, atol=1e-12)
