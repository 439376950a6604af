"""The generic and domain-invariant baselines (spec §1.2.5), batched with per-sample draws.

RandAugment  torchvision's op pool and magnitude scale (14 ops incl. Identity, fixed magnitude,
             random sign), drawn per image unless same_for_batch=True. Implemented on tensors here
             (torchvision is not a dependency), so results are not bit-equal to torchvision's, and
             neither matches the release's FixMatch pool (13 ops, no Identity, uniform magnitudes).
Cutout       the release's: one square of side U(0, 0.5) W, top-left corner uniform in
             [0, W - side / 2], filled with RGB (125, 123, 114), then a horizontal flip (p = 1/2).
MixUp        lambda ~ Beta(a, a) once per batch, partner = a random permutation (within_y: within labels).
CutMix       standard (Yun et al. 2019): one lambda and box per batch, box sides sqrt(1 - lambda) (W, H),
             lambda recomputed from the clipped box. The release swaps the axes and takes the top
             coordinate from the box width; fmkit does not reproduce that bug.
LISA         intra-label: each image is mixed (lambda ~ Beta(a, a) per image) with a random batch
             partner of the same label and another domain, label unchanged; no partner -> identity.
             variant="cutmix" pastes a box of area 1 - lambda instead of blending.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fmkit.augment import _common as C
from fmkit.augment.spectrogram import adjust_saturation, grayscale

CUTOUT_FILL = (125, 123, 114)


def _box(lam, H, W, g, device, n):
    """n boxes (top, left, bottom, right) of area ~ (1 - lam) H W at uniform centres, clipped to the image."""
    cut = torch.sqrt(1.0 - lam)
    h, w = (cut * H).floor(), (cut * W).floor()
    cy = C.randint(H, (n,), g, device).float()
    cx = C.randint(W, (n,), g, device).float()
    top, bottom = (cy - h / 2).floor().clamp(0, H), (cy + h / 2).floor().clamp(0, H)
    left, right = (cx - w / 2).floor().clamp(0, W), (cx + w / 2).floor().clamp(0, W)
    return torch.stack([top, left, bottom, right], -1).long()


def _box_mask(box, H, W, device):
    """[n, 1, H, W] bool for boxes [n, 4] (top, left, bottom, right), bottom/right exclusive."""
    r = torch.arange(H, device=device).view(1, H, 1)
    c = torch.arange(W, device=device).view(1, 1, W)
    b = box.to(device)
    m = (r >= b[:, 0, None, None]) & (r < b[:, 2, None, None]) & (c >= b[:, 1, None, None]) & (c < b[:, 3, None, None])
    return m[:, None]


def soft_cross_entropy(logits, y_a, y_b, lam):
    """lam * CE(y_a) + (1 - lam) * CE(y_b), lam a scalar or per-sample [B] (mean over the batch)."""
    la = F.cross_entropy(logits, y_a, reduction="none")
    lb = F.cross_entropy(logits, y_b, reduction="none")
    return (lam * la + (1 - lam) * lb).mean()


class MixUp:
    """MixUp(alpha=0.2, within_y=False). Call: mix(images, labels) -> (mixed, params); params holds
    perm [B] and lam (0-d); loss(logits, labels, params) is lam CE(y) + (1 - lam) CE(y[perm])."""

    def __init__(self, alpha: float = 0.2, within_y: bool = False):
        self.alpha, self.within_y = C.check_positive(alpha, "alpha"), bool(within_y)

    def sample(self, labels, generator=None) -> C.Params:
        g = C.generator_from(generator)
        B = labels.shape[0]
        lam = C.beta_draw(self.alpha, (), g, "cpu")
        if not self.within_y:
            return {"perm": torch.argsort(C.rand((B,), g, "cpu")), "lam": lam}
        perm = torch.arange(B)
        u = C.rand((B,), g, "cpu")
        for y in torch.unique(labels):
            idx = torch.nonzero(labels == y).flatten()
            perm[idx] = idx[torch.argsort(u[idx])]
        return {"perm": perm, "lam": lam}

    def __call__(self, images, labels, *, generator=None, params=None):
        images = C.check_images(images, channels=None)
        labels = C.check_vector(labels, "labels", images.shape[0], "cpu")
        params = self.sample(labels, generator) if params is None else \
            C.check_params(params, ("perm", "lam"), len(labels))
        x = C.to_float(images).float()
        lam = params["lam"].to(images.device)
        out = lam * x + (1 - lam) * x[params["perm"].to(images.device)]
        return C.like_input(out, images), params

    @staticmethod
    def loss(logits, labels, params):
        labels = labels.to(logits.device)
        perm, lam = params["perm"].to(logits.device), params["lam"].to(logits.device)
        return soft_cross_entropy(logits, labels, labels[perm], lam)


class CutMix:
    """Standard CutMix(alpha=1.0). Call: cutmix(images, labels) -> (mixed, params) with perm, box
    (top, left, bottom, right) and lam = 1 - box area / image area; loss as MixUp.loss."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = C.check_positive(alpha, "alpha")

    def sample(self, B, H, W, generator=None) -> C.Params:
        g = C.generator_from(generator)
        lam = C.beta_draw(self.alpha, (), g, "cpu")
        perm = torch.argsort(C.rand((B,), g, "cpu"))
        box = _box(lam, H, W, g, "cpu", 1)[0]
        area = (box[2] - box[0]) * (box[3] - box[1])
        return {"perm": perm, "box": box, "lam": 1.0 - area.float() / (H * W)}

    def __call__(self, images, labels, *, generator=None, params=None):
        images = C.check_images(images, channels=None)
        B, _, H, W = images.shape
        C.check_vector(labels, "labels", B, "cpu")
        params = self.sample(B, H, W, generator) if params is None else \
            C.check_params(params, ("perm", "box", "lam"), B)
        t, l, b, r = params["box"].tolist()
        out = images.clone()
        out[:, :, t:b, l:r] = images[params["perm"].to(images.device)][:, :, t:b, l:r]
        return out, params

    loss = MixUp.loss


class Cutout:
    """Cutout(max_fraction=0.5, p=0.5), the release's semantics (module docstring), per image."""

    def __init__(self, max_fraction: float = 0.5, p: float = 0.5):
        self.max_fraction, self.p = C.check_probability(max_fraction, "max_fraction"), C.check_probability(p)

    def sample(self, B, H, W, generator=None) -> C.Params:
        g = C.generator_from(generator)
        applied = C.gate(B, self.p, g, "cpu")
        side = (C.rand((B,), g, "cpu") * self.max_fraction * W).long()
        u = C.rand((B, 2), g, "cpu")
        top = (u[:, 0] * (H - side / 2 + 1).clamp_min(1)).floor().long()
        left = (u[:, 1] * (W - side / 2 + 1).clamp_min(1)).floor().long()
        box = torch.stack([top, left, (top + side).clamp(max=H), (left + side).clamp(max=W)], -1)
        return {"applied": applied, "box": box, "flip": C.rand((B,), g, "cpu") < 0.5}

    def __call__(self, images, *, generator=None, params=None, return_params=False):
        images = C.check_images(images)
        B, _, H, W = images.shape
        params = self.sample(B, H, W, generator) if params is None else \
            C.check_params(params, ("applied", "box", "flip"), B)
        on = params["applied"].to(images.device)
        m = _box_mask(params["box"], H, W, images.device) & on[:, None, None, None]
        fill = torch.tensor(CUTOUT_FILL, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        fill = fill.to(torch.uint8) if images.dtype == torch.uint8 else (fill / 255).to(images.dtype)
        out = torch.where(m, fill, images)
        flip = (params["flip"].to(images.device) & on).view(-1, 1, 1, 1)
        out = torch.where(flip, out.flip(-1), out)
        return (out, params) if return_params else out


class LISA:
    """LISA(alpha=2.0, variant="mix", p=1.0), intra-label. Call: lisa(images, labels, domains) ->
    images (labels unchanged); params: partner [B] (-1: none, identity), lam [B], box [B, 4]."""

    def __init__(self, alpha: float = 2.0, variant: str = "mix", p: float = 1.0):
        if variant not in ("mix", "cutmix"):
            raise ValueError(f"variant: expected 'mix' or 'cutmix', got {variant!r}")
        self.alpha, self.variant, self.p = C.check_positive(alpha, "alpha"), variant, C.check_probability(p)

    def sample(self, labels, domains, H, W, generator=None) -> C.Params:
        g = C.generator_from(generator)
        B = labels.shape[0]
        applied = C.gate(B, self.p, g, "cpu")
        ok = (labels[:, None] == labels[None, :]) & (domains[:, None] != domains[None, :])
        u = torch.where(ok, C.rand((B, B), g, "cpu"), -1.0)
        partner = torch.where(ok.any(1) & applied, u.argmax(1), -1)
        lam = C.beta_draw(self.alpha, (B,), g, "cpu")
        return {"partner": partner, "lam": lam, "box": _box(lam, H, W, g, "cpu", B)}

    def __call__(self, images, labels, domains, *, generator=None, params=None, return_params=False):
        images = C.check_images(images, channels=None)
        B, _, H, W = images.shape
        labels = C.check_vector(labels, "labels", B, "cpu")
        domains = C.check_vector(domains, "domains", B, "cpu")
        params = self.sample(labels, domains, H, W, generator) if params is None else \
            C.check_params(params, ("partner", "lam", "box"), B)
        dev = images.device
        has = (params["partner"] >= 0).to(dev)
        other = images[params["partner"].clamp_min(0).to(dev)]
        if self.variant == "mix":
            lam = params["lam"].to(dev).view(-1, 1, 1, 1)
            mixed = C.like_input(lam * C.to_float(images).float() + (1 - lam) * C.to_float(other).float(), images)
        else:
            mixed = torch.where(_box_mask(params["box"], H, W, dev), other, images)
        out = torch.where(has.view(-1, 1, 1, 1), mixed, images)
        return (out, params) if return_params else out


# ---- RandAugment: torchvision's op pool, applied per image on tensors ----

RANDAUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                   "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}


def _magnitude(op, m, bins, H, W):
    """torchvision's magnitude of op at bin m (of `bins`)."""
    frac = m / (bins - 1)
    return {"ShearX": 0.3 * frac, "ShearY": 0.3 * frac, "TranslateX": 150.0 / 331.0 * W * frac,
            "TranslateY": 150.0 / 331.0 * H * frac, "Rotate": 30.0 * frac, "Brightness": 0.9 * frac,
            "Color": 0.9 * frac, "Contrast": 0.9 * frac, "Sharpness": 0.9 * frac,
            "Posterize": float(8 - int(round(m / ((bins - 1) / 4)))), "Solarize": 1.0 - frac}.get(op, 0.0)


def _affine(x, op, v):
    """Per-image shear / translate / rotate about the centre by v [n], nearest sampling, fill 0."""
    n, _, H, W = x.shape
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    if op == "ShearX":
        theta[:, 0, 1] = v * H / W
    elif op == "ShearY":
        theta[:, 1, 0] = v * W / H
    elif op == "TranslateX":
        theta[:, 0, 2] = -2 * v / W
    elif op == "TranslateY":
        theta[:, 1, 2] = -2 * v / H
    else:  # Rotate by v degrees (counter-clockwise, like torchvision)
        a = v * math.pi / 180
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a) * H / W
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a) * W / H, torch.cos(a)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _sharpness(x, f):
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5
    k = (k / 13).expand(3, 1, 3, 3)
    blur = F.conv2d(x, k, groups=3)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = blur
    return (f.view(-1, 1, 1, 1) * x + (1 - f.view(-1, 1, 1, 1)) * out).clamp(0, 1)


def _equalize(x):
    """Per image and channel histogram equalisation of 256-level pixels (PIL's ImageOps.equalize rule)."""
    n, c, H, W = x.shape
    q = torch.round(x * 255).long().view(n * c, -1)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    last = hist.gather(1, q.max(1, keepdim=True).values)  # count of the top level present
    step = torch.div(H * W - last, 255, rounding_mode="floor")
    lut = (torch.cumsum(hist, 1) - hist + torch.div(step, 2, rounding_mode="floor"))
    lut = torch.div(lut, step.clamp_min(1), rounding_mode="floor").clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, q), q.float()) / 255
    return out.view(n, c, H, W)


def _apply_op(x, op, v):
    """x: [n, 3, H, W] float in [0, 1]; v: [n] signed magnitudes."""
    f = (1 + v).view(-1, 1, 1, 1)
    if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        return _affine(x, op, v)
    if op == "Brightness":
        return (f * x).clamp(0, 1)
    if op == "Color":
        return adjust_saturation(x, 1 + v)
    if op == "Contrast":
        mean = grayscale(x).mean((1, 2, 3), keepdim=True)
        return (f * x + (1 - f) * mean).clamp(0, 1)
    if op == "Sharpness":
        return _sharpness(x, 1 + v)
    if op == "Posterize":
        bits = v.long().view(-1, 1, 1, 1)
        q = torch.round(x * 255).long()
        mask = (255 >> (8 - bits)) << (8 - bits)
        return (q & mask).float() / 255
    if op == "Solarize":
        return torch.where(x >= v.view(-1, 1, 1, 1), 1 - x, x)
    if op == "AutoContrast":
        lo = x.amin((2, 3), keepdim=True)
        hi = x.amax((2, 3), keepdim=True)
        scale = torch.where(hi > lo, 1 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
        return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, 1)
    if op == "Equalize":
        return _equalize(x)
    return x


class RandAugment:
    """RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31, same_for_batch=False, p=1.0).

    Each image draws its own num_ops ops (uniform, with replacement) and signs; same_for_batch=True
    draws once for the whole batch, like torchvision. Images are grouped by op, so each op runs once
    per round on the images that drew it.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 same_for_batch: bool = False, p: float = 1.0):
        if not (isinstance(num_ops, int) and num_ops >= 0):
            raise ValueError(f"num_ops: expected an int >= 0, got {num_ops!r}")
        if not (isinstance(num_magnitude_bins, int) and num_magnitude_bins >= 2):
            raise ValueError(f"num_magnitude_bins: expected an int >= 2, got {num_magnitude_bins!r}")
        if not (isinstance(magnitude, int) and 0 <= magnitude < num_magnitude_bins):
            raise ValueError(f"magnitude: expected an int in [0, {num_magnitude_bins - 1}], got {magnitude!r}")
        self.num_ops, self.magnitude, self.bins = num_ops, magnitude, num_magnitude_bins
        self.same_for_batch, self.p = bool(same_for_batch), C.check_probability(p)

    def sample(self, B, generator=None) -> C.Params:
        g = C.generator_from(generator)
        n = 1 if self.same_for_batch else B
        applied = C.gate(B, self.p, g, "cpu")
        ops = C.randint(len(RANDAUGMENT_OPS), (n, self.num_ops), g, "cpu")
        signs = torch.where(C.rand((n, self.num_ops), g, "cpu") < 0.5, -1.0, 1.0)
        return {"applied": applied, "ops": ops.expand(B, -1).clone(), "signs": signs.expand(B, -1).clone()}

    def __call__(self, images, *, generator=None, params=None, return_params=False):
        images = C.check_images(images)
        B, _, H, W = images.shape
        params = self.sample(B, generator) if params is None else C.check_params(params, ("applied", "ops", "signs"), B)
        x = C.to_float(images).float().clone()
        on = params["applied"]
        for r in range(params["ops"].shape[1]):
            for k, op in enumerate(RANDAUGMENT_OPS):
                rows = torch.nonzero((params["ops"][:, r] == k) & on).flatten()
                if op == "Identity" or rows.numel() == 0:
                    continue
                mag = _magnitude(op, self.magnitude, self.bins, H, W)
                v = torch.full((rows.numel(),), mag, device=images.device)
                if op in _SIGNED:
                    v = v * params["signs"][rows, r].to(images.device)
                d = rows.to(images.device)
                x[d] = _apply_op(x[d], op, v)
        out = C.like_input(x, images)
        out = torch.where(on.to(images.device).view(-1, 1, 1, 1), out, images)
        return (out, params) if return_params else out
