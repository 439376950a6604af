"""Spectrogram Copy-Paste + Jitter (Region), BirdCalls (spec §1.2.4), on RGB-rendered spectrogram tensors.

Chain per clip, applied as a unit with probability p (clips with y = empty_class are never touched):
Copy-Paste onto an empty train clip of the same region (blurred time-frequency box masks; the
source microphone is eligible, as in the release) -> ColorJitter(saturation factor ~ U[0, 3], hue
shift ~ U[-0.5, 0.5] turns) -> horizontal flip (the time axis) with probability 1/2. Everything runs
on tensors; `render_mel_rgb` (librosa + matplotlib) is the optional way to make such images.
"""
from __future__ import annotations

import torch

from fmkit.augment import _common as C
from fmkit.augment.copy_paste import EMPTY_CLASS, NOT_GATED, BackgroundPool, CopyPaste

_GRAY = (0.299, 0.587, 0.114)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] float -> [B, 1, H, W] luma (ITU-R 601, as torchvision)."""
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image by a per-image factor [B] (0: gray, 1: unchanged), clipped to [0, 1]."""
    f = factor.to(x.dtype).view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grayscale(x)).clamp(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, ((g - b) / d) % 6, torch.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by a per-image shift [B] in turns (0.5 = half the colour circle)."""
    hsv = rgb_to_hsv(x)
    h = (hsv[:, 0] + shift.to(x.dtype).view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1)).clamp(0, 1)


class SpectrogramCopyPasteJitter:
    """SpectrogramCopyPasteJitter(background_pool, saturation=2.0, hue=0.5, empty_class=0, blur_radius=5, p=0.5).

    background_pool: a BackgroundPool with regions. Call: t(images, labels, domains, regions, boxes,
    *, generator=None, params=None, return_params=False); boxes: one [n_i, 4] normalized xywh
    time-frequency box per clip (list of B arrays).
    """

    def __init__(self, background_pool: BackgroundPool, saturation: float = 2.0, hue: float = 0.5,
                 empty_class: int = 0, blur_radius: float = 5.0, p: float = 0.5):
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue: expected a value in [0, 0.5], got {hue!r}")
        if not saturation >= 0:
            raise ValueError(f"saturation: expected a value >= 0, got {saturation!r}")
        self.saturation, self.hue, self.p = float(saturation), float(hue), C.check_probability(p)
        self.copy_paste = CopyPaste(background_pool, predicate="same_region", empty_class=empty_class,
                                    exclude_source_domain=False, blur_radius=blur_radius, p=1.0)

    def sample(self, labels, domains, regions, generator=None) -> C.Params:
        g = C.generator_from(generator)
        B = labels.shape[0]
        applied = C.gate(B, self.p, g, "cpu")
        cp = self.copy_paste.sample(labels, domains, regions, None, g)
        return {"applied": applied, "background": cp["background"],
                "saturation": C.uniform((B,), max(0.0, 1 - self.saturation), 1 + self.saturation, g, "cpu"),
                "hue": C.uniform((B,), -self.hue, self.hue, g, "cpu"),
                "flip": C.rand((B,), g, "cpu") < 0.5}

    def __call__(self, images, labels, domains, regions, boxes, *, generator=None, params=None,
                 return_params=False):
        images = C.check_images(images)
        B = images.shape[0]
        labels = C.check_vector(labels, "labels", B, "cpu")
        domains = C.check_vector(domains, "domains", B, "cpu")
        regions = C.check_vector(regions, "regions", B, "cpu")
        if params is None:
            params = self.sample(labels, domains, regions, generator)
        else:
            C.check_params(params, ("applied", "background", "saturation", "hue", "flip"), B)
        out, cp = self.copy_paste(images, labels, domains, boxes=boxes, regions=regions, return_params=True,
                                  params={"applied": params["applied"], "background": params["background"]})
        # Jitter and flip follow the gate and skip empty clips; a clip whose paste found no background
        # or box is still jittered and flipped, as in the release's chain.
        on = ~((cp["reason"] == NOT_GATED) | (cp["reason"] == EMPTY_CLASS))
        rows = torch.nonzero(on).flatten().to(images.device)
        if rows.numel():
            x = C.to_float(out[rows]).float()
            x = adjust_saturation(x, params["saturation"][on.cpu()].to(images.device))
            x = adjust_hue(x, params["hue"][on.cpu()].to(images.device))
            flip = params["flip"][on.cpu()].to(images.device).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
            out[rows] = C.like_input(x, images)
        params = dict(params, reason=cp["reason"])
        return (out, params) if return_params else out


def render_mel_rgb(wave, sr: int, n_mels: int = 128, fmax: float = 16000.0, size: int = 224) -> torch.Tensor:
    """A clip's mel spectrogram (power_to_db relative to the max) colour-mapped like librosa's specshow
    default ('magma'), as a [3, size, size] float tensor; time runs along the width. Needs librosa and
    matplotlib (optional extras); the transforms themselves do not."""
    try:
        import librosa
        from matplotlib import colormaps
    except ImportError as exc:
        raise ImportError(f"render_mel_rgb needs librosa and matplotlib ({exc}); "
                          "pip install librosa matplotlib") from None
    import numpy as np
    import torch.nn.functional as F

    mel = librosa.feature.melspectrogram(y=np.asarray(wave, dtype=np.float32), sr=sr, n_mels=n_mels, fmax=fmax)
    db = librosa.power_to_db(mel, ref=np.max)
    norm = (db - db.min()) / max(float(db.max() - db.min()), 1e-12)
    rgb = colormaps["magma"](norm[::-1])[..., :3]  # low frequencies at the bottom, as specshow draws them
    img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()[None]
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)[0].clamp(0, 1)
