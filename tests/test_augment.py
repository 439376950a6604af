"""fmkit.augment: the spec's test plan (augment_diversity_equity.md §1.3) on synthetic images, parameter
replay, batched-equals-per-sample, and bad input."""
import math

import pytest
import torch

from fmkit.augment import (LISA, BackgroundPool, CopyPaste, CutMix, Cutout, MixUp, RandAugment,
                           SpectrogramCopyPasteJitter, StainColorJitter, box_masks, compare_strategies, select)
from fmkit.augment.copy_paste import EMPTY_CLASS, NO_BACKGROUND, NO_MASK, PASTED


def _dataset(seed=0, N=60, H=12, W=12):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(N, 3, H, W, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, 3, (N,), generator=g)
    domains = torch.randint(0, 6, (N,), generator=g)
    splits = ["train" if i % 5 else "val" for i in range(N)]
    regions = domains // 2
    return images, labels, domains, splits, regions


def _batch(B=8, H=12, W=12, seed=1, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, H, W, generator=g)
    x = (x * 255).to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    labels = torch.randint(1, 3, (B,), generator=g)
    domains = torch.randint(0, 6, (B,), generator=g)
    masks = torch.zeros(B, H, W, dtype=torch.uint8)
    masks[:, 3:8, 2:9] = 1
    return x, labels, domains, masks


# ---- 1. Copy-Paste ----

def test_copy_paste_composites_and_respects_the_predicate():
    images, labels, domains, splits, regions = _dataset()
    pool = BackgroundPool(images, labels, domains, splits, regions=regions)
    cp = CopyPaste(pool, p=1.0)
    x, y, d, m = _batch()
    out, params = cp(x, y, d, masks=m, generator=3, return_params=True)
    obs = pool.observed("train")
    for i in range(x.shape[0]):
        j = int(params["background"][i])
        if params["reason"][i] != PASTED:
            assert torch.equal(out[i], x[i])
            continue
        assert labels[j] == 0 and splits[j] == "train" and domains[j] != d[i] and obs[y[i], domains[j]]
        inside = m[i].bool()
        assert torch.equal(out[i][:, inside], x[i][:, inside])
        assert torch.equal(out[i][:, ~inside], images[j][:, ~inside])
    assert (params["reason"] == PASTED).sum() >= 4


def test_observed_from_changes_eligibility_and_source_domain_switch():
    images, labels, domains, splits, regions = _dataset()
    labels[0], domains[0] = 2, 5  # label 2 seen in domain 5 only in a val example (index 0)
    keep = ~((labels == 2) & (domains == 5))
    keep[0] = True
    pool = BackgroundPool(images[keep], labels[keep], domains[keep], [s for s, k in zip(splits, keep) if k])
    y, d = torch.tensor([2]), torch.tensor([1])
    train_only = CopyPaste(pool, observed_from="train").eligible(y, d)
    all_splits = CopyPaste(pool, observed_from="all").eligible(y, d)
    in_5 = pool.domains[pool.index] == 5
    assert not train_only[0, in_5].any() and all_splits[0, in_5].any() == bool(in_5.any())
    same = CopyPaste(pool, predicate="any", exclude_source_domain=False).eligible(y, torch.tensor([5]))
    excl = CopyPaste(pool, predicate="any").eligible(y, torch.tensor([5]))
    assert same[0, in_5].all() and not excl[0, in_5].any()


def test_copy_paste_identity_cases_are_counted():
    images, labels, domains, splits, _ = _dataset()
    pool = BackgroundPool(images, labels, domains, splits)
    cp = CopyPaste(pool, p=1.0)
    x, y, d, m = _batch(B=4)
    y[0] = 0  # empty class
    m[1] = 0  # no mask and no box
    boxes = [None, None, [[0.1, 0.1, 0.5, 0.5]], [[0.1, 0.1, 0.5, 0.5]]]
    conf = [None, None, [0.3], [0.9]]
    conf = [c if c is not None else [] for c in conf]
    m[2] = 0  # falls back to a box below the threshold
    m[3] = 0  # falls back to a good box
    out, params = cp(x, y, d, masks=m, boxes=boxes, confidences=conf, generator=0, return_params=True)
    assert params["reason"][:3].tolist() == [EMPTY_CLASS, NO_MASK, NO_MASK]
    assert params["reason"][3] in (PASTED, NO_BACKGROUND)
    assert torch.equal(out[:3], x[:3])
    assert cp.counts["empty_class"] == 1 and cp.counts["no_mask"] == 2
    # an empty pool: a documented identity, counted
    empty = BackgroundPool(images[labels != 0], labels[labels != 0], domains[labels != 0])
    cp2 = CopyPaste(empty, p=1.0)
    out2, p2 = cp2(x, y, d, masks=torch.ones(4, 12, 12), return_params=True)
    assert torch.equal(out2, x) and (p2["reason"][1:] == NO_BACKGROUND).all() and cp2.counts["no_background"] == 3


def test_box_masks_are_feathered_and_bounded():
    alpha, usable = box_masks([[[0.25, 0.25, 0.5, 0.5]], []], 48, 48, blur_radius=5)
    assert usable.tolist() == [True, False]
    a = alpha[0, 0]
    assert 0 <= float(alpha.min()) and float(alpha.max()) <= 1 and float(alpha[1].max()) == 0
    assert 0.05 < float(a[24, 12]) < 0.95  # the edge is soft
    assert float(a[24, 24]) > 0.95 and float(a[2, 2]) < 0.01
    hard, _ = box_masks([[[0.25, 0.25, 0.5, 0.5]]], 48, 48, blur_radius=0)
    assert set(hard.unique().tolist()) == {0.0, 1.0} and int(hard.sum()) == 24 * 24


# ---- 2. Stain Color Jitter ----

@pytest.mark.parametrize("mode", ["od", "release"])
def test_stain_identity_parameters_and_seed(mode):
    x, *_ = _batch(dtype=torch.float32)
    t = StainColorJitter(mode=mode, p=1.0)
    params = {"applied": torch.ones(8, dtype=torch.bool), "alpha": torch.ones(8, 3), "beta": torch.zeros(8, 3)}
    assert (t(x, params=params) - x).abs().max() < 1e-5
    a = t(x, generator=7)
    assert torch.equal(a, t(x, generator=7)) and not torch.equal(a, t(x, generator=8))
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    _, p = t(x, generator=7, return_params=True)
    assert float((p["alpha"] - 1).abs().max()) <= 0.1 and float(p["beta"].abs().max()) <= 0.1


# ---- 3. BirdCalls ----

def test_spectrogram_chain_region_ranges_and_flip():
    images, labels, domains, splits, regions = _dataset()
    pool = BackgroundPool(images.float() / 255, labels, domains, splits, regions=regions)
    t = SpectrogramCopyPasteJitter(pool, p=1.0)
    x, y, d, _ = _batch(B=16, dtype=torch.float32)
    r = d // 2
    boxes = [[[0.2, 0.1, 0.3, 0.6]]] * 16
    out, params = t(x, y, d, r, boxes, generator=1, return_params=True)
    pasted = params["reason"] == PASTED
    assert pasted.any()
    for i in torch.nonzero(pasted).flatten():
        j = int(params["background"][i])
        assert regions[j] == r[i] and labels[j] == 0 and splits[j] == "train"
    assert float(params["saturation"].min()) >= 0 and float(params["saturation"].max()) <= 3
    assert float(params["hue"].abs().max()) <= 0.5 and params["flip"].any() and not params["flip"].all()
    # with no paste, unit saturation and zero hue, the chain is exactly the time-axis flip
    plain = dict(params, background=torch.full((16,), -1), saturation=torch.ones(16), hue=torch.zeros(16))
    flipped = t(x, y, d, r, boxes, params=plain)
    f = params["flip"]
    torch.testing.assert_close(flipped[f], x[f].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped[~f], x[~f], atol=1e-6, rtol=0)


# ---- 4. batched equals per-sample; replay is bitwise ----

def _transforms():
    images, labels, domains, splits, regions = _dataset()
    pool = BackgroundPool(images, labels, domains, splits, regions=regions)
    boxes = [[[0.2, 0.1, 0.3, 0.6]]] * 8
    return {
        "copy_paste": (CopyPaste(pool, p=0.7), lambda t, x, y, d, m, **k: t(x, y, d, masks=m, **k)),
        "stain": (StainColorJitter(p=0.7), lambda t, x, y, d, m, **k: t(x, **k)),
        "spectrogram": (SpectrogramCopyPasteJitter(pool, p=0.7),
                        lambda t, x, y, d, m, **k: t(x, y, d, d // 2, boxes[: len(x)], **k)),
        "randaugment": (RandAugment(), lambda t, x, y, d, m, **k: t(x, **k)),
        "cutout": (Cutout(p=0.7), lambda t, x, y, d, m, **k: t(x, **k)),
    }


@pytest.mark.parametrize("name", ["copy_paste", "stain", "spectrogram", "randaugment", "cutout"])
def test_batched_equals_per_sample_and_replay_is_bitwise(name):
    t, call = _transforms()[name]
    x, y, d, m = _batch()
    out, params = call(t, x, y, d, m, generator=5, return_params=True)
    again = call(t, x, y, d, m, params=params, return_params=True)[0]
    assert torch.equal(out, again)
    for i in range(len(x)):
        one = call(t, x[i:i + 1], y[i:i + 1], d[i:i + 1], m[i:i + 1], params=select(params, slice(i, i + 1)),
                   return_params=True)[0]
        assert torch.equal(one[0], out[i]), f"{name}: sample {i} alone differs from its row of the batch"


def test_lisa_replay_and_partners():
    x, y, d, _ = _batch(B=12)
    y[:6], d[:6] = 1, torch.tensor([0, 0, 1, 1, 2, 2])
    y[6:], d[6:] = 2, 3  # label 2 lives in one domain only: no partner
    lisa = LISA()
    out, p = lisa(x, y, d, generator=2, return_params=True)
    assert torch.equal(out, lisa(x, y, d, params=p))
    for i in range(12):
        j = int(p["partner"][i])
        if i >= 6:
            assert j == -1 and torch.equal(out[i], x[i])
        else:
            assert y[j] == y[i] and d[j] != d[i]
    cm = LISA(variant="cutmix")(x, y, d, generator=2)
    assert torch.equal(cm[6:], x[6:])


# ---- 5. baselines ----

def test_cutmix_lambda_is_the_area_fraction():
    x, y, _, _ = _batch(B=6, H=20, W=15)
    for seed in range(20):
        out, p = CutMix()(x, y, generator=seed)
        t, l, b, r = p["box"].tolist()
        assert 0 <= t <= b <= 20 and 0 <= l <= r <= 15
        changed = (out != x).any(1).any(0)
        box = torch.zeros(20, 15, dtype=torch.bool)
        box[t:b, l:r] = True
        assert not changed[~box].any()
        assert math.isclose(float(p["lam"]), 1 - (b - t) * (r - l) / 300, abs_tol=1e-6)
        assert torch.equal(out[:, :, t:b, l:r], x[p["perm"]][:, :, t:b, l:r])


def test_mixup_loss_and_within_y():
    x, y, _, _ = _batch(B=10, dtype=torch.float32)
    mix = MixUp(alpha=0.4)
    out, p = mix(x, y, generator=0)
    lam = float(p["lam"])
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[p["perm"]])
    logits = torch.randn(10, 3)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(MixUp.loss(logits, y, p), lam * ce(logits, y) + (1 - lam) * ce(logits, y[p["perm"]]))
    _, pw = MixUp(within_y=True)(x, y, generator=1)
    assert torch.equal(y[pw["perm"]], y) and not torch.equal(pw["perm"], torch.arange(10))


def test_cutout_fill_and_side():
    x, *_ = _batch(B=64, H=16, W=16)
    out, p = Cutout(p=1.0)(x, generator=0, return_params=True)
    side = p["box"][:, 3] - p["box"][:, 1]
    assert int(side.max()) <= 8
    unflipped = torch.where(p["flip"].view(-1, 1, 1, 1), out.flip(-1), out)
    for i in range(64):
        t, l, b, r = p["box"][i].tolist()
        if b > t and r > l:
            patch = unflipped[i, :, t:b, l:r]
            assert (patch == torch.tensor([125, 123, 114], dtype=torch.uint8).view(3, 1, 1)).all()


def test_randaugment_per_sample_and_same_for_batch():
    x, *_ = _batch(B=16, dtype=torch.float32)
    ra = RandAugment()
    a, p = ra(x, generator=3, return_params=True)
    assert torch.equal(a, ra(x, generator=3)) and len({tuple(r) for r in p["ops"].tolist()}) > 1
    _, pb = RandAugment(same_for_batch=True)(x, generator=3, return_params=True)
    assert (pb["ops"] == pb["ops"][0]).all() and (pb["signs"] == pb["signs"][0]).all()
    u8 = (x * 255).round().to(torch.uint8)
    assert RandAugment()(u8, generator=3).dtype == torch.uint8


# ---- 6. gating ----

def test_application_rate_is_p():
    n, p = 10_000, 0.5682688104816859
    _, params = StainColorJitter(p=p)(torch.zeros(n, 3, 1, 1), generator=0, return_params=True)
    rate = params["applied"].float().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)


# ---- 7. theory ----

@pytest.mark.slow
def test_domain_regression_orders_the_strategies():
    risks = {D: compare_strategies(D, seeds=range(3)) for D in (4, 16)}
    for r in risks.values():
        assert r["targeted"] < 0.8 * r["unaugmented"] and r["targeted"] < 0.8 * r["invariant"]
        assert 0.7 < r["generic"] / r["unaugmented"] < 1.4
    assert risks[16]["targeted"] < risks[4]["targeted"]


# ---- bad input ----

def test_bad_input_messages():
    images, labels, domains, splits, regions = _dataset()
    pool = BackgroundPool(images, labels, domains, splits, regions=regions)
    cp = CopyPaste(pool)
    x, y, d, m = _batch(B=4)
    with pytest.raises(ValueError, match=r"masks: expected shape \[4, 12, 12\]"):
        cp(x, y, d, masks=m[:, :6])
    with pytest.raises(ValueError, match="images: expected a 4-D"):
        cp(x[0], y, d, masks=m)
    with pytest.raises(ValueError, match="images: expected 3 channels"):
        StainColorJitter()(x[:, :2])
    with pytest.raises(ValueError, match="images: contains NaN"):
        StainColorJitter()(torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"labels: expected shape \[4\]"):
        cp(x, y[:3], d, masks=m)
    with pytest.raises(ValueError, match="predicate: expected one of"):
        CopyPaste(pool, predicate="same_y")
    with pytest.raises(ValueError, match="p: expected a probability"):
        Cutout(p=1.5)
    with pytest.raises(ValueError, match="params.*drawn for a batch of 4"):
        StainColorJitter()(x[:2], params=StainColorJitter().sample(4))
    with pytest.raises(TypeError, match="generator: expected an int seed"):
        Cutout()(x, generator="seed")
    with pytest.raises(ValueError, match="needs the pool's regions"):
        CopyPaste(BackgroundPool(images, labels, domains), predicate="same_region")
