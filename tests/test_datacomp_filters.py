"""DataComp pool I/O and filtering baselines (spec §3.1-3.6) on tiny pools with known answers."""

import io

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("py3langid")
pytest.importorskip("PIL")

from fmkit.datacomp.filters import (  # noqa: E402
    FILTERS,
    apply_filter,
    basic_filter,
    caption_contains_class,
    class_name_phrases,
    clip_score_filter,
    clip_score_threshold,
    image_based_filter,
    image_based_intersect_clip_score,
    intersect,
    language_detector,
    text_based_filter,
)
from fmkit.datacomp.imagenet_classes import IMAGENET_CLASSES  # noqa: E402
from fmkit.datacomp.pool import (  # noqa: E402
    UID_DTYPE,
    make_synthetic_pool,
    read_pool,
    read_tar_shard,
    read_uids,
    uids_to_array,
    uids_to_hex,
    write_tar_shard,
    write_uids,
)


def _uid(i: int) -> str:
    return f"{i:032x}"


def all_en(texts):
    return ["en"] * len(texts)


def _write_shard(d, stem, rows, emb=None):
    """rows: dict column -> list. emb: dict key -> array (written as npz)."""
    cols = {}
    for k, v in rows.items():
        if k in ("uid", "text"):
            cols[k] = pa.array(v, pa.string())
        elif k.startswith("original_"):
            cols[k] = pa.array(v, pa.int64())
        else:
            cols[k] = pa.array(v, pa.float64())
    pq.write_table(pa.table(cols), d / f"{stem}.parquet")
    if emb is not None:
        np.savez(d / f"{stem}.npz", **emb)


def _ids(arr):
    return sorted(int(h, 16) for h in uids_to_hex(arr))


# --------------------------------------------------------------------------------------------
# uid format
# --------------------------------------------------------------------------------------------


def test_uid_array_format_and_sorting(tmp_path):
    hexes = [
        "00000000000000020000000000000001",
        "00000000000000010000000000000009",
        "0000000000000001000000000000000a",
        "ffffffffffffffff0000000000000000",
        "0000000000000002000000000000000f",
    ]
    arr = uids_to_array(hexes)
    assert arr.dtype == np.dtype("u8,u8") == UID_DTYPE
    assert int(arr["f0"][3]) == 2**64 - 1 and int(arr["f1"][3]) == 0
    assert int(arr["f0"][2]) == 1 and int(arr["f1"][2]) == 10
    p = tmp_path / "subset.npy"
    out = write_uids(hexes, p)
    raw = np.load(p)  # what DataComp's resharder does
    assert raw.dtype == np.dtype("u8,u8")
    expected = sorted(hexes, key=lambda h: (int(h[:16], 16), int(h[16:], 16)))
    assert uids_to_hex(raw) == expected
    assert np.array_equal(raw, out)
    # matches DataComp's construction np.array([(int(u[:16],16), int(u[16:32],16))], "u8,u8")
    ref = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in hexes], np.dtype("u8,u8"))
    ref.sort()
    assert np.array_equal(raw, ref)
    assert np.array_equal(read_uids(p), raw)
    # structured input round trip; non-.npy suffix kept verbatim
    q = tmp_path / "subset.uids"
    write_uids(arr, q)
    assert q.exists() and np.array_equal(read_uids(q), raw)


def test_uid_errors(tmp_path):
    with pytest.raises(ValueError, match="32-digit hex"):
        uids_to_array(["abc"])
    with pytest.raises(ValueError, match="32-digit hex"):
        uids_to_array(["z" * 32])
    p = tmp_path / "bad.npy"
    np.save(p, np.arange(3))
    with pytest.raises(ValueError, match="bad.npy"):
        read_uids(p)
    assert write_uids([], tmp_path / "empty.npy").shape == (0,)


# --------------------------------------------------------------------------------------------
# parquet / npz / tar round trips
# --------------------------------------------------------------------------------------------


def test_tar_round_trip(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (16, 12), (200, 10, 10))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    samples = [
        {"key": "000000000000", "jpg": img, "txt": "a red square", "json": {"uid": _uid(1), "w": 16}},
        {"key": "000000000001", "jpg": buf.getvalue(), "txt": "ünïcode caption", "json": {"uid": _uid(2)}},
    ]
    assert write_tar_shard(tmp_path / "x.tar", samples) == 2
    import tarfile

    with tarfile.open(tmp_path / "x.tar") as tf:
        assert tf.getnames() == ["000000000000.jpg", "000000000000.txt", "000000000000.json",
                                 "000000000001.jpg", "000000000001.txt", "000000000001.json"]
    got = list(read_tar_shard(tmp_path / "x.tar", decode=True))
    assert [g["key"] for g in got] == ["000000000000", "000000000001"]
    assert got[0]["txt"] == "a red square" and got[1]["txt"] == "ünïcode caption"
    assert got[0]["json"] == {"uid": _uid(1), "w": 16}
    assert got[0]["jpg"].size == (16, 12)
    px = np.asarray(got[0]["jpg"])[6, 8]
    assert px[0] > 150 and px[1] < 60
    raw = list(read_tar_shard(tmp_path / "x.tar"))
    assert raw[1]["jpg"] == buf.getvalue()


def test_synthetic_pool_round_trip(tmp_path):
    info = make_synthetic_pool(tmp_path, n=150, seed=3, shard_size=64)
    pool = read_pool(tmp_path)
    assert len(pool.shards) == 3 and len(pool) == 150
    uids, texts, w = [], [], []
    for shard in pool.shards:
        md = pool.read_metadata(shard, ["uid", "text", "original_width", "original_height",
                                        "clip_l14_similarity_score", "clip_b32_similarity_score"])
        e = pool.read_embeddings(shard, ["l14_img", "l14_txt", "b32_img", "b32_txt"])
        n = len(md["uid"])
        assert e["l14_img"].shape == (n, 64) and e["b32_txt"].shape == (n, 48)
        np.testing.assert_allclose(np.linalg.norm(e["l14_img"], axis=1), 1, atol=1e-5)
        np.testing.assert_allclose((e["l14_img"] * e["l14_txt"]).sum(1),
                                   md["clip_l14_similarity_score"], atol=1e-5)
        samples = list(pool.iter_samples(shard, decode=True))
        assert [s["json"]["uid"] for s in samples] == list(md["uid"])
        assert [s["txt"] for s in samples] == list(md["text"])
        assert samples[0]["jpg"].size == (32, 32)
        uids += list(md["uid"])
        texts += list(md["text"])
        w += list(md["original_width"])
    assert uids == info.uids and texts == info.captions and w == list(info.width)
    # ground truth is consistent with py3langid and the size rules
    import py3langid

    langs = np.array([py3langid.classify(t)[0] == "en" for t in info.captions])
    assert np.array_equal(langs, info.english)
    kinds = set(info.kind)
    assert kinds == {"clean", "corrupt", "non_english"}
    assert (~info.size_ok).any() and info.size_ok.any()
    s = np.concatenate([pool.read_metadata(sh, ["clip_l14_similarity_score"])["clip_l14_similarity_score"]
                        for sh in pool.shards])
    assert s[info.kind == "clean"].min() > s[info.kind == "corrupt"].max()


# --------------------------------------------------------------------------------------------
# basic filter
# --------------------------------------------------------------------------------------------


def test_basic_filter_rules(tmp_path):
    rows = [  # (text, w, h, kept)
        ("one two three", 300, 300, True),
        ("one two", 300, 300, False),          # 2 words
        ("a b c", 300, 300, False),            # 3 words but 5 chars
        ("ab b c", 300, 300, True),            # 6 chars
        ("one\ntwo\tthree", 300, 300, True),   # whitespace split
        ("one two three", 200, 600, True),     # min 200, aspect exactly 3
        ("one two three", 199, 400, False),    # min < 200
        ("one two three", 601, 200, False),    # aspect > 3
        ("one two three", 0, 300, False),      # degenerate size
        ("not english here", 300, 300, False),  # stub detector says "de"
    ]
    _write_shard(tmp_path, "00000000", {
        "uid": [_uid(i) for i in range(len(rows))],
        "text": [r[0] for r in rows],
        "original_width": [r[1] for r in rows],
        "original_height": [r[2] for r in rows],
    })

    def detect(texts):
        return ["de" if "english" in t else "en" for t in texts]

    got = basic_filter(tmp_path, detect_language=detect, progress=False)
    assert got.dtype == UID_DTYPE
    assert _ids(got) == [i for i, r in enumerate(rows) if r[3]]


def test_basic_filter_language_id(tmp_path):
    texts = ["a dog running on the beach at sunset",
             "ein Hund läuft am Strand bei Sonnenuntergang",
             "un perro corriendo en la playa al atardecer",
             "a red car parked\nin front of the house"]
    _write_shard(tmp_path, "00000000", {"uid": [_uid(i) for i in range(4)], "text": texts,
                                        "original_width": [400] * 4, "original_height": [300] * 4})
    assert _ids(basic_filter(tmp_path, progress=False)) == [0, 3]
    assert language_detector()(["the cat sat on the mat and looked happy"]) == ["en"]


def test_basic_filter_synthetic(tmp_path):
    info = make_synthetic_pool(tmp_path, n=200, seed=1, write_images=False)
    got = basic_filter(tmp_path, progress=False)
    assert np.array_equal(got, info.uid_array(info.english & info.size_ok))


# --------------------------------------------------------------------------------------------
# CLIP score filter
# --------------------------------------------------------------------------------------------


def _score_pool(d, scores_l14, with_column=True):
    n = len(scores_l14)
    rng = np.random.default_rng(0)
    img, txt = [], []
    for s in scores_l14:  # unit vectors with cosine exactly s
        a = rng.standard_normal(8)
        a /= np.linalg.norm(a)
        b = rng.standard_normal(8)
        b -= (b @ a) * a
        b /= np.linalg.norm(b)
        img.append(a)
        txt.append(s * a + np.sqrt(1 - s * s) * b)
    img, txt = np.array(img, np.float32), np.array(txt, np.float32)
    half = n // 2
    for si, sl in enumerate([slice(0, half), slice(half, n)]):
        rows = {"uid": [_uid(i) for i in range(n)][sl], "text": ["x"] * (sl.stop - sl.start)}
        if with_column:
            rows["clip_l14_similarity_score"] = list(scores_l14[sl])
            rows["clip_b32_similarity_score"] = list(-np.asarray(scores_l14[sl]))
        _write_shard(d, f"{si:08d}", rows, {"l14_img": img[sl], "l14_txt": txt[sl],
                                              "b32_img": img[sl], "b32_txt": -txt[sl]})


def test_clip_score_fraction_and_threshold(tmp_path):
    scores = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.0, 0.6, 0.2, 0.4]
    _score_pool(tmp_path, scores)
    # fraction 0.3 of N=10 -> index 3 of descending [0.9, 0.8, 0.7, 0.6, ...] -> 0.6, keep >= 0.6
    assert clip_score_threshold(tmp_path, 0.3, progress=False) == pytest.approx(0.6)
    keep = _ids(clip_score_filter(tmp_path, arch="l14", fraction=0.3, progress=False))
    assert keep == sorted(i for i, s in enumerate(scores) if s >= 0.6)
    assert len(keep) == 4
    assert len(clip_score_filter(tmp_path, fraction=1.0, progress=False)) == 10
    assert _ids(clip_score_filter(tmp_path, fraction=0.0, progress=False)) == [1]
    assert _ids(clip_score_filter(tmp_path, threshold=0.45, progress=False)) == [0, 1, 3, 5, 7]
    # b32 column is the negated score: top 20% = the two lowest l14 scores
    assert _ids(clip_score_filter(tmp_path, arch="b32", fraction=0.2, progress=False)) == [2, 6, 8]


def test_clip_score_from_embeddings(tmp_path):
    scores = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.0, 0.6, 0.2, 0.4]
    _score_pool(tmp_path, scores, with_column=False)
    keep = _ids(clip_score_filter(tmp_path, arch="l14", fraction=0.3, progress=False))
    assert keep == [1, 3, 5, 7]
    assert _ids(clip_score_filter(tmp_path, arch="b32", threshold=-0.15, progress=False)) == [2, 6]


def test_clip_score_ties(tmp_path):
    _score_pool(tmp_path, [0.5, 0.5, 0.5, 0.1])
    # index int(0.25*4)=1 -> 0.5: all three tied rows kept
    assert _ids(clip_score_filter(tmp_path, fraction=0.25, progress=False)) == [0, 1, 2]


def test_clip_score_errors(tmp_path):
    _score_pool(tmp_path, [0.1, 0.2])
    with pytest.raises(ValueError, match="exactly one"):
        clip_score_filter(tmp_path, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        clip_score_filter(tmp_path, fraction=0.1, threshold=0.2, progress=False)
    with pytest.raises(ValueError, match="fraction"):
        clip_score_filter(tmp_path, fraction=1.5, progress=False)
    with pytest.raises(ValueError, match="arch"):
        clip_score_filter(tmp_path, arch="h14", fraction=0.1, progress=False)


def test_clip_score_missing_column_and_embeddings(tmp_path):
    _write_shard(tmp_path, "00000000", {"uid": [_uid(0)], "text": ["a b c d"]})
    with pytest.raises(ValueError, match=r"00000000\.parquet.*clip_l14_similarity_score"):
        clip_score_filter(tmp_path, fraction=0.3, progress=False)


# --------------------------------------------------------------------------------------------
# text-based filter
# --------------------------------------------------------------------------------------------


def test_text_based_matching_rule(tmp_path):
    names = ["goldfish", "school bus", "three-toed sloth", "kite (bird of prey)", "baluster / handrail"]
    texts = [
        "A GoldFish in a bowl",            # 0 case-insensitive word
        "goldfishes in a pond",            # 1 no plural handling
        "the school bus arrived, late",    # 2 phrase
        "school and bus",                  # 3 words not contiguous
        "a three toed sloth hanging",      # 4 hyphen == separator
        "my Three-Toed Sloth!",            # 5
        "schoolbus",                       # 6 not a word match
        "flying a kite today",             # 7 parenthetical dropped
        "bird of prey",                    # 8 parenthetical is not a phrase
        "a wooden handrail",               # 9 slash alternative
        "goldfish im Teich",               # 10 English test fails (stub)
    ]
    _write_shard(tmp_path, "00000000", {"uid": [_uid(i) for i in range(len(texts))], "text": texts})

    def detect(ts):
        return ["de" if "Teich" in t else "en" for t in ts]

    got = _ids(text_based_filter(tmp_path, class_names=names, detect_language=detect, progress=False))
    assert got == [0, 2, 4, 5, 7, 9]
    got = _ids(text_based_filter(tmp_path, class_names=names, require_english=False, progress=False))
    assert got == [0, 2, 4, 5, 7, 9, 10]
    assert class_name_phrases(["kite (bird of prey)", "baluster / handrail", "Potter's wheel"]) == [
        ("kite",), ("baluster",), ("handrail",), ("potter", "s", "wheel")]
    assert caption_contains_class("a potter's wheel", ["potter's wheel"])


def test_bundled_imagenet_classes():
    assert len(IMAGENET_CLASSES) == 1000
    assert IMAGENET_CLASSES[0] == "tench" and IMAGENET_CLASSES[1] == "goldfish"
    assert IMAGENET_CLASSES[281] == "tabby cat" and IMAGENET_CLASSES[779] == "school bus"
    assert IMAGENET_CLASSES[-1] == "toilet paper"
    assert caption_contains_class("a tabby cat on the sofa", IMAGENET_CLASSES)
    assert not caption_contains_class("a photo of a sunset over the city skyline", IMAGENET_CLASSES)


def test_text_based_synthetic_default_list(tmp_path):
    info = make_synthetic_pool(tmp_path, n=160, seed=2, write_images=False)
    got = text_based_filter(tmp_path, progress=False)
    # default synthetic classes 0-3 are ImageNet names, 4-7 are not
    exp = info.english & np.isin(info.caption_labels, [0, 1, 2, 3])
    assert np.array_equal(got, info.uid_array(exp))


# --------------------------------------------------------------------------------------------
# image-based filter
# --------------------------------------------------------------------------------------------


def _image_pool(d, misaligned=False):
    eye = np.eye(4, dtype=np.float32)
    # sample -> (nearest centroid, caption)
    spec = [(0, "a photo of one"), (1, "a photo of two"), (2, "a photo of three"),
            (3, "a photo of four"), (0, "hi"), (1, "onlyoneword"), (0, "nicht englisch hier"),
            (1, "another english caption")]
    emb = np.stack([eye[c] * 2 + 0.1 * np.roll(eye[c], 1) for c, _ in spec]).astype(np.float32)
    scores = [0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    rows = {"uid": [_uid(i) for i in range(len(spec))], "text": [t for _, t in spec],
            "clip_l14_similarity_score": scores}
    _write_shard(d, "00000000", {k: v[:4] for k, v in rows.items()},
                 {"l14_img": emb[:4] if not misaligned else emb[:3]})
    _write_shard(d, "00000001", {k: v[4:] for k, v in rows.items()}, {"l14_img": emb[4:]})
    return eye


def _detect_stub(ts):
    return ["de" if "nicht" in t else "en" for t in ts]


def test_image_based_with_centroids(tmp_path):
    eye = _image_pool(tmp_path)
    ref = np.stack([eye[0] + 0.05, eye[1] * 3, eye[0] * 0.5]).astype(np.float32)
    got = image_based_filter(tmp_path, ref, centroids=eye, detect_language=_detect_stub, progress=False)
    # centroids 0 and 1 hit; 4 ("hi", 2 chars), 5 (one word) and 6 (not English) fail captions
    assert _ids(got) == [0, 1, 7]
    # inner product, not L2: a centroid with larger norm wins for an off-axis reference
    big = eye.copy()
    big[2] *= 10
    ref2 = np.array([[1.0, 0.0, 0.2, 0.0]], np.float32)  # L2-nearest is centroid 0, IP-nearest is 2
    got = image_based_filter(tmp_path, ref2, centroids=big, detect_language=_detect_stub, progress=False)
    assert _ids(got) == [2]
    # reference / centroids from .npy paths
    np.save(tmp_path / "ref.npy", ref)
    np.save(tmp_path / "cent.npy", eye)
    got = image_based_filter(tmp_path, tmp_path / "ref.npy", centroids=tmp_path / "cent.npy",
                             detect_language=_detect_stub, progress=False)
    assert _ids(got) == [0, 1, 7]


def test_image_based_intersect_clip_score(tmp_path):
    eye = _image_pool(tmp_path)
    ref = np.stack([eye[0], eye[1]]).astype(np.float32)
    got = image_based_intersect_clip_score(tmp_path, ref, threshold=0.5, centroids=eye,
                                           detect_language=_detect_stub, progress=False)
    assert _ids(got) == [0, 7]  # row 1 has score 0.1
    img = image_based_filter(tmp_path, ref, centroids=eye, detect_language=_detect_stub, progress=False)
    clip = clip_score_filter(tmp_path, fraction=0.3, progress=False)
    both = image_based_intersect_clip_score(tmp_path, ref, fraction=0.3, centroids=eye,
                                            detect_language=_detect_stub, progress=False)
    assert np.array_equal(both, intersect(img, clip))


def test_image_based_errors(tmp_path):
    eye = _image_pool(tmp_path, misaligned=True)
    with pytest.raises(ValueError, match=r"00000000\.npz.*misaligned"):
        image_based_filter(tmp_path, eye[:1], centroids=eye, detect_language=all_en, progress=False)
    with pytest.raises(ValueError, match="reference_embeddings"):
        image_based_filter(tmp_path, None, centroids=eye, progress=False)
    with pytest.raises(ValueError, match="n_clusters"):
        image_based_filter(tmp_path, eye[:1], detect_language=all_en, progress=False)
    with pytest.raises(ValueError, match="dim"):
        image_based_filter(tmp_path, np.ones((1, 3), np.float32), centroids=eye, progress=False)


def test_image_based_synthetic_with_prototype_centroids(tmp_path):
    info = make_synthetic_pool(tmp_path, n=200, seed=4, write_images=False)
    got = image_based_filter(tmp_path, info.reference_l14, centroids=info.prototypes["l14"],
                             progress=False)
    exp = info.english & np.isin(info.labels, info.target_classes)
    assert np.array_equal(got, info.uid_array(exp))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_image_based_kmeans(tmp_path, metric):
    pytest.importorskip("fmkit.cluster")
    info = make_synthetic_pool(tmp_path, n=400, seed=5, write_images=False)
    # a few more clusters than the 8 classes so that no two classes share a centroid
    got, cent = image_based_filter(tmp_path, info.reference_l14, n_clusters=12,
                                   iters=20, seed=0, kmeans_metric=metric, progress=False,
                                   return_centroids=True)
    assert cent.shape == (12, 64)
    exp = set(uids_to_hex(info.uid_array(info.english & np.isin(info.labels, info.target_classes))))
    got = set(uids_to_hex(got))
    jaccard = len(got & exp) / max(len(got | exp), 1)
    assert jaccard > 0.9, jaccard


# --------------------------------------------------------------------------------------------
# composition, driver, errors
# --------------------------------------------------------------------------------------------


def test_intersect(tmp_path):
    a = uids_to_array([_uid(i) for i in (5, 1, 3, 2**70, 9)])
    b = [_uid(i) for i in (3, 9, 2**70, 4)]
    write_uids(b, tmp_path / "b.npy")
    c = uids_to_array([_uid(i) for i in (9, 2**70, 3, 3)])
    out = intersect(a, tmp_path / "b.npy", c)
    assert out.dtype == UID_DTYPE
    assert _ids(out) == [3, 9, 2**70]
    assert _ids(intersect(a)) == sorted([5, 1, 3, 2**70, 9])
    assert len(intersect(a, uids_to_array([]))) == 0
    with pytest.raises(ValueError):
        intersect()


def test_apply_filter_and_registry(tmp_path):
    pool = tmp_path / "pool"
    info = make_synthetic_pool(pool, n=120, seed=6, write_images=False)
    for name in ["basic", "clip_score", "text_based", "image_based", "image_based_intersect_clip_score",
                 "no_filter"]:
        assert name in FILTERS
    out = apply_filter("basic", pool, tmp_path / "basic.npy", progress=False)
    assert np.array_equal(np.load(tmp_path / "basic.npy"), out)
    assert np.array_equal(out, info.uid_array(info.english & info.size_ok))
    out = apply_filter("clip_score", pool, tmp_path / "c.npy", arch="l14", fraction=0.3, progress=False)
    assert np.array_equal(read_uids(tmp_path / "c.npy"), out)
    assert len(out) >= int(0.3 * 120)
    out = apply_filter("no_filter", pool, tmp_path / "all.npy", progress=False)
    assert np.array_equal(out, info.uid_array())
    with pytest.raises(ValueError, match="unknown filter 'nope'"):
        apply_filter("nope", pool, tmp_path / "x.npy")


def test_pool_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_pool(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty pool"):
        basic_filter(tmp_path / "empty", progress=False)
    z = tmp_path / "zero"
    z.mkdir()
    _write_shard(z, "00000000", {"uid": [], "text": [], "original_width": [], "original_height": []})
    with pytest.raises(ValueError, match="empty pool"):
        read_pool(z)
    m = tmp_path / "missingcol"
    m.mkdir()
    _write_shard(m, "00000000", {"uid": [_uid(0)], "text": ["one two three"], "original_width": [300]})
    with pytest.raises(ValueError, match=r"00000000\.parquet.*'original_height'"):
        basic_filter(m, detect_language=all_en, progress=False)
    bad = tmp_path / "badnpz"
    bad.mkdir()
    _write_shard(bad, "00000000", {"uid": [_uid(0), _uid(1)], "text": ["a b c d", "e f g h"]},
                 {"l14_img": np.ones((3, 4), np.float32), "l14_txt": np.ones((3, 4), np.float32)})
    with pytest.raises(ValueError, match=r"00000000\.npz.*misaligned"):
        clip_score_filter(bad, fraction=0.5, progress=False)
    badhex = tmp_path / "badhex"
    badhex.mkdir()
    _write_shard(badhex, "00000000", {"uid": ["xyz"], "text": ["a b c d"],
                                      "original_width": [300], "original_height": [300]})
    with pytest.raises(ValueError, match="uid"):
        basic_filter(badhex, detect_language=all_en, progress=False)


def test_fasttext_model_path_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        language_detector(tmp_path / "lid.176.bin")


def test_fasttext_model_is_used_when_given(tmp_path):
    """The fastText path end to end, with a small language-id model trained here on the pool's own
    captions (lid.176 itself is a download): basic_filter must keep exactly the English rows."""
    fasttext = pytest.importorskip("fasttext")
    info = make_synthetic_pool(tmp_path / "pool", n=200, seed=1, write_images=False)
    train = tmp_path / "lid_train.txt"
    train.write_text("\n".join(f"__label__{'en' if e else 'de'} {c}" for c, e in zip(info.captions, info.english)))
    model = fasttext.train_supervised(str(train), epoch=25, lr=0.5, dim=16, minn=2, maxn=4, bucket=20_000,
                                      thread=1, seed=0, verbose=0)
    path = tmp_path / "lid_tiny.bin"
    model.save_model(str(path))
    detect = language_detector(path)
    labels = detect(info.captions)
    assert set(labels) <= {"en", "de"} and np.mean(np.array(labels) == "en") > 0.3
    english = np.array(labels) == "en"
    assert (english == info.english).mean() > 0.95  # the model learned its training captions
    got = basic_filter(tmp_path / "pool", fasttext_model=path, progress=False)
    assert np.array_equal(got, info.uid_array(english & info.size_ok))
    assert language_detector(path)(["first line\nsecond line"]) in (["en"], ["de"])  # newline handled
