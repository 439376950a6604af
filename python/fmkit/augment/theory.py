"""The paper's linear-regression setting (spec §1.2.1), as a generator and closed-form OOD risks.

Features x = [x_obj (p_obj), x_rob (p_rob), x_spu (p_spu)]. Domain d draws means mu_rob^d, mu_spu^d ~ N(0, tau^2 I);
an example has x_obj ~ N(0, I), x_rob = mu_rob^d + noise, x_spu = mu_spu^d + noise (noise ~ N(0, noise^2 I)),
and y = beta_obj . x_obj + beta_rob . mu_rob^d + N(0, label_noise^2). Spurious coordinates carry no label weight,
but with few domains their per-domain means can explain the domain-level part of y.

Augmentations act on the features exactly as the paper's strategies do on images:
    generic      adds isotropic noise to every feature (leaves the domain means in place)
    targeted     replaces x_spu by a fresh domain mean plus noise (randomises only the spurious part)
    invariant    replaces x_rob and x_spu by fresh draws (randomises every domain-dependent feature)
`ood_risk(w, ...)` is the expected squared error of a linear predictor on a new domain, in closed form.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("unaugmented", "generic", "targeted", "invariant")


@dataclass
class DomainRegression:
    x: torch.Tensor  # [n, p] float64 training features
    y: torch.Tensor  # [n]
    domains: torch.Tensor  # [n] int64
    beta_obj: torch.Tensor
    beta_rob: torch.Tensor
    p_obj: int
    p_rob: int
    p_spu: int
    tau: float
    noise: float
    label_noise: float

    def augment(self, strategy: str, copies: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set with `copies` augmented copies of every example under `strategy`."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
        if strategy == "unaugmented":
            return self.x, self.y
        g = torch.Generator().manual_seed(seed)
        x = self.x.repeat(copies, 1)
        n = x.shape[0]
        o, r = self.p_obj, self.p_obj + self.p_rob
        if strategy == "generic":
            x = x + self.noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
        else:
            first = r if strategy == "targeted" else o
            width = x.shape[1] - first
            fresh = self.tau * torch.randn(n, width, generator=g, dtype=torch.float64)
            x[:, first:] = fresh + self.noise * torch.randn(n, width, generator=g, dtype=torch.float64)
        return x, self.y.repeat(copies)

    def ood_risk(self, w: torch.Tensor) -> float:
        """E[(y - w . x)^2] on an unseen domain (closed form over the domain and example draws)."""
        o, r = self.p_obj, self.p_obj + self.p_rob
        w_obj, w_rob, w_spu = w[:o], w[o:r], w[r:]
        risk = ((w_obj - self.beta_obj) ** 2).sum() + self.tau**2 * ((w_rob - self.beta_rob) ** 2).sum()
        risk = risk + self.noise**2 * (w_rob**2).sum() + (self.tau**2 + self.noise**2) * (w_spu**2).sum()
        return float(risk + self.label_noise**2)


def make_domain_regression(D: int, p_obj: int, p_rob: int, p_spu: int, tau: float, seed: int = 0,
                           n_per_domain: int = 50, noise: float = 0.5, label_noise: float = 0.1) -> DomainRegression:
    """D training domains of n_per_domain examples each (see the module docstring)."""
    for name, v in (("D", D), ("p_obj", p_obj), ("p_rob", p_rob), ("p_spu", p_spu), ("n_per_domain", n_per_domain)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name in ("D", "n_per_domain") else 0):
            raise ValueError(f"{name}: expected a non-negative int (D, n_per_domain >= 1), got {v!r}")
    if not tau > 0:
        raise ValueError(f"tau: expected a value > 0, got {tau!r}")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    beta_obj = torch.randn(p_obj, generator=g, dtype=f64)
    beta_rob = torch.randn(p_rob, generator=g, dtype=f64)
    mu_rob = tau * torch.randn(D, p_rob, generator=g, dtype=f64)
    mu_spu = tau * torch.randn(D, p_spu, generator=g, dtype=f64)
    domains = torch.arange(D).repeat_interleave(n_per_domain)
    n = domains.shape[0]
    x_obj = torch.randn(n, p_obj, generator=g, dtype=f64)
    x_rob = mu_rob[domains] + noise * torch.randn(n, p_rob, generator=g, dtype=f64)
    x_spu = mu_spu[domains] + noise * torch.randn(n, p_spu, generator=g, dtype=f64)
    y = x_obj @ beta_obj + mu_rob[domains] @ beta_rob + label_noise * torch.randn(n, generator=g, dtype=f64)
    return DomainRegression(torch.cat([x_obj, x_rob, x_spu], 1), y, domains, beta_obj, beta_rob, p_obj, p_rob, p_spu,
                            float(tau), float(noise), float(label_noise))


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-3) -> torch.Tensor:
    """argmin_w |y - x w|^2 / n + lam |w|^2 (float64)."""
    n, p = x.shape
    return torch.linalg.solve(x.T @ x / n + lam * torch.eye(p, dtype=x.dtype), x.T @ y / n)


def compare_strategies(D: int, p_obj: int = 5, p_rob: int = 5, p_spu: int = 50, tau: float = 1.0, seeds=range(5),
                       **kwargs) -> dict[str, float]:
    """Mean OOD risk of ridge regression under each strategy, over `seeds`."""
    out = {s: 0.0 for s in STRATEGIES}
    seeds = list(seeds)
    for seed in seeds:
        data = make_domain_regression(D, p_obj, p_rob, p_spu, tau, seed, **kwargs)
        for s in STRATEGIES:
            x, y = data.augment(s, seed=seed + 1000)
            out[s] += data.ood_risk(ridge(x, y)) / len(seeds)
    return out
