"""ProCal benchmark: proximity (exact kNN) + Density-Ratio fit + transform on a cal/test split.

Anchor: the released code's pipeline, faiss IndexFlatL2 for the neighbours and a KDE library
(scipy.stats.gaussian_kde standing in for statsmodels' KDEMultivariate: same O(n_cal * n_test)
evaluation). GFLOP/s counts the kNN GEMM work, 2 * (n_cal^2 + n_test * n_cal) * d.

Error column ("rel err vs fp64"): ||out - ref|| / ||ref|| of each contender's output against the
float64 run of ITS OWN pipeline on the same data (the two pipelines estimate different things:
fmkit's product-Gaussian KDE with the paper's bandwidth, scipy's full-covariance KDE with Scott's
rule), computed once per case outside the timing:
  fmkit: the calibrated probabilities [n_test, C] against `reference_fp64`, the same ProCal DR
    written in plain float64 torch: exact float64 kNN (GEMM candidates, distances recomputed
    directly), float64 softmax, fmkit.reference's float64 KDE oracle;
  faiss + scipy KDE: its calibrated confidences [n_test] against the same released pipeline with
    an exact float64 search in place of faiss's float32 one and a float64 softmax.
On a CPU the float64 reference is skipped (NaN, the setting says so) above CPU_REFERENCE_MAX_WORK
multiply-adds of kNN: the full CPU size would take minutes of float64 GEMM.
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import torch

from fmkit.bench import LazyCases, accuracy, auto_backend, unavailable
from fmkit.bench._shapes import embedded_shapes
from fmkit.bench.knn import FLOAT64_TILE, float64_knn
from fmkit.calibration.procal import DensityRatioCalibrator, write_confidence
from fmkit.calibration.proximity import proximity
from fmkit.reference.gaussian_kde import gaussian_kde_reference

SHAPES = {  # (n_cal, n_test, d, classes)
    ("cpu", "quick"): [(5_000, 5_000, 128, 100)],
    ("cpu", "full"): [(50_000, 50_000, 512, 1000)],
    ("cuda", "quick"): [(20_000, 20_000, 512, 1000)],
    ("cuda", "full"): [(50_000, 50_000, 512, 1000)],
}


def synthetic_split(n: int, d: int, classes: int, device, seed: int):
    """Features with dense and sparse regions, and logits that are over-confident in sparse ones."""
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(classes, d, generator=torch.Generator().manual_seed(1234)) / d**0.5
    y = torch.randint(0, classes, (n,), generator=g)
    spread = 0.5 + 2.0 * torch.rand(n, generator=g)
    feats = centers[y] + spread[:, None] * torch.randn(n, d, generator=g) / d**0.5
    logits = 0.5 * feats @ centers.T + 1.0 * torch.randn(n, classes, generator=g)
    return logits.to(device), y.to(device), feats.to(device)


def _fmkit(cal, test):
    (c_logits, c_y, c_f), (t_logits, _, t_f) = cal, test
    c_prox = proximity(c_f)
    t_prox = proximity(t_f, c_f)
    dr = DensityRatioCalibrator().fit(torch.softmax(c_logits, 1), c_y, c_prox)
    return dr.transform(torch.softmax(t_logits, 1), t_prox)


def _released_pipeline(cal, test, k=10, exact64=False):
    """The released code's pipeline; exact64: its float64 run (exact float64 search instead of
    faiss's float32 one, float64 softmax), the reference of its error column."""
    from scipy.stats import gaussian_kde

    if exact64:
        (c_logits, c_y, c_f), (t_logits, _, t_f) = cal, test
        c_d = _knn_sq_fp64(c_f, c_f, k + 1).cpu().numpy()  # self first, at distance 0, as faiss returns it
        t_d = _knn_sq_fp64(t_f, c_f, k).cpu().numpy()
        c_logits, t_logits = c_logits.double().cpu().numpy(), t_logits.double().cpu().numpy()
        c_y = c_y.cpu().numpy()
    else:
        import faiss

        (c_logits, c_y, c_f), (t_logits, _, t_f) = [[t.cpu().numpy() for t in s] for s in (cal, test)]
        index = faiss.IndexFlatL2(c_f.shape[1])
        index.add(c_f)
        c_d, _ = index.search(c_f, k + 1)
        t_d, _ = index.search(t_f, k)
    c_prox = np.exp(-np.sqrt(np.maximum(c_d[:, 1:], 0)).mean(1))
    t_prox = np.exp(-np.sqrt(np.maximum(t_d, 0)).mean(1))
    c_conf = torch.softmax(torch.from_numpy(c_logits), 1).max(1).values.numpy()
    t_conf = torch.softmax(torch.from_numpy(t_logits), 1).max(1).values.numpy()
    correct = c_logits.argmax(1) == c_y
    f_pos = gaussian_kde(np.stack([c_conf[correct], c_prox[correct]]))
    f_neg = gaussian_kde(np.stack([c_conf[~correct], c_prox[~correct]]))
    gamma = (~correct).sum() / max(correct.sum(), 1)
    pts = np.stack([t_conf, t_prox])
    pos = f_pos(pts)
    return pos / np.maximum(pos + gamma * f_neg(pts), 1e-10)


def cases(device: torch.device, quick: bool, shapes=None):
    """The cases, each built (data, float64 references, error column) when the run reaches it."""
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    return LazyCases([lambda s=s: _case(*s, device) for s in shapes])


# kNN multiply-adds, n_cal (n_cal + n_test) d, above which a CPU run skips the float64 reference.
CPU_REFERENCE_MAX_WORK = 1e11


def _case(n_cal, n_test, d, classes, device):
    on_cuda = device.type == "cuda"
    cal = synthetic_split(n_cal, d, classes, device, seed=0)
    test = synthetic_split(n_test, d, classes, device, seed=1)
    fmkit_name, anchor_name = "fmkit ProCal (DR)", "faiss + scipy KDE"
    contenders = [(fmkit_name, lambda: _fmkit(cal, test), False)]
    settings = {fmkit_name: f"paper proximity (k=10, kNN backend=auto ({auto_backend(device, 'knn')})), paper bandwidth"}
    if not on_cuda:  # the released pipeline is CPU code
        contenders.append((anchor_name, unavailable("faiss not installed") if importlib.util.find_spec("faiss") is None
                           else lambda: _released_pipeline(cal, test), True))
        settings[anchor_name] = ("faiss IndexFlatL2 (fp32), scipy gaussian_kde (Scott's rule); "
                                 "err vs its own pipeline with exact float64 kNN")
    if not on_cuda and n_cal * (n_cal + n_test) * d > CPU_REFERENCE_MAX_WORK:
        acc = {name: float("nan") for name, fn, _ in contenders if not hasattr(fn, "unavailable")}
        for name in settings:
            settings[name] += "; err: float64 reference skipped on the CPU at this size"
    else:
        acc = {}
        for name, fn, is_anchor in contenders:
            reference = (lambda: _released_pipeline(cal, test, exact64=True)) if is_anchor else (
                lambda: reference_fp64(cal, test))
            acc.update(_accuracy_against([(name, fn, is_anchor)], reference))
    return {
        "shape": f"cal={n_cal} test={n_test} d={d} C={classes}",
        "flops": 2.0 * (n_cal * n_cal + n_test * n_cal) * d,
        "contenders": contenders,
        "repeats": 1,
        "accuracy": acc,
        "settings": settings,
    }


def _accuracy_against(contenders, reference):
    """accuracy() of `contenders` against reference(); NaN (and a note) when the reference fails."""
    runnable = [c for c in contenders if not hasattr(c[1], "unavailable")]
    if not runnable:
        return {}
    try:
        ref = torch.as_tensor(reference())
    except Exception as exc:
        print(f"\ncalibration: float64 reference failed ({type(exc).__name__}: {exc})"[:300], file=sys.stderr)
        return {name: float("nan") for name, _, _ in runnable}
    return accuracy(runnable, lambda fn: torch.as_tensor(fn()), ref)




@torch.no_grad()
def _knn_sq_fp64(queries, database, k, exclude_self=False):
    """Squared L2 distances [Q, k] (ascending, float64) to the k nearest database rows: candidates
    by float64 GEMM scores (fmkit.bench.knn.float64_knn), their distances recomputed directly as
    sum((x - y)^2) in float64. exclude_self: queries are the database, each row's own index is
    left out."""
    _, idx = float64_knn(queries, database, k, exclude_self=exclude_self)
    q, db = queries.double(), database.double()
    rows = max(1, FLOAT64_TILE["cuda" if db.is_cuda else "cpu"] // (k * db.shape[1]))
    out = [((q[i0:i0 + rows, None, :] - db[idx[i0:i0 + rows]]) ** 2).sum(-1) for i0 in range(0, q.shape[0], rows)]
    return torch.sort(torch.cat(out), dim=1).values


def _bandwidth_paper(points):
    """1.06 std n^(-1/5) per dimension (ddof 0), 1e-3 for a constant dimension: the paper's rule."""
    h = 1.06 * points.std(dim=0, unbiased=False) * points.shape[0] ** (-1 / 5)
    return torch.where(h > 0, h, torch.full_like(h, 1e-3))


@torch.no_grad()
def reference_fp64(cal, test, k=10):
    """fmkit's ProCal DR pipeline (paper proximity, paper bandwidth) in plain float64 torch: the
    calibrated probabilities [n_test, C], independent of fmkit's kNN and KDE kernels."""
    (c_logits, c_y, c_f), (t_logits, _, t_f) = cal, test
    c_prox = torch.exp(-_knn_sq_fp64(c_f, c_f, k, exclude_self=True).sqrt().mean(1))
    t_prox = torch.exp(-_knn_sq_fp64(t_f, c_f, k).sqrt().mean(1))
    c_p = torch.softmax(c_logits.double(), 1)
    t_p = torch.softmax(t_logits.double(), 1)
    c_conf, c_pred = c_p.max(1)
    correct = c_pred == c_y
    points = torch.stack([c_conf, c_prox], 1)
    pos, neg = points[correct], points[~correct]
    queries = torch.stack([t_p.max(1).values, t_prox], 1)
    if pos.shape[0] == 0:
        s = torch.zeros(queries.shape[0], dtype=torch.float64, device=queries.device)
    elif neg.shape[0] == 0:
        s = torch.ones(queries.shape[0], dtype=torch.float64, device=queries.device)
    else:
        gamma = neg.shape[0] / pos.shape[0]
        f_pos = gaussian_kde_reference(pos, _bandwidth_paper(pos), queries)
        f_neg = gaussian_kde_reference(neg, _bandwidth_paper(neg), queries)
        s = (f_pos / torch.clamp(f_pos + gamma * f_neg, min=1e-10)).clamp(0.0, 1.0)
    return write_confidence(t_p, t_p.argmax(1), s)
