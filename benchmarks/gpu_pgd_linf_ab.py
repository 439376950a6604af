"""A/B of the pgd_step_ L-inf CUDA kernels (GPU only): run once plainly (16-byte vector kernel)
and once with FMKIT_PGD_LINF_SCALAR=1 (scalar kernel); 256x3x224x224, CUDA-event median of 50
calls (fmkit.bench.timed_all), and the byte floor (4 transfers) at the copy bandwidth given as argv[1] in GB/s."""
import os
import sys

import torch

from fmkit.bench import percentile, timed_all
from fmkit.ops import pgd_step_

copy_gbs = float(sys.argv[1]) if len(sys.argv) > 1 else float("nan")
kernel = "scalar" if os.environ.get("FMKIT_PGD_LINF_SCALAR") else "vector"
for dtype in (torch.float32, torch.bfloat16):
    g0 = torch.Generator(device="cuda").manual_seed(0)
    x0 = torch.rand(256, 3, 224, 224, device="cuda", generator=g0).to(dtype)
    g = torch.randn(x0.shape, device="cuda", generator=g0).to(dtype)
    x = x0.clone()
    step = lambda: pgd_step_(x, g, x0, eps=8 / 255, step_size=2 / 255, validate=False)  # noqa: E731
    times = timed_all(step, torch.device("cuda"), 50)
    p20, p50, p80 = (percentile(times, q) for q in (0.2, 0.5, 0.8))
    floor = 4 * x.numel() * x.element_size() / (copy_gbs * 1e9) * 1e3
    print(f"pgd linf {kernel} {dtype}: p20 {p20:.4f} p50 {p50:.4f} p80 {p80:.4f} ms; "
          f"floor {floor:.4f} ms at {copy_gbs:.0f} GB/s -> {100 * floor / p50:.0f}% of the floor's speed")
