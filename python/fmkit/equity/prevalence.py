"""Prevalence and disparities from labels an imperfect labeller (an LLM, a classifier) produced.

A labeller with sensitivity se and specificity sp observes p_obs = se * p + (1 - sp) * (1 - p), so
p = (p_obs + sp - 1) / (se + sp - 1) (Rogan and Gladen, 1978). When se and sp differ between
groups, the raw difference in p_obs is biased; the corrected one is not.

Prediction-powered inference (PPI; Angelopoulos, Bates, Fannjiang, Jordan and Zrnic, Science
2023) needs no error model: with the labeller's output f on a large set and a gold-labelled random
sample (f, y), the rate is mean_large(f) - mean_gold(f - y) (the second term, the "rectifier",
removes the labeller's bias), unbiased whatever the labeller's errors, with a CLT interval from
the two sample variances. The same construction gives a covariate-adjusted logistic regression
(PPI for GLMs: the labeller's log-likelihood gradient on the large set plus the rectifier's
gradient on the gold sample), hence odds ratios between groups adjusted for covariates.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from fmkit.equity import _bootstrap as bs
from fmkit.equity.audit import EquityWarning, _finite, as_array, check_aligned, group_maps, label_str


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


METHODS = ("rogan_gladen", "ppi")
CIS = ("bootstrap", "clt")


@dataclasses.dataclass
class DisparityResult:
    groups: list
    n: np.ndarray
    observed: tuple[np.ndarray, np.ndarray, np.ndarray]  # labelled rate per group: estimate, lo, hi
    corrected: tuple[np.ndarray, np.ndarray, np.ndarray]  # Rogan-Gladen or PPI corrected rate
    reference: object
    difference: tuple[np.ndarray, np.ndarray, np.ndarray]  # corrected, group - reference
    ratio: tuple[np.ndarray, np.ndarray, np.ndarray]
    observed_difference: tuple[np.ndarray, np.ndarray, np.ndarray]
    status: str  # "corrected" or "uncorrected" (no validation sample)
    method: str = "rogan_gladen"  # "rogan_gladen", "ppi" or "none"
    ci: str = "bootstrap"  # "bootstrap", "cluster bootstrap" or "clt" (cluster-robust "clt" with clusters)
    # covariate-adjusted odds ratio of the positive outcome, group vs reference (reference: 1), when
    # `covariates` was given: estimate, lo, hi [G]; and the regression's coefficients on the covariates
    odds_ratio: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    covariate_coef: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    n_validation: np.ndarray | None = None  # gold-labelled rows per group

    def to_markdown(self, digits: int = 3) -> str:
        def f(t, j):
            e, lo, hi = (a[j] for a in t)
            return "n/a" if e != e else f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

        ref = label_str(self.reference)
        orc = self.odds_ratio is not None
        gold = self.n_validation is not None
        lines = [f"| group | n | " + ("gold n | " if gold else "") + f"labelled rate | corrected rate | "
                 f"corrected diff vs {ref} | ratio vs {ref} | " + (f"adjusted odds ratio vs {ref} | " if orc else "")
                 + f"uncorrected diff vs {ref} |", "|---|---:|" + ("---:|" if gold else "") + "---|---|---|---|---|"
                 + ("---|" if orc else "")]
        for j, g in enumerate(self.groups):
            lines.append(f"| {label_str(g)} | {int(self.n[j])} | " + (f"{int(self.n_validation[j])} | " if gold else "")
                         + f"{f(self.observed, j)} | {f(self.corrected, j)} | {f(self.difference, j)} | "
                         + f"{f(self.ratio, j)} | " + (f"{f(self.odds_ratio, j)} | " if orc else "")
                         + f"{f(self.observed_difference, j)} |")
        how = {"rogan_gladen": "Rogan-Gladen", "ppi": "prediction-powered inference", "none": "no correction"}
        lines.append(f"\n({self.status}; {how.get(self.method, self.method)}; {self.ci} intervals)")
        return "\n".join(lines)


def corrected_disparity(labels, groups, *, positive=1, validation=None, sens=None, spec=None,
                        method: str = "rogan_gladen", covariates=None, cluster=None, ci: str = "bootstrap",
                        reference_group=None, n_boot: int = 1000, alpha: float = 0.05,
                        seed: int = 0) -> DisparityResult:
    """Rate of `positive` among `labels` (the labeller's output) per group, corrected for labeller
    error, and its difference and ratio to the reference group (default: the largest), with CIs.

    Args:
        labels, groups: the labeller's output and the group of each row of the large set.
        validation: the human-labelled audit sample, a random sample of the same population:
            ``(labeller output, truth, groups)``, or a dict with keys "labels", "truth", "groups"
            and optionally "covariates" (needed for the odds ratio) and "cluster".
        sens, spec: fixed per-group rates ({group: value} or a scalar), instead of `validation`
            (Rogan-Gladen only). Without either, the rates are reported uncorrected with an
            EquityWarning (spec §3.4).
        method: "rogan_gladen" (default): p = (p_obs + spec - 1) / (sens + spec - 1) per group,
            sensitivity and specificity re-estimated from the validation sample in every
            replicate; "ppi": prediction-powered inference, mean_labels(f) - mean_validation(f - y)
            per group (no error model; valid whatever the labeller's errors, including
            group-differential ones). PPI is unbiased by construction; it is most efficient when
            `labels` are the rows *without* gold labels (rows in both only add a small correlation
            that the intervals ignore).
        covariates: [n, d] covariates of the rows of `labels`: adds the covariate-adjusted odds
            ratio of the positive outcome for each group against the reference, from a logistic
            regression on group indicators + covariates. With a validation sample it is corrected
            by PPI for GLMs (Angelopoulos et al. 2023, section on logistic regression), which needs
            the validation sample's covariates; without one it is the naive fit on the labels
            ("uncorrected"). An [n, 0] array gives the unadjusted odds ratio.
        cluster: cluster ids of the rows of `labels` (patients, clinics, authors): the bootstrap
            resamples whole clusters (the validation sample's "cluster" ids share the same id
            space: a cluster present in both samples gets one weight), and "clt" intervals use
            cluster-robust variances. Rows without a cluster id are their own clusters.
        ci: "bootstrap" (default): percentile intervals from `n_boot` replicates (rows resampled
            within groups, or clusters when given); "clt": normal intervals from the influence
            functions (PPI's own intervals; method="ppi" and the odds ratio only). With "clt" the
            rates' intervals are clipped to [0, 1] but PPI's point estimate is not (clipping would
            bias it), so with few gold rows it can be slightly negative and sit outside its
            clipped interval; the ratio's interval is taken on the log scale and is n/a when a
            rate estimate is not positive.
    """
    alpha, n_boot = bs.check_alpha(alpha), bs.check_n_boot(n_boot)
    bs.check_choice("method", method, METHODS)
    bs.check_choice("ci", ci, CIS)
    lab = as_array(labels, "labels")
    (codes, glabels), = group_maps(groups, len(lab)).values()
    G = len(glabels)
    f = _hits(lab, positive)
    n_g = np.bincount(codes, minlength=G).astype(np.float64)
    k_g = np.bincount(codes, weights=f, minlength=G)
    val = _parse_validation(validation, glabels, positive) if validation is not None else None
    if val is not None and (sens is not None or spec is not None):
        raise ValueError("validation, sens/spec: pass a validation sample or fixed sens/spec, not both")
    if (sens is None) != (spec is None):
        raise ValueError("sens, spec: pass both")
    if method == "ppi" and val is None:
        raise ValueError("method='ppi': needs a gold-labelled validation sample (validation=...)")
    if ci == "clt" and method != "ppi":
        raise ValueError("ci='clt': available for method='ppi' (and its odds ratio); Rogan-Gladen uses the bootstrap")
    status, used = "corrected", method
    if val is None and sens is None:
        warnings.warn("corrected_disparity: no validation sample and no sens/spec; the rates and their disparity "
                      "are UNCORRECTED for labeller error, which differs between groups in general",
                      EquityWarning, stacklevel=2)
        status, used = "uncorrected", "none"
    fixed = None
    if sens is not None:
        fixed = tuple(_per_group(v, glabels, name) for v, name in ((sens, "sens"), (spec, "spec")))
        corrected_prevalence(k_g / np.maximum(n_g, 1), *fixed)  # checks the values and sens + spec > 1
    if val is not None:
        _check_validation_groups(val, glabels, method)
    cl_main, cl_val, n_clusters = _clusters(cluster, len(lab), val)
    clustered = cl_main is not None
    cov = None
    if covariates is not None:
        cov = _finite(as_array(covariates, "covariates", (1, 2)), "covariates")
        cov = cov[:, None] if cov.ndim == 1 else cov
        check_aligned(len(lab), "labels", cov, "covariates")
        if val is not None and val["cov"] is None:
            raise ValueError("covariates: the odds ratio's PPI correction needs the validation sample's covariates "
                             "(validation={'labels', 'truth', 'groups', 'covariates': ...})")
        if val is not None and val["cov"].shape[1] != cov.shape[1]:
            raise ValueError(f"validation['covariates']: has {val['cov'].shape[1]} columns, covariates has "
                             f"{cov.shape[1]}")
        if fixed is not None:
            raise ValueError("covariates: the adjusted odds ratio is corrected with a validation sample (PPI); "
                             "fixed sens/spec are not enough")
    ref = int(np.argmax(n_g)) if reference_group is None else (
        glabels.index(reference_group) if reference_group in glabels else _raise_ref(reference_group, glabels))

    cells = val["cells"] if val is not None else np.zeros((G, 4))  # (f, y) = 00, 01, 10, 11
    point = _rates(n_g[None], k_g[None], cells[None], used, fixed)
    rng = np.random.default_rng(seed)
    B = max(n_boot, 1)
    if ci == "bootstrap":
        if clustered:
            reps = _cluster_replicates(codes, f, cl_main, val, cl_val, n_clusters, G, B, rng)
        else:
            k_r = rng.binomial(n_g.astype(np.int64), k_g / np.maximum(n_g, 1), size=(B, G)).astype(np.float64)
            nv = cells.sum(1)
            c_r = rng.multinomial(nv.astype(np.int64), cells / np.maximum(nv, 1)[:, None],
                                  size=(B, G)).astype(np.float64)
            reps = (np.broadcast_to(n_g, (B, G)), k_r, c_r)
        rep = _rates(*reps, used, fixed)

        def interval(pt, r):
            if n_boot == 0:
                return pt, np.full_like(pt, np.nan), np.full_like(pt, np.nan)
            lo, hi = bs.intervals(pt, r, alpha, "percentile")
            return pt, lo, hi

        with np.errstate(invalid="ignore", divide="ignore"):
            obs, corr = point[0][0], point[1][0]
            observed, corrected = interval(obs, rep[0]), interval(corr, rep[1])
            difference = interval(corr - corr[ref], rep[1] - rep[1][:, ref:ref + 1])
            ratio = interval(corr / corr[ref], rep[1] / rep[1][:, ref:ref + 1])
            observed_difference = interval(obs - obs[ref], rep[0] - rep[0][:, ref:ref + 1])
        ci_name = "cluster bootstrap" if clustered else "bootstrap"
    else:
        observed, corrected, difference, ratio, observed_difference = _ppi_clt(codes, f, val, cl_main, cl_val,
                                                                               n_clusters, G, ref, alpha)
        ci_name = "cluster-robust CLT" if clustered else "CLT"
    odds = coef = None
    if cov is not None:
        odds, coef = _odds_ratio(codes, f, cov, val if used != "none" else None, cl_main, cl_val, n_clusters, G,
                                 ref, ci, n_boot, alpha, rng)
    nval = cells.sum(1).astype(np.int64) if val is not None else None
    return DisparityResult(glabels, n_g.astype(np.int64), observed, corrected, glabels[ref], difference, ratio,
                           observed_difference, status, used, ci_name, odds, coef, nval)


def _hits(arr, positive):
    return ((arr == positive) if arr.dtype.kind != "O" else np.array([v == positive for v in arr])).astype(np.float64)


def _rates(n, k, cells, method, fixed):
    """(labelled rate, corrected rate) [B, G] from main counts n, k [B, G] and validation cells [B, G, 4]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        obs = k / n
        if method == "none":
            return obs, obs.copy()
        if method == "ppi":
            nv = cells.sum(-1)
            return obs, obs - (cells[..., 2] - cells[..., 1]) / nv  # mean(f) - mean(f - y)
        if fixed is not None:
            se, sp = (np.broadcast_to(v, obs.shape) for v in fixed)
        else:
            se = cells[..., 3] / (cells[..., 1] + cells[..., 3])
            sp = cells[..., 0] / (cells[..., 0] + cells[..., 2])
        ok = se + sp > 1  # an audit sample no better than chance (a replicate's, too): undefined
        corr = np.where(ok, np.clip((obs + sp - 1) / np.where(ok, se + sp - 1, 1), 0, 1), np.nan)
    return obs, corr


def _parse_validation(validation, labels, positive):
    if isinstance(validation, dict):
        missing = [k for k in ("labels", "truth", "groups") if k not in validation]
        if missing:
            raise TypeError(f"validation: the dict needs keys 'labels', 'truth', 'groups' (missing {missing})")
        out, truth, vg = validation["labels"], validation["truth"], validation["groups"]
        vcov, vcl = validation.get("covariates"), validation.get("cluster")
    elif isinstance(validation, (tuple, list)) and len(validation) == 3:
        (out, truth, vg), vcov, vcl = validation, None, None
    else:
        raise TypeError("validation: expected (labeller output, truth, groups) of the audit sample, or a dict")
    out, truth, vg = (as_array(v, f"validation[{i}]") for i, v in enumerate((out, truth, vg)))
    check_aligned(len(out), "validation[0]", truth, "validation[1]")
    (codes, vlabels), = group_maps(vg, len(out)).values()
    idx = np.array([labels.index(g) if g in labels else -1 for g in vlabels])[codes]
    keep = idx >= 0
    if vcov is not None:
        vcov = _finite(as_array(vcov, "validation['covariates']", (1, 2)), "validation['covariates']")
        vcov = vcov[:, None] if vcov.ndim == 1 else vcov
        check_aligned(len(out), "validation[0]", vcov, "validation['covariates']")
        vcov = vcov[keep]
    if vcl is not None:
        vcl = as_array(vcl, "validation['cluster']")
        check_aligned(len(out), "validation[0]", vcl, "validation['cluster']")
        vcl = vcl[keep]
    o, t, gi = _hits(out[keep], positive), _hits(truth[keep], positive), idx[keep]
    G = len(labels)
    cells = np.stack([np.bincount(gi, weights=(o == a) & (t == b), minlength=G) for a, b in ((0, 0), (0, 1), (1, 0),
                                                                                             (1, 1))], 1)
    return {"f": o, "y": t, "codes": gi, "cov": vcov, "cluster": vcl, "cells": cells.astype(np.float64)}


def _check_validation_groups(val, labels, method):
    cells = val["cells"]
    nv = cells.sum(1)
    if (nv == 0).any():
        missing = [label_str(labels[j]) for j in np.flatnonzero(nv == 0)]
        raise ValueError(f"validation: no audit rows for group(s) {missing}; every group needs its own "
                         + ("sensitivity and specificity" if method == "rogan_gladen" else "rectifier"))
    if method == "rogan_gladen":
        pos_n, neg_n = cells[:, 1] + cells[:, 3], cells[:, 0] + cells[:, 2]
        if (pos_n == 0).any() or (neg_n == 0).any():
            bad = [label_str(labels[j]) for j in np.flatnonzero((pos_n == 0) | (neg_n == 0))]
            raise ValueError(f"validation: group(s) {bad} have no true positives or no true negatives in the audit "
                             "sample; sensitivity/specificity cannot be estimated")
        se, sp = cells[:, 3] / pos_n, cells[:, 0] / neg_n
        if (se + sp <= 1).any():
            raise ValueError(f"sens + spec: must exceed 1 for the correction to exist, got {se + sp} (validation "
                             "sample); method='ppi' needs no such condition")
    elif (nv < 2).any():
        raise ValueError(f"validation: PPI needs at least 2 audit rows per group, got {nv.astype(int).tolist()}")


def _clusters(cluster, n, val):
    """Joint cluster codes of the main rows and the validation rows (None: no clustering)."""
    vcl = val["cluster"] if val is not None else None
    if cluster is None and vcl is None:
        return None, None, 0
    main = as_array(cluster, "cluster") if cluster is not None else None
    if main is not None:
        check_aligned(n, "labels", main, "cluster")
    nv = len(val["f"]) if val is not None else 0
    # rows without an id are their own clusters
    a = main.astype(str) if main is not None else np.array([f"\0main{i}" for i in range(n)], dtype=object)
    b = vcl.astype(str) if vcl is not None else np.array([f"\0val{i}" for i in range(nv)], dtype=object)
    u, inv = np.unique(np.concatenate([np.asarray(a, dtype=object), np.asarray(b, dtype=object)]), return_inverse=True)
    return inv[:n], inv[n:], len(u)


def _cluster_replicates(codes, f, cl_main, val, cl_val, C, G, B, rng):
    from scipy import sparse

    main_n = sparse.csr_matrix((np.ones(len(codes)), (cl_main, codes)), shape=(C, G))
    main_k = sparse.csr_matrix((f, (cl_main, codes)), shape=(C, G))
    mats = [main_n, main_k]
    if val is not None:
        cell = (2 * val["f"] + val["y"]).astype(np.int64)
        mats.append(sparse.csr_matrix((np.ones(len(cell)), (cl_val, val["codes"] * 4 + cell)), shape=(C, G * 4)))
    W = bs.cluster_weights(C, B, rng, "multinomial")
    out = [np.asarray((m.T @ W.T).T) for m in mats]
    cells = out[2].reshape(B, G, 4) if val is not None else np.zeros((B, G, 4))
    return out[0], out[1], cells


def _cluster_var(psi_main, psi_val, cl_main, cl_val, C):
    """Variance of sum(psi) [Q] (or covariance [Q, Q]) with influence values of main rows [n, Q] and
    validation rows [m, Q]: each row its own cluster, or summed within clusters first."""
    if cl_main is None:
        tot = np.concatenate([psi_main, psi_val])
        return tot.T @ tot
    sums = np.zeros((C, psi_main.shape[1]))
    np.add.at(sums, cl_main, psi_main)
    np.add.at(sums, cl_val, psi_val)
    return sums.T @ sums * (C / max(C - 1, 1))


def _ppi_clt(codes, f, val, cl_main, cl_val, C, G, ref, alpha):
    """PPI rates with influence-function (CLT) intervals; differences and ratios by linear combination."""
    n_g = np.bincount(codes, minlength=G).astype(np.float64)
    mean_f = np.bincount(codes, weights=f, minlength=G) / n_g
    d = val["f"] - val["y"]
    nv = np.bincount(val["codes"], minlength=G).astype(np.float64)
    mean_d = np.bincount(val["codes"], weights=d, minlength=G) / nv
    theta = mean_f - mean_d
    obs = mean_f
    psi_m = np.zeros((len(f), G))
    psi_m[np.arange(len(f)), codes] = (f - mean_f[codes]) / n_g[codes]
    psi_v = np.zeros((len(d), G))
    psi_v[np.arange(len(d)), val["codes"]] = -(d - mean_d[val["codes"]]) / nv[val["codes"]]
    if cl_main is None:  # sample variances with n - 1 (Angelopoulos et al.)
        psi_m *= np.sqrt(n_g / np.maximum(n_g - 1, 1))[codes][:, None]
        psi_v *= np.sqrt(nv / np.maximum(nv - 1, 1))[val["codes"]][:, None]
    z = bs.z_for(alpha)
    # linear maps of the G rates: identity, difference to ref, ratio to ref (delta method)
    eye = np.eye(G)
    diff_map = eye - eye[ref]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_map = eye / theta[ref] - np.outer(theta / theta[ref] ** 2, eye[ref])
        out = []
        for est, A, pm, pv in ((theta, eye, psi_m, psi_v), (theta - theta[ref], diff_map, psi_m, psi_v),
                               (theta / theta[ref], ratio_map, psi_m, psi_v)):
            cov = _cluster_var(pm @ A.T, pv @ A.T, cl_main, cl_val, C)
            se = np.sqrt(np.maximum(np.diag(cov), 0))
            out.append((est, est - z * se, est + z * se))
        # the ratio's interval on the log scale (delta method for log ratio): positive, and not
        # absurd when the reference rate is small; NaN when a rate estimate is not positive
        r_est, r_se = out[2][0], (out[2][2] - out[2][0]) / z
        pos = (theta > 0) & (theta[ref] > 0)
        s_log = np.where(pos, r_se / np.where(pos, r_est, 1), np.nan)
        out[2] = (np.where(pos, r_est, np.nan), r_est * np.exp(-z * s_log), r_est * np.exp(z * s_log))
        psi_o = psi_m
        cov_o = _cluster_var(psi_o, np.zeros((len(d), G)), cl_main, cl_val, C)
        se_o = np.sqrt(np.diag(cov_o))
        cov_od = _cluster_var(psi_o @ diff_map.T, np.zeros((len(d), G)), cl_main, cl_val, C)
        se_od = np.sqrt(np.maximum(np.diag(cov_od), 0))
    observed = (obs, np.clip(obs - z * se_o, 0, 1), np.clip(obs + z * se_o, 0, 1))
    observed_difference = (obs - obs[ref], obs - obs[ref] - z * se_od, obs - obs[ref] + z * se_od)
    corrected, difference, ratio = out
    corrected = (corrected[0], np.clip(corrected[1], 0, 1), np.clip(corrected[2], 0, 1))
    difference[1][ref] = difference[2][ref] = 0.0
    ratio[0][ref] = ratio[1][ref] = ratio[2][ref] = 1.0
    return observed, corrected, difference, ratio, observed_difference


# ----------------------------------------------------------------------------------------------
# covariate-adjusted odds ratio (PPI logistic regression)
# ----------------------------------------------------------------------------------------------
def _design(codes, cov, G, ref):
    others = [g for g in range(G) if g != ref]
    ind = (codes[:, None] == np.array(others)[None]).astype(np.float64)
    return np.concatenate([np.ones((len(codes), 1)), ind, cov], 1), others


def _ppi_logistic(X, f, w, Xv=None, dv=None, wv=None, iters=50):
    """argmin of mean_w[log(1 + e^{x b}) - f x b] + mean_wv[(f - y) x b] (dv = f - y) by damped
    Newton; NaN when it does not converge (e.g. a corrected group rate outside (0, 1))."""
    p = X.shape[1]
    beta = np.zeros(p)
    W = w.sum()
    lin = (Xv * (wv * dv)[:, None]).sum(0) / wv.sum() if Xv is not None else np.zeros(p)

    def loss(b):
        eta = X @ b
        return (w * (np.logaddexp(0, eta) - f * eta)).sum() / W + lin @ b

    cur = loss(beta)
    for _ in range(iters):
        mu = 1 / (1 + np.exp(-(X @ beta)))
        grad = X.T @ (w * (mu - f)) / W + lin
        H = (X * (w * mu * (1 - mu))[:, None]).T @ X / W + 1e-10 * np.eye(p)
        try:
            step = np.linalg.solve(H, grad)
        except np.linalg.LinAlgError:
            return np.full(p, np.nan)
        t = 1.0
        while t > 1e-6:
            new = loss(beta - t * step)
            if new <= cur + 1e-12:
                break
            t /= 2
        beta, cur = beta - t * step, new
        if np.abs(t * step).max() < 1e-10:
            break
    if np.abs(beta).max() > 30 or np.abs(grad).max() > 1e-6:
        return np.full(p, np.nan)
    return beta


def _odds_ratio(codes, f, cov, val, cl_main, cl_val, C, G, ref, ci, n_boot, alpha, rng):
    X, others = _design(codes, cov, G, ref)
    Xv = dv = None
    if val is not None:
        Xv, _ = _design(val["codes"], val["cov"], G, ref)
        dv = val["f"] - val["y"]
    n, m = len(f), (len(dv) if dv is not None else 0)
    beta = _ppi_logistic(X, f, np.ones(n), Xv, dv, np.ones(m) if m else None)
    P = X.shape[1]
    if ci == "clt" or n_boot == 0:
        lo = hi = np.full(P, np.nan)
        if ci == "clt" and np.isfinite(beta).all():
            mu = 1 / (1 + np.exp(-(X @ beta)))
            H = (X * (mu * (1 - mu))[:, None]).T @ X / n
            Hi = np.linalg.inv(H)
            s_m = X * (mu - f)[:, None]
            psi_m = (s_m - s_m.mean(0)) @ Hi.T / n
            if m:
                s_v = Xv * dv[:, None]
                psi_v = (s_v - s_v.mean(0)) @ Hi.T / m
            else:
                psi_v = np.zeros((0, P))
            if cl_main is None:
                psi_m *= np.sqrt(n / max(n - 1, 1))
                psi_v *= np.sqrt(m / max(m - 1, 1))
                se = np.sqrt(np.diag(_cluster_var(psi_m, psi_v, None, None, 0)))
            else:
                se = np.sqrt(np.diag(_cluster_var(psi_m, psi_v, cl_main, cl_val, C)))
            z = bs.z_for(alpha)
            lo, hi = beta - z * se, beta + z * se
    else:
        reps = np.full((n_boot, P), np.nan)
        for b in range(n_boot):
            if cl_main is None:
                w = rng.poisson(1.0, n).astype(np.float64)
                wv = rng.poisson(1.0, m).astype(np.float64) if m else None
            else:
                wc = rng.multinomial(C, np.full(C, 1.0 / C)).astype(np.float64)
                w, wv = wc[cl_main], (wc[cl_val] if m else None)
            if w.sum() == 0 or (m and wv.sum() == 0):
                continue
            reps[b] = _ppi_logistic(X, f, w, Xv, dv, wv)
        lo, hi = bs.intervals(beta, reps, alpha, "percentile")
    orr = tuple(np.ones(G) for _ in range(3))
    for i, g in enumerate(others):
        for t, v in zip(orr, (beta, lo, hi)):
            t[g] = np.exp(v[1 + i])
    coef = tuple(v[1 + len(others):] for v in (beta, lo, hi))
    return orr, coef


def _raise_ref(ref, labels):
    raise ValueError(f"reference_group: {ref!r} is not one of the groups {[label_str(x) for x in labels][:20]}")


def _per_group(v, labels, name):
    if isinstance(v, dict):
        missing = [g for g in labels if g not in v and label_str(g) not in v]
        if missing:
            raise ValueError(f"{name}: no value for group(s) {missing}")
        return np.array([v[g] if g in v else v[label_str(g)] for g in labels], dtype=np.float64)
    return np.broadcast_to(np.asarray(v, dtype=np.float64), (len(labels),)).copy()
