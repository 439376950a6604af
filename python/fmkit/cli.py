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
    args = parser.parse_args(argv)

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
