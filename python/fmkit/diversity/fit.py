"""The diversity law err(K, n) = C₀ + A·K^(−a) + B·n^(−b) fitted to a sweep, the optimal class
count it implies for a larger budget, and the checks that say whether to trust it.

At fixed N = K·n the optimum satisfies a·A·K^(−a) = b·B·n^(−b), so
    K*(N) = (aA / (bB))^(1/(a+b)) · N^(b/(a+b)),   r*(N) = K*²/N ∝ N^((b−a)/(a+b)):
the optimal ratio r* = K/n is independent of N (the paper's claim) exactly when a = b. The
free-exponent fit's a − b, with its bootstrap interval, is therefore reported with every fit.

Fitting follows scaling-law practice: L-BFGS-B (bounded: A, B >= 0, a, b > 0) from a grid of
starts, plain least squares or Huber loss, percentile bootstrap over cells and seeds, and a
hold-out check that fits the smaller budgets and predicts the largest one.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from fmkit.diversity._threads import single_blas_thread

NAMES = ("C0", "A", "B", "a", "b")
_EXP_BOUNDS = (1e-3, 4.0)


class DiversityDriftWarning(UserWarning):
    """The free-exponent fit's a − b interval excludes 0: r* = K*/n* drifts with N."""


class DegenerateFitWarning(UserWarning):
    """A or B is ~0 (error flat in K or in n): K* runs to a bound of the class pool."""


# -- observations ----------------------------------------------------------------------------------


@dataclass
class _Obs:
    K: np.ndarray
    n: np.ndarray
    N: np.ndarray
    err: np.ndarray
    cell: np.ndarray  # index of the (N, K, n) cell of each observation (seeds are observations)

    def subset(self, keep):
        cells = np.unique(self.cell[keep], return_inverse=True)[1]
        return _Obs(self.K[keep], self.n[keep], self.N[keep], self.err[keep], cells)


def _observations(results, task=None) -> _Obs:
    if isinstance(results, dict) or not hasattr(results, "__iter__"):
        raise TypeError(f"results: expected a list of sweep cells (dicts with N, K, n, error), got "
                        f"{type(results).__name__}")
    rows = list(results)
    if not rows:
        raise ValueError("results: is empty")
    K, n, N, err = [], [], [], []
    for i, cell in enumerate(rows):
        if not isinstance(cell, dict) or not {"K", "n", "error"} <= set(cell):
            raise TypeError(f"results[{i}]: expected a dict with K, n and error (a sweep cell), got {cell!r}")
        K.append(cell["K"])
        n.append(cell["n"])
        N.append(cell.get("N", cell["K"] * cell["n"]))
        err.append(_task_error(cell["error"], task, i))
    K, n, N, err = (np.asarray(v, dtype=np.float64) for v in (K, n, N, err))
    if (K < 1).any() or (n < 1).any():
        raise ValueError("results: K and n must be >= 1 in every cell")
    if not np.isfinite(err).all():
        raise ValueError("results: every error must be finite")
    cell = np.unique(np.stack([N, K, n], 1), axis=0, return_inverse=True)[1].reshape(-1)
    return _Obs(K, n, N, err, cell)


def _task_error(error, task, i):
    if isinstance(error, dict):
        if task is None:
            return float(np.mean([float(v) for v in error.values()]))
        if task not in error:
            raise ValueError(f"task: {task!r} is not in results[{i}]['error'] (tasks: {sorted(error)})")
        return float(error[task])
    if task is not None:
        raise ValueError(f"task: {task!r} given, but results[{i}]['error'] is a single number")
    return float(error)


# -- one fit ------------------------------------------------------------------------------------------


def _model(theta, K, n):
    C0, A, B, a, b = theta
    return C0 + A * K ** -a + B * n ** -b


def _objective(x, free, obs, w, loss, delta):
    theta = x if free else np.array([x[0], x[1], x[2], 0.5, 0.5])
    C0, A, B, a, b = theta
    tK, tn = obs.K ** -a, obs.n ** -b
    r = C0 + A * tK + B * tn - obs.err
    if loss == "huber":
        small = np.abs(r) <= delta
        value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
        psi = np.clip(r, -delta, delta)
    else:
        value, psi = 0.5 * r * r, r
    total = w.sum()
    wpsi = w * psi / total
    grad = [wpsi.sum(), (wpsi * tK).sum(), (wpsi * tn).sum()]
    if free:
        grad += [-(wpsi * A * tK * np.log(obs.K)).sum(), -(wpsi * B * tn * np.log(obs.n)).sum()]
    return (w * value).sum() / total, np.array(grad)


def _linear_start(obs, w, a, b):
    """(C0, A, B) by weighted least squares with a, b fixed (A, B clipped to >= 0): a start."""
    X = np.stack([np.ones_like(obs.K), obs.K ** -a, obs.n ** -b], 1) * np.sqrt(w)[:, None]
    coef = np.linalg.lstsq(X, obs.err * np.sqrt(w), rcond=None)[0]
    coef[1:] = np.maximum(coef[1:], 0)
    return np.array([coef[0], coef[1], coef[2], a, b])


def _fit_once(obs, w, free, loss, delta, starts):
    bounds = [(None, None), (0, None), (0, None)] + ([_EXP_BOUNDS] * 2 if free else [])
    best = None
    for start in starts:
        x0 = start if free else start[:3]
        # Scaled to 1 at the start: L-BFGS-B's stopping rule is relative only for |f| > 1.
        scale = max(_objective(x0, free, obs, w, loss, delta)[0], 1e-300)

        def scaled(x):
            value, grad = _objective(x, free, obs, w, loss, delta)
            return value / scale, grad / scale

        res = minimize(scaled, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-10})
        fun = res.fun * scale
        if best is None or fun < best[1]:
            best = (res.x, fun)
    x = best[0]
    return (x if free else np.array([x[0], x[1], x[2], 0.5, 0.5])), float(best[1])


def _point_fit(obs, w, free, loss, delta):
    grid = (0.25, 0.5, 1.0) if free else (0.5,)
    starts = [_linear_start(obs, w, a, b) for a in grid for b in grid]
    losses = [_objective(s if free else s[:3], free, obs, w, "l2", 1.0)[0] for s in starts]
    starts = [starts[i] for i in np.argsort(losses)[:4]]
    return _fit_once(obs, w, free, loss, delta, starts)


def _huber_delta(obs, w, free):
    """Huber's 1.345 σ, σ from the median absolute residual of the least-squares fit."""
    theta, _ = _point_fit(obs, w, free, "l2", 1.0)
    r = _model(theta, obs.K, obs.n) - obs.err
    sigma = 1.4826 * np.median(np.abs(r - np.median(r)))
    return max(1.345 * sigma, 1e-12)


def _bootstrap(obs, free, loss, delta, theta0, n_boot, rng):
    """Percentile-bootstrap replicates: cells drawn with replacement, then seeds within each."""
    cells = np.unique(obs.cell)
    members = [np.flatnonzero(obs.cell == c) for c in cells]
    out = np.empty((n_boot, 5))
    for i in range(n_boot):
        w = np.zeros(len(obs.K))
        for c in rng.integers(0, len(cells), len(cells)):
            np.add.at(w, rng.choice(members[c], len(members[c])), 1.0)
        out[i] = _fit_once(obs, w, free, loss, delta, [theta0])[0]
    return out


# -- the public fit ---------------------------------------------------------------------------------


@dataclass
class DiversityFit:
    """Result of `fit_diversity_law`. `ci` maps C0, A, B, a, b, r_star, a_minus_b to (low, high)."""

    C0: float
    A: float
    B: float
    a: float
    b: float
    exponents: str
    loss: str
    huber_delta: float | None
    N_ref: int                       # r_star is r*(N_ref), the largest budget fitted
    r_star: float
    ci: dict
    level: float
    drift: dict                      # the free fit's a − b: value, ci, significant
    holdout: dict | None             # fit on the smaller budgets, errors predicted at the largest
    n_cells: int
    n_obs: int
    budgets: list
    K_max_seen: int
    task: str | None
    rmse: float
    boot: np.ndarray = field(repr=False, default=None)

    @property
    def theta(self) -> np.ndarray:
        return np.array([self.C0, self.A, self.B, self.a, self.b])

    def predict(self, K, n):
        """Fitted error at K classes × n examples (arrays broadcast)."""
        return _model(self.theta, np.asarray(K, dtype=np.float64), np.asarray(n, dtype=np.float64))

    def K_star_at(self, N) -> float:
        """Unrounded, uncapped K*(N) of the closed form (inf / 0 when B / A is 0)."""
        return _K_star(self.theta, N)

    def r_star_at(self, N) -> float:
        return self.K_star_at(N) ** 2 / N

    def summary(self) -> str:
        def ci(name):
            lo, hi = self.ci.get(name, (math.nan, math.nan))
            return f"[{lo:.4g}, {hi:.4g}]"
        lines = [f"diversity law ({self.exponents} exponents, {self.loss} loss"
                 + (f", delta={self.huber_delta:.3g}" if self.loss == "huber" else "")
                 + f"): {self.n_cells} cells, {self.n_obs} runs, N in {self.budgets}"
                 + (f", task {self.task}" if self.task else "")]
        for name in NAMES:
            lines.append(f"  {name:<3} = {getattr(self, name):.4g}  {int(self.level * 100)}% CI {ci(name)}")
        lines.append(f"  r*  = K*/n* = {self.r_star:.4g} at N={self.N_ref}  CI {ci('r_star')}")
        d = self.drift
        verdict = ("r* drifts with N (a != b): extrapolate with care" if d["significant"]
                   else "consistent with a = b (r* invariant in N)")
        lines.append(f"  drift a - b = {d['a_minus_b']:.3g}  CI [{d['ci'][0]:.3g}, {d['ci'][1]:.3g}]  ({verdict})")
        lines.append(f"  fit RMSE {self.rmse:.4g}")
        if self.holdout:
            h = self.holdout
            lines.append(f"  hold-out: fitted N<{h['N']}, predicted N={h['N']}: MAE {h['mae']:.4g}, max "
                         f"{h['max_abs']:.4g} (observed mean error {h['observed_mean']:.4g}); best K predicted "
                         f"{h['predicted_best_K']}, observed {h['observed_best_K']}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "boot"}
        out["ci"] = {k: list(v) for k, v in self.ci.items()}
        return out


def fit_diversity_law(results, exponents: str = "free", n_boot: int = 1000, seed: int = 0,
                      loss: str = "l2", huber_delta: float | None = None, task: str | None = None,
                      holdout: bool = True, level: float = 0.95) -> DiversityFit:
    """Fits err = C₀ + A·K^(−a) + B·n^(−b) to sweep cells (dicts with N, K, n, error).

    exponents: "free" fits a and b; "half" fixes a = b = 1/2 (then a free fit runs beside it for
        the a − b diagnostic, which every fit reports).
    loss: "l2" (least squares) or "huber" (robust; delta defaults to 1.345 σ of the l2 residuals).
    n_boot: percentile-bootstrap replicates over cells and seeds (0: no intervals).
    task: which task's error when cells hold {task: error} (default: their mean).
    holdout: with two or more budgets, also fit without the largest and report how well that
        fit predicts the largest budget's cells (the extrapolation the method relies on).
    """
    if exponents not in ("free", "half"):
        raise ValueError(f"exponents: expected 'free' or 'half', got {exponents!r}")
    if loss not in ("l2", "huber"):
        raise ValueError(f"loss: expected 'l2' or 'huber', got {loss!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"n_boot: expected an integer >= 0, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if huber_delta is not None and not huber_delta > 0:
        raise ValueError(f"huber_delta: expected a number > 0, got {huber_delta!r}")
    with single_blas_thread():
        return _fit(results, exponents, n_boot, seed, loss, huber_delta, task, holdout, level)


def _fit(results, exponents, n_boot, seed, loss, huber_delta, task, holdout, level) -> DiversityFit:
    obs = _observations(results, task)
    free = exponents == "free"
    n_cells = len(np.unique(obs.cell))
    need = 5 if free else 3
    if n_cells < need + 1:
        raise ValueError(f"results: {n_cells} distinct (N, K, n) cells; the {exponents}-exponent fit needs at least "
                         f"{need + 1}")
    if len(np.unique(obs.K)) < 2 or len(np.unique(obs.n)) < 2:
        raise ValueError("results: K and n must each take at least two values to separate the two terms")
    rng = np.random.default_rng(seed)
    w = np.ones(len(obs.K))
    delta = (huber_delta or _huber_delta(obs, w, free)) if loss == "huber" else None
    theta, _ = _point_fit(obs, w, free, loss, delta)
    N_ref = int(obs.N.max())
    boot = _bootstrap(obs, free, loss, delta, theta, n_boot, rng) if n_boot else np.empty((0, 5))
    alpha = (1 - level) / 2

    def interval(values):
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return (math.nan, math.nan)
        return tuple(float(v) for v in np.quantile(values, [alpha, 1 - alpha]))

    ci = {name: interval(boot[:, i]) for i, name in enumerate(NAMES)}
    r_boot = np.array([_K_star(t, N_ref) ** 2 / N_ref for t in boot])
    ci["r_star"] = interval(r_boot)
    # The drift diagnostic always comes from free exponents.
    if free:
        free_theta, free_boot = theta, boot
    else:
        free_delta = (huber_delta or _huber_delta(obs, w, True)) if loss == "huber" else None
        free_theta, _ = _point_fit(obs, w, True, loss, free_delta)
        free_boot = _bootstrap(obs, True, loss, free_delta, free_theta, n_boot, rng) if n_boot else np.empty((0, 5))
    drift_ci = interval(free_boot[:, 3] - free_boot[:, 4])
    significant = bool(drift_ci[0] > 0 or drift_ci[1] < 0)
    drift = {"a": float(free_theta[3]), "b": float(free_theta[4]), "a_minus_b": float(free_theta[3] - free_theta[4]),
             "ci": list(drift_ci), "significant": significant}
    ci["a_minus_b"] = drift_ci
    if significant:
        warnings.warn(f"the free-exponent fit gives a - b = {drift['a_minus_b']:.3g} with {int(level * 100)}% CI "
                      f"[{drift_ci[0]:.3g}, {drift_ci[1]:.3g}], which excludes 0: the optimal ratio r* = K/n drifts "
                      "with N, so K* extrapolated from small budgets is less reliable", DiversityDriftWarning,
                      stacklevel=4)
    held = _holdout(obs, free, loss, delta) if holdout else None
    return DiversityFit(
        C0=float(theta[0]), A=float(theta[1]), B=float(theta[2]), a=float(theta[3]), b=float(theta[4]),
        exponents=exponents, loss=loss, huber_delta=delta, N_ref=N_ref, r_star=_K_star(theta, N_ref) ** 2 / N_ref,
        ci=ci, level=level, drift=drift, holdout=held, n_cells=n_cells, n_obs=len(obs.K),
        budgets=sorted(int(v) for v in np.unique(obs.N)), K_max_seen=int(obs.K.max()), task=task,
        rmse=float(np.sqrt(np.mean((_model(theta, obs.K, obs.n) - obs.err) ** 2))), boot=boot)


def _holdout(obs, free, loss, delta):
    budgets = np.unique(obs.N)
    if len(budgets) < 2:
        return None
    top = budgets[-1]
    train = obs.N < top
    sub = obs.subset(train)
    need = 6 if free else 4
    if len(np.unique(sub.cell)) < need or len(np.unique(sub.K)) < 2 or len(np.unique(sub.n)) < 2:
        return None
    theta, _ = _point_fit(sub, np.ones(len(sub.K)), free, loss, delta)
    test = ~train
    pred = _model(theta, obs.K[test], obs.n[test])
    errors = pred - obs.err[test]
    Ks = np.unique(obs.K[test])
    observed = [obs.err[test][obs.K[test] == k].mean() for k in Ks]
    predicted = [pred[obs.K[test] == k].mean() for k in Ks]
    return {"N": int(top), "fitted_N": sorted(int(v) for v in np.unique(sub.N)),
            "mae": float(np.abs(errors).mean()), "rmse": float(np.sqrt((errors ** 2).mean())),
            "max_abs": float(np.abs(errors).max()), "observed_mean": float(obs.err[test].mean()),
            "predicted_best_K": int(Ks[int(np.argmin(predicted))]),
            "observed_best_K": int(Ks[int(np.argmin(observed))]),
            "K_star_closed_form": float(_K_star(theta, top)), "theta": [float(v) for v in theta]}


def _K_star(theta, N) -> float:
    C0, A, B, a, b = theta
    if A <= 0 and B <= 0:
        return math.nan
    if B <= 0:
        return math.inf
    if A <= 0:
        return 0.0
    return math.exp((math.log(a * A) - math.log(b * B)) / (a + b) + b / (a + b) * math.log(N))


# -- prediction ---------------------------------------------------------------------------------------


@dataclass
class OptimalClasses:
    """Result of `predict_optimal_classes`: K* classes × n* = N // K* examples for budget N."""

    N: int
    K_star: int
    n_star: int
    K_star_exact: float        # closed form, before rounding and capping
    r_star: float              # K*/n* of the closed form at N
    capped: bool
    K_ci: tuple                # from the fit's bootstrap replicates, rounded and capped the same way
    predicted_error: float
    default_K: int             # all classes (K_max), the usual default
    default_error: float
    warnings: list

    def summary(self) -> str:
        return (f"N={self.N}: K*={self.K_star} classes x n*={self.n_star} (closed form {self.K_star_exact:.4g}"
                f"{', capped' if self.capped else ''}; CI {self.K_ci[0]}..{self.K_ci[1]}); predicted error "
                f"{self.predicted_error:.4g} vs {self.default_error:.4g} with all {self.default_K} classes")


def predict_optimal_classes(fit: DiversityFit, N_target: int, K_max: int | None = None) -> OptimalClasses:
    """K* = round((aA/(bB))^(1/(a+b)) · N^(b/(a+b))), the closer-to-optimal of floor and ceil,
    clipped to [1, min(K_max, N_target)], and n* = N_target // K*."""
    if not isinstance(fit, DiversityFit):
        raise TypeError(f"fit: expected a DiversityFit from fit_diversity_law, got {type(fit).__name__}")
    if isinstance(N_target, bool) or not isinstance(N_target, (int, np.integer)) or N_target < 1:
        raise ValueError(f"N_target: expected an integer >= 1, got {N_target!r}")
    if K_max is not None and (isinstance(K_max, bool) or not isinstance(K_max, (int, np.integer)) or K_max < 1):
        raise ValueError(f"K_max: expected an integer >= 1 (the classes available), got {K_max!r}")
    N_target = int(N_target)
    cap = min(int(K_max), N_target) if K_max is not None else N_target
    notes = []
    exact = _K_star(fit.theta, N_target)
    if fit.A <= 1e-12 * max(fit.B, 1e-300) or fit.B <= 1e-12 * max(fit.A, 1e-300) or not math.isfinite(exact):
        notes.append(f"degenerate fit (A={fit.A:.3g}, B={fit.B:.3g}): the error does not depend on one of K, n, "
                     f"so K* is clipped to [1, {cap}]")
        warnings.warn(notes[-1], DegenerateFitWarning, stacklevel=2)
    if fit.drift["significant"]:
        notes.append(f"a - b = {fit.drift['a_minus_b']:.3g} is significant: r* drifts with N")
        warnings.warn(notes[-1] + "; the extrapolated K* is less reliable", DiversityDriftWarning, stacklevel=2)
    K_star = _round_K(fit.theta, exact, N_target, cap)
    capped = not exact <= cap  # also when the closed form is inf or nan
    if K_max is not None and math.isfinite(exact) and exact > K_max:
        notes.append(f"K*={exact:.4g} exceeds the {K_max} available classes: capped")
    boot_K = [_round_K(t, _K_star(t, N_target), N_target, cap) for t in (fit.boot if fit.boot is not None else [])]
    alpha = (1 - fit.level) / 2
    K_ci = tuple(int(v) for v in np.quantile(boot_K, [alpha, 1 - alpha], method="nearest")) if boot_K else (K_star,
                                                                                                            K_star)
    return OptimalClasses(
        N=N_target, K_star=K_star, n_star=N_target // K_star, K_star_exact=exact,
        r_star=exact ** 2 / N_target if math.isfinite(exact) else exact, capped=bool(capped), K_ci=K_ci,
        predicted_error=float(fit.predict(K_star, N_target / K_star)), default_K=cap,
        default_error=float(fit.predict(cap, N_target / cap)), warnings=notes)


def _round_K(theta, exact, N, cap) -> int:
    if exact != exact:
        return cap
    lo = min(max(int(math.floor(min(exact, cap))), 1), cap)
    hi = min(lo + 1, cap)
    errs = [_model(theta, np.float64(k), np.float64(N / k)) for k in (lo, hi)]
    return lo if errs[0] <= errs[1] else hi


# -- the convex alternative -----------------------------------------------------------------------------


@dataclass
class RatioFit:
    """Result of `fit_ratio_quadratic`: per budget, err ≈ c0 + c1·x + c2·x², x = log(K/n)."""

    per_N: list      # dicts: N, coef, convex, r_star, n_K
    r_star: float    # geometric mean of the convex budgets' r*
    task: str | None

    def summary(self) -> str:
        lines = [f"quadratic in log(K/n): r* = {self.r_star:.4g} (geometric mean over budgets)"]
        for p in self.per_N:
            note = "" if p["convex"] else " (not convex: best grid point)"
            lines.append(f"  N={p['N']}: r*={p['r_star']:.4g}{note}")
        return "\n".join(lines)


def fit_ratio_quadratic(results, task: str | None = None) -> RatioFit:
    """Per budget N, a least-squares quadratic in x = log(K/n) through the cells' mean errors,
    and its argmin r* = exp(x*) (the best grid point when the quadratic is not convex)."""
    obs = _observations(results, task)
    per_N = []
    for N in np.unique(obs.N):
        at = obs.N == N
        x = np.log(obs.K[at] / obs.n[at])
        xs = np.unique(x)
        if len(xs) < 3:
            raise ValueError(f"results: N={int(N)} has {len(xs)} distinct K/n; a quadratic needs at least 3")
        y = np.array([obs.err[at][x == v].mean() for v in xs])
        c2, c1, c0 = np.polyfit(xs, y, 2)
        convex = bool(c2 > 0)
        x_star = -c1 / (2 * c2) if convex else xs[int(np.argmin(y))]
        if convex and not xs[0] <= x_star <= xs[-1]:
            warnings.warn(f"N={int(N)}: the quadratic's minimum log(K/n)={x_star:.3g} lies outside the swept range "
                          f"[{xs[0]:.3g}, {xs[-1]:.3g}]; widen the K grid", RuntimeWarning, stacklevel=2)
        per_N.append({"N": int(N), "coef": [float(c0), float(c1), float(c2)], "convex": convex,
                      "r_star": float(np.exp(x_star)), "n_K": int(len(xs))})
    convex = [p["r_star"] for p in per_N if p["convex"]] or [p["r_star"] for p in per_N]
    return RatioFit(per_N=per_N, r_star=float(np.exp(np.mean(np.log(convex)))), task=task)
