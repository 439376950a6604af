"""fmkit.adversarial image attacks: PGD, APGD, APGD-T, autoattack, the target-string attack on a tiny Flamingo."""
import math

import fmkit.adversarial.image as image_mod
import pytest
import torch
import torch.nn.functional as F
from fmkit.adversarial import (
    apgd,
    apgd_checkpoints,
    apgd_targeted,
    autoattack,
    dlr_loss,
    pgd,
    sample_random_start,
    target_string_attack,
)
from torch import nn


def trained_classifier():
    """A small CPU classifier on 3x8x8 inputs in [0, 1], trained to high clean accuracy."""
    torch.manual_seed(0)
    protos = 0.5 + 0.02 * torch.randn(4, 3, 8, 8)  # close classes: 8/255 is a real budget here
    y = torch.randint(0, 4, (512,))
    x = (protos[y] + 0.01 * torch.randn(512, 3, 8, 8)).clamp(0, 1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # mild training: CE must not saturate to exactly 0
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x[:64], y[:64]


def test_pgd_drives_robust_accuracy_to_zero_and_respects_the_ball():
    model, x, y = trained_classifier()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    eps = 8 / 255
    res = pgd(lambda xa: F.cross_entropy(model(xa), y, reduction="none"), x, eps=eps, step_size=2 / 255, steps=20,
              success_fn=lambda xa: model(xa).argmax(1) != y, progress=False)
    robust = (model(res.x_adv).argmax(1) == y).float().mean().item()
    assert robust < 0.05
    assert (res.x_adv - x).abs().max() <= eps + 1e-7
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert (res.success == (model(res.x_adv).argmax(1) != y)).all()
    assert (res.steps <= 20).all() and (res.steps[res.success] >= 0).all()


def test_pgd_successful_samples_are_never_updated_again():
    model, x, y = trained_classifier()
    seen = []

    def loss_fn(xa):
        seen.append(xa.detach().clone())
        return F.cross_entropy(model(xa), y, reduction="none"), model(xa).argmax(1) != y

    res = pgd(loss_fn, x, eps=8 / 255, step_size=2 / 255, steps=10, progress=False)
    for b in range(x.shape[0]):
        if res.success[b]:
            k = int(res.steps[b])  # it stopped after k steps: every later iterate is identical
            for later in seen[k + 1 :]:
                assert torch.equal(later[b], seen[k][b])


def test_pgd_l2_and_batched_restarts():
    model, x, y = trained_classifier()
    res = pgd(lambda xa: F.cross_entropy(model(xa), y, reduction="none"), x, eps=0.5, step_size=0.1, steps=10,
              norm="l2", restarts=3, progress=False)
    assert res.x_adv.shape == x.shape
    assert ((res.x_adv - x).flatten(1).norm(dim=1) <= 0.5 * (1 + 1e-5)).all()


def test_random_starts():
    x0 = torch.full((2000, 3), 0.5)
    lin = sample_random_start(x0, 0.1, "linf", generator=torch.Generator().manual_seed(0))
    assert ((lin - x0).abs() <= 0.1 + 1e-7).all()
    d = 3
    l2 = sample_random_start(x0, 0.2, "l2", generator=torch.Generator().manual_seed(1))
    r = (l2 - x0).norm(dim=1) / 0.2
    # Uniform in the ball: P(r <= t) = t^d. Check a few quantiles.
    for t in (0.5, 0.8):
        assert abs((r <= t).float().mean().item() - t**d) < 0.04


def test_apgd_schedule_and_loss_at_least_pgd():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    model, x, y = trained_classifier()
    eps = 4 / 255
    ce = lambda xa: F.cross_entropy(model(xa), y, reduction="none")  # noqa: E731
    p = pgd(ce, x, eps=eps, step_size=eps / 4, steps=20, progress=False)
    a = apgd(model, x, y, eps=eps, steps=20, loss="ce", progress=False)
    assert ce(a.x_adv).mean() >= ce(p.x_adv).mean() - 1e-4
    assert (a.x_adv - x).abs().max() <= eps + 1e-7
    fooled_by_pgd = (model(p.x_adv).argmax(1) != y).float().mean()
    assert a.success.float().mean() >= fooled_by_pgd
    assert (a.success == (model(a.x_adv).argmax(1) != y)).all()
    d = apgd(model, x, y, eps=eps, steps=20, loss="dlr", progress=False)
    assert d.success.float().mean() > 0.3


def test_dlr_loss_formula():
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0]])
    assert dlr_loss(z, torch.tensor([0])).item() == pytest.approx(-(4 - 3) / (4 - 1))
    assert dlr_loss(z, torch.tensor([0]), torch.tensor([2])).item() == pytest.approx(-(4 - 3) / (4 - 0.5 * (1 + 0)))


def test_targeted_dlr_formula_by_hand():
    z = torch.tensor([[1.0, 5.0, 2.0, -1.0, 0.5],
                      [0.0, 1.0, 2.0, 3.0, 4.0]])
    y, t = torch.tensor([2, 4]), torch.tensor([4, 0])
    # row 0: sorted 5, 2, 1, 0.5, -1 -> -(z_2 - z_4) / (5 - (1 + 0.5)/2); row 1: sorted 4, 3, 2, 1, 0.
    expected = torch.tensor([-(2.0 - 0.5) / (5.0 - 0.75), -(4.0 - 0.0) / (4.0 - 0.5 * (2.0 + 1.0))])
    torch.testing.assert_close(dlr_loss(z, y, t), expected)


def _record_targets(monkeypatch):
    """Spy on the loss APGD-T calls: one entry per distinct (consecutive) target vector, i.e. per run."""
    runs = []
    real = image_mod.dlr_loss

    def spy(logits, y, target=None):
        if not runs or not torch.equal(runs[-1], target):
            runs.append(target.clone())
        return real(logits, y, target)

    monkeypatch.setattr(image_mod, "dlr_loss", spy)
    return runs


def test_apgd_targeted_targets_are_the_clean_ranks_2_to_n_plus_1(monkeypatch):
    model, x, y = trained_classifier()
    runs = _record_targets(monkeypatch)
    # A budget too small to fool anyone: every target rank then runs on every point.
    res = apgd_targeted(model, x, y, eps=1e-4, steps=5, n_target_classes=3, progress=False)
    assert not res.success.any()
    ranked = model(x).argsort(dim=1, descending=True)
    assert len(runs) == 3
    for k, target in enumerate(runs):
        assert torch.equal(target, ranked[:, k + 1])
    assert (res.steps == 3 * 5).all()


def test_apgd_targeted_with_one_target_class_attacks_only_the_runner_up(monkeypatch):
    model, x, y = trained_classifier()
    runs = _record_targets(monkeypatch)
    res = apgd_targeted(model, x, y, eps=4 / 255, steps=10, n_target_classes=1, progress=False)
    runner_up = model(x).argsort(dim=1, descending=True)[:, 1]
    assert len(runs) == 1 and torch.equal(runs[0], runner_up)
    assert (res.steps == 10).all()


def test_apgd_targeted_and_autoattack_on_a_trained_classifier():
    model, x, y = trained_classifier()
    eps, steps = 4 / 255, 20  # APGD-CE fools only some points here (about 14%)
    ce = apgd(model, x, y, eps=eps, steps=steps, loss="ce", progress=False)
    t = apgd_targeted(model, x, y, eps=eps, steps=steps, n_target_classes=3, progress=False)
    aa = autoattack(model, x, y, eps=eps, steps=steps, n_target_classes=3, progress=False)
    ce_failed = ~ce.success
    assert 0 < ce_failed.sum() < x.shape[0]
    # On the points APGD-CE could not fool, APGD-T (same eps, steps per run) fools at least as many.
    assert t.success[ce_failed].float().mean() >= ce.success[ce_failed].float().mean()
    assert t.success[ce_failed].any()
    robust = lambda r: 1 - r.success.float().mean()  # noqa: E731
    assert robust(aa) <= min(robust(ce), robust(t))
    # Per sample: the chain fools every point either attack fooled alone (starts do not depend on the batch).
    assert (aa.success >= (ce.success | t.success)).all()
    for r in (ce, t, aa):
        assert (r.x_adv - x).abs().max() <= eps + 1e-7
        assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
        assert (r.success == (model(r.x_adv).argmax(1) != y)).all()
        assert torch.isfinite(r.loss).all()
    assert (aa.steps[ce.success] == steps).all() and (aa.steps[~ce.success] > steps).all()


def test_apgd_targeted_and_autoattack_l2_and_clean_misclassified_points():
    model, x, y = trained_classifier()
    y = y.clone()
    y[0] = (y[0] + 1) % 4  # now misclassified at the clean input: not attacked, counted as non-robust
    eps = torch.full((x.shape[0],), 0.2)  # per-sample eps, indexed correctly across runs
    for r in (apgd_targeted(model, x, y, eps=eps, norm="l2", steps=10, n_target_classes=2, progress=False),
              autoattack(model, x, y, eps=eps, norm="l2", steps=10, n_target_classes=2, progress=False)):
        assert r.success[0] and torch.equal(r.x_adv[0], x[0]) and r.steps[0] == 0
        assert ((r.x_adv - x).flatten(1).norm(dim=1) <= 0.2 * (1 + 1e-5)).all()
        assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
        assert (r.success[1:] == (model(r.x_adv[1:]).argmax(1) != y[1:])).all()
    a = apgd(model, x, y, eps=eps, norm="l2", steps=5, restarts=2, progress=False)  # restarts on a subset
    assert ((a.x_adv - x).flatten(1).norm(dim=1) <= 0.2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("schedule", ["autoattack", "paper"])
def test_apgd_first_checkpoint_schedule(monkeypatch, schedule):
    # 4 steps: a checkpoint after every step. At the first one AutoAttack's code compares the loss
    # after step 1 with 0 (an unfilled history slot), so with DLR < 0 (not fooled) step 1 never
    # counts as an increase and every step size halves; the paper compares it with the start loss,
    # so points whose loss rose keep 2 eps (issue 12.3).
    model, x, y = trained_classifier()
    steps_seen = []
    real_step = image_mod.pgd_step_

    def spy(x_, g, x0, *, step_size, **kw):
        if torch.is_tensor(step_size):
            steps_seen.append(step_size.clone())
        return real_step(x_, g, x0, step_size=step_size, **kw)

    monkeypatch.setattr(image_mod, "pgd_step_", spy)
    eps = 0.5 / 255
    start_losses = []
    real_dlr = image_mod.dlr_loss

    def dlr(logits, yy, target=None):
        out = real_dlr(logits, yy, target)
        start_losses.append(out.detach().clone())
        return out

    monkeypatch.setattr(image_mod, "dlr_loss", dlr)
    res = apgd(model, x, y, eps=eps, steps=4, loss="dlr", schedule=schedule, progress=False)
    assert not res.success.any()
    start, after_one = start_losses[0], start_losses[1]
    assert (after_one < 0).all()
    halved = steps_seen[1] == eps
    assert ((steps_seen[0] == 2 * eps).all())
    if schedule == "autoattack":
        assert halved.all()
    else:
        assert torch.equal(halved, ~(after_one > start))
        assert (~halved).any()


def test_apgd_targeted_and_autoattack_bad_arguments():
    model, x, y = trained_classifier()
    x, y = x[:4], y[:4]
    with pytest.raises(ValueError, match=r"n_target_classes: expected an integer in \[1, 3\]"):
        apgd_targeted(model, x, y, eps=0.01, n_target_classes=0, progress=False)
    with pytest.raises(ValueError, match=r"n_target_classes: expected an integer in \[1, 3\]"):
        apgd_targeted(model, x, y, eps=0.01, n_target_classes=4, progress=False)
    with pytest.raises(ValueError, match="n_target_classes"):
        autoattack(model, x, y, eps=0.01, progress=False)  # the default 9 targets need 10 classes
    three = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    with pytest.raises(ValueError, match="model: .*at least 4 classes.*outputs 3"):
        apgd_targeted(three, x, y % 3, eps=0.01, n_target_classes=2, progress=False)
    with pytest.raises(ValueError, match="version: only 'apgd'"):
        autoattack(model, x, y, eps=0.01, version="standard", n_target_classes=3, progress=False)
    with pytest.raises(ValueError, match="norm: APGD supports"):
        apgd_targeted(model, x, y, eps=0.01, norm="l1", n_target_classes=3, progress=False)
    with pytest.raises(ValueError, match="steps: expected a non-negative integer"):
        autoattack(model, x, y, eps=0.01, steps=-1, n_target_classes=3, progress=False)
    with pytest.raises(ValueError, match="restarts: expected a positive integer"):
        apgd_targeted(model, x, y, eps=0.01, restarts=0, n_target_classes=3, progress=False)
    for attack in (apgd, apgd_targeted, autoattack):
        with pytest.raises(ValueError, match=r"schedule: expected one of \('autoattack', 'paper'\)"):
            attack(model, x, y, eps=0.01, schedule="literal", progress=False)


def test_bad_arguments():
    x = torch.rand(2, 3)
    f = lambda xa: xa.sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="norm: expected one of"):
        pgd(f, x, eps=0.1, step_size=0.01, steps=1, norm="l3", progress=False)
    with pytest.raises(ValueError, match="eps: expected a float or a"):
        pgd(f, x, eps=torch.ones(3), step_size=0.01, steps=1, progress=False)
    with pytest.raises(ValueError, match="loss_fn: expected a per-sample loss"):
        pgd(lambda xa: xa.sum(), x, eps=0.1, step_size=0.01, steps=1, progress=False)


@pytest.mark.slow
def test_target_string_attack_on_a_tiny_flamingo():
    pytest.importorskip("transformers")
    from test_flamingo import batch, tiny_flamingo

    model, tok = tiny_flamingo()
    with torch.no_grad():
        # A random tiny model in which the image can steer the output: open gates, a stronger
        # cross-attention output, image-dependent latents (zero initial latents) and a peaked LM head.
        for block in model.lang_encoder.gated_cross_attn_layers:
            block.attn_gate.fill_(1.0)
            block.attn.to_out.weight.mul_(30.0)
        model.perceiver.latents.zero_()
        model.lang_encoder.lm_head.weight.mul_(8.0)
    for p in model.parameters():
        p.requires_grad_(False)
    vision_x, ids, mask = batch(tok, ["<image> a photo of", "<image> two birds"], images=1)
    target = torch.tensor([[tok.convert_tokens_to_ids("cat")], [tok.convert_tokens_to_ids("sky")]])
    res = target_string_attack(model, vision_x.clamp(0, 1), ids, target, attention_mask=mask, steps=300,
                               progress=False)
    assert res.success.all(), res.loss
    with torch.no_grad():
        logits = model(res.x_adv, torch.cat([ids, target], 1), torch.cat([mask, torch.ones_like(target)], 1)).logits
    assert torch.equal(logits[:, ids.shape[1] - 1].argmax(-1), target[:, 0])
    assert (res.distortion > 0).all() and torch.isfinite(res.distortion).all()


def _live_tensors() -> int:
    import gc
    import warnings

    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated module attributes warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_memory_stays_flat_over_1000_steps(attack):
    """Spec §4 row 5 (EAD / GCG OOMs from graphs kept across iterations): the number of live
    tensors after 1000 steps is no larger than after 300 (past APGD's first checkpoint at 220,
    which allocates its bookkeeping once), so nothing accumulates per step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.rand(6, 3, 4, 4)
    y = torch.randint(0, 5, (6,))
    counts = {}

    def logits(z):
        calls = counts.setdefault("calls", 0) + 1
        counts["calls"] = calls
        if calls in (300, 1000):
            counts[calls] = _live_tensors()
        return model(z)

    if attack == "pgd":
        pgd(lambda z: F.cross_entropy(logits(z), y, reduction="none"), x, eps=1e-3, step_size=1e-4, steps=1000,
            progress=False)
    else:
        apgd(logits, x, y, eps=1e-3, steps=1000, progress=False)
    assert counts["calls"] >= 1000 and counts[1000] <= counts[300]
