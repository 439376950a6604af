"""Prevalence and disparities from labels an imperfect labeller (an LLM, a classifier) produced.

A labeller with sensitivity se and specificity sp observes p_obs = se * p + (1 - sp) * (1 - p), so
p = (p_obs + sp - 1) / (se + sp - 1) (Rogan and Gladen, 1978). When se and sp differ between
groups, the raw difference in p_obs is biased; the corrected one is not.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from fmkit.equity import _bootstrap as bs
from fmkit.equity.audit import EquityWarning, as_array, check_aligned, group_maps, label_str


def corrected_prevalence(p_obs, sens, spec):
    """Rogan-Gladen: (p_obs + spec - 1) / (sens + spec - 1), clipped to [0, 1]; arrays broadcast.

    Raises ValueError when sens + spec <= 1 (the labeller is no better than chance: the
    correction is undefined or flips the sign).
    """
    p, se, sp = (np.asarray(v, dtype=np.float64) for v in (p_obs, sens, spec))
    for name, v in (("p_obs", p), ("sens", se), ("spec", sp)):
        if not np.isfinite(v).all() or ((v < 0) | (v > 1)).any():
            raise ValueError(f"{name}: expected values in [0, 1], got {v}")
    if (se + sp <= 1).any():
        raise ValueError(f"sens + spec: must exceed 1 for the correction to exist, got {se + sp}")
    out = np.clip((p + sp - 1) / (se + sp - 1), 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


@dataclasses.dataclass
class DisparityResult:
    groups: list
    n: np.ndarray
    observed: tuple[np.ndarray, np.ndarray, np.ndarray]  # labelled rate per group: estimate, lo, hi
    corrected: tuple[np.ndarray, np.ndarray, np.ndarray]  # Rogan-Gladen corrected rate
    reference: object
    difference: tuple[np.ndarray, np.ndarray, np.ndarray]  # corrected, group - reference
    ratio: tuple[np.ndarray, np.ndarray, np.ndarray]
    observed_difference: tuple[np.ndarray, np.ndarray, np.ndarray]
    status: str  # "corrected" or "uncorrected" (no validation sample)

    def to_markdown(self, digits: int = 3) -> str:
        def f(t, j):
            e, lo, hi = (a[j] for a in t)
            return "n/a" if e != e else f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

        ref = label_str(self.reference)
        lines = [f"| group | n | labelled rate | corrected rate | corrected diff vs {ref} | ratio vs {ref} | "
                 f"uncorrected diff vs {ref} |", "|---|---:|---|---|---|---|---|"]
        for j, g in enumerate(self.groups):
            lines.append(f"| {label_str(g)} | {int(self.n[j])} | {f(self.observed, j)} | {f(self.corrected, j)} | "
                         f"{f(self.difference, j)} | {f(self.ratio, j)} | {f(self.observed_difference, j)} |")
        lines.append(f"\n({self.status})")
        return "\n".join(lines)


def corrected_disparity(labels, groups, *, positive=1, validation=None, sens=None, spec=None, reference_group=None,
                        n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> DisparityResult:
    """Rate of `positive` among `labels` (the labeller's output) per group, corrected for labeller
    error, and its difference and ratio to the reference group (default: the largest), with
    percentile bootstrap CIs.

    Labeller error per group comes from `validation`, a human-labelled audit sample
    ``(labeller output, truth, groups)`` whose per-group sensitivity and specificity are
    re-estimated in every replicate, or from fixed `sens` / `spec` ({group: value} or a scalar).
    Without either, the rates are reported uncorrected with an EquityWarning (spec §3.4).
    """
    alpha, n_boot = bs.check_alpha(alpha), bs.check_n_boot(n_boot)
    lab = as_array(labels, "labels")
    (codes, glabels), = group_maps(groups, len(lab)).values()
    G = len(glabels)
    hit = (lab == positive) if lab.dtype.kind != "O" else np.array([v == positive for v in lab])
    n_g = np.bincount(codes, minlength=G).astype(np.float64)
    k_g = np.bincount(codes, weights=hit.astype(np.float64), minlength=G)
    rng = np.random.default_rng(seed)
    B = max(n_boot, 1)
    obs_r = rng.binomial(n_g.astype(np.int64), k_g / n_g, size=(B, G)) / n_g
    status = "corrected"
    if validation is not None:
        if sens is not None or spec is not None:
            raise ValueError("validation, sens/spec: pass a validation sample or fixed sens/spec, not both")
        se, sp, se_r, sp_r = _validation_rates(validation, glabels, positive, rng, B)
    elif sens is not None and spec is not None:
        se, sp = (_per_group(v, glabels, name) for v, name in ((sens, "sens"), (spec, "spec")))
        se_r, sp_r = np.broadcast_to(se, (B, G)), np.broadcast_to(sp, (B, G))
    elif sens is not None or spec is not None:
        raise ValueError("sens, spec: pass both")
    else:
        warnings.warn("corrected_disparity: no validation sample and no sens/spec; the rates and their disparity "
                      "are UNCORRECTED for labeller error, which differs between groups in general",
                      EquityWarning, stacklevel=2)
        status = "uncorrected"
        se = sp = np.ones(G)
        se_r = sp_r = np.ones((B, G))
    obs = k_g / n_g
    corr = corrected_prevalence(obs, se, sp)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = se_r + sp_r > 1  # a replicate whose audit sample looks no better than chance: undefined
        corr_r = np.where(ok, np.clip((obs_r + sp_r - 1) / np.where(ok, se_r + sp_r - 1, 1), 0, 1), np.nan)
    ref = int(np.argmax(n_g)) if reference_group is None else (
        glabels.index(reference_group) if reference_group in glabels else _raise_ref(reference_group, glabels))

    def ci(point, reps):
        if n_boot == 0:
            return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
        lo, hi = bs.intervals(point, reps, alpha, "percentile")
        return point, lo, hi

    with np.errstate(invalid="ignore", divide="ignore"):
        return DisparityResult(glabels, n_g.astype(np.int64), ci(obs, obs_r), ci(corr, corr_r), glabels[ref],
                               ci(corr - corr[ref], corr_r - corr_r[:, ref:ref + 1]),
                               ci(corr / corr[ref], corr_r / corr_r[:, ref:ref + 1]),
                               ci(obs - obs[ref], obs_r - obs_r[:, ref:ref + 1]), status)


def _raise_ref(ref, labels):
    raise ValueError(f"reference_group: {ref!r} is not one of the groups {[label_str(x) for x in labels][:20]}")


def _per_group(v, labels, name):
    if isinstance(v, dict):
        missing = [g for g in labels if g not in v and label_str(g) not in v]
        if missing:
            raise ValueError(f"{name}: no value for group(s) {missing}")
        return np.array([v[g] if g in v else v[label_str(g)] for g in labels], dtype=np.float64)
    return np.broadcast_to(np.asarray(v, dtype=np.float64), (len(labels),)).copy()


def _validation_rates(validation, labels, positive, rng, B):
    if not (isinstance(validation, (tuple, list)) and len(validation) == 3):
        raise TypeError("validation: expected (labeller output, truth, groups) of the audit sample")
    out, truth, vg = (as_array(v, f"validation[{i}]") for i, v in enumerate(validation))
    check_aligned(len(out), "validation[0]", truth, "validation[1]")
    (codes, vlabels), = group_maps(vg, len(out)).values()
    missing = [g for g in labels if g not in vlabels]
    if missing:
        raise ValueError(f"validation: no audit rows for group(s) {missing}; every group needs its own "
                         "sensitivity and specificity")
    idx = np.array([labels.index(g) if g in labels else -1 for g in vlabels])[codes]
    keep = idx >= 0
    G = len(labels)
    o, t, gi = out[keep] == positive, truth[keep] == positive, idx[keep]
    pos_n = np.bincount(gi, weights=t, minlength=G)
    neg_n = np.bincount(gi, weights=~t, minlength=G)
    tp = np.bincount(gi, weights=o & t, minlength=G)
    tn = np.bincount(gi, weights=~o & ~t, minlength=G)
    if (pos_n == 0).any() or (neg_n == 0).any():
        bad = [label_str(labels[j]) for j in np.flatnonzero((pos_n == 0) | (neg_n == 0))]
        raise ValueError(f"validation: group(s) {bad} have no true positives or no true negatives in the audit "
                         "sample; sensitivity/specificity cannot be estimated")
    se, sp = tp / pos_n, tn / neg_n
    se_r = rng.binomial(pos_n.astype(np.int64), se, size=(B, G)) / pos_n
    sp_r = rng.binomial(neg_n.astype(np.int64), sp, size=(B, G)) / neg_n
    return se, sp, se_r, sp_r
