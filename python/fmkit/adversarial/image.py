"""Gradient attacks on continuous inputs: PGD, APGD and APGD-T (AutoAttack), `autoattack` (APGD-CE then
APGD-T; no FAB-T or Square), and Carlini et al.'s target-string attack on vision-language models
(arXiv:2306.15447 §5), all on the fused `fmkit.ops.pgd_step_`.

Every attack works on a closure `loss_fn(x) -> per-sample loss [B]` (or `(loss, success)`), so
models with several inputs, prompts and masks need no adapter. Samples stop individually when
they succeed (the kernel's `active` mask leaves them bit-identical); restarts run as extra rows
of one batch, never as a Python loop over samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fmkit.ops.pgd_step import pgd_step_

NORMS = ("linf", "l2", "l1")


@dataclass
class AttackResult:
    """x_adv [B, ...]; success [B] bool; steps [B] (steps each sample took); loss [B] (final or best)."""

    x_adv: torch.Tensor
    success: torch.Tensor
    steps: torch.Tensor
    loss: torch.Tensor
    distortion: torch.Tensor | None = None  # per-sample l2 distance from the starting point


def _per_sample(v, b, device, name):
    t = torch.as_tensor(v, dtype=torch.float32, device=device)
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{name}: expected a float or a [B] = [{b}] tensor, got shape {list(t.shape)}")
    return t


def _evaluate(loss_fn, x, success_fn, restarts=1):
    """(loss [R B], success [R B] or None). The closure always sees B rows: restarts are evaluated
    one block of B at a time, since the closure owns other per-sample inputs (labels, prompts)."""
    losses, flags = [], []
    for xr in x.chunk(restarts):
        out = loss_fn(xr)
        loss, success = (out if isinstance(out, tuple) else (out, None))
        if loss.dim() != 1 or loss.shape[0] != xr.shape[0]:
            raise ValueError(f"loss_fn: expected a per-sample loss of shape [{xr.shape[0]}], got {list(loss.shape)}")
        if success is None and success_fn is not None:
            with torch.no_grad():
                success = success_fn(xr.detach())
        losses.append(loss)
        flags.append(success)
    success = None if flags[0] is None else torch.cat(flags)
    return torch.cat(losses), success


def sample_random_start(x0, eps, norm, clamp=(0.0, 1.0), generator=None):
    """L-inf: uniform in the box; L2 (and L1): uniform in the ball, delta = eps u^(1/d) z/|z|.

    The L2 start is uniform in the ball (torchattacks' PGDL2 draws u instead of u^(1/d), biased
    toward the centre). eps = inf: a uniform random image in the clamp range (Carlini et al.).
    """
    b = x0.shape[0]
    d = x0[0].numel()
    eps = _per_sample(eps, b, x0.device, "eps")
    lo, hi = clamp if clamp is not None else (0.0, 1.0)
    if bool(torch.isinf(eps).all()):
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float32).to(x0.dtype) * (hi - lo) + lo
    shape = (b,) + (1,) * (x0.dim() - 1)
    if norm == "linf":
        delta = (torch.rand(x0.shape, generator=generator, device=x0.device) * 2 - 1) * eps.view(shape)
    else:
        z = torch.randn(x0.shape, generator=generator, device=x0.device)
        z = z / z.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
        u = torch.rand(b, generator=generator, device=x0.device) ** (1.0 / d)
        delta = z * (eps * u).view(shape)
    x = x0 + delta.to(x0.dtype)
    return x.clamp(lo, hi) if clamp is not None else x


def pgd(loss_fn: Callable, x: torch.Tensor, *, eps, step_size, steps: int, norm: str = "linf",
        random_start: bool = True, restarts: int = 1, targeted: bool = False, success_fn: Callable | None = None,
        clamp=(0.0, 1.0), seed: int = 0, progress: bool = True, backend: str = "auto") -> AttackResult:
    """Projected gradient ascent on `loss_fn` (descent if `targeted`), per-sample early stopping.

    Args:
        loss_fn: x_adv -> per-sample loss [B] or (loss [B], success bool [B]).
        x: clean inputs [B, ...] in the clamp range.
        eps, step_size: floats or [B] tensors; eps = inf is unbounded.
        restarts: independent random starts, run together as R*B rows; per sample the first
            successful restart wins, else the one with the highest final objective.
        success_fn: x_adv -> bool [B], used when loss_fn returns no success flag; successful
            samples stop and are never updated again.
    """
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts: expected a positive integer, got {restarts!r}")
    from tqdm import tqdm

    b = x.shape[0]
    x0 = x.detach().repeat(restarts, *([1] * (x.dim() - 1)))
    eps_r = _per_sample(eps, b, x.device, "eps").repeat(restarts)
    step_r = _per_sample(step_size, b, x.device, "step_size").repeat(restarts)
    g = torch.Generator(device=x.device).manual_seed(seed)
    x_adv = sample_random_start(x0, eps_r, norm, clamp, g) if random_start else x0.clone()
    if bool(torch.isinf(eps_r).all()) and random_start:
        x0 = x_adv.clone()  # unbounded: distortion is measured from the random starting image
    sign = -1.0 if targeted else 1.0
    active = torch.ones(b * restarts, dtype=torch.bool, device=x.device)
    succeeded = torch.zeros(b * restarts, dtype=torch.bool, device=x.device)
    taken = torch.zeros(b * restarts, dtype=torch.long, device=x.device)
    loss = torch.zeros(b * restarts, device=x.device)
    for _ in tqdm(range(steps + 1), desc=f"pgd-{norm}", disable=not progress, leave=False):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss_t, success = _evaluate(loss_fn, x_adv, success_fn, restarts)
            grad, = torch.autograd.grad((sign * loss_t).sum(), x_adv)
        x_adv = x_adv.detach()
        loss = torch.where(active, loss_t.detach().float(), loss)
        if success is not None:
            succeeded |= active & success.to(torch.bool)
            active = active & ~succeeded
        if _ == steps or not bool(active.any()):  # the only host sync: stop when every sample is done
            break
        pgd_step_(x_adv, grad, x0, eps=eps_r, step_size=step_r, norm=norm, active=active, clamp=clamp,
                  backend=backend, validate=False)
        taken += active.long()
    return _pick_restart(x_adv, succeeded, taken, sign * loss, x0, b, restarts, sign)


def _pick_restart(x_adv, success, taken, objective, x0, b, restarts, sign):
    """Per sample: the first successful restart, else the one with the highest objective."""
    success = success.view(restarts, b)
    objective = objective.view(restarts, b)
    first_success = torch.argmax(success.long() * (restarts - torch.arange(restarts, device=x_adv.device))[:, None],
                                 dim=0)
    best = torch.where(success.any(0), first_success, objective.argmax(0))
    rows = best * b + torch.arange(b, device=x_adv.device)
    dist = (x_adv[rows] - x0[rows]).flatten(1).float().norm(dim=1)
    return AttackResult(x_adv[rows], success.any(0), taken[rows], sign * objective.flatten()[rows], dist)


# ---- APGD (Croce & Hein 2020, AutoAttack's APGDAttack) ----

def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample DLR loss (untargeted) or targeted DLR when `target` is given (needs >= 4 classes)."""
    srt = logits.sort(dim=1, descending=True).values
    zy = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return -(zy - other) / (srt[:, 0] - srt[:, 2] + 1e-12)
    zt = logits.gather(1, target[:, None])[:, 0]
    return -(zy - zt) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


def apgd_checkpoints(n_iter: int) -> list[int]:
    """AutoAttack's checkpoint iterations: the first window is max(floor(0.22 N), 1) steps, each
    later one shrinks by max(floor(0.03 N), 1) down to max(floor(0.06 N), 1)."""
    window = max(int(0.22 * n_iter), 1)
    shrink, minimum = max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    points, at = [], 0
    while at + window <= n_iter:
        at += window
        points.append(at)
        window = max(window - shrink, minimum)
    return points


APGD_SCHEDULES = ("autoattack", "paper")


def _check_apgd_args(norm, steps, restarts, schedule):
    if schedule not in APGD_SCHEDULES:
        raise ValueError(f"schedule: expected one of {APGD_SCHEDULES}, got {schedule!r}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm: APGD supports 'linf' and 'l2', got {norm!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts: expected a positive integer, got {restarts!r}")


def _ce_loss(logits, y, target=None):
    return F.cross_entropy(logits, y, reduction="none")


def apgd(model: Callable, x: torch.Tensor, y: torch.Tensor, *, eps, norm: str = "linf", steps: int = 100,
         loss: str = "ce", rho: float = 0.75, restarts: int = 1, seed: int = 0, clamp=(0.0, 1.0),
         schedule: str = "autoattack", progress: bool = True, backend: str = "auto") -> AttackResult:
    """Untargeted APGD on a classifier `model(x) -> logits`: per-sample step size (2 eps), momentum
    0.75 after the first step, checkpoint halving (both AutoAttack conditions), best-loss and
    latest-misclassified tracking; restarts only for points not yet fooled. `steps` in the result
    counts every APGD iteration a sample went through, over all restarts.

    schedule: how the first checkpoint counts loss increases (condition 1 of the step-size rule).
    "autoattack" (default), as AutoAttack's and torchattacks' code: the loss after step 1 is compared
    with an unfilled slot of their loss history, i.e. with 0 (with the DLR loss, negative until a point
    is fooled, step 1 then never counts as an increase). "paper": Algorithm 1 read literally, step 1
    compared with the loss at the starting point. Later checkpoints are the same in both."""
    _check_apgd_args(norm, steps, restarts, schedule)
    if loss not in ("ce", "dlr"):
        raise ValueError(f"loss: expected 'ce' or 'dlr', got {loss!r}")
    everyone = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    runs = [(seed + r, None) for r in range(restarts)]
    return _apgd_runs(model, x, y, everyone, runs, _ce_loss if loss == "ce" else dlr_loss,
                      eps, norm, steps, rho, clamp, schedule, progress, backend)


def _check_targeted(n_classes, n_target_classes):
    # AutoAttack's check_n_classes only warns here and the attack then fails or degenerates; an error is clearer.
    if n_classes < 4:
        raise ValueError(f"model: the targeted DLR loss divides by z_pi1 - (z_pi3 + z_pi4)/2, so APGD-T needs "
                         f"at least 4 classes; the model outputs {n_classes}")
    if isinstance(n_target_classes, bool) or not isinstance(n_target_classes, int) \
            or not 1 <= n_target_classes < n_classes:
        raise ValueError(f"n_target_classes: expected an integer in [1, {n_classes - 1}] (every class but the "
                         f"top one), got {n_target_classes!r}")


def _clean_ranking(model, x, y, n_target_classes):
    """(correct [B], targets [B, n]): targets[:, k] is the class with the (k+2)-th largest clean logit."""
    with torch.no_grad():
        logits = model(x.detach())
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"model: expected logits of shape [{x.shape[0]}, n_classes], got {list(logits.shape)}")
    _check_targeted(logits.shape[1], n_target_classes)
    ranked = logits.argsort(dim=1, descending=True)
    return logits.argmax(1) == y, ranked[:, 1:n_target_classes + 1]


def apgd_targeted(model: Callable, x: torch.Tensor, y: torch.Tensor, *, eps, norm: str = "linf", steps: int = 100,
                  n_target_classes: int = 9, rho: float = 0.75, restarts: int = 1, seed: int = 0,
                  clamp=(0.0, 1.0), schedule: str = "autoattack", progress: bool = True,
                  backend: str = "auto") -> AttackResult:
    """APGD-T (AutoAttack's APGDTargetedAttack): APGD on the targeted DLR loss
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2), once per target rank t = 2 .. n_target_classes + 1
    (and `restarts` times per rank), where a sample's target is the class with its t-th largest logit
    at the clean input. Each run attacks only the points not yet fooled; success is untargeted
    (argmax != y), as in AutoAttack, so hitting any wrong class ends a sample's attack.

    Points misclassified at the clean input are not attacked (their ranking has no meaning as targets):
    success True, x_adv = x, steps 0. For points never fooled, x_adv is the iterate with the highest
    targeted DLR over all runs, and `loss` that value. Needs a model with at least 4 classes and
    1 <= n_target_classes < n_classes (default 9, AutoAttack's, for 10+ classes). `schedule` as in `apgd`.
    """
    _check_apgd_args(norm, steps, restarts, schedule)
    correct, targets = _clean_ranking(model, x, y, n_target_classes)
    runs = [(seed + k * restarts + r, targets[:, k]) for k in range(n_target_classes) for r in range(restarts)]
    res = _apgd_runs(model, x, y, correct, runs, dlr_loss, eps, norm, steps, rho, clamp, schedule, progress,
                     backend)
    res.success |= ~correct
    return res


def autoattack(model: Callable, x: torch.Tensor, y: torch.Tensor, *, eps, norm: str = "linf", version: str = "apgd",
               n_target_classes: int = 9, steps: int = 100, rho: float = 0.75, seed: int = 0, clamp=(0.0, 1.0),
               schedule: str = "autoattack", progress: bool = True, backend: str = "auto") -> AttackResult:
    """The APGD part of AutoAttack: APGD-CE (1 restart), then APGD-T (`n_target_classes` targets,
    1 restart each) on the points still robust. Robust accuracy = 1 - result.success.mean().

    Not the full "standard" AutoAttack: FAB-T and Square (its 3rd and 4th attacks) are not included.
    This matches AutoAttack run with version='custom', attacks_to_run=['apgd-ce', 'apgd-t'], and its
    robust accuracy can only be at least that of the full ensemble (the full one may fool more).

    As in AutoAttack, points misclassified at the clean input count as non-robust with x_adv = x and
    are not attacked, and both attacks use the same `seed`; a sample's random starts do not depend on
    which other samples are attacked, so this fools every point that `apgd(loss="ce")` or
    `apgd_targeted` with the same seed fools. `steps` sums both attacks' iterations; `loss` is the
    CE of APGD-CE for points it fooled (or skipped) and the targeted DLR of APGD-T for the others.
    `schedule` as in `apgd`.
    """
    if version != "apgd":
        raise ValueError(f"version: only 'apgd' (APGD-CE then APGD-T) is implemented; FAB-T and Square of "
                         f"AutoAttack's 'standard' are not, got {version!r}")
    _check_apgd_args(norm, steps, 1, schedule)
    correct, targets = _clean_ranking(model, x, y, n_target_classes)
    ce = _apgd_runs(model, x, y, correct, [(seed, None)], _ce_loss, eps, norm, steps, rho, clamp, schedule,
                    progress, backend)
    robust = correct & ~ce.success
    runs = [(seed + k, targets[:, k]) for k in range(n_target_classes)]
    t = _apgd_runs(model, x, y, robust, runs, dlr_loss, eps, norm, steps, rho, clamp, schedule, progress, backend)
    x_adv = torch.where(_bcast(robust, x), t.x_adv, ce.x_adv)
    return AttackResult(x_adv, ~correct | ce.success | t.success, ce.steps + t.steps,
                        torch.where(robust, t.loss, ce.loss), (x_adv - x).flatten(1).float().norm(dim=1))


def _bcast(v, like):
    return v.view(-1, *([1] * (like.dim() - 1)))


def _apgd_runs(model, x, y, attack, runs, loss_of, eps, norm, steps, rho, clamp, schedule, progress, backend):
    """The loop shared by APGD's restarts and APGD-T's target ranks. runs: [(seed, targets [B] or None)].

    Only the rows in `attack` [B] are attacked, and each run only those not yet fooled. A fooled
    point keeps its first adversarial example; the others keep the iterate with the highest loss.
    Rows never attacked come back as x, unsuccessful, with 0 steps and the first run's loss at x.
    """
    b = x.shape[0]
    eps_t = _per_sample(eps, b, x.device, "eps")
    x_out = x.detach().clone()
    fooled = torch.zeros(b, dtype=torch.bool, device=x.device)
    taken = torch.zeros(b, dtype=torch.long, device=x.device)
    best_loss = torch.full((b,), float("-inf"), device=x.device)
    skipped = (~attack).nonzero().flatten()
    if skipped.numel():
        with torch.no_grad():
            first_target = runs[0][1]
            best_loss[skipped] = loss_of(model(x[skipped]), y[skipped],
                                         None if first_target is None else first_target[skipped]).float()
    for seed, targets in runs:
        todo = (attack & ~fooled).nonzero().flatten()
        if todo.numel() == 0:
            break
        # Draw the start for the whole batch, then take the rows: a sample's run is then the same
        # whichever other samples are still being attacked (so autoattack contains apgd's successes).
        noise = _apgd_start_noise(x, norm, seed)[todo]
        res = _apgd_run(model, x[todo], y[todo], None if targets is None else targets[todo], eps_t[todo], norm,
                        steps, loss_of, rho, noise, clamp, schedule, progress, backend)
        better = res.success | (res.loss > best_loss[todo])
        x_out[todo] = torch.where(_bcast(better, res.x_adv), res.x_adv, x_out[todo])
        best_loss[todo] = torch.maximum(best_loss[todo], res.loss)
        fooled[todo] |= res.success
        taken[todo] += steps
    return AttackResult(x_out, fooled, taken, best_loss, (x_out - x).flatten(1).float().norm(dim=1))


def _apgd_start_noise(x, norm, seed):
    """AutoAttack's random-start directions: t ~ U(-1, 1) for L-inf, t ~ N(0, I) for L2 (scaled in _apgd_run)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    if norm == "linf":
        return torch.rand(x.shape, generator=g, device=x.device) * 2 - 1
    return torch.randn(x.shape, generator=g, device=x.device)


def _apgd_run(model, x, y, target, eps_t, norm, n_iter, loss_of, rho, t, clamp, schedule, progress, backend):
    """One APGD run on every row. loss_of(logits, y, target) -> per-sample loss; target is None
    (untargeted) or this run's per-sample target classes; t is the random-start direction."""
    from tqdm import tqdm

    b = x.shape[0]
    x0 = x.detach()
    if norm == "linf":
        delta = eps_t.view(-1, *[1] * (x.dim() - 1)) * t / t.flatten(1).abs().amax(1).view(-1, *[1] * (x.dim() - 1))
    else:
        delta = eps_t.view(-1, *[1] * (x.dim() - 1)) * t / t.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    x_adv = (x0 + delta).clamp(*clamp)
    zeros = torch.zeros_like(x_adv)

    def loss_grad(xa):
        xa = xa.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xa)
            lv = loss_of(logits, y, target)
            gr, = torch.autograd.grad(lv.sum(), xa)
        return lv.detach(), gr.detach(), logits.detach().argmax(1) != y

    def project(v):
        v = v.clone()
        pgd_step_(v, zeros, x0, eps=eps_t, step_size=0.0, norm=norm, clamp=clamp, backend=backend, validate=False)
        return v

    step = 2.0 * eps_t
    cur_loss, grad, wrong = loss_grad(x_adv)
    best_loss, x_best, grad_best = cur_loss.clone(), x_adv.clone(), grad.clone()
    x_fooled = torch.where(_bcast(wrong, x_adv), x_adv, x0)
    fooled = wrong.clone()
    x_prev = x_adv.clone()
    if schedule == "autoattack":
        # AutoAttack's history slot before step 1 is loss_steps[-1]: still 0 when step 1 is compared,
        # or step 1 itself when n_iter == 1 (never an increase).
        cur_loss = torch.zeros_like(cur_loss) if n_iter > 1 else torch.full_like(cur_loss, float("inf"))
    checkpoints = apgd_checkpoints(n_iter)
    last_k, increases = 0, torch.zeros(b, device=x.device)
    reduced_last = torch.ones(b, dtype=torch.bool, device=x.device)
    best_at_last = best_loss.clone()
    for i in tqdm(range(n_iter), desc=f"apgd-{norm}", disable=not progress, leave=False):
        z = x_adv.clone()
        pgd_step_(z, grad, x0, eps=eps_t, step_size=step, norm=norm, clamp=clamp, backend=backend, validate=False)
        a = 1.0 if i == 0 else 0.75
        x_new = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev))
        x_prev, x_adv = x_adv, x_new
        new_loss, grad, wrong = loss_grad(x_adv)
        x_fooled = torch.where(_bcast(wrong, x_adv), x_adv, x_fooled)
        fooled |= wrong
        increases += (new_loss > cur_loss).float()
        cur_loss = new_loss
        better = new_loss > best_loss
        x_best = torch.where(_bcast(better, x_adv), x_adv, x_best)
        grad_best = torch.where(_bcast(better, grad), grad, grad_best)
        best_loss = torch.where(better, new_loss, best_loss)
        if i + 1 in checkpoints:
            window = i + 1 - last_k
            cond1 = increases <= rho * window
            cond2 = ~reduced_last & (best_at_last >= best_loss)
            halve = cond1 | cond2
            step = torch.where(halve, step / 2, step)
            x_adv = torch.where(_bcast(halve, x_adv), x_best, x_adv)
            grad = torch.where(_bcast(halve, grad), grad_best, grad)
            reduced_last, best_at_last, increases, last_k = halve, best_loss.clone(), torch.zeros_like(increases), i + 1
    x_final = torch.where(_bcast(fooled, x_fooled), x_fooled, x_best)
    return AttackResult(x_final, fooled, torch.full((b,), n_iter, device=x.device), best_loss)


# ---- Carlini et al. target-string attack on vision-language models ----

def teacher_forced_target_loss(logits: torch.Tensor, prompt_len: int, target_ids: torch.Tensor):
    """(summed CE of the target tokens [B], success [B]: argmax equals the target at every position)."""
    m = target_ids.shape[1]
    pred = logits[:, prompt_len - 1 : prompt_len - 1 + m].float()
    ce = F.cross_entropy(pred.transpose(1, 2), target_ids, reduction="none").sum(dim=1)
    return ce, (pred.argmax(-1) == target_ids).all(dim=1)


def target_string_attack(model, images: torch.Tensor, prompt_ids: torch.Tensor, target_ids: torch.Tensor, *,
                         eps=float("inf"), step_size: float = 0.2, steps: int = 500, attention_mask=None,
                         random_init: bool = True, seed: int = 0, progress: bool = True,
                         backend: str = "auto") -> AttackResult:
    """Perturb `images` so that the model's response starts with `target_ids` (teacher-forced).

    model: an `fmkit.flamingo.Flamingo` (images = vision_x [B, T_img, 1, C, H, W]) or any callable
    `model(images, input_ids) -> logits [B, T, V]`. The loss is the summed teacher-forced CE of
    the target tokens; the step is L2-normalised (0.2), unbounded by default (eps = inf, as in
    the paper) with a uniformly random starting image; at most `steps` steps, each sample
    stopping once the argmax reproduces the whole target. `distortion` is the per-sample L2
    distance from the starting image.
    """
    if prompt_ids.dim() != 2 or target_ids.dim() != 2 or prompt_ids.shape[0] != target_ids.shape[0]:
        raise ValueError("prompt_ids, target_ids: expected [B, T_prompt] and [B, m] token ids with the same B")
    if target_ids.shape[1] < 1:
        raise ValueError("target_ids: the target needs at least one token")
    if images.shape[0] != prompt_ids.shape[0]:
        raise ValueError(f"images: batch {images.shape[0]} does not match prompt_ids batch {prompt_ids.shape[0]}")
    ids = torch.cat([prompt_ids, target_ids], dim=1)
    mask = None if attention_mask is None else torch.cat([attention_mask, torch.ones_like(target_ids)], dim=1)
    prompt_len = prompt_ids.shape[1]
    from fmkit.flamingo import Flamingo

    def logits_of(img):
        if isinstance(model, Flamingo):
            return model(img, ids, mask).logits
        return model(img, ids)

    def loss_fn(img):
        return teacher_forced_target_loss(logits_of(img), prompt_len, target_ids)

    return pgd(loss_fn, images, eps=eps, step_size=step_size, steps=steps, norm="l2", random_start=random_init,
               targeted=True, seed=seed, progress=progress, backend=backend)
