"""`fmkit paradox score|selective` through fmkit.cli.main: outputs, one-line errors."""
import json

import pytest

from fmkit.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text('{"context": "a", "choices": ["b"]}\n')
    code, err = _run(["paradox", "score", "--model", str(tmp_path / "nope"), "--items", str(items),
                      "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "--model" in err and "checkpoint folder" in err and len(err.strip().splitlines()) == 1
    code, err = _run(["paradox", "score", "--model", "smollm2", "--items", str(tmp_path / "missing.jsonl"),
                      "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "no such file" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    code, err = _run(["paradox", "score", "--model", "smollm2", "--items", str(bad), "--out",
                      str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "line 1" in err and "not JSON" in err
    exists = tmp_path / "exists.jsonl"
    exists.write_text("x")
    code, err = _run(["paradox", "score", "--model", "smollm2", "--items", str(items), "--out", str(exists)], capsys)
    assert code == 2 and "--overwrite" in err
    noditr = tmp_path / "nodis.jsonl"
    noditr.write_text('{"input": "q", "reference": "r", "distractors": []}\n')
    code, err = _run(["paradox", "selective", "--model", "smollm2", "--items", str(noditr), "--out",
                      str(tmp_path / "r.json")], capsys)
    assert code == 2 and "no distractors" in err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from fmkit.paradox.models import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(seed=2)
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_score_writes_per_option_logprobs(checkpoint, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(r) for r in [
        {"context": "The capital of France is", "choices": ["Paris.", "Tokyo"], "gold": 0},
        {"context": "He poured the coff", "choices": ["ee", "ea slowly", "fin"], "gold": 2}]) + "\n")
    out = tmp_path / "scores.jsonl"
    assert main(["paradox", "score", "--model", checkpoint, "--items", str(items), "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 5 and {"loglik", "pmi", "per_byte", "token_logprobs"} <= set(recs[0])
    assert abs(sum(recs[3]["token_logprobs"]) - recs[3]["loglik"]) < 1e-6
    assert '"acc"' in capsys.readouterr().out
    empty = tmp_path / "empty_opt.jsonl"
    empty.write_text('{"context": "a b", "choices": ["x", ""]}\n')
    code, err = _run(["paradox", "score", "--model", checkpoint, "--items", str(empty), "--out",
                      str(tmp_path / "e.jsonl")], capsys)
    assert code == 2 and "the option is empty" in err


@pytest.mark.slow
def test_selective_writes_report(checkpoint, tmp_path, capsys):
    from fmkit.paradox.data import qa_items

    items = tmp_path / "qa.jsonl"
    items.write_text("\n".join(json.dumps({"input": it.input, "reference": it.reference,
                                           "distractors": it.distractors, "difficulty": it.difficulty})
                               for it in qa_items()[:3]) + "\n")
    out = tmp_path / "report.json"
    assert main(["paradox", "selective", "--model", checkpoint, "--items", str(items), "--out", str(out),
                 "--human-d", "0.9", "--max-new-tokens", "4"]) == 0
    rep = json.loads(out.read_text())
    assert rep["n_items"] == 3 and rep["D_h"] == 0.9 and rep["same_model"] is True
    assert len(rep["per_item"]) == 3 and rep["models"]["chooser"] == rep["models"]["generator"]
