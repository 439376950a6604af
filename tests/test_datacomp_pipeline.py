"""`fmkit datacomp` CLI and `fmkit demo datacomp` end to end on small generated pools."""
import functools
import json

import pytest
import torch

pytest.importorskip("pyarrow")

from fmkit import cli  # noqa: E402
from fmkit.datacomp.data import WordTokenizer, load_pool_samples  # noqa: E402


@pytest.mark.slow
def test_cli_make_filter_train_evaluate(tmp_path, capsys):
    pytest.importorskip("py3langid")  # the basic filter's language id (the datacomp extra)
    pool, uids, ckpt = tmp_path / "pool", tmp_path / "u.npy", tmp_path / "ckpt"
    assert cli.main(["datacomp", "make-pool", str(pool), "--n", "256"]) == 0
    assert cli.main(["datacomp", "filter", "--pool", str(pool), "--name", "basic", "--out", str(uids)]) == 0
    kept = load_pool_samples(pool, uids)[1]
    assert 0 < len(kept) < 256
    assert cli.main(["datacomp", "train", "--pool", str(pool), "--uids", str(uids), "--out", str(ckpt),
                     "--steps", "5", "--batch-size", "32", "--device", "cpu"]) == 0
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


@pytest.mark.slow
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


def _fails(argv, capsys, status=2):
    """Runs the CLI expecting an error: returns its one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_cli_evaluate_needs_a_task(tmp_path, capsys):
    assert "at least one --task" in _fails(["datacomp", "evaluate", "--checkpoint", str(tmp_path)], capsys)
    assert "--task: expected NAME=PATH" in _fails(["datacomp", "evaluate", "--checkpoint", str(tmp_path),
                                                   "--task", "nopath"], capsys)
    assert "--task: no such folder" in _fails(["datacomp", "evaluate", "--checkpoint", str(tmp_path),
                                               "--task", f"x={tmp_path / 'absent'}"], capsys)
    assert "no fmkit_clip.json" in _fails(["datacomp", "evaluate", "--checkpoint", str(tmp_path),
                                           "--pool", str(tmp_path)], capsys)


def test_cli_unknown_filter_is_a_clear_error(tmp_path, capsys):
    from fmkit.datacomp.filters import FILTERS

    cli.main(["datacomp", "make-pool", str(tmp_path / "pool"), "--n", "64"])
    err = _fails(["datacomp", "filter", "--pool", str(tmp_path / "pool"), "--name", "bogus",
                  "--out", str(tmp_path / "u.npy")], capsys)
    assert "--name" in err and "bogus" in err and all(name in err for name in FILTERS)


def test_make_pool_refuses_an_existing_pool_and_overwrite_replaces_it_whole(tmp_path, capsys):
    """The issue's case: make-pool --n 2048 then --n 100 into the same folder used to leave
    the old shards beside the new one (a later filter kept 2,020 samples)."""
    from fmkit.datacomp.filters import no_filter

    pool = tmp_path / "p2"
    assert cli.main(["datacomp", "make-pool", str(pool), "--n", "300"]) == 0
    old_files = sorted(p.name for p in pool.iterdir())
    assert len(old_files) == 9  # 3 shards of 128 x (parquet, npz, tar)
    err = _fails(["datacomp", "make-pool", str(pool), "--n", "100"], capsys)
    assert "DIR" in err and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in pool.iterdir()) == old_files  # untouched
    assert cli.main(["datacomp", "make-pool", str(pool), "--n", "100", "--overwrite"]) == 0
    assert sorted(p.name for p in pool.iterdir()) == ["00000000.npz", "00000000.parquet", "00000000.tar"]
    assert len(no_filter(pool, progress=False)) == 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_make_pool_failure_leaves_the_old_pool(tmp_path, monkeypatch):
    from fmkit.datacomp import pool as pool_module
    from fmkit.datacomp.filters import no_filter

    pool = tmp_path / "pool"
    pool_module.make_synthetic_pool(pool, n=50, write_images=False)

    def broken(out, *args):
        (out / "00000000.parquet").write_text("half written")
        raise OSError("disk full")

    monkeypatch.setattr(pool_module, "_write_synthetic_pool", broken)
    with pytest.raises(OSError, match="disk full"):
        pool_module.make_synthetic_pool(pool, n=80, overwrite=True)
    assert len(no_filter(pool, progress=False)) == 50
    assert [p.name for p in tmp_path.iterdir()] == ["pool"]


@pytest.mark.parametrize("step", ["filter", "train", "evaluate", "make-eval"])
def test_every_datacomp_writer_refuses_existing_output(tmp_path, capsys, step):
    pool = tmp_path / "pool"
    cli.main(["datacomp", "make-pool", str(pool), "--n", "64"])
    taken_file, taken_dir = tmp_path / "taken.npy", tmp_path / "taken"
    taken_file.write_bytes(b"old")
    taken_dir.mkdir()
    (taken_dir / "old.txt").write_text("old")
    argv = {"filter": ["filter", "--pool", str(pool), "--name", "no_filter", "--out", str(taken_file)],
            "train": ["train", "--pool", str(pool), "--out", str(taken_dir), "--steps", "1"],
            "evaluate": ["evaluate", "--checkpoint", str(tmp_path), "--pool", str(pool), "--out", str(taken_file)],
            "make-eval": ["make-eval", str(taken_dir), "--n", "16"]}[step]
    err = _fails(["datacomp"] + argv, capsys)
    assert "--overwrite" in err
    assert taken_file.read_bytes() == b"old" and (taken_dir / "old.txt").read_text() == "old"


def test_filter_overwrite_replaces_the_uid_file(tmp_path):
    from fmkit.datacomp.pool import read_uids

    pool, out = tmp_path / "pool", tmp_path / "u.npy"
    cli.main(["datacomp", "make-pool", str(pool), "--n", "64"])
    out.write_bytes(b"old")
    assert cli.main(["datacomp", "filter", "--pool", str(pool), "--name", "no_filter", "--out", str(out),
                     "--overwrite"]) == 0
    assert len(read_uids(out)) == 64


def test_word_tokenizer_puts_end_of_text_last():
    tok = WordTokenizer(["a photo of a cat", "a dog"], context_length=6)
    ids = tok(["a cat", "unknown words here"])
    assert ids[0].tolist()[:3] == [tok.vocab["a"], tok.vocab["cat"], tok.eot] and tok.eot == len(tok) - 1
    assert ids[1].tolist()[:4] == [tok.UNK, tok.UNK, tok.UNK, tok.eot]


@pytest.mark.slow
def test_demo_filtering_beats_no_filtering(tmp_path):
    pytest.importorskip("py3langid")  # the basic filter's language id (the datacomp extra)
    from fmkit.datacomp.demo import run_demo

    rows = run_demo(str(tmp_path), n=768, steps=60, progress=False)
    assert rows["basic"]["zero_shot_top1"] > rows["no filter"]["zero_shot_top1"]
    assert rows["CLIP score (L/14, top 30%)"]["zero_shot_top1"] > rows["no filter"]["zero_shot_top1"]


def test_retrieval_task_captions_identify_their_images(tmp_path):
    """make-eval's retrieval items: 512 distinct captions over 8 classes (it used to be 8
    captions repeated 64 times, so recall@1 was 1/64 for every model), and each caption's
    attributes are drawn in its image (checked on the pixels of the mark's corner)."""
    from fmkit.datacomp.eval_tasks import make_synthetic_eval_tasks
    from fmkit.datacomp.pool import _MARK_COLOURS, _MARK_SIZES

    tasks = make_synthetic_eval_tasks(tmp_path, n=512)
    images, captions, _ = load_pool_samples(tasks["synthetic_retrieval"])
    assert len(set(captions)) == 512
    for image, caption in list(zip(images, captions))[:64]:
        words = caption.split(", ")[1].split()  # e.g. big red mark top left on black
        size, colour, corner = words[0], words[1], words[3:5]
        m = round(_MARK_SIZES[size] * 32)
        centre = [1 + m // 2 if side in ("top", "left") else 31 - m + m // 2 for side in corner]
        pixel = image[:, centre[0] - 1:centre[0] + 2, centre[1] - 1:centre[1] + 2].mean((1, 2)) * 255
        assert torch.allclose(pixel, torch.tensor(_MARK_COLOURS[colour], dtype=torch.float32), atol=70), caption


@pytest.mark.slow
def test_retrieval_task_tells_a_trained_model_from_an_untrained_one(tmp_path):
    """A tiny CLIP trained 25 steps on an attribute pool against the same model untrained, on
    make-eval's retrieval task (128 items: chance recall@10 is 10/128)."""
    from fmkit.clip import create_model, train_clip

    train_clip = functools.partial(train_clip, device="cpu")  # the CPU result the threshold was set on
    from fmkit.clip.evaluate import retrieval_recall
    from fmkit.datacomp.data import batches
    from fmkit.datacomp.eval_tasks import make_synthetic_eval_tasks
    from fmkit.datacomp.pool import make_synthetic_pool

    make_synthetic_pool(tmp_path / "train", n=512, corrupt_frac=0, non_english_frac=0, bad_size_frac=0,
                        attributes=True)
    tasks = make_synthetic_eval_tasks(tmp_path / "eval", n=128)
    images, captions, _ = load_pool_samples(tmp_path / "train")
    eval_images, eval_captions, _ = load_pool_samples(tasks["synthetic_retrieval"])
    tokenizer = WordTokenizer(captions)
    torch.manual_seed(0)
    model = create_model("tiny", vocab_size=len(tokenizer), context_length=tokenizer.context_length, image_size=32)
    untrained = retrieval_recall(model, eval_images, tokenizer(eval_captions))
    train_clip(model, batches(images, tokenizer(captions), 32), steps=25, batch_size=32, lr=2e-3, warmup=5,
               precision="fp32", progress=False)
    trained = retrieval_recall(model, eval_images, tokenizer(eval_captions))
    for direction in ("image", "text"):
        assert trained[f"{direction}_retrieval_recall@10"] > untrained[f"{direction}_retrieval_recall@10"] + 0.25
    assert trained["mean_recall@1"] > untrained["mean_recall@1"]
