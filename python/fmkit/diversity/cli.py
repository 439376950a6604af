"""`fmkit diversity`: sample K classes × n, fit the diversity law to a sweep's results, and
measure class diversity of a feature file. Loaded by file from fmkit.cli: the top level imports
argparse and fmkit.cli only; numpy, torch and the package are imported inside run()."""
from __future__ import annotations

import argparse

from fmkit.cli import UsageError, _check_output, _input_file, _positive_int


def _q(text: str):
    if text.lower() in ("inf", "infinity"):
        return "inf"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or inf, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or inf, got {text}")
    return value


def add_parser(sub) -> None:
    div = sub.add_parser("diversity", help="intra-/inter-class diversity: sample K x n, fit the law, predict K*, "
                         "measure Vendi scores",
                         description="The trade-off of intra-/inter-class diversity (Zhang et al., NeurIPS 2023): "
                                     "sample class subsets, fit err = C0 + A K^-a + B n^-b to a sweep, predict the "
                                     "best class count for a larger budget, and measure class diversity.")
    steps = div.add_subparsers(dest="diversity_command", required=True, metavar="STEP")

    sample = steps.add_parser("sample", help="indices of K classes x n examples per class",
                              description="Writes the indices (int64 .npy) of K classes drawn uniformly from the "
                                          "labels and n examples drawn uniformly within each.")
    sample.add_argument("--labels", required=True, type=_input_file, metavar="LABELS.npy",
                        help="integer class label per example (.npy, or .npz with a 'labels' array)")
    sample.add_argument("--k", required=True, type=_positive_int, help="number of classes K")
    sample.add_argument("--n", required=True, type=_positive_int, help="examples per class n")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument("--skip-short", action="store_true",
                        help="draw from the classes with at least n examples instead of refusing short classes")
    sample.add_argument("--out", required=True, metavar="IDX.npy", help="index file to write")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    fit = steps.add_parser("fit", help="fit the diversity law to a sweep's JSONL results and predict K*",
                           description="Fits err = C0 + A K^-a + B n^-b (free or a = b = 1/2) with bootstrap CIs, "
                                       "prints the a - b drift diagnostic and the hold-out check, and predicts K* "
                                       "for --target-n.")
    fit.add_argument("results", type=_input_file, metavar="RESULTS.jsonl",
                     help="cells written by fmkit.diversity.diversity_sweep (one JSON object per line)")
    fit.add_argument("--exponents", choices=["free", "half"], default="free", help="fit a, b or fix a = b = 1/2")
    fit.add_argument("--loss", choices=["l2", "huber"], default="l2", help="least squares or Huber (robust)")
    fit.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates for the CIs (0: none)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    fit.add_argument("--task", default=None, help="task to fit when cells hold {task: error} (default: their mean)")
    fit.add_argument("--target-n", type=_positive_int, default=None, metavar="N",
                     help="predict K* and n* for this budget")
    fit.add_argument("--k-max", type=_positive_int, default=None, help="classes available (caps K*)")
    fit.add_argument("--plot", default=None, metavar="PNG", help="also draw the two-panel fit plot")
    fit.add_argument("--out", default=None, metavar="FIT.json", help="also write the fit (and prediction) as JSON")
    fit.add_argument("--overwrite", action="store_true", help="replace existing --plot / --out files")

    met = steps.add_parser("metrics", help="intra-class Vendi per class, inter-class Vendi, Fisher ratio",
                           description="Class diversity of a labelled feature set, all classes in one batched pass.")
    met.add_argument("features", type=_input_file, metavar="DATA.npz",
                     help="an .npz with features [M, d] and labels [M] (names set by --features-key/--labels-key)")
    met.add_argument("--features-key", default="features", help="array name of the features in DATA.npz")
    met.add_argument("--labels-key", default="labels", help="array name of the labels in DATA.npz")
    met.add_argument("--q", type=_q, default=1.0, help="order of the Vendi score (a number > 0, or inf)")
    met.add_argument("--no-normalize", action="store_true", help="linear kernel on the raw rows instead of cosine")
    met.add_argument("--out", default=None, metavar="METRICS.json", help="also write every class's score as JSON")
    met.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args) -> int:
    outputs = [("--out", getattr(args, "out", None)), ("--plot", getattr(args, "plot", None))]
    for flag, path in outputs:
        if path:
            _check_output(path, args.overwrite, flag)
    return {"sample": _sample, "fit": _fit, "metrics": _metrics}[args.diversity_command](args)


def _load_array(path: str, key: str, flag: str):
    import zipfile

    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{flag} {path}: cannot read it as .npy/.npz ({exc})") from None
    if isinstance(data, np.ndarray):
        return data
    if key not in data.files:
        raise UsageError(f"{flag} {path}: has no array {key!r} (arrays: {', '.join(data.files) or 'none'})")
    return data[key]


def _save_json(path: str, payload) -> None:
    import json

    from fmkit._output import replace_file

    with replace_file(path, overwrite=True, what="--out") as tmp, open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    print("wrote", path)


def _sample(args) -> int:
    import numpy as np

    from fmkit._output import replace_file
    from fmkit.diversity import ClassSubsetSampler

    labels = _load_array(args.labels, "labels", "--labels")
    try:
        sampler = ClassSubsetSampler(labels, args.k, args.n, seed=args.seed,
                                     on_short="skip" if args.skip_short else "raise")
    except ValueError as exc:  # the API says K / n / on_short; the user typed --k / --n / --skip-short
        raise UsageError(str(exc).replace("K=", "--k ").replace("n=", "--n ").replace(
            "on_short='skip'", "--skip-short")) from None
    with replace_file(args.out, overwrite=True, what="--out") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, sampler.indices.astype(np.int64))
    print(f"{sampler.K} classes x {sampler.n} examples = {sampler.N} indices -> {args.out}")
    return 0


def _fit(args) -> int:
    import warnings

    from fmkit.diversity import fit_diversity_law, load_results, plot_diversity_fit, predict_optimal_classes

    if args.n_boot < 0:
        raise UsageError(f"--n-boot: expected an integer >= 0, got {args.n_boot}")
    try:
        cells = load_results(args.results)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_diversity_law(cells, exponents=args.exponents, n_boot=args.n_boot, seed=args.seed,
                                loss=args.loss, task=args.task)
        print(fit.summary())
        prediction = predict_optimal_classes(fit, args.target_n, K_max=args.k_max) if args.target_n else None
    if prediction:
        print(prediction.summary())
    for w in caught:
        print(f"warning: {w.message}")
    if args.plot:
        import os

        from fmkit._output import replace_file

        fig = plot_diversity_fit(fit, cells, N_target=args.target_n, K_max=args.k_max)
        with replace_file(args.plot, overwrite=True, what="--plot") as tmp:
            fig.savefig(tmp, dpi=120, format=os.path.splitext(args.plot)[1][1:] or "png")
        print("wrote", args.plot)
    if args.out:
        payload = {"fit": fit.as_dict()}
        if prediction:
            payload["prediction"] = prediction.__dict__
        _save_json(args.out, payload)
    return 0


def _metrics(args) -> int:
    import numpy as np

    from fmkit.diversity import class_diversity

    features = _load_array(args.features, args.features_key, "features")
    labels = _load_array(args.features, args.labels_key, "features")
    try:
        out = class_diversity(np.ascontiguousarray(features), labels, q=args.q, normalize=not args.no_normalize)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{args.features}: {exc}") from None
    intra = out.intra.numpy()
    print(f"{len(intra)} classes, {int(out.counts.sum())} samples, d={features.shape[1]}, q={out.q}")
    print(f"intra-class Vendi: mean {intra.mean():.4g}, median {np.median(intra):.4g}, min {intra.min():.4g} "
          f"(class {out.classes[intra.argmin()].item()}), max {intra.max():.4g}")
    print(f"inter-class Vendi (class means): {out.inter:.4g}")
    print(f"Fisher ratio (between / within scatter): {out.fisher:.4g}")
    if args.out:
        _save_json(args.out, out.as_dict())
    return 0
