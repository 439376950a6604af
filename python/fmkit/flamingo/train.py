"""OpenFlamingo's training recipe (spec §2.8, §2.11) on fmkit's Flamingo.

Each optimizer step takes, per accumulation micro-step, one LAION-style pair batch and one
MMC4-style interleaved batch (the reference's proportion: both loaders advance together, each
with its own batch size) and back-propagates
    loss_laion * loss_multiplier_laion / accum_steps   and   loss_mmc4 * loss_multiplier_mmc4 / accum_steps
separately, as the reference does. Labels: pad and `<image>` masked; MMC4 also before the first
`<image>` and between each `<|endofchunk|>` and the next `<image>` (`Flamingo.make_labels`).
Trainable: the perceiver, the gated cross-attention blocks and the `<image>` / `<|endofchunk|>`
embedding rows (`freeze_for_training`). AdamW with weight decay (0.1) only on the cross-attention
layers' weights (names with "gated_cross_attn_layer", not gates, norms or biases: the
reference's rule), a constant learning rate after a linear warm-up from 0, gradient norm clipped
at 1.0. Precision: "fp32", "bf16" (bf16 autocast) or "fp16" (fp16 autocast with a dynamic
GradScaler). Gradient checkpointing: `gradient_checkpointing=True`. Distributed data parallel:
`distributed=True` under torchrun (`torch.distributed` initialised; each rank's streams built
with its rank and world size): the model is wrapped in DDP and micro-steps before the last run
under `no_sync`, so W ranks compute exactly the step one process computes with W times the
accumulation.

Checkpoints (`checkpoint_dir/latest.pt`, rank 0): trainable parameters, optimizer, schedule,
scaler, the streams' positions and every RNG state, so a resumed run continues bit-identically.
The vision encoder is any module mapping pixels to patch tokens; `ClipVisionTower` adapts an
fmkit.clip CLIP (e.g. one trained by `fmkit datacomp train`).
"""
from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fmkit.flamingo.model import Flamingo

PRECISIONS = ("fp32", "bf16", "fp16")
CHECKPOINT_NAME = "latest.pt"


# ---- the vision tower ----

class ClipVisionTower(nn.Module):
    """An fmkit.clip CLIP's image tower as a Flamingo vision encoder: pixels [N, 3, S, S] ->
    the transformer's output tokens [N, 1 + grid^2, width] (CLS and patches, before ln_post,
    the token path open_flamingo takes from open_clip). `embed(pixels)` is the CLIP image
    embedding, normalised (RICES)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        visual = getattr(clip, "visual", None)
        if visual is None or not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise TypeError(f"clip: expected an fmkit.clip CLIP, got {type(clip).__name__}")
        self.clip = clip
        self.output_dim = visual.transformer.width
        self.image_size = visual.image_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.clip.visual
        x = v.conv1(pixels).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.transformer(v.ln_pre(x))

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels, normalize=True)


def clip_vision_tower(source) -> ClipVisionTower:
    """A ClipVisionTower from an fmkit.clip CLIP or a `fmkit datacomp train` output folder."""
    if isinstance(source, (str, os.PathLike)):
        from fmkit.datacomp.cli import load_trained

        source, _, _ = load_trained(os.fspath(source))
    return ClipVisionTower(source).eval()


# ---- optimiser and schedule ----

def _decays(name: str) -> bool:
    return ("gated_cross_attn_layer" in name and "ff_gate" not in name and "attn_gate" not in name
            and "norm" not in name and "bias" not in name)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The reference's AdamW groups: weight decay on the gated cross-attention layers' weights
    (not their gates, norms or biases), none on everything else that trains."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if _decays(name) else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class ConstantWithWarmup:
    """lr multiplier: step / warmup during warm-up (0 at step 0), then 1 (transformers' schedule)."""

    def __init__(self, warmup: int):
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return step / max(1, self.warmup) if step < self.warmup else 1.0


# ---- checkpoints ----

def _rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _unwrap(model):
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path, model, optimizer, scheduler, scaler, step, streams, history) -> None:
    """Atomically writes what a bit-identical resume needs (trainable parameters only: the
    frozen vision encoder and LM come from where they came from)."""
    trainable = {n: p.detach().clone() for n, p in _unwrap(model).named_parameters() if p.requires_grad}
    state = {"model": trainable, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "step": step, "rng": _rng_state(),
             "streams": {k: s.state_dict() for k, s in streams.items() if s is not None}, "history": history}
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, model, optimizer=None, scheduler=None, scaler=None, streams=None, map_location="cpu"):
    state = torch.load(path, map_location=map_location, weights_only=False)
    params = dict(_unwrap(model).named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state["model"]]
    if missing:
        raise ValueError(f"checkpoint {path}: no values for trainable parameters {missing[:3]}")
    with torch.no_grad():
        for n, v in state["model"].items():
            if n not in params:
                raise ValueError(f"checkpoint {path}: parameter {n!r} is not in the model")
            params[n].copy_(v)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    for k, s in (streams or {}).items():
        if s is not None and k in state["streams"]:
            s.load_state_dict(state["streams"][k])
    return state


@dataclass
class TrainResult:
    """Per-step history of train_flamingo (of the whole run, resumed steps included)."""

    step: int
    losses: list[float] = field(default_factory=list)        # sum of the weighted losses of a step
    losses_mmc4: list[float] = field(default_factory=list)
    losses_laion: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)    # before clipping
    samples_per_second: float = 0.0
    checkpoint: str | None = None


def _autocast(precision, device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def train_flamingo(model: Flamingo, *, mmc4=None, laion=None, steps: int, lr: float = 1e-4, warmup: int = 5000,
                   weight_decay: float = 0.1, loss_multiplier_mmc4: float = 1.0, loss_multiplier_laion: float = 1.0,
                   accum_steps: int = 1, precision: str = "fp32", grad_clip_norm: float | None = 1.0,
                   gradient_checkpointing: bool = False, checkpoint_dir: str | None = None,
                   checkpoint_every: int | None = None, resume: bool = True, distributed: bool = False,
                   device=None, progress: bool = True, log_every: int = 10) -> TrainResult:
    """Trains `model` in place with the OpenFlamingo recipe (module docstring).

    `mmc4` / `laion`: `fmkit.flamingo.data.InterleavedStream` / `PairStream` (or any object with
    `next() -> (vision_x, input_ids, attention_mask)`, `state_dict()`, `load_state_dict()`);
    at least one. Defaults are the reference's (lr 1e-4, 5000 warm-up steps, weight decay 0.1).
    With `checkpoint_dir`, rank 0 writes `latest.pt` every `checkpoint_every` steps (default
    steps // 5) and at the end; with `resume` an existing one is loaded and training continues.
    """
    if mmc4 is None and laion is None:
        raise ValueError("mmc4, laion: give at least one data stream")
    if not isinstance(model, Flamingo):
        raise TypeError(f"model: expected a fmkit.flamingo.Flamingo, got {type(model).__name__}")
    for name, value, low in (("steps", steps, 1), ("warmup", warmup, 0), ("accum_steps", accum_steps, 1),
                             ("log_every", log_every, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    rank, world = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed: torch.distributed is not initialised (run under torchrun and call "
                             "init_process_group first)")
        rank, world = dist.get_rank(), dist.get_world_size()
    for name, stream in (("mmc4", mmc4), ("laion", laion)):
        if stream is not None and getattr(stream, "world", world) != world:
            raise ValueError(f"{name}: the stream is sharded for {stream.world} ranks, the run has {world}")
        if stream is not None and getattr(stream, "rank", rank) != rank:
            raise ValueError(f"{name}: the stream is for rank {stream.rank}, this process is rank {rank}")
    if device is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    checkpoint_every = checkpoint_every or max(1, steps // 5)

    model.to(device)
    model.train()
    model.set_gradient_checkpointing(gradient_checkpointing)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, ConstantWithWarmup(warmup))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    streams = {"mmc4": mmc4, "laion": laion}
    history = {"losses": [], "losses_mmc4": [], "losses_laion": [], "grad_norms": []}
    start, path = 0, None
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        path = os.path.join(checkpoint_dir, CHECKPOINT_NAME)
        if resume and os.path.exists(path):
            state = load_checkpoint(path, model, optimizer, scheduler, scaler, streams, map_location=device)
            _set_rng_state(state["rng"])
            start, history = state["step"], state["history"]

    train_model = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    work = [(k, streams[k], m, k == "mmc4") for k, m in (("laion", loss_multiplier_laion),
                                                         ("mmc4", loss_multiplier_mmc4)) if streams[k] is not None]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="train_flamingo", unit="step")
    t0, seen = time.perf_counter(), 0
    step = start
    try:
        while step < steps:
            optimizer.zero_grad(set_to_none=True)
            step_losses = {k: 0.0 for k, *_ in work}
            for micro in range(accum_steps):
                sync = micro == accum_steps - 1
                with train_model.no_sync() if distributed and not sync else contextlib.nullcontext():
                    for kind, stream, multiplier, interleaved in work:
                        vision_x, ids, mask = stream.next()
                        vision_x, ids, mask = vision_x.to(device), ids.to(device), mask.to(device)
                        labels = model.make_labels(ids, interleaved=interleaved)
                        with _autocast(precision, device):
                            loss = train_model(vision_x, ids, mask, labels=labels).loss
                        scaled = loss.float() * multiplier / accum_steps
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                        step_losses[kind] += loss.item() / accum_steps
                        seen += ids.shape[0] * world
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip_norm if grad_clip_norm else float("inf"))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            total = sum(step_losses[k] * m for k, _, m, _ in work)
            history["losses"].append(total)
            for k in ("mmc4", "laion"):
                history[f"losses_{k}"].append(step_losses.get(k, float("nan")))
            history["grad_norms"].append(float(norm))
            if path is not None and rank == 0 and step % checkpoint_every == 0 and step < steps:
                save_checkpoint(path, model, optimizer, scheduler, scaler, step, streams, history)
            if bar is not None:
                bar.update(1)
                if step % log_every == 0 or step == steps:
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{total:.4f}", samples_per_s=f"{rate:.1f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    finally:
        if bar is not None:
            bar.close()
    if path is not None and rank == 0 and step > start:
        save_checkpoint(path, model, optimizer, scheduler, scaler, step, streams, history)
    if distributed:
        dist.barrier()
    return TrainResult(step=step, checkpoint=path, samples_per_second=seen / max(time.perf_counter() - t0, 1e-9),
                       **history)


# ---- a trained model on disk (the CLI's and the demo's format) ----

META_NAME = "fmkit_flamingo.json"


def build_flamingo(lm_dir: str, vision_dir: str, *, cross_attn_every_n_layers: int = 1,
                   perceiver: dict | None = None):
    """(Flamingo, tokenizer, image size): a local Hugging Face causal LM folder (AutoModelForCausalLM
    + AutoTokenizer, no download) and an fmkit.clip tower from a `fmkit datacomp train` folder.
    `perceiver`: PerceiverResampler arguments replacing the released ones (depth 6, 64 latents,
    8 x 64 heads), e.g. a smaller resampler for CPU experiments."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fmkit.flamingo.model import create_flamingo

    for flag, path in (("lm", lm_dir), ("vision", vision_dir)):
        if not os.path.isdir(path):
            raise FileNotFoundError(2, f"{flag}: no such folder", str(path))
    tokenizer = AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True)
    tower = clip_vision_tower(vision_dir)
    model = create_flamingo(tower, lm, tokenizer, cross_attn_every_n_layers=cross_attn_every_n_layers)
    if perceiver:
        from fmkit.flamingo.model import freeze_for_training
        from fmkit.flamingo.modules import PerceiverResampler

        model.perceiver = PerceiverResampler(dim=tower.output_dim, **perceiver)
        freeze_for_training(model)
    return model, tokenizer, tower.image_size


def write_meta(out_dir: str, **meta) -> None:
    import json

    with open(os.path.join(out_dir, META_NAME), "w") as f:
        json.dump(meta, f, indent=1)


def load_trained_flamingo(checkpoint_dir: str):
    """(Flamingo in eval mode, tokenizer, image size) of a `fmkit flamingo train` output folder."""
    import json

    meta_path = os.path.join(checkpoint_dir, META_NAME)
    if not os.path.isfile(meta_path):
        raise ValueError(f"checkpoint: {checkpoint_dir!r} has no {META_NAME} (not a `fmkit flamingo train` output)")
    with open(meta_path) as f:
        meta = json.load(f)
    # Relative paths are relative to the checkpoint folder (the demo's folders move as a whole).
    lm, vision = (os.path.join(checkpoint_dir, meta[k]) for k in ("lm", "vision"))
    model, tokenizer, image_size = build_flamingo(lm, vision,
                                                  cross_attn_every_n_layers=meta["cross_attn_every_n_layers"],
                                                  perceiver=meta.get("perceiver"))
    load_checkpoint(os.path.join(checkpoint_dir, CHECKPOINT_NAME), model)
    return model.eval(), tokenizer, image_size
