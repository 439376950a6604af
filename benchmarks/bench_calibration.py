"""ProCal benchmarks: proximity + Density-Ratio fit/transform vs faiss + a KDE library.

    python benchmarks/bench_calibration.py [--quick] [--device cuda] [--json PATH]   # the table
    pytest benchmarks/bench_calibration.py --benchmark-only                          # pytest-benchmark

Both use the cases of fmkit.bench.calibration, which is also what `fmkit bench --op calibration` runs.
"""
import sys

import pytest

from fmkit.bench import quick_contenders

CASES = quick_contenders("calibration") if "pytest" in sys.modules else []


@pytest.mark.parametrize("shape,name,fn", CASES, ids=[f"{shape}|{name}" for shape, name, _ in CASES])
def test_calibration(benchmark, shape, name, fn):
    benchmark.group = shape
    benchmark.name = name
    benchmark(fn)


if __name__ == "__main__":
    from fmkit.cli import main

    sys.exit(main(["bench", "--op", "calibration", *sys.argv[1:]]))
