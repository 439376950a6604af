"""run_sharded under torch.distributed (2 gloo processes) equals a single process."""
import json
import os

import pytest

pytestmark = pytest.mark.slow


def _per_item(items):
    """A per-item result that depends only on the item (as scoring does)."""
    return [{"id": it["id"], "score": sum(ord(ch) for ch in it["text"]) % 97} for it in items]


def _worker(rank, world, init_file, out_dir, items):
    import torch.distributed as dist

    from fmkit.paradox import run_sharded

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = run_sharded(_per_item, items)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    from fmkit.paradox import run_sharded

    items = [{"id": k, "text": f"item number {k} " * (k % 4 + 1)} for k in range(11)]  # odd: uneven shards
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), items), nprocs=2, join=True)
    single = run_sharded(_per_item, items)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single
