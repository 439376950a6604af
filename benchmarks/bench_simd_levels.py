"""fmkit's CPU kernels at every SIMD level this CPU supports, against the same anchors.

    python benchmarks/bench_simd_levels.py [--levels avx2,avx512] [--ops knn,clip_loss,...] [--threads 2]

Each (level, workload) runs in a fresh subprocess with FMKIT_SIMD=<level> (the level is
chosen at import), which times fmkit and the anchor in the same process, alternating them,
and reports the median and the spread (min-max) of the repeats. Writes
benchmarks/results/cpu-simd-levels.json and prints one table per level. The ratio
fmkit / anchor within one process is the reliable figure on a shared machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ORDER = ["scalar", "sse2", "neon", "avx2", "avx512"]
RESULTS = Path(__file__).resolve().parent / "results" / "cpu-simd-levels.json"

# op -> (workload label, target: ("<=", x) is fmkit / anchor <= x, (">=", x) is anchor / fmkit >= x)
WORKLOADS = {
    "knn": [("Q=2048 N=100k d=128 k=10", "faiss IndexFlatL2", ("<=", 1.0))],
    "clip_loss": [("N=4096 d=512 fp32 fwd+bwd softmax", "naive torch fp32", ("<=", 0.5)),
                  ("N=4096 d=512 fp32 fwd+bwd sigmoid", "naive torch fp32", ("<=", 0.5))],
    "kmeans": [("200k x 64, 256 clusters, 10 it, spherical", "faiss Kmeans", ("<=", 1.2)),
               ("1M x 64, 1024 clusters, 10 it, l2", "faiss Kmeans", ("<=", 1.2))],
    "pgd_step": [("64x3x224x224 linf", "eager torch", ("<=", 0.33)),
                 ("64x3x224x224 linf", "torch.compile", ("<=", 1.0)),
                 ("64x3x224x224 l2", "eager torch", ("<=", 0.33)),
                 ("64x3x224x224 l2", "torch.compile", ("<=", 1.0))],
    "attention": [("perceiver BT=64 keys=256+64 fwd", "SDPA", (">=", 1.0)),
                  ("perceiver BT=64 keys=256+64 fwd+bwd", "SDPA", (">=", 1.0)),
                  ("media B=4 T=2048 images=5 fwd", "SDPA", (">=", 1.0)),
                  ("media B=4 T=2048 images=5 fwd+bwd", "SDPA", (">=", 1.0))],
    "gaussian_kde": [("50k x 50k, 2-D", "chunked torch", (">=", 10.0))],
    "stain_jitter": [("256x3x96x96 uint8 release", "release per-image loop", (">=", 10.0)),
                     ("256x3x96x96 uint8 release", "albumentations HEStain", (">=", 3.0)),
                     ("256x3x96x96 float32 release", "release per-image loop", (">=", 10.0)),
                     ("256x3x96x96 float32 release", "albumentations HEStain", (">=", 3.0))],
    "class_spectrum": [("class_diversity C=250 n=100 d=512 fp32", "vendi-score score_dual loop", (">=", 100.0)),
                       ("class_diversity C=250 n=100 d=512 fp32", "numpy n×n loop (float64)", (">=", 10.0))],
}
# The anchors pick their own ISA (MKL / oneDNN / ATen kernels for torch, faiss's own build
# variants); by default they are held to the level under test too, so each row is what a CPU
# of that level would see (--native-anchors lets them use everything this CPU has).
ANCHOR_ENV = {
    "scalar": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "FAISS_OPT_LEVEL": "generic"},
    "sse2": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "FAISS_OPT_LEVEL": "generic"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "FAISS_OPT_LEVEL": "avx2"},
}
# Workloads too slow to be worth it on the scalar level.
HEAVY = {"kmeans", "gaussian_kde", "attention"}


def _time(fns: dict, repeats: int) -> dict:
    """Alternates the callables (one warm-up each unless repeats < 2: the multi-second
    workloads warm up inside), so machine noise hits them alike."""
    if repeats >= 2:
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "repeats": len(t)}
            for name, t in times.items()}


def _contenders(op: str, large: bool):
    """(label, {"fmkit": fn, anchor: fn, ...}, repeats, extra) per workload of `op`."""
    import torch

    cpu = torch.device("cpu")
    if op == "knn":
        from fmkit.bench import knn as b

        (case,) = list(b.cases(cpu, quick=True, shapes=[(2048, 100_000, 128, 10)]))
        fns = {n: f for n, f, _ in case["contenders"]}
        yield WORKLOADS[op][0][0], {"fmkit": fns["fmkit[cpu]"], "faiss IndexFlatL2": fns["faiss IndexFlatL2"]}, 5, {}
    elif op == "clip_loss":
        from fmkit.bench import contrastive as b

        for (label, _, _), kind in zip(WORKLOADS[op], ("softmax", "sigmoid")):
            (case,) = b.cases(cpu, quick=False, shapes=[(4096, 512, torch.float32, kind)])
            f = [fn for _, fn, _ in case["contenders"]]
            yield label, {"fmkit": f[0], "naive torch fp32": f[1]}, 5, {}
    elif op == "kmeans":
        yield from _kmeans_workloads(large)
    elif op == "pgd_step":
        from fmkit.bench import pgd_step as b

        for norm in ("linf", "l2"):
            (case,) = b.cases(cpu, quick=False, shapes=[(64, 3, 224, 224, torch.float32, norm)])
            f = [fn for _, fn, _ in case["contenders"]]
            yield f"64x3x224x224 {norm}", {"fmkit": f[0], "eager torch": f[1], "torch.compile": f[2]}, 7, {}
    elif op == "attention":
        from fmkit.bench import flamingo as b

        labels = iter(w[0] for w in WORKLOADS[op])
        for case in b.cases(cpu, quick=False, shapes=[("perceiver", 64, 256, 64), ("media", 4, 2048, 5)]):
            f = [fn for _, fn, _ in case["contenders"]]
            yield next(labels), {"fmkit": f[0], "SDPA": f[1]}, 5, {}
    elif op == "gaussian_kde":
        yield from _kde_workload()
    elif op == "stain_jitter":
        from fmkit.bench import augment as b

        for dtype in (torch.uint8, torch.float32):
            case = b._case(256, 96, 96, dtype, cpu)
            f = {n: fn for n, fn, _ in case["contenders"]}
            fns = {"fmkit": f["fmkit stain_jitter (cpu)"], "release per-image loop": f["release code path, per-image loop"],
                   "albumentations HEStain": f["albumentations HEStain, per image"]}
            x, alpha, beta = case["inputs"]
            scale = 1.0 if dtype == torch.uint8 else 255.0

            def extra(x=x, alpha=alpha, beta=beta, scale=scale, fused=fns["fmkit"]):
                ref = b.stain_jitter_reference(x, alpha, beta, "release")
                return {"max_err_codes_vs_float64": float((fused().double() - ref.double()).abs().max()) * scale}

            yield f"256x3x96x96 {str(dtype)[6:]} release", fns, 9, extra
    elif op == "class_spectrum":
        yield from _class_spectrum_workload()


def _class_spectrum_workload():
    import numpy as np

    from fmkit.bench import diversity as b
    from fmkit.diversity import class_diversity

    C, n, d = 250, 100, 512
    feats, labels = b._data(C, n, d)
    x = feats.numpy()
    truth = b._score_dual_loop(x.astype(np.float64), C, n)
    out = {}

    def ours():
        out["fmkit"] = class_diversity(feats, labels).intra.numpy()

    def extra():
        return {"max_rel_err_vs_float64_score_dual": float(np.max(np.abs(out["fmkit"] - truth) / truth))}

    fns = {"fmkit": ours, "vendi-score score_dual loop": lambda: b._score_dual_loop(x, C, n),
           "numpy n×n loop (float64)": lambda: b._nn_loop(x, C, n)}
    yield f"class_diversity C={C} n={n} d={d} fp32", fns, 3, extra


def _kmeans_workloads(large):
    import faiss
    import numpy as np
    import torch

    from fmkit.cluster import kmeans

    sizes = ((200_000, 256, True), (1_000_000, 1024, False))
    for (label, _, _), (N, k, spherical) in zip(WORKLOADS["kmeans"], sizes[: 2 if large else 1]):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, 64, generator=g)
        if spherical:
            x = torch.nn.functional.normalize(x, dim=1)
        xn = x.numpy()
        metric = "ip" if spherical else "l2"
        out = {}

        def ours():
            out["fmkit"] = kmeans(x, k, iters=10, metric=metric, spherical=spherical, seed=0)[0]

        def theirs():
            km = faiss.Kmeans(64, k, niter=10, seed=0, spherical=spherical, max_points_per_centroid=10**7)
            km.train(xn)
            out["faiss"] = torch.from_numpy(km.centroids)

        def objective(c):  # the same measure for both: sum |x - c|^2 (l2) or sum <x, c> (spherical)
            c = c.double()
            xd = x.double()
            best = []
            for i in range(0, N, 65536):
                s = xd[i : i + 65536] @ c.T
                best.append(s.max(1).values if spherical else ((c * c).sum(1)[None] - 2 * s).min(1).values
                            + (xd[i : i + 65536] ** 2).sum(1))
            return float(torch.cat(best).sum())

        def extra():
            return {"objective_fmkit": objective(out["fmkit"]), "objective_faiss": objective(out["faiss"])}

        yield label, {"fmkit": ours, "faiss Kmeans": theirs}, 3 if N < 10**6 else 1, extra


def _kde_workload():
    import torch

    from fmkit.ops import gaussian_kde

    g = torch.Generator().manual_seed(0)
    pts = torch.randn(50_000, 2, generator=g, dtype=torch.float64)
    qs = torch.randn(50_000, 2, generator=g, dtype=torch.float64)
    bw = torch.tensor([0.2, 0.3], dtype=torch.float64)

    def chunked():  # what a user writes: float64 Gaussian kernel sums over query chunks
        inv = 1.0 / bw
        p = pts * inv
        out = []
        for i in range(0, qs.shape[0], 2048):
            d2 = torch.cdist(qs[i : i + 2048] * inv, p).square_()
            out.append(torch.exp(-0.5 * d2).sum(1))
        return torch.cat(out) / (pts.shape[0] * 2 * torch.pi * bw.prod())

    ref = {}

    def ours():
        ref["fmkit"] = gaussian_kde(pts, bw, qs, backend="cpu")

    def theirs():
        ref["torch"] = chunked()

    def extra():
        return {"max_rel_diff": float(((ref["fmkit"] - ref["torch"]).abs() / ref["torch"].abs().clamp_min(1e-300)).max())}

    yield "50k x 50k, 2-D", {"fmkit": ours, "chunked torch": theirs}, 1, extra


def worker(op: str, threads: int, large: bool) -> None:
    import torch

    torch.set_num_threads(threads)
    from fmkit import _C

    rows = []
    for label, fns, repeats, extra in _contenders(op, large):
        stats = _time(fns, repeats)
        row = {"op": op, "workload": label, "level": _C.simd_selected, "threads": threads, "times": stats,
               "anchor_env": {k: os.environ[k] for k in ANCHOR_ENV["sse2"] if k in os.environ}}
        if callable(extra):
            row.update(extra())
        rows.append(row)
        print("ROW" + json.dumps(row), flush=True)


def _table(rows):
    out = []
    for r in rows:
        t = r["times"]
        f = t["fmkit"]
        for label, anchor, (sense, target) in WORKLOADS[r["op"]]:
            if label != r["workload"] or anchor not in t:
                continue
            a = t[anchor]
            ratio = f["median_ms"] / a["median_ms"]
            value = ratio if sense == "<=" else 1 / ratio
            met = value <= target if sense == "<=" else value >= target
            out.append({"level": r["level"], "op": r["op"], "workload": label, "anchor": anchor,
                        "fmkit_ms": f["median_ms"], "fmkit_spread": [f["min_ms"], f["max_ms"]],
                        "anchor_ms": a["median_ms"], "anchor_spread": [a["min_ms"], a["max_ms"]],
                        "ratio": ratio, "target": f"{'fmkit/anchor' if sense == '<=' else 'speedup'} {sense} {target}",
                        "value": value, "met": met,
                        **{k: v for k, v in r.items() if k.startswith(("objective", "max_rel", "max_err"))}})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", default="")
    p.add_argument("--ops", default=",".join(WORKLOADS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(RESULTS))
    p.add_argument("--worker", default="")
    p.add_argument("--large", action="store_true", help="also k-means 1M x 64, 1024 clusters (minutes per level)")
    p.add_argument("--native-anchors", action="store_true", help="do not hold the anchors to the level under test")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.threads, args.large)
    from fmkit import _C

    supported = [lv for lv in _C.simd_compiled if ORDER.index(lv) <= ORDER.index(_C.simd_detected)]
    levels = args.levels.split(",") if args.levels else supported
    rows, failures = [], []
    for level in levels:
        for op in args.ops.split(","):
            if level == "scalar" and op in HEAVY:
                continue
            env = dict(os.environ, FMKIT_SIMD=level, OMP_NUM_THREADS=str(args.threads))
            if not args.native_anchors:
                env.update(ANCHOR_ENV.get(level, {}))
            r = subprocess.run([sys.executable, __file__, "--worker", op, "--threads", str(args.threads)]
                               + (["--large"] if args.large else []),
                               env=env, capture_output=True, text=True)
            got = [json.loads(ln[3:]) for ln in r.stdout.splitlines() if ln.startswith("ROW")]
            if r.returncode != 0:
                failures.append({"level": level, "op": op, "stderr": r.stderr[-2000:]})
                print(f"[{level} {op}] failed:\n{r.stderr[-2000:]}", file=sys.stderr)
            rows += got
            for row in _table(got):
                print(f"{row['level']:7s} {row['op']:12s} {row['workload']:44s} {row['anchor']:18s} "
                      f"{row['fmkit_ms']:10.1f} {row['anchor_ms']:10.1f} {row['ratio']:7.3f}  "
                      f"{row['target']:22s} {'yes' if row['met'] else 'NO'}", flush=True)
    import torch

    result = {"date": datetime.date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
              "cpu_model": _cpu_model(), "threads": args.threads, "torch": torch.__version__,
              "simd_detected": _C.simd_detected,
              "anchor_env": {} if args.native_anchors else ANCHOR_ENV, "rows": rows, "table": _table(rows), "failures": failures}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    if Path(args.json).exists() and (args.levels or args.ops != ",".join(WORKLOADS)):
        # partial run: keep the rows of other levels / ops from the previous file
        try:
            old = json.loads(Path(args.json).read_text())
            keep = [r for r in old.get("rows", []) if not (r["level"] in levels and r["op"] in args.ops.split(","))]
            result["rows"] = keep + rows
            result["table"] = _table(result["rows"])
        except (OSError, ValueError, KeyError):
            pass
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nlevel   op           workload{' ' * 36} anchor             fmkit ms  anchor ms   ratio  target")
    for row in sorted(result["table"], key=lambda r: (ORDER.index(r["level"]), r["op"])):
        print(f"{row['level']:7s} {row['op']:12s} {row['workload']:44s} {row['anchor']:18s} "
              f"{row['fmkit_ms']:10.1f} {row['anchor_ms']:10.1f} {row['ratio']:7.3f}  "
              f"{row['target']:22s} {'yes' if row['met'] else 'NO'}")
    return 1 if failures else 0


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
