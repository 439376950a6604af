"""Public kernel API: one module per op."""
from fmkit.ops.knn import knn, knn_sharded

__all__ = ["knn", "knn_sharded"]
