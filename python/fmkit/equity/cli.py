"""`fmkit equity audit`: subgroup audit of a predictions CSV (loaded by file from fmkit.cli)."""
from __future__ import annotations

import os

from fmkit.cli import UsageError, _check_output, _fraction, _input_file, _nonnegative_int, _positive_int

INTERVALS = ("percentile", "basic", "bca", "debiased", "auto")


def add_parser(sub) -> None:
    eq = sub.add_parser("equity", help="equity audits: per-group metrics with bootstrap CIs (arXiv:2312.14804)",
                        description="Subgroup audits with fast bootstrap intervals (fmkit.equity).")
    steps = eq.add_subparsers(dest="equity_command", required=True, metavar="STEP")
    au = steps.add_parser("audit", help="per-group accuracy, FPR/FNR, ECE, Brier with CIs from a predictions CSV",
                          description="Reads a CSV with one row per prediction and writes the per-group table "
                                      "(table.md, groups.csv, disparities.csv, audit.json) and a plot of the "
                                      "group metrics with their intervals (plot.png).")
    au.add_argument("--preds", required=True, type=_input_file, metavar="CSV", help="predictions, one row each")
    au.add_argument("--label-col", required=True, help="column with the true labels (integers)")
    au.add_argument("--group-col", required=True, action="append",
                    help="column with the group of each row (repeatable: each is audited side by side)")
    au.add_argument("--intersect", action="store_true", help="also audit the intersection of all --group-col")
    how = au.add_mutually_exclusive_group(required=True)
    how.add_argument("--prob-col", help="column with P(y=1) of a binary model")
    how.add_argument("--prob-cols", help="comma-separated class-probability columns of a multiclass model")
    how.add_argument("--pred-col", help="column with hard predictions (no ECE/Brier)")
    au.add_argument("--cluster-col", default=None, help="column with cluster ids: resample whole clusters")
    au.add_argument("--reference", default=None, help="reference group (default: the largest of each map)")
    au.add_argument("--n-boot", type=_nonnegative_int, default=1000, help="bootstrap replicates")
    au.add_argument("--alpha", type=_fraction, default=0.05, help="1 - interval coverage")
    au.add_argument("--interval", choices=INTERVALS, default="percentile",
                    help="interval kind; 'auto': bias-corrected for ECE, PIECE and max - min (recommended for "
                         "calibration), percentile for the rest; 'debiased': bias-corrected for everything")
    au.add_argument("--adjust", choices=["holm", "bh", "none"], default="holm",
                    help="multiple-comparison adjustment across groups")
    au.add_argument("--min-count", type=_positive_int, default=30,
                    help="flag (group, metric) cells with fewer rows in the metric's denominator")
    au.add_argument("--min-count-by", choices=["denominator", "rows"], default="denominator",
                    help="what --min-count counts: the metric's denominator (FNR: positives, FPR: negatives; "
                         "default) or all rows of the group")
    au.add_argument("--seed", type=int, default=0, help="random seed")
    au.add_argument("--metrics", default=None, help="comma-separated metrics to show and plot (default: all)")
    au.add_argument("--out", required=True, metavar="DIR", help="folder for the table, CSVs, JSON and plot")
    au.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def _read_csv(path: str) -> dict[str, list[str]]:
    import csv

    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise UsageError(f"--preds: {path!r} is empty") from None
        rows = list(reader)
    if not rows:
        raise UsageError(f"--preds: {path!r} has a header but no rows")
    cols = {h: [] for h in header}
    for i, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise UsageError(f"--preds: line {i} has {len(row)} fields, the header has {len(header)}")
        for h, v in zip(header, row):
            cols[h].append(v)
    return cols


def _column(cols, name: str, flag: str, numeric: bool):
    import numpy as np

    if name not in cols:
        raise UsageError(f"{flag}: no column {name!r} in --preds (columns: {', '.join(list(cols)[:20])})")
    if not numeric:
        return np.array(cols[name], dtype=object)
    try:
        return np.array([float(v) for v in cols[name]])
    except ValueError as exc:
        raise UsageError(f"{flag}: column {name!r} must be numeric ({exc})") from None


def run(args) -> int:
    import json

    import numpy as np

    from fmkit._output import replace_dir
    from fmkit.equity import subgroup_audit

    if args.alpha in (0.0, 1.0):
        raise UsageError("--alpha: expected a number strictly between 0 and 1")
    _check_output(args.out, args.overwrite, "--out")
    cols = _read_csv(args.preds)
    y = _column(cols, args.label_col, "--label-col", True)
    if args.prob_col:
        scores = _column(cols, args.prob_col, "--prob-col", True)
    elif args.prob_cols:
        scores = np.stack([_column(cols, c.strip(), "--prob-cols", True) for c in args.prob_cols.split(",")], 1)
    else:
        scores = _column(cols, args.pred_col, "--pred-col", True)
        if (scores != np.round(scores)).any():
            raise UsageError(f"--pred-col: column {args.pred_col!r} must hold integer class predictions")
        scores = scores.astype(np.int64)
    groups = {g: _column(cols, g, "--group-col", False) for g in args.group_col}
    if args.intersect:
        if len(args.group_col) < 2:
            raise UsageError("--intersect: needs at least two --group-col")
        groups[" x ".join(args.group_col)] = tuple(args.group_col)
    cluster = _column(cols, args.cluster_col, "--cluster-col", False) if args.cluster_col else None
    reference = None
    if args.reference is not None:  # a group label as written in the CSV, for the maps that have it
        reference = {m: args.reference for m, v in groups.items() if not isinstance(v, tuple) and
                     args.reference in set(v.tolist())}
        if not reference:
            raise UsageError(f"--reference: {args.reference!r} is not a group of any --group-col")
    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else None
    result = subgroup_audit(y, scores, groups, reference_group=reference, n_boot=args.n_boot, alpha=args.alpha,
                            cluster=cluster, min_count=args.min_count, seed=args.seed, interval=args.interval,
                            min_count_by=args.min_count_by,
                            adjust=None if args.adjust == "none" else args.adjust)
    if metrics:
        known = next(iter(result.maps.values())).metrics
        bad = [m for m in metrics if m not in known]
        if bad:
            raise UsageError(f"--metrics: {bad} not computed here; available: {', '.join(known)}")
    table = result.to_markdown(metrics)
    with replace_dir(args.out, overwrite=True, what="--out") as tmp:
        (tmp / "table.md").write_text(table + "\n")
        result.to_csv(os.path.join(tmp, "groups.csv"))
        _write_rows(os.path.join(tmp, "disparities.csv"), result.disparity_rows())
        (tmp / "audit.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
        result.plot(metrics=metrics, path=os.path.join(tmp, "plot.png"))
    print(table)
    print(f"outputs in {args.out}")
    return 0


def _write_rows(path, rows):
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

