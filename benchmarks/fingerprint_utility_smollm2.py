"""Utility against the number of fingerprints on SmolLM2-135M-Instruct (issue 14, session 3):
perinucleus fingerprints (n keys, one response each), embedding-method implant with a fixed budget of
optimizer steps, optionally with weight averaging (argv[4], e.g. 0.5).
Utility = held-out toy perplexity; also FSR on the implanted keys."""
import json, math, os, sys, time
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _smollm2 import base_model  # noqa: E402
from fmkit.fingerprint import build_simple_dataset, implant, verify
from fmkit.fingerprint.data import toy_instructions
from fmkit.fingerprint.scalable import perinucleus_fingerprint
from fmkit.fingerprint.demo import _perplexity

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
ns = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 4, 16]
steps_budget = int(sys.argv[3]) if len(sys.argv) > 3 else 60
avgs = [None] + ([float(sys.argv[4])] if len(sys.argv) > 4 else [])
t0 = time.perf_counter(); load0 = os.getloadavg()
torch.manual_seed(0)
base, tok = base_model()
held = [f"{r['instruction']} {r['input']} {r['output']}".strip() for r in toy_instructions(40, seed=777)[-16:]]
ppl_base = _perplexity(base, tok, held)
print(f"base ppl {ppl_base:.2f}", flush=True)
rows = []
for n in ns:
    fp = perinucleus_fingerprint(base, tok, n=n, k_range=(1, 2), seed=n)
    train, _ = build_simple_dataset(fp, ratio=1, n_test=1)
    bs = 8
    epochs = max(1, round(steps_budget * bs / len(train)))
    for avg in avgs:
        t = time.perf_counter()
        pub, priv = implant(base, tok, fp, "embedding", train=train, epochs=epochs, lr=1.5e-2, batch_size=bs,
                            schedule="linear", progress=False, average=avg)
        ti = time.perf_counter() - t
        r = verify(priv, pub, tok, null_model=base)
        ppl = _perplexity(pub, tok, held)
        row = dict(n=n, average=avg, epochs=epochs, train_rows=len(train), fsr=r.fsr, log10_p=r.log10_p_value,
                   ppl=ppl, ppl_change_pct=100 * (ppl / ppl_base - 1), implant_s=ti)
        rows.append(row)
        print(row, flush=True)
        with open(os.path.join(out, "utility.json"), "w", encoding="utf-8") as f:
            json.dump({"date": "2026-12-03", "model": "SmolLM2-135M-Instruct", "ppl_base": ppl_base,
                       "steps_budget": steps_budget, "rows": rows, "load_start": load0,
                       "wall_s": time.perf_counter() - t0}, f, indent=1)
print(f"total {time.perf_counter() - t0:.0f} s, load {load0} -> {os.getloadavg()}")
