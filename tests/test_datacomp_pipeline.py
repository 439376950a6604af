"""`fmkit datacomp` CLI and `fmkit demo datacomp` end to end on small generated pools."""
import json

import pytest

pytest.importorskip("pyarrow")

from fmkit import cli  # noqa: E402
from fmkit.datacomp.data import WordTokenizer, load_pool_samples  # noqa: E402


def test_cli_make_filter_train_evaluate(tmp_path, capsys):
    pool, uids, ckpt = tmp_path / "pool", tmp_path / "u.npy", tmp_path / "ckpt"
    assert cli.main(["datacomp", "make-pool", str(pool), "--n", "256"]) == 0
    assert cli.main(["datacomp", "filter", "--pool", str(pool), "--name", "basic", "--out", str(uids)]) == 0
    kept = load_pool_samples(pool, uids)[1]
    assert 0 < len(kept) < 256
    assert cli.main(["datacomp", "train", "--pool", str(pool), "--uids", str(uids), "--out", str(ckpt),
                     "--steps", "5", "--batch-size", "32"]) == 0
    capsys.readouterr()
    tasks = tmp_path / "eval"
    assert cli.main(["datacomp", "make-eval", str(tasks), "--n", "96"]) == 0
    results = tmp_path / "results.json"
    assert cli.main(["datacomp", "evaluate", "--checkpoint", str(ckpt), "--pool", str(pool),
                     "--task", f"synthetic_classification={tasks / 'classification'}",
                     "--task", f"synthetic_retrieval={tasks / 'retrieval'}", "--out", str(results)]) == 0
    out = capsys.readouterr().out
    assert "DataComp average" in out and "synthetic_classification" in out
    r = json.loads(results.read_text())
    assert set(r["tasks"]) == {"pool_retrieval", "synthetic_classification", "synthetic_retrieval"}
    assert r["tasks"]["synthetic_classification"]["kind"] == "classification"
    assert r["tasks"]["synthetic_retrieval"]["kind"] == "retrieval"
    assert r["main_metrics"]["synthetic_classification"] == r["tasks"]["synthetic_classification"]["acc1"]
    assert r["main_metrics"]["pool_retrieval"] == r["tasks"]["pool_retrieval"]["mean_recall@1"]
    assert r["average"] == pytest.approx(sum(r["main_metrics"].values()) / 3) and r["n_tasks"] == 3
    assert all(0.0 <= v <= 1.0 for v in r["main_metrics"].values())
    assert (ckpt / "model.pt").exists() and (ckpt / "fmkit_clip.json").exists()


def test_cli_train_scale_preset_picks_its_model(tmp_path):
    """`--scale small` trains DataComp's small-scale model (ViT-B/32 at 224 px); flags override
    the preset's steps and batch size so that one step runs on the CPU."""
    pool, ckpt = tmp_path / "pool", tmp_path / "ckpt"
    cli.main(["datacomp", "make-pool", str(pool), "--n", "64"])
    assert cli.main(["datacomp", "train", "--pool", str(pool), "--out", str(ckpt), "--scale", "small",
                     "--steps", "1", "--batch-size", "4", "--warmup", "1"]) == 0
    meta = json.loads((ckpt / "fmkit_clip.json").read_text())
    assert meta["model"] == "B-32" and meta["image_size"] == 224 and meta["scale"] == "small"


def test_classification_task_round_trip_and_kind_detection(tmp_path):
    import torch

    from fmkit.datacomp.eval_tasks import load_classification_task, task_kind, write_classification_task

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 8, 8), generator=g).float() / 255
    labels = [2, 0, 1, 2, 2, 0, 10]
    names = [f"class {i}" for i in range(11)]
    root = write_classification_task(tmp_path / "task", images, labels, names, ["a {} photo"])
    assert task_kind(root) == "classification"
    pixels, got_labels, got_names, templates = load_classification_task(root, image_size=8)
    order = sorted(range(7), key=lambda i: (labels[i], i))  # folders in class order, files in write order
    assert got_labels.tolist() == [labels[i] for i in order]
    assert torch.equal(pixels, images[order]) and got_names == names and templates == ["a {} photo"]
    with pytest.raises(ValueError, match="not a folder"):
        task_kind(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither parquet shards"):
        task_kind(tmp_path / "empty")
    (root / "classnames.txt").write_text("only one\n")
    with pytest.raises(ValueError, match="1 names for 11 class folders"):
        load_classification_task(root)


def test_cli_evaluate_needs_a_task(tmp_path):
    with pytest.raises(ValueError, match="at least one --task"):
        cli.main(["datacomp", "evaluate", "--checkpoint", str(tmp_path)])
    with pytest.raises(ValueError, match="NAME=PATH"):
        cli.main(["datacomp", "evaluate", "--checkpoint", str(tmp_path), "--task", "nopath"])
    with pytest.raises(ValueError, match="no fmkit_clip.json"):
        cli.main(["datacomp", "evaluate", "--checkpoint", str(tmp_path), "--pool", str(tmp_path)])


def test_cli_unknown_filter_is_a_clear_error(tmp_path):
    cli.main(["datacomp", "make-pool", str(tmp_path / "pool"), "--n", "64"])
    with pytest.raises(ValueError, match="bogus"):
        cli.main(["datacomp", "filter", "--pool", str(tmp_path / "pool"), "--name", "bogus",
                  "--out", str(tmp_path / "u.npy")])


def test_word_tokenizer_puts_end_of_text_last():
    tok = WordTokenizer(["a photo of a cat", "a dog"], context_length=6)
    ids = tok(["a cat", "unknown words here"])
    assert ids[0].tolist()[:3] == [tok.vocab["a"], tok.vocab["cat"], tok.eot] and tok.eot == len(tok) - 1
    assert ids[1].tolist()[:4] == [tok.UNK, tok.UNK, tok.UNK, tok.eot]


def test_demo_filtering_beats_no_filtering(tmp_path):
    from fmkit.datacomp.demo import run_demo

    rows = run_demo(str(tmp_path), n=768, steps=60, progress=False)
    assert rows["basic"]["zero_shot_top1"] > rows["no filter"]["zero_shot_top1"]
    assert rows["CLIP score (L/14, top 30%)"]["zero_shot_top1"] > rows["no filter"]["zero_shot_top1"]
