"""README tables from a merged GPU benchmark JSON (benchmarks/gpu_check.sh's <card>-<commit>.json).

One markdown table per op: each case's contenders with median (p20-p80) time, the ratio to the
best anchor that ran, the % of the card's GEMM rate, the error against float64 and the setting.
Usage: python benchmarks/gpu_tables.py RESULTS.json [OP ...]
"""
import json
import sys


def ms(v):
    return "-" if v is None or v != v else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def row_cells(r):
    spread = ""
    if r.get("p20_ms") is not None and r.get("p80_ms") is not None:
        spread = f" ({ms(r['p20_ms'])}-{ms(r['p80_ms'])})"
    err = r.get("rel_err_fp64")
    err = "" if err is None else ("-" if err != err else f"{err:.1e}")
    exact = r.get("exact")
    exact = "" if exact is None else ("exact" if exact else "**not exact**")
    ratio = r.get("speedup_vs_best_anchor")
    ratio = "" if r.get("anchor") or ratio is None or ratio != ratio else f"{ratio:.2f}x"
    why = r.get("error") or r.get("unavailable") or ""
    return [r["contender"], (ms(r["median_ms"]) + spread) if not why else why[:60], ratio,
            "" if r.get("pct_peak") != r.get("pct_peak") or r.get("pct_peak") is None else f"{r['pct_peak']:.1f}",
            " ".join(x for x in (err, exact) if x), r.get("setting") or ""]


def tables(rows, ops=None):
    out = []
    for op in dict.fromkeys(r["op"] for r in rows):
        if ops and op not in ops:
            continue
        out += [f"\n**{op}**\n", "| case | contender | median ms (p20-p80) | vs best anchor | % GEMM peak | error vs fp64 | setting |",
                "|---|---|---|---|---|---|---|"]
        last = None
        for r in rows:
            if r["op"] != op:
                continue
            case = r["shape"] if r["shape"] != last else ""
            last = r["shape"]
            out.append("| " + " | ".join([case] + row_cells(r)) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    data = json.load(open(sys.argv[1]))
    meta = data["meta"]
    print(f"{meta.get('device')} | commit {meta.get('commit')} | {meta.get('date')} | torch {meta.get('torch')} "
          f"| triton {meta.get('triton')}")
    print(tables(data["rows"], sys.argv[2:]))
