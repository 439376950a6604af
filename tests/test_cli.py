"""`fmkit` command line: expected errors are one line naming the flag, with a non-zero exit
status; --debug shows the traceback; outputs are never mixed with old data; help is complete."""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmkit import cli


def fails(argv, capsys, status=2):
    """Runs the CLI expecting an error; returns its single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def write_split(path, n=60, classes=3, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, logits=rng.normal(size=(n, classes)).astype(np.float32),
             labels=rng.integers(0, classes, n), features=rng.normal(size=(n, dim)).astype(np.float32))
    return str(path)


# ---- errors ------------------------------------------------------------------------------------


def test_missing_val_file_names_the_flag(tmp_path, capsys):
    test = write_split(tmp_path / "test.npz")
    err = fails(["calibrate", "--val", str(tmp_path / "absent.npz"), "--test", test], capsys)
    assert err.startswith("fmkit calibrate: error: argument --val: no such file") and "absent.npz" in err


def test_unreadable_and_folder_inputs(tmp_path, capsys):
    test = write_split(tmp_path / "test.npz")
    assert "is a folder" in fails(["calibrate", "--val", str(tmp_path), "--test", test], capsys)
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not an npz")
    err = fails(["calibrate", "--val", str(garbage), "--test", test], capsys)
    assert "--val" in err and "cannot read it as an .npz" in err


def test_val_test_feature_mismatch_speaks_in_flags(tmp_path, capsys):
    val = write_split(tmp_path / "val.npz", dim=4)
    test = write_split(tmp_path / "test.npz", dim=5)
    err = fails(["calibrate", "--val", val, "--test", test, "--methods", "conf"], capsys)
    assert "--test features have 5 dimensions but --val features have 4" in err
    assert "reference" not in err


def test_bad_values_name_the_flag(tmp_path, capsys):
    val = write_split(tmp_path / "val.npz")
    assert "argument --k: expected a positive integer, got 0" in fails(
        ["calibrate", "--val", val, "--test", val, "--k", "0"], capsys)
    assert "--methods: unknown ['bogus']" in fails(["calibrate", "--val", val, "--test", val, "--methods", "ts,bogus"],
                                                   capsys)
    assert "argument --n: expected a positive integer, got -3" in fails(
        ["datacomp", "make-pool", str(tmp_path / "p"), "--n", "-3"], capsys)
    assert "argument --fraction: expected a number in [0, 1], got 1.5" in fails(
        ["datacomp", "filter", "--pool", str(tmp_path), "--name", "clip_score", "--fraction", "1.5",
         "--out", str(tmp_path / "u.npy")], capsys)
    assert "argument --op: invalid choice: 'bogus'" in fails(["bench", "--op", "bogus"], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("argv", [["bench", "--device", "cuda"],
                                  ["datacomp", "train", "--pool", ".", "--out", "x", "--device", "cuda"]])
def test_cuda_device_without_cuda(argv, capsys):
    err = fails(argv, capsys)
    assert "argument --device: CUDA is not available" in err and "--device cpu" in err


@pytest.mark.gpu
@pytest.mark.parametrize("argv", [["bench", "--device", "cuda:{n}"],
                                  ["datacomp", "train", "--pool", ".", "--out", "x", "--device", "cuda:{n}"]])
def test_cuda_device_index_past_the_visible_devices(argv, capsys):
    """The GPU side of test_cuda_device_without_cuda: cuda:N names a visible device."""
    n = torch.cuda.device_count()
    err = fails([a.format(n=n) for a in argv], capsys)
    assert f"argument --device: 'cuda:{n}': only {n} CUDA device(s)" in err


def test_bad_device_string(capsys):
    assert "expected cpu, cuda or cuda:N, got 'gpu'" in fails(["bench", "--device", "gpu"], capsys)


def test_debug_shows_the_traceback(tmp_path, capsys):
    val = write_split(tmp_path / "val.npz", dim=4)
    test = write_split(tmp_path / "test.npz", dim=5)
    with pytest.raises(cli.UsageError, match="--test features"):
        cli.main(["--debug", "calibrate", "--val", val, "--test", test])


def test_missing_optional_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    for argv in (["demo", "datacomp", "--out", str(tmp_path / "d")],
                 ["datacomp", "make-pool", str(tmp_path / "p")]):
        err = fails(argv, capsys, status=1)
        assert "'pyarrow'" in err and "pip install '.[datacomp]'" in err and "fmkit[" not in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "p").exists()


def test_calibration_demo_with_nothing_to_run_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    err = fails(["demo", "calibration", "--dataset", "digits", "--out", str(tmp_path / "e")], capsys, status=1)
    assert "nothing to run" in err and "pip install '.[demo]'" in err and "fmkit[" not in err
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_calibration_demo_without_scikit_learn(tmp_path, capsys, monkeypatch):
    """digits needs scikit-learn and is skipped with the reason; the mixture still runs."""
    from fmkit.calibration import demo

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    real = demo.load_dataset

    def small(name):  # the full mixture trains for a minute; its shape is what matters here
        if name != "mixture":
            return real(name)
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 600)
        x = rng.normal(size=(3, 8))[y] + rng.normal(size=(600, 8))
        return x.astype(np.float32), y, "small mixture", 0.3

    monkeypatch.setattr(demo, "load_dataset", small)
    assert cli.main(["demo", "calibration", "--out", str(tmp_path / "d"), "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "digits: skipped" in out and "pip install '.[demo]'" in out and "small mixture" in out
    assert (tmp_path / "d" / "mixture" / "metrics.json").exists() and not (tmp_path / "d" / "digits").exists()


# ---- outputs -----------------------------------------------------------------------------------


def test_calibrate_out_refuses_a_non_empty_folder_and_overwrite_replaces_it(tmp_path, capsys):
    val = write_split(tmp_path / "val.npz", n=80)
    test = write_split(tmp_path / "test.npz", n=80, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.png").write_text("old")
    err = fails(["calibrate", "--val", val, "--test", test, "--methods", "conf", "--out", str(out)], capsys)
    assert "--out" in err and "not empty" in err and "--overwrite" in err
    assert cli.main(["calibrate", "--val", val, "--test", test, "--methods", "conf", "--out", str(out),
                     "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "stale.png" not in names and {"metrics.json", "table.txt"} <= names


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_bench_refuses_existing_outputs_before_running(tmp_path, capsys, flag):
    taken = tmp_path / "taken"
    taken.write_text("old")
    assert "--overwrite" in fails(["bench", "--op", "knn", flag, str(taken)], capsys)
    assert taken.read_text() == "old"


def test_demo_refuses_a_non_empty_out(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("old")
    assert "--out" in fails(["demo", "calibration", "--out", str(tmp_path)], capsys)


# ---- help --------------------------------------------------------------------------------------


def _subparsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _subparsers(child)


def test_every_option_has_help_and_its_default_is_shown():
    for parser in _subparsers(cli.build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {action.dest}: no help text"
            if action.option_strings and action.default not in (None, False) and action.choices is None:
                assert f"(default: {action.default})" in " ".join(text.split()), (parser.prog, action.dest)
    assert "later issue" not in cli.build_parser().format_help()


def test_static_name_lists_match_the_registries():
    from fmkit.bench import REGISTRY
    from fmkit.calibration.compare import METHODS

    assert set(cli.BENCH_OPS) == set(REGISTRY)
    assert tuple(cli.CALIBRATION_METHODS) == tuple(METHODS)


def test_help_does_not_import_torch():
    """`fmkit --help` took 4 s importing torch and every op; parsing must not import it."""
    code = ("import sys; from fmkit import cli; cli.build_parser().format_help(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---- bench table -------------------------------------------------------------------------------


def test_bench_table_keeps_rows_of_missing_packages_and_stays_aligned(monkeypatch, capsys):
    """Without faiss the calibration anchor used to vanish and the fmkit row read "nanx"; long
    flamingo shapes and names pushed the numbers out of their columns."""
    import importlib.util
    import types

    from fmkit import bench
    from fmkit.bench import calibration as calibration_bench

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "faiss" else real_find_spec(name, *a))
    small = types.SimpleNamespace(cases=lambda device, quick: calibration_bench.cases(device, quick,
                                                                                     shapes=[(200, 200, 8, 3)]))
    long = types.SimpleNamespace(cases=lambda device, quick: [{
        "shape": "perceiver BT=16 keys=256+64 fwd+bwd float32 (longer than any column)", "flops": 1e6,
        "contenders": [("fmkit perceiver_attention, a long name", lambda: None, False),
                       ("SDPA (default)", lambda: None, True)]}])
    monkeypatch.setitem(bench.REGISTRY, "calibration", small)
    monkeypatch.setitem(bench.REGISTRY, "flamingo", long)
    monkeypatch.setattr(bench, "measured_peak", lambda device, dtype=None: 100.0)
    bench.run(["calibration", "flamingo"], True, torch.device("cpu"), progress=False)
    out = capsys.readouterr().out
    assert "faiss not installed" in out and "nan" not in out and "no anchor ran" in out
    lines = [line for line in out.splitlines() if line.startswith(("op ", "calibration ", "flamingo "))]
    end = lines[0].index("median ms") + len("median ms")  # numbers are right-aligned under it
    timed = [line for line in lines[1:] if "not installed" not in line]
    assert len(timed) == 3
    for line in timed:
        assert line[end - 1].isdigit() and line[end] == " ", line


def test_every_optional_module_names_an_extra_of_pyproject():
    tomllib = pytest.importorskip("tomllib")
    from fmkit._extras import EXTRA_OF_MODULE
    root = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not root.exists():
        pytest.skip("tests run against an installed wheel, without the checkout's pyproject.toml")
    extras = tomllib.loads(root.read_text())["project"]["optional-dependencies"]
    unknown = {module: extra for module, extra in EXTRA_OF_MODULE.items() if extra not in extras}
    assert not unknown, f"EXTRA_OF_MODULE names extras that pyproject.toml lacks: {unknown}"
