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
GradScaler). Gradient checkpointing: `gradient_checkpointing=True`.

Data parallelism under torchrun (`torch.distributed` initialised; each rank's streams built with
its rank and world size), `strategy=`:
- "ddp" (also `distributed=True`): the model is wrapped in DDP and every backward but the last
  runs under `no_sync` (one all-reduce per optimizer step, in its last backward), so W ranks compute
  the step one process computes with W times the accumulation (equal up to the order of the
  floating-point sums).
- "fsdp2": `torch.distributed.fsdp.fully_shard` (per-parameter sharding, DTensor) on each gated
  cross-attention block, each LM decoder layer, the perceiver and the vision encoder, then on the
  whole model (the embeddings, the LM head and the rest). FSDP2 shards every parameter on its
  own, so frozen and trainable parameters may share a unit (only those with gradients are
  reduced) and the optimizer still sees one tensor per parameter: the weight-decay groups stay
  as they are. The `<image>` / `<|endofchunk|>` row mask of the embedding gradient (a hook on
  the unsharded Parameter, which sharding replaces) is applied to the reduced, sharded gradient
  instead; the mask is linear, so the step is the same. Gradient reduction runs only on the last
  backward of a step (`set_requires_gradient_sync`). "bf16" adds
  `MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)` (parameters gathered in
  bf16, gradients reduced and kept in fp32) to the bf16 autocast; "fp16" the same with float16
  and a `ShardedGradScaler`, whose inf check is all-reduced over the ranks. The model stays
  sharded after training (parameters are DTensors; `p.full_tensor()` gathers one).
- "none": one process.

Checkpoints (`checkpoint_dir/latest.pt`, written by rank 0): trainable parameters, optimizer,
schedule, scaler, the streams' positions and every RNG state, so a resumed run continues
bit-identically. The tensors are always full (unsharded): under FSDP2 every rank gathers them
(`DTensor.full_tensor`) and rank 0 writes, and loading re-shards them, so one file serves
FSDP2, DDP and a single process alike (`checkpoint_dir` must be a folder every rank can read).
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
STRATEGIES = ("none", "ddp", "fsdp2")
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


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover (torch without DTensor)
        return False
    return isinstance(t, DTensor)


def _full(t):
    """A full, detached CPU-able copy of a (possibly FSDP2-sharded) tensor. Collective for a DTensor:
    every rank must call it, in the same order."""
    t = t.detach()
    return t.full_tensor() if _is_dtensor(t) else t.clone()


def _like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` (full) laid out as `param`: this rank's shard of it when `param` is a DTensor (every
    rank holds the full value, so no communication), else `value` itself."""
    if not _is_dtensor(param):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements,
                             src_data_rank=None)


def _optimizer_names(model, optimizer) -> list[str]:
    names = {id(p): n for n, p in _unwrap(model).named_parameters()}
    return [names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]]


def _full_optimizer_state(optimizer) -> dict:
    state = optimizer.state_dict()
    state["state"] = {i: {k: _full(v) if torch.is_tensor(v) else v for k, v in s.items()}
                      for i, s in state["state"].items()}
    return state


def save_checkpoint(path, model, optimizer, scheduler, scaler, step, streams, history, *, write: bool = True,
                    per_rank: list | None = None) -> None:
    """Atomically writes what a bit-identical resume needs (trainable parameters only: the
    frozen vision encoder and LM come from where they came from). Under FSDP2 every rank must
    call it (the shards are gathered); only the callers with `write` write."""
    named = [(n, p) for n, p in _unwrap(model).named_parameters() if p.requires_grad]
    if not write and not any(_is_dtensor(p) for _, p in named):
        return  # nothing to gather
    trainable = {n: _full(p) for n, p in named}
    optimizer_state = _full_optimizer_state(optimizer)
    if not write:
        return
    state = {"model": trainable, "optimizer": optimizer_state, "optimizer_params": _optimizer_names(model, optimizer),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
             "step": step, "rng": _rng_state(),
             "streams": {k: s.state_dict() for k, s in streams.items() if s is not None}, "history": history,
             "per_rank": per_rank}
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, model, optimizer=None, scheduler=None, scaler=None, streams=None, map_location="cpu"):
    """Loads a `save_checkpoint` file into `model` (and the rest), plain or FSDP2-sharded: full
    tensors are re-sharded to each parameter's layout."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    params = dict(_unwrap(model).named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state["model"]]
    if missing:
        raise ValueError(f"checkpoint {path}: no values for trainable parameters {missing[:3]}")
    with torch.no_grad():
        for n, v in state["model"].items():
            if n not in params:
                raise ValueError(f"checkpoint {path}: parameter {n!r} is not in the model")
            if tuple(v.shape) != tuple(params[n].shape):
                raise ValueError(f"checkpoint {path}: parameter {n!r} has shape {list(v.shape)}, "
                                 f"the model's is {list(params[n].shape)}")
            params[n].copy_(_like(v, params[n]))
    if optimizer is not None:
        opt_state = state["optimizer"]
        names = state.get("optimizer_params")
        if names is not None and names != _optimizer_names(model, optimizer):
            raise ValueError(f"checkpoint {path}: its optimizer was built over other parameters (or in another "
                             "order) than this one")
        flat = [p for g in optimizer.param_groups for p in g["params"]]
        if any(_is_dtensor(p) for p in flat):
            opt_state = dict(opt_state, state={
                i: {k: _like(v, flat[i]) if torch.is_tensor(v) and v.shape == flat[i].shape and v.dim() > 0 else v
                    for k, v in s.items()} for i, s in opt_state["state"].items()})
        optimizer.load_state_dict(opt_state)
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    for k, s in (streams or {}).items():
        if s is not None and k in state["streams"]:
            s.load_state_dict(state["streams"][k])
    return state


def _per_rank_state(streams, strategy, history):
    """Every rank's stream positions, RNG states and loss history (a rank's stream stops after its
    own batch of a round, so the positions differ by rank; its losses are its own batches').
    Collective under DDP / FSDP2."""
    mine = {"streams": {k: s.state_dict() for k, s in streams.items() if s is not None}, "rng": _rng_state(),
            "history": history}
    if strategy == "none":
        return [mine]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


# ---- FSDP2 ----

def shard_flamingo(model: Flamingo, mesh=None, *, precision: str = "fp32", reshard_after_forward: bool = True):
    """FSDP2 (`fully_shard`) units on a Flamingo, in place: each gated cross-attention block, each
    LM decoder layer, the perceiver, the vision encoder (if it has parameters), then the whole
    model as the root unit (embeddings, LM head, final norm). `mesh`: a 1-D DeviceMesh (default:
    all ranks, on the device type of the model's parameters). `precision` "bf16" / "fp16":
    parameters gathered in that dtype, gradients reduced in fp32. Returns the model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(next(model.parameters()).device.type, (dist.get_world_size(),))
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    # fully_shard cannot shard 0-dim parameters (e.g. a CLIP tower's logit_scale): frozen ones stay
    # unsharded and replicated (`ignored_params`); a trainable one is an error.
    scalars = {p for p in model.parameters() if p.dim() == 0}
    if any(p.requires_grad for p in scalars):
        raise ValueError("strategy='fsdp2': fully_shard cannot shard a trainable 0-dim parameter")
    if scalars:
        kwargs["ignored_params"] = scalars
    if precision in ("bf16", "fp16"):
        low = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    for layer in model._layers:
        if layer.gated_cross_attn_layer is not None:
            fully_shard(layer.gated_cross_attn_layer, **kwargs)
        fully_shard(layer.decoder_layer, **kwargs)
    fully_shard(model.perceiver, **kwargs)
    if any(True for _ in model.vision_encoder.parameters()):
        fully_shard(model.vision_encoder, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _mask_embedding_grad(model: Flamingo) -> None:
    """FSDP2: only the `<image>` and `<|endofchunk|>` rows of the embedding gradient are kept (what
    `freeze_for_training`'s hook does on an unsharded model), on this rank's shard."""
    if model._embedding_grad_hook is None:
        return
    emb = model.lang_encoder.get_input_embeddings().weight
    if emb.grad is None:
        return
    keep = torch.zeros(emb.shape[0], 1, dtype=emb.grad.dtype)
    keep[[model.image_token_id, model.end_of_chunk_token_id]] = 1
    emb.grad.mul_(_like(keep, emb.grad))


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
                   strategy: str | None = None, device=None, progress: bool = True,
                   log_every: int = 10) -> TrainResult:
    """Trains `model` in place with the OpenFlamingo recipe (module docstring).

    `mmc4` / `laion`: `fmkit.flamingo.data.InterleavedStream` / `PairStream` (or any object with
    `next() -> (vision_x, input_ids, attention_mask)`, `state_dict()`, `load_state_dict()`);
    at least one. Defaults are the reference's (lr 1e-4, 5000 warm-up steps, weight decay 0.1).
    With `checkpoint_dir`, rank 0 writes `latest.pt` every `checkpoint_every` steps (default
    steps // 5) and at the end; with `resume` an existing one is loaded and training continues.
    `strategy`: "none", "ddp" or "fsdp2" (module docstring); default "ddp" with `distributed=True`,
    else "none". "ddp" and "fsdp2" need an initialised torch.distributed process group.
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
    if strategy is None:
        strategy = "ddp" if distributed else "none"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if distributed and strategy == "none":
        raise ValueError("distributed=True and strategy='none' contradict each other: give strategy='ddp' or 'fsdp2'")
    rank, world = 0, 1
    if strategy != "none":
        if not (dist.is_available() and dist.is_initialized()):
            flag = "distributed" if strategy == "ddp" and distributed else f"strategy={strategy!r}"
            raise ValueError(f"{flag}: torch.distributed is not initialised (run under torchrun and call "
                             "init_process_group first)")
        rank, world = dist.get_rank(), dist.get_world_size()
    fsdp = strategy == "fsdp2"
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
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh

        shard_flamingo(model, init_device_mesh(device.type, (world,)), precision=precision)
    # After sharding: the optimizer holds the sharded (DTensor) parameters.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, ConstantWithWarmup(warmup))
    scaler = None
    if precision == "fp16":
        if fsdp:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device.type)
        else:
            scaler = torch.amp.GradScaler(device.type)
    streams = {"mmc4": mmc4, "laion": laion}
    history = {"losses": [], "losses_mmc4": [], "losses_laion": [], "grad_norms": []}
    start, path = 0, None
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        path = os.path.join(checkpoint_dir, CHECKPOINT_NAME)
        if resume and os.path.exists(path):
            state = load_checkpoint(path, model, optimizer, scheduler, scaler, streams, map_location=device)
            _set_rng_state(state["rng"])
            per_rank = state.get("per_rank")
            if per_rank is not None and len(per_rank) == world:  # this rank's own positions and RNG
                for k, s in streams.items():
                    if s is not None and k in per_rank[rank]["streams"]:
                        s.load_state_dict(per_rank[rank]["streams"][k])
                _set_rng_state(per_rank[rank]["rng"])
                state["history"] = per_rank[rank].get("history", state["history"])
            elif world > 1:
                raise ValueError(f"checkpoint {path}: it has stream positions for {len(per_rank) if per_rank else 1} "
                                 f"rank(s), the run has {world}; it cannot resume this run exactly")
            start, history = state["step"], state["history"]

    train_model = model
    if strategy == "ddp":
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
                for i, (kind, stream, multiplier, interleaved) in enumerate(work):
                    # Gradients are reduced once per step, in its last backward (DDP all-reduce,
                    # FSDP2 reduce-scatter); every earlier backward accumulates locally.
                    sync = micro == accum_steps - 1 and i == len(work) - 1
                    if fsdp:
                        model.set_requires_gradient_sync(sync)
                    with train_model.no_sync() if strategy == "ddp" and not sync else contextlib.nullcontext():
                        vision_x, ids, mask = stream.next()
                        vision_x, ids, mask = vision_x.to(device), ids.to(device), mask.to(device)
                        labels = model.make_labels(ids, interleaved=interleaved)
                        with _autocast(precision, device):
                            loss = train_model(vision_x, ids, mask, labels=labels).loss
                        scaled = loss.float() * multiplier / accum_steps
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    step_losses[kind] += loss.item() / accum_steps
                    seen += ids.shape[0] * world
            if fsdp:
                _mask_embedding_grad(model)
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip_norm if grad_clip_norm else float("inf"))
            if _is_dtensor(norm):
                norm = norm.full_tensor()
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
            if path is not None and step % checkpoint_every == 0 and step < steps:
                save_checkpoint(path, model, optimizer, scheduler, scaler, step, streams, history, write=rank == 0,
                        per_rank=_per_rank_state(streams, strategy, history))
            if bar is not None:
                bar.update(1)
                if step % log_every == 0 or step == steps:
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{total:.4f}", samples_per_s=f"{rate:.1f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    finally:
        if bar is not None:
            bar.close()
    if path is not None and step > start:
        save_checkpoint(path, model, optimizer, scheduler, scaler, step, streams, history, write=rank == 0,
                        per_rank=_per_rank_state(streams, strategy, history))
    if strategy != "none":
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
