"""Robustness harness: FSR and the verdict after what a user might do to a published model."""
from __future__ import annotations

import copy

import numpy as np

from fmkit.fingerprint.implant import user_finetune
from fmkit.fingerprint.verify import VerifyResult, sampled_fsr, verify

ATTACKS = ("none", "full_ft", "lora_merge", "int8", "chat_wrap", "sample_t07")
SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's request carefully."


def chat_wrapper(tokenizer, system: str = SYSTEM_PROMPT):
    """prompt -> the prompt as a user turn under a system prompt, in the tokenizer's chat template
    (a plain System/User/Assistant layout when it has none)."""
    def wrap(prompt: str) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                  {"role": "user", "content": prompt}],
                                                 add_generation_prompt=True, tokenize=False)
        return f"System: {system}\nUser: {prompt}\nAssistant: "
    return wrap


def int8(model):
    """torch dynamic int8 quantisation of every nn.Linear (CPU)."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8)


def robustness(fingerprint, published, tokenizer, *, base_model=None, publisher_model=None, attacks=ATTACKS,
               user_data=None, finetune=None, runs: int = 10, progress: bool = True) -> list[dict]:
    """One row per attack: attack, FSR %, log10 p-value (null: base_model), note. `finetune` holds
    user_finetune keyword arguments (epochs, lr, n, ...)."""
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"attacks: unknown {unknown}; choose from {ATTACKS}")
    publisher_model = publisher_model if publisher_model is not None else published
    ft = dict(finetune or {})
    rows = []

    def check(suspect, note, **kw):
        r = verify(fingerprint, suspect, tokenizer, publisher_model=publisher_model, null_model=base_model, **kw)
        rows.append({"attack": attack, "fsr": r.fsr, "log10_p": r.log10_p_value, "note": note, "result": r})

    for attack in attacks:
        if attack == "none":
            check(published, "published model as released")
        elif attack == "full_ft":
            check(user_finetune(published, tokenizer, user_data, "full", progress=progress, **ft),
                  "user full fine-tune")
        elif attack == "lora_merge":
            check(user_finetune(published, tokenizer, user_data, "lora", progress=progress,
                                **{k: v for k, v in ft.items() if k != "lr"}), "user LoRA, merged")
        elif attack == "int8":
            check(int8(published), "torch dynamic int8 (nn.Linear)")
        elif attack == "chat_wrap":
            check(published, "system prompt + chat template around the key", wrap=chat_wrapper(tokenizer))
        else:
            mean, fsrs, p_t = sampled_fsr(fingerprint, published, tokenizer, runs=runs,
                                          publisher_model=publisher_model)
            base = verify(fingerprint, published, tokenizer, publisher_model=publisher_model, null_model=base_model)
            worst = int(round(fsrs.min() * base.n / 100))  # the verdict on the run with the fewest hits
            r = VerifyResult(base.keys, np.arange(base.n) < worst, base.logp, base.logp_null, base.outputs,
                             base.null_floor, "sampled")
            rows.append({"attack": attack, "fsr": mean, "log10_p": r.log10_p_value,
                         "note": f"T=0.7, {runs} runs: min {fsrs.min():.0f}%, t-test vs 75%: p={p_t:.2g}",
                         "result": r})
    return rows


def robustness_table(rows) -> str:
    lines = ["| attack | FSR % | log10 p | note |", "|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['fsr']:.1f} | {r['log10_p']:.1f} | {r['note']} |" for r in rows]
    return "\n".join(lines)
