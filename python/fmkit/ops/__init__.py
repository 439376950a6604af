"""Public kernel API: one module per op."""
from fmkit.ops.gaussian_kde import gaussian_kde
from fmkit.ops.knn import knn, knn_sharded

__all__ = ["gaussian_kde", "knn", "knn_sharded"]
