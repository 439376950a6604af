"""kNN benchmarks: fmkit vs faiss and torch mm/cdist + topk, in one process.

    python benchmarks/bench_knn.py [--quick] [--device cuda] [--json PATH]   # the table
    pytest benchmarks/bench_knn.py --benchmark-only                          # pytest-benchmark

Both use the cases of fmkit.bench.knn, which is also what `fmkit bench --op knn` runs.
"""
import sys

import pytest

from fmkit.bench import quick_contenders

CASES = quick_contenders("knn") if "pytest" in sys.modules else []


@pytest.mark.parametrize("shape,name,fn", CASES, ids=[f"{shape}|{name}" for shape, name, _ in CASES])
def test_knn(benchmark, shape, name, fn):
    benchmark.group = shape
    benchmark.name = name
    benchmark(fn)


if __name__ == "__main__":
    from fmkit.cli import main

    sys.exit(main(["bench", "--op", "knn", *sys.argv[1:]]))
