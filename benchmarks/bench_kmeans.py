"""k-means benchmarks: fmkit.cluster.kmeans vs faiss.Kmeans, in one process.

    python benchmarks/bench_kmeans.py [--quick] [--device cuda] [--json PATH]   # the table
    pytest benchmarks/bench_kmeans.py --benchmark-only                          # pytest-benchmark

Both use the cases of fmkit.bench.kmeans, which is also what `fmkit bench --op kmeans` runs.
"""
import sys

import pytest

from fmkit.bench import quick_contenders

CASES = quick_contenders("kmeans") if "pytest" in sys.modules else []


@pytest.mark.parametrize("shape,name,fn", CASES, ids=[f"{shape}|{name}" for shape, name, _ in CASES])
def test_kmeans(benchmark, shape, name, fn):
    benchmark.group = shape
    benchmark.name = name
    benchmark(fn)


if __name__ == "__main__":
    from fmkit.cli import main

    sys.exit(main(["bench", "--op", "kmeans", *sys.argv[1:]]))
