"""`fmkit equity audit` through fmkit.cli.main: outputs, and one-line errors for bad input."""
import csv
import json

import numpy as np
import pytest

from fmkit.cli import main


def _write(path, n=400, seed=0):
    rng = np.random.default_rng(seed)
    race, sex = rng.choice(["a", "b", "c"], n), rng.choice(["f", "m"], n)
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p).astype(int)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "score", "race", "sex", "patient"])
        w.writerows(zip(y, p.round(4), race, sex, np.arange(n) // 3))
    return y, p, race


@pytest.mark.slow  # writes the plot (matplotlib)
def test_audit_writes_table_csv_json_and_plot(tmp_path, capsys):
    y, p, race = _write(tmp_path / "preds.csv")
    out = tmp_path / "out"
    assert main(["equity", "audit", "--preds", str(tmp_path / "preds.csv"), "--label-col", "label", "--prob-col",
                 "score", "--group-col", "race", "--group-col", "sex", "--intersect", "--cluster-col", "patient",
                 "--n-boot", "200", "--reference", "b", "--interval", "auto", "--min-count-by", "rows",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| race | n |" in printed and "a & f" in printed
    assert {f.name for f in out.iterdir()} == {"table.md", "groups.csv", "disparities.csv", "audit.json", "plot.png"}
    audit = json.loads((out / "audit.json").read_text())
    acc_a = next(r for r in audit["groups"] if r["map"] == "race" and r["group"] == "a" and r["metric"] == "accuracy")
    m = race == "a"
    assert acc_a["estimate"] == pytest.approx(np.mean((p[m].round(4) >= 0.5) == y[m]))
    assert any(r["kind"] == "difference vs b" for r in audit["disparities"])
    assert audit["interval"] == "auto" and audit["min_count_by"] == "rows"
    ece_a = next(r for r in audit["groups"] if r["map"] == "race" and r["group"] == "a" and r["metric"] == "ece")
    assert ece_a["ci_bias_corrected"] and ece_a["debiased"] < ece_a["estimate"]
    with pytest.raises(SystemExit) as e:  # --out now holds data
        main(["equity", "audit", "--preds", str(tmp_path / "preds.csv"), "--label-col", "label", "--prob-col",
              "score", "--group-col", "race", "--out", str(out)])
    assert e.value.code == 2


@pytest.mark.parametrize("extra, message", [
    (["--label-col", "nope", "--prob-col", "score"], "--label-col: no column 'nope'"),
    (["--label-col", "label", "--prob-col", "race"], "--prob-col: column 'race' must be numeric"),
    (["--label-col", "label", "--pred-col", "score"], "--pred-col: column 'score' must hold integer"),
    (["--label-col", "label", "--prob-col", "score", "--intersect"], "--intersect: needs at least two"),
    (["--label-col", "label", "--prob-col", "score", "--reference", "zz"], "--reference: 'zz'"),
    (["--label-col", "score", "--prob-col", "score"], "y_true: expected integer class labels"),
])
def test_audit_errors_are_one_line(tmp_path, capsys, extra, message):
    _write(tmp_path / "preds.csv", n=30)
    with pytest.raises(SystemExit) as e:
        main(["equity", "audit", "--preds", str(tmp_path / "preds.csv"), "--group-col", "race", "--n-boot", "5",
              "--out", str(tmp_path / "o")] + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
