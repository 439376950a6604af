"""Two panels: the error over (log K, log n) with fixed-N anti-diagonals, and the fitted curves
against log(K/n) per budget with the observed cells and K* marked."""
from __future__ import annotations

import numpy as np

from fmkit.diversity.fit import DiversityFit, _observations


def plot_diversity_fit(fit: DiversityFit, results, N_target: int | None = None, K_max: int | None = None,
                       title: str | None = None):
    """Returns a matplotlib Figure with two axes (Agg-safe; nothing is shown or saved)."""
    if not isinstance(fit, DiversityFit):
        raise TypeError(f"fit: expected a DiversityFit from fit_diversity_law, got {type(fit).__name__}")
    from matplotlib.figure import Figure

    obs = _observations(results, fit.task)
    budgets = sorted(set(fit.budgets) | ({int(N_target)} if N_target else set()))
    fig = Figure(figsize=(11, 4.4))
    heat, curves = fig.subplots(1, 2)
    # Left: the fitted error as the background, the observed cell means on top in the same colours.
    logK = np.log(obs.K)
    logn = np.log(obs.n)
    lo_k, hi_k = logK.min() - 0.3, max(logK.max(), np.log(fit.K_star_at(budgets[-1]) or 1)) + 0.3
    lo_n, hi_n = logn.min() - 0.3, logn.max() + 0.3
    if N_target:
        hi_n = max(hi_n, np.log(N_target) - lo_k)
        hi_k = max(hi_k, np.log(min(fit.K_star_at(N_target), N_target)) + 0.3)
    gk, gn = np.meshgrid(np.linspace(lo_k, hi_k, 60), np.linspace(lo_n, hi_n, 60))
    surface = fit.predict(np.exp(gk), np.exp(gn))
    cells = np.unique(obs.cell)
    mean_err = np.array([obs.err[obs.cell == c].mean() for c in cells])
    first = np.array([np.flatnonzero(obs.cell == c)[0] for c in cells])
    vmin, vmax = min(mean_err.min(), surface.min()), max(mean_err.max(), np.quantile(surface, 0.95))
    heat.pcolormesh(gk, gn, surface, cmap="viridis", vmin=vmin, vmax=vmax, shading="auto", alpha=0.85)
    heat.scatter(logK[first], logn[first], c=mean_err, cmap="viridis", vmin=vmin, vmax=vmax, edgecolors="white", s=60,
                 zorder=3, label="observed cells")
    # The cells' values as text instead of a colour bar: the figure keeps exactly its two panels.
    for x, y, e in zip(logK[first], logn[first], mean_err):
        heat.annotate(f"{e:.3g}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=6,
                      color="white", zorder=5)
    for N in budgets:
        heat.plot([lo_k, hi_k], [np.log(N) - lo_k, np.log(N) - hi_k], "w--", lw=0.8)
        k = fit.K_star_at(N)
        if np.isfinite(k) and k > 0:
            heat.plot(np.log(k), np.log(N / k), "r*", ms=12, zorder=4)
    heat.set_xlim(lo_k, hi_k)
    heat.set_ylim(lo_n, hi_n)
    heat.set_xlabel("log K (classes)")
    heat.set_ylabel("log n (examples per class)")
    heat.set_title("fitted error (colour), observed cells (dots, values);\ndashed: fixed N, star: K*(N)", fontsize=9)
    # Right: error against log(K/n) per budget.
    colours = [f"C{i}" for i in range(len(budgets))]
    for N, colour in zip(budgets, colours):
        at = obs.N == N
        if at.any():
            x = np.log(obs.K[at] / obs.n[at])
            curves.plot(x, obs.err[at], "o", color=colour, alpha=0.6, ms=4)
            xs = np.linspace(x.min() - 0.5, x.max() + 0.5, 200)
        else:
            xs = np.linspace(np.log(1 / N), np.log(min(K_max or N, N) ** 2 / N), 200)
        K = np.sqrt(np.exp(xs) * N)
        if K_max:
            keep = K <= K_max
            xs, K = xs[keep], K[keep]
        curves.plot(xs, fit.predict(K, N / K), "-", color=colour, label=f"N={N}" + ("" if at.any() else " (target)"))
        k = fit.K_star_at(N)
        if np.isfinite(k) and k > 0:
            curves.axvline(np.log(k * k / N), color=colour, ls=":", lw=1)
    curves.set_xlabel("log(K/n)")
    curves.set_ylabel("error")
    d = fit.drift
    curves.set_title(f"{fit.exponents} exponents: a={fit.a:.2f}, b={fit.b:.2f}; free a-b={d['a_minus_b']:.2f} "
                     f"[{d['ci'][0]:.2f}, {d['ci'][1]:.2f}]", fontsize=9)
    curves.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.84 if title else 0.88, wspace=0.25)
    return fig
