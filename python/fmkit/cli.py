"""The `fmkit` command: `fmkit info`, `fmkit bench` (the main job); later issues add one verb per method."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fmkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, compiled backends, triton and torch versions")
    bench = sub.add_parser("bench", help="benchmark fmkit's kernels against the anchors users would pick")
    bench.add_argument("--quick", action="store_true", help="small sizes that finish in about a minute on a laptop CPU")
    bench.add_argument("--op", action="append", help="benchmark only this op (repeatable)")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--plot", default=None, metavar="PNG", help="also draw the timings as a bar chart")
    cal = sub.add_parser("calibrate", help="ProCal: every calibration method with and without ProCal")
    cal.add_argument("--val", required=True, metavar="VAL.npz", help="calibration split: logits, labels, features")
    cal.add_argument("--test", required=True, metavar="TEST.npz", help="test split: logits, labels, features")
    cal.add_argument("--methods", default="conf,ts,ets,pts,ptsk,hb,ir,mir",
                     help="comma-separated subset of conf,ts,ets,pts,ptsk,hb,ir,mir")
    cal.add_argument("--k", type=int, default=10, help="neighbours for proximity (default 10)")
    cal.add_argument("--variant", default="reference", choices=["paper", "reference"],
                     help="proximity definition (default reference: see README, paper vs released code)")
    cal.add_argument("--backend", default="auto", help="kNN / KDE backend")
    cal.add_argument("--out", default=None, metavar="DIR", help="write metrics.json, table.txt and plots here")
    dc = sub.add_parser("datacomp", help="DataComp: make a synthetic pool, filter, train CLIP, evaluate")
    dcs = dc.add_subparsers(dest="datacomp_command", required=True)
    mk = dcs.add_parser("make-pool", help="write a synthetic DataComp-format pool")
    mk.add_argument("out")
    mk.add_argument("--n", type=int, default=2048)
    mk.add_argument("--seed", type=int, default=0)
    flt = dcs.add_parser("filter", help="apply a baseline filter and write the sorted uid .npy")
    flt.add_argument("--pool", required=True)
    flt.add_argument("--name", required=True, help="no_filter, basic, clip_score, text_based, image_based, datacomp_1b")
    flt.add_argument("--out", required=True, metavar="UIDS.npy")
    flt.add_argument("--fraction", type=float, default=None, help="clip_score: keep this top fraction")
    flt.add_argument("--threshold", type=float, default=None, help="clip_score: keep scores >= threshold")
    flt.add_argument("--arch", default=None, help="clip_score: l14 or b32")
    tr = dcs.add_parser("train", help="train a CLIP on the (filtered) pool")
    tr.add_argument("--pool", required=True)
    tr.add_argument("--uids", default=None, metavar="UIDS.npy")
    tr.add_argument("--out", required=True, metavar="DIR")
    tr.add_argument("--scale", default="tiny", choices=["tiny", "small", "medium", "large", "xlarge"],
                    help="DataComp scale preset: model, steps, batch size, lr, warmup (flags below override)")
    tr.add_argument("--model", default=None, help="CLIP config (default: the scale's)")
    tr.add_argument("--steps", type=int, default=None)
    tr.add_argument("--batch-size", type=int, default=None)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--warmup", type=int, default=None)
    tr.add_argument("--accum-freq", type=int, default=1)
    tr.add_argument("--precision", default=None, choices=["bf16", "amp", "fp32"],
                    help="bf16 autocast, amp (fp16 autocast + GradScaler, DataComp's) or fp32; default bf16 on CUDA, fp32 on CPU")
    tr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    tr.add_argument("--image-size", type=int, default=None, help="default: the model config's")
    ev = dcs.add_parser("evaluate", help="zero-shot classification and retrieval of a trained CLIP; "
                                          "prints each task's main metric and DataComp's average")
    ev.add_argument("--checkpoint", required=True, metavar="DIR")
    ev.add_argument("--task", action="append", default=[], metavar="NAME=PATH",
                    help="an image-folder tree (zero-shot classification) or a pool (retrieval); repeatable")
    ev.add_argument("--pool", default=None, help="shorthand for --task pool_retrieval=POOL")
    ev.add_argument("--out", default=None, metavar="RESULTS.json")
    mke = dcs.add_parser("make-eval", help="write synthetic held-out evaluation tasks for make-pool's classes")
    mke.add_argument("out")
    mke.add_argument("--n", type=int, default=512)
    mke.add_argument("--seed", type=int, default=1)
    demo = sub.add_parser("demo", help="end-to-end demonstrations on offline data")
    demo.add_argument("what", choices=["calibration", "datacomp"])
    demo.add_argument("--out", default="fmkit_demo_calibration", metavar="DIR")
    demo.add_argument("--seeds", type=int, default=5, help="random splits to average (the paper uses 5)")
    demo.add_argument("--dataset", action="append", choices=["digits", "mixture"], help="default: both")
    args = parser.parse_args(argv)

    if args.command == "calibrate":
        from fmkit.calibration import Split, compare_methods

        result = compare_methods(Split.load(args.val), Split.load(args.test),
                                 [m.strip() for m in args.methods.split(",") if m.strip()],
                                 k=args.k, variant=args.variant, backend=args.backend)
        print(result.table())
        if args.out:
            for path in result.save(args.out):
                print("wrote", path)
        return 0
    if args.command == "demo":
        if args.what == "datacomp":
            from fmkit.datacomp.demo import run_demo as run_datacomp_demo

            run_datacomp_demo(args.out)
            return 0
        from fmkit.calibration.demo import run_demo

        run_demo(args.out, seeds=args.seeds, datasets=args.dataset or ("digits", "mixture"))
        return 0
    if args.command == "datacomp":
        from fmkit.datacomp.cli import run

        return run(args)
    if args.command == "info":
        import fmkit

        print(json.dumps(fmkit.info(), indent=2))
        return 0
    if args.command == "bench":
        import torch

        from fmkit import bench as fbench

        ops = args.op or list(fbench.REGISTRY)
        unknown = [op for op in ops if op not in fbench.REGISTRY]
        if unknown:
            parser.error(f"--op: unknown op(s) {unknown}; registered: {sorted(fbench.REGISTRY)}")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        fbench.run(ops, args.quick, device, args.json, args.plot)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
