"""One BLAS thread for many small dense problems.

scipy's and numpy's OpenBLAS spin-wait between calls; on a busy 2-core machine a bootstrap of
1,000 five-parameter L-BFGS-B fits took 72 s with two BLAS threads and 2.5 s with one.
threadpoolctl (installed with scikit-learn) sets the limit; without it nothing changes.
"""
from __future__ import annotations

import contextlib


def single_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")
