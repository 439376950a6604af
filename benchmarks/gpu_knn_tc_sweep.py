"""Tile sweep of the triton kNN backend's tensor-core candidate kernel (GPU only).

For each tile configuration (FMKIT_KNN_TC_TILES="q,n,d,warps,stages") and each shape, times
knn(..., backend="triton") with CUDA events (fmkit.bench.timed_all's median), counts the rows the
certificate sent back to the fp32 path, and checks the indices on 512 queries against a float64
GEMM + topk. Prints one line per (shape, config) and writes JSON to argv[1] if given.
"""
import importlib
import json
import os
import sys
import time

import torch

from fmkit.bench import timed_all
from fmkit.bench.knn import float64_knn
from fmkit.ops import knn

knn_module = importlib.import_module("fmkit.ops.knn")
SHAPES = [(16384, 1_000_000, 128, 10), (25_000, 25_000, 1024, 10), (16384, 1_000_000, 768, 10)]
if os.environ.get("SWEEP_SHAPES"):  # e.g. "0,1": indices into SHAPES
    SHAPES = [SHAPES[int(i)] for i in os.environ["SWEEP_SHAPES"].split(",")]
CONFIGS = ["128,64,64,8,3", "128,64,128,8,3", "64,128,128,4,3", "128,128,64,8,3", "64,64,128,4,4",
           "128,64,32,4,4"]
BUDGET_S = float(os.environ.get("SWEEP_SECONDS", "150"))


def median_ms(fn, n=5):
    """(median, min, max) ms of at least n CUDA-event-timed calls after a warm-up (fmkit.bench.timed_all)."""
    times = sorted(timed_all(fn, torch.device("cuda"), n))
    return times[len(times) // 2], times[0], times[-1]


def main():
    start = time.time()
    rows = []
    for Q, N, d, k in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(Q, d, device="cuda", generator=g)
        db = torch.randn(N, d, device="cuda", generator=g)
        truth = float64_knn(q[:512], db, k)[1]
        torch_ms = median_ms(lambda: torch.topk((db * db).sum(1)[None] - 2 * (q[:4096] @ db.T), k, dim=1,
                                                largest=False), n=3)[0] * Q / 4096
        for cfg in CONFIGS:
            if d <= 128 and int(cfg.split(",")[2]) > 128:
                continue
            if time.time() - start > BUDGET_S:
                print("sweep: out of time")
                break
            os.environ["FMKIT_KNN_TC_TILES"] = cfg
            try:
                before = knn_module.fallback_rows
                idx = knn(q, db, k, backend="triton")[1]
                fallback = knn_module.fallback_rows - before
                exact = bool(torch.equal(idx[:512], truth))
                ms, lo, hi = median_ms(lambda: knn(q, db, k, backend="triton"))
                row = dict(shape=f"Q={Q} N={N} d={d} k={k}", tiles=cfg, median_ms=ms, min_ms=lo, max_ms=hi,
                           fallback_rows=fallback, exact_512=exact, torch_mm_topk_ms_est=torch_ms,
                           tflops_bf16x3=3 * 2 * Q * N * d / ms / 1e9)
            except Exception as exc:  # a config that does not compile or fit must not stop the sweep
                row = dict(shape=f"Q={Q} N={N} d={d} k={k}", tiles=cfg, error=f"{type(exc).__name__}: {exc}"[:300])
            rows.append(row)
            print(json.dumps(row), flush=True)
        os.environ.pop("FMKIT_KNN_TC_TILES", None)
    if len(sys.argv) > 1:
        json.dump(rows, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
