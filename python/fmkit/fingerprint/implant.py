"""Implanting a fingerprint (IF_SFT, IF_emb, IF_adapter) and the simulated user fine-tune."""
from __future__ import annotations

import copy

import torch

from fmkit.fingerprint.adapter import FingerprintEmbedding, tied, untie
from fmkit.fingerprint.artifact import Fingerprint
from fmkit.fingerprint.data import (Example, build_dataset, collate, encode, encode_example, load_rows,
                                    toy_instructions)
from fmkit.fingerprint.keys import check_encodable
from fmkit.fingerprint.train import train_loop

METHODS = ("sft", "embedding", "adapter")
# The release's common rows (spec §1.2.4): adapter/embedding as configs/adapter.yaml, sft as sft_chat.yaml.
PRESETS = {
    "adapter": dict(epochs=20, lr=1e-2, batch_size=48, weight_decay=0.0, schedule="linear"),
    "embedding": dict(epochs=20, lr=1e-2, batch_size=48, weight_decay=0.0, schedule="linear"),
    "sft": dict(epochs=3, lr=2e-5, batch_size=64, weight_decay=0.01, schedule="cosine"),
}


def _check_model(model, what="model"):
    if not hasattr(model, "get_input_embeddings") or not hasattr(model, "generate"):
        raise TypeError(f"{what}: expected a Hugging Face causal LM (with get_input_embeddings and generate), "
                        f"got {type(model).__name__}")


def _token_set(tokenizer, examples, include_input_tokens: bool) -> torch.Tensor:
    """T: the tokens of every training instruction (and, by default, of the input field, which the
    release meant to add but dropped)."""
    ids = set()
    for ex in examples:
        if "instruction" in ex.meta and not include_input_tokens:
            ids.update(encode(tokenizer, ex.meta["instruction"], special=True))
        else:
            ids.update(encode(tokenizer, ex.prompt, special=not ex.raw_prompt))
    return torch.tensor(sorted(ids), dtype=torch.long)


def implant(model, tokenizer, fingerprint: Fingerprint, method: str = "adapter", *, init: str = "lora",
            data=None, train=None, epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
            weight_decay: float | None = None, schedule: str | None = None, r: int = 16, a_init: str = "kaiming",
            include_input_tokens: bool = True, contrast: float | None = None, untie_embeddings: bool = True,
            average: float | None = None,
            max_length: int | None = 512, seed: int = 42, progress: bool = True, inplace: bool = False,
            bf16: bool = False, gradient_checkpointing: bool = False, grad_accum: int = 1, train_step=None):
    """Implants `fingerprint` and returns (published_model, private_fingerprint).

    method: "sft" (all weights, dialogue/chat template), "embedding" (the input embedding only) or
    "adapter" (rows of the token set T plus a private F-Adapter; the published model has no adapter).
    init: "lora" (A random, B = 0: the adapter learns) or "release" (all zero, as released: only B's
    bias trains). contrast (adapter, default 1.0 with init="lora", 0 with "release"): weight of an
    unlikelihood term that keeps the adapter from firing on the vanilla rows E0, so that models derived
    from the vanilla base do not verify (no over-claim). data: regularisation rows (list or local JSON/JSONL) for the dataset builder;
    train: ready Example rows instead. average: the forgetting regulariser, published =
    average * implanted + (1 - average) * base. The input model is copied unless inplace=True.
    """
    _check_model(model)
    if not isinstance(fingerprint, Fingerprint):
        raise TypeError(f"fingerprint: expected a Fingerprint, got {type(fingerprint).__name__}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if init not in ("lora", "release"):
        raise ValueError(f"init: expected 'lora' or 'release', got {init!r}")
    if average is not None and not 0.0 < average <= 1.0:
        raise ValueError(f"average: expected a weight in (0, 1], got {average!r}")
    check_encodable(tokenizer, fingerprint.keys, "key")
    hp = dict(PRESETS[method])
    for name, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size), ("weight_decay", weight_decay),
                        ("schedule", schedule)):
        if value is not None:
            hp[name] = value
    examples = list(train) if train is not None else build_dataset(fingerprint, data, tokenizer, seed)[0]
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if average is not None else None
    model = model if inplace else copy.deepcopy(model)
    was_tied = untie(model) if (untie_embeddings and method != "sft") else False
    if method != "sft" and tied(model):
        raise ValueError("untie_embeddings=False with a tied LM head: editing input rows would change the output "
                         "logits; leave untie_embeddings=True")
    emb = model.get_input_embeddings()
    model.requires_grad_(method == "sft")
    wrapper = None
    if method == "embedding":
        emb.weight.requires_grad_(True)
        params = [emb.weight]
    elif method == "adapter":
        token_ids = _token_set(tokenizer, examples, include_input_tokens)
        weight = emb.weight.detach()
        wrapper = FingerprintEmbedding(weight, token_ids, r=r, init=init, a_init=a_init, seed=seed,
                                       residual=weight[token_ids] if init == "release" else None)
        model.set_input_embeddings(wrapper)
        params = list(wrapper.parameters())
        contrast = (1.0 if init == "lora" else 0.0) if contrast is None else contrast
        if contrast > 0:
            train_step = _contrastive_step(tokenizer, wrapper, [e for e in examples if e.kind == "fingerprint"],
                                           contrast, max_length, train_step)
    else:
        params = list(model.parameters())
    try:
        losses = train_loop(model, tokenizer, examples, params, max_length=max_length, seed=seed, progress=progress,
                            bf16=bf16, gradient_checkpointing=gradient_checkpointing, grad_accum=grad_accum,
                            train_step=train_step, desc=f"implant ({method})", **hp)
    finally:
        if wrapper is not None:  # the published model gets a plain embedding with E' merged in
            with torch.no_grad():
                emb.weight.copy_(wrapper.merged_weight())
            model.set_input_embeddings(emb)
    model.requires_grad_(False).eval()
    if base_state is not None:
        _average(model, base_state, average)
    prior = getattr(model.config, "fmkit_fingerprint_stages", 0)
    model.config.fmkit_fingerprint_stages = prior + 1
    out = fingerprint.copy()
    out.method = method
    out.tensors = wrapper.state_tensors() if wrapper is not None else {}
    out.config = {**fingerprint.config, "method": method, "init": init, "r": r if wrapper else None,
                  "a_init": a_init, "include_input_tokens": include_input_tokens,
                  "contrast": contrast if method == "adapter" else None, "untied_head": was_tied,
                  "vocab_size": emb.weight.shape[0], "hidden_size": emb.weight.shape[1], "stage": prior + 1,
                  "average": average, "pad": "pad" if tokenizer.pad_token_id is not None else "eos",
                  "train_rows": len(examples), "final_loss": losses[-1] if losses else None,
                  **{k: v for k, v in hp.items()}}
    return model, out


def _contrastive_step(tokenizer, wrapper, fingerprint_rows, weight, max_length, inner=None):
    """The training step plus `weight` x unlikelihood of the fingerprint targets when the adapter is
    fed the vanilla rows E0: the adapter must fire on E' (the published rows) and not on E0."""
    from fmkit.fingerprint.train import _token_loss, pad_id

    if not fingerprint_rows:
        raise ValueError("train: has no rows of kind 'fingerprint' for the contrast term; set contrast=0")
    vanilla = collate([encode_example(tokenizer, e, max_length) for e in fingerprint_rows], pad_id(tokenizer))

    def step(model, batch):
        loss = inner(model, batch) if inner else _token_loss(model, batch)
        wrapper.use_anchor = True
        try:
            v = {k: t.to(batch["input_ids"].device) for k, t in vanilla.items()}
            logits = model(input_ids=v["input_ids"], attention_mask=v["attention_mask"]).logits[:, :-1].float()
        finally:
            wrapper.use_anchor = False
        labels = v["labels"][:, 1:]
        keep = labels != -100
        p = torch.softmax(logits[keep], -1).gather(-1, labels[keep][:, None]).squeeze(-1)
        return loss + weight * -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()
    return step


def _average(model, base_state: dict, weight: float) -> None:
    """Weight averaging with the base model (the forgetting regulariser of scalable fingerprinting)."""
    with torch.no_grad():
        for name, p in model.state_dict().items():
            b = base_state.get(name)
            if b is not None and b.shape == p.shape and p.is_floating_point():
                p.mul_(weight).add_(b.to(p), alpha=1.0 - weight)


# -- the user's side ----------------------------------------------------------------------------


def user_prompt(instruction: str, input_text: str = "") -> str:
    """fmkit's instruction-tuning prompt for simulated users (Alpaca-like sections)."""
    body = f"### Instruction:\n{instruction}\n\n" + (f"### Input:\n{input_text}\n\n" if input_text else "")
    return body + "### Response:\n"


def _lora_targets(model) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for pair in (("q_proj", "v_proj"), ("query_key_value",), ("c_attn",), ("query", "value")):
        if set(pair) <= names:
            return list(pair)
    raise ValueError("target_modules: could not find attention projections (q_proj/v_proj, query_key_value or "
                     "c_attn) in this model; pass target_modules")


def user_finetune(model, tokenizer, data=None, method: str = "full", *, epochs: int = 1, lr: float | None = None,
                  batch_size: int = 8, weight_decay: float = 0.0, schedule: str = "cosine", warmup_ratio: float = 0.03,
                  lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05, target_modules=None,
                  merge: bool = True, n: int = 64, max_length: int | None = 512, seed: int = 0,
                  progress: bool = True, inplace: bool = False):
    """Simulates a downstream user: instruction tuning on `data` (rows or a local JSON/JSONL; default:
    `n` toy rows), full-parameter or LoRA (peft; merged back unless merge=False). Returns the model."""
    _check_model(model)
    if method not in ("full", "lora"):
        raise ValueError(f"method: expected 'full' or 'lora', got {method!r}")
    rows = load_rows(data) if data is not None else toy_instructions(n, seed + 12345)
    examples = [Example(user_prompt(r["instruction"], r["input"]), r["output"]) for r in rows]
    model = model if inplace else copy.deepcopy(model)
    if method == "full":
        model.requires_grad_(True)
        train_loop(model, tokenizer, examples, model.parameters(), epochs=epochs, lr=lr or 2e-5,
                   batch_size=batch_size, weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
                   max_length=max_length, seed=seed, progress=progress, desc="user fine-tune (full)")
        return model.requires_grad_(False).eval()
    try:
        from peft import LoraConfig, get_peft_model
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("user_finetune(method='lora') needs the optional package 'peft': pip install peft",
                                  name="peft") from exc
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=list(target_modules or _lora_targets(model)), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    train_loop(peft_model, tokenizer, examples, peft_model.parameters(), epochs=epochs, lr=lr or 2e-4,
               batch_size=batch_size, weight_decay=weight_decay, schedule=schedule, warmup_ratio=warmup_ratio,
               max_length=max_length, seed=seed, progress=progress, desc="user fine-tune (lora)")
    out = peft_model.merge_and_unload() if merge else peft_model
    return out.requires_grad_(False).eval()
