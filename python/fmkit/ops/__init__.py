"""Public kernel API: one module per op."""
from fmkit.ops.class_spectrum import class_spectrum
from fmkit.ops.clip_loss import clip_loss
from fmkit.ops.gaussian_kde import gaussian_kde
from fmkit.ops.knn import knn, knn_sharded
from fmkit.ops.media_cross_attention import media_cross_attention
from fmkit.ops.perceiver_attention import perceiver_attention
from fmkit.ops.pgd_step import pgd_step_
from fmkit.ops.stain_jitter import stain_jitter

__all__ = ["class_spectrum", "clip_loss", "gaussian_kde", "media_cross_attention", "perceiver_attention", "pgd_step_", "stain_jitter", "knn", "knn_sharded"]
