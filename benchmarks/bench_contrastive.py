"""Fused CLIP / SigLIP loss benchmarks: forward + backward vs the naive materialised loss (and inf-cl).

    python benchmarks/bench_contrastive.py [--quick] [--device cuda] [--json PATH]   # the table
    pytest benchmarks/bench_contrastive.py --benchmark-only                          # pytest-benchmark

Both use the cases of fmkit.bench.contrastive, which is also what `fmkit bench --op contrastive` runs.
"""
import sys

import pytest

from fmkit.bench import quick_contenders

CASES = quick_contenders("contrastive") if "pytest" in sys.modules else []


@pytest.mark.parametrize("shape,name,fn", CASES, ids=[f"{shape}|{name}" for shape, name, _ in CASES])
def test_contrastive(benchmark, shape, name, fn):
    benchmark.group = shape
    benchmark.name = name
    benchmark(fn)


if __name__ == "__main__":
    from fmkit.cli import main

    sys.exit(main(["bench", "--op", "contrastive", *sys.argv[1:]]))
