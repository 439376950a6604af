"""fmkit: fused kernels and foundation-model methods from the command line.

Commands: info, bench, calibrate (ProCal), datacomp (make-pool, filter, train, make-eval,
evaluate), demo, and one command per paper package (fingerprint, factscore, paradox, augment,
diversity, equity, flamingo). `fmkit COMMAND --help` describes each.

Expected errors (a missing or unreadable file, a bad value, an output that already holds data,
an unavailable device, a missing optional package) are reported as one line naming the flag;
--debug shows the traceback instead. Exit status: 0 success, 1 a missing optional package,
2 a usage or input error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys

# Kept here rather than imported so that `fmkit --help` does not import torch (a test checks
# that it equals fmkit.bench.REGISTRY).
CORE_BENCH_OPS = ("knn", "kmeans", "calibration", "contrastive", "flamingo", "pgd_step")
# The papers after the kernel families plug in by file: fmkit/<name>/cli.py (a `fmkit <name>`
# command), fmkit/<name>/demo.py (`fmkit demo <name>`) and fmkit/bench/<name>.py
# (`fmkit bench --op <name>`). Files are looked up, not imported, so that --help stays torch-free.
PAPER_PACKAGES = ("fingerprint", "factscore", "paradox", "augment", "diversity", "equity", "flamingo")
_HERE = os.path.dirname(os.path.abspath(__file__))


def _has(*parts: str) -> bool:
    return os.path.isfile(os.path.join(_HERE, *parts))


BENCH_OPS = CORE_BENCH_OPS + tuple(n for n in PAPER_PACKAGES if n not in CORE_BENCH_OPS and _has("bench", f"{n}.py"))
DEMOS = ("calibration", "datacomp") + tuple(n for n in PAPER_PACKAGES if _has(n, "demo.py"))
PACKAGE_COMMANDS = tuple(n for n in PAPER_PACKAGES if _has(n, "cli.py"))
CALIBRATION_METHODS = ("conf", "ts", "ets", "pts", "ptsk", "hb", "ir", "mir")  # tested == compare.METHODS
CLIP_SCALES = ("tiny", "small", "medium", "large", "xlarge")


class UsageError(ValueError):
    """An expected error in what the user asked for: one line on stderr, exit status 2."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" on every option that has a real default (not None, not a store_true's False)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, without argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- argument types: each names what it expected; argparse prefixes the flag --------------------


def _input_file(path: str) -> str:
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path!r} is a folder, expected a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path!r} is not readable (permission denied)")
    return path


def _input_dir(path: str) -> str:
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"no such folder: {path!r}")
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path!r} is a file, expected a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path!r} is not readable (permission denied)")
    return path


def _number(kind, low=None, high=None, low_open=False, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value != value or (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


_positive_int = _number(int, 1, what="a positive integer")
_nonnegative_int = _number(int, 0, what="an integer >= 0")
_positive_float = _number(float, 0.0, low_open=True, what="a number > 0")
_fraction = _number(float, 0.0, 1.0, what="a number in [0, 1]")


def _device(text: str) -> str:
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise argparse.ArgumentTypeError(f"CUDA is not available ({why}); use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return text


def _task(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, _input_dir(path)


def _check_output(path: str, overwrite: bool, flag: str) -> None:
    """Refuses an output that already holds data before any work starts (the writers check again)."""
    from fmkit._output import OutputExistsError, check_output

    try:
        check_output(path, overwrite, flag, hint="--overwrite")
    except OutputExistsError as exc:
        raise UsageError(str(exc)) from None


# -- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from fmkit.datacomp.filters import FILTERS  # numpy only: cheap

    parser = _Parser(prog="fmkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="version, compiled backends, triton and torch versions",
                   description="Prints fmkit's version, compiled backends, triton and torch versions as JSON.")

    bench = sub.add_parser("bench", help="benchmark fmkit's kernels against the anchors users would pick",
                           description="Times every fmkit backend and its anchors on the same inputs.")
    bench.add_argument("--quick", action="store_true", help="small sizes that finish in a few minutes on a CPU")
    bench.add_argument("--op", action="append", choices=BENCH_OPS, help="benchmark only this op (repeatable; "
                       "default: all)")
    bench.add_argument("--device", type=_device, default=None, help="cpu, cuda or cuda:N (default: cuda when "
                       "available, else cpu)")
    bench.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--plot", default=None, metavar="PNG", help="also draw the timings as a bar chart")
    bench.add_argument("--overwrite", action="store_true", help="replace existing --json / --plot files")

    cal = sub.add_parser("calibrate", help="ProCal: every calibration method with and without ProCal",
                         description="Fits each calibration method on --val and reports its metrics on --test, "
                                     "with and without ProCal.")
    cal.add_argument("--val", required=True, type=_input_file, metavar="VAL.npz",
                     help="calibration split: an .npz with logits [n, C], labels [n], features [n, d]")
    cal.add_argument("--test", required=True, type=_input_file, metavar="TEST.npz",
                     help="test split, same arrays as --val (same C and d)")
    cal.add_argument("--methods", default=",".join(CALIBRATION_METHODS),
                     help=f"comma-separated subset of {','.join(CALIBRATION_METHODS)}")
    cal.add_argument("--k", type=_positive_int, default=10, help="neighbours for proximity")
    cal.add_argument("--variant", default="reference", choices=["paper", "reference"],
                     help="proximity definition (reference: the released code's; see the README)")
    cal.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "triton", "torch"],
                     help="kNN backend for proximity")
    cal.add_argument("--out", default=None, metavar="DIR",
                     help="also save metrics.json, table.txt and the plots in this folder (default: print only)")
    cal.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")

    dc = sub.add_parser("datacomp", help="DataComp: make a synthetic pool, filter, train CLIP, evaluate",
                        description="DataComp's workflow on local pools: make-pool, filter, train, make-eval, "
                                    "evaluate.")
    dcs = dc.add_subparsers(dest="datacomp_command", required=True, metavar="STEP")
    mk = dcs.add_parser("make-pool", help="write a synthetic DataComp-format pool",
                        description="Writes a generated pool (parquet + npz + tar shards) with known ground truth.")
    mk.add_argument("out", metavar="DIR", help="pool folder to create (must be empty or absent)")
    mk.add_argument("--n", type=_positive_int, default=2048, help="number of samples")
    mk.add_argument("--seed", type=int, default=0, help="random seed")
    mk.add_argument("--attributes", action=argparse.BooleanOptionalAction, default=True,
                    help="give each image a background and a corner mark named in its caption")
    mk.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")

    flt = dcs.add_parser("filter", help="apply a baseline filter and write the sorted uid .npy",
                         description="Runs one of DataComp's baseline filters over a pool.")
    flt.add_argument("--pool", required=True, type=_input_dir, metavar="DIR", help="pool folder")
    flt.add_argument("--name", required=True, choices=sorted(FILTERS), help="the filter")
    flt.add_argument("--out", required=True, metavar="UIDS.npy", help="uid file to write")
    flt.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    flt.add_argument("--fraction", type=_fraction, default=None,
                     help="clip_score, image_based_intersect_clip_score, datacomp_1b: keep this top fraction")
    flt.add_argument("--threshold", type=float, default=None,
                     help="clip_score, image_based_intersect_clip_score, datacomp_1b: keep scores >= threshold")
    flt.add_argument("--arch", default=None, choices=["l14", "b32"], help="clip_score: which CLIP's scores "
                     "(default: l14)")
    flt.add_argument("--reference", type=_input_file, default=None, metavar="REF.npy",
                     help="image_based, datacomp_1b: reference image embeddings [n, d] (e.g. ImageNet's)")
    flt.add_argument("--centroids", type=_input_file, default=None, metavar="CENT.npy",
                     help="image_based, datacomp_1b: k-means centroids [K, d] (default: k-means on the pool)")
    flt.add_argument("--n-clusters", type=_positive_int, default=None,
                     help="image_based, datacomp_1b: clusters for k-means when no --centroids")
    flt.add_argument("--fasttext-model", type=_input_file, default=None, metavar="lid.176.bin",
                     help="basic, text_based, image_based: fastText language-id model (default: py3langid)")

    tr = dcs.add_parser("train", help="train a CLIP on the (filtered) pool",
                        description="Trains a CLIP on a pool's samples (all, or those of a uid file).")
    tr.add_argument("--pool", required=True, type=_input_dir, metavar="DIR", help="pool folder")
    tr.add_argument("--uids", type=_input_file, default=None, metavar="UIDS.npy",
                    help="train on these samples only (default: the whole pool)")
    tr.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder (must be empty or absent)")
    tr.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tr.add_argument("--scale", default="tiny", choices=CLIP_SCALES,
                    help="DataComp scale preset: model, steps, batch size, lr, warmup (flags below override)")
    tr.add_argument("--model", default=None, help="CLIP config, e.g. tiny, small, B-32, B-16, L-14 "
                    "(default: the scale's)")
    tr.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (default: the scale's)")
    tr.add_argument("--batch-size", type=_positive_int, default=None, help="default: the scale's")
    tr.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate (default: the scale's)")
    tr.add_argument("--warmup", type=_nonnegative_int, default=None, help="warm-up steps (default: the scale's)")
    tr.add_argument("--accum-freq", type=_positive_int, default=1, help="gradient accumulation steps")
    tr.add_argument("--precision", default=None, choices=["bf16", "amp", "fp32"],
                    help="bf16 autocast, amp (fp16 autocast + GradScaler, DataComp's) or fp32 "
                         "(default: bf16 on CUDA, fp32 on CPU)")
    tr.add_argument("--device", type=_device, default=None, help="cpu, cuda or cuda:N (default: cuda when "
                    "available, else cpu)")
    tr.add_argument("--image-size", type=_positive_int, default=None, help="default: the model config's")

    ev = dcs.add_parser("evaluate", help="zero-shot classification and retrieval of a trained CLIP",
                        description="Prints each task's main metric and DataComp's average.")
    ev.add_argument("--checkpoint", required=True, type=_input_dir, metavar="DIR",
                    help="a `fmkit datacomp train` output folder")
    ev.add_argument("--task", action="append", default=[], type=_task, metavar="NAME=PATH",
                    help="an image-folder tree (zero-shot classification) or a pool (retrieval); repeatable")
    ev.add_argument("--pool", type=_input_dir, default=None, metavar="DIR",
                    help="shorthand for --task pool_retrieval=DIR")
    ev.add_argument("--out", default=None, metavar="RESULTS.json", help="also write the results as JSON")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    mke = dcs.add_parser("make-eval", help="write synthetic held-out evaluation tasks for make-pool's classes",
                         description="Writes DIR/classification (image-folder tree) and DIR/retrieval (a pool "
                                     "whose captions each identify their image).")
    mke.add_argument("out", metavar="DIR", help="folder to create (must be empty or absent)")
    mke.add_argument("--n", type=_positive_int, default=512, help="number of held-out images")
    mke.add_argument("--seed", type=int, default=1, help="random seed")
    mke.add_argument("--overwrite", action="store_true", help="replace a non-empty DIR")

    demo = sub.add_parser("demo", help="end-to-end demonstrations on offline data",
                          description="Runs a method end to end on generated or bundled data and prints its table.")
    demo.add_argument("what", choices=DEMOS, help="which demonstration")
    demo.add_argument("--out", default=None, metavar="DIR", help="output folder (default: fmkit_demo_WHAT)")
    demo.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    demo.add_argument("--seeds", type=_positive_int, default=5,
                      help="calibration: random splits to average (the paper uses 5)")
    demo.add_argument("--dataset", action="append", choices=["digits", "mixture"],
                      help="calibration: dataset to run, repeatable (default: both)")
    for name in PACKAGE_COMMANDS:
        _package_cli(name).add_parser(sub)
    return parser


def _package_cli(name: str):
    """fmkit/<name>/cli.py, loaded from its file so that its package's __init__ (torch) is not run;
    its top level imports argparse and fmkit.cli only, the work is imported inside its run(args)."""
    import importlib.util

    module_name = f"fmkit._cli_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(_HERE, name, "cli.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


# -- commands -----------------------------------------------------------------------------------


def _info(args) -> int:
    import json

    import fmkit

    print(json.dumps(fmkit.info(), indent=2))
    return 0


def _bench(args) -> int:
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            _check_output(path, args.overwrite, flag)
    import torch

    from fmkit import bench as fbench

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fbench.run(args.op or list(BENCH_OPS), args.quick, device, args.json, args.plot)
    return 0


def _load_split(path: str, flag: str):
    import zipfile

    from fmkit.calibration import Split

    try:
        split = Split.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{flag} {path}: cannot read it as an .npz of logits, labels and features ({exc})") from None
    shapes = {"logits": 2, "labels": 1, "features": 2}
    for name, ndim in shapes.items():
        if getattr(split, name).ndim != ndim:
            raise UsageError(f"{flag} {path}: {name} has shape {getattr(split, name).shape}, expected {ndim}-D")
    n = split.logits.shape[0]
    if split.labels.shape[0] != n or split.features.shape[0] != n:
        raise UsageError(f"{flag} {path}: logits, labels and features have {n}, {split.labels.shape[0]} and "
                         f"{split.features.shape[0]} rows; expected one row per sample in each")
    return split


def _calibrate(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CALIBRATION_METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown {unknown or 'empty list'}; choose from {','.join(CALIBRATION_METHODS)}")
    if args.out:
        _check_output(args.out, args.overwrite, "--out")
    val, test = _load_split(args.val, "--val"), _load_split(args.test, "--test")
    # The Python API would name these `features` / `reference`; the user knows the flags.
    if val.features.shape[1] != test.features.shape[1]:
        raise UsageError(f"--test features have {test.features.shape[1]} dimensions but --val features have "
                         f"{val.features.shape[1]}; both splits must come from the same model layer")
    if val.logits.shape[1] != test.logits.shape[1]:
        raise UsageError(f"--test logits have {test.logits.shape[1]} classes but --val logits have "
                         f"{val.logits.shape[1]}")
    if args.k >= val.features.shape[0]:
        raise UsageError(f"--k {args.k}: must be below the {val.features.shape[0]} samples of --val")
    from fmkit.calibration import compare_methods

    try:
        result = compare_methods(val, test, methods, k=args.k, variant=args.variant, backend=args.backend)
    except ValueError as exc:  # the API says val.labels / test.logits; the user typed --val / --test
        message = str(exc).replace("val.", "--val ").replace("test.", "--test ")
        raise UsageError(message) from exc
    print(result.table())
    if args.out:
        for path in result.save(args.out, overwrite=True):
            print("wrote", path)
    return 0


def _demo(args) -> int:
    out = args.out or f"fmkit_demo_{args.what}"
    _check_output(out, args.overwrite, "--out")
    from fmkit._output import replace_dir

    if args.what == "datacomp":
        if args.dataset:
            raise UsageError("--dataset: applies to `fmkit demo calibration` only")
        _require("pyarrow", "PIL", "py3langid")
        from fmkit.datacomp.demo import run_demo as run_datacomp_demo

        with replace_dir(out, overwrite=True, what="--out") as tmp:
            run_datacomp_demo(str(tmp))
    elif args.what == "calibration":
        from fmkit.calibration.demo import run_demo

        with replace_dir(out, overwrite=True, what="--out") as tmp:
            run_demo(str(tmp), seeds=args.seeds, datasets=args.dataset or ("digits", "mixture"), shown_dir=out)
    else:  # a paper package's demo: fmkit/<name>/demo.py, run_demo(out_dir) writes its table and plots
        import importlib

        if args.dataset:
            raise UsageError("--dataset: applies to `fmkit demo calibration` only")
        module = importlib.import_module(f"fmkit.{args.what}.demo")
        _require(*getattr(module, "REQUIRES", ()))
        with replace_dir(out, overwrite=True, what="--out") as tmp:
            module.run_demo(str(tmp))
    print(f"outputs in {out}")
    return 0


def _require(*modules: str) -> None:
    """Raises ModuleNotFoundError for the first missing module, before any work starts."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def _datacomp(args) -> int:
    from fmkit.datacomp.cli import run

    return run(args)


COMMANDS = {"info": _info, "bench": _bench, "calibrate": _calibrate, "demo": _demo, "datacomp": _datacomp}


def _expected_error(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) for an expected error, None for a bug (keeps its traceback)."""
    from fmkit._output import OutputExistsError

    if isinstance(exc, (UsageError, OutputExistsError)):
        return 2, str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        from fmkit._extras import missing_module_message

        message = str(exc) if "pip install" in str(exc) else missing_module_message(exc.name)
        return (1, message) if message else None
    if isinstance(exc, (ValueError, TypeError)):  # fmkit's own errors for bad input name the argument
        return 2, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None:
        return 2, f"{exc.strerror or type(exc).__name__}: {exc.filename!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    step = getattr(args, f"{args.command}_command", None)  # datacomp's and the packages' sub-steps
    prog = " ".join(["fmkit", args.command] + ([step] if isinstance(step, str) else []))
    try:
        if args.command in PACKAGE_COMMANDS:
            return _package_cli(args.command).run(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        parser.exit(130, f"{prog}: interrupted\n")
    except Exception as exc:
        handled = None if args.debug else _expected_error(exc)
        if handled is None:
            raise
        status, message = handled
        parser.exit(status, f"{prog}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
