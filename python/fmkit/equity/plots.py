"""Group metrics with their intervals (forest plot), one panel per (group map, metric)."""
from __future__ import annotations

import numpy as np

from fmkit.equity.audit import label_str


def plot_audit(result, metrics=None, path: str | None = None, maps=None):
    """Draws every group's estimate and CI, the reference group's value as a dashed line, small
    groups in grey, groups whose difference to the reference is significant (after Holm/BH) in red.
    Returns the figure; saves it to `path` (PNG) when given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    maps = [result.maps[m] for m in (maps or result.maps)]
    metrics = list(metrics or maps[0].metrics)
    for m in maps:
        for x in metrics:
            m.metric(x)  # a clear error for an unknown metric
    fig, axes = plt.subplots(len(maps), len(metrics), squeeze=False,
                             figsize=(3.2 * len(metrics), 0.9 + 0.32 * max(len(m.groups) for m in maps) * len(maps)))
    for r, m in enumerate(maps):
        y = np.arange(len(m.groups))[::-1]
        ref = m.groups.index(m.reference)
        for c, x in enumerate(metrics):
            ax = axes[r, c]
            i = m.metric(x)
            e, lo, hi = m.estimate[i], m.lo[i], m.hi[i]
            colors = ["0.6" if m.small[j] else ("tab:red" if m.significant[i, j] else "tab:blue")
                      for j in range(len(m.groups))]
            for j in range(len(m.groups)):
                if np.isfinite(e[j]):
                    err = None if not np.isfinite(lo[j]) else [[max(e[j] - lo[j], 0)], [max(hi[j] - e[j], 0)]]
                    ax.errorbar(e[j], y[j], xerr=err, fmt="o", color=colors[j], capsize=2, ms=4)
            if np.isfinite(e[ref]):
                ax.axvline(e[ref], color="0.4", ls="--", lw=0.8)
            ax.set_yticks(y)
            ax.set_yticklabels([f"{label_str(g)} ({int(n)})" for g, n in zip(m.groups, m.n)] if c == 0 else [],
                               fontsize=7)
            ax.set_title(f"{m.name}: {x}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{100 * (1 - result.alpha):g}% {result.interval} bootstrap CIs ({result.n_boot} replicates); "
                 "red: differs from reference; grey: small group", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
