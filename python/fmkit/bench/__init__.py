"""Benchmark registry behind `fmkit bench`: one module per op, each exposing `cases(device, quick)`.

A case is a dict with the shape, a `flops` count and a list of (name, callable) contenders:
fmkit's backends first, then the anchors users would pick instead. Every contender runs in
the same process on the same inputs; the table reports the median time with its p20-p80 spread
(CUDA events on a GPU), the ratio to the best anchor, achieved GFLOP/s and that rate as % of
torch.mm's GEMM rate measured in the run (torch.mm is not the machine's peak: a kernel can
exceed 100%). A case may also carry "exact" {name: bool} (indices equal the float64 answer),
"accuracy" {name: ||out - ref|| / ||ref|| against the float64 reference on the same inputs} and
"settings" {name: the setting a contender ran at, e.g. an anchor's SDPA backend}. A contender
whose package is missing stays in the table as a row saying so (`unavailable`).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch


def unavailable(reason: str) -> Callable[[], object]:
    """A contender that cannot run here (e.g. "faiss not installed"): shown as a row with `reason`."""
    def fn():
        raise RuntimeError(reason)
    fn.unavailable = reason
    return fn


def auto_backend(device: torch.device, op: str) -> str:
    """The backend `backend="auto"` resolves to for `op` on `device` (a table label only)."""
    import importlib

    module = op.rstrip("_")  # pgd_step_ lives in fmkit.ops.pgd_step
    try:
        from fmkit.ops import _backend

        order = importlib.import_module(f"fmkit.ops.{module}").GPU_BACKEND_ORDER
        return _backend.resolve_backend("auto", device, op, order)
    except Exception:  # a label only
        return "auto"


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; for tuples of tensors, the largest over the pairs."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    errs = []
    for o, r in zip(outs, refs, strict=True):
        o = torch.as_tensor(o).detach().to(torch.float64)
        r = torch.as_tensor(r).detach().to(device=o.device, dtype=torch.float64)
        errs.append(float((o - r).norm() / r.norm()))
    return max(errs)


def accuracy(contenders, output_of: Callable, ref) -> dict[str, float]:
    """{name: rel_err(output_of(fn), ref)} over the contenders that can run; NaN for one that
    fails (e.g. out of memory: the timing loop reports the error itself)."""
    result = {}
    for name, fn, _ in contenders:
        if hasattr(fn, "unavailable"):
            continue
        try:
            result[name] = rel_err(output_of(fn), ref)
        except Exception as exc:
            result[name] = float("nan")
            print(f"\nerror vs float64 of {name!r} not measured: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return result


class LazyCases:
    """The cases of one run, each built (inputs, float64 reference, error column) only when the
    run reaches it, so that a run cut short by a time limit still has the numbers of the cases
    before; counted up front for the progress bar."""

    def __init__(self, builders):
        self._builders = list(builders)

    def __len__(self):
        return len(self._builders)

    def __iter__(self):
        return (build() for build in self._builders)


# After `unavailable`, which the case modules import from here.
from fmkit.bench import calibration as _calibration  # noqa: E402
from fmkit.bench import contrastive as _contrastive  # noqa: E402
from fmkit.bench import flamingo as _flamingo  # noqa: E402
from fmkit.bench import kmeans as _kmeans  # noqa: E402
from fmkit.bench import knn as _knn  # noqa: E402
from fmkit.bench import pgd_step as _pgd_step  # noqa: E402

REGISTRY = {"knn": _knn, "kmeans": _kmeans, "calibration": _calibration, "contrastive": _contrastive,
            "flamingo": _flamingo, "pgd_step": _pgd_step}


def _register_paper_benches() -> None:
    """fmkit/bench/<package>.py for each paper package that has one (the list lives in fmkit.cli)."""
    import importlib

    from fmkit.cli import BENCH_OPS

    for name in BENCH_OPS:
        if name not in REGISTRY:
            REGISTRY[name] = importlib.import_module(f"fmkit.bench.{name}")


_register_paper_benches()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median time in ms (see `timed_all`)."""
    return statistics.median(timed_all(fn, device, repeats))


# On a GPU: at least this many timed calls (for p20 / p80), more while under the time budget.
GPU_MIN_REPEATS, GPU_MAX_REPEATS, GPU_BUDGET_MS = 10, 50, 1500.0


def timed_all(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Time in ms of each timed call after one warm-up call.

    CPU: `repeats` calls, wall clock. CUDA: CUDA events around each call on the current stream
    (launch-to-completion on the device, no host synchronisation inside the interval; a call
    that waits for its result on the host, e.g. a CPU library, is timed end to end), calls
    until their measured total reaches GPU_BUDGET_MS, at most GPU_MAX_REPEATS and at least
    max(repeats, GPU_MIN_REPEATS) when that many fit in 2 * GPU_BUDGET_MS (judged by the
    first call), else at least 3 (a 3-second call: 3 calls, not 10).
    """
    fn()
    times = []
    if device.type != "cuda":
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    torch.cuda.synchronize(device)
    while len(times) < GPU_MAX_REPEATS:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
        wanted = max(repeats, GPU_MIN_REPEATS)
        at_least = wanted if times[0] * wanted <= 2 * GPU_BUDGET_MS else 3
        if len(times) >= at_least and sum(times) >= GPU_BUDGET_MS:
            break
    return times


def percentile(times: list[float], q: float) -> float:
    """The q-quantile (0..1) of `times` by linear interpolation; NaN when empty."""
    if not times:
        return float("nan")
    ordered = sorted(times)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def quick_contenders(op: str) -> list[tuple[str, str, Callable[[], object]]]:
    """(shape, contender, callable) of the quick cases of `op`, for pytest-benchmark suites."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return [(case["shape"], name, fn) for case in REGISTRY[op].cases(device, quick=True)
            for name, fn, _ in case["contenders"] if not hasattr(fn, "unavailable")]


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory one call allocates beyond what was live before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def measured_peak(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """GEMM GFLOP/s of torch.mm on this device in `dtype` (TF32 off): the denominator for '% peak'."""
    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ms = min(timed(lambda: a @ b, device, 3) for _ in range(3))  # best of: a peak, not a typical
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return 2 * n**3 / (ms * 1e-3) / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run(ops: list[str], quick: bool, device: torch.device, json_path: str | None = None, plot_path: str | None = None,
        progress: bool = True):
    from tqdm import tqdm

    peaks = {torch.float32: measured_peak(device)}
    peak = peaks[torch.float32]
    rows = []
    for op in ops:
        cases = REGISTRY[op].cases(device, quick)
        for case in tqdm(cases, desc=f"bench {op}", disable=not progress):
            dtype = case.get("peak_dtype", torch.float32)
            if dtype not in peaks:
                peaks[dtype] = measured_peak(device, dtype)
            results, spreads = {}, {}
            for name, fn, is_anchor in case["contenders"]:
                error = None
                if hasattr(fn, "unavailable"):
                    results[name] = (float("nan"), is_anchor, None, None, fn.unavailable)
                    continue
                times = []
                try:
                    times = timed_all(fn, device, case.get("repeats", 3))
                    ms = statistics.median(times)
                    mib = peak_extra_mib(fn, device)
                except torch.OutOfMemoryError:  # the naive losses cannot run the largest batches
                    ms, mib, error = float("nan"), float("nan"), "out of memory"
                    torch.cuda.empty_cache()
                except Exception as exc:  # one broken contender must not hide the others' numbers
                    ms, mib, error = float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"[:300]
                    print(f"\n{op} {case['shape']} {name} failed: {error}", file=sys.stderr)
                results[name] = (ms, is_anchor, mib, error, None)
                spreads[name] = times
            anchors = [ms for ms, is_anchor, *_ in results.values() if is_anchor and ms == ms]
            best_anchor = min(anchors) if anchors else float("nan")
            for name, (ms, is_anchor, mib, error, why_not) in results.items():
                gflops = case["flops"] / (ms * 1e-3) / 1e9
                times = spreads.get(name, [])
                rows.append({
                    "op": op, "shape": case["shape"], "contender": name, "anchor": is_anchor,
                    "median_ms": ms, "p20_ms": percentile(times, 0.2), "p80_ms": percentile(times, 0.8),
                    "speedup_vs_best_anchor": best_anchor / ms,
                    "times_ms": times,
                    "gflops": gflops, "pct_peak": 100 * gflops / peaks[dtype], "peak_dtype": str(dtype),
                    "peak_extra_mib": mib,
                    "exact": case.get("exact", {}).get(name),
                    "rel_err_fp64": case.get("accuracy", {}).get(name),
                    "setting": case.get("settings", {}).get(name),
                    "error": error, "unavailable": why_not,
                })
            if json_path:  # after every case, so a run cut short still leaves its numbers
                write_json(json_path, rows, device, peaks, quick)
    print_table(rows, device, peak)
    if plot_path:
        plot(rows, device, plot_path)
    return rows


def write_json(path, rows, device, peaks, quick):
    meta = {
        "date": datetime.date.today().isoformat(), "device": device_name(device),
        "torch": torch.__version__, "triton": _triton_version(),
        "gemm_peak_gflops": {str(k): v for k, v in peaks.items()},
        "quick": quick, "commit": git_commit(),
    }
    from fmkit._output import replace_file

    # Replaced whole each time: a run cut short leaves a complete JSON of the cases so far.
    with replace_file(path, overwrite=True, what="json_path") as tmp, open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def git_commit() -> str | None:
    """The short hash of the checkout fmkit runs from, '-dirty' with uncommitted changes; None
    outside a git checkout (an installed wheel, a device machine's copy of the tree)."""
    import subprocess

    root = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


TABLE_COLUMNS = ("op", "shape", "contender", "median ms", "p20-p80", "vs best anchor", "GFLOP/s", "% torch.mm",
                 "extra MiB", "exact", "rel err vs fp64", "setting")


def spread_text(times) -> str:
    """p20 and p80 of the timed calls as +-% of the median (n calls); '1 run' for one call."""
    if len(times) < 2:
        return "1 run" if times else "-"
    med = statistics.median(times)
    lo, hi = percentile(times, 0.2), percentile(times, 0.8)
    return f"-{100 * (med - lo) / med:.0f}/+{100 * (hi - med) / med:.0f}% (n={len(times)})"


def table_cells(r: dict) -> list[str]:
    """One row of the printed table as strings; a contender that did not run says why instead."""
    def num(value, fmt):
        return "-" if value is None or value != value else format(value, fmt)

    mib = "" if r["peak_extra_mib"] is None else num(r["peak_extra_mib"], ".0f")
    exact = "ERROR" if r.get("error") else "" if r["exact"] is None else ("yes" if r["exact"] else "no")
    if r.get("unavailable"):
        return [r["op"], r["shape"], r["contender"], r["unavailable"]] + [""] * 8
    ratio, ran = r["speedup_vs_best_anchor"], r["median_ms"] == r["median_ms"]
    err = r.get("rel_err_fp64")
    return [r["op"], r["shape"], r["contender"], num(r["median_ms"], ".2f"), spread_text(r.get("times_ms", [])),
            num(ratio, ".2f") + "x" if ratio == ratio else ("no anchor ran" if ran else "-"),
            num(r["gflops"], ".1f"), num(r["pct_peak"], ".1f"), mib, exact,
            "" if err is None else num(err, ".1e"), r.get("setting") or ""]


def format_table(rows) -> list[str]:
    """Column widths follow the longest cell, so long shapes and names keep the columns aligned."""
    cells = [table_cells(r) for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c, r in zip(cells, rows) if not (r.get("unavailable") and i == 3)])
              for i, h in enumerate(TABLE_COLUMNS)]
    left = 3  # op, shape and contender (and the last column, the setting) are left-aligned, numbers right-aligned

    def line(c, r=None):
        if r is not None and r.get("unavailable"):  # the reason spans the number columns
            return "  ".join(v.ljust(w) for v, w in zip(c[:left], widths[:left])) + "  " + c[3]
        return "  ".join(v.ljust(w) if i < left or i == len(widths) - 1 else v.rjust(w)  # the setting: text
                         for i, (v, w) in enumerate(zip(c, widths))).rstrip()

    header = line(list(TABLE_COLUMNS))
    return [header, "-" * len(header)] + [line(c, r) for c, r in zip(cells, rows)]


def print_table(rows, device, peak):
    print(f"\n{device_name(device)} | torch.mm fp32 GEMM rate (TF32 off, measured now, the '% torch.mm' "
          f"denominator) {peak:.0f} GFLOP/s | {datetime.date.today()}")
    for text in format_table(rows):
        print(text)


def plot(rows, device, path):
    """One horizontal bar chart per case: median time of each contender, fmkit highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["median_ms"] == r["median_ms"]]  # only contenders that ran
    cases = list(dict.fromkeys((r["op"], r["shape"]) for r in rows))
    height = 0.8 + sum(0.9 + 0.35 * sum(1 for r in rows if (r["op"], r["shape"]) == c) for c in cases)
    fig, axes = plt.subplots(len(cases), 1, figsize=(8, height), squeeze=False)
    for ax, (op, shape) in zip(axes[:, 0], cases):
        sub = [r for r in rows if (r["op"], r["shape"]) == (op, shape)]
        names = [r["contender"] for r in sub]
        times = [r["median_ms"] for r in sub]
        colors = ["#999999" if r["anchor"] else "#1f77b4" for r in sub]
        ax.barh(names, times, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("median ms (lower is better)")
        ax.set_title(f"{op}: {shape}", fontsize=9)
        for y, r in enumerate(sub):
            ax.text(r["median_ms"], y, f" {r['median_ms']:.1f} ms", va="center", fontsize=8)
    fig.suptitle(f"fmkit bench - {device_name(device)} - {datetime.date.today()}", fontsize=10)
    fig.tight_layout()
    from fmkit._output import replace_file

    with replace_file(path, overwrite=True, what="plot_path") as tmp:
        fig.savefig(tmp, dpi=120, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None
