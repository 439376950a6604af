"""DataComp filtering baselines over a pool directory (spec §3.2-3.6).

Every filter reads a pool (`fmkit.datacomp.pool.Pool`: per shard one metadata parquet + one
embedding npz) shard by shard with a tqdm progress bar, and returns the kept uids as a sorted
numpy structured array of dtype ("u8","u8") -- the format DataComp's resharder consumes
(`write_uids` saves it). Memory is bounded by one shard's columns/embeddings, except where noted:
`clip_score_filter(fraction=...)` keeps one float64 score per pool sample for the threshold, and
`image_based_filter` without `centroids=` holds the caption-filtered image embeddings for k-means.

Filters:
  basic_filter        English (fastText lid.176 if a model path is given and `fasttext` is
                      importable, else py3langid) AND word count > 2 AND char count > 5 AND
                      min(w, h) >= 200 AND max(w, h) / min(w, h) <= 3.0.
  clip_score_filter   keep CLIP score >= threshold; threshold given or, for `fraction` f, the
                      value at index int(f * N) of the pool's scores sorted descending.
  text_based_filter   English AND caption contains a class name (see `class_name_phrases` and
                      `text_based_filter` for the matching rule; not uid-identical to DataComp).
  image_based_filter  caption pre-filter, then keep samples whose nearest centroid (inner
                      product) is one of the centroids hit by the reference embeddings.
  image_based_intersect_clip_score
                      the DataComp-1B recipe (§3.6): clip score (L/14, top 30%) then image-based.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from .pool import (
    SCORE_COLUMNS,
    UID_DTYPE,
    Pool,
    PathLike,
    _as_uid_array,
    read_pool,
    read_uids,
    write_uids,
)

__all__ = [
    "FILTERS",
    "apply_filter",
    "basic_filter",
    "clip_score_filter",
    "clip_score_threshold",
    "text_based_filter",
    "image_based_filter",
    "image_based_intersect_clip_score",
    "datacomp_1b_filter",
    "no_filter",
    "intersect",
    "class_name_phrases",
    "caption_contains_class",
    "language_detector",
]

PoolLike = Union[PathLike, Pool]


def _pool(pool_dir: PoolLike) -> Pool:
    return pool_dir if isinstance(pool_dir, Pool) else read_pool(pool_dir)


def _progress(it, total, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, disable=not progress, unit="shard")


def _finish(parts: List[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype=UID_DTYPE)
    return np.sort(np.concatenate(parts), order=["f0", "f1"])


# --------------------------------------------------------------------------------------------
# language identification
# --------------------------------------------------------------------------------------------


def language_detector(fasttext_model: Optional[PathLike] = None) -> Callable[[Sequence[str]], List[str]]:
    """Return f(texts) -> ISO 639-1 language codes, top-1 label, no probability threshold, with
    newlines replaced by spaces first (as DataComp's `get_fasttext_language`).

    With `fasttext_model` (path to fastText `lid.176.bin`/`.ftz`) the `fasttext` package is used,
    which reproduces DataComp exactly; otherwise py3langid (a different model: results differ on
    short or ambiguous captions). Also honours $FMKIT_FASTTEXT_LID when no path is passed.
    """
    path = fasttext_model if fasttext_model is not None else os.environ.get("FMKIT_FASTTEXT_LID")
    if path is not None:
        if not Path(path).exists():
            raise ValueError(f"fastText language-id model {str(path)!r} does not exist")
        try:
            import fasttext  # type: ignore
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ValueError(
                f"fastText model {str(path)!r} given but the `fasttext` package is not importable"
            ) from e
        fasttext.FastText.eprint = lambda *a, **k: None
        model = fasttext.load_model(str(path))

        def detect_ft(texts: Sequence[str]) -> List[str]:
            if len(texts) == 0:
                return []
            labels, _ = model.predict([t.replace("\n", " ") for t in texts], k=1)
            return [lab[0].replace("__label__", "") if lab else "" for lab in labels]

        return detect_ft

    import py3langid

    def detect_langid(texts: Sequence[str]) -> List[str]:
        return [py3langid.classify(t.replace("\n", " "))[0] for t in texts]

    return detect_langid


def _texts(col: np.ndarray) -> List[str]:
    return ["" if t is None else (t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t))
            for t in col]


def _english_mask(texts: List[str], detect) -> np.ndarray:
    return np.array([lang == "en" for lang in detect(texts)], dtype=bool)


def _caption_mask(texts: List[str], min_words_exclusive: int, min_chars_exclusive: int = 5) -> np.ndarray:
    words = np.array([len(t.split()) for t in texts], dtype=np.int64)
    chars = np.array([len(t) for t in texts], dtype=np.int64)
    return (words > min_words_exclusive) & (chars > min_chars_exclusive)


# --------------------------------------------------------------------------------------------
# basic
# --------------------------------------------------------------------------------------------


def basic_filter(pool_dir: PoolLike, *, fasttext_model: Optional[PathLike] = None,
                 detect_language: Optional[Callable[[Sequence[str]], List[str]]] = None,
                 progress: bool = True) -> np.ndarray:
    """DataComp basic filter (spec §3.2): keep a sample iff
    (1) the language of its caption (newlines -> spaces) is top-1 `en`;
    (2) whitespace-split word count > 2 and character count > 5;
    (3) min(original_width, original_height) >= 200;
    (4) max(w, h) / min(w, h) <= 3.0.
    Missing/null captions or sizes fail the filter. `detect_language` (texts -> language codes)
    overrides the language identifier (see `language_detector`)."""
    pool = _pool(pool_dir)
    detect = detect_language or language_detector(fasttext_model)
    parts = []
    for shard in _progress(pool.shards, len(pool.shards), "basic_filter", progress):
        md = pool.read_metadata(shard, ["uid", "text", "original_width", "original_height"])
        texts = _texts(md["text"])
        w = np.asarray(md["original_width"], dtype=np.float64)
        h = np.asarray(md["original_height"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mn, mx = np.minimum(w, h), np.maximum(w, h)
            image_ok = (mn >= 200) & (mx / mn <= 3.0)
        keep = _caption_mask(texts, 2) & image_ok
        if keep.any():
            idx = np.flatnonzero(keep)
            eng = _english_mask([texts[i] for i in idx], detect)
            keep[idx] = eng
        parts.append(pool.read_uids(shard)[keep])
    return _finish(parts)


def no_filter(pool_dir: PoolLike, *, progress: bool = True) -> np.ndarray:
    """All uids of the pool, sorted."""
    pool = _pool(pool_dir)
    return _finish([pool.read_uids(s) for s in _progress(pool.shards, len(pool.shards), "no_filter", progress)])


# --------------------------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------------------------


def _check_arch(arch: str) -> str:
    if arch not in SCORE_COLUMNS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(SCORE_COLUMNS)}")
    return arch


def _shard_scores(pool: Pool, shard, arch: str, source: str) -> np.ndarray:
    """Per-row CLIP score of one shard: the parquet column or cosine of the npz embeddings."""
    col = SCORE_COLUMNS[arch]
    if source == "column":
        s = pool.read_metadata(shard, [col])[col]
        return np.asarray(s, dtype=np.float64)
    e = pool.read_embeddings(shard, [f"{arch}_img", f"{arch}_txt"])
    img = e[f"{arch}_img"].astype(np.float32)
    txt = e[f"{arch}_txt"].astype(np.float32)
    if img.shape != txt.shape:
        raise ValueError(f"{shard.npz}: {arch}_img {img.shape} and {arch}_txt {txt.shape} differ in shape")
    num = np.einsum("ij,ij->i", img, txt, dtype=np.float64)
    den = np.linalg.norm(img.astype(np.float64), axis=1) * np.linalg.norm(txt.astype(np.float64), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def _score_source(pool: Pool, arch: str, score_source: str) -> str:
    col = SCORE_COLUMNS[arch]
    if score_source == "auto":
        if pool.has_column(col):
            return "column"
        if pool.has_embeddings([f"{arch}_img", f"{arch}_txt"]):
            return "embeddings"
        shard = next(s for s in pool.shards if col not in pool.schema_names(s))
        raise ValueError(f"{shard.parquet}: missing column {col!r} and no {arch}_img/{arch}_txt "
                         f"embeddings in {shard.parquet.with_suffix('.npz')} to compute it from")
    if score_source not in ("column", "embeddings"):
        raise ValueError(f"score_source must be 'auto', 'column' or 'embeddings', got {score_source!r}")
    return score_source


def clip_score_threshold(pool_dir: PoolLike, fraction: float, *, arch: str = "l14",
                         score_source: str = "auto", progress: bool = True) -> float:
    """DataComp `get_threshold`: the value at index int(fraction * N) of all N pool scores
    sorted descending (NaN scores sort last). fraction=1 (index N) returns the minimum score."""
    pool = _pool(pool_dir)
    _check_arch(arch)
    if not (0.0 <= float(fraction) <= 1.0):
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    src = _score_source(pool, arch, score_source)
    scores = [_shard_scores(pool, s, arch, src)
              for s in _progress(pool.shards, len(pool.shards), f"clip_score[{arch}] threshold", progress)]
    scores = np.concatenate(scores) if scores else np.empty(0)
    n_total = scores.shape[0]
    if n_total == 0:
        raise ValueError(f"empty pool: {pool.pool_dir} has no rows")
    idx = min(int(n_total * float(fraction)), n_total - 1)
    neg = -scores  # NaN stays NaN and sorts last, like -np.sort(-x)
    return float(-np.partition(neg, idx)[idx])


def clip_score_filter(pool_dir: PoolLike, *, arch: str = "l14", fraction: Optional[float] = None,
                      threshold: Optional[float] = None, score_source: str = "auto",
                      progress: bool = True) -> np.ndarray:
    """Keep samples whose CLIP score (arch "l14" or "b32") is >= a threshold (spec §3.3).

    Exactly one of `threshold` (absolute) or `fraction` (keep the top fraction: the threshold is
    `clip_score_threshold`, computed in a first pass over the whole pool) must be given. Scores
    come from the parquet column clip_{arch}_similarity_score when every shard has it
    (score_source="auto"), else from the cosine of the npz {arch}_img / {arch}_txt rows.
    Ties at the threshold are all kept, so slightly more than fraction * N may survive."""
    pool = _pool(pool_dir)
    _check_arch(arch)
    if (fraction is None) == (threshold is None):
        raise ValueError("clip_score_filter: give exactly one of fraction= or threshold=")
    src = _score_source(pool, arch, score_source)
    if threshold is None:
        threshold = clip_score_threshold(pool, fraction, arch=arch, score_source=src, progress=progress)
    parts = []
    for shard in _progress(pool.shards, len(pool.shards), f"clip_score[{arch}]", progress):
        s = _shard_scores(pool, shard, arch, src)
        parts.append(pool.read_uids(shard)[s >= threshold])
    return _finish(parts)


# --------------------------------------------------------------------------------------------
# text based
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")


def _tokens(text: str) -> List[str]:
    return _TOKEN.findall(text.lower())


def class_name_phrases(class_names: Iterable[str]) -> List[tuple]:
    """Token sequences matched by `text_based_filter` for each class name.

    A name is lower-cased; a parenthetical is dropped ("kite (bird of prey)" -> "kite");
    " / " separates alternatives ("baluster / handrail" -> "baluster", "handrail"); each phrase is
    split into tokens of Unicode letters/digits (any other character -- space, hyphen,
    apostrophe, period, underscore -- separates tokens: "three-toed sloth" -> (three, toed,
    sloth), "potter's wheel" -> (potter, s, wheel)). Duplicates are removed."""
    out, seen = [], set()
    for name in class_names:
        base = re.sub(r"\([^)]*\)", " ", str(name))
        for alt in base.split("/"):
            toks = tuple(_tokens(alt))
            if toks and toks not in seen:
                seen.add(toks)
                out.append(toks)
    return out


class _PhraseMatcher:
    def __init__(self, class_names: Iterable[str]):
        phrases = class_name_phrases(class_names)
        if not phrases:
            raise ValueError("text_based_filter: class-name list is empty")
        self.phrases = set(phrases)
        self.lengths = sorted({len(p) for p in phrases})

    def __call__(self, text: str) -> bool:
        toks = _tokens(text)
        for n in self.lengths:
            for i in range(len(toks) - n + 1):
                if tuple(toks[i:i + n]) in self.phrases:
                    return True
        return False


def caption_contains_class(text: str, class_names: Iterable[str]) -> bool:
    """True if `text` contains one of `class_names` under `text_based_filter`'s rule."""
    return _PhraseMatcher(class_names)(text)


def text_based_filter(pool_dir: PoolLike, *, class_names: Optional[Sequence[str]] = None,
                      fasttext_model: Optional[PathLike] = None, require_english: bool = True,
                      detect_language: Optional[Callable[[Sequence[str]], List[str]]] = None,
                      progress: bool = True) -> np.ndarray:
    """Text-based filter (spec §3.4): English caption (as in `basic_filter`; no length or size
    rules) AND the caption mentions a class name.

    Matching rule: caption and class names are lower-cased and tokenised into runs of Unicode
    letters/digits (punctuation, hyphens, apostrophes and whitespace separate tokens); a caption
    matches if the token sequence of any class-name phrase (see `class_name_phrases`) occurs as a
    contiguous run of caption tokens -- i.e. case-insensitive whole-word match for one-word names
    and whole-phrase match for multi-word names. No stemming or plural handling ("dogs" does not
    match "dog"), no synonyms.

    `class_names` defaults to the bundled ImageNet-1k names
    (`fmkit.datacomp.imagenet_classes.IMAGENET_CLASSES`). DataComp's reference instead looks up
    the first WordNet synset of each whitespace-split word and tests membership in the
    ImageNet-21k synset set, so results are NOT uid-identical to DataComp's text-based baseline.
    """
    if class_names is None:
        from .imagenet_classes import IMAGENET_CLASSES

        class_names = IMAGENET_CLASSES
    matcher = _PhraseMatcher(class_names)
    pool = _pool(pool_dir)
    detect = (detect_language or language_detector(fasttext_model)) if require_english else None
    parts = []
    for shard in _progress(pool.shards, len(pool.shards), "text_based", progress):
        md = pool.read_metadata(shard, ["uid", "text"])
        texts = _texts(md["text"])
        keep = np.array([matcher(t) for t in texts], dtype=bool)
        if detect is not None and keep.any():
            idx = np.flatnonzero(keep)
            keep[idx] = _english_mask([texts[i] for i in idx], detect)
        parts.append(pool.read_uids(shard)[keep])
    return _finish(parts)


# --------------------------------------------------------------------------------------------
# image based
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    elif hasattr(x, "get") and not isinstance(x, np.ndarray) and not isinstance(x, dict):
        x = x.get()  # cupy
    return np.asarray(x)


def _load_array(x: Any, what: str) -> np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.exists():
            raise ValueError(f"{what}: file {str(p)!r} does not exist")
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if len(z.files) != 1:
                    raise ValueError(f"{what}: {p} holds {z.files}; pass the array itself")
                x = z[z.files[0]]
        else:
            x = np.load(p, allow_pickle=False)
    a = _to_numpy(x)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty [n, d] array, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _nearest_centroid(x: np.ndarray, centroids: np.ndarray, batch_size: int) -> np.ndarray:
    """Index of the max-inner-product centroid for each row (fmkit.ops.knn, metric="ip")."""
    from fmkit.ops import knn

    out = np.empty(x.shape[0], dtype=np.int64)
    for i in range(0, x.shape[0], batch_size):
        _, idx = knn(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32), centroids, 1, metric="ip")
        out[i:i + batch_size] = _to_numpy(idx)[:, 0]
    return out


def _run_kmeans(x: np.ndarray, n_clusters: int, iters: int, seed: int, metric: str) -> np.ndarray:
    from fmkit.cluster import kmeans

    try:
        centroids, _ = kmeans(x, n_clusters, iters=iters, metric=metric, seed=seed)
    except TypeError:
        import torch

        centroids, _ = kmeans(torch.from_numpy(x), n_clusters, iters=iters, metric=metric, seed=seed)
    return np.ascontiguousarray(_to_numpy(centroids), dtype=np.float32)


def _image_caption_mask(texts: List[str], detect) -> np.ndarray:
    # DataComp `caption_filter`: fastText English AND > 1 word AND > 5 characters. DataComp counts
    # words with fasttext.tokenize; we split on whitespace (identical except for the "</s>" token
    # fastText emits for newlines).
    keep = _caption_mask(texts, 1)
    if keep.any():
        idx = np.flatnonzero(keep)
        keep[idx] = _english_mask([texts[i] for i in idx], detect)
    return keep


def image_based_filter(
    pool_dir: PoolLike,
    reference_embeddings: Any = None,
    *,
    centroids: Any = None,
    n_clusters: Optional[int] = None,
    iters: int = 20,
    seed: int = 0,
    kmeans_sample_fraction: Optional[float] = None,
    kmeans_metric: str = "l2",
    embedding_key: str = "l14_img",
    fasttext_model: Optional[PathLike] = None,
    detect_language: Optional[Callable[[Sequence[str]], List[str]]] = None,
    clip_threshold: Optional[float] = None,
    clip_arch: str = "l14",
    batch_size: int = 1024,
    progress: bool = True,
    return_centroids: bool = False,
):
    """Image-based filter (spec §3.5).

    1. Caption pre-filter: English AND > 1 whitespace word AND > 5 characters.
    2. Image embeddings `embedding_key` (default l14_img) of the survivors.
    3. Centroids: `centroids` if given ([K, d], e.g. DataComp's released *_centroids_l14.pt
       converted to numpy), else `fmkit.cluster.kmeans(x, n_clusters, iters=iters,
       metric=kmeans_metric, seed=seed)` over the caption-filtered embeddings of the whole pool
       (optionally a random `kmeans_sample_fraction` of them, like DataComp's large/xlarge).
       DataComp uses K=100,000, 20 iterations, seed 0 and trains with faiss's flat-L2 index, hence
       kmeans_metric="l2" by default; the assignment below is by inner product regardless.
    4. Each reference embedding (`reference_embeddings`: [R, d] array or .npy path, e.g.
       ImageNet-1k train L/14 image embeddings) goes to its max-inner-product centroid; the
       kept set S is the set of centroids hit.
    5. Each caption-filtered pool sample goes to its max-inner-product centroid
       (fmkit.ops.knn, metric="ip", batches of `batch_size`); keep it if its centroid is in S.

    With `clip_threshold`, rows with clip_{clip_arch} score < threshold are dropped before step
    1 of the assignment pass (DataComp-1B order, §3.6); k-means still runs on the
    caption-filtered pool, as DataComp's precomputed centroids do.
    Returns the sorted uid array, or (uids, centroids) with `return_centroids=True`.
    """
    pool = _pool(pool_dir)
    if reference_embeddings is None:
        raise ValueError("image_based_filter: reference_embeddings is required (e.g. ImageNet-1k "
                         "L/14 image embeddings, [n, d])")
    ref = _load_array(reference_embeddings, "reference_embeddings")
    detect = detect_language or language_detector(fasttext_model)
    score_src = None
    if clip_threshold is not None:
        _check_arch(clip_arch)
        score_src = _score_source(pool, clip_arch, "auto")

    # the caption mask is reused by the assignment pass; one bool per sample
    caption_masks: Dict[str, np.ndarray] = {}

    def caption_mask(shard) -> np.ndarray:
        if shard.stem not in caption_masks:
            texts = _texts(pool.read_metadata(shard, ["text"])["text"])
            caption_masks[shard.stem] = _image_caption_mask(texts, detect)
        return caption_masks[shard.stem]

    if centroids is not None:
        cent = _load_array(centroids, "centroids")
    else:
        if n_clusters is None or int(n_clusters) < 1:
            raise ValueError("image_based_filter: pass centroids= or a positive n_clusters= for k-means")
        rng = np.random.default_rng(seed)
        xs = []
        for shard in _progress(pool.shards, len(pool.shards), "image_based k-means input", progress):
            m = caption_mask(shard)
            if kmeans_sample_fraction is not None:
                m = m & (rng.random(m.shape[0]) < float(kmeans_sample_fraction))
            if m.any():
                xs.append(pool.read_embeddings(shard, [embedding_key])[embedding_key][m].astype(np.float32))
        x = np.concatenate(xs) if xs else np.empty((0, ref.shape[1]), np.float32)
        if x.shape[0] < int(n_clusters):
            raise ValueError(f"image_based_filter: only {x.shape[0]} caption-filtered samples in "
                             f"{pool.pool_dir} for n_clusters={n_clusters}")
        cent = _run_kmeans(np.ascontiguousarray(x), int(n_clusters), iters, seed, kmeans_metric)
        del x, xs
    if cent.shape[1] != ref.shape[1]:
        raise ValueError(f"image_based_filter: centroids have dim {cent.shape[1]} but "
                         f"reference_embeddings have dim {ref.shape[1]}")
    target = np.zeros(cent.shape[0], dtype=bool)
    target[np.unique(_nearest_centroid(ref, cent, batch_size))] = True

    parts = []
    for shard in _progress(pool.shards, len(pool.shards), "image_based", progress):
        keep = caption_mask(shard).copy()
        if score_src is not None:
            keep &= _shard_scores(pool, shard, clip_arch, score_src) >= clip_threshold
        if keep.any():
            emb = pool.read_embeddings(shard, [embedding_key])[embedding_key]
            if emb.shape[1] != cent.shape[1]:
                raise ValueError(f"{shard.npz}: {embedding_key} has dim {emb.shape[1]}, centroids "
                                 f"have dim {cent.shape[1]}")
            idx = np.flatnonzero(keep)
            keep[idx] = target[_nearest_centroid(emb[idx], cent, batch_size)]
        parts.append(pool.read_uids(shard)[keep])
        caption_masks.pop(shard.stem, None)
    uids = _finish(parts)
    return (uids, cent) if return_centroids else uids


def image_based_intersect_clip_score(pool_dir: PoolLike, reference_embeddings: Any = None, *,
                                     arch: str = "l14", fraction: Optional[float] = 0.3,
                                     threshold: Optional[float] = None, progress: bool = True,
                                     **image_kw) -> np.ndarray:
    """DataComp-1B recipe (spec §3.6): CLIP-score threshold (default L/14 top 30%, computed over
    the whole pool) applied per shard, then the caption pre-filter and cluster test of
    `image_based_filter` (same keyword arguments). Equal to
    intersect(image_based_filter(...), clip_score_filter(arch, fraction)) for fixed centroids."""
    pool = _pool(pool_dir)
    _check_arch(arch)
    if threshold is None:
        if fraction is None:
            raise ValueError("give fraction= or threshold=")
        threshold = clip_score_threshold(pool, fraction, arch=arch, progress=progress)
    return image_based_filter(pool, reference_embeddings, clip_threshold=threshold, clip_arch=arch,
                              progress=progress, **image_kw)


datacomp_1b_filter = image_based_intersect_clip_score


# --------------------------------------------------------------------------------------------
# composition / driver
# --------------------------------------------------------------------------------------------


def intersect(*uid_sets: Any) -> np.ndarray:
    """Sorted intersection of uid sets (structured ("u8","u8") arrays, hex-string lists, or
    paths of uid .npy files)."""
    if not uid_sets:
        raise ValueError("intersect: need at least one uid set")
    arrays = []
    for i, u in enumerate(uid_sets):
        if isinstance(u, (str, os.PathLike)):
            arrays.append(read_uids(u))
        else:
            arrays.append(_as_uid_array(u, f"uid set {i}"))
    # pack (upper, lower) into a sortable complex-free key: lexicographic order on two uint64s
    def key(a):
        a = np.unique(a)
        v = np.empty((a.shape[0], 2), dtype=np.uint64)
        v[:, 0], v[:, 1] = a["f0"], a["f1"]
        return a, v.view(np.dtype((np.void, 16))).ravel()

    out, out_key = key(arrays[0])
    for a in arrays[1:]:
        _, k = key(a)
        m = np.isin(out_key, k)
        out, out_key = out[m], out_key[m]
    return np.sort(out, order=["f0", "f1"])


FILTERS: Dict[str, Callable[..., Any]] = {
    "no_filter": no_filter,
    "basic": basic_filter,
    "basic_filter": basic_filter,
    "clip_score": clip_score_filter,
    "text_based": text_based_filter,
    "image_based": image_based_filter,
    "image_based_intersect_clip_score": image_based_intersect_clip_score,
    "datacomp_1b": datacomp_1b_filter,
}


def apply_filter(name: str, pool_dir: PoolLike, out_path: PathLike, **kw) -> np.ndarray:
    """Run filter `name` (a key of FILTERS) on `pool_dir` and write the sorted uid .npy to
    `out_path` (DataComp resharder format). Returns the uid array."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; known filters: {sorted(FILTERS)}")
    fn = FILTERS[name]
    res = fn(pool_dir, **kw)
    uids = res[0] if isinstance(res, tuple) else res
    return write_uids(uids, out_path)
