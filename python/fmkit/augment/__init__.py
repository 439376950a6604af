"""Targeted augmentations (Gao et al., ICML 2023, arXiv:2302.11861) and the baselines they are compared with.

Every transform takes [B, C, H, W] tensors (uint8, or float in [0, 1]) on any device, draws its
random parameters per sample from a seed or torch.Generator, gates its chain per sample with one
Bernoulli(p) draw, and returns (with return_params=True) the parameters it drew; passing them back
as params= reproduces the batch bitwise. Spec: shared/specs/augment_diversity_equity.md §1.
"""
from fmkit.augment._common import select
from fmkit.augment.baselines import LISA, CutMix, Cutout, MixUp, RandAugment, soft_cross_entropy
from fmkit.augment.copy_paste import BackgroundPool, CopyPaste, box_masks, gaussian_blur
from fmkit.augment.spectrogram import SpectrogramCopyPasteJitter, adjust_hue, adjust_saturation, render_mel_rgb
from fmkit.augment.stain import StainColorJitter
from fmkit.augment.theory import compare_strategies, make_domain_regression

__all__ = ["BackgroundPool", "CopyPaste", "CutMix", "Cutout", "LISA", "MixUp", "RandAugment",
           "SpectrogramCopyPasteJitter", "StainColorJitter", "adjust_hue", "adjust_saturation", "box_masks",
           "compare_strategies", "gaussian_blur", "make_domain_regression", "render_mel_rgb", "select",
           "soft_cross_entropy"]
