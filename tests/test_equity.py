"""fmkit.equity: subgroup audit arithmetic, calibration per group, the fast bootstrap, Rogan-Gladen
(spec §3.3 items 1-3 and 6, issue 19's additions and bad-input checks)."""
import warnings

import numpy as np
import pytest

from fmkit.calibration import ece, piece
from fmkit.equity import EquityWarning, corrected_disparity, corrected_prevalence, subgroup_audit
from fmkit.equity import _bootstrap as bs


def _binary_group(n_pos, tp, n_neg, tn):
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    pred = np.r_[np.ones(tp), np.zeros(n_pos - tp), np.zeros(tn), np.ones(n_neg - tn)].astype(int)
    return y, pred


def _known_groups():
    parts = {"A": (20, 15, 20, 15), "B": (25, 20, 25, 10), "C": (5, 2, 5, 3)}  # acc .75, .6, .5
    ys, ps, gs = [], [], []
    for g, spec in parts.items():
        y, p = _binary_group(*spec)
        ys.append(y), ps.append(p), gs.append(np.full(len(y), g))
    return np.concatenate(ys), np.concatenate(ps), np.concatenate(gs)


def test_audit_arithmetic_exact_values():
    y, pred, g = _known_groups()
    r = subgroup_audit(y, pred, g, n_boot=50, min_count=30, min_count_by="rows").maps["group"]
    assert r.groups == ["A", "B", "C"] and r.n.tolist() == [40, 50, 10]
    acc = r.estimate[r.metric("accuracy")]
    np.testing.assert_allclose(acc, [0.75, 0.6, 0.5])
    np.testing.assert_allclose(r.estimate[r.metric("fnr")], [5 / 20, 5 / 25, 3 / 5])
    np.testing.assert_allclose(r.estimate[r.metric("fpr")], [5 / 20, 15 / 25, 2 / 5])
    np.testing.assert_allclose(r.estimate[r.metric("selection_rate")], [20 / 40, 35 / 50, 4 / 10])
    assert r.small.tolist() == [False, False, True]
    i = r.metric("accuracy")
    assert r.reference == "B"  # the largest group
    np.testing.assert_allclose(r.diff[0][i], [0.15, 0.0, -0.1])
    np.testing.assert_allclose(r.ratio[0][i], [1.25, 1.0, 0.5 / 0.6])
    # C is below min_count: flagged and kept out of the gap and the worst group, never merged
    assert r.gap[0][i] == pytest.approx(0.15) and r.worst_group[i] == "B" and r.worst_value[0][i] == 0.6
    assert r.worst_group[r.metric("fnr")] == "A" and r.worst_group[r.metric("selection_rate")] is None
    assert not r.significant[:, 2].any() and np.isnan(r.p_adjusted[:, 2]).all()  # small: outside the family
    r2 = subgroup_audit(y, pred, g, n_boot=0, min_count=5, reference_group="A").maps["group"]
    assert r2.gap[0][i] == pytest.approx(0.25) and r2.worst_group[i] == "C" and not r2.small.any()
    np.testing.assert_allclose(r2.diff[0][i], [0.0, -0.15, -0.25])


def test_intersectional_and_multiple_maps():
    rng = np.random.default_rng(0)
    race, sex = rng.choice(["a", "b", "c"], 600), rng.choice(["f", "m"], 600)
    y = rng.integers(0, 2, 600)
    p = rng.uniform(size=600)
    r = subgroup_audit(y, p, {"race": race, "sex": sex, "race x sex": ("race", "sex")}, n_boot=20)
    assert list(r.maps) == ["race", "sex", "race x sex"]
    inter = r.maps["race x sex"]
    assert inter.groups == [(a, b) for a in "abc" for b in "fm"]
    for j, (a, b) in enumerate(inter.groups):
        m = (race == a) & (sex == b)
        assert inter.n[j] == m.sum()
        assert inter.estimate[inter.metric("accuracy"), j] == pytest.approx(np.mean((p[m] >= 0.5) == y[m]))
    same = subgroup_audit(y, p, {"x": (race, sex)}, n_boot=0).maps["x"]
    np.testing.assert_array_equal(same.estimate, inter.estimate)
    assert "a & f" in r.to_markdown()


def test_per_group_calibration_matches_fmkit_calibration_and_piece_vector():
    rng = np.random.default_rng(1)
    n = 400
    g = np.r_[np.zeros(100, int), np.ones(n - 100, int)]
    # group 0: the PIECE test vector (two equal-mass proximity halves, d = 0.2 / 0.8, accuracy
    # 0.5 / 0.9, confidence 0.7 everywhere): ECE 0, PIECE 0.2
    p = np.r_[np.full(100, 0.7), rng.uniform(size=n - 100)]
    y = np.r_[np.repeat([1, 0], 25), np.repeat([1, 0], [45, 5]), (rng.uniform(size=n - 100) < 0.5)].astype(int)
    prox = np.r_[np.full(50, 0.2), np.full(50, 0.8), rng.uniform(size=n - 100)]
    r = subgroup_audit(y, p, g, proximity=prox, n_boot=0).maps["group"]
    assert r.estimate[r.metric("ece"), 0] == pytest.approx(0.0, abs=1e-12)
    assert r.estimate[r.metric("piece"), 0] == pytest.approx(0.2, abs=1e-12)
    conf, correct = np.maximum(p, 1 - p), (p >= 0.5) == y
    for j in (0, 1):
        m = g == j
        assert r.estimate[r.metric("ece"), j] == pytest.approx(ece(conf[m], correct[m]), abs=1e-12)
        assert r.estimate[r.metric("piece"), j] == pytest.approx(piece(conf[m], correct[m], prox[m]), abs=1e-12)
        assert r.estimate[r.metric("brier"), j] == pytest.approx(np.mean((p[m] - y[m]) ** 2), abs=1e-12)
    assert r.estimate[r.metric("ece"), 1] <= r.estimate[r.metric("piece"), 1]


def test_perfectly_calibrated_groups_have_zero_ece_and_multiclass_input():
    # confidence 0.7 with 7/10 right and 0.9 with 9/10 right, in each of 3 groups
    probs, y, g = [], [], []
    for grp in range(3):
        for conf, right in ((0.7, 7), (0.9, 9)):
            row = np.array([conf, (1 - conf) / 2, (1 - conf) / 2])
            probs += [row] * 10
            y += [0] * right + [1] * (10 - right)
            g += [grp] * 10
    r = subgroup_audit(np.array(y), np.array(probs), np.array(g), n_boot=10).maps["group"]
    np.testing.assert_allclose(r.estimate[r.metric("ece")], 0.0, atol=1e-12)
    assert "fpr" not in r.metrics  # multiclass: no binary rates
    np.testing.assert_allclose(r.estimate[r.metric("accuracy")], 0.8)


def test_ece_le_piece_on_random_data():
    rng = np.random.default_rng(2)
    n = 3000
    g, p, prox = rng.integers(0, 5, n), rng.uniform(size=n), rng.uniform(size=n)
    y = (rng.uniform(size=n) < p**1.5).astype(int)
    r = subgroup_audit(y, p, g, proximity=prox, n_boot=0).maps["group"]
    assert (r.estimate[r.metric("ece")] <= r.estimate[r.metric("piece")] + 1e-12).all()


def test_same_seed_same_intervals_cluster_keeps_clusters_whole():
    rng = np.random.default_rng(3)
    n = 500
    y, p, g = rng.integers(0, 2, n), rng.uniform(size=n), rng.integers(0, 3, n)
    kw = dict(n_boot=100, interval="bca")
    a, b = subgroup_audit(y, p, g, seed=5, **kw), subgroup_audit(y, p, g, seed=5, **kw)
    c = subgroup_audit(y, p, g, seed=6, **kw)
    np.testing.assert_array_equal(a.maps["group"].lo, b.maps["group"].lo)
    assert not np.array_equal(a.maps["group"].lo, c.maps["group"].lo)
    w = bs.cluster_weights(40, 50, np.random.default_rng(0), "multinomial")
    assert (w.sum(1) == 40).all()
    # 40 clusters of 5 rows, each all right or all wrong: a replicate's accuracy is (clusters
    # drawn right) / 40 exactly when whole clusters are resampled; a row bootstrap breaks that
    cl = np.repeat(np.arange(40), 5)
    y = np.repeat(rng.integers(0, 2, 40), 5)
    pred = np.where(np.repeat(rng.uniform(size=40) < 0.7, 5), y, 1 - y)
    rep = subgroup_audit(y, pred, np.zeros(200), cluster=cl, n_boot=200).maps["group"].replicates[:, 0, 0]
    assert np.allclose(rep * 40, np.round(rep * 40))
    rows = subgroup_audit(y, pred, np.zeros(200), n_boot=200).maps["group"].replicates[:, 0, 0]
    assert not np.allclose(rows * 40, np.round(rows * 40))
    wide = subgroup_audit(y, pred, np.zeros(200), cluster=cl, n_boot=400).maps["group"]
    narrow = subgroup_audit(y, pred, np.zeros(200), n_boot=400).maps["group"]
    assert (wide.hi - wide.lo)[0, 0] > 1.5 * (narrow.hi - narrow.lo)[0, 0]  # clustering widens the CI


def _naive_bootstrap(y, p, g, n_boot, seed):
    """Row-resampling bootstrap within groups: accuracy, ECE, Brier per group and the accuracy gap."""
    rng = np.random.default_rng(seed)
    conf, correct = np.maximum(p, 1 - p), ((p >= 0.5) == y).astype(float)
    groups = np.unique(g)
    out = np.zeros((n_boot, 3, len(groups)))
    for b in range(n_boot):
        for j, grp in enumerate(groups):
            idx = np.flatnonzero(g == grp)
            s = rng.choice(idx, idx.size)
            c, k = conf[s], correct[s]
            bins = np.minimum((c * 15).astype(int), 14)
            e = np.abs(np.bincount(bins, k, 15) - np.bincount(bins, c, 15)).sum() / idx.size
            out[b, :, j] = k.mean(), e, np.mean((c - k) ** 2)
    return out


@pytest.mark.slow
def test_fast_bootstrap_matches_row_resampling_within_monte_carlo_error():
    rng = np.random.default_rng(4)
    n, B = 3000, 600
    g = rng.integers(0, 3, n)
    p = rng.beta(2, 2, n)
    y = (rng.uniform(size=n) < np.clip(p + 0.1 * (g - 1), 0, 1)).astype(int)
    fast = subgroup_audit(y, p, g, n_boot=B, seed=1).maps["group"]
    naive = _naive_bootstrap(y, p, g, B, seed=2)
    names = [fast.metric(x) for x in ("accuracy", "ece", "brier")]
    reps = fast.replicates[:, names]
    sd = naive.std(0)
    for q in (0.025, 0.975):
        # the SE of a 2.5% quantile with B draws is about 2.7 sd / sqrt(B) per method
        assert np.all(np.abs(np.quantile(reps, q, 0) - np.quantile(naive, q, 0)) < 4 * 2.7 * sd / np.sqrt(B) * 2**0.5)
    np.testing.assert_allclose(reps.std(0), sd, rtol=0.2)
    gap_naive = naive[:, 0].max(1) - naive[:, 0].min(1)
    i = fast.metric("accuracy")
    assert abs(fast.gap[1][i] - np.quantile(gap_naive, 0.025)) < 4 * 2.7 * gap_naive.std() / np.sqrt(B) * 2**0.5
    assert abs(fast.gap[2][i] - np.quantile(gap_naive, 0.975)) < 4 * 2.7 * gap_naive.std() / np.sqrt(B) * 2**0.5


@pytest.mark.slow
@pytest.mark.parametrize("interval", ["percentile", "bca"])
def test_ci_covers_known_gap(interval):
    rng = np.random.default_rng(5)
    trials, cover = 200, 0
    g = np.repeat([0, 1], [400, 300])
    truth = np.where(g == 0, 0.8, 0.7)  # accuracy gap group 1 - group 0 = -0.1
    for t in range(trials):
        y = rng.integers(0, 2, g.size)
        pred = np.where(rng.uniform(size=g.size) < truth, y, 1 - y)
        r = subgroup_audit(y, pred, g, n_boot=300, seed=t, interval=interval).maps["group"]
        i = r.metric("accuracy")
        cover += r.diff[1][i, 1] <= -0.1 <= r.diff[2][i, 1]
    assert cover / trials >= 0.90


def test_holm_and_bh_adjustments():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    np.testing.assert_allclose(bs.adjust(p, "holm")[[0, 1, 2, 4]], [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(bs.adjust(p, "bh")[[0, 1, 2, 4]], [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(bs.adjust(p, "holm")[3])


def test_significance_flags_only_a_real_difference():
    rng = np.random.default_rng(6)
    g = np.repeat(["ref", "same", "worse"], 2000)
    truth = np.select([g == "worse"], [0.6], 0.8)
    y = rng.integers(0, 2, g.size)
    pred = np.where(rng.uniform(size=g.size) < truth, y, 1 - y)
    r = subgroup_audit(y, pred, g, reference_group="ref", n_boot=400).maps["group"]
    i = r.metric("accuracy")
    assert r.significant[i].tolist() == [False, False, True]
    assert any(row["significant"] for row in subgroup_audit(y, pred, g, n_boot=200).disparity_rows()
               if row["kind"].startswith("difference") and row["group"] == "worse")


def test_rogan_gladen_known_values_and_errors():
    p_obs = 0.8 * 0.3 + (1 - 0.9) * 0.7
    assert p_obs == pytest.approx(0.31)
    assert corrected_prevalence(p_obs, 0.8, 0.9) == pytest.approx(0.30)
    np.testing.assert_allclose(corrected_prevalence([0.31, 0.0], [0.8, 0.8], [0.9, 0.9]), [0.3, 0.0])  # clipped
    with pytest.raises(ValueError, match="sens \\+ spec"):
        corrected_prevalence(0.3, 0.5, 0.5)
    with pytest.raises(ValueError, match="p_obs"):
        corrected_prevalence(1.3, 0.8, 0.9)


def test_corrected_disparity_recovers_truth_under_group_differential_labeller_error():
    rng = np.random.default_rng(7)
    n = 20000
    g = np.repeat(["a", "b"], n)
    truth = (rng.uniform(size=2 * n) < 0.3).astype(int)  # same prevalence in both groups
    se, sp = np.where(g == "a", 0.95, 0.6), np.where(g == "a", 0.95, 0.9)
    lab = np.where(truth == 1, rng.uniform(size=2 * n) < se, rng.uniform(size=2 * n) >= sp).astype(int)
    audit = rng.choice(2 * n, 4000, replace=False)
    r = corrected_disparity(lab, g, validation=(lab[audit], truth[audit], g[audit]), reference_group="a",
                            n_boot=500)
    assert r.status == "corrected"
    np.testing.assert_allclose(r.corrected[0], [0.3, 0.3], atol=0.03)
    assert r.difference[1][1] <= 0 <= r.difference[2][1]  # corrected: no disparity
    assert not r.observed_difference[1][1] <= 0 <= r.observed_difference[2][1]  # raw: a spurious one
    with pytest.warns(EquityWarning, match="UNCORRECTED"):
        u = corrected_disparity(lab, g, n_boot=10)
    assert u.status == "uncorrected"
    fixed = corrected_disparity(lab, g, sens={"a": 0.95, "b": 0.6}, spec={"a": 0.95, "b": 0.9}, n_boot=10)
    np.testing.assert_allclose(fixed.corrected[0], [0.3, 0.3], atol=0.02)


def test_bad_input_errors():
    y, p, g = np.array([0, 1, 1, 0]), np.array([0.2, 0.9, 0.6, 0.4]), np.array(["a", "a", "b", "b"])
    with pytest.raises(ValueError, match="groups.*3 rows.*y_true has 4"):
        subgroup_audit(y, p, g[:3], n_boot=0)
    with pytest.raises(ValueError, match="probs_or_pred: has 3 rows"):
        subgroup_audit(y, p[:3], g, n_boot=0)
    with pytest.raises(ValueError, match="probs_or_pred: probabilities must lie in \\[0, 1\\], found 1.5"):
        subgroup_audit(y, np.array([0.2, 1.5, 0.6, 0.4]), g, n_boot=0)
    with pytest.raises(ValueError, match="NaN"):
        subgroup_audit(y, np.array([0.2, np.nan, 0.6, 0.4]), g, n_boot=0)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        subgroup_audit(np.array([0, 2, 1, 0]), p, g, n_boot=0)
    with pytest.warns(EquityWarning, match="one member"):
        subgroup_audit(y, p, np.array(["a", "a", "a", "b"]), n_boot=5)
    with pytest.raises(TypeError, match="groups"):
        subgroup_audit(y, p, None)
    with pytest.raises(ValueError, match="interval"):
        subgroup_audit(y, p, g, interval="normal")
    with pytest.raises(ValueError, match="alpha"):
        subgroup_audit(y, p, g, alpha=1.5)
    with pytest.raises(ValueError, match="reference_group: 'z'"):
        subgroup_audit(y, p, g, reference_group="z", n_boot=0)
    with pytest.raises(ValueError, match="PIECE needs probabilities"):
        subgroup_audit(y, np.array([0, 1, 1, 0]), g, proximity=np.ones(4), n_boot=0)
    with pytest.raises(ValueError, match="metric"):
        subgroup_audit(y, p, g, n_boot=0).maps["group"].metric("auc")


@pytest.mark.slow  # matplotlib's import and layout: ~5 s
def test_plot_and_outputs(tmp_path):
    rng = np.random.default_rng(8)
    y, p, g = rng.integers(0, 2, 300), rng.uniform(size=300), rng.choice(["a", "b", "c"], 300)
    r = subgroup_audit(y, p, {"g": g, "g2": (g, y)}, n_boot=50)
    r.plot(metrics=("accuracy", "ece"), path=str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    r.to_csv(str(tmp_path / "t.csv"))
    assert (tmp_path / "t.csv").read_text().startswith("map,group,n,small,metric,estimate,lo,hi")
    d = r.to_dict()
    assert len(d["groups"]) == (3 + 6) * 6 and all(np.isfinite(row["estimate"]) for row in d["groups"]
                                                    if row["metric"] == "accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        subgroup_audit(y, p, g, n_boot=20, interval="bca")


def test_calibration_slope_and_intercept_per_group():
    from fmkit.equity import calibration_fit

    rng = np.random.default_rng(9)
    n = 9000
    g = rng.integers(0, 3, n)
    z = rng.normal(0, 1.5, n)
    truth = {0: (1.0, 0.0), 1: (2.0, 0.0), 2: (0.5, 0.5)}  # slope, intercept of the true logit on z
    b, a = np.array([truth[j][0] for j in g]), np.array([truth[j][1] for j in g])
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(a + b * z)))).astype(int)
    r = calibration_fit(y, 1 / (1 + np.exp(-z)), g, n_boot=300)
    for j in range(3):  # the row fits are the maximum-likelihood fits: the gradient vanishes there
        m = g == j
        q = 1 / (1 + np.exp(-(r.intercept[0][j] + r.slope[0][j] * z[m])))
        assert abs(np.sum(y[m] - q)) < 1e-6 and abs(np.sum((y[m] - q) * z[m])) < 1e-6
        assert r.slope[1][j] <= truth[j][0] <= r.slope[2][j]
        assert r.intercept[1][j] <= truth[j][1] <= r.intercept[2][j]
    with pytest.raises(ValueError, match="binary probabilities"):
        calibration_fit(y, np.stack([1 - z / 10, z / 10], 1).clip(0, 1), g)
