"""The benchmark harness's columns (p20-p80 spread, error vs float64, setting, commit), its CUDA
timing loop (with fake events on a CPU), the float64 references and error columns of the
contrastive, pgd_step, calibration and kmeans benches (each also shown to flag a wrong
contender), and the flamingo bench's per-image SDPA anchor."""
import importlib.util
import json
import math
import subprocess
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fmkit.bench as bench
from fmkit.bench import calibration as calibration_bench
from fmkit.bench import contrastive as contrastive_bench
from fmkit.bench import kmeans as kmeans_bench
from fmkit.bench import pgd_step as pgd_bench
from fmkit.bench.flamingo import LATENTS_PER_MEDIA, _image_runs, sdpa_per_image
from fmkit.reference.media_cross_attention import media_cross_attention_reference


def test_percentile_interpolates_and_spread_text_reports_p20_p80():
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert bench.percentile(times, 0.5) == 3.5
    assert bench.percentile(times, 0.2) == pytest.approx(2.0)
    assert bench.percentile(times, 0.8) == pytest.approx(5.0)
    assert math.isnan(bench.percentile([], 0.5))
    assert bench.spread_text(times) == "-43/+43% (n=6)"
    assert bench.spread_text([1.0]) == "1 run"


def test_rel_err_and_accuracy_flag_a_wrong_contender():
    ref = torch.randn(100, dtype=torch.float64)
    good, bad = ref.float(), ref.float() + 0.1
    contenders = [("good", lambda: good, False), ("bad", lambda: bad, True),
                  ("missing", bench.unavailable("not installed"), True), ("broken", lambda: 1 / 0, True)]
    acc = bench.accuracy(contenders, lambda fn: fn(), ref)
    assert acc["good"] < 1e-7 and acc["bad"] > 1e-2
    assert "missing" not in acc and math.isnan(acc["broken"])
    assert bench.rel_err((good, bad), (ref, ref)) == acc["bad"]  # tuples: the worst pair


def test_run_writes_the_new_columns(tmp_path):
    ref = torch.ones(4, dtype=torch.float64)
    case = {"shape": "tiny", "flops": 1.0, "repeats": 3,
            "contenders": [("fmkit", lambda: ref.float(), False), ("anchor", lambda: ref.float() * 2, True)],
            "accuracy": {"fmkit": 0.0, "anchor": 1.0}, "settings": {"anchor": "its best setting"}}

    class Module:
        @staticmethod
        def cases(device, quick):
            return [case]

    bench.REGISTRY["_tiny"] = Module
    try:
        rows = bench.run(["_tiny"], True, torch.device("cpu"), json_path=str(tmp_path / "r.json"), progress=False)
    finally:
        del bench.REGISTRY["_tiny"]
    import json

    data = json.load(open(tmp_path / "r.json"))
    assert "commit" in data["meta"]
    row = {r["contender"]: r for r in data["rows"]}
    assert row["anchor"]["setting"] == "its best setting" and row["anchor"]["rel_err_fp64"] == 1.0
    assert len(row["fmkit"]["times_ms"]) == 3
    assert row["fmkit"]["p20_ms"] <= row["fmkit"]["median_ms"] <= row["fmkit"]["p80_ms"]
    table = "\n".join(bench.format_table(rows))
    assert "rel err vs fp64" in table and "its best setting" in table and "1.0e+00" in table


def test_per_image_sdpa_anchor_equals_the_reference():
    """Tokens before the first image get 0, image 2 has no tokens, runs of any length."""
    g = torch.Generator().manual_seed(0)
    B, H, T, D, images = 2, 3, 11, 8, 4
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, images * LATENTS_PER_MEDIA, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, images * LATENTS_PER_MEDIA, D, generator=g, dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 1, 1, 3, 3, 4, 4, 4, 4]).expand(B, T)
    runs = _image_runs(index)
    assert runs == [(0, 0, 2), (1, 2, 5), (3, 5, 7), (4, 7, 11)]
    out = sdpa_per_image(q, k, v, runs)
    ref = media_cross_attention_reference(q, k, v, index, LATENTS_PER_MEDIA, D**-0.5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert (out[:, :, :2] == 0).all()
    with pytest.raises(ValueError, match="media_index"):
        _image_runs(torch.tensor([[0, 1], [1, 1]]))


# ---- harness --------------------------------------------------------------------------------

CPU = torch.device("cpu")
HAS_FAISS = importlib.util.find_spec("faiss") is not None


class _FakeClock:
    """Stands in for the GPU: a call advances the clock, events read it."""

    now = 0.0


class _FakeEvent:
    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self, stream=None):
        self.t = _FakeClock.now

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return other.t - self.t


@pytest.mark.parametrize("call_ms,calls", [(1.0, 50), (100.0, 15), (300.0, 10), (400.0, 4), (3000.0, 3)])
def test_cuda_timing_loop_takes_10_calls_within_the_budget_and_3_for_slow_calls(monkeypatch, call_ms, calls):
    """CUDA branch of timed_all with fake events: >= 10 calls when they fit in twice the 1.5 s
    budget, then up to the budget (at most 50); a slow call gets 3, not 10."""
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    made = []

    def fn():
        made.append(1)
        _FakeClock.now += call_ms

    times = bench.timed_all(fn, torch.device("cuda"), 3)
    assert len(times) == calls and len(made) == calls + 1  # one warm-up call, not timed
    assert times == pytest.approx([call_ms] * calls)


def _row(name, **kw):
    row = {"op": "op", "shape": "tiny", "contender": name, "anchor": False, "median_ms": 2.0,
           "speedup_vs_best_anchor": 1.0, "times_ms": [1.0, 2.0, 2.0, 3.0], "gflops": 1.0, "pct_peak": 1.0,
           "peak_extra_mib": None, "exact": None, "rel_err_fp64": None, "setting": None,
           "error": None, "unavailable": None}
    row.update(kw)
    return row


def test_table_has_the_error_and_setting_columns_right_aligned():
    rows = [_row("fmkit", rel_err_fp64=3.1e-4, setting="backend=auto (cpu)"),
            _row("anchor that failed its error check", rel_err_fp64=float("nan"), setting="TF32 GEMMs"),
            _row("no error column", exact=True),
            _row("missing", unavailable="faiss not installed", median_ms=float("nan"))]
    lines = bench.format_table(rows)
    header = lines[0]
    for column in ("p20-p80", "rel err vs fp64", "setting", "exact"):
        assert column in header
    end = header.index("rel err vs fp64") + len("rel err vs fp64")
    fmkit, failed, no_err, missing = lines[2:]
    assert fmkit[end - len("3.1e-04"):end] == "3.1e-04" and fmkit.endswith("backend=auto (cpu)")
    assert failed[end - 1] == "-" and failed.endswith("TF32 GEMMs")
    assert no_err[end - 1:end].strip() == "" and "yes" in no_err  # no error: an empty cell (lines are rstripped)
    assert "faiss not installed" in missing
    assert "-20/+20% (n=4)" in fmkit  # p20 = 1.6, p80 = 2.4 around the median 2.0
    assert bench.table_cells(_row("old json row without the new keys"))[-2:] == ["", ""]


def test_git_commit_names_the_checkout_and_is_none_outside_git(monkeypatch):
    root = Path(bench.__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    commit = bench.git_commit()
    assert commit in (head.stdout.strip(), head.stdout.strip() + "-dirty")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 128, "", "not a repo"))
    assert bench.git_commit() is None


def test_json_rows_and_meta_carry_the_new_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "measured_peak", lambda device, dtype=None: 100.0)
    case = {"shape": "tiny", "flops": 1.0, "repeats": 5,
            "contenders": [("fmkit", lambda: None, False), ("anchor", lambda: None, True),
                           ("missing", bench.unavailable("not installed"), True)],
            "accuracy": {"fmkit": 1e-7, "anchor": float("nan")}, "settings": {"anchor": "strongest"}}
    monkeypatch.setitem(bench.REGISTRY, "_tiny", types.SimpleNamespace(cases=lambda device, quick: [case]))
    bench.run(["_tiny"], True, CPU, json_path=str(tmp_path / "r.json"), progress=False)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["meta"]["commit"] == bench.git_commit()
    rows = {r["contender"]: r for r in data["rows"]}
    for key in ("p20_ms", "median_ms", "p80_ms", "times_ms", "rel_err_fp64", "setting"):
        assert all(key in r for r in rows.values()), key
    assert len(rows["fmkit"]["times_ms"]) == 5 and rows["fmkit"]["rel_err_fp64"] == 1e-7
    assert math.isnan(rows["anchor"]["rel_err_fp64"]) and rows["anchor"]["setting"] == "strongest"
    assert rows["missing"]["rel_err_fp64"] is None and rows["missing"]["times_ms"] == []


def test_cases_are_built_one_at_a_time(monkeypatch):
    """A case (its data and float64 reference) is built only when the run reaches it."""
    for module, shapes in ((contrastive_bench, [(16, 4, torch.float32, "softmax")] * 3),
                           (pgd_bench, [(1, 1, 2, 2, torch.float32, "linf")] * 3),
                           (calibration_bench, [(30, 20, 4, 3)] * 3), (kmeans_bench, [(50, 4, 3, 1)] * 3)):
        built = []
        monkeypatch.setattr(module, "_case", lambda *a, built=built: built.append(a) or {"shape": len(built)})
        cases = module.cases(CPU, True, shapes=shapes)
        assert len(cases) == 3 and built == []
        assert [c["shape"] for c in cases] == [1, 2, 3]


# ---- contrastive ----------------------------------------------------------------------------

def _embeddings(n, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype).requires_grad_()
    return x, y


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_blocked_float64_reference_equals_naive_clip_loss_in_float64(kind):
    x, y = _embeddings(100, 16)
    s = torch.tensor(14.3 if kind == "softmax" else 10.0)
    b = torch.tensor(-10.0) if kind == "sigmoid" else None
    loss, dx, dy = contrastive_bench.naive_reference_fp64(x, y, s, b, kind)
    rows = torch.tensor([0, 7, 50, 99])
    for sel, block in ((None, 333), (rows, 333), (None, 1)):  # several row blocks; one row per block
        got_loss, got_dx, got_dy = contrastive_bench.reference_fp64(x, y, s, b, kind, sel, block=block)
        want_dx, want_dy = (dx, dy) if sel is None else (dx[sel], dy[sel])
        torch.testing.assert_close(got_loss, loss, rtol=1e-13, atol=0)
        torch.testing.assert_close(got_dx, want_dx, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(got_dy, want_dy, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_contrastive_error_column_is_small_for_fp32_and_flags_wrong_contenders(kind):
    (case,) = contrastive_bench.cases(CPU, True, shapes=[(128, 32, torch.float32, kind)])
    acc = case["accuracy"]
    assert set(acc) == {name for name, _, _ in case["contenders"]} and len(acc) == 2
    assert all(err < 1e-5 for err in acc.values()), acc
    assert "fp32 accumulation" in case["settings"][f"fmkit fused ({kind})"]

    from fmkit.ops import clip_loss
    from fmkit.reference.clip_loss import naive_clip_loss

    x, y = _embeddings(128, 32, seed=1)
    s = torch.tensor(14.3 if kind == "softmax" else 10.0, requires_grad=True)
    b = torch.tensor(-10.0, requires_grad=True) if kind == "sigmoid" else None
    step = contrastive_bench._step
    contenders = [
        ("fused", step(lambda: clip_loss(x, y, s, logit_bias=b, kind=kind), x, y, s, b), False),
        ("scale off by 1%", step(lambda: naive_clip_loss(x, y, s * 1.01, b, kind), x, y, s, b), True),
        # the right loss value, but no gradient reaches y: only the gradient check can see it
        ("y detached", step(lambda: naive_clip_loss(x, y.detach(), s, b, kind), x, y, s, b), True),
    ]
    y.grad = torch.zeros_like(y)
    acc = contrastive_bench._accuracy(contenders, x, y, s, b, kind, None)
    assert acc["fused"] < 1e-5 and acc["scale off by 1%"] > 1e-3 and acc["y detached"] >= 0.99


def test_contrastive_large_batches_check_gradients_on_a_row_subset(monkeypatch):
    """Above FULL_GRAD_MAX_N the blocked reference runs, with the gradients on GRAD_ROWS rows; the
    setting column says so."""
    monkeypatch.setattr(contrastive_bench, "FULL_GRAD_MAX_N", 64)
    monkeypatch.setattr(contrastive_bench, "GRAD_ROWS", 16)
    calls = []
    real = contrastive_bench.reference_fp64
    monkeypatch.setattr(contrastive_bench, "reference_fp64", lambda *a, **k: calls.append(a) or real(*a, **k))
    (case,) = contrastive_bench.cases(CPU, True, shapes=[(128, 32, torch.float32, "sigmoid")])
    assert len(calls) == 1 and calls[0][-1].tolist() == list(range(0, 128, 8))
    assert all(err < 1e-5 for err in case["accuracy"].values()), case["accuracy"]
    assert all("grads on 16 of 128 rows" in text for text in case["settings"].values())


def test_contrastive_bf16_anchor_settings_and_errors():
    (case,) = contrastive_bench.cases(CPU, True, shapes=[(128, 32, torch.bfloat16, "softmax")])
    names = [name for name, _, _ in case["contenders"]]
    assert names == ["fmkit fused (softmax)", "naive, fp32 logits", "naive, bf16 logits"]
    assert "open_clip under autocast" in case["settings"]["naive, bf16 logits"]
    # bf16 gradients: their rounding alone is ~2e-3 of their norm
    assert all(err < 1e-2 for err in case["accuracy"].values()), case["accuracy"]


def test_tf32_wrapper_restores_the_switch():
    saved = torch.backends.cuda.matmul.allow_tf32
    seen = []
    fn = contrastive_bench._tf32(lambda: seen.append(torch.backends.cuda.matmul.allow_tf32) or 7)
    assert fn() == 7 and seen == [True]
    assert torch.backends.cuda.matmul.allow_tf32 == saved


# ---- pgd_step -------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pgd_error_column_and_a_wrong_step(monkeypatch, norm, dtype):
    monkeypatch.setattr(pgd_bench, "COMPILE_ANCHOR", False)
    (case,) = pgd_bench.cases(CPU, True, shapes=[(3, 3, 8, 8, dtype, norm)])
    acc = case["accuracy"]
    assert set(acc) == {f"fmkit pgd_step_ ({norm})", f"eager torchattacks {norm}"}
    bound = 1e-6 if dtype == torch.float32 else 1e-2
    assert all(err < bound for err in acc.values()), acc
    assert case["settings"][f"fmkit pgd_step_ ({norm})"] == "backend=auto (cpu)"

    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 3, 8, 8, generator=gen)
    x = (x0 + 0.02 * torch.randn(3, 3, 8, 8, generator=gen)).clamp(0, 1)
    g = torch.randn(3, 3, 8, 8, generator=gen)
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    eager = pgd_bench.eager_linf if norm == "linf" else pgd_bench.eager_l2
    ref = pgd_bench.reference_fp64(x, g, x0, eps, alpha, norm)
    acc = bench.accuracy([("right", lambda: eager(x, g, x0, eps, alpha), True),
                          ("double step", lambda: eager(x, g, x0, eps, 2 * alpha), True)], lambda fn: fn(), ref)
    assert acc["right"] < 1e-6 and acc["double step"] > 1e-3


# ---- calibration ----------------------------------------------------------------------------

def test_calibration_error_column_against_the_float64_pipeline():
    (case,) = calibration_bench.cases(CPU, True, shapes=[(300, 200, 8, 3)])
    assert case["accuracy"]["fmkit ProCal (DR)"] < 1e-5, case["accuracy"]
    if HAS_FAISS:
        assert case["accuracy"]["faiss + scipy KDE"] < 1e-5, case["accuracy"]
    else:
        assert "faiss + scipy KDE" not in case["accuracy"]

    cal = calibration_bench.synthetic_split(300, 8, 3, CPU, seed=0)
    test = calibration_bench.synthetic_split(200, 8, 3, CPU, seed=1)
    ref = calibration_bench.reference_fp64(cal, test)
    assert ref.shape == (200, 3) and torch.allclose(ref.sum(1), torch.ones(200, dtype=torch.float64))
    right = calibration_bench._fmkit(cal, test)

    def released_bandwidth():  # a different estimator: the error column must not call it right
        from fmkit.calibration.procal import DensityRatioCalibrator
        from fmkit.calibration.proximity import proximity

        dr = DensityRatioCalibrator(bandwidth="reference").fit(torch.softmax(cal[0], 1), cal[1], proximity(cal[2]))
        return dr.transform(torch.softmax(test[0], 1), proximity(test[2], cal[2]))

    acc = bench.accuracy([("right", lambda: right, False), ("other bandwidth", released_bandwidth, True)],
                         lambda fn: fn(), ref)
    assert acc["right"] < 1e-5 and acc["other bandwidth"] > 1e-3


def test_calibration_released_pipeline_float64_run_and_cpu_size_limit(monkeypatch):
    cal = calibration_bench.synthetic_split(300, 8, 3, CPU, seed=0)
    test = calibration_bench.synthetic_split(200, 8, 3, CPU, seed=1)
    conf = calibration_bench._released_pipeline(cal, test, exact64=True)
    assert conf.shape == (200,) and conf.dtype.name == "float64" and ((conf >= 0) & (conf <= 1)).all()
    # The float64 kNN: exact against fmkit.reference's direct float64 search.
    from fmkit.reference.knn import knn_reference

    want, _ = knn_reference(test[2][:20], cal[2], 10)
    torch.testing.assert_close(calibration_bench._knn_sq_fp64(test[2][:20], cal[2], 10), want, rtol=1e-12, atol=0)
    monkeypatch.setattr(calibration_bench, "CPU_REFERENCE_MAX_WORK", 0)
    (case,) = calibration_bench.cases(CPU, True, shapes=[(300, 200, 8, 3)])
    assert math.isnan(case["accuracy"]["fmkit ProCal (DR)"])
    assert "reference skipped" in case["settings"]["fmkit ProCal (DR)"]


# ---- kmeans ---------------------------------------------------------------------------------

def test_kmeans_error_column_from_the_same_start_and_a_wrong_run():
    (case,) = kmeans_bench.cases(CPU, True, shapes=[(3000, 8, 16, 3)])
    acc = case["accuracy"]
    assert {"fmkit[cpu]", "torch Lloyd (mm+argmin)"} <= set(acc) and (("faiss.Kmeans" in acc) == HAS_FAISS)
    assert all(err < 1e-6 for err in acc.values()), acc

    x = torch.randn(3000, 8, generator=torch.Generator().manual_seed(0))
    init = x[torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:16]]
    ref = kmeans_bench.inertia_fp64(x, kmeans_bench.lloyd_fp64(x, init, 3))
    one_short = kmeans_bench.lloyd_fp64(x, init, 2).float()
    acc = bench.accuracy([("init only", lambda: init, True), ("one iteration short", lambda: one_short, True)],
                         lambda fn: kmeans_bench.inertia_fp64(x, fn()), ref)
    assert acc["init only"] > 1e-2 and acc["one iteration short"] > 1e-4


def test_kmeans_float64_lloyd_follows_fmkit_and_the_size_limit(monkeypatch):
    from fmkit.cluster import kmeans

    x = torch.randn(2000, 6, generator=torch.Generator().manual_seed(3))
    init = x[torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:12]]
    ours = kmeans_bench.lloyd_fp64(x, init, 4)
    theirs, _ = kmeans(x, 12, iters=4, metric="l2", seed=0)
    torch.testing.assert_close(theirs.double(), ours, rtol=1e-5, atol=1e-6)
    monkeypatch.setitem(kmeans_bench.REFERENCE_MAX_FLOPS, "cpu", 0.0)
    (case,) = kmeans_bench.cases(CPU, True, shapes=[(500, 4, 5, 2)])
    assert all(math.isnan(err) for err in case["accuracy"].values())
    assert all("reference skipped" in text for text in case["settings"].values())


# ---- the CPU run end to end -----------------------------------------------------------------

def test_run_prints_the_error_column_of_a_real_op(monkeypatch, capsys):
    monkeypatch.setattr(bench, "measured_peak", lambda device, dtype=None: 100.0)
    small = types.SimpleNamespace(cases=lambda device, quick: contrastive_bench.cases(
        device, quick, shapes=[(64, 16, torch.float32, "softmax")]))
    monkeypatch.setitem(bench.REGISTRY, "contrastive", small)
    rows = bench.run(["contrastive"], True, CPU, progress=False)
    out = capsys.readouterr().out
    assert "rel err vs fp64" in out and "fp32 accumulation" in out
    assert all(r["rel_err_fp64"] < 1e-5 and len(r["times_ms"]) == 3 for r in rows)


# ---- on a GPU -------------------------------------------------------------------------------

@pytest.mark.gpu
def test_gpu_bench_cases_time_with_events_and_measure_their_errors(monkeypatch, tmp_path):
    """Small cases of the four benches on CUDA: CUDA-event timing (>= 10 calls for fast ones),
    finite small errors for every contender, including the blocked float64 contrastive
    reference on a row subset and the TF32 fp32-logits anchor."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(bench, "measured_peak", lambda device, dtype=None: 100.0)
    monkeypatch.setattr(pgd_bench, "COMPILE_ANCHOR", False)
    monkeypatch.setattr(contrastive_bench, "FULL_GRAD_MAX_N", 512)
    monkeypatch.setattr(contrastive_bench, "GRAD_ROWS", 100)
    small = {
        "contrastive": lambda d, q: contrastive_bench.cases(d, q, shapes=[(256, 64, torch.bfloat16, "softmax"),
                                                                          (1000, 64, torch.bfloat16, "sigmoid"),
                                                                          (1000, 64, torch.float32, "softmax")]),
        "pgd_step": lambda d, q: pgd_bench.cases(d, q, shapes=[(4, 3, 32, 32, torch.float32, "linf"),
                                                               (4, 3, 32, 32, torch.bfloat16, "l2")]),
        "calibration": lambda d, q: calibration_bench.cases(d, q, shapes=[(2000, 1000, 32, 10)]),
        "kmeans": lambda d, q: kmeans_bench.cases(d, q, shapes=[(20000, 16, 64, 3)]),
    }
    for op, fn in small.items():
        monkeypatch.setitem(bench.REGISTRY, op, types.SimpleNamespace(cases=fn))
    rows = bench.run(list(small), True, cuda, json_path=str(tmp_path / "gpu.json"), progress=False)
    assert rows and all(r["error"] is None for r in rows), [(r["contender"], r["error"]) for r in rows]
    for r in rows:
        if r["unavailable"]:  # e.g. a package this machine lacks
            continue
        assert len(r["times_ms"]) >= 3 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"], r["contender"]
        if r["median_ms"] < 10:
            assert len(r["times_ms"]) >= 10, r["contender"]
        err = r["rel_err_fp64"]
        bound = 1e-2 if ("bfloat16" in r["shape"] or "naive" in r["contender"]) else 1e-4
        assert err is not None and err < bound, (r["shape"], r["contender"], err)
    subset = [r for r in rows if r["shape"].startswith("N=1000 d=64 bfloat16")]
    assert subset and all("grads on 100 of 1000 rows" in r["setting"] for r in subset)
    assert any("TF32" in (r["setting"] or "") for r in rows)


def test_float64_knn_across_tiles_with_exclude_self(monkeypatch):
    """The benches' float64 search equals fmkit.reference's over many query and row tiles, with
    self left out where a tile boundary cuts the diagonal."""
    from fmkit.bench import knn as knn_bench
    from fmkit.reference.knn import knn_reference

    monkeypatch.setattr(knn_bench, "FLOAT64_TILE", {"cpu": 7 * 13, "cuda": 7 * 13})
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(4))
    for exclude_self in (False, True):
        score, idx = knn_bench.float64_knn(x, x, 4, exclude_self=exclude_self, chunk_n=13)
        want_d, want_i = knn_reference(x, x, 4, "l2", torch.arange(50) if exclude_self else None)
        assert torch.equal(idx, want_i)
        torch.testing.assert_close(score + (x.double() ** 2).sum(1, keepdim=True), want_d, rtol=1e-9, atol=1e-9)
