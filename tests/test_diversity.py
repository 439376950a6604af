"""fmkit.diversity: sampler, sweep cache, diversity-law fit, prediction, plot, batched metrics
(spec augment_diversity_equity.md §2.3 and issue 18)."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

from fmkit.diversity import (
    ClassSubsetSampler,
    DegenerateFitWarning,
    DiversityDriftWarning,
    class_diversity,
    diversity_sweep,
    fit_diversity_law,
    fit_ratio_quadratic,
    load_results,
    plot_diversity_fit,
    predict_optimal_classes,
    vendi_score,
)


def synthetic_results(a=0.5, b=0.5, budgets=(2000, 8000), C0=0.1, A=2.0, B=0.5, noise=0.002, seeds=(0, 1),
                      K_grid=None, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for N in budgets:
        grid = K_grid or np.unique(np.geomspace(4, N // 4, 8).round().astype(int))
        for K in grid:
            n = N // int(K)
            for s in seeds:
                err = C0 + A * K ** -a + B * n ** -b + noise * rng.standard_normal()
                out.append({"N": N, "K": int(K), "n": int(n), "seed": s, "error": float(err)})
    return out


def pool_labels(classes=30, size=20, short=()):
    labels = np.repeat(np.arange(classes), size)
    for c in short:  # drop all but 3 examples of class c
        labels = np.concatenate([labels[labels != c], np.full(3, c)])
    return labels


# -- 1. sampler -------------------------------------------------------------------------------------


def test_sampler_draws_K_distinct_classes_of_n_without_duplicates():
    labels = pool_labels()
    s = ClassSubsetSampler(labels, K=7, n=5, seed=3)
    assert len(s.indices) == 35 == s.N == len(s)
    assert len(set(s.indices.tolist())) == 35
    chosen, counts = np.unique(labels[s.indices], return_counts=True)
    assert len(chosen) == 7 and (counts == 5).all()
    assert np.array_equal(s.indices, ClassSubsetSampler(labels, 7, 5, seed=3).indices)
    assert not np.array_equal(s.indices, ClassSubsetSampler(labels, 7, 5, seed=4).indices)
    assert list(iter(s)) == s.indices.tolist()


def test_sampler_short_classes_raise_or_are_skipped():
    labels = pool_labels(short=(2, 5))
    with pytest.raises(ValueError, match="n=5 is larger than the smallest class"):
        ClassSubsetSampler(labels, K=3, n=5)
    s = ClassSubsetSampler(labels, K=28, n=5, on_short="skip")
    assert set(s.short_classes.tolist()) == {2, 5}
    assert not {2, 5} & set(labels[s.indices].tolist())
    with pytest.raises(ValueError, match="K=29 is more than the 28 available classes with at least n"):
        ClassSubsetSampler(labels, K=29, n=5, on_short="skip")


def test_sampler_bad_input():
    with pytest.raises(ValueError, match="K=31 is more than the 30 available classes"):
        ClassSubsetSampler(pool_labels(), K=31, n=2)
    with pytest.raises(TypeError, match="labels: expected integer class labels, got float"):
        ClassSubsetSampler(pool_labels().astype(float), K=2, n=2)
    with pytest.raises(TypeError, match="labels: expected integer"):
        ClassSubsetSampler(["a", "b"], K=1, n=1)
    with pytest.raises(ValueError, match="on_short"):
        ClassSubsetSampler(pool_labels(), K=2, n=2, on_short="drop")
    with pytest.raises(ValueError, match="K: expected an integer >= 1"):
        ClassSubsetSampler(pool_labels(), K=0, n=2)


# -- 2-3. fit recovery, invariance, drift -------------------------------------------------------------


def test_fit_recovers_ratio_half_and_free():
    results = synthetic_results()
    half = fit_diversity_law(results, exponents="half", n_boot=0)
    assert half.A / half.B == pytest.approx(4.0, rel=0.05)
    assert half.r_star == pytest.approx(16.0, rel=0.1)
    free = fit_diversity_law(results, exponents="free", n_boot=0)
    assert free.a == pytest.approx(0.5, abs=0.03) and free.b == pytest.approx(0.5, abs=0.05)
    assert free.r_star == pytest.approx(16.0, rel=0.15)
    assert half.drift["a_minus_b"] == pytest.approx(free.a - free.b)  # the half fit still reports the drift
    assert free.holdout["N"] == 8000 and free.holdout["mae"] < 0.01
    assert "drift a - b" in free.summary() and "hold-out" in free.summary()


def test_huber_fit_ignores_an_outlier_cell():
    results = synthetic_results(noise=0.0005)
    results[5]["error"] += 0.3
    plain = fit_diversity_law(results, exponents="half", n_boot=0, holdout=False)
    robust = fit_diversity_law(results, exponents="half", n_boot=0, loss="huber", holdout=False)
    assert abs(robust.r_star - 16) < abs(plain.r_star - 16)
    assert robust.r_star == pytest.approx(16.0, rel=0.05)


def test_ratio_is_invariant_in_N_when_exponents_are_equal():
    # Grids symmetric in log(K/n) around log r* = log 16 at each budget.
    grids = {N: [int(round(math.sqrt(16 * N) * f)) for f in (1 / 8, 1 / 4, 1 / 2, 1, 2, 4)] for N in (4096, 65536)}
    results = []
    for N, grid in grids.items():
        results += synthetic_results(budgets=(N,), K_grid=grid, noise=0.0, seeds=(0,))
    quad = fit_ratio_quadratic(results)
    r = [p["r_star"] for p in quad.per_N]
    assert r[0] == pytest.approx(r[1], rel=0.1) and r[0] == pytest.approx(16, rel=0.35)
    fit = fit_diversity_law(results, exponents="free", n_boot=0)
    assert fit.r_star_at(4096) == pytest.approx(fit.r_star_at(65536), rel=0.05)


def test_unequal_exponents_are_detected_and_warned():
    results = synthetic_results(a=0.3, b=0.6)
    with pytest.warns(DiversityDriftWarning, match="excludes 0"):
        fit = fit_diversity_law(results, n_boot=40)
    lo, hi = fit.drift["ci"]
    assert fit.drift["significant"] and hi < 0
    assert fit.r_star_at(100_000) > 2 * fit.r_star_at(2000)  # b > a: r* grows with N
    with pytest.warns(DiversityDriftWarning):
        predict_optimal_classes(fit, 100_000, K_max=5000)


# -- 4. prediction -------------------------------------------------------------------------------------


def test_prediction_closed_form_cap_and_rounding():
    fit = fit_diversity_law(synthetic_results(), exponents="half", n_boot=20)
    N = 50_000
    exact = math.sqrt((fit.A / fit.B) ** 2 * N)
    p = predict_optimal_classes(fit, N)
    assert p.K_star_exact == pytest.approx(exact)
    assert p.K_star in (math.floor(exact), math.ceil(exact))
    other = math.ceil(exact) if p.K_star == math.floor(exact) else math.floor(exact)
    assert fit.predict(p.K_star, N / p.K_star) <= fit.predict(other, N / other)
    assert p.n_star == N // p.K_star and not p.capped
    assert p.K_ci[0] <= p.K_star <= p.K_ci[1]
    capped = predict_optimal_classes(fit, N, K_max=100)
    assert capped.K_star == 100 and capped.n_star == 500 and capped.capped
    assert capped.predicted_error == pytest.approx(capped.default_error)


def test_degenerate_fit_is_clipped_with_a_warning():
    results = synthetic_results(A=0.0, noise=0.0)  # error flat in K: more classes never help
    fit = fit_diversity_law(results, exponents="half", n_boot=0, holdout=False)
    with pytest.warns(DegenerateFitWarning):
        p = predict_optimal_classes(fit, 10_000, K_max=300)
    assert p.K_star == 1 and p.n_star == 10_000


def test_fit_and_prediction_bad_input():
    with pytest.raises(ValueError, match="exponents"):
        fit_diversity_law(synthetic_results(), exponents="quarter")
    with pytest.raises(ValueError, match="loss"):
        fit_diversity_law(synthetic_results(), loss="l1")
    with pytest.raises(ValueError, match="cells"):
        fit_diversity_law(synthetic_results()[:4], n_boot=0)
    with pytest.raises(TypeError, match="results"):
        fit_diversity_law({"K": 1})
    with pytest.raises(ValueError, match="task"):
        fit_diversity_law(synthetic_results(), task="cifar")
    fit = fit_diversity_law(synthetic_results(), exponents="half", n_boot=0, holdout=False)
    with pytest.raises(ValueError, match="N_target"):
        predict_optimal_classes(fit, 0)
    with pytest.raises(ValueError, match="K_max"):
        predict_optimal_classes(fit, 1000, K_max=0)


def test_multitask_errors_average_or_select():
    results = synthetic_results()
    for cell in results:
        cell["error"] = {"x": cell["error"], "y": cell["error"] + 0.1}
    mean = fit_diversity_law(results, exponents="half", n_boot=0, holdout=False)
    y = fit_diversity_law(results, exponents="half", n_boot=0, holdout=False, task="y")
    assert y.C0 == pytest.approx(mean.C0 + 0.05, abs=1e-3)
    assert y.r_star == pytest.approx(mean.r_star, rel=1e-3)


# -- 5. sweep, cache, resume ---------------------------------------------------------------------------


def _fake_fn(calls):
    def fn(indices, seed):
        calls.append(seed)
        return float(len(indices)) / 1000 + (seed % 97) / 1e6
    return fn


def test_sweep_resumes_without_rerunning_and_survives_a_torn_line(tmp_path):
    labels = pool_labels(classes=40, size=30)
    cache = tmp_path / "cells.jsonl"
    calls = []
    first = diversity_sweep(labels, 120, _fake_fn(calls), K_grid=[4, 8, 20], seeds=(0, 1), cache_path=str(cache),
                            progress=False)
    assert len(first) == len(calls) == 6
    assert {(c["K"], c["n"]) for c in first} == {(4, 30), (8, 15), (20, 6)}
    again = []
    assert diversity_sweep(labels, 120, _fake_fn(again), K_grid=[4, 8, 20], seeds=(0, 1), cache_path=str(cache),
                           progress=False) == first
    assert again == []
    # A crash while writing the last cell leaves half a line: the finished cells survive, that cell re-runs.
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    redo = []
    with pytest.warns(RuntimeWarning, match="partly written"):
        resumed = diversity_sweep(labels, 120, _fake_fn(redo), K_grid=[4, 8, 20], seeds=(0, 1),
                                  cache_path=str(cache), progress=False)
    assert len(redo) == 1 and resumed == first
    assert [json.loads(line) for line in cache.read_text().splitlines()][-1] == first[-1]


def test_sweep_parallel_cells_match_serial_and_record_seeds():
    labels = pool_labels(classes=40, size=30)

    def fn(indices, seed):
        return float(np.sort(indices)[:5].sum() % 1000) / 1000 + seed % 7

    serial = diversity_sweep(labels, 120, fn, K_grid=[4, 8, 20], seeds=(0, 1, 2), progress=False)
    parallel = diversity_sweep(labels, 120, fn, K_grid=[4, 8, 20], seeds=(0, 1, 2), n_jobs=2, progress=False)
    strip = [{k: v for k, v in c.items() if k != "seconds"} for c in serial]
    assert strip == [{k: v for k, v in c.items() if k != "seconds"} for c in parallel]
    assert len({c["cell_seed"] for c in serial}) == 9


def test_sweep_bad_input(tmp_path):
    labels = pool_labels(classes=10, size=10)
    fn = _fake_fn([])
    with pytest.raises(ValueError, match="n=20 is larger than the smallest class"):
        diversity_sweep(labels, 40, fn, K_grid=[2], seeds=(0,), progress=False)
    with pytest.raises(ValueError, match="K=20 is more than the 10 available classes"):
        diversity_sweep(labels, 40, fn, K_grid=[20], seeds=(0,), progress=False)
    with pytest.raises(TypeError, match="labels: expected integer"):
        diversity_sweep(labels + 0.5, 40, fn, progress=False)
    cache = tmp_path / "c.jsonl"
    diversity_sweep(labels, 40, fn, K_grid=[4, 8], seeds=(0,), cache_path=str(cache), progress=False)
    with pytest.raises(ValueError, match=r"holds results for N=\[40\], but this sweep is for N=\[60\]"):
        diversity_sweep(labels, 60, fn, K_grid=[6, 10], seeds=(0,), cache_path=str(cache), progress=False)
    with pytest.raises(TypeError, match="fn returned"):
        diversity_sweep(labels, 40, lambda i, s: "bad", K_grid=[4], seeds=(0,), progress=False)
    with pytest.raises(ValueError, match="finite"):
        diversity_sweep(labels, 40, lambda i, s: float("nan"), K_grid=[4], seeds=(0,), progress=False)
    cache.write_text('{"N": 40}\n{"N": 40, "K": 4, "n": 10, "seed": 0, "error": 0.1}\n')
    with pytest.raises(ValueError, match="line 1 is not a sweep cell"):
        load_results(str(cache))


def test_default_grid_stays_within_the_pool():
    labels = pool_labels(classes=50, size=40)
    cells = diversity_sweep(labels, 400, _fake_fn([]), seeds=(0,), progress=False)
    Ks = [c["K"] for c in cells]
    assert min(Ks) >= 10 and max(Ks) <= 50 and len(Ks) >= 4  # n = 400 // K <= 40 examples per class


# -- 6. plot --------------------------------------------------------------------------------------------


@pytest.mark.slow  # matplotlib's first import and draw: seconds on a busy machine
def test_plot_has_two_panels():
    import matplotlib

    matplotlib.use("Agg")
    results = synthetic_results()
    fig = plot_diversity_fit(fit_diversity_law(results, n_boot=0), results, N_target=100_000, K_max=2000)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_xlabel() == "log K (classes)" and fig.axes[1].get_xlabel() == "log(K/n)"


# -- batched diversity metrics --------------------------------------------------------------------------


def _direct_vendi(x, q=1.0):
    """Per-class numpy: eigenvalues of the normalised similarity matrix K / n."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = np.linalg.eigvalsh(x @ x.T / len(x))
    w = w[w > 1e-12]  # round-off around the zero eigenvalues of duplicates and of n > d
    if q == 1:
        return math.exp(-(w * np.log(w)).sum())
    if q == "inf":
        return 1 / w.max()
    return math.exp(math.log((w ** q).sum()) / (1 - q))


@pytest.fixture(params=["compiled", "batched"])
def scan_path(request, monkeypatch):
    """Runs a test through both routes of class_diversity: fmkit.ops.class_spectrum (CPU, C++)
    and the padded batched eigvalsh (what CUDA tensors and few classes use)."""
    from fmkit.diversity import metrics
    from fmkit.ops import _backend

    if request.param == "compiled" and "cpu" not in _backend.compiled_backends():
        pytest.skip("fmkit._C is not built")
    monkeypatch.setattr(metrics, "_MIN_CLASSES_COMPILED", 1 if request.param == "compiled" else 10**9)
    return request.param


@pytest.mark.parametrize("q", [1.0, 2.0, 0.5, "inf"])
def test_class_diversity_matches_direct_per_class_computation(q, scan_path):
    rng = np.random.default_rng(1)
    d = 12
    sizes = [1, 2, 5, 9, 11, 30, 4]  # size 1, classes larger than d, ragged sizes
    x = np.concatenate([rng.normal(size=(s, d)) + rng.normal(size=d) for s in sizes])
    labels = np.repeat(np.array([7, 3, 11, 0, 5, 2, 9]), sizes)
    x[2] = x[1]  # duplicate points in class 3
    x[20:23] = x[19]
    perm = rng.permutation(len(x))  # shuffled rows: the segmented pass must not rely on order
    out = class_diversity(torch.from_numpy(x[perm]).float(), labels[perm], q=q)
    assert out.classes.tolist() == sorted(set(labels.tolist()))
    for i, c in enumerate(out.classes.tolist()):
        rows = x[labels == c].astype(np.float32).astype(np.float64)
        assert out.counts[i] == len(rows)
        assert float(out.intra[i]) == pytest.approx(_direct_vendi(rows, q), rel=1e-9)
    assert float(out.intra[out.classes.tolist().index(7)]) == pytest.approx(1.0)
    xf = x.astype(np.float32).astype(np.float64)
    unit = xf / np.linalg.norm(xf, axis=1, keepdims=True)
    means = np.stack([unit[labels == c].mean(0) for c in out.classes.tolist()])
    assert out.inter == pytest.approx(_direct_vendi(means, q), rel=1e-9)


@pytest.mark.parametrize("C,d", [(300, 140), (150, 400)])  # d x d and C x C sides, both >= 128
def test_inter_class_score_of_many_means_goes_through_scipy_and_matches(C, d, monkeypatch):
    """One large CPU eigenproblem (the inter-class score) uses scipy's LAPACK (_eigvalsh); a
    mutation there (a dropped eigenvalue) must show against the direct numpy computation."""
    from fmkit.diversity import metrics

    calls = []
    real = metrics._eigvalsh
    monkeypatch.setattr(metrics, "_eigvalsh", lambda g: calls.append(tuple(g.shape)) or real(g))
    rng = np.random.default_rng(C)
    labels = np.repeat(np.arange(C), 3)
    x = rng.normal(size=(len(labels), d)) + rng.normal(size=(C, d))[labels]
    out = class_diversity(torch.from_numpy(x), labels)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    means = np.stack([unit[labels == c].mean(0) for c in range(C)])
    assert (1, min(C, d), min(C, d)) in calls
    assert out.inter == pytest.approx(_direct_vendi(means), rel=1e-9)


def test_fisher_ratio_and_single_set_score(scan_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 5))
    y = np.repeat(np.arange(4), 15)
    x += 3 * y[:, None]
    out = class_diversity(x, y)
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    between = sum(15 * ((m - x.mean(0)) ** 2).sum() for m in means)
    within = sum(((x[y == c] - means[c]) ** 2).sum() for c in range(4))
    assert out.fisher == pytest.approx(between / within, rel=1e-10)
    assert vendi_score(x[:20]) == pytest.approx(_direct_vendi(x[:20]), rel=1e-10)
    assert class_diversity(np.eye(3), [0, 1, 2]).fisher == math.inf  # single points, distinct classes


def test_class_diversity_bad_input(scan_path):
    x = torch.randn(6, 3)
    with pytest.raises(TypeError, match="labels: expected integer class labels, got torch.float32"):
        class_diversity(x, torch.zeros(6))
    with pytest.raises(ValueError, match="labels: has 5 entries but features has 6 rows"):
        class_diversity(x, [0] * 5)
    with pytest.raises(ValueError, match=r"features: expected a non-empty 2-D array"):
        class_diversity(torch.randn(6), [0] * 6)
    with pytest.raises(TypeError, match="features: expected floating-point"):
        class_diversity(torch.ones(6, 3, dtype=torch.long), [0] * 6)
    bad = x.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="row 4 contains NaN"):
        class_diversity(bad, [0, 0, 1, 1, 2, 2])
    zero = x.clone()
    zero[3] = 0
    with pytest.raises(ValueError, match="row 3 is all zeros"):
        class_diversity(zero, [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="q: expected a number > 0"):
        class_diversity(x, [0] * 6, q=0)


def test_compiled_and_batched_routes_agree_and_a_failed_class_is_redone(monkeypatch):
    from fmkit.diversity import metrics
    from fmkit.ops import _backend

    if "cpu" not in _backend.compiled_backends():
        pytest.skip("fmkit._C is not built")
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(700, 24))).float()
    y = torch.from_numpy(rng.integers(0, 40, 700))
    compiled = class_diversity(x, y, gram="float64")
    rounded = class_diversity(x, y)  # "auto": the int8 Gram route where this CPU has AMX
    monkeypatch.setattr(metrics, "_MIN_CLASSES_COMPILED", 10**9)
    batched = class_diversity(x, y)
    torch.testing.assert_close(compiled.intra, batched.intra, atol=0, rtol=1e-12)
    torch.testing.assert_close(rounded.intra, batched.intra, atol=0, rtol=1e-8)
    assert compiled.fisher == pytest.approx(batched.fisher, rel=1e-12)
    assert compiled.inter == pytest.approx(batched.inter, rel=1e-12)
    # A class whose eigenvalue iteration did not converge (NaN row) is solved again by LAPACK.
    monkeypatch.setattr(metrics, "_MIN_CLASSES_COMPILED", 1)
    real = metrics.class_spectrum

    def one_failed(*args, **kwargs):
        out = real(*args, **kwargs)
        if len(out.eigenvalues) > 5:  # not the single inter-class matrix
            out.eigenvalues[5] = float("nan")
        return out

    monkeypatch.setattr(metrics, "class_spectrum", one_failed)
    redone = class_diversity(x, y, gram="float64")
    torch.testing.assert_close(redone.intra, batched.intra, atol=0, rtol=1e-12)


def test_int8_gram_route_on_near_duplicate_rows_stays_within_1e6():
    """Near-duplicate rows are where a float32 Gram failed (5e-7 at q = 1, 2e-4 at q = 0.5): small
    eigenvalues whose q < 1 powers magnify Gram rounding. The int8 route rounds the rows, not the
    products, so its Gram matrix stays a Gram matrix (of rows moved by <= 2^-31 of their largest
    entry); measured worst here 5.7e-8 at q = 0.5."""
    from fmkit.ops.class_spectrum import int8_gram_available

    if not int8_gram_available():
        pytest.skip("no AMX-INT8 tiles here")
    g = torch.Generator().manual_seed(0)
    C, n, d = 20, 40, 96
    base = torch.randn(C, 5, d, generator=g)
    y = torch.arange(C).repeat_interleave(n)
    for eps in (1e-3, 1e-5, 1e-6):
        x = base[:, torch.randint(0, 5, (n,), generator=g)] * (1 + eps * torch.randn(C, n, d, generator=g))
        x = x.reshape(C * n, d).float()
        for q in (0.5, 1.0, 2.0, "inf"):
            a = class_diversity(x, y, q=q, gram="int8").intra
            b = class_diversity(x, y, q=q, gram="float64").intra
            assert float(((a - b).abs() / b).max()) < 1e-6, (eps, q)
