"""Proximity, Density-Ratio and Bin-Mean-Shift calibration (ProCal)."""
import math

import numpy as np
import pytest
import torch

from fmkit.calibration.metrics import piece
from fmkit.calibration.procal import (
    BinMeanShiftCalibrator,
    DensityRatioCalibrator,
    kde_bandwidth,
    write_confidence,
)
from fmkit.calibration.proximity import proximity


def brute_sq_dists(x, ref, exclude_self):
    d = ((x[:, None, :].astype(np.float64) - ref[None, :, :].astype(np.float64)) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)


def test_paper_variant_is_exp_of_mean_euclidean():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 6)).astype(np.float32)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    got = proximity(x, ref, k=10)
    want = np.exp(-np.sqrt(brute_sq_dists(x, ref, False)[:, :10]).mean(1))
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    own = proximity(ref, k=10)
    np.testing.assert_allclose(own, np.exp(-np.sqrt(brute_sq_dists(ref, ref, True)[:, :10]).mean(1)), rtol=1e-6)


def test_reference_variant_matches_released_code_definitions():
    """L2-normalised features, squared L2 search, K+1 with column 0 dropped for the calibration set."""
    rng = np.random.default_rng(1)
    val = rng.normal(size=(150, 8)).astype(np.float32)
    test = rng.normal(size=(40, 8)).astype(np.float32)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    v, t = unit(val), unit(test)
    val_d = np.sort(((v[:, None] - v[None]) ** 2).sum(-1), axis=1)[:, 1:11]  # drop column 0 (self)
    test_d = np.sort(((t[:, None] - v[None]) ** 2).sum(-1), axis=1)[:, :10]
    np.testing.assert_allclose(proximity(val, variant="reference"), np.exp(-val_d).mean(1), rtol=1e-5)
    np.testing.assert_allclose(proximity(test, val, variant="reference"), np.exp(-test_d).mean(1), rtol=1e-5)


def test_self_excluded_by_index_so_duplicates_see_each_other():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [9.0, 1.0]])
    prox = proximity(x, k=1)
    assert prox[0].item() == 1.0 and prox[1].item() == 1.0  # distance 0 to the twin
    assert prox[2].item() < 1.0
    values, per_neighbour = proximity(x, k=2, return_neighbors=True)
    assert per_neighbour.shape == (4, 2)


def test_zscore_option_divides_by_dimension():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(60, 5)).astype(np.float32) * 3 + 1
    z = (ref - ref.mean(0)) / np.sqrt(ref.var(0) + 1e-5)
    d = np.sort(((z[:, None] - z[None]) ** 2).sum(-1), axis=1)[:, 1:4] / 5
    got = proximity(ref, k=3, metric="sqeuclidean", reduce="mean_of_exp", normalize="zscore")
    np.testing.assert_allclose(got, np.exp(-d).mean(1), rtol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: proximity(x, k=20), r"k: expected an integer in \[1, 19\]"),
        (lambda x: proximity(x, x[:, :2]), "reference: dimension 2 does not match features dimension 3"),
        (lambda x: proximity(x, variant="cosine"), "variant: expected 'paper' or 'reference'"),
        (lambda x: proximity(x[0]), "features: expected a 2-D array"),
        (lambda x: proximity(x, normalize="max"), "normalize: expected None, 'l2' or 'zscore'"),
    ],
)
def test_proximity_errors(call, match):
    x = torch.randn(20, 3)
    with pytest.raises(ValueError, match=match):
        call(x)


# ---- Density-Ratio ----

def test_bandwidth_rules():
    rng = np.random.default_rng(3)
    pts = torch.from_numpy(rng.normal(size=(1000, 2)))
    std = pts.numpy().std(0)  # ddof = 0
    np.testing.assert_allclose(kde_bandwidth(pts, "paper").numpy(), 1.06 * std * 1000 ** (-1 / 5))
    np.testing.assert_allclose(kde_bandwidth(pts, "reference").numpy(), 1.06 * std * 1000 ** (-1 / 6))
    np.testing.assert_allclose(kde_bandwidth(pts, (0.1, 0.2)).numpy(), [0.1, 0.2])


def test_density_ratio_hand_computed():
    """Two correct and one incorrect calibration point, fixed bandwidth 0.1: s by the formula."""
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    prox = torch.tensor([0.5, 0.6, 0.2], dtype=torch.float64)
    dr = DensityRatioCalibrator(bandwidth=0.1).fit(probs, labels, prox)
    assert dr.gamma_ == 0.5
    phi = lambda u: math.exp(-u * u / 0.02) / (0.1 * math.sqrt(2 * math.pi))  # noqa: E731
    p, d = 0.7, 0.4
    f_pos = (phi(p - 0.9) * phi(d - 0.5) + phi(p - 0.8) * phi(d - 0.6)) / 2
    f_neg = phi(p - 0.6) * phi(d - 0.2)
    expected = f_pos / (f_pos + 0.5 * f_neg)
    test_probs = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    s = dr.predict_confidence(test_probs, torch.tensor([d], dtype=torch.float64))
    assert s.item() == pytest.approx(expected, rel=1e-12)
    out = dr.transform(test_probs, torch.tensor([d], dtype=torch.float64))
    assert out[0, 1].item() == pytest.approx(expected, rel=1e-12)
    assert out.sum().item() == pytest.approx(1.0)


def test_write_confidence_rows_sum_to_one_and_confidence_one_is_not_nan():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2]], dtype=torch.float64)
    out = write_confidence(probs, torch.tensor([0, 0]), torch.tensor([0.8, 0.6], dtype=torch.float64))
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.sum(1).numpy(), [1.0, 1.0])
    np.testing.assert_allclose(out[0].numpy(), [0.8, 0.1, 0.1])
    np.testing.assert_allclose(out[1].numpy(), [0.6, 0.4 * 0.6, 0.4 * 0.4])


def planted_bias(n, seed):
    """Same confidence everywhere; accuracy 0.95 at high proximity and 0.45 at low."""
    rng = np.random.default_rng(seed)
    prox = rng.uniform(0, 1, n)
    conf = np.clip(0.7 + 0.02 * rng.normal(size=n), 0.5, 0.99)
    acc = np.where(prox > 0.5, 0.95, 0.45)
    labels = np.zeros(n, dtype=np.int64)
    wrong = rng.uniform(size=n) > acc
    labels[wrong] = 1
    probs = np.stack([conf, 1 - conf], axis=1)
    return probs, labels, prox


def test_procal_removes_a_planted_proximity_bias():
    cal = planted_bias(6000, 0)
    test = planted_bias(6000, 1)
    before = piece(test[0].max(1), test[1] == 0, test[2])
    dr = DensityRatioCalibrator().fit(*cal)
    after_probs = dr.transform(test[0], test[2])
    after = piece(after_probs[:, 0], test[1] == 0, test[2])
    assert before > 0.2 and after < 0.05


def test_density_ratio_errors():
    dr = DensityRatioCalibrator()
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(ValueError, match="call fit first"):
        dr.transform(probs, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="proximities: length 3 does not match probs length 2"):
        dr.fit(probs, torch.tensor([0, 1]), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"probs: values must lie in \[0, 1\]"):
        dr.fit(probs * 2, torch.tensor([0, 1]), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="bandwidth: expected 'paper', 'reference'"):
        DensityRatioCalibrator(bandwidth="scott").fit(probs, torch.tensor([0, 1]), torch.tensor([0.1, 0.2]))


# ---- Bin-Mean-Shift ----

class Identity:
    def fit(self, probs, labels):
        return self

    def transform(self, probs):
        return probs


def test_bin_mean_shift_paper_mode_hand_computed():
    """One proximity bin x one confidence bin: P' = P + 0.5 (acc - mean conf)."""
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])  # accuracy 0.5, mean confidence 0.75
    prox = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    bms = BinMeanShiftCalibrator(Identity(), n_prox_bins=1, n_conf_bins=1).fit(probs, labels, prox)
    out = bms.transform(probs, prox)
    np.testing.assert_allclose(out[:, 0].numpy(), [0.9 - 0.125, 0.8 - 0.125, 0.7 - 0.125, 0.6 - 0.125])
    np.testing.assert_allclose(out.sum(1).numpy(), 1.0)


def test_bin_mean_shift_shifts_each_proximity_bin_separately():
    probs, labels, prox = planted_bias(4000, 2)
    bms = BinMeanShiftCalibrator(Identity(), n_prox_bins=2, n_conf_bins=1, shrinkage=1.0).fit(probs, labels, prox)
    out = bms.transform(probs, prox)
    high, low = prox > 0.5, prox <= 0.5
    assert out[high, 0].mean() == pytest.approx((labels[high] == 0).mean(), abs=0.01)
    assert out[low, 0].mean() == pytest.approx((labels[low] == 0).mean(), abs=0.01)


def test_bin_mean_shift_refit_mode_uses_one_calibrator_per_bin():
    class Recorder(Identity):
        def fit(self, probs, labels):
            self.n = probs.shape[0]
            return self

        def transform(self, probs):
            return torch.full_like(probs, float(self.n)) / 1e6

    probs = torch.full((100, 2), 0.5, dtype=torch.float64)
    labels = torch.zeros(100, dtype=torch.int64)
    prox = torch.arange(100, dtype=torch.float64)
    bms = BinMeanShiftCalibrator(Recorder(), mode="refit", refit_prox_bins=4).fit(probs, labels, prox)
    assert [c.n for c in bms.calibrators_] == [25, 25, 25, 25]
    out = bms.transform(probs[:3], torch.tensor([-5.0, 50.0, 500.0], dtype=torch.float64))
    assert out[:, 0].tolist() == [25e-6, 25e-6, 25e-6]


def test_bin_mean_shift_errors():
    with pytest.raises(ValueError, match="mode: expected 'shift' or 'refit'"):
        BinMeanShiftCalibrator(Identity(), mode="lambda")
    with pytest.raises(ValueError, match=r"shrinkage: expected a value in \[0, 1\]"):
        BinMeanShiftCalibrator(Identity(), shrinkage=2.0)
    with pytest.raises(ValueError, match="call fit first"):
        BinMeanShiftCalibrator(Identity()).transform(torch.rand(2, 2).softmax(1), torch.rand(2))
