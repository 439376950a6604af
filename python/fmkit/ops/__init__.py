"""Public kernel API: one module per op."""
from fmkit.ops.clip_loss import clip_loss
from fmkit.ops.gaussian_kde import gaussian_kde
from fmkit.ops.knn import knn, knn_sharded

__all__ = ["clip_loss", "gaussian_kde", "knn", "knn_sharded"]
