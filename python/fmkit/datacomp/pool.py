"""DataComp-style pool I/O: metadata parquet, embedding npz, WebDataset tar shards, uid lists.

Layout of a pool directory (DataComp spec §3.1), one triple per shard with a common stem::

    pool_dir/00000000.parquet   uid (32-hex-digit string), text, original_width, original_height,
                                clip_b32_similarity_score, clip_l14_similarity_score, ...
    pool_dir/00000000.npz       l14_img, l14_txt, b32_img, b32_txt: [rows, d] arrays aligned
                                row-by-row with the parquet
    pool_dir/00000000.tar       WebDataset shard: {key}.jpg, {key}.txt, {key}.json per sample
                                (optional; may live in a separate `shards_dir`)

A subset is written exactly as DataComp's `resharder.py` consumes it: a numpy structured array of
dtype ``np.dtype("u8,u8")`` (fields ``f0``, ``f1``) holding the upper and lower 64 bits of the
128-bit hex uid, sorted lexicographically, saved with ``np.save`` (`write_uids` / `read_uids`).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from fmkit._output import replace_dir, replace_file

PathLike = Union[str, os.PathLike]

UID_DTYPE = np.dtype("u8,u8")

EMBEDDING_KEYS = ("l14_img", "l14_txt", "b32_img", "b32_txt")
SCORE_COLUMNS = {"l14": "clip_l14_similarity_score", "b32": "clip_b32_similarity_score"}

__all__ = [
    "UID_DTYPE",
    "Pool",
    "Shard",
    "SyntheticPoolInfo",
    "read_pool",
    "uids_to_array",
    "uids_to_hex",
    "write_uids",
    "read_uids",
    "write_tar_shard",
    "read_tar_shard",
    "make_synthetic_pool",
]


# --------------------------------------------------------------------------------------------
# uids
# --------------------------------------------------------------------------------------------


def uids_to_array(uids: Iterable[str], *, source: str = "uids") -> np.ndarray:
    """Hex uid strings -> unsorted structured array of dtype ("u8","u8") (upper, lower 64 bits).

    Each uid must be exactly 32 hexadecimal digits (DataComp's 128-bit uids).
    """
    uids = [u if isinstance(u, str) else (u.decode() if isinstance(u, bytes) else u) for u in uids]
    out = np.empty(len(uids), dtype=UID_DTYPE)
    if not uids:
        return out
    for u in uids:
        if not isinstance(u, str) or len(u) != 32:
            raise ValueError(f"{source}: uid {u!r} is not a 32-digit hex string")
    try:
        raw = bytes.fromhex("".join(uids))
    except ValueError as e:
        bad = next((u for u in uids if not _is_hex(u)), None)
        raise ValueError(f"{source}: uid {bad!r} is not a 32-digit hex string") from e
    words = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
    out["f0"] = words[:, 0]
    out["f1"] = words[:, 1]
    return out


def _is_hex(u: str) -> bool:
    try:
        bytes.fromhex(u)
        return True
    except ValueError:
        return False


def uids_to_hex(arr: np.ndarray) -> List[str]:
    """Structured ("u8","u8") uid array -> list of 32-digit lowercase hex strings."""
    arr = _as_uid_array(arr, "uids")
    return [f"{int(a):016x}{int(b):016x}" for a, b in zip(arr["f0"], arr["f1"])]


def _as_uid_array(uids: Any, source: str) -> np.ndarray:
    if isinstance(uids, np.ndarray) and uids.dtype.names is not None:
        if len(uids.dtype.names) != 2 or any(
            uids.dtype.fields[n][0] != np.dtype("u8") for n in uids.dtype.names
        ):
            raise ValueError(f"{source}: expected a structured uid array of dtype ('u8','u8'), "
                             f"got {uids.dtype}")
        if uids.dtype != UID_DTYPE:
            out = np.empty(uids.shape[0], dtype=UID_DTYPE)
            out["f0"] = uids[uids.dtype.names[0]]
            out["f1"] = uids[uids.dtype.names[1]]
            return out
        return uids.reshape(-1)
    return uids_to_array(list(uids), source=source)


def write_uids(uids: Any, path: PathLike) -> np.ndarray:
    """Sort and save a uid subset as DataComp's resharder reads it (``np.save`` of a ("u8","u8")
    structured array, sorted lexicographically by (upper, lower)). Accepts a structured array or
    an iterable of 32-digit hex strings. Returns the sorted array."""
    arr = np.sort(_as_uid_array(uids, str(path)), order=["f0", "f1"])
    # Replaced in one rename: a failure part-way leaves the previous file, never half of one.
    with replace_file(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)  # a file handle: np.save would append ".npy" to other suffixes
    return arr


def read_uids(path: PathLike) -> np.ndarray:
    """Load a uid .npy written by `write_uids` (or DataComp's baselines)."""
    arr = np.load(path, allow_pickle=False)
    if arr.dtype.names is None or len(arr.dtype.names) != 2:
        raise ValueError(f"{path}: not a DataComp uid file (dtype {arr.dtype}, expected ('u8','u8'))")
    return _as_uid_array(arr, str(path))


# --------------------------------------------------------------------------------------------
# pool reader
# --------------------------------------------------------------------------------------------


@dataclass
class Shard:
    stem: str
    parquet: Path
    npz: Optional[Path]
    tar: Optional[Path]


class Pool:
    """Reader over a DataComp-style pool directory (see module docstring).

    Shards are the ``*.parquet`` files of `pool_dir` in sorted order; the ``.npz`` and ``.tar``
    with the same stem are attached when present (tars are looked up in `shards_dir`, default
    `pool_dir`). Everything streams shard by shard; nothing is held for the whole pool.
    """

    def __init__(self, pool_dir: PathLike, shards_dir: Optional[PathLike] = None):
        self.pool_dir = Path(pool_dir)
        if not self.pool_dir.is_dir():
            raise ValueError(f"pool directory {str(self.pool_dir)!r} does not exist")
        tar_dir = Path(shards_dir) if shards_dir is not None else self.pool_dir
        parquets = sorted(self.pool_dir.glob("*.parquet"))
        if not parquets:
            raise ValueError(f"empty pool: no .parquet metadata files in {str(self.pool_dir)!r}")
        self.shards: List[Shard] = []
        for p in parquets:
            npz = p.with_suffix(".npz")
            tar = tar_dir / (p.stem + ".tar")
            self.shards.append(Shard(p.stem, p, npz if npz.exists() else None,
                                     tar if tar.exists() else None))
        self._rows: Dict[str, int] = {}
        if len(self) == 0:
            raise ValueError(f"empty pool: the {len(parquets)} .parquet files in "
                             f"{str(self.pool_dir)!r} have no rows")

    def __repr__(self) -> str:
        return f"Pool({str(self.pool_dir)!r}, shards={len(self.shards)})"

    def __len__(self) -> int:
        return sum(self.shard_rows(s) for s in self.shards)

    # -- metadata ------------------------------------------------------------------------------

    def schema_names(self, shard: Shard) -> List[str]:
        import pyarrow.parquet as pq

        return list(pq.read_schema(shard.parquet).names)

    def shard_rows(self, shard: Shard) -> int:
        if shard.stem not in self._rows:
            import pyarrow.parquet as pq

            self._rows[shard.stem] = pq.ParquetFile(shard.parquet).metadata.num_rows
        return self._rows[shard.stem]

    def has_column(self, column: str) -> bool:
        """True when every shard's parquet has `column`."""
        return all(column in self.schema_names(s) for s in self.shards)

    def read_metadata(self, shard: Shard, columns: Sequence[str]) -> Dict[str, Any]:
        """Read `columns` of one shard as a dict of numpy arrays (strings as object arrays)."""
        import pyarrow.parquet as pq

        names = self.schema_names(shard)
        for c in columns:
            if c not in names:
                raise ValueError(f"{shard.parquet}: missing column {c!r} (has {names})")
        table = pq.read_table(shard.parquet, columns=list(columns))
        out = {}
        for c in columns:
            col = table.column(c)
            if col.type in _string_types():
                out[c] = np.array(col.to_pylist(), dtype=object)
            else:
                out[c] = col.to_numpy(zero_copy_only=False)
        return out

    def read_uids(self, shard: Shard) -> np.ndarray:
        """The shard's uids as an unsorted ("u8","u8") array, in row order."""
        uid = self.read_metadata(shard, ["uid"])["uid"]
        return uids_to_array(list(uid), source=f"{shard.parquet} column 'uid'")

    # -- embeddings ----------------------------------------------------------------------------

    def read_embeddings(self, shard: Shard, keys: Sequence[str]) -> Dict[str, np.ndarray]:
        """Load arrays `keys` of the shard's npz, checking they align with the parquet rows."""
        if shard.npz is None:
            raise ValueError(f"{shard.parquet}: no embeddings file {shard.parquet.with_suffix('.npz')}")
        n = self.shard_rows(shard)
        out = {}
        with np.load(shard.npz, allow_pickle=False) as z:
            for k in keys:
                if k not in z.files:
                    raise ValueError(f"{shard.npz}: missing array {k!r} (has {sorted(z.files)})")
                a = z[k]
                if a.ndim != 2 or a.shape[0] != n:
                    raise ValueError(f"{shard.npz}: array {k!r} has shape {a.shape}, misaligned with "
                                     f"{n} rows of {shard.parquet}")
                out[k] = a
        return out

    def has_embeddings(self, keys: Sequence[str]) -> bool:
        for s in self.shards:
            if s.npz is None:
                return False
            with np.load(s.npz, allow_pickle=False) as z:
                if any(k not in z.files for k in keys):
                    return False
        return True

    # -- images --------------------------------------------------------------------------------

    def iter_samples(self, shard: Shard, decode: bool = False) -> Iterator[Dict[str, Any]]:
        if shard.tar is None:
            raise ValueError(f"{shard.parquet}: no image shard {shard.stem}.tar")
        return read_tar_shard(shard.tar, decode=decode)


def _string_types():
    import pyarrow as pa

    return (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())


def read_pool(pool_dir: PathLike, shards_dir: Optional[PathLike] = None) -> Pool:
    """Open a pool directory (ValueError if it has no parquet shards)."""
    return Pool(pool_dir, shards_dir)


# --------------------------------------------------------------------------------------------
# WebDataset tar shards
# --------------------------------------------------------------------------------------------


def write_tar_shard(path: PathLike, samples: Iterable[Dict[str, Any]]) -> int:
    """Write a WebDataset shard. Each sample: {"key": str, "jpg": bytes or PIL.Image,
    "txt": str, "json": dict}. Members are {key}.jpg, {key}.txt, {key}.json in that order.
    Returns the number of samples written."""
    n = 0
    with tarfile.open(path, "w") as tf:
        for s in samples:
            key = str(s["key"])
            jpg = s["jpg"]
            if not isinstance(jpg, (bytes, bytearray)):
                buf = io.BytesIO()
                jpg.convert("RGB").save(buf, format="JPEG", quality=90)
                jpg = buf.getvalue()
            members = [
                ("jpg", bytes(jpg)),
                ("txt", str(s.get("txt", "")).encode("utf-8")),
                ("json", json.dumps(s.get("json", {}), sort_keys=True).encode("utf-8")),
            ]
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
            n += 1
    return n


def read_tar_shard(path: PathLike, decode: bool = False) -> Iterator[Dict[str, Any]]:
    """Iterate a WebDataset shard, grouping consecutive members by key (the name up to the first
    dot of the basename). Yields {"key", "jpg" (bytes, or PIL.Image with decode=True), "txt"
    (str), "json" (dict)}; members with other extensions are returned as raw bytes."""
    cur: Optional[Dict[str, Any]] = None
    with tarfile.open(path, "r") as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = os.path.basename(m.name)
            dirname = os.path.dirname(m.name)
            if "." not in base:
                continue
            k, ext = base.split(".", 1)
            key = f"{dirname}/{k}" if dirname else k
            data = tf.extractfile(m).read()
            if cur is None or cur["key"] != key:
                if cur is not None:
                    yield cur
                cur = {"key": key}
            if ext == "txt":
                cur["txt"] = data.decode("utf-8")
            elif ext == "json":
                cur["json"] = json.loads(data.decode("utf-8"))
            elif ext in ("jpg", "jpeg", "png", "webp") and decode:
                from PIL import Image

                img = Image.open(io.BytesIO(data))
                img.load()
                cur[ext] = img
            else:
                cur[ext] = data
    if cur is not None:
        yield cur


# --------------------------------------------------------------------------------------------
# synthetic pool
# --------------------------------------------------------------------------------------------

# Class names: the first half are ImageNet-1k names, the second half are not (and contain no
# ImageNet name as a word/phrase), so the text-based filter has a known answer.
DEFAULT_SYNTHETIC_CLASSES = (
    "goldfish", "school bus", "banana", "red fox",
    "sunset", "skyline", "wedding", "logo",
)

_NON_ENGLISH_TEMPLATES = (
    "ein wunderschönes Foto von dem {c} in unserem Garten heute",
    "une très belle photo du {c} dans notre jardin aujourd'hui",
    "una fotografía muy bonita del {c} en nuestro jardín hoy",
    "una bellissima fotografia del {c} nel nostro giardino oggi",
)

_SHAPES = ("circle", "square", "triangle", "hstripes", "vstripes", "cross", "diamond", "checker")

# Per-image attributes (make_synthetic_pool(attributes=True)): a background and a corner mark
# of some size and colour, drawn into the image and named in the caption, so that a caption
# identifies its own image among others of the same class (what a retrieval task needs).
# 2 x 2 x 4 x 4 = 64 combinations per class. None of these words is an ImageNet class name.
_BACKGROUNDS = {"black": (20, 20, 20), "white": (235, 235, 235)}
_MARK_SIZES = {"small": 0.16, "big": 0.34}
_MARK_COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 60, 230), "yellow": (240, 220, 20)}
_MARK_CORNERS = ("top left", "top right", "bottom left", "bottom right")
N_ATTRIBUTES = len(_BACKGROUNDS) * len(_MARK_SIZES) * len(_MARK_COLOURS) * len(_MARK_CORNERS)


def _attribute_parts(index: int) -> tuple[str, str, str, str]:
    """(background, mark size, mark colour, corner) of attribute combination `index`."""
    index, corner = divmod(index, len(_MARK_CORNERS))
    index, colour = divmod(index, len(_MARK_COLOURS))
    background, size = divmod(index, len(_MARK_SIZES))
    return (list(_BACKGROUNDS)[background], list(_MARK_SIZES)[size], list(_MARK_COLOURS)[colour],
            _MARK_CORNERS[corner])


def attribute_phrase(index: int) -> str:
    """The caption words of attribute combination `index`, e.g. "big red mark top left on black"."""
    background, size, colour, corner = _attribute_parts(index)
    return f"{size} {colour} mark {corner} on {background}"


@dataclass
class SyntheticPoolInfo:
    """Ground truth of a `make_synthetic_pool` pool (row order = shard order, then row order)."""

    pool_dir: Path
    uids: List[str]
    captions: List[str]
    labels: np.ndarray            # image class per sample
    caption_labels: np.ndarray    # class named in the caption (== labels unless corrupted)
    kind: np.ndarray              # "clean" | "corrupt" | "non_english" caption
    width: np.ndarray
    height: np.ndarray
    english: np.ndarray           # caption is English (kind != "non_english")
    size_ok: np.ndarray           # min(w, h) >= 200 and max/min <= 3
    clean: np.ndarray             # true English caption and size_ok (what basic+CLIP should keep)
    class_names: List[str]
    target_classes: List[int]     # the "ImageNet-like" classes of `reference_l14`
    reference_l14: np.ndarray     # reference image embeddings (unit-norm) of the target classes
    prototypes: Dict[str, np.ndarray] = field(default_factory=dict)  # "l14"/"b32" -> [K, d]
    attributes: Optional[np.ndarray] = None  # attribute combination per sample (-1: none)

    def uid_array(self, mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Sorted ("u8","u8") array of the uids selected by `mask` (all when None)."""
        u = self.uids if mask is None else [x for x, m in zip(self.uids, mask) if m]
        return np.sort(uids_to_array(u), order=["f0", "f1"])


def _draw_image(label: int, rng: np.random.Generator, size: int, num_classes: int, attribute: int | None = None):
    from PIL import Image, ImageDraw

    hue = label / max(num_classes, 1)
    base = np.array([0.5 + 0.5 * np.cos(2 * np.pi * (hue + o)) for o in (0, 1 / 3, 2 / 3)])
    fg = tuple(int(255 * v) for v in base)
    bg = tuple(int(255 * (1 - v) * 0.6 + 40) for v in base)
    if attribute is not None:
        bg = _BACKGROUNDS[_attribute_parts(attribute)[0]]
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    j = int(rng.integers(-2, 3))
    s = size
    shape = _SHAPES[label % len(_SHAPES)]
    if shape == "circle":
        d.ellipse([s * 0.2 + j, s * 0.2 + j, s * 0.8 + j, s * 0.8 + j], fill=fg)
    elif shape == "square":
        d.rectangle([s * 0.25 + j, s * 0.25 + j, s * 0.75 + j, s * 0.75 + j], fill=fg)
    elif shape == "triangle":
        d.polygon([(s * 0.5 + j, s * 0.15), (s * 0.85, s * 0.85 + j), (s * 0.15, s * 0.85 + j)], fill=fg)
    elif shape == "hstripes":
        for y in range(0, s, 6):
            d.rectangle([0, y + j % 3, s, y + j % 3 + 2], fill=fg)
    elif shape == "vstripes":
        for x in range(0, s, 6):
            d.rectangle([x + j % 3, 0, x + j % 3 + 2, s], fill=fg)
    elif shape == "cross":
        d.rectangle([s * 0.4 + j, 0, s * 0.6 + j, s], fill=fg)
        d.rectangle([0, s * 0.4 + j, s, s * 0.6 + j], fill=fg)
    elif shape == "diamond":
        c = s / 2 + j
        d.polygon([(c, s * 0.1), (s * 0.9, c), (c, s * 0.9), (s * 0.1, c)], fill=fg)
    else:
        step = max(s // 4, 1)
        for y in range(0, s, step):
            for x in range(0, s, step):
                if ((x // step) + (y // step)) % 2 == 0:
                    d.rectangle([x, y, x + step - 1, y + step - 1], fill=fg)
    if attribute is not None:  # drawn last, over the shape, so it is always visible
        _, mark_size, colour, corner = _attribute_parts(attribute)
        m = max(int(round(_MARK_SIZES[mark_size] * s)), 2)
        x0 = 1 if corner.endswith("left") else s - 1 - m
        y0 = 1 if corner.startswith("top") else s - 1 - m
        d.rectangle([x0, y0, x0 + m - 1, y0 + m - 1], fill=_MARK_COLOURS[colour])
    return img


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_synthetic_pool(
    out_dir: PathLike,
    n: int = 256,
    *,
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
    shard_size: int = 128,
    dims: Optional[Dict[str, int]] = None,
    corrupt_frac: float = 0.2,
    non_english_frac: float = 0.15,
    bad_size_frac: float = 0.2,
    target_classes: Optional[Sequence[int]] = None,
    n_reference: int = 64,
    image_size: int = 32,
    write_images: bool = True,
    write_scores: bool = True,
    noise: float = 0.35,
    embedding_dtype: Any = np.float32,
    caption_template: str = "a photo of a {c} in the garden",
    attributes: bool = False,
    overwrite: bool = False,
) -> SyntheticPoolInfo:
    """Write a small DataComp-format pool with known ground truth (no network).

    Per sample: a class label; a 32x32 JPEG of a class-dependent colored shape; a caption that
    is either true (`caption_template`, default "a photo of a {c} in the garden"; the bare
    "a photo of a banana" is not identified as English by py3langid), corrupted (names a different class) or non-English
    (true class inside a German/French/Spanish/Italian sentence); original_width/height drawn so
    that `bad_size_frac` of samples violate the basic filter's size or aspect rule (the
    original_* columns describe the notional source image, as in DataComp, not the stored
    thumbnail). Synthetic "CLIP" embeddings per model (l14: 64-d, b32: 48-d by default; unit
    norm): image = normalize(prototype[label] + noise), text = normalize(prototype[caption
    class] + noise), with non-English text embeddings pushed away (extra noise), so true pairs
    have high cosine and corrupted ones low. The parquet also gets
    clip_{l14,b32}_similarity_score (the cosine) unless `write_scores=False`.

    Files: {out_dir}/{shard:08d}.parquet, .npz and (with `write_images`) .tar.
    `reference_l14` are ImageNet-like reference image embeddings drawn around the prototypes of
    `target_classes` (default: classes 0..K/2-1).

    `attributes=True` gives every image one of 64 attribute combinations (black or white
    background; a small or big red, green, blue or yellow mark in one of the four corners) and
    appends them to its English caption ("..., big red mark top left on black"); the (class,
    attributes) pairs are drawn without replacement (cycling after all 64 K), so with n <= 64 K
    no two clean captions are equal. `info.attributes` holds each sample's combination (-1 without).

    `out_dir` must be empty or absent unless `overwrite=True`; the pool is written beside it and
    renamed into place when complete, so an old pool is replaced whole, never mixed with the new
    one, and a failure leaves it as it was.
    """
    import pyarrow.parquet  # noqa: F401  (a missing pyarrow fails here, before out_dir is touched)

    if n <= 0:
        raise ValueError(f"make_synthetic_pool: n must be positive, got {n}")
    names = list(class_names) if class_names is not None else list(DEFAULT_SYNTHETIC_CLASSES)
    k = len(names)
    if k < 2:
        raise ValueError("make_synthetic_pool: need at least 2 classes")
    dims = dict(dims) if dims is not None else {"l14": 64, "b32": 48}
    targets = list(target_classes) if target_classes is not None else list(range(k // 2))
    with replace_dir(out_dir, overwrite=overwrite, what="out_dir") as tmp:
        info = _write_synthetic_pool(tmp, n, seed, names, shard_size, dims, corrupt_frac, non_english_frac,
                                     bad_size_frac, targets, n_reference, image_size, write_images, write_scores,
                                     noise, embedding_dtype, caption_template, attributes)
    info.pool_dir = Path(out_dir)
    return info


def _write_synthetic_pool(out, n, seed, names, shard_size, dims, corrupt_frac, non_english_frac, bad_size_frac,
                          targets, n_reference, image_size, write_images, write_scores, noise, embedding_dtype,
                          caption_template, attributes) -> SyntheticPoolInfo:
    import pyarrow as pa
    import pyarrow.parquet as pq

    k = len(names)
    rng = np.random.default_rng(seed)

    labels = rng.integers(0, k, size=n)
    attr = np.full(n, -1, dtype=np.int64)
    if attributes:
        # (class, attributes) pairs drawn without replacement, so that no two captions are equal
        # while n <= 64 K; from a separate stream, so that attributes=False pools stay identical
        # to those written before this option existed.
        combos = N_ATTRIBUTES * k
        attr_rng = np.random.default_rng([seed, 1])
        pairs = np.concatenate([attr_rng.permutation(combos) for _ in range(-(-n // combos))])[:n]
        labels, attr = pairs // N_ATTRIBUTES, pairs % N_ATTRIBUTES
    r = rng.random(n)
    kind = np.where(r < corrupt_frac, "corrupt",
                    np.where(r < corrupt_frac + non_english_frac, "non_english", "clean")).astype(object)
    caption_labels = labels.copy()
    corrupt = kind == "corrupt"
    caption_labels[corrupt] = (labels[corrupt] + rng.integers(1, k, size=int(corrupt.sum()))) % k
    captions = []
    for i in range(n):
        c = names[caption_labels[i]]
        if kind[i] == "non_english":
            captions.append(_NON_ENGLISH_TEMPLATES[int(rng.integers(len(_NON_ENGLISH_TEMPLATES)))]
                            .format(c=c))
        elif attributes:
            captions.append(f"{caption_template.format(c=c)}, {attribute_phrase(int(attr[i]))}")
        else:
            captions.append(caption_template.format(c=c))

    # sizes: good ones have min side in [200, 1024) and aspect <= 2.5; bad ones are small or
    # too elongated (aspect in [3.2, 6]).
    short = rng.integers(200, 1024, size=n)
    aspect = rng.uniform(1.0, 2.5, size=n)
    bad = rng.random(n) < bad_size_frac
    bad_small = bad & (rng.random(n) < 0.5)
    bad_aspect = bad & ~bad_small
    short[bad_small] = rng.integers(16, 200, size=int(bad_small.sum()))
    aspect[bad_aspect] = rng.uniform(3.2, 6.0, size=int(bad_aspect.sum()))
    long = np.round(short * aspect).astype(np.int64)
    flip = rng.random(n) < 0.5
    width = np.where(flip, long, short).astype(np.int64)
    height = np.where(flip, short, long).astype(np.int64)
    mn, mx = np.minimum(width, height), np.maximum(width, height)
    size_ok = (mn >= 200) & (mx / mn <= 3.0)

    raw = rng.bytes(16 * n).hex()
    uids = [raw[32 * i: 32 * (i + 1)] for i in range(n)]

    protos, emb = {}, {}
    for arch, d in dims.items():
        p = _unit(rng.standard_normal((k, d)))
        protos[arch] = p
        img = _unit(p[labels] + noise * rng.standard_normal((n, d)) / np.sqrt(d) * 2)
        txt_noise = np.where((kind == "non_english")[:, None], 4.0, 1.0) * noise
        txt = _unit(p[caption_labels] + txt_noise * rng.standard_normal((n, d)) / np.sqrt(d) * 2)
        emb[f"{arch}_img"] = img.astype(embedding_dtype)
        emb[f"{arch}_txt"] = txt.astype(embedding_dtype)

    ref_lab = rng.choice(np.asarray(targets), size=n_reference) if targets else np.zeros(0, int)
    d14 = dims.get("l14", next(iter(dims.values())))
    p14 = protos.get("l14", next(iter(protos.values())))
    reference = _unit(p14[ref_lab] + noise * rng.standard_normal((len(ref_lab), d14)) / np.sqrt(d14) * 2)

    for si, start in enumerate(range(0, n, shard_size)):
        sl = slice(start, min(start + shard_size, n))
        stem = f"{si:08d}"
        cols = {
            "uid": pa.array(uids[sl], pa.string()),
            "text": pa.array(captions[sl], pa.string()),
            "original_width": pa.array(width[sl], pa.int64()),
            "original_height": pa.array(height[sl], pa.int64()),
        }
        if write_scores:
            for arch in dims:
                if arch in SCORE_COLUMNS:
                    s = np.sum(emb[f"{arch}_img"][sl].astype(np.float64)
                               * emb[f"{arch}_txt"][sl].astype(np.float64), axis=1)
                    cols[SCORE_COLUMNS[arch]] = pa.array(s, pa.float64())
        pq.write_table(pa.table(cols), out / f"{stem}.parquet")
        np.savez(out / f"{stem}.npz", **{key: v[sl] for key, v in emb.items()})
        if write_images:
            samples = []
            for j in range(sl.start, sl.stop):
                key = f"{stem}{j - start:04d}"
                samples.append({
                    "key": key,
                    "jpg": _draw_image(int(labels[j]), rng, image_size, k,
                                       int(attr[j]) if attributes else None),
                    "txt": captions[j],
                    "json": {"uid": uids[j], "key": key, "caption": captions[j],
                             "original_width": int(width[j]), "original_height": int(height[j])},
                })
            write_tar_shard(out / f"{stem}.tar", samples)

    english = kind != "non_english"
    clean = (kind == "clean") & size_ok
    return SyntheticPoolInfo(
        pool_dir=out, uids=uids, captions=captions, labels=labels, caption_labels=caption_labels,
        kind=kind.astype(str), width=width, height=height, english=english, size_ok=size_ok,
        clean=clean, class_names=names, target_classes=targets,
        reference_l14=reference.astype(np.float32), prototypes=protos, attributes=attr,
    )
