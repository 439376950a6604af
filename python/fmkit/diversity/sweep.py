"""The K × n sweep at fixed budgets N₀: one cell per (N, K, n = N // K, seed), each appended to a
JSONL cache as it finishes, so an interrupted sweep resumes where it stopped."""
from __future__ import annotations

import json
import math
import numbers
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable

import numpy as np

from fmkit.diversity._checks import as_labels, positive_int
from fmkit.diversity.sampler import ClassSubsetSampler

CACHE_VERSION = 1


def default_K_grid(labels, N: int, points: int = 7, n_min: int = 2, on_short: str = "raise") -> list[int]:
    """Log-spaced K from the fewest classes the budget allows (n = N // K no larger than the
    classes) up to the most (all classes, or n >= n_min)."""
    y = as_labels(labels, "labels").cpu().numpy()
    counts = np.sort(np.unique(y, return_counts=True)[1])[::-1]  # largest first
    feasible = [K for K in range(1, min(len(counts), N // n_min) + 1)
                if (counts[K - 1] >= N // K if on_short == "skip" else counts[-1] >= N // K)]
    if not feasible:
        raise ValueError(f"N={N}: no K gives n = N // K >= {n_min} with enough classes of at least n examples "
                         f"({len(counts)} classes, sizes {int(counts[-1])}..{int(counts[0])})")
    lo, hi = feasible[0], feasible[-1]
    grid = sorted({int(round(k)) for k in np.geomspace(max(lo, 1), hi, points)})
    return [K for K in grid if K in set(feasible)]


def cell_seed(seed: int, N: int, K: int) -> int:
    """The seed of one cell, from the sweep seed and the cell's place: independent across cells,
    the same on every run (recorded in the cache next to the result)."""
    return int(np.random.SeedSequence([int(seed), int(N), int(K)]).generate_state(1)[0])


def diversity_sweep(labels, N, fn: Callable, K_grid=None, seeds=(0, 1), cache_path: str | None = None,
                    n_jobs: int = 1, on_short: str = "raise", progress: bool = True) -> list[dict]:
    """Runs `fn(indices, seed) -> error | {task: error}` on K classes × n = N // K examples for
    every K of the grid, budget in N and seed in seeds, and returns one dict per cell:
    {"N", "K", "n", "seed", "cell_seed", "error", "seconds"}.

    N: one budget or several (each gets its own default K grid when K_grid is None).
    cache_path: JSONL file; finished cells are read back instead of re-run, and each new cell is
        appended as soon as it finishes. A file that holds cells of other budgets is refused.
    n_jobs: cells run in this many threads (torch releases the GIL in its kernels); each cell's
        sampling and `fn` seed depend only on the cell, so the results do not depend on n_jobs.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable fn(indices, seed) -> error, got {type(fn).__name__}")
    y = as_labels(labels, "labels").cpu().numpy()
    budgets = [N] if isinstance(N, numbers.Integral) else list(N) if isinstance(N, (list, tuple)) else None
    if budgets is None or not budgets:
        raise TypeError(f"N: expected an integer budget or a list of them, got {N!r}")
    budgets = [positive_int(b, "N") for b in budgets]
    seeds = [seeds] if isinstance(seeds, numbers.Integral) else list(seeds)
    if not seeds or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise TypeError(f"seeds: expected integers, got {seeds!r}")
    n_jobs = positive_int(n_jobs, "n_jobs")
    cells = []
    for budget in budgets:
        grid = default_K_grid(y, budget, on_short=on_short) if K_grid is None else _check_grid(K_grid, budget)
        cells += [(budget, K, budget // K, int(s)) for K in grid for s in seeds]
    done = load_results(cache_path, allowed_N=budgets) if cache_path and os.path.exists(cache_path) else []
    finished = {(c["N"], c["K"], c["n"], c["seed"]): c for c in done}
    todo = [c for c in cells if c not in finished]
    lock = threading.Lock()

    def run(cell):
        budget, K, n, seed = cell
        sub_seed = cell_seed(seed, budget, K)
        indices = ClassSubsetSampler(y, K, n, seed=sub_seed, on_short=on_short).indices
        t0 = time.perf_counter()
        error = _check_error(fn(indices, sub_seed), cell)
        record = {"N": budget, "K": K, "n": n, "seed": seed, "cell_seed": sub_seed, "error": error,
                  "seconds": round(time.perf_counter() - t0, 3), "version": CACHE_VERSION}
        if cache_path:
            with lock, open(cache_path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return record

    from tqdm import tqdm

    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="diversity sweep", disable=not progress)
    try:
        if n_jobs == 1:
            for cell in todo:
                finished[cell] = run(cell)
                bar.update()
        else:
            with ThreadPoolExecutor(n_jobs) as pool:
                futures = {pool.submit(run, cell): cell for cell in todo}
                for future in as_completed(futures):
                    finished[futures[future]] = future.result()
                    bar.update()
    finally:
        bar.close()
    return [finished[c] for c in cells]


def load_results(path: str, allowed_N=None) -> list[dict]:
    """The cells of a sweep's JSONL cache. A last line cut short by a crash is dropped (and cut
    from the file, so the next append starts on a fresh line); other unreadable lines raise."""
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no such results file", path)
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    cells = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            cell = json.loads(line)
            _validate_cell(cell)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: line {number} is not a sweep cell ({exc}); expected JSON with N, K, n, seed, "
                             "error") from None
        cells.append(cell)
    if tail.strip():
        try:  # a last cell written completely but without its newline is still a finished cell
            cell = json.loads(tail)
            _validate_cell(cell)
            cells.append(cell)
            with open(path, "ab") as f:
                f.write(b"\n")
        except (ValueError, TypeError, KeyError):
            warnings.warn(f"{path}: dropping a partly written last line (a cell interrupted mid-write); "
                          "that cell will run again", RuntimeWarning, stacklevel=2)
            with open(path, "r+b") as f:
                f.truncate(len(data) - len(tail))
    if allowed_N is not None:
        other = sorted({c["N"] for c in cells} - set(allowed_N))
        if other:
            raise ValueError(f"{path}: holds results for N={other}, but this sweep is for N={sorted(allowed_N)}; "
                             "use another cache file (or include those budgets in N)")
    return cells


def _validate_cell(cell):
    if not isinstance(cell, dict):
        raise TypeError("not a JSON object")
    for key in ("N", "K", "n", "seed"):
        if not isinstance(cell[key], int) or isinstance(cell[key], bool):
            raise TypeError(f"{key} is not an integer")
    if cell["K"] * cell["n"] > cell["N"] or cell["K"] < 1 or cell["n"] < 1:
        raise ValueError(f"K={cell['K']} × n={cell['n']} does not fit N={cell['N']}")
    _check_error(cell["error"], None)


def _check_error(error, cell):
    where = f"fn returned {error!r} for cell N={cell[0]} K={cell[1]} n={cell[2]} seed={cell[3]}" if cell else \
        f"error {error!r}"
    if isinstance(error, dict):
        if not error:
            raise TypeError(f"{where}: expected a number or a non-empty {{task: error}} dict")
        return {str(task): _finite(value, where) for task, value in error.items()}
    return _finite(error, where)


def _finite(value, where):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            value = float(value)  # a 0-d tensor or numpy scalar
        except (TypeError, ValueError):
            raise TypeError(f"{where}: expected a number or a {{task: error}} dict") from None
    if not math.isfinite(float(value)):
        raise ValueError(f"{where}: the error must be finite")
    return float(value)


def _check_grid(K_grid, N):
    try:
        grid = sorted({int(k) for k in K_grid if int(k) == k})
    except (TypeError, ValueError):
        raise TypeError(f"K_grid: expected integers, got {K_grid!r}") from None
    if len(grid) != len(list(K_grid)) and len(grid) != len(set(K_grid)):
        raise TypeError(f"K_grid: expected integers, got {K_grid!r}")
    bad = [K for K in grid if K < 1 or K > N]
    if bad:
        raise ValueError(f"K_grid: {bad} outside 1..N={N} (n = N // K must be at least 1)")
    return grid
