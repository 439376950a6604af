"""kNN benchmark cases: fmkit against faiss (IndexFlatL2, CPU or GPU) and torch mm/cdist + topk.

The 'exact' column says whether a contender's indices equal the float64 brute-force answer
(fmkit.reference, independent of every kernel timed) on the first EXACT_SAMPLE queries of the
case: anchors built on the GEMM expansion can differ on near-ties.
"""
from __future__ import annotations

import importlib.util

import torch

from fmkit.bench._shapes import embedded_shapes, knn_backends
from fmkit.ops import knn
from fmkit.reference.knn import knn_reference

EXACT_SAMPLE = 64


def _torch_mm_topk(q, db, k, chunk=4096):
    norms = (db * db).sum(1)
    out = []
    for q0 in range(0, q.shape[0], chunk):
        x = q[q0 : q0 + chunk]
        out.append(torch.topk(norms[None, :] - 2 * (x @ db.T), k, dim=1, largest=False).indices)
    return torch.cat(out)


def _torch_cdist_topk(q, db, k, chunk=4096):
    out = []
    for q0 in range(0, q.shape[0], chunk):
        out.append(torch.topk(torch.cdist(q[q0 : q0 + chunk], db), k, dim=1, largest=False).indices)
    return torch.cat(out)


def _faiss(q, db, k, device):
    import faiss

    d = db.shape[1]
    if device.type == "cuda":
        if not hasattr(faiss, "StandardGpuResources"):
            return None
        import faiss.contrib.torch_utils  # noqa: F401  (lets faiss take torch CUDA tensors in place)

        res = faiss.StandardGpuResources()
        return lambda: faiss.knn_gpu(res, q, db, k)[1]
    index = faiss.IndexFlatL2(d)
    index.add(db.numpy())
    qn = q.numpy()
    return lambda: torch.from_numpy(index.search(qn, k)[1])


# (Q, N, d, k); the full sizes are the acceptance shapes of the spec (calibration_knn.md §7, §9).
SHAPES = {
    ("cpu", "quick"): [(2048, 100_000, 128, 10)],
    ("cpu", "full"): [(2048, 100_000, 128, 10), (2048, 100_000, 128, 100), (512, 100_000, 128, 1024),
                      (1024, 25_000, 768, 10)],
    ("cuda", "quick"): [(4096, 200_000, 128, 10)],
    ("cuda", "full"): [(16384, 1_000_000, 128, 10), (16384, 1_000_000, 128, 100), (16384, 1_000_000, 128, 1024),
                       (16384, 1_000_000, 768, 10), (25_000, 25_000, 1024, 10)],
}


def cases(device: torch.device, quick: bool, shapes: list[tuple[int, int, int, int]] | None = None):
    """Benchmark cases; `shapes` ((Q, N, d, k), ...) overrides the embedded sizes."""
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    backends = knn_backends(device)
    return (_case(Q, N, d, k, device, backends) for Q, N, d, k in shapes)  # lazily: one case's data at a time


def _case(Q, N, d, k, device, backends):
    g = torch.Generator().manual_seed(0)
    db = torch.randn(N, d, generator=g).to(device)
    q = torch.randn(Q, d, generator=g).to(device)
    contenders = [(f"fmkit[{b}]", (lambda b=b: knn(q, db, k, backend=b)[1]), False) for b in backends]
    anchors = [("torch mm+topk", lambda: _torch_mm_topk(q, db, k), True)]
    if device.type == "cuda":
        anchors.append(("torch cdist+topk", lambda: _torch_cdist_topk(q, db, k), True))
    if importlib.util.find_spec("faiss") is not None:
        f = _faiss(q, db, k, device)
        if f is not None:
            anchors.append(("faiss IndexFlatL2" if device.type == "cpu" else "faiss knn_gpu", f, True))
    truth = knn_reference(q[:EXACT_SAMPLE], db, k)[1].cpu()
    return {
        "shape": f"Q={Q} N={N} d={d} k={k} fp32",
        "flops": 2.0 * Q * N * d,
        "contenders": contenders + anchors,
        "exact": {name: _equal_on_sample(fn, truth) for name, fn, _ in contenders + anchors},
        "repeats": 3,
    }


def _equal_on_sample(fn, truth):
    try:
        return bool(torch.equal(fn()[: truth.shape[0]].cpu(), truth))
    except Exception:  # the timing loop reports the error itself
        return None
