"""A many-class image data set made offline: characters rendered from the DejaVu fonts that ship
with matplotlib (Latin, accented Latin, Greek, Cyrillic, digits), each sample in a random font
face with a random affine jitter and pixel noise. Classes whose glyphs render identically in
DejaVu Sans (Latin A and Greek Alpha, ...) are merged away, so every class is distinguishable."""
from __future__ import annotations

import os

import numpy as np
import torch

FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf")
RANGES = ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xFF), (0x391, 0x3A9), (0x3B1, 0x3C9),
          (0x410, 0x44F), (0x100, 0x17F))


def _font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def _render(font, ch: str, size: int) -> np.ndarray:
    """The glyph as a float image [size, size] in [0, 1], centred, scaled to fit."""
    font.set_text(ch, 0.0)
    font.draw_glyphs_to_bitmap()
    img = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    if img.size == 0 or img.max() == 0:
        return np.zeros((size, size), np.float32)
    ys, xs = np.nonzero(img > 0.05)
    img = img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    side = max(img.shape) + 4
    canvas = np.zeros((side, side), np.float32)
    y0, x0 = (side - img.shape[0]) // 2, (side - img.shape[1]) // 2
    canvas[y0:y0 + img.shape[0], x0:x0 + img.shape[1]] = img
    t = torch.from_numpy(canvas)[None, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="area")[0, 0].numpy()


def glyph_templates(size: int = 20) -> tuple[np.ndarray, list[str]]:
    """[classes, faces, size, size] clean glyphs and the characters they show."""
    from matplotlib.ft2font import FT2Font

    fonts = [FT2Font(os.path.join(_font_dir(), face)) for face in FACES]
    for f in fonts:
        f.set_size(48, 72)
    chars, templates, seen = [], [], set()
    for lo, hi in RANGES:
        for code in range(lo, hi + 1):
            ch = chr(code)
            if code in (0xD7, 0xF7) or not all(f.get_char_index(code) for f in fonts):
                continue
            faces = np.stack([_render(f, ch, size) for f in fonts])
            key = (faces[0] > 0.5).tobytes()  # same shape in DejaVu Sans: the same class to a reader
            if faces[0].max() == 0 or key in seen:
                continue
            seen.add(key)
            chars.append(ch)
            templates.append(faces)
    return np.stack(templates), chars


def jittered(templates: np.ndarray, classes: np.ndarray, per_class: int, seed: int,
             noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class samples of each class in `classes`: random face, rotation ±15°, scale 0.8-1.15,
    shear ±0.25, shift ±12%, then Gaussian pixel noise. Returns ([M, size*size], labels [M])."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(np.repeat(classes, per_class), dtype=torch.long)
    M, faces, size = len(labels), templates.shape[1], templates.shape[-1]
    face = torch.randint(0, faces, (M,), generator=g)
    base = torch.from_numpy(templates)[labels, face][:, None]
    angle = (torch.rand(M, generator=g) - 0.5) * (torch.pi / 6)
    scale = 0.8 + 0.35 * torch.rand(M, generator=g)
    shear = (torch.rand(M, generator=g) - 0.5) * 0.5
    shift = (torch.rand(M, 2, generator=g) - 0.5) * 0.24
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, (M, 1, size, size), align_corners=False)
    imgs = torch.nn.functional.grid_sample(base, grid, align_corners=False, padding_mode="zeros")
    imgs = imgs + noise * torch.randn(imgs.shape, generator=g)
    return imgs.reshape(M, -1), labels
