"""compare_methods, `fmkit calibrate` and `fmkit demo calibration` end to end on small offline data."""
import json

import numpy as np
import pytest
import torch

from fmkit import cli
from fmkit.calibration import Split, compare_methods
from fmkit.calibration.compare import METHODS


def synthetic_split(n, seed, d=8, classes=4):
    """Logits that are over-confident for points far from the class centres."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(classes, d)) * 2
    y = rng.integers(0, classes, n)
    spread = rng.choice([0.5, 2.0], n)
    feats = centers[y] + rng.normal(size=(n, d)) * spread[:, None]
    logits = 3 * feats @ centers.T / d
    return Split(logits.astype(np.float32), y, feats.astype(np.float32))


@pytest.mark.slow
def test_compare_methods_covers_every_method_with_and_without_procal():
    result = compare_methods(synthetic_split(600, 0), synthetic_split(500, 1), METHODS, progress=False)
    assert set(result.metrics) == {m for base in METHODS for m in (base, f"{base}+procal")}
    for name, m in result.metrics.items():
        assert set(m) >= {"ece", "ace", "mce", "brier", "piece", "accuracy"}
        assert m["accuracy"] == result.metrics["conf"]["accuracy"]  # calibration never changes predictions
    assert "conf+procal" in result.table()


@pytest.mark.slow
def test_calibrate_cli_writes_table_json_and_plots(tmp_path, capsys):
    for name, seed in (("val", 0), ("test", 1)):
        s = synthetic_split(400, seed)
        np.savez(tmp_path / f"{name}.npz", logits=s.logits, labels=s.labels, features=s.features)
    out = tmp_path / "out"
    assert cli.main(["calibrate", "--val", str(tmp_path / "val.npz"), "--test", str(tmp_path / "test.npz"),
                     "--methods", "conf,ts,hb", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ts+procal" in printed and "piece" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"conf", "conf+procal", "ts", "ts+procal", "hb", "hb+procal"}
    assert (out / "reliability_ts_procal.png").stat().st_size > 1000
    assert (out / "proximity_bias_hb.png").stat().st_size > 1000


def test_calibrate_rejects_bad_files(tmp_path):
    np.savez(tmp_path / "bad.npz", logits=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['features'\]"):
        Split.load(str(tmp_path / "bad.npz"))
    s = synthetic_split(50, 0)
    short = Split(s.logits, s.labels[:-1], s.features)
    with pytest.raises(ValueError, match="val.labels: length 49 does not match val.logits length 50"):
        compare_methods(short, s, ("conf",), progress=False)
    with pytest.raises(ValueError, match="methods: unknown"):
        compare_methods(s, s, ("platt",), progress=False)


@pytest.mark.slow
def test_demo_runs_offline(tmp_path, capsys):
    pytest.importorskip("sklearn")
    assert cli.main(["demo", "calibration", "--dataset", "digits", "--seeds", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "scikit-learn digits" in printed and "rank-sum p" in printed
    assert (tmp_path / "digits" / "metrics.json").exists()
