"""DataComp (Gadre et al., arXiv:2304.14108): filtering baselines over pools in DataComp's own
formats (parquet metadata, npz embeddings, WebDataset tar shards, sorted uid .npy outputs)."""
from fmkit.datacomp.filters import (
    FILTERS,
    apply_filter,
    basic_filter,
    clip_score_filter,
    image_based_filter,
    image_based_intersect_clip_score,
    intersect,
    no_filter,
    text_based_filter,
)
from fmkit.datacomp.pool import (
    Pool,
    SyntheticPoolInfo,
    make_synthetic_pool,
    read_pool,
    read_tar_shard,
    read_uids,
    write_tar_shard,
    write_uids,
)

__all__ = ["FILTERS", "apply_filter", "basic_filter", "clip_score_filter", "image_based_filter",
           "image_based_intersect_clip_score", "intersect", "no_filter", "text_based_filter", "Pool",
           "SyntheticPoolInfo", "make_synthetic_pool", "read_pool", "read_tar_shard", "read_uids",
           "write_tar_shard", "write_uids"]
