"""A plain PyTorch training loop (AdamW, linear or cosine schedule, tqdm), shared by implanting
and by the simulated user fine-tune. Loss on the target tokens and EOS only."""
from __future__ import annotations

import math
import random

import torch

from fmkit.fingerprint.data import collate, encode_example


def pad_id(tokenizer) -> int:
    """The tokenizer's pad token, else EOS (fmkit never adds a token to the vocabulary)."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("tokenizer: has neither a pad nor an eos token; set tokenizer.eos_token")
    return pid


def _schedule(kind: str, total: int, warmup: int):
    def factor(step):
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        frac = (step - warmup) / max(total - warmup, 1)
        if kind == "linear":
            return max(0.0, 1.0 - frac)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        return 1.0
    if kind not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule: expected 'linear', 'cosine' or 'constant', got {kind!r}")
    return factor


def train_loop(model, tokenizer, examples, params, *, epochs: int, lr: float, batch_size: int = 8,
               weight_decay: float = 0.0, schedule: str = "linear", warmup_ratio: float = 0.0,
               max_length: int | None = 512, seed: int = 42, progress: bool = True, bf16: bool = False,
               gradient_checkpointing: bool = False, grad_accum: int = 1, train_step=None, desc: str = "train"):
    """Trains `params` of `model` on `examples` (Example objects or prepared (ids, labels) pairs).
    `train_step(model, batch) -> loss` replaces the forward/loss (e.g. an accelerate-wrapped model)."""
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("examples: is empty; nothing to train on")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected a number > 0, got {lr!r}")
    params = [p for p in params if p.requires_grad]
    encoded = [e if isinstance(e, tuple) else encode_example(tokenizer, e, max_length) for e in examples]
    pid = pad_id(tokenizer)
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(encoded) / (batch_size * grad_accum))
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(schedule, total, int(warmup_ratio * total)))
    if gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    try:
        for _ in range(epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
            for start in range(0, len(chunks), grad_accum):
                group = chunks[start:start + grad_accum]
                n_tok = sum(sum(1 for t in encoded[i][1] if t != -100) for c in group for i in c)
                step_loss = 0.0
                for chunk in group:
                    batch = {k: v.to(device) for k, v in collate([encoded[i] for i in chunk], pid).items()}
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss = train_step(model, batch) if train_step else _token_loss(model, batch)
                    # weights each chunk by its share of target tokens: the mean over the whole step
                    share = sum(1 for i in chunk for t in encoded[i][1] if t != -100) / max(n_tok, 1)
                    (loss * share).backward()
                    step_loss += loss.item() * share
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(step_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
    finally:
        bar.close()
        model.eval()
        if gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
            model.gradient_checkpointing_disable()
    return losses


def _token_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             ignore_index=-100)
