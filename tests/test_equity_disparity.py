"""fmkit.equity, second session (2026-12-03): corrected disparities by prediction-powered inference,
the covariate-adjusted odds ratio, cluster bootstrap intervals; the metric-denominator size guard;
bias-corrected intervals for ECE and max - min."""
import numpy as np
import pytest

from fmkit.equity import EquityWarning, corrected_disparity, subgroup_audit


# ----------------------------------------------------------------------------------------------
# min_count on the metric's own denominator
# ----------------------------------------------------------------------------------------------
def test_min_count_counts_positives_for_fnr_and_negatives_for_fpr():
    # like Adult's Amer-Indian-Eskimo & Female: 59 rows, 3 positives, all missed (FNR 1.0)
    rng = np.random.default_rng(0)
    parts = []
    for grp, n, n_pos, miss in (("big", 2000, 600, 0.3), ("also big", 1500, 400, 0.4), ("few positives", 59, 3, 1.0)):
        y = np.r_[np.ones(n_pos), np.zeros(n - n_pos)].astype(int)
        pred = y.copy()
        pos = np.flatnonzero(y == 1)
        pred[pos[: int(round(miss * n_pos))]] = 0
        neg = np.flatnonzero(y == 0)
        pred[rng.choice(neg, len(neg) // 10, replace=False)] = 1
        parts.append((y, pred, np.full(n, grp)))
    y, pred, g = (np.concatenate(c) for c in zip(*parts))
    old = subgroup_audit(y, pred, g, n_boot=50, min_count=50, min_count_by="rows").maps["group"]
    new = subgroup_audit(y, pred, g, n_boot=50, min_count=50).maps["group"]
    fnr, fpr, acc = (new.metric(x) for x in ("fnr", "fpr", "accuracy"))
    j = new.groups.index("few positives")
    assert old.worst_group[fnr] == "few positives"  # the row guard lets a 3-positive FNR through
    assert new.denominator[fnr, j] == 3 and new.denominator[fpr, j] == 56 and new.denominator[acc, j] == 59
    assert new.small_metric[fnr, j] and not new.small_metric[fpr, j] and not new.small[j]
    assert new.worst_group[fnr] == "also big"  # flagged and kept out of the worst group and the gap
    assert new.gap[0][fnr] == pytest.approx(0.4 - 0.3)
    assert np.isnan(new.p_adjusted[fnr, j]) and not np.isnan(new.p_adjusted[fpr, j])
    res = subgroup_audit(y, pred, g, n_boot=50, min_count=50)
    line = [ln for ln in res.to_markdown(("fnr", "fpr")).splitlines() if ln.startswith("| few positives")][0]
    assert line.count("*") == 1 and line.split("|")[3].strip().endswith("*")  # the FNR cell, not the group
    row = [r for r in res.group_rows() if r["group"] == "few positives" and r["metric"] == "fnr"][0]
    assert row["small"] and row["denominator"] == 3
    with pytest.raises(ValueError, match="min_count_by"):
        subgroup_audit(y, pred, g, min_count_by="positives")


# ----------------------------------------------------------------------------------------------
# bias-corrected intervals for ECE
# ----------------------------------------------------------------------------------------------
def _overconfident(rng, n, delta):
    """Binary P(y=1) whose top-label accuracy is confidence - delta everywhere: binned ECE = delta."""
    p = rng.uniform(size=n)
    pred, conf = (p >= 0.5).astype(int), np.maximum(p, 1 - p)
    y = np.where(rng.uniform(size=n) < conf - delta, pred, 1 - pred)
    return y, p


@pytest.mark.slow  # 600 audits: 3-8 s on the shared 2-core machine
def test_debiased_ece_interval_covers_where_the_percentile_one_does_not():
    rng = np.random.default_rng(1)
    trials, delta = 200, 0.05
    cover = {"percentile": 0, "auto": 0, "debiased": 0}
    plug, debiased = [], []
    for t in range(trials):
        y, p = _overconfident(rng, 300, delta)
        for kind in cover:
            m = subgroup_audit(y, p, np.zeros(300), n_boot=300, seed=t, interval=kind, adjust=None).maps["group"]
            i = m.metric("ece")
            cover[kind] += m.lo[i, 0] <= delta <= m.hi[i, 0]
        plug.append(m.estimate[i, 0])
        debiased.append(m.debiased[i, 0])
    assert cover["percentile"] / trials < 0.7  # measured 0.49 over 300 trials
    assert cover["auto"] / trials >= 0.85 and cover["debiased"] == cover["auto"]  # measured 0.91 (300 trials)
    assert abs(np.mean(debiased) - delta) < abs(np.mean(plug) - delta) / 3  # plug-in 0.070, debiased 0.052


def test_auto_interval_only_corrects_the_groups_calibration_error():
    rng = np.random.default_rng(2)
    y, p = _overconfident(rng, 3000, 0.05)
    g = rng.integers(0, 3, 3000)
    a = subgroup_audit(y, p, g, n_boot=200, seed=3, interval="auto").maps["group"]
    pc = subgroup_audit(y, p, g, n_boot=200, seed=3, interval="percentile").maps["group"]
    d = subgroup_audit(y, p, g, n_boot=200, seed=3, interval="debiased").maps["group"]
    acc, ece = a.metric("accuracy"), a.metric("ece")
    np.testing.assert_array_equal(a.lo[acc], pc.lo[acc])
    np.testing.assert_array_equal(a.lo[ece], d.lo[ece])
    np.testing.assert_array_equal(a.gap[1], pc.gap[1])  # max - min: percentile under "auto"
    assert not np.array_equal(d.gap[1], pc.gap[1])
    assert a.corrected_ci[ece].all() and not a.corrected_ci[acc].any() and not a.corrected_gap_ci.any()
    assert d.corrected_gap_ci.all()
    bias = a.replicates.mean(0) - a.estimate
    np.testing.assert_allclose(a.debiased[acc], a.estimate[acc] - bias[acc], atol=1e-12)
    assert (a.debiased[ece] < a.estimate[ece]).all()
    assert "bias-corrected for the groups' ECE" in subgroup_audit(y, p, g, n_boot=20, interval="auto").to_markdown()


# ----------------------------------------------------------------------------------------------
# prediction-powered inference
# ----------------------------------------------------------------------------------------------
def _noisy_population(rng, n_large, n_gold, prev=(0.3, 0.3)):
    """Two groups with true prevalences `prev`; the labeller misses more positives in group b."""
    g = np.repeat(["a", "b"], n_large)
    truth = (rng.uniform(size=2 * n_large) < np.where(g == "a", prev[0], prev[1])).astype(int)
    se, sp = np.where(g == "a", 0.9, 0.6), np.where(g == "a", 0.9, 0.95)
    lab = np.where(truth == 1, rng.uniform(size=2 * n_large) < se, rng.uniform(size=2 * n_large) >= sp).astype(int)
    gold = np.r_[rng.choice(n_large, n_gold, replace=False), n_large + rng.choice(n_large, n_gold, replace=False)]
    rest = np.setdiff1d(np.arange(2 * n_large), gold)
    return g, truth, lab, gold, rest


@pytest.mark.slow  # 600 corrected_disparity calls: 2-4 s
def test_ppi_covers_the_truth_and_is_unbiased_where_the_naive_rate_is_not():
    rng = np.random.default_rng(4)
    trials, prev = 300, (0.3, 0.3)
    cover = {"clt": 0, "bootstrap": 0}
    cover_diff, ppi, naive = 0, [], []
    for t in range(trials):
        g, truth, lab, gold, rest = _noisy_population(rng, 1000, 150, prev)
        val = (lab[gold], truth[gold], g[gold])
        for ci in cover:
            r = corrected_disparity(lab[rest], g[rest], validation=val, method="ppi", ci=ci, n_boot=400, seed=t,
                                    reference_group="a")
            cover[ci] += all(r.corrected[1][j] <= prev[j] <= r.corrected[2][j] for j in range(2))
        cover_diff += r.difference[1][1] <= 0 <= r.difference[2][1]
        ppi.append(r.corrected[0])
        naive.append(r.observed[0])
    ppi, naive = np.array(ppi), np.array(naive)
    # both groups covered at once: nominal 0.95^2 = 0.90
    assert cover["clt"] / trials >= 0.86 and cover["bootstrap"] / trials >= 0.86
    assert cover_diff / trials >= 0.90
    se = ppi.std(0) / np.sqrt(trials)
    assert np.all(np.abs(ppi.mean(0) - prev) < 4 * se)  # unbiased
    # the labeller's rates: a 0.9 * 0.3 + 0.1 * 0.7 = 0.34, b 0.6 * 0.3 + 0.05 * 0.7 = 0.215: biased, and a
    # spurious disparity of -0.125 where there is none
    np.testing.assert_allclose(naive.mean(0), [0.34, 0.215], atol=0.01)


def test_ppi_works_where_rogan_gladen_is_undefined_and_checks_input():
    rng = np.random.default_rng(5)
    g = np.repeat(["a", "b"], 500)
    truth = (rng.uniform(size=1000) < 0.4).astype(int)
    lab = np.where(g == "b", 1, truth)  # group b: always "positive" (sens 1 + spec 0 = 1)
    gold = rng.choice(1000, 300, replace=False)
    val = (lab[gold], truth[gold], g[gold])
    with pytest.raises(ValueError, match="sens \\+ spec"):
        corrected_disparity(lab, g, validation=val)
    r = corrected_disparity(lab, g, validation=val, method="ppi", ci="clt")
    assert r.method == "ppi" and r.status == "corrected" and r.ci == "CLT"
    assert r.corrected[1][1] <= 0.4 <= r.corrected[2][1]
    assert "prediction-powered" in r.to_markdown()
    with pytest.raises(ValueError, match="needs a gold-labelled"):
        corrected_disparity(lab, g, method="ppi")
    with pytest.raises(ValueError, match="ci='clt'"):
        corrected_disparity(lab, g, validation=val, ci="clt")
    with pytest.raises(ValueError, match="method"):
        corrected_disparity(lab, g, validation=val, method="mle")


# ----------------------------------------------------------------------------------------------
# covariate-adjusted odds ratio
# ----------------------------------------------------------------------------------------------
def _logistic_population(rng, n, odds_ratio=2.0, clusters=None, cluster_sd=0.0):
    g = rng.choice(["a", "b"], n) if clusters is None else rng.choice(["a", "b"], clusters.max() + 1)[clusters]
    x = rng.normal(size=n) + 0.8 * (g == "b")  # a confounder: b has higher x
    eta = -1.0 + np.log(odds_ratio) * (g == "b") + 0.8 * x
    if clusters is not None:
        eta = eta + rng.normal(0, cluster_sd, clusters.max() + 1)[clusters]
    truth = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(int)
    se, sp = np.where(g == "a", 0.95, 0.65), np.where(g == "a", 0.95, 0.9)
    lab = np.where(truth == 1, rng.uniform(size=n) < se, rng.uniform(size=n) >= sp).astype(int)
    return g, x, truth, lab


@pytest.mark.slow  # 100 logistic fits on 20,000 rows and the sklearn import: ~5 s on the shared machine
def test_ppi_adjusted_odds_ratio_recovers_a_known_odds_ratio():
    rng = np.random.default_rng(6)
    n = 20000
    g, x, truth, lab = _logistic_population(rng, n)
    gold = rng.choice(n, 3000, replace=False)
    rest = np.setdiff1d(np.arange(n), gold)
    val = {"labels": lab[gold], "truth": truth[gold], "groups": g[gold], "covariates": x[gold]}
    r = corrected_disparity(lab[rest], g[rest], validation=val, method="ppi", ci="clt", covariates=x[rest],
                            reference_group="a")
    lo, hi = r.odds_ratio[1][1], r.odds_ratio[2][1]
    assert lo <= 2.0 <= hi and hi / lo < 2.0 and r.odds_ratio[0][0] == 1.0
    assert r.covariate_coef[1][0] <= 0.8 <= r.covariate_coef[2][0]
    boot = corrected_disparity(lab[rest], g[rest], validation=val, method="ppi", covariates=x[rest],
                               reference_group="a", n_boot=50)
    assert abs(np.log(boot.odds_ratio[0][1]) - np.log(r.odds_ratio[0][1])) < 1e-9  # same point estimate
    assert boot.odds_ratio[1][1] <= 2.0 <= boot.odds_ratio[2][1]
    with pytest.warns(EquityWarning, match="UNCORRECTED"):
        naive = corrected_disparity(lab, g, covariates=x, reference_group="a", n_boot=50)
    assert naive.odds_ratio[2][1] < 2.0  # the labeller's misses in b hide most of the odds ratio
    with pytest.raises(ValueError, match="covariates"):
        corrected_disparity(lab[rest], g[rest], validation=(lab[gold], truth[gold], g[gold]), covariates=x[rest])
    # with a perfect labeller the rectifier vanishes and the fit is the ordinary logistic MLE
    exact = corrected_disparity(truth[rest], g[rest], validation={**val, "labels": truth[gold]}, method="ppi",
                                ci="clt", covariates=x[rest], reference_group="a")
    sklearn = pytest.importorskip("sklearn.linear_model")
    fit = sklearn.LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(
        np.c_[g[rest] == "b", x[rest]], truth[rest])
    np.testing.assert_allclose([np.log(exact.odds_ratio[0][1]), exact.covariate_coef[0][0]], fit.coef_[0], rtol=1e-4)


def test_ppi_odds_ratio_clt_small_and_cluster_robust():
    rng = np.random.default_rng(8)
    n = 6000
    cl = np.arange(n) // 20
    g, x, truth, lab = _logistic_population(rng, n, odds_ratio=3.0, clusters=cl, cluster_sd=1.0)
    gold = rng.uniform(size=n) < 0.3
    val = {"labels": lab[gold], "truth": truth[gold], "groups": g[gold], "covariates": x[gold]}
    r = corrected_disparity(lab[~gold], g[~gold], validation=val, method="ppi", ci="clt", covariates=x[~gold],
                            reference_group="a")
    c = corrected_disparity(lab[~gold], g[~gold], validation={**val, "cluster": cl[gold]}, method="ppi", ci="clt",
                            covariates=x[~gold], cluster=cl[~gold], reference_group="a")
    assert r.odds_ratio[0][1] == c.odds_ratio[0][1]  # same fit
    lw = lambda d: np.log(d.odds_ratio[2][1] / d.odds_ratio[1][1])  # noqa: E731
    assert lw(c) > 1.2 * lw(r)  # clinics of 20 rows, each in one group, random effect: wider (1.32x measured)
    assert c.odds_ratio[1][1] < 3.0 < c.odds_ratio[2][1]


# ----------------------------------------------------------------------------------------------
# cluster bootstrap
# ----------------------------------------------------------------------------------------------
def test_cluster_bootstrap_widens_intervals_under_intra_cluster_correlation():
    rng = np.random.default_rng(7)
    n_clusters, size = 60, 80
    cl = np.repeat(np.arange(n_clusters), size)
    g = np.where(cl % 2 == 0, "a", "b")  # clinics: all of a clinic's notes in one group
    prev = 1 / (1 + np.exp(-(-0.8 + rng.normal(0, 1.5, n_clusters)[cl])))  # clinic-level random effect
    truth = (rng.uniform(size=cl.size) < prev).astype(int)
    lab = np.where(truth == 1, rng.uniform(size=cl.size) < 0.85, rng.uniform(size=cl.size) >= 0.9).astype(int)
    gold = rng.uniform(size=cl.size) < 0.3
    val = {"labels": lab[gold], "truth": truth[gold], "groups": g[gold], "cluster": cl[gold]}
    plain = {k: v for k, v in val.items() if k != "cluster"}
    kw = dict(reference_group="a", n_boot=500)
    iid = corrected_disparity(lab[~gold], g[~gold], validation=plain, **kw)
    clus = corrected_disparity(lab[~gold], g[~gold], validation=val, cluster=cl[~gold], **kw)
    assert clus.ci == "cluster bootstrap" and iid.ci == "bootstrap"
    width = lambda r: r.difference[2][1] - r.difference[1][1]  # noqa: E731
    assert width(clus) > 1.7 * width(iid)  # measured 0.292 vs 0.131
    np.testing.assert_allclose(clus.corrected[0], iid.corrected[0])  # same estimate, wider interval
    pi = corrected_disparity(lab[~gold], g[~gold], validation=plain, method="ppi", ci="clt", **kw)
    pc = corrected_disparity(lab[~gold], g[~gold], validation=val, method="ppi", ci="clt", cluster=cl[~gold], **kw)
    assert pc.ci == "cluster-robust CLT" and pi.ci == "CLT" and width(pc) > 1.7 * width(pi)  # 0.259 vs 0.096
    pb = corrected_disparity(lab[~gold], g[~gold], validation=val, method="ppi", cluster=cl[~gold], **kw)
    assert 0.7 < width(pb) / width(pc) < 1.4  # the cluster bootstrap and the cluster-robust CLT agree
