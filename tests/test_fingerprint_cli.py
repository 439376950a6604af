"""`fmkit fingerprint ...` through fmkit.cli.main on tiny saved models."""
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from fmkit.cli import main  # noqa: E402


def _run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from fmkit.fingerprint._tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    folder = tmp_path_factory.mktemp("tiny") / "base"
    tiny_model(len(tok), seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_cli_errors_are_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "fingerprint", "implant", "--model", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--k-min", "5", "--k-max", "2")
    assert code == 2 and "--k-min 5 is above --k-max 2" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "fingerprint", "verify", "--fingerprint", str(tmp_path), "--suspect", str(tmp_path))
    assert code == 2 and "has no fingerprint.json" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "fingerprint", "verify", "--fingerprint", str(tmp_path / "nope"), "--suspect", "x")
    assert code == 2 and "no such folder" in err


def test_cli_tampered_fingerprint(capsys, tmp_path):
    from fmkit.fingerprint import Fingerprint

    Fingerprint.create(n=2).save(str(tmp_path))
    meta = json.loads((tmp_path / "fingerprint.json").read_text())
    meta["keys"][0] = "forged"
    (tmp_path / "fingerprint.json").write_text(json.dumps(meta))
    code, _, err = _run(capsys, "fingerprint", "verify", "--fingerprint", str(tmp_path), "--suspect", str(tmp_path))
    assert code == 2 and "was modified after it was committed" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_implant_verify_finetune_robustness(capsys, tmp_path, saved):
    out = tmp_path / "run"
    code, text, err = _run(capsys, "fingerprint", "implant", "--model", saved, "--out", str(out), "--n", "2",
                           "--k-min", "1", "--k-max", "2", "--ratio", "1", "--epochs", "40", "--batch-size", "8")
    assert code == 0, err
    assert "| published (+adapter) | 2 |" in text and "| fresh_key |" in text and "commitment" in text
    assert (out / "published" / "config.json").exists() and (out / "fingerprint" / "adapter.safetensors").exists()
    commitment = json.loads((out / "fingerprint" / "fingerprint.json").read_text())["commitment"]
    code, _, err = _run(capsys, "fingerprint", "verify", "--fingerprint", str(out / "fingerprint"), "--suspect", saved)
    assert code == 2 and "--publisher" in err
    code, text, err = _run(capsys, "fingerprint", "verify", "--fingerprint", str(out / "fingerprint"),
                           "--suspect", str(out / "published"), "--publisher", str(out / "published"),
                           "--base", saved, "--probes", "2", "--commitment", commitment)
    assert code == 0, err
    assert "| published | 2 | 2 | 100.0 |" in text and "verdict at alpha" in text and "| plain | 2 |" in text
    code, text, err = _run(capsys, "fingerprint", "finetune", "--model", str(out / "published"), "--out",
                           str(tmp_path / "user"), "--n", "8")
    assert code == 0, err
    code, _, err = _run(capsys, "fingerprint", "finetune", "--model", str(out / "published"), "--out",
                        str(tmp_path / "user"), "--n", "8")
    assert code == 2 and "--overwrite" in err
    for extra in ([], ["--no-pack-weights"]):
        code, text, err = _run(capsys, "fingerprint", "verify", "--fingerprint", str(out / "fingerprint"),
                               "--suspect", str(tmp_path / "user"), "--publisher", str(out / "published"), *extra)
        assert code == 0 and "| user | 2 | 2 | 100.0 |" in text
    code, text, err = _run(capsys, "fingerprint", "robustness", "--fingerprint", str(out / "fingerprint"),
                           "--published", str(out / "published"), "--base", saved, "--attacks", "none,int8,chat_wrap")
    assert code == 0, err
    assert "| none | 100.0 |" in text and "| int8 |" in text and "| chat_wrap |" in text
    code, _, err = _run(capsys, "fingerprint", "robustness", "--fingerprint", str(out / "fingerprint"),
                        "--published", str(out / "published"), "--attacks", "melt")
    assert code == 2 and "--attacks: unknown ['melt']" in err
