"""Calibration metrics, proximity-bias test and plots (fmkit.calibration; spec §3).

Reference implementations below are deliberately naive float64 Python loops over samples and
bins, written from the definitions, so they share no code path with the vectorised metrics.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fmkit.calibration.bias import ProximityBiasResult, proximity_bias_test
from fmkit.calibration.metrics import _quantile_bins, _quantile_edges, ace, brier, ece, evaluate, mce, piece

HAS_CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
# naive references
# ----------------------------------------------------------------------------------------------
def _count_le(edges, v):
    k = 0
    for e in edges:
        if e <= v:
            k += 1
    return k


def ref_width_bin(c, n_bins):
    # np.digitize on the inner np.linspace edges: [lo, hi), 1.0 in the last bin.
    return _count_le(list(np.linspace(0, 1, n_bins + 1)[1:-1]), c)


def ref_quantile_bin_ids(x, n_bins):
    edges = list(np.percentile(np.asarray(x, dtype=np.float64), np.linspace(0, 100, n_bins + 1))[1:-1])
    return [_count_le(edges, v) for v in x]


def ref_cells_error(cells, conf, corr, reduce="sum", n=None):
    groups = {}
    for k, c, y in zip(cells, conf, corr):
        groups.setdefault(k, []).append((float(c), float(y)))
    n = len(conf) if n is None else n
    out = []
    for members in groups.values():
        acc = sum(y for _, y in members) / len(members)
        cf = sum(c for c, _ in members) / len(members)
        out.append((len(members), abs(acc - cf)))
    if reduce == "sum":
        return sum(m / n * g for m, g in out)
    if reduce == "max":
        return max(g for _, g in out)
    return max(m / n * g for m, g in out)


def ref_ece(conf, corr, n_bins=15):
    return ref_cells_error([ref_width_bin(c, n_bins) for c in conf], conf, corr)


def ref_ace(conf, corr, n_bins=15):
    return ref_cells_error(ref_quantile_bin_ids(conf, n_bins), conf, corr)


def ref_mce(conf, corr, n_bins=15, weighted=False):
    return ref_cells_error([ref_width_bin(c, n_bins) for c in conf], conf, corr, "wmax" if weighted else "max")


def ref_piece_reference(conf, corr, prox, n_conf=15, n_prox=10):
    pb = ref_quantile_bin_ids(prox, n_prox)
    cells = [(p, ref_width_bin(c, n_conf)) for p, c in zip(pb, conf)]
    return ref_cells_error(cells, conf, corr)


def ref_piece_paper(conf, corr, prox, n_conf=15, n_prox=10):
    cb = ref_quantile_bin_ids(conf, n_conf)
    cells = [None] * len(conf)
    for b in set(cb):
        idx = [i for i in range(len(conf)) if cb[i] == b]
        sub = ref_quantile_bin_ids([prox[i] for i in idx], n_prox)
        for i, s in zip(idx, sub):
            cells[i] = (b, s)
    return ref_cells_error(cells, conf, corr)


def ref_brier(probs, labels, multiclass=False, preds=None):
    total = 0.0
    for i, (row, y) in enumerate(zip(probs, labels)):
        if multiclass:
            total += sum((p - (1.0 if c == y else 0.0)) ** 2 for c, p in enumerate(row))
        else:
            pred = int(np.argmax(row)) if preds is None else int(preds[i])
            total += (row[pred] - (1.0 if pred == y else 0.0)) ** 2
    return total / len(labels)


def make_data(seed, n=600, ties=False):
    rng = np.random.default_rng(seed)
    if ties:
        # Saturated / discrete values: stresses zero-width quantile bins.
        conf = rng.choice([0.5, 0.8, 0.9, 1.0, 1.0, 1.0], size=n) * rng.choice([1.0, 1.0, 0.97], size=n)
        prox = rng.choice([0.1, 0.3, 0.3, 0.7], size=n)
    else:
        conf = rng.beta(5, 1.5, size=n)
        prox = rng.random(n)
    corr = (rng.random(n) < np.clip(conf + 0.3 * (prox - 0.5), 0, 1)).astype(np.float64)
    return conf, corr, prox


# ----------------------------------------------------------------------------------------------
# paper Example 4.1 and Theorem 4.2
# ----------------------------------------------------------------------------------------------
def example_41(n_per_group=1000, seed=0):
    rng = np.random.default_rng(seed)
    prox = np.r_[np.full(n_per_group, 0.2), np.full(n_per_group, 0.8)]
    corr = np.r_[np.arange(n_per_group) < n_per_group // 2, np.arange(n_per_group) < 9 * n_per_group // 10]
    conf = np.full(2 * n_per_group, 0.7)
    perm = rng.permutation(2 * n_per_group)
    return conf[perm], corr[perm].astype(np.float64), prox[perm]


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_example_4_1(variant):
    conf, corr, prox = example_41()
    assert ece(conf, corr) == pytest.approx(0.0, abs=1e-12)
    assert ace(conf, corr) == pytest.approx(0.0, abs=1e-12)
    assert piece(conf, corr, prox, variant=variant) == pytest.approx(0.2, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_ece_le_piece(seed, ties):
    conf, corr, prox = make_data(seed, n=2000, ties=ties)
    for n_conf, n_prox in [(15, 10), (7, 3), (1, 5)]:
        assert ece(conf, corr, n_conf) <= piece(conf, corr, prox, n_conf, n_prox) + 1e-12
        assert ace(conf, corr, n_conf) <= piece(conf, corr, prox, n_conf, n_prox, variant="paper") + 1e-12


def test_ece_le_piece_hypothesis():
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.settings(max_examples=60, deadline=None)
    @hyp.given(st.lists(st.tuples(st.floats(0, 1), st.booleans(), st.sampled_from([0.0, 0.25, 0.5, 1.0])),
                        min_size=1, max_size=60),
               st.integers(1, 16), st.integers(1, 12))
    def check(rows, n_conf, n_prox):
        conf, corr, prox = (np.array(c, dtype=np.float64) for c in zip(*rows))
        assert ece(conf, corr, n_conf) <= piece(conf, corr, prox, n_conf, n_prox) + 1e-12
        assert ace(conf, corr, n_conf) <= piece(conf, corr, prox, n_conf, n_prox, variant="paper") + 1e-12

    check()


def test_piece_equals_ece_without_proximity_variation():
    # Theorem 4.2's equality case: one proximity value -> no cancellation to uncover.
    conf, corr, _ = make_data(3)
    prox = np.full(conf.shape, 0.5)
    assert piece(conf, corr, prox) == pytest.approx(ece(conf, corr), abs=1e-12)
    assert piece(conf, corr, prox, variant="paper") == pytest.approx(ace(conf, corr), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# against the naive loops
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_loop_reference(seed, ties):
    conf, corr, prox = make_data(seed, n=500, ties=ties)
    for nb in (1, 4, 15):
        assert ece(conf, corr, nb) == pytest.approx(ref_ece(conf, corr, nb), abs=1e-12)
        assert ace(conf, corr, nb) == pytest.approx(ref_ace(conf, corr, nb), abs=1e-12)
        assert mce(conf, corr, nb) == pytest.approx(ref_mce(conf, corr, nb), abs=1e-12)
        assert mce(conf, corr, nb, weighted=True) == pytest.approx(ref_mce(conf, corr, nb, True), abs=1e-12)
    for nc, npx in ((15, 10), (5, 3)):
        assert piece(conf, corr, prox, nc, npx) == pytest.approx(ref_piece_reference(conf, corr, prox, nc, npx),
                                                                 abs=1e-12)
        assert piece(conf, corr, prox, nc, npx, variant="paper") == pytest.approx(
            ref_piece_paper(conf, corr, prox, nc, npx), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_brier_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(300, 7)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 7, 300)
    preds = rng.integers(0, 7, 300)
    assert brier(probs, labels) == pytest.approx(ref_brier(probs, labels), abs=1e-12)
    assert brier(probs, labels, multiclass=True) == pytest.approx(ref_brier(probs, labels, True), abs=1e-12)
    assert brier(probs, labels, preds=preds) == pytest.approx(ref_brier(probs, labels, preds=preds), abs=1e-12)


def test_brier_known_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.6, 0.0]])
    labels = np.array([0, 0])
    assert brier(probs, labels) == pytest.approx((0.3**2 + 0.6**2) / 2)
    assert brier(probs, labels, multiclass=True) == pytest.approx((0.14 + 0.72) / 2)
    assert brier(probs, labels, preds=np.array([1, 0])) == pytest.approx((0.2**2 + 0.6**2) / 2)


def test_quantile_edges_are_numpy_linear_percentiles():
    rng = np.random.default_rng(0)
    for n in (1, 2, 9, 100, 1001, 4096):
        for x in (rng.random(n), rng.integers(0, 4, n) / 3.0, rng.normal(size=n)):
            for nb in (1, 2, 10, 15, 33):
                got = _quantile_edges(torch.as_tensor(x), nb).numpy()
                np.testing.assert_array_equal(got, np.percentile(x, np.linspace(0, 100, nb + 1)))


# ----------------------------------------------------------------------------------------------
# zero-width quantile bins
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_low", [1, 300, 500, 501, 700])
def test_zero_width_bins_never_split_ties(n_low):
    prox = np.r_[np.full(n_low, 0.1), np.full(1000 - n_low, 0.9)]
    for nb in (2, 10, 15):
        bins = _quantile_bins(torch.as_tensor(prox), nb).numpy()
        assert len(set(bins[prox == 0.1])) == 1 and len(set(bins[prox == 0.9])) == 1
        # Distinct values stay apart unless the tie block reaches the last quantile edge (below).
        assert (bins[prox == 0.1][0] < bins[prox == 0.9][0]) == (n_low - 1 < 999 * (nb - 1) / nb)
    # Hence PIECE sees exactly the two groups: group 1 acc 0.2, group 2 acc 1.0, conf 0.6 for all.
    corr = np.r_[np.arange(n_low) < round(0.2 * n_low), np.ones(1000 - n_low)]
    conf = np.full(1000, 0.6)
    acc_low = corr[:n_low].mean()
    expected = n_low / 1000 * abs(acc_low - 0.6) + (1000 - n_low) / 1000 * 0.4
    for variant in ("reference", "paper"):
        assert piece(conf, corr, prox, variant=variant) == pytest.approx(expected, abs=1e-12)


def test_dominant_tie_block_shares_the_last_bin():
    # Documented consequence of the "inner edges <= value" rule (= sklearn's partition after it
    # drops zero-width bins): when one value holds more than (n-1)/n of the mass, every inner
    # edge equals it, so it and all larger values form the last bin.
    prox = np.r_[np.full(995, 0.1), np.full(5, 0.9)]
    bins = _quantile_bins(torch.as_tensor(prox), 10).numpy()
    assert set(bins) == {9}


def test_ace_ties_share_a_bin():
    # 60% of the confidences are exactly 1.0: several quantile edges coincide at 1.0.
    rng = np.random.default_rng(1)
    conf = np.r_[np.ones(600), rng.uniform(0.3, 0.99, 400)]
    corr = (rng.random(1000) < conf).astype(float)
    bins = _quantile_bins(torch.as_tensor(conf), 15).numpy()
    assert len(set(bins[conf == 1.0])) == 1
    assert ace(conf, corr) == pytest.approx(ref_ace(conf, corr), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# edge cases
# ----------------------------------------------------------------------------------------------
def test_single_sample():
    for f in (ece, ace, mce):
        assert f([0.3], [1]) == pytest.approx(0.7)
    assert mce([0.3], [0], weighted=True) == pytest.approx(0.3)
    for variant in ("reference", "paper"):
        assert piece([0.3], [1], [0.5], variant=variant) == pytest.approx(0.7)
    out = evaluate(np.array([[0.3, 0.7]]), np.array([1]), np.array([0.5]))
    assert out["ece"] == pytest.approx(0.3) and out["accuracy"] == 1.0 and out["brier"] == pytest.approx(0.09)


def test_all_correct():
    conf, corr, prox = np.ones(50), np.ones(50), np.linspace(0, 1, 50)
    for v in (ece(conf, corr), ace(conf, corr), mce(conf, corr), piece(conf, corr, prox),
              piece(conf, corr, prox, variant="paper")):
        assert v == 0.0
    assert ece(np.full(50, 0.8), corr) == pytest.approx(0.2)


def test_confidence_exactly_0_and_1_and_edges():
    # 1.0 shares the last bin [0.9, 1.0] with 0.95; 0.0 shares the first bin with 0.05.
    assert ece([1.0, 0.95], [0, 1], n_bins=10) == pytest.approx(abs(0.5 - 0.975))
    assert ece([0.0, 0.05], [1, 0], n_bins=10) == pytest.approx(abs(0.5 - 0.025))
    # Half-open [lo, hi): 0.5 belongs to the upper of two bins, with 0.75.
    assert ece([0.5, 0.75], [0, 1], n_bins=2) == pytest.approx(0.125)
    assert mce([0.0, 1.0], [0, 1]) == 0.0


def test_empty_bins_are_skipped():
    conf = np.array([0.01, 0.02, 0.03, 0.04])
    corr = np.array([0, 0, 0, 1])
    # Only the first of 15 bins is occupied.
    assert ece(conf, corr) == pytest.approx(abs(0.25 - 0.025))
    assert mce(conf, corr) == pytest.approx(abs(0.25 - 0.025))
    assert mce(conf, corr, weighted=True) == pytest.approx(abs(0.25 - 0.025))


def test_mce_weighted_vs_unweighted():
    conf = np.r_[np.full(9, 0.95), [0.15]]
    corr = np.r_[np.ones(9), [1.0]]
    assert mce(conf, corr) == pytest.approx(0.85)
    assert mce(conf, corr, weighted=True) == pytest.approx(max(0.9 * 0.05, 0.1 * 0.85))


def test_evaluate_scores_the_original_prediction():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(400, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 5, 400)
    prox = rng.random(400)
    preds = np.where(rng.random(400) < 0.3, rng.integers(0, 5, 400), probs.argmax(1))
    out = evaluate(probs, labels, prox, preds=preds)
    assert set(out) == {"ece", "ace", "mce", "brier", "piece", "accuracy"}
    assert all(isinstance(v, float) for v in out.values())
    conf = probs[np.arange(400), preds]
    corr = (preds == labels).astype(float)
    assert out["ece"] == pytest.approx(ref_ece(conf, corr), abs=1e-12)
    assert out["ace"] == pytest.approx(ref_ace(conf, corr), abs=1e-12)
    assert out["mce"] == pytest.approx(ref_mce(conf, corr), abs=1e-12)
    assert out["piece"] == pytest.approx(ref_piece_reference(conf, corr, prox), abs=1e-12)
    assert out["brier"] == pytest.approx(ref_brier(probs, labels, preds=preds), abs=1e-12)
    assert out["accuracy"] == pytest.approx(corr.mean())
    # Default preds = argmax.
    assert evaluate(probs, labels, prox)["accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    tables = evaluate(probs, labels, prox, preds=preds, mce_weighted=True, piece_variant="paper")
    assert tables["mce"] == pytest.approx(ref_mce(conf, corr, weighted=True), abs=1e-12)
    assert tables["piece"] == pytest.approx(ref_piece_paper(conf, corr, prox), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def test_validation_errors():
    c, y, p = np.array([0.2, 0.9]), np.array([0, 1]), np.array([0.1, 0.5])
    with pytest.raises(ValueError, match="correct: length 3 does not match confidences length 2"):
        ece(c, [0, 1, 1])
    with pytest.raises(ValueError, match="proximities: length 1"):
        piece(c, y, [0.3])
    with pytest.raises(ValueError, match=r"confidences: values must lie in \[0, 1\]"):
        ece([0.2, 1.2], y)
    with pytest.raises(ValueError, match=r"confidences: values must lie in \[0, 1\]"):
        ace([-0.1, 0.5], y)
    with pytest.raises(ValueError, match="confidences: contains NaN"):
        mce([0.2, np.nan], y)
    with pytest.raises(ValueError, match="proximities: contains NaN or inf"):
        piece(c, y, [0.1, np.inf])
    with pytest.raises(ValueError, match="confidences: empty"):
        ece([], [])
    with pytest.raises(ValueError, match="n_bins: expected an integer >= 1"):
        ece(c, y, n_bins=0)
    with pytest.raises(ValueError, match="n_bins"):
        ace(c, y, n_bins=2.5)
    with pytest.raises(ValueError, match="n_prox_bins"):
        piece(c, y, p, n_prox_bins=0)
    with pytest.raises(ValueError, match="variant: expected one of"):
        piece(c, y, p, variant="nested")
    with pytest.raises(ValueError, match="correct: expected booleans or 0/1"):
        ece(c, [0, 2])
    with pytest.raises(ValueError, match="confidences: expected a 1-D"):
        ece(np.ones((2, 2)) * 0.5, y)
    with pytest.raises(ValueError, match="probs: expected a 2-D"):
        brier(c, y)
    with pytest.raises(ValueError, match="labels: length 3"):
        brier(np.full((2, 2), 0.5), [0, 1, 1])
    with pytest.raises(ValueError, match="labels: label 5 out of range"):
        brier(np.full((2, 2), 0.5), [0, 5])
    with pytest.raises(ValueError, match="probs: empty"):
        evaluate(np.zeros((0, 3)), [], [])
    with pytest.raises(ValueError, match="preds: length 1"):
        evaluate(np.full((2, 2), 0.5), y, p, preds=[0])


# ----------------------------------------------------------------------------------------------
# torch vs numpy, devices
# ----------------------------------------------------------------------------------------------
def _all_metrics(conf, corr, prox):
    return [ece(conf, corr), ace(conf, corr), mce(conf, corr), mce(conf, corr, weighted=True),
            piece(conf, corr, prox), piece(conf, corr, prox, variant="paper")]


def test_torch_and_numpy_identical():
    conf, corr, prox = make_data(11, n=3000)
    ref = _all_metrics(conf, corr, prox)
    assert _all_metrics(torch.as_tensor(conf), torch.as_tensor(corr).bool(), torch.as_tensor(prox)) == ref
    assert _all_metrics(conf, corr.astype(bool), prox.tolist()) == ref
    probs = np.stack([conf, 1 - conf], 1)
    labels = np.where(corr > 0, 0, 1)
    a = evaluate(probs, labels, prox, preds=np.zeros(3000, dtype=np.int64))
    b = evaluate(torch.as_tensor(probs), torch.as_tensor(labels), torch.as_tensor(prox),
                 preds=torch.zeros(3000, dtype=torch.int64))
    assert a == b


@pytest.mark.gpu
def test_cuda_matches_cpu():
    conf, corr, prox = make_data(12, n=5000, ties=True)
    ref = _all_metrics(conf, corr, prox)
    got = _all_metrics(*(torch.as_tensor(x, device="cuda") for x in (conf, corr, prox)))
    assert got == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# proximity-bias test
# ----------------------------------------------------------------------------------------------
def _bias_data(seed, strength, n=20_000):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 0.95, n)
    prox = rng.random(n)
    corr = rng.random(n) < np.clip(conf + strength * (prox - 0.5), 0, 1)
    return conf, corr, prox


def test_bias_test_detects_planted_bias():
    res = proximity_bias_test(*_bias_data(0, 0.3))
    assert isinstance(res, ProximityBiasResult)
    assert res.p_value < 0.01 and res.statistic > 0
    assert res.bias_index > 0.15  # planted: 0.3 * (0.9 - 0.1) = 0.24 between the extreme fifths
    assert res.bias_index == pytest.approx(res.acc_high - res.acc_low)
    assert res.n_groups_used == 5 and 0 < res.n_pairs <= 20_000
    assert abs(res.conf_high - res.conf_low) < 0.01
    assert "p =" in str(res) and "bias" in str(res)
    with pytest.raises(AttributeError):
        res.p_value = 1.0  # frozen


def test_bias_test_no_bias():
    res = proximity_bias_test(*_bias_data(1, 0.0), seed=3)
    assert abs(res.bias_index) < 0.03
    assert res.p_value > 0.01
    assert 0 <= res.acc_low <= 1 and 0 <= res.acc_high <= 1


def test_bias_test_deterministic_and_vectorised_fast():
    data = _bias_data(2, 0.1, n=200_000)
    a = proximity_bias_test(*data, seed=7)
    b = proximity_bias_test(*(torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in data), seed=7)
    assert a == b


def test_bias_matching_nearest_confidence():
    from fmkit.calibration.bias import _match

    rng = np.random.default_rng(0)
    dst = np.array([0.9, 0.49, 0.1, 0.53, 0.505, 0.505, 0.505])
    src_i, dst_i = _match(rng, np.array([0.5, 0.52, 0.95, 0.2]), dst, 4000, 0.05)
    matched = dict()
    for s_, d_ in zip(src_i, dst_i):
        matched.setdefault(int(s_), set()).add(int(d_))
    # 0.5 -> one of the tied 0.505 (all three used), 0.52 -> 0.53, 0.95 -> 0.9, 0.2 rejected (gap 0.1).
    assert matched == {0: {4, 5, 6}, 1: {3}, 2: {0}}


def test_bias_test_falls_back_to_three_groups():
    rng = np.random.default_rng(4)
    n = 3000
    r = np.arange(n) / n  # proximity rank
    conf = np.where(r < 0.2, 0.2 + 0.5 * r, np.where(r >= 0.8, 0.7 + 0.5 * (r - 0.8), rng.uniform(0.2, 0.8, n)))
    corr = rng.random(n) < conf
    res = proximity_bias_test(conf, corr, r, n_draws=2000)
    assert res.n_groups_used == 3 and res.n_pairs > 0


def test_bias_test_errors():
    prox = np.linspace(0, 1, 100)
    conf = np.where(prox < 0.5, 0.1, 0.9)
    with pytest.raises(ValueError, match="no confidence-matched pairs"):
        proximity_bias_test(conf, np.ones(100), prox)
    with pytest.raises(ValueError, match="n_groups"):
        proximity_bias_test(conf, np.ones(100), prox, n_groups=1)
    with pytest.raises(ValueError, match="proximities: length"):
        proximity_bias_test(conf, np.ones(100), prox[:5])


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------
def test_reliability_diagram(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    conf, corr, prox = make_data(0, n=2000)
    fig = reliability_diagram_(conf, corr)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    fig.savefig(tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 1000
    fig3 = reliability_diagram_(conf, corr, proximities=prox, title="ResNet")
    assert isinstance(fig3, Figure) and len(fig3.axes) == 3
    fig3.savefig(tmp_path / "rel3.png")
    assert (tmp_path / "rel3.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="ax: expected a sequence of three Axes"):
        reliability_diagram_(conf, corr, proximities=prox, ax=fig.axes[0])


def reliability_diagram_(*args, **kwargs):
    from fmkit.calibration.plots import reliability_diagram

    return reliability_diagram(*args, **kwargs)


def test_proximity_bias_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from fmkit.calibration.plots import proximity_bias_plot

    conf, corr, prox = make_data(1, n=2000)
    fig = proximity_bias_plot(conf, corr, prox, labels="uncalibrated")
    assert isinstance(fig, Figure)
    fig = proximity_bias_plot({"before": conf, "after": np.clip(conf - 0.05, 0, 1)}, corr, prox)
    assert len(fig.axes[0].get_legend().get_texts()) == 2
    fig.savefig(tmp_path / "bias.png")
    assert (tmp_path / "bias.png").stat().st_size > 1000
    # Only two distinct proximities: zero-width bins show as gaps, not crashes.
    fig = proximity_bias_plot(conf, corr, np.where(prox < 0.3, 0.2, 0.8))
    fig.savefig(tmp_path / "bias2.png")
    with pytest.raises(ValueError, match="labels: not used"):
        proximity_bias_plot({"a": conf}, corr, prox, labels="x")
