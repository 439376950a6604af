"""Plain-PyTorch PGD step: the oracle of fmkit.ops.pgd_step_ (spec: shared/specs/adversarial.md §1.1, §2.3).

Per sample b (norms over all non-batch dims, C(v) = clamp(v, lo, hi)):

    linf (torchattacks PGD):   x' = x + a sign(g);            d = clamp(x' - x0, -eps, eps);      x <- C(x0 + d)
    l2   (torchattacks PGDL2): x' = x + a g / (|g|_2 + 1e-10); d = x' - x0;
                               d <- d min(1, eps / |d|_2);                                        x <- C(x0 + d)
    l1   (fmkit's definition): x' = x + a g / (|g|_1 + 1e-10); d = x' - x0;
                               d <- P_eps(d) (Euclidean projection onto the L1 ball, exact sort-based
                               algorithm of Duchi et al. 2008);                                   x <- C(x0 + d)

sign(0) = 0. eps = inf never projects. Samples with active[b] = False are left unchanged.
16-bit inputs are computed in fp32 and rounded once on store (as the kernels do). No host sync:
every step is a tensor op, so a loop can be captured in a CUDA graph.
"""
from __future__ import annotations

import torch

EPS_DIV = 1e-10  # torchattacks PGDL2 eps_for_division


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def pgd_step_values(x, g, x0, eps, alpha, norm, lo, hi):
    """The new x (compute dtype) for every sample, ignoring `active`. eps / alpha: [B] tensors."""
    ct = _compute_dtype(x)
    B = x.shape[0]
    view = (B,) + (1,) * (x.dim() - 1)
    x, g, x0 = x.to(ct), g.to(ct), x0.to(ct)
    e, a = eps.to(ct).view(view), alpha.to(ct).view(view)
    if norm == "linf":
        xp = x + a * torch.sign(g)
        d = torch.clamp(xp - x0, min=-e, max=e)
    elif norm == "l2":
        gn = torch.linalg.vector_norm(g.reshape(B, -1), 2, dim=1).view(view) + EPS_DIV
        d = (x + a * (g / gn)) - x0
        dn = torch.linalg.vector_norm(d.reshape(B, -1), 2, dim=1).view(view)
        d = d * torch.clamp(e / dn, max=1.0)  # eps/0 = inf and inf/dn = inf both give factor 1
    elif norm == "l1":
        gn = g.reshape(B, -1).abs().sum(1).view(view) + EPS_DIV
        d = (x + a * (g / gn)) - x0
        d = project_l1_ball(d.reshape(B, -1), eps.to(ct)).view(x.shape)
    else:
        raise ValueError(f"norm: expected 'linf', 'l2' or 'l1', got {norm!r}")
    return torch.clamp(x0 + d, min=lo, max=hi)


def project_l1_ball(d: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Rows of d [B, N] projected onto {v : |v|_1 <= eps_b} (Duchi et al. 2008, sort-based, exact).

    theta_b = (sum_{i <= rho} u_i - eps_b) / rho with u = |d_b| sorted descending and
    rho = #{k : u_k > (sum_{i <= k} u_i - eps_b) / k}; d <- sign(d) max(|d| - theta, 0).
    Rows already inside the ball (and eps = inf) are returned unchanged.
    """
    u = d.abs()
    inside = (u.sum(1) <= eps) | torch.isinf(eps)
    srt, _ = torch.sort(u, dim=1, descending=True)
    css = torch.cumsum(srt, dim=1)
    k = torch.arange(1, d.shape[1] + 1, device=d.device, dtype=d.dtype)
    e = torch.where(torch.isinf(eps), torch.zeros_like(eps), eps)[:, None]
    rho = (srt - (css - e) / k > 0).sum(1, keepdim=True).clamp(min=1)
    theta = (torch.gather(css, 1, rho - 1) - e) / rho.to(d.dtype)
    proj = torch.sign(d) * torch.clamp(u - theta, min=0)
    return torch.where(inside[:, None], d, proj)


def pgd_step_(x, g, x0, eps, alpha, active, norm, lo, hi):
    """In place on x. eps / alpha: [B] tensors, active: bool [B] or None, lo / hi: floats (+-inf: no clamp)."""
    new = pgd_step_values(x, g, x0, eps, alpha, norm, lo, hi).to(x.dtype)
    if active is not None:
        view = (x.shape[0],) + (1,) * (x.dim() - 1)
        new = torch.where(active.view(view), new, x)
    x.copy_(new)
    return x
