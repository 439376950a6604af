"""`fmkit diversity sample|fit|metrics` through fmkit.cli.main."""
import json

import numpy as np
import pytest

from fmkit.cli import main
from test_diversity import synthetic_results


def _fails(argv, capsys, match):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err


def test_sample_writes_indices_and_names_flags_in_errors(tmp_path, capsys):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.repeat(np.arange(12), 8))
    out = tmp_path / "idx.npy"
    assert main(["diversity", "sample", "--labels", str(labels), "--k", "5", "--n", "4", "--out", str(out)]) == 0
    idx = np.load(out)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    _fails(["diversity", "sample", "--labels", str(labels), "--k", "5", "--n", "4", "--out", str(out)], capsys,
           "already exists")
    _fails(["diversity", "sample", "--labels", str(labels), "--k", "13", "--n", "4", "--out", str(tmp_path / "b.npy")],
           capsys, "--k 13 is more than the 12 available classes")
    _fails(["diversity", "sample", "--labels", str(labels), "--k", "2", "--n", "9", "--out", str(tmp_path / "b.npy")],
           capsys, "--n 9 is larger than the smallest class")
    np.save(labels, np.linspace(0, 1, 10))
    _fails(["diversity", "sample", "--labels", str(labels), "--k", "2", "--n", "2", "--out", str(tmp_path / "c.npy")],
           capsys, "labels: expected integer class labels")


def test_fit_prints_drift_and_prediction(tmp_path, capsys):
    results = tmp_path / "cells.jsonl"
    results.write_text("".join(json.dumps(c) + "\n" for c in synthetic_results()))
    out = tmp_path / "fit.json"
    assert main(["diversity", "fit", str(results), "--exponents", "half", "--n-boot", "20", "--target-n", "50000",
                 "--k-max", "400", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "drift a - b" in text and "hold-out" in text and "N=50000: K*=" in text
    saved = json.loads(out.read_text())
    assert saved["fit"]["r_star"] == pytest.approx(16, rel=0.1) and saved["prediction"]["K_star"] <= 400
    results.write_text("not json\n")
    _fails(["diversity", "fit", str(results)], capsys, "line 1 is not a sweep cell")


def test_metrics_reports_and_rejects_bad_files(tmp_path, capsys):
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, features=rng.normal(size=(40, 6)).astype(np.float32), labels=np.repeat(np.arange(4), 10))
    out = tmp_path / "m.json"
    assert main(["diversity", "metrics", str(data), "--q", "inf", "--out", str(out)]) == 0
    assert "inter-class Vendi" in capsys.readouterr().out
    assert len(json.loads(out.read_text())["intra"]) == 4
    _fails(["diversity", "metrics", str(data), "--labels-key", "y"], capsys, "has no array 'y'")
    _fails(["diversity", "metrics", str(data), "--q", "0"], capsys, "expected a number > 0 or inf")
    np.savez(data, features=rng.normal(size=(40, 6)), labels=np.zeros(40))
    _fails(["diversity", "metrics", str(data)], capsys, "labels: expected integer class labels")
