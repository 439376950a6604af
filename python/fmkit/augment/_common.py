"""What every fmkit.augment transform shares: input checks, per-sample random draws from a seed or a
torch.Generator, the Bernoulli(p) gate, and parameter replay.

Replay contract. A transform's random choices for one call are a `Params` dict of tensors whose
first dimension is the batch (per-sample) plus, for batch-level mixes, scalar entries. Calling
the transform again with `params=` the same dict skips every draw and reproduces the batch bitwise;
`select(params, idx)` slices the per-sample entries, so one sample run alone with its slice equals
its row of the batched output.
"""
from __future__ import annotations

import numbers

import torch

Params = dict  # str -> tensor ([B, ...] per sample, or 0-d for batch-level draws)


def generator_from(generator, device=None) -> torch.Generator | None:
    """A torch.Generator from an int seed (on `device`, default CPU), a Generator as is, or None (global RNG)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(f"generator: expected an int seed, a torch.Generator or None, got {type(generator).__name__}")
    g = torch.Generator(device=device or "cpu")
    g.manual_seed(int(generator))
    return g


def rand(shape, generator, device) -> torch.Tensor:
    """U[0, 1) float32 draws on the generator's device, moved to `device`."""
    where = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=where).to(device)


def uniform(shape, low, high, generator, device) -> torch.Tensor:
    return low + (high - low) * rand(shape, generator, device)


def randint(high: int, shape, generator, device) -> torch.Tensor:
    where = generator.device if generator is not None else "cpu"
    return torch.randint(high, shape, generator=generator, device=where).to(device)


def beta_draw(alpha: float, shape, generator, device) -> torch.Tensor:
    """Beta(alpha, alpha) draws as X / (X + Y), X, Y ~ Gamma(alpha).

    torch's Gamma sampler takes no generator, so it runs under a forked global RNG seeded by one
    draw from `generator`: the result still depends only on the generator's state.
    """
    seed = int(randint(2**62, (), generator, "cpu"))
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a = torch.full(shape, float(alpha), dtype=torch.float64)
        x, y = torch._standard_gamma(a), torch._standard_gamma(a)
    return (x / (x + y)).to(torch.float32).to(device)


def check_probability(p, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {p!r}")
    return float(p)


def check_positive(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v) > 0 or v != v or v == float("inf"):
        raise ValueError(f"{name}: expected a finite number > 0, got {v!r}")
    return float(v)


def check_images(images, name: str = "images", channels: int | None = 3, allow_nan: bool = False) -> torch.Tensor:
    """A [B, C, H, W] uint8 or floating tensor (float values are expected in [0, 1])."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D [B, C, H, W] tensor, got shape {list(images.shape)}")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels in dim 1, got shape {list(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        got = str(images.dtype).replace("torch.", "")
        raise TypeError(f"{name}: expected uint8 or floating-point pixels, got {got}")
    if not allow_nan and images.is_floating_point() and images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}: contains NaN or inf pixels")
    return images


def check_vector(v, name: str, B: int, device, dtype=torch.int64) -> torch.Tensor:
    """A length-B 1-D tensor (labels, domains, regions) on `device`."""
    if v is None:
        raise ValueError(f"{name}: required by this transform (a [{B}] tensor), got None")
    t = torch.as_tensor(v)
    if t.shape != (B,):
        raise ValueError(f"{name}: expected shape [{B}] (one per image), got {list(t.shape)}")
    if dtype == torch.int64 and (t.is_floating_point() or t.dtype == torch.bool or t.is_complex()):
        raise TypeError(f"{name}: expected integer ids, got {str(t.dtype).replace('torch.', '')}")
    return t.to(device=device, dtype=dtype)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Pixels as floats in [0, 1] (uint8 / 255; float32 stays float32, float64 stays float64)."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def like_input(x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] result back to images' dtype (uint8: round half to even)."""
    if images.dtype == torch.uint8:
        return torch.round(x.clamp(0, 1) * 255.0).to(torch.uint8)
    return x.to(images.dtype)


def gate(B: int, p: float, generator, device) -> torch.Tensor:
    """One Bernoulli(p) draw per example: whether the additional chain runs on it."""
    return rand((B,), generator, device) < p


def select(params: Params, idx) -> Params:
    """The per-sample entries of `params` at idx (a slice, index tensor or bool mask); 0-d entries as they are."""
    return {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in params.items()}


def check_params(params, keys, B: int, name: str = "params") -> Params:
    if not isinstance(params, dict):
        raise TypeError(f"{name}: expected the dict a previous call returned (return_params=True), got "
                        f"{type(params).__name__}")
    missing = [k for k in keys if k not in params]
    if missing:
        raise ValueError(f"{name}: missing entries {missing}; pass the dict this transform returned")
    for k in keys:
        v = params[k]
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] != B:
            raise ValueError(f"{name}[{k!r}]: drawn for a batch of {v.shape[0]}, got a batch of {B}")
    return params
