"""Batched Copy-Paste (iWildCam "Same Y", BirdCalls "Region"; spec §1.1, §1.2.2, §1.2.4).

The foreground of each image (a hard segmentation mask, else its detection boxes drawn filled and
Gaussian-blurred into a soft alpha) is composited onto a background drawn from a pool of empty
(y = empty_class) train examples that satisfy a predicate:

    same_label   the background's domain has observed the image's label (in the train split by
                 default; observed_from="all" counts every split, as the release does)
    same_region  the background has the image's region (BirdCalls)
    same_cluster the background has the image's cluster (the geographic-cluster ablation)
    any          any empty train example (the domain-invariant "all backgrounds" baseline)

exclude_source_domain=True (fmkit's default) never draws the image's own domain; False reproduces
the release. Output = alpha * image + (1 - alpha) * resized background, at the same position (the
release's translate / rescale options are off in every named transform and not implemented).
Background indices are drawn on the CPU; the compositing runs on the images' device for the batch.

Identity cases are documented, not errors: the gate said no, y = empty_class, no usable mask (no
mask pixels and no box with confidence >= conf_threshold), or no eligible background. Each call
returns (with return_params=True) a per-image `reason` code and adds to `CopyPaste.counts`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fmkit.augment import _common as C

PREDICATES = ("same_label", "same_region", "same_cluster", "any")
# Per-image outcome codes in params["reason"].
PASTED, NOT_GATED, EMPTY_CLASS, NO_MASK, NO_BACKGROUND = 0, 1, 2, 3, 4
REASONS = {PASTED: "pasted", NOT_GATED: "not_gated", EMPTY_CLASS: "empty_class", NO_MASK: "no_mask",
           NO_BACKGROUND: "no_background"}


def gaussian_blur(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """[B, 1, H, W] float blurred by a Gaussian of standard deviation `radius` pixels (PIL's
    GaussianBlur(radius) convention), truncated at 3 sigma, edges replicated."""
    if radius <= 0:
        return mask
    half = int(math.ceil(3 * radius))
    x = torch.arange(-half, half + 1, dtype=mask.dtype, device=mask.device)
    k = torch.exp(-0.5 * (x / radius) ** 2)
    k = k / k.sum()
    out = F.pad(mask, (half, half, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, half, half), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1)).clamp(0, 1)


def box_masks(boxes, H: int, W: int, confidences=None, conf_threshold: float = 0.5, blur_radius: float = 5.0,
              device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Soft alphas [B, 1, H, W] from per-image boxes, and whether each image has a usable box [B].

    boxes: a list of B arrays [n_i, 4] of normalized (x, y, w, h), (x, y) the top-left corner.
    confidences: None (all 1) or a list of B arrays [n_i]. An image whose best confidence is below
    conf_threshold, or that has no boxes, gets an all-zero alpha and usable = False.
    """
    B = len(boxes)
    if confidences is not None and len(confidences) != B:
        raise ValueError(f"confidences: expected one array per image ({B}), got {len(confidences)}")
    rows = torch.arange(H, device=device, dtype=torch.float32)[:, None]
    cols = torch.arange(W, device=device, dtype=torch.float32)[None, :]
    mask = torch.zeros(B, 1, H, W, device=device)
    usable = torch.zeros(B, dtype=torch.bool)
    for i, bx in enumerate(boxes):
        bx = torch.as_tensor(bx, dtype=torch.float32).reshape(-1, 4) if bx is not None else torch.zeros(0, 4)
        if bx.shape[0] == 0:
            continue
        conf = torch.ones(bx.shape[0]) if confidences is None else torch.as_tensor(confidences[i], dtype=torch.float32)
        if conf.shape != (bx.shape[0],):
            raise ValueError(f"confidences[{i}]: expected shape [{bx.shape[0]}] like boxes[{i}], "
                             f"got {list(conf.shape)}")
        if not bool(torch.isfinite(bx).all()):
            raise ValueError(f"boxes[{i}]: contains NaN or inf")
        if float(conf.max()) < conf_threshold:
            continue
        usable[i] = True
        x0 = torch.round(bx[:, 0] * W).to(device)
        y0 = torch.round(bx[:, 1] * H).to(device)
        x1 = torch.round((bx[:, 0] + bx[:, 2]) * W).to(device)
        y1 = torch.round((bx[:, 1] + bx[:, 3]) * H).to(device)
        inside = ((rows[None] >= y0[:, None, None]) & (rows[None] < y1[:, None, None])
                  & (cols[None] >= x0[:, None, None]) & (cols[None] < x1[:, None, None]))
        mask[i, 0] = inside.any(0).float()
    return gaussian_blur(mask, blur_radius), usable


class BackgroundPool:
    """The examples backgrounds are drawn from, with the metadata the predicates read.

    images: [N, 3, h, w] tensor (any size: backgrounds are resized to each batch's H x W), or a
    callable mapping a LongTensor of indices to such a tensor (load on demand). labels, domains: [N]
    integer ids of every example of the dataset (all splits, so that observed_from="all" can count
    them). splits: [N] strings (or None: all "train"); only empty train examples are backgrounds.
    regions, clusters: optional [N] integer ids for the same_region / same_cluster predicates.
    """

    def __init__(self, images, labels, domains, splits=None, regions=None, clusters=None, empty_class: int = 0):
        self.labels = torch.as_tensor(labels).long().reshape(-1)
        N = self.labels.shape[0]
        self.domains = C.check_vector(domains, "domains", N, "cpu")
        self.regions = None if regions is None else C.check_vector(regions, "regions", N, "cpu")
        self.clusters = None if clusters is None else C.check_vector(clusters, "clusters", N, "cpu")
        if splits is None:
            self.train = torch.ones(N, dtype=torch.bool)
        else:
            if len(splits) != N:
                raise ValueError(f"splits: expected {N} entries (one per example), got {len(splits)}")
            self.train = torch.tensor([s == "train" for s in splits], dtype=torch.bool)
        if callable(images):
            self._load = images
        else:
            images = C.check_images(images, "background images")
            if images.shape[0] != N:
                raise ValueError(f"images: expected {N} images like labels, got {images.shape[0]}")
            self._load = lambda idx: images[idx.to(images.device)]
        self.empty_class = int(empty_class)
        self.index = torch.nonzero(self.train & (self.labels == self.empty_class)).flatten()  # the backgrounds

    def observed(self, observed_from: str) -> torch.Tensor:
        """Bool [num_labels, num_domains]: domain d has at least one example of label y."""
        keep = self.train if observed_from == "train" else torch.ones_like(self.train)
        obs = torch.zeros(int(self.labels.max()) + 1, int(self.domains.max()) + 1, dtype=torch.bool)
        obs[self.labels[keep], self.domains[keep]] = True
        return obs

    def load(self, idx: torch.Tensor) -> torch.Tensor:
        return self._load(idx)


class CopyPaste:
    """CopyPaste(background_pool, predicate="same_label", empty_class=0, exclude_source_domain=True,
    observed_from="train", conf_threshold=0.5, blur_radius=5, p=0.5).

    Call: cp(images, labels, domains, *, masks=None, boxes=None, confidences=None, regions=None,
    clusters=None, generator=None, params=None, return_params=False) -> images (and params).
    masks: [B, H, W] or [B, 1, H, W] like the images (pixels > 0 are foreground; an all-zero mask
    falls back to the image's boxes). boxes / confidences: lists of B arrays (see box_masks).
    """

    def __init__(self, background_pool: BackgroundPool, predicate: str = "same_label", empty_class: int = 0,
                 exclude_source_domain: bool = True, observed_from: str = "train", conf_threshold: float = 0.5,
                 blur_radius: float = 5.0, p: float = 0.5):
        if not isinstance(background_pool, BackgroundPool):
            raise TypeError("background_pool: expected a fmkit.augment.BackgroundPool, got "
                            f"{type(background_pool).__name__}")
        if predicate not in PREDICATES:
            raise ValueError(f"predicate: expected one of {PREDICATES}, got {predicate!r}")
        if observed_from not in ("train", "all"):
            raise ValueError(f"observed_from: expected 'train' or 'all', got {observed_from!r}")
        if predicate == "same_region" and background_pool.regions is None:
            raise ValueError("predicate='same_region' needs the pool's regions (BackgroundPool(..., regions=...))")
        if predicate == "same_cluster" and background_pool.clusters is None:
            raise ValueError("predicate='same_cluster' needs the pool's clusters (BackgroundPool(..., clusters=...))")
        self.pool, self.predicate, self.empty_class = background_pool, predicate, int(empty_class)
        self.exclude_source_domain, self.observed_from = bool(exclude_source_domain), observed_from
        self.conf_threshold, self.blur_radius = float(conf_threshold), float(blur_radius)
        self.p = C.check_probability(p)
        self._observed = background_pool.observed(observed_from) if predicate == "same_label" else None
        self.counts = {name: 0 for name in REASONS.values()}

    def eligible(self, labels: torch.Tensor, domains: torch.Tensor, regions=None, clusters=None) -> torch.Tensor:
        """Bool [B, n_backgrounds]: which pool backgrounds each image may receive (CPU)."""
        pool = self.pool
        bg = pool.index
        B = labels.shape[0]
        ok = torch.ones(B, bg.shape[0], dtype=torch.bool)
        if self.predicate == "same_label":
            obs = self._observed
            known = (labels >= 0) & (labels < obs.shape[0])
            ok &= obs[labels.clamp(0, obs.shape[0] - 1)][:, pool.domains[bg]] & known[:, None]
        elif self.predicate == "same_region":
            ok &= pool.regions[bg][None, :] == regions[:, None]
        elif self.predicate == "same_cluster":
            ok &= pool.clusters[bg][None, :] == clusters[:, None]
        if self.exclude_source_domain:
            ok &= pool.domains[bg][None, :] != domains[:, None]
        return ok

    def sample(self, labels, domains, regions=None, clusters=None, generator=None) -> C.Params:
        """Gate and background draws (pool row numbers, -1 for none) for a batch with this metadata."""
        g = C.generator_from(generator)
        B = labels.shape[0]
        applied = C.gate(B, self.p, g, "cpu")
        ok = self.eligible(labels, domains, regions, clusters)
        u = C.rand((B, ok.shape[1]), g, "cpu")  # uniform among the eligible: the largest masked draw
        u = torch.where(ok, u, -1.0)
        pick = u.argmax(1) if ok.shape[1] else torch.zeros(B, dtype=torch.int64)
        background = torch.where(ok.any(1), self.pool.index[pick] if ok.shape[1] else pick, -1)
        return {"applied": applied, "background": background}

    def foreground(self, images, masks=None, boxes=None, confidences=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha [B, 1, H, W] float, has_mask [B]): hard masks first, blurred boxes as the fallback."""
        B, _, H, W = images.shape
        alpha = torch.zeros(B, 1, H, W, device=images.device)
        has = torch.zeros(B, dtype=torch.bool)
        if masks is not None:
            m = torch.as_tensor(masks, device=images.device)
            if m.dim() == 3:
                m = m[:, None]
            if m.shape != (B, 1, H, W):
                raise ValueError(f"masks: expected shape [{B}, {H}, {W}] like images {list(images.shape)}, "
                                 f"got {list(torch.as_tensor(masks).shape)}")
            if m.is_floating_point() and not bool(torch.isfinite(m).all()):
                raise ValueError("masks: contains NaN or inf")
            alpha = (m > 0).float()
            has = alpha.flatten(1).any(1).cpu()
        if boxes is not None:
            if len(boxes) != B:
                raise ValueError(f"boxes: expected one array of boxes per image ({B}), got {len(boxes)}")
            soft, usable = box_masks(boxes, H, W, confidences, self.conf_threshold, self.blur_radius, images.device)
            use_box = usable & ~has
            alpha = torch.where(use_box.to(images.device)[:, None, None, None], soft, alpha)
            has = has | usable
        return alpha, has

    def __call__(self, images, labels, domains, *, masks=None, boxes=None, confidences=None, regions=None,
                 clusters=None, generator=None, params=None, return_params=False):
        images = C.check_images(images)
        B = images.shape[0]
        labels = C.check_vector(labels, "labels", B, "cpu")
        domains = C.check_vector(domains, "domains", B, "cpu")
        if self.predicate == "same_region":
            regions = C.check_vector(regions, "regions", B, "cpu")
        if self.predicate == "same_cluster":
            clusters = C.check_vector(clusters, "clusters", B, "cpu")
        if params is None:
            params = self.sample(labels, domains, regions, clusters, generator)
        else:
            C.check_params(params, ("applied", "background"), B)
        alpha, has_mask = self.foreground(images, masks, boxes, confidences)
        background = params["background"].cpu()
        reason = torch.full((B,), PASTED, dtype=torch.int8)
        reason[background < 0] = NO_BACKGROUND
        reason[~has_mask] = NO_MASK
        reason[labels == self.empty_class] = EMPTY_CLASS
        reason[~params["applied"].cpu()] = NOT_GATED
        for code, name in REASONS.items():
            self.counts[name] += int((reason == code).sum())
        out = self.composite(images, alpha, background, reason == PASTED)
        params = dict(params, reason=reason)
        return (out, params) if return_params else out

    def composite(self, images, alpha, background, paste) -> torch.Tensor:
        """alpha * image + (1 - alpha) * resized background on the rows where `paste` is True."""
        rows = torch.nonzero(paste).flatten()
        if rows.numel() == 0:
            return images.clone()
        H, W = images.shape[-2:]
        bg = C.to_float(self.pool.load(background[rows])).to(images.device, torch.float32)
        if bg.shape[-2:] != (H, W):
            bg = F.interpolate(bg, size=(H, W), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        x = C.to_float(images[rows.to(images.device)]).float()
        a = alpha[rows.to(images.device)]
        out = images.clone()
        out[rows.to(images.device)] = C.like_input(a * x + (1 - a) * bg, images)
        return out
