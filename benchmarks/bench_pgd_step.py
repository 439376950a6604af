"""Fused PGD step benchmarks: fmkit pgd_step_ (linf, l2) vs the eager torchattacks formulas (and torch.compile).

    python benchmarks/bench_pgd_step.py [--quick] [--device cuda] [--json PATH]   # the table
    pytest benchmarks/bench_pgd_step.py --benchmark-only                          # pytest-benchmark

Both use the cases of fmkit.bench.pgd_step, which is also what `fmkit bench --op pgd_step` runs.
"""
import sys

import pytest

from fmkit.bench import quick_contenders

CASES = quick_contenders("pgd_step") if "pytest" in sys.modules else []


@pytest.mark.parametrize("shape,name,fn", CASES, ids=[f"{shape}|{name}" for shape, name, _ in CASES])
def test_pgd_step(benchmark, shape, name, fn):
    benchmark.group = shape
    benchmark.name = name
    benchmark(fn)


if __name__ == "__main__":
    from fmkit.cli import main

    sys.exit(main(["bench", "--op", "pgd_step", *sys.argv[1:]]))
