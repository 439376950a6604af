"""run_sharded under torch.distributed (2 gloo processes) equals a single process."""
import json
import os

import pytest

pytestmark = pytest.mark.slow


def _per_item(items):
    """A per-item result that depends only on the item (as scoring does)."""
    return [{"id": it["id"], "score": sum(ord(ch) for ch in it["text"]) % 97} for it in items]


def _worker(rank, world, init_file, out_dir, per_item, items):
    """One gloo rank: run_sharded(per_item, items), the gathered result written to rank<r>.json."""
    import torch.distributed as dist

    from fmkit.paradox import run_sharded

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = run_sharded(per_item, items)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    from fmkit.paradox import run_sharded

    items = [{"id": k, "text": f"item number {k} " * (k % 4 + 1)} for k in range(11)]  # odd: uneven shards
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), _per_item, items), nprocs=2, join=True)
    single = run_sharded(_per_item, items)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single


# Scoring with a real model: each rank builds the same tiny local Llama, scores its shard of the
# bundled items through LoglikChooser (the shared-prefix scorer), and the gathered result must equal
# one process scoring all items.

def _score_items(items):
    import torch

    from fmkit.paradox.models import tiny_model_and_tokenizer
    from fmkit.paradox.protocol import LoglikChooser, shuffled_candidates

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same in the ranks and in the single process
    try:
        model, tok = tiny_model_and_tokenizer(seed=5, dtype=torch.float64)
        chooser = LoglikChooser(model, tok, normalization="char", batch_size=4)
        cands = [shuffled_candidates(it, 0, k) for k, it in items]
        chosen = chooser([it.input for _, it in items], [c for c, _ in cands])
        s = chooser.last_scores
    finally:
        torch.set_num_threads(threads)
    return [{"id": it.id, "chosen": int(ch), "gold": g, "loglik": [float(x) for x in ll],
             "token_logprobs": [[float(x) for x in lp] for lp in tl]}
            for (_, it), ch, (_, g), ll, tl in zip(items, chosen, cands, s.loglik, s.token_logprobs)]


def test_two_gloo_ranks_scoring_with_a_real_model_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    from fmkit.paradox import data, run_sharded

    items = list(enumerate(data.qa_items() + data.completion_items()))  # 32 items, 16 per rank
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), _score_items, items), nprocs=2, join=True)
    single = run_sharded(_score_items, items)
    assert len(single) == 32 and len({r["chosen"] for r in single}) > 1  # the scores discriminate
    for rank in range(2):
        gathered = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert [r["id"] for r in gathered] == [it.id for _, it in items]
        assert gathered == single  # choices and every log-prob bit-identical


def _cli_worker(rank, world, port, argv, out_dir):
    import contextlib

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    from fmkit.cli import main

    torch.set_num_threads(1)
    with open(os.path.join(out_dir, f"stdout{rank}.txt"), "w") as f, contextlib.redirect_stdout(f):
        assert main(argv) == 0


def test_cli_score_under_two_ranks_equals_one_process(tmp_path, capsys):
    """`fmkit paradox score` as torchrun starts it (RANK / WORLD_SIZE / MASTER_* in the environment):
    rank 0 writes the gathered records, in item order, equal to a one-process run."""
    import socket

    import torch.multiprocessing as mp

    from fmkit.cli import main
    from fmkit.paradox import data
    from fmkit.paradox.models import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(seed=2)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"context": it.input + "\nAnswer:", "choices": [it.reference] + it.distractors,
                                         "gold": 0}) + "\n" for it in data.qa_items()[:7]))
    argv = ["paradox", "score", "--model", str(ckpt), "--items", str(items)]
    assert main(argv + ["--out", str(tmp_path / "one.jsonl")]) == 0
    one_metrics = capsys.readouterr().out.splitlines()[-2]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_cli_worker, args=(2, port, argv + ["--out", str(tmp_path / "two.jsonl")], str(tmp_path)), nprocs=2,
             join=True)
    assert "(2 processes)" in (tmp_path / "stdout0.txt").read_text()  # sharded, gathered and written by rank 0
    assert (tmp_path / "stdout1.txt").read_text() == ""
    one = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 28
    for a, b in zip(one, two):
        assert (a["item"], a["option"], a["text"], a["n_tokens"]) == (b["item"], b["option"], b["text"], b["n_tokens"])
        assert abs(a["loglik"] - b["loglik"]) < 1e-5 and abs(a["pmi"] - b["pmi"]) < 1e-5
    assert one_metrics.startswith('{"acc"')
