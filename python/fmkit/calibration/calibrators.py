"""Post-hoc calibration baselines used by ProCal (arXiv:2306.04590, §6.1 / App. C).

Logit calibrators (``fit(logits, labels)`` / ``transform(logits)``):
    TemperatureScaling, EnsembleTemperatureScaling, ParameterizedTemperatureScaling (PTS / PTSK).
Probability calibrators (``fit(probs, labels)`` / ``transform(probs)``):
    HistogramBinning, IsotonicCalibration (one-vs-all, netcal style), MultiIsotonic (Mix-n-Match MIR).

Inputs may be torch tensors or numpy arrays (any real dtype); work is done in float64 torch on the
input's device and the result comes back as the same kind as the input (float64). A 2-D input is
[n, C] multi-class; a 1-D input is binary: a logit / probability of class 1 per sample, and the
output is then the calibrated probability of class 1, shape [n].
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from fmkit.calibration._arrays import as_tensor, check_finite, check_labels, check_same_length, like, unit_interval

__all__ = [
    "CalibrationWarning",
    "Calibrator",
    "TemperatureScaling",
    "EnsembleTemperatureScaling",
    "ParameterizedTemperatureScaling",
    "HistogramBinning",
    "IsotonicCalibration",
    "MultiIsotonic",
    "pool_adjacent_violators",
]


# ----------------------------------------------------------------------------------- validation
def _scores(x: Any, name: str, *, probs: bool) -> torch.Tensor:
    t = as_tensor(x, name)
    if t.dim() not in (1, 2):
        raise ValueError(f"{name}: expected a 1-D (binary) or 2-D [n, C] array, got shape {list(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: empty input (0 samples)")
    if t.dim() == 2 and t.shape[1] < 2:
        raise ValueError(f"{name}: expected at least 2 classes (columns), got shape {list(t.shape)}; "
                         "pass binary scores as a 1-D array")
    check_finite(name, t)
    if probs:
        t = unit_interval(name, t)
    return t


def _labels(y: Any, name_x: str, x: torch.Tensor, n_classes: int) -> torch.Tensor:
    lab = as_tensor(y, "labels", dtype=None)
    if lab.dim() != 1:
        raise ValueError(f"labels: expected a 1-D array of class indices, got shape {list(lab.shape)}")
    if lab.is_complex():
        raise ValueError(f"labels: expected integer class labels, got {lab.dtype}")
    if lab.dtype == torch.bool:
        lab = lab.to(torch.int64)
    check_same_length(name_x, x, "labels", lab)
    if lab.dtype.is_floating_point:
        check_finite("labels", lab)
    return check_labels("labels", lab, n_classes).to(x.device)


def _binary_logits(z: torch.Tensor) -> torch.Tensor:
    # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)], so binary logits reuse the multi-class code.
    return torch.stack([torch.zeros_like(z), z], dim=1)


def _binary_probs(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([1.0 - p, p], dim=1)


def _renormalize(p: torch.Tensor) -> torch.Tensor:
    s = p.sum(dim=1, keepdim=True)
    # A row every one-vs-all map sent to 0 carries no information: uniform instead of 0/0 = NaN.
    uniform = torch.full_like(p, 1.0 / p.shape[1])
    return torch.where(s > 0, p / s.clamp_min(torch.finfo(p.dtype).tiny), uniform)


def _one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, n_classes).to(torch.float64)


def _require_scipy(what: str):
    try:
        import scipy.optimize  # noqa: F401
    except ImportError as exc:  # pragma: no cover - scipy is present in the dev environment
        raise ImportError(f"{what} needs scipy (pip install scipy)") from exc
    return scipy.optimize


def _nll_beta_minimiser(z: torch.Tensor, y: torch.Tensor, b_lo: float, b_hi: float, max_iter: int) -> float:
    """argmin over beta in [b_lo, b_hi] of mean_i(logsumexp(beta z_i) - beta z_iy): the NLL at T = 1/beta.

    The NLL is a log-sum-exp of functions linear in beta, hence convex in beta: its derivative g
    is non-decreasing and the bounded minimum is where g changes sign, or a bound. Safeguarded
    Newton keeps a bracket [lo, hi] that holds that point; g == 0 ends the search before anything
    else. A Newton step that leaves the bracket tries the bound itself while that side is still
    unexplored (so an optimum at a bound costs one evaluation), else geometric bisection, which is
    also used when Newton stops halving its displacement (rounding noise near the optimum).
    """
    # On the CPU numpy does all the work: these ops are too small for threads, and torch's intra-op
    # threads made each one 10-50x slower on a busy 2-core machine (issue 12.1).
    if z.device.type == "cpu":
        z, y, exp = z.numpy(), y.numpy(), np.exp
    else:
        exp = torch.exp
    n = z.shape[0]
    # softmax(beta z_i) and g do not change when a row is shifted. With each row's max at 0, exp(beta z)
    # cannot overflow, every row sum is >= 1, and E[z^2] - E[z]^2 cancels only where p is concentrated
    # near 0, so the variance stays accurate.
    z = z - z.max(1, keepdims=True) if exp is np.exp else z - z.amax(1, keepdim=True)
    mean_zy = float(z[range(n), y].sum()) / n
    zz = z * z

    def grad_hess(beta: float) -> tuple[float, float]:
        e = exp(beta * z)
        s0 = e.sum(1)
        ez = (e * z).sum(1) / s0
        ez2 = (e * zz).sum(1) / s0
        return float(ez.sum()) / n - mean_zy, max(float((ez2 - ez * ez).sum()), 0.0) / n

    lo, hi = b_lo, b_hi
    lo_seen = hi_seen = False  # whether g < 0 at lo / g > 0 at hi has been observed
    beta = min(max(1.0, lo), hi)  # T = 1, where the released code starts
    moved = float("inf")
    for _ in range(max_iter):
        g, h = grad_hess(beta)
        if g == 0:
            return beta
        if g > 0:
            hi, hi_seen = beta, True
        else:
            lo, lo_seen = beta, True
        if lo >= hi:  # g > 0 at the lower bound or g < 0 at the upper one
            return beta
        step = beta - g / h if h > 0 else float("nan")
        if abs(step - beta) <= 1e-12 * beta:  # converged (the step may even round to beta itself)
            return min(max(step, lo), hi)
        if not lo < step < hi:
            if step >= hi and not hi_seen:
                step = hi
            elif step <= lo and not lo_seen:
                step = lo
            else:
                step = (lo * hi) ** 0.5
        elif abs(step - beta) > 0.5 * moved:
            step = (lo * hi) ** 0.5
        moved, beta = abs(step - beta), step
        if hi - lo <= 1e-12 * hi:  # bisection alone has closed the bracket
            break
    return beta


class CalibrationWarning(UserWarning):
    """A calibrator made the fit data's NLL worse than no calibration at all."""


def _mean_nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    return float(-torch.log(probs.gather(1, y[:, None]).clamp_min(torch.finfo(probs.dtype).tiny)).mean())


def warn_if_nll_rises(name: str, logits: torch.Tensor, probs: torch.Tensor, y: torch.Tensor, where: str) -> bool:
    """Warns (CalibrationWarning naming `name`) when `probs` have a higher mean NLL on labels `y`
    than softmax(`logits`), the uncalibrated model; returns whether it warned."""
    before, after = _mean_nll(torch.softmax(logits, dim=1), y), _mean_nll(probs, y)
    if after > before:
        warnings.warn(f"{name}: calibration raised the NLL on {where} from {before:.4f} (uncalibrated) to "
                      f"{after:.4f}; the calibrated probabilities are worse than the model's own",
                      CalibrationWarning, stacklevel=3)
        return True
    return False


# ---------------------------------------------------------------------------------- base class
class Calibrator:
    """Common protocol: ``fit(x, labels) -> self``, ``transform(x) -> probs``, ``fit_transform``.

    ``input_kind`` is "logits" or "probs" and names the first argument in error messages.
    After fit, ``n_classes_`` is C (2 for 1-D binary input) and ``binary_`` says whether fit saw 1-D input.
    """

    input_kind = "logits"

    def fit(self, x, labels, *args, **kwargs) -> "Calibrator":  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, x, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def fit_transform(self, x, labels, *args, **kwargs):
        return self.fit(x, labels, *args, **kwargs).transform(x, *args, **kwargs)

    # Returns the input as [n, C] float64 plus labels; records the class count for transform.
    def _fit_inputs(self, x, labels) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.input_kind
        t = _scores(x, name, probs=name == "probs")
        self.binary_ = t.dim() == 1
        t2 = (_binary_probs(t) if name == "probs" else _binary_logits(t)) if self.binary_ else t
        self.n_classes_ = int(t2.shape[1])
        lab = _labels(labels, name, t, self.n_classes_)
        return t2, lab

    def _transform_input(self, x) -> torch.Tensor:
        if not getattr(self, "_fitted", False):
            raise ValueError(f"{type(self).__name__}: not fitted; call fit first")
        name = self.input_kind
        t = _scores(x, name, probs=name == "probs")
        if self.binary_ and t.dim() != 1:
            raise ValueError(f"{name}: fit saw 1-D binary input, transform got shape {list(t.shape)}")
        if not self.binary_ and (t.dim() != 2 or t.shape[1] != self.n_classes_):
            raise ValueError(f"{name}: expected [n, {self.n_classes_}] as in fit ({self.n_classes_} classes), "
                             f"got shape {list(t.shape)}")
        if self.binary_:
            return _binary_probs(t) if name == "probs" else _binary_logits(t)
        return t

    def _output(self, x, probs: torch.Tensor):
        return like(x, probs[:, 1] if self.binary_ else probs)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_"))
        return f"{type(self).__name__}({params})"


# -------------------------------------------------------------------------------- temperature
class TemperatureScaling(Calibrator):
    """Temperature scaling: softmax(z / T) with one scalar T > 0 minimising the mean NLL.

    Defaults: ``max_iter=100``, ``bounds=(1e-2, 1e2)`` on T.
    The released code ([R:ts]) runs scipy BFGS on T from T = 1 with sklearn ``log_loss``. Here the
    same objective is minimised exactly over ``bounds``: the NLL is not convex in T but is convex in
    beta = 1/T, so a safeguarded Newton iteration on beta (analytic gradient / Hessian, bracket kept,
    geometric bisection when a step leaves it) finds the bounded minimum in about 6 evaluations
    (scipy's bounded Brent needs about 18) and cannot wander to T <= 0. If the minimum lies outside
    ``bounds`` (e.g. perfectly separable data, where the NLL keeps falling as T -> 0) T stops at the bound.
    Attribute: ``temperature_``.
    """

    def __init__(self, max_iter: int = 100, bounds: tuple[float, float] = (1e-2, 1e2)):
        self.max_iter = max_iter
        self.bounds = bounds

    def fit(self, logits, labels) -> "TemperatureScaling":
        lo_t, hi_t = self.bounds
        if not (0 < lo_t <= hi_t):
            raise ValueError(f"bounds: need 0 < lower <= upper, got {self.bounds}")
        z, y = self._fit_inputs(logits, labels)
        self.temperature_ = 1.0 / _nll_beta_minimiser(z, y, 1.0 / hi_t, 1.0 / lo_t, self.max_iter)
        self._fitted = True
        return self

    def transform(self, logits):
        z = self._transform_input(logits)
        return self._output(logits, torch.softmax(z / self.temperature_, dim=1))


class EnsembleTemperatureScaling(Calibrator):
    """Mix-n-Match ensemble temperature scaling (Zhang et al. 2020), as in ProCal [R:ets].

    p = w0 * softmax(z / T) + w1 * softmax(z) + w2 / C.
    T minimises the Brier-style MSE mean((softmax(z/T) - onehot)^2) by L-BFGS-B on T in
    ``t_bounds=(0.05, 5)`` from T = 1 with tol 1e-12; then w minimises the same MSE of the mixture over
    the simplex by SLSQP from (1, 0, 0), tol 1e-12. As in the reference; deviations: analytic gradients
    (the reference uses finite differences), and the SLSQP result is clipped to >= 0 and renormalised
    so ``weights_`` is exactly on the simplex. Needs scipy. Attributes: ``temperature_``, ``weights_``.
    """

    def __init__(self, t_bounds: tuple[float, float] = (0.05, 5.0)):
        self.t_bounds = t_bounds

    def fit(self, logits, labels) -> "EnsembleTemperatureScaling":
        opt = _require_scipy("EnsembleTemperatureScaling")
        z, y = self._fit_inputs(logits, labels)
        onehot = _one_hot(y, self.n_classes_)

        def mse_t(t_arr):
            t = torch.tensor(float(t_arr[0]), dtype=torch.float64, device=z.device, requires_grad=True)
            loss = ((torch.softmax(z / t, dim=1) - onehot) ** 2).mean()
            (g,) = torch.autograd.grad(loss, t)
            return float(loss.detach()), np.array([float(g)])

        res = opt.minimize(mse_t, np.array([1.0]), jac=True, method="L-BFGS-B",
                           bounds=[tuple(self.t_bounds)], tol=1e-12)
        self.temperature_ = float(np.clip(res.x[0], *self.t_bounds))

        # The mixture MSE is a quadratic form in w; its Gram matrix makes SLSQP's evaluations free.
        comps = self._components(z)
        m = onehot.numel()
        gram = torch.stack([torch.stack([(a * b).sum() for b in comps]) for a in comps]).cpu().numpy() / m
        lin = torch.stack([(a * onehot).sum() for a in comps]).cpu().numpy() / m
        const = float((onehot ** 2).sum()) / m

        def mse_w(w):
            return float(w @ gram @ w - 2 * lin @ w + const), 2 * gram @ w - 2 * lin

        res = opt.minimize(mse_w, np.array([1.0, 0.0, 0.0]), jac=True, method="SLSQP",
                           bounds=[(0.0, 1.0)] * 3, tol=1e-12,
                           constraints={"type": "eq", "fun": lambda w: np.sum(w) - 1.0,
                                        "jac": lambda w: np.ones(3)})
        w = np.clip(res.x, 0.0, None)
        self.weights_ = w / w.sum() if w.sum() > 0 else np.array([1.0, 0.0, 0.0])
        self._fitted = True
        p = sum(float(wi) * c for wi, c in zip(self.weights_, self._components(z)))
        warn_if_nll_rises(type(self).__name__, z, p, y, "the fit data")
        return self

    def _components(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [torch.softmax(z / self.temperature_, dim=1), torch.softmax(z, dim=1),
                torch.full_like(z, 1.0 / z.shape[1])]

    def transform(self, logits):
        z = self._transform_input(logits)
        p = sum(float(w) * c for w, c in zip(self.weights_, self._components(z)))
        return self._output(logits, p)


class ParameterizedTemperatureScaling(Calibrator):
    """Parameterized temperature scaling (PTS, Tomani et al. ECCV'22) and ProCal's PTSK.

    An MLP (``hidden=(5, 5)`` ReLU layers, one linear output) maps the top-``top_k`` sorted logits
    (``top_k=10``; logits clamped to +-100 first) to a per-sample temperature T = |out| clamped to
    [1e-12, 1e12]; p = softmax(z_clamped / T). Trained with Adam, ``epochs=100``, ``batch_size=1000``,
    shuffled each epoch, on the Brier-style MSE mean((p - onehot)^2), as the released [R:pts] code,
    but with ``lr=1e-2`` where the release has 5e-5 (``RELEASE_LR``; ``released()`` builds that).
    The untrained net's |out| is an arbitrary temperature (about 0.2 on ProCal-like problems), and
    at 5e-5 it barely moves in 100 epochs, so the release's settings made a generated 10-class
    problem far worse than no calibration (test ECE 5.4% vs 4.1%, NLL 4.6 vs 0.31; issue 13.7);
    lr=1e-2 trains (ECE 0.8%, NLL 0.17) from 200 samples up. ``fit`` warns (CalibrationWarning)
    when the result has a higher NLL on the fit data than the uncalibrated softmax.

    PTSK: pass a per-sample feature matrix ``extra`` [n, F] to both ``fit`` and ``transform``; it is
    concatenated after the sorted logits (ProCal feeds top_k=5 logits and the 5 neighbour proximities
    exp(-d_k^2)). Deviations: k = min(top_k, C) so small C works; float64 weights; fully deterministic
    given ``seed`` (init under a forked RNG, shuffling from a private generator, global RNG untouched).
    """

    RELEASE_LR = 5e-5

    def __init__(self, top_k: int = 10, hidden: Sequence[int] = (5, 5), epochs: int = 100, lr: float = 1e-2,
                 batch_size: int = 1000, seed: int = 0, logit_clip: float = 100.0,
                 temperature_clip: tuple[float, float] = (1e-12, 1e12)):
        self.top_k = top_k
        self.hidden = tuple(hidden)
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.logit_clip = logit_clip
        self.temperature_clip = temperature_clip

    @classmethod
    def released(cls, **kwargs) -> "ParameterizedTemperatureScaling":
        """The released [R:pts] hyper-parameters (lr=5e-5, 100 epochs, batch 1000); other arguments as usual."""
        return cls(**{"lr": cls.RELEASE_LR, **kwargs})

    def _extra(self, extra, z: torch.Tensor, fitting: bool) -> torch.Tensor | None:
        if extra is None:
            if not fitting and self.n_extra_features_:
                raise ValueError(f"extra: fit was given {self.n_extra_features_} extra features per sample; "
                                 "pass the same to transform")
            return None
        e = as_tensor(extra, "extra", device=z.device)
        if e.dim() == 1:
            e = e[:, None]
        if e.dim() != 2:
            raise ValueError(f"extra: expected a 2-D [n, F] array, got shape {list(e.shape)}")
        check_same_length("logits", z, "extra", e)
        check_finite("extra", e)
        if not fitting and e.shape[1] != self.n_extra_features_:
            raise ValueError(f"extra: expected {self.n_extra_features_} features per sample as in fit, "
                             f"got {e.shape[1]}")
        return e

    def _inputs(self, z: torch.Tensor, e: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        zc = z.clamp(-self.logit_clip, self.logit_clip)
        feats = zc.topk(self.k_, dim=1).values
        if e is not None:
            feats = torch.cat([feats, e], dim=1)
        return zc, feats

    def _temperature(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model_(feats).abs().clamp(*self.temperature_clip)

    def fit(self, logits, labels, extra=None) -> "ParameterizedTemperatureScaling":
        if self.top_k < 1 or self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("top_k, batch_size must be >= 1, epochs >= 0 and lr > 0")
        z, y = self._fit_inputs(logits, labels)
        e = self._extra(extra, z, fitting=True)
        self.n_extra_features_ = 0 if e is None else int(e.shape[1])
        self.k_ = min(self.top_k, self.n_classes_)
        zc, feats = self._inputs(z, e)
        onehot = _one_hot(y, self.n_classes_)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            layers: list[torch.nn.Module] = []
            width = feats.shape[1]
            for h in self.hidden:
                layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
                width = h
            layers.append(torch.nn.Linear(width, 1))
            model = torch.nn.Sequential(*layers).to(dtype=torch.float64)
        self.model_ = model.to(z.device)
        gen = torch.Generator().manual_seed(self.seed)
        optim = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        n = z.shape[0]
        self.loss_history_ = []
        with torch.enable_grad():
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=gen).to(z.device)
                total = 0.0
                for start in range(0, n, self.batch_size):
                    idx = order[start:start + self.batch_size]
                    t = self._temperature(feats[idx])
                    loss = ((torch.softmax(zc[idx] / t, dim=1) - onehot[idx]) ** 2).mean()
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    total += float(loss.detach()) * len(idx)
                self.loss_history_.append(total / n)
        self.model_.eval()
        self._fitted = True
        with torch.no_grad():
            p = torch.softmax(zc / self._temperature(feats), dim=1)
        warn_if_nll_rises(f"{type(self).__name__} ({'PTS' if e is None else 'PTSK'})", z, p, y, "the fit data")
        return self

    def predict_temperature(self, logits, extra=None):
        """Per-sample temperatures [n] (same kind as ``logits``)."""
        z = self._transform_input(logits)
        _, feats = self._inputs(z, self._extra(extra, z, fitting=False))
        with torch.no_grad():
            return like(logits, self._temperature(feats)[:, 0])

    def transform(self, logits, extra=None):
        z = self._transform_input(logits)
        zc, feats = self._inputs(z, self._extra(extra, z, fitting=False))
        with torch.no_grad():
            p = torch.softmax(zc / self._temperature(feats), dim=1)
        return self._output(logits, p)

    def fit_transform(self, logits, labels, extra=None):
        return self.fit(logits, labels, extra).transform(logits, extra)


# ------------------------------------------------------------------------------------ isotonic
def _pav_sequential(s: np.ndarray, w: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ss: list[float] = []
    ws: list[float] = []
    cs: list[int] = []
    for si, wi, ci in zip(s.tolist(), w.tolist(), c.tolist()):
        ss.append(si)
        ws.append(wi)
        cs.append(ci)
        while len(ss) > 1 and ss[-2] / ws[-2] >= ss[-1] / ws[-1]:
            s_last, w_last, c_last = ss.pop(), ws.pop(), cs.pop()
            ss[-1] += s_last
            ws[-1] += w_last
            cs[-1] += c_last
    return np.array(ss), np.array(ws), np.array(cs, dtype=np.int64)


def _pav_blocks(y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PAV as (block values, block lengths); see pool_adjacent_violators."""
    s, w = y * w, w.clone()
    cnt = torch.ones(y.shape[0], dtype=torch.int64, device=y.device)
    while True:
        m = s / w
        # Adjacent blocks with mean_i >= mean_{i+1} share a level in the optimum (for equal means too:
        # a block's last value is <= its level and the next block's first value >= its level), so
        # every maximal non-increasing run of blocks is pooled in one pass.
        viol = m[:-1] >= m[1:]
        if not bool(viol.any()):
            return m, cnt
        start = torch.ones_like(m, dtype=torch.bool)
        start[1:] = ~viol
        gid = torch.cumsum(start, 0) - 1
        g = int(gid[-1]) + 1
        before = m.shape[0]
        s = torch.zeros(g, dtype=s.dtype, device=s.device).index_add_(0, gid, s)
        w = torch.zeros(g, dtype=w.dtype, device=w.device).index_add_(0, gid, w)
        cnt = torch.zeros(g, dtype=cnt.dtype, device=cnt.device).index_add_(0, gid, cnt)
        # Cascades (one merge per pass) would make the passes quadratic; the stack PAV is linear.
        if g > 0.9 * before:
            break
    s_np, w_np, c_np = _pav_sequential(s.cpu().numpy(), w.cpu().numpy(), cnt.cpu().numpy())
    return torch.as_tensor(s_np / w_np, device=y.device), torch.as_tensor(c_np, device=y.device)


def pool_adjacent_violators(y, weights=None) -> torch.Tensor:
    """Weighted least-squares non-decreasing fit to the sequence ``y`` (already in x order).

    Pooling adjacent violators in any order reaches the unique solution, so whole non-increasing
    runs of block means are pooled at once by vectorised torch passes (on y's device); once a pass
    stops paying off, the remaining blocks go through the classic sequential stack PAV.
    Returns float64 fitted values, one per element of ``y``.
    """
    yt = as_tensor(y, "y", ndim=1)
    w = torch.ones_like(yt) if weights is None else as_tensor(weights, "weights", ndim=1, device=yt.device)
    check_same_length("y", yt, "weights", w)
    check_finite("y", yt)
    check_finite("weights", w)
    if yt.numel() == 0:
        return yt
    if bool((w <= 0).any()):
        raise ValueError("weights: must be > 0")
    vals, cnt = _pav_blocks(yt, w)
    return vals.repeat_interleave(cnt)


class _IsotonicMap:
    """Increasing isotonic regression of y on x as sklearn's IsotonicRegression(out_of_bounds='clip').

    Tied x values are merged first (y averaged, weight = multiplicity), PAV runs on the distinct x,
    and prediction interpolates linearly between the fitted (x, value) points, clipping x to the
    fitted range (a single distinct x gives a constant). Only the first and last x of each fitted
    level are kept as knots (as sklearn prunes): the interpolant is unchanged, the lookup much smaller.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        xs, order = torch.sort(x, stable=True)
        ux, inv, counts = torch.unique_consecutive(xs, return_inverse=True, return_counts=True)
        ysum = torch.zeros(ux.shape[0], dtype=torch.float64, device=x.device).index_add_(0, inv, y[order])
        w = counts.to(torch.float64)
        vals, cnt = _pav_blocks(ysum / w, w)
        last = torch.cumsum(cnt, 0) - 1
        first = last - cnt + 1
        keep = torch.stack([torch.ones_like(cnt, dtype=torch.bool), cnt > 1], 1).reshape(-1)
        self.x = torch.stack([ux[first], ux[last]], 1).reshape(-1)[keep]
        self.y = vals.repeat_interleave(2)[keep]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.x.shape[0] == 1:
            return self.y.expand(x.shape).clone()
        xc = x.clamp(self.x[0], self.x[-1])
        hi = torch.searchsorted(self.x, xc, right=True).clamp(1, self.x.shape[0] - 1)
        lo = hi - 1
        x0, x1, y0, y1 = self.x[lo], self.x[hi], self.y[lo], self.y[hi]
        return y0 + (xc - x0) / (x1 - x0) * (y1 - y0)


class IsotonicCalibration(Calibrator):
    """One-vs-all isotonic regression on probabilities, as netcal ``IsotonicRegression()`` used by ProCal.

    For each class c an increasing isotonic map from p_c to 1[y == c] (ties merged, own PAV, linear
    interpolation between fitted points, inputs outside the fitted range clipped — sklearn's
    ``out_of_bounds='clip'``), then rows renormalised to sum 1 (``renormalize=True``; a row whose
    maps all give 0 becomes uniform instead of NaN). 1-D binary input fits one map on p(y=1) and
    returns it without renormalisation. Attribute ``maps_`` (one per class).
    """

    input_kind = "probs"

    def __init__(self, renormalize: bool = True):
        self.renormalize = renormalize

    def fit(self, probs, labels) -> "IsotonicCalibration":
        p, y = self._fit_inputs(probs, labels)
        classes = [1] if self.binary_ else range(self.n_classes_)
        self.maps_ = {c: _IsotonicMap(p[:, c], (y == c).to(torch.float64)) for c in classes}
        self._fitted = True
        return self

    def transform(self, probs):
        p = self._transform_input(probs)
        if self.binary_:
            return like(probs, self.maps_[1](p[:, 1]))
        out = torch.stack([self.maps_[c](p[:, c]) for c in range(self.n_classes_)], dim=1)
        return like(probs, _renormalize(out) if self.renormalize else out)


class MultiIsotonic(Calibrator):
    """Mix-n-Match multi-class isotonic regression (MIR), as ProCal's [R:ets] ``MultiIsotonicRegression``.

    ONE increasing isotonic map fit on all (p_ic, 1[y_i == c]) pairs flattened over classes
    (clipped out of range, as sklearn ``out_of_bounds='clip'``); output map(p) + 1e-9 * p elementwise,
    NOT renormalised (as in the reference; the 1e-9 * p term breaks ties between classes mapped to the
    same level). 1-D binary input is expanded to [1 - p, p] and column 1 of the result returned.
    Attribute ``map_``.
    """

    input_kind = "probs"

    def fit(self, probs, labels) -> "MultiIsotonic":
        p, y = self._fit_inputs(probs, labels)
        self.map_ = _IsotonicMap(p.reshape(-1), _one_hot(y, self.n_classes_).reshape(-1))
        self._fitted = True
        return self

    def transform(self, probs):
        p = self._transform_input(probs)
        out = self.map_(p.reshape(-1)).reshape(p.shape) + 1e-9 * p
        return self._output(probs, out)


# ----------------------------------------------------------------------------------- histogram
class HistogramBinning(Calibrator):
    """One-vs-all histogram binning, as netcal ``HistogramBinning(bins=10)`` used by ProCal.

    Per class c, ``n_bins`` equal-width bins on [0, 1] (intervals [lo, hi), the last closed, as
    np.histogram); each bin maps to the fitted frequency of y == c among fit samples whose p_c fell
    in it. Empty bins keep the bin centre (so the map stays a step function of the bin alone).
    Rows are then renormalised to sum 1 (``renormalize=True``; an all-zero row becomes uniform).
    1-D binary input fits one histogram on p(y=1) and returns it without renormalisation.
    Attributes: ``bin_edges_`` [n_bins + 1], ``bin_values_`` [C, n_bins] (row 1 only used if binary).
    """

    input_kind = "probs"

    def __init__(self, n_bins: int = 10, renormalize: bool = True):
        self.n_bins = n_bins
        self.renormalize = renormalize

    def _bins(self, p: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(p, self.bin_edges_[1:-1].to(p.device), right=True)

    def fit(self, probs, labels) -> "HistogramBinning":
        if int(self.n_bins) != self.n_bins or self.n_bins < 1:
            raise ValueError(f"n_bins: expected a positive integer, got {self.n_bins!r}")
        p, y = self._fit_inputs(probs, labels)
        b, c = int(self.n_bins), self.n_classes_
        self.bin_edges_ = torch.linspace(0.0, 1.0, b + 1, dtype=torch.float64, device=p.device)
        flat = (self._bins(p) + b * torch.arange(c, device=p.device)).reshape(-1)
        hits = _one_hot(y, c).reshape(-1)
        counts = torch.bincount(flat, minlength=b * c).reshape(c, b).to(torch.float64)
        pos = torch.bincount(flat, weights=hits, minlength=b * c).reshape(c, b)
        centres = (0.5 * (self.bin_edges_[:-1] + self.bin_edges_[1:])).expand(c, b)
        self.bin_values_ = torch.where(counts > 0, pos / counts.clamp_min(1), centres)
        self._fitted = True
        return self

    def transform(self, probs):
        p = self._transform_input(probs)
        out = self.bin_values_.gather(1, self._bins(p).T).T
        if self.binary_:
            return like(probs, out[:, 1])
        return like(probs, _renormalize(out) if self.renormalize else out)
