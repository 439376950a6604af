"""CLIP training recipe (open_clip / DataComp defaults) on fmkit's fused contrastive loss.

Recipe: AdamW (beta1 0.9, beta2 from the scale, eps 1e-6), weight decay 0.2 on parameters with
>= 2 dims (none on gains, biases, logit_scale: open_clip's rule), linear warm-up then cosine
decay to 0 (open_clip's `cosine_lr`), logit_scale clamped in place to [0, ln 100] after every
optimizer step, bf16 autocast ("bf16"), DataComp's own fp16 autocast with a dynamic GradScaler
("amp": the loss is scaled before backward, steps with inf/NaN gradients are skipped and the
scale halves, as torch.amp does), or none ("fp32").

Batches: `batch_size` is the *global* batch of one optimizer step, as in DataComp's table:
batch_size = per-rank micro-batch x accum_freq x world_size. Each process reads its own
stream `data` (shard it per rank, e.g. DataComp's resampled shards) and takes
batch_size / world_size samples per step, re-batched from whatever batch size `data` yields,
then split into accum_freq micro-batches.

Distributed: with `distributed=True` (torch.distributed already initialised) the model is
wrapped in DDP and the loss is ClipLoss(local_loss=True, gather_with_grad=True, rank,
world_size): after DDP's gradient averaging every rank holds the gradient of the global
full-batch loss. With accum_freq > 1 the k backward passes of fmkit.losses.
ContrastiveAccumulator run under DDP's no_sync and the gradients are averaged once afterwards
(logit_scale takes part in only one of the k passes, which DDP's reducer would reject).
"""
from __future__ import annotations

import collections.abc
import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from fmkit.losses import ClipLoss, ContrastiveAccumulator

LOGIT_SCALE_MAX = math.log(100.0)
PRECISIONS = ("bf16", "amp", "fp32")
CHECKPOINT_NAME = "latest.pt"

# DataComp's scales (DCP Table 2 / DC scale_configs.py): samples seen, model, global batch, lr,
# AdamW beta2, warm-up steps; steps = samples_seen // batch_size. "tiny" is fmkit's CPU preset.
SCALES: dict[str, dict[str, Any]] = {
    "tiny": dict(samples_seen=200 * 64, model="tiny", batch_size=64, lr=1e-3, beta2=0.98, warmup=20, steps=200),
    "small": dict(samples_seen=12_800_000, model="B-32", batch_size=4096, lr=5e-4, beta2=0.98, warmup=500,
                  steps=3_125),
    "medium": dict(samples_seen=128_000_000, model="B-32", batch_size=4096, lr=5e-4, beta2=0.98, warmup=500,
                   steps=31_250),
    "large": dict(samples_seen=1_280_000_000, model="B-16", batch_size=8192, lr=5e-4, beta2=0.98, warmup=500,
                  steps=156_250),
    "xlarge": dict(samples_seen=12_800_000_000, model="L-14", batch_size=90_112, lr=1e-3, beta2=0.95, warmup=10_000,
                   steps=142_045),
}
for _preset in SCALES.values():
    _preset.update(beta1=0.9, eps=1e-6, weight_decay=0.2)
del _preset


# ---- optimiser and schedule ----

def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on >= 2-D weights; none on gains, biases, embeddings' 1-D params, logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class WarmupCosine:
    """lr multiplier at step s: (s + 1) / warmup during warm-up, then 0.5 (1 + cos(pi e / E))."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        decay = self.steps - self.warmup
        if decay <= 0:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - self.warmup, decay) / decay))


def clamp_logit_scale(model: nn.Module, max_value: float = LOGIT_SCALE_MAX) -> None:
    """In place: logit_scale <- clamp(logit_scale, 0, ln 100)."""
    with torch.no_grad():
        _logit_scale(model).clamp_(0, max_value)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _logit_scale(model: nn.Module) -> torch.Tensor:
    scale = getattr(_unwrap(model), "logit_scale", None)
    if not isinstance(scale, torch.Tensor):
        raise ValueError("model: expected a `logit_scale` parameter (CLIP or OpenClipAdapter)")
    return scale


# ---- one step's gradients ----

def _autocast(precision: str, device: torch.device):
    if precision in ("bf16", "amp"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def _average_gradients(model: nn.Module, world_size: int) -> None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def contrastive_backward(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, *, loss: Callable | None = None,
                         accum_freq: int = 1, precision: str = "fp32", world_size: int = 1,
                         loss_scale: float = 1.0) -> torch.Tensor:
    """Forward + backward of one step's batch; returns the (local) loss value.

    Afterwards every parameter's .grad holds the gradient of the full-batch loss (accumulated
    into existing .grad, as backward does). With accum_freq > 1 the batch is split into
    accum_freq micro-batches and fmkit.losses.ContrastiveAccumulator gives exactly the
    full-batch gradient. With world_size > 1 (`loss` then a distributed ClipLoss) gradients are
    averaged over ranks: by DDP when `model` is DDP-wrapped and accum_freq == 1, by one
    all-reduce otherwise. `loss_scale` multiplies the loss before backward (fp16 loss scaling: the
    gradients come out scaled, the returned value does not).
    """
    if not isinstance(accum_freq, int) or accum_freq < 1:
        raise ValueError(f"accum_freq: expected an int >= 1, got {accum_freq!r}")
    if images.shape[0] % accum_freq:
        raise ValueError(f"accum_freq: batch {images.shape[0]} is not divisible into {accum_freq} micro-batches")
    loss = loss if loss is not None else ClipLoss()
    if loss_scale != 1.0:
        unscaled = loss

        def loss(*args, **kwargs):  # noqa: F811 (the scaled loss replaces the caller's)
            return unscaled(*args, **kwargs) * loss_scale
    device = images.device
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    if accum_freq == 1:
        with _autocast(precision, device):
            image_features, text_features, scale = model(images, texts)
        value = loss(image_features, text_features, scale)
        value.backward()
        if world_size > 1 and not ddp:
            _average_gradients(model, world_size)
        return value.detach() / loss_scale

    def forward(im, tx):
        with _autocast(precision, device):
            return model(im, tx)

    micro = list(zip(images.chunk(accum_freq), texts.chunk(accum_freq)))
    with model.no_sync() if ddp else contextlib.nullcontext():
        value = ContrastiveAccumulator(forward, loss).backward(micro)
    if world_size > 1:
        _average_gradients(model, world_size)
    return value / loss_scale


# ---- data ----

def _check_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"data: expected (images, token_ids) batches, got {type(batch).__name__}")
    images, texts = batch
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"data: images must be a float tensor [B, 3, H, W], got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {list(getattr(images, 'shape', []))}")
    if not isinstance(texts, torch.Tensor) or texts.dim() != 2 or texts.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"data: token ids must be a long tensor [B, T], got "
                         f"{getattr(texts, 'dtype', type(texts).__name__)} {list(getattr(texts, 'shape', []))}")
    if images.shape[0] != texts.shape[0]:
        raise ValueError(f"data: {images.shape[0]} images but {texts.shape[0]} token rows in a batch")
    return images, texts.long()


class _Rebatcher:
    """Yields exactly `size`-sample batches from a stream of (images, texts) batches of any size.

    `data` may be a callable returning a fresh iterable (one per epoch), a re-iterable (list,
    DataLoader: restarted when exhausted) or a one-shot iterator (training stops at its end).
    """

    def __init__(self, data, size: int):
        self.data, self.size = data, size
        self._factory = callable(data) and not hasattr(data, "__iter__")
        if not self._factory and not hasattr(data, "__iter__"):
            raise ValueError(f"data: expected an iterable of (images, token_ids) batches or a callable returning "
                             f"one, got {type(data).__name__}")
        self._restartable = self._factory or not isinstance(data, collections.abc.Iterator)
        self.epoch = 0
        self.ever_yielded = False
        self._epoch_yielded = False
        self._it = self._new_iterator()
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._count = 0

    def _new_iterator(self):
        return iter(self.data() if self._factory else self.data)

    def next(self):
        """The next batch, or None when the stream has ended."""
        while self._count < self.size:
            try:
                batch = next(self._it)
            except StopIteration:
                if not self._restartable or not self._epoch_yielded:
                    return None  # a one-shot iterator ended, or a whole epoch was empty
                self.epoch += 1
                self._epoch_yielded = False
                self._it = self._new_iterator()
                continue
            images, texts = _check_batch(batch)
            if images.shape[0] == 0:
                continue
            self._epoch_yielded = self.ever_yielded = True
            self._buffer.append((images, texts))
            self._count += images.shape[0]
        images = torch.cat([b[0] for b in self._buffer]) if len(self._buffer) > 1 else self._buffer[0][0]
        texts = torch.cat([b[1] for b in self._buffer]) if len(self._buffer) > 1 else self._buffer[0][1]
        self._buffer = [(images[self.size :], texts[self.size :])] if images.shape[0] > self.size else []
        self._count = images.shape[0] - self.size
        return images[: self.size], texts[: self.size]


# ---- checkpoints ----

def _scaler_state(scaler) -> dict | None:
    return {"scaler": scaler.state_dict()} if scaler is not None else None


def save_checkpoint(path: str, model: nn.Module, optimizer, scheduler, step: int, extra: dict | None = None) -> None:
    """Atomically writes {model, optimizer, scheduler, step, rng, extra} to `path`."""
    state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "rng": torch.get_rng_state(),
             "extra": extra or {}}
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, model: nn.Module, optimizer=None, scheduler=None, map_location="cpu") -> dict:
    """Loads a checkpoint written by save_checkpoint into model (and optimizer / scheduler)."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    _unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state


@dataclass
class TrainResult:
    """What train_clip returns: the last step, per-step losses (this run's), throughput."""

    step: int
    losses: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    samples_per_second: float = 0.0
    stopped_early: bool = False
    checkpoint: str | None = None


# ---- the recipe ----

def train_clip(model: nn.Module, data: Iterable | Callable[[], Iterable], *, scale: str = "tiny",
               steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
               warmup: int | None = None, accum_freq: int = 1, precision: str | None = None,
               checkpoint_dir: str | None = None, checkpoint_every: int | None = None, resume: bool = True,
               distributed: bool = False, device=None, progress: bool = True, log_every: int = 10,
               weight_decay: float | None = None, beta2: float | None = None, grad_clip_norm: float | None = None,
               loss: nn.Module | None = None) -> TrainResult:
    """Trains a CLIP-style model (forward(images, texts) -> (img, txt, logit_scale.exp())).

    Unset hyper-parameters come from SCALES[scale]. `precision`: "bf16" (autocast), "amp" (fp16
    autocast + GradScaler, DataComp's setting) or "fp32";
    default bf16 on CUDA and fp32 on CPU. Checkpoints (rank 0 writes `checkpoint_dir/latest.pt`
    every `checkpoint_every` steps, default steps // 5 like DataComp's 5 checkpoints, and at the
    end); with `resume` an existing checkpoint is loaded and training continues from its step.
    `data` is not rewound on resume: pass the stream that continues where the run stopped.
    A one-shot iterator that runs out stops training early (with a checkpoint and a warning).
    The model is trained in place; the result holds the per-step losses.
    """
    if scale not in SCALES:
        raise ValueError(f"scale: unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    preset = SCALES[scale]
    steps = preset["steps"] if steps is None else steps
    batch_size = preset["batch_size"] if batch_size is None else batch_size
    lr = preset["lr"] if lr is None else lr
    warmup = preset["warmup"] if warmup is None else warmup
    weight_decay = preset["weight_decay"] if weight_decay is None else weight_decay
    beta2 = preset["beta2"] if beta2 is None else beta2
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("warmup", warmup, 0),
                             ("accum_freq", accum_freq, 1), ("log_every", log_every, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    _logit_scale(model)
    if data is None:
        raise ValueError("data: expected an iterable of (images, token_ids) batches or a callable returning one")

    rank, world = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed: torch.distributed is not initialised (call init_process_group first)")
        rank, world = dist.get_rank(), dist.get_world_size()
    if device is None:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        else:
            device = torch.device("cpu")
    device = torch.device(device)
    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if batch_size % (world * accum_freq):
        raise ValueError(f"batch_size: global batch {batch_size} is not divisible by world_size {world} x "
                         f"accum_freq {accum_freq}")
    checkpoint_every = checkpoint_every or max(1, steps // 5)

    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(preset["beta1"], beta2),
                                  eps=preset["eps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, steps))
    scaler = torch.amp.GradScaler(device.type) if precision == "amp" else None
    start = 0
    path = None
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        path = os.path.join(checkpoint_dir, CHECKPOINT_NAME)
        if resume and os.path.exists(path):
            state = load_checkpoint(path, model, optimizer, scheduler, map_location=device)
            torch.set_rng_state(state["rng"])
            start = state["step"]
            if scaler is not None and "scaler" in state.get("extra", {}):
                scaler.load_state_dict(state["extra"]["scaler"])
    clamp_logit_scale(model)

    train_model = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = loss if loss is not None else ClipLoss(local_loss=True, gather_with_grad=True, rank=rank,
                                                     world_size=world)
    batches = _Rebatcher(data, batch_size // world)
    result = TrainResult(step=start, checkpoint=path)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc=f"train_clip[{scale}]", unit="step")
    losses = []
    t0, seen = time.perf_counter(), 0
    step = start
    try:
        while step < steps:
            batch = batches.next()
            if batch is None:
                if not batches.ever_yielded:
                    raise ValueError("data: the stream yielded no batches")
                result.stopped_early = True
                warnings.warn(f"train_clip: data ran out at step {step} of {steps}; stopping early", stacklevel=2)
                break
            images = batch[0].to(device, non_blocking=True)
            texts = batch[1].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            # scaler.scale of a one also initialises the scaler's state, which scaler.step expects.
            loss_scale = scaler.scale(torch.ones((), device=device)).item() if scaler is not None else 1.0
            value = contrastive_backward(train_model, images, texts, loss=loss_fn, accum_freq=accum_freq,
                                         precision=precision, world_size=world, loss_scale=loss_scale)
            if grad_clip_norm is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
            result.lr.append(optimizer.param_groups[0]["lr"])
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            with warnings.catch_warnings():
                # A step the scaler skipped (inf/NaN gradients) still advances the schedule, as in
                # open_clip; torch warns about that order.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
            clamp_logit_scale(model)
            step += 1
            losses.append(value)
            seen += images.shape[0] * world
            if path is not None and rank == 0 and step % checkpoint_every == 0 and step < steps:
                save_checkpoint(path, model, optimizer, scheduler, step, _scaler_state(scaler))
            if bar is not None:
                bar.update(1)
                if step % log_every == 0 or step == steps:
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{value.item():.4f}", samples_per_s=f"{rate:.1f}",
                                    lr=f"{result.lr[-1]:.2e}", scale=f"{_logit_scale(model).exp().item():.2f}")
    finally:
        if bar is not None:
            bar.close()
    result.step = step
    result.losses = [float(v) for v in losses]
    result.samples_per_second = seen / max(time.perf_counter() - t0, 1e-9)
    if path is not None and rank == 0 and step > start:
        save_checkpoint(path, model, optimizer, scheduler, step, _scaler_state(scaler))
    if distributed:
        dist.barrier()
    return result
