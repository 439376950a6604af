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
    assert cli.main(["datacomp", "evaluate", "--checkpoint", str(ckpt), "--pool", str(pool)]) == 0
    out = capsys.readouterr().out
    recall = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert 0.0 <= recall["mean_recall@1"] <= 1.0 and "image_retrieval_recall@5" in recall
    assert (ckpt / "model.pt").exists() and (ckpt / "fmkit_clip.json").exists()


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
