"""OpenFlamingo attention benchmarks: perceiver core and media cross-attention vs SDPA.

    python benchmarks/bench_flamingo.py [--quick] [--device cuda] [--json PATH]   # the table
    pytest benchmarks/bench_flamingo.py --benchmark-only                          # pytest-benchmark

Both use the cases of fmkit.bench.flamingo, which is also what `fmkit bench --op flamingo` runs.
"""
import sys

import pytest

from fmkit.bench import quick_contenders

CASES = quick_contenders("flamingo") if "pytest" in sys.modules else []


@pytest.mark.parametrize("shape,name,fn", CASES, ids=[f"{shape}|{name}" for shape, name, _ in CASES])
def test_flamingo(benchmark, shape, name, fn):
    benchmark.group = shape
    benchmark.name = name
    benchmark(fn)


if __name__ == "__main__":
    from fmkit.cli import main

    sys.exit(main(["bench", "--op", "flamingo", *sys.argv[1:]]))
