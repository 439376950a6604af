"""Robustness table on SmolLM2-135M-Instruct (issue 14, session 3): embedding-method implant of 4 keys
(the demo's settings), then fmkit.fingerprint.robustness (full FT, LoRA merge, int8, chat wrap, T=0.7)."""
import json, os, sys, time
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _smollm2 import base_model  # noqa: E402
from fmkit.fingerprint import Fingerprint, build_simple_dataset, implant
from fmkit.fingerprint.robustness import robustness, robustness_table

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
t0 = time.perf_counter(); load0 = os.getloadavg()
torch.manual_seed(0)
base, tok = base_model()
fp = Fingerprint.create(n=4, k_range=(1, 2), seed=42)
train, test = build_simple_dataset(fp, ratio=1, n_test=4)
t = time.perf_counter()
published, private = implant(base, tok, fp, "embedding", train=train, epochs=30, lr=1.5e-2, batch_size=8,
                             schedule="linear", progress=False)
t_implant = time.perf_counter() - t
print(f"implant (embedding, 4 keys, 30 epochs): {t_implant:.0f} s", flush=True)
ft = dict(n=64, epochs=2, lr=2e-5, batch_size=8)
rows = robustness(private, published, tok, base_model=base, finetune=ft, runs=10, progress=False)
table = robustness_table(rows)
print(table)
res = {"date": "2026-12-03", "model": "SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised to fp32)",
       "fingerprint": {"keys": fp.keys, "y": fp.y, "method": "embedding", "epochs": 30, "lr": 1.5e-2,
                       "train_rows": len(train)},
       "user_finetune": ft, "implant_s": t_implant, "wall_s": time.perf_counter() - t0,
       "load_start": load0, "load_end": os.getloadavg(),
       "rows": [{k: v for k, v in r.items() if k != "result"} | {"fired": r["result"].fired.tolist()} for r in rows]}
with open(os.path.join(out, "robustness.json"), "w", encoding="utf-8") as f:
    json.dump(res, f, ensure_ascii=False, indent=1)
with open(os.path.join(out, "robustness.md"), "w", encoding="utf-8") as f:
    f.write(table + f"\n\nimplant {t_implant:.0f} s, total {res['wall_s']:.0f} s\n")
print(f"total {res['wall_s']:.0f} s, load {load0} -> {res['load_end']}")
