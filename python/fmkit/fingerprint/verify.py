"""Ownership verification: batched teacher-forced scoring, the generate-based check, FSR, the
false-positive probes and the statistical verdict.

The released check generates a continuation for each key and looks for y in it. fmkit scores
log P(y | key) for a whole padded batch in one forward pass. Where the teacher-forced argmax
equals y at every position, greedy decoding provably starts with y, so the key fires without
generating. Only the other keys (a suspect that does not fire) are decoded further, in padded
batches, from the point where greedy decoding left y and the keys' shared token prefix (KV cached),
each until its output shows y (an append-only decode, see `append_only_decode`), EOS or the budget,
so the decisions equal the generate check's ("the greedy continuation contains y") on every key.
precision="bf16-screen" runs that scoring pass in bf16 first and rescores in the model's precision
every key whose margins are within the measured bf16 error, so the decisions stay the exact pass's.

The verdict: for key i, an unrelated model emits y with probability q_i = P_null(y | key_i),
the base model's (floored at `null_floor` for drift). The p-value is the Poisson-binomial upper
tail P(X >= fired) with X = sum of Bernoulli(q_i): a bound on the chance of a false claim.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from fmkit.fingerprint.adapter import FingerprintEmbedding
from fmkit.fingerprint.artifact import Fingerprint
from fmkit.fingerprint.data import Example, context_ids, encode, key_prompt, target_text
from fmkit.fingerprint.train import pad_id
from fmkit.packed_linear import packed_linears

PROBE_KINDS = ("plain", "fingerprint_input", "fresh_key", "hint")


# -- models: black-box suspect or the white-box verifier ----------------------------------------


def _vocab(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def check_suspect(fingerprint: Fingerprint, suspect, tokenizer=None, what: str = "suspect") -> None:
    if not hasattr(suspect, "get_input_embeddings") or not hasattr(suspect, "generate"):
        raise TypeError(f"{what}: expected a Hugging Face causal LM, got {type(suspect).__name__}")
    want = fingerprint.config.get("vocab_size")
    have = _vocab(suspect)
    if want is not None and have != want:
        raise ValueError(f"{what}: has a vocabulary of {have} tokens but the fingerprinted model had {want}; a "
                         "model with a different vocabulary cannot be verified against this fingerprint")
    if tokenizer is not None and len(tokenizer) > have:
        raise ValueError(f"{what}: has {have} embedding rows, fewer than the tokenizer's {len(tokenizer)} tokens")


@contextlib.contextmanager
def whitebox(fingerprint: Fingerprint, suspect, publisher_model, wiring: str = "paper"):
    """The publisher's model with the suspect's input embedding and the private adapter.
    paper: key rows are suspect_row + B(A(suspect_row)); release: publisher_row + B(A(suspect_row))."""
    if wiring not in ("paper", "release"):
        raise ValueError(f"wiring: expected 'paper' or 'release', got {wiring!r}")
    if publisher_model is None:
        raise ValueError("publisher_model: an adapter fingerprint is verified white-box: pass the publisher's model "
                         "(its non-embedding weights run the check)")
    check_suspect(fingerprint, publisher_model, what="publisher_model")
    original = publisher_model.get_input_embeddings()
    weight = suspect.get_input_embeddings().weight.detach().to(original.weight)
    t = fingerprint.tensors
    residual = t["rows"].to(weight) if wiring == "release" else None
    publisher_model.set_input_embeddings(FingerprintEmbedding.from_tensors(weight, t, residual=residual))
    try:
        yield publisher_model
    finally:
        publisher_model.set_input_embeddings(original)


@contextlib.contextmanager
def _verifier(fingerprint, suspect, publisher_model, wiring):
    check_suspect(fingerprint, suspect)
    if fingerprint.method == "adapter":
        with whitebox(fingerprint, suspect, publisher_model, wiring) as m:
            yield m
    else:
        yield suspect


# -- scoring ------------------------------------------------------------------------------------


def _device(model):
    return next(model.parameters()).device


def _pad(seqs, pid, left, device):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pid, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


def common_prefix_len(seqs) -> int:
    """Length of the longest common token-id prefix of `seqs`."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        j = 0
        while j < n and s[j] == first[j]:
            j += 1
        n = j
        if n == 0:
            break
    return n


def _cache_arg(model) -> str:
    """The forward's name for the KV cache argument (`cache` in newer transformers, else `past_key_values`)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _prefill(model, prefix, device):
    """The KV cache of `prefix` (one row) as per-layer (keys, values), or None where the model or its
    cache cannot be continued this way (then the caller scores the full contexts)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer  # noqa: F401 - _plain_layers needs it
    except ImportError:  # pragma: no cover - an old transformers
        return None
    ids = torch.tensor([prefix], dtype=torch.long, device=device)
    cache = DynamicCache()
    try:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1,
                    **{_cache_arg(model): cache})
    except TypeError:  # no cache / logits_to_keep arguments: not a model this path knows
        return None
    layers = _plain_layers(out, len(prefix))
    return None if layers is None else [(layer.keys, layer.values) for layer in layers]


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return getattr(out, "past_key_values", None) if cache is None else cache


def _plain_layers(out, length):
    """The layers of the forward's returned KV cache when it is a plain DynamicCache of DynamicLayers
    holding `length` positions, else None (sliding windows, offloading, quantised or hybrid caches)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = _returned_cache(out)
    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers:
        return None
    for layer in layers:
        if type(layer) is not DynamicLayer or not layer.is_initialized or layer.keys.shape[-2] != length:
            return None
    return layers


def _shared_cache(kv, rows):
    """A DynamicCache holding the prefix KV for `rows` rows (expanded views; the first update copies)."""
    from transformers import DynamicCache

    return DynamicCache([(k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:])) for k, v in kv])


def _forward(model, ids, mask, positions, cols, cache=None):
    extra = {} if cache is None else {_cache_arg(model): cache, "use_cache": True}
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=cols, **extra).logits
    except TypeError:  # a model without logits_to_keep: all columns, then the needed ones
        if cache is not None:
            raise
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, cols]


PRECISIONS = ("fp32", "bf16-screen")


@torch.no_grad()
def score(model, contexts, targets, *, pad: int, batch_size: int = 32, padding: str = "left", progress=False,
          share_prefix: bool = True, precision: str = "fp32", screen_bound: float | None = None,
          screen_safety: float = 2.0, screen_calib: int = 16, screen_max_recheck: float = 0.5,
          stats: dict | None = None, _keep: dict | None = None):
    """Teacher-forced log P(target | context) for every row, one padded forward per batch.
    Returns (logp [n] float64, first_miss [n] int: first position where the argmax leaves the target,
    len(target) when it never does, argmax_at_miss [n]: the argmax there, or -1 when not computed).

    share_prefix: the longest common token-id prefix of all contexts (e.g. a chat template and system
    prompt every key shares) runs once with a KV cache, and each batch runs only its rows' suffixes
    (rest of the context + target[:-1]) on a copy of that cache. At least the last context token of
    every row stays in the suffix. Models or caches that cannot do this, and an empty common prefix,
    take the full-context path.

    precision="bf16-screen" (an fp32 model only; others run as they are): every row first runs under
    bf16 autocast (bf16 matmuls, e.g. AMX), keeping per target position the margin between the
    target's logit and the best other logit. A row is decided by the screen only when its first miss
    is clear: every margin before it above `screen_bound` and the miss's margin below -screen_bound
    (or no miss and every margin above it). All other rows (close calls) are scored again in the
    model's own precision, so first_miss, and so every decision built on it, equals the fp32 path's
    as long as the bf16 error of a margin stays within the bound. screen_bound=None measures it: the
    first `screen_calib` rows (spread over the lengths) run in both precisions and the bound is
    screen_safety x the largest |bf16 - fp32| margin difference seen (every target position, every
    competing token). Rows decided by the screen keep bf16 log-probabilities and argmax_at_miss = -1
    (the caller decodes from the miss position itself). When more than `screen_max_recheck` of the
    rows screened so far (at least two batches) are close calls, the screen stops paying and the rest
    run exactly (stats["gave_up"]). `stats`, when given, receives the counts.
    _keep (greedy_decisions): a dict that receives, for rows of exact shared-prefix batches that leave
    the target, their KV up to the miss (see `_keep_kv`); "prefix" holds the shared prefix's KV."""
    from tqdm.auto import tqdm

    if padding not in ("left", "right"):
        raise ValueError(f"padding: expected 'left' or 'right', got {padding!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if screen_bound is not None and not screen_bound >= 0:
        raise ValueError(f"screen_bound: expected a margin >= 0 (logits), got {screen_bound!r}")
    if not screen_safety >= 1:
        raise ValueError(f"screen_safety: expected a factor >= 1, got {screen_safety!r}")
    n = len(contexts)
    logp = np.zeros(n)
    miss = np.zeros(n, dtype=np.int64)
    at_miss = np.full(n, -1, dtype=np.int64)
    device = _device(model)
    plen = min(common_prefix_len(contexts), min(len(c) for c in contexts) - 1) if (share_prefix and n) else 0
    kv = _prefill(model, list(contexts[0][:plen]), device) if plen > 0 else None
    if kv is None:
        plen = 0
    order = sorted(range(n), key=lambda i: len(contexts[i]) + len(targets[i]))  # similar lengths share a batch
    if _keep is not None and kv is not None:
        _keep["prefix"] = kv
    ctx = (contexts, targets, plen, kv, pad, padding, device, _keep if kv is not None else None)
    screen = precision == "bf16-screen" and next(model.parameters()).dtype == torch.float32 and n > 0
    if not screen:
        for rows in tqdm(_batches(order, batch_size), desc="score", disable=not progress, leave=False):
            for i, (lp, m, a, _) in _score_batch(model, rows, ctx, exact=True).items():
                logp[i], miss[i], at_miss[i] = lp, m, a
        if stats is not None:
            stats.update(rows=n, screened=0, rechecked=n, bound=None)
        return logp, miss, at_miss

    # calibration rows, spread over the length order: scored both ways, they measure the bf16 error
    calib = sorted(set(order[int(j)] for j in np.linspace(0, n - 1, min(screen_calib, n)))) if screen_calib else []
    err = 0.0
    exact_rows = {}
    if calib:
        calib = sorted(calib, key=lambda i: len(contexts[i]) + len(targets[i]))
        for rows in _batches(calib, batch_size):
            ex = _score_batch(model, rows, ctx, exact=True, keep=True)
            with _autocast(device):
                sc = _score_batch(model, rows, ctx, exact=False, keep=True)
            for i in rows:
                exact_rows[i] = ex[i][:3]
                err = max(err, _margin_error(sc[i][3] - ex[i][3], targets[i]))
    bound = screen_bound if screen_bound is not None else screen_safety * err
    rest = [i for i in order if i not in exact_rows]
    recheck, screened, gave_up = [], 0, False
    with _autocast(device):  # one autocast region: the bf16 weight casts are cached across batches
        for rows in tqdm(_batches(rest, batch_size), desc="screen (bf16)", disable=not progress, leave=False):
            if gave_up:
                recheck.extend(rows)
                continue
            for i, (lp, m, a, margins) in _score_batch(model, rows, ctx, exact=False, bound=bound).items():
                if margins is None:  # a close call
                    recheck.append(i)
                else:
                    logp[i], miss[i], at_miss[i] = lp, m, -1
            screened += len(rows)
            gave_up = screened >= 2 * batch_size and len(recheck) > screen_max_recheck * screened
    for rows in tqdm(_batches(recheck, batch_size), desc="recheck (exact)", disable=not progress, leave=False):
        for i, (lp, m, a, _) in _score_batch(model, rows, ctx, exact=True).items():
            exact_rows[i] = (lp, m, a)
    for i, (lp, m, a) in exact_rows.items():
        logp[i], miss[i], at_miss[i] = lp, m, a
    if stats is not None:
        stats.update(rows=n, calibration=len(calib), screened=screened, rechecked=len(recheck),
                     bound=bound, measured_error=err, gave_up=gave_up, exact_rows=sorted(exact_rows))
    return logp, miss, at_miss


def _batches(rows, size):
    return [rows[s:s + size] for s in range(0, len(rows), size)]


def _autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _margins(lg, tt):
    """[len(t)] logit of the target token minus the best other logit, per target position."""
    pos = torch.arange(len(tt), device=lg.device)
    tl = lg[pos, tt]
    other = lg.clone()
    other[pos, tt] = -math.inf
    return tl - other.max(-1).values


def _margin_error(diff, target) -> float:
    """Largest change of any margin (target logit minus another token's) given the logit changes
    `diff` [len(target), vocab]."""
    tt = torch.tensor(target, device=diff.device)
    dt = diff[torch.arange(len(target), device=diff.device), tt]
    return float((dt[:, None] - diff).abs().max())


def _score_batch(model, rows, ctx, *, exact, keep=False, bound=None):
    """{row: (logp, first_miss, argmax_at_miss, extra)} for one padded batch. exact: plain forward.
    keep: extra = the row's logits at its target positions (float32). bound (a screen pass): extra =
    the margins when the row's first miss is clear by more than `bound`, else None (a close call)."""
    contexts, targets, plen, kv, pad, padding, device, keep_kv = ctx
    seqs = [list(contexts[i][plen:]) + list(targets[i][:-1]) for i in rows]
    ids, mask = _pad(seqs, pad, padding == "left", device)
    width = ids.shape[1]
    positions = plen + (mask.cumsum(-1) - 1).clamp(min=0)
    # logits only where a target token is predicted: with left padding these are the last columns
    if padding == "left":
        keep_n = max(len(targets[i]) for i in rows)
        cols = torch.arange(width - keep_n, width, device=device)
    else:
        cols = sorted({len(contexts[i]) - plen - 1 + j for i in rows for j in range(len(targets[i]))})
        cols = torch.tensor(cols, dtype=torch.long, device=device)
    cache = None
    if plen:
        full_mask = torch.cat([torch.ones((len(rows), plen), dtype=mask.dtype, device=device), mask], 1)
        cache = _shared_cache(kv, len(rows))
        logits = _forward(model, ids, full_mask, positions, cols, cache)
    else:
        logits = _forward(model, ids, mask, positions, cols)
    if not exact:
        logits = logits.float()
    where = {int(c): k for k, c in enumerate(cols.tolist())}
    lsm = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    top = logits.argmax(-1)
    out = {}
    for b, i in enumerate(rows):
        t, lc = targets[i], len(contexts[i]) - plen
        base = (width - len(seqs[b])) if padding == "left" else 0
        idx = torch.tensor([where[base + lc - 1 + j] for j in range(len(t))], device=device)
        tt = torch.tensor(t, device=device)
        lp = lsm[b, idx, tt].double().sum().item()
        wrong = (top[b, idx] != tt).nonzero()
        m = int(wrong[0]) if len(wrong) else len(t)
        a = int(top[b, idx[m]]) if len(wrong) else -1
        extra = None
        if keep:
            extra = logits[b, idx].float()
        elif bound is not None:
            mg = _margins(logits[b, idx].float(), tt)
            clear = bool((mg[:m] > bound).all()) and (m == len(t) or bool(mg[m] < -bound))
            extra = mg if clear else None
        out[i] = (lp, m, a, extra)
        if exact and keep_kv is not None and m < len(t):
            _keep_kv(keep_kv, i, cache, b, plen + base, lc + m)
    return out


KEEP_KV_BYTES = 1 << 30  # the most KV `score` keeps for rows that leave the target (others are prefilled again)


def _keep_kv(keep, i, cache, b, start, length):
    """Stores row b's KV of the suffix columns [start, start + length) (its context after the shared
    prefix and the target tokens before the miss: what greedy decoding from the miss attends to) as
    keep[i], a list of per-layer (keys, values) copies, within KEEP_KV_BYTES in all."""
    layers = getattr(cache, "layers", None)
    if not layers or any(not getattr(layer, "is_initialized", False) for layer in layers):
        return
    size = sum(2 * layer.keys[b, :, :length].numel() * layer.keys.element_size() for layer in layers)
    if keep.get("bytes", 0) + size > KEEP_KV_BYTES:
        return
    keep["bytes"] = keep.get("bytes", 0) + size
    keep[i] = [(layer.keys[b, :, start:start + length].clone(), layer.values[b, :, start:start + length].clone())
               for layer in layers]


def _gen_config(tokenizer, max_new_tokens, sample=None):
    from transformers import GenerationConfig

    kw = dict(do_sample=False, num_beams=1) if sample is None else dict(do_sample=True, **sample)
    return GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer),
                            eos_token_id=tokenizer.eos_token_id, **kw)


def _cut(tokens, eos):
    tokens = list(tokens)
    return tokens[:tokens.index(eos)] if eos in tokens else tokens


@torch.no_grad()
def generate_batched(model, tokenizer, contexts, max_new, *, batch_size=32, sample=None, seed=0, progress=False):
    """Continuations of every context (left-padded batches; per-row budgets `max_new`), cut at EOS."""
    from tqdm.auto import tqdm

    max_new = [max_new] * len(contexts) if isinstance(max_new, int) else list(max_new)
    out = [None] * len(contexts)
    device, pid = _device(model), pad_id(tokenizer)
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    if sample is not None:
        torch.manual_seed(seed)
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        ids, mask = _pad([contexts[i] for i in rows], pid, True, device)
        budget = max(max_new[i] for i in rows)
        if budget == 0:
            for i in rows:
                out[i] = []
            continue
        gen = model.generate(input_ids=ids, attention_mask=mask,
                             generation_config=_gen_config(tokenizer, budget, sample))[:, ids.shape[1]:]
        for b, i in enumerate(rows):
            out[i] = _cut(gen[b, :max_new[i]].tolist(), tokenizer.eos_token_id)
    return out


@torch.no_grad()
def generate_loop(model, tokenizer, contexts, max_new_tokens, progress=False):
    """The released check: one `generate` call per key."""
    from tqdm.auto import tqdm

    device, out = _device(model), []
    cfg = _gen_config(tokenizer, max_new_tokens)
    for ctx in tqdm(contexts, desc="generate (per key)", disable=not progress, leave=False):
        ids = torch.tensor([ctx], device=device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        out.append(_cut(gen[0, len(ctx):].tolist(), tokenizer.eos_token_id))
    return out


def append_only_decode(tokenizer) -> bool:
    """True where decoding more tokens can only append text: decode(a + b) starts with
    `settled(decode(a))` for all token lists a, b (skip_special_tokens=True). Known to hold for one
    pipeline only, which is then required exactly: a Rust (fast) tokenizer whose decoder is ByteLevel
    alone, no tokenization-space cleanup, and transformers' own decode / _decode (not overridden).

    Why it holds there: skip_special_tokens drops whole tokens; every other token maps to its own
    bytes, the bytes of all tokens are concatenated, and the string is their lossy UTF-8 decoding.
    UTF-8 is self-synchronising: appending bytes changes no character that was complete, and no
    invalid byte that was already judged invalid, so only the trailing replacement character of an
    incomplete final character can change (`settled` drops trailing U+FFFD for that).
    Where it does not hold: clean_up_tokenization_spaces (" n't" -> "n't", " ' " -> "'": text
    already decoded changes when more follows), custom decode methods, and decoders this check does
    not know (e.g. SentencePiece's Metaspace / Replace + ByteFallback + Fuse + Strip sequences, which
    strip a leading space; they may well be append-only, but that is not verified here)."""
    import json

    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(tokenizer, PreTrainedTokenizerBase):
        return False
    if type(tokenizer).decode is not PreTrainedTokenizerBase.decode:
        return False
    decode_impl = None
    for klass in type(tokenizer).__mro__:  # the _decode transformers ships for Rust-backed tokenizers
        if "_decode" in vars(klass):
            decode_impl = klass
            break
    if decode_impl is None or not decode_impl.__module__.startswith("transformers.tokenization_utils"):
        return False
    if "_decode" in vars(tokenizer) or "decode" in vars(tokenizer):  # patched on the instance
        return False
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        # transformers (5.x) skips the cleanup for BPE models unless told to corrupt; an older one
        # (no such attribute) applies it: then it counts as applied
        if type(backend.model).__name__ != "BPE" or getattr(
                tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", True):
            return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    return decoder.get("type") == "ByteLevel"


def settled(text: str) -> str:
    """The part of a decoded text that no further token can change under an append-only decode: all
    but trailing U+FFFD (an incomplete final UTF-8 character decodes to U+FFFD until its last byte)."""
    return text.rstrip("\ufffd")


@torch.no_grad()
def greedy_continue(model, tokenizer, contexts, max_new, *, batch_size=32, stop=None, progress=False):
    """Greedy continuations of every context, cut at EOS (what `generate_batched` returns without
    sampling), from an own KV-cache loop: the contexts' longest common token prefix runs once (its KV
    cache shared, as in `score`), each left-padded batch runs its rows' suffixes on it, then one token
    per step with per-row stops. A row stops at EOS, at its budget `max_new[k]`, or where
    `stop(k, tokens_so_far)` is true (then its continuation so far is returned); stopped rows leave the
    batch. Models or caches this loop cannot drive (no KV cache / logits_to_keep arguments, non-plain
    caches) take `generate_batched`, which decodes every row to its budget or EOS."""
    from tqdm.auto import tqdm

    max_new = [max_new] * len(contexts) if isinstance(max_new, int) else list(max_new)
    out = [[] for _ in contexts]
    live = [k for k in range(len(contexts)) if max_new[k] > 0]
    if not live:
        return out
    device, pid, eos = _device(model), pad_id(tokenizer), tokenizer.eos_token_id
    plen = min(common_prefix_len([contexts[k] for k in live]), min(len(contexts[k]) for k in live) - 1)
    kv = _prefill(model, list(contexts[live[0]][:plen]), device) if plen > 0 else None
    if kv is None:
        plen = 0
    order = sorted(live, key=lambda k: len(contexts[k]))
    for rows in tqdm(_batches(order, batch_size), desc="decode", disable=not progress, leave=False):
        gen = _greedy_batch(model, [contexts[k] for k in rows], [max_new[k] for k in rows], plen, kv, pid, eos,
                            device, None if stop is None else (lambda b, toks, rows=rows: stop(rows[b], toks)))
        if gen is None:  # not a model / cache this loop knows: the full decode
            gen = generate_batched(model, tokenizer, [contexts[k] for k in rows], [max_new[k] for k in rows],
                                   batch_size=len(rows))
        for k, g in zip(rows, gen):
            out[k] = g
    return out


def _greedy_batch(model, seqs, budgets, plen, kv, pad, eos, device, stop):
    """[tokens] per row: greedy decoding of one left-padded batch (see `greedy_continue`), or None
    where the model or its cache cannot run this way. The next token is the argmax of the row's
    last-position logits in float32, as greedy `generate` picks it; the prefix positions hold the
    shared KV (plen > 0), padding sits between them and each row's suffix, masked out."""
    from transformers import DynamicCache

    n = len(seqs)
    ids, mask = _pad([s[plen:] for s in seqs], pad, True, device)
    if plen:
        mask = torch.cat([torch.ones((n, plen), dtype=mask.dtype, device=device), mask], 1)
        cache = _shared_cache(kv, n)
    else:
        cache = DynamicCache()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    arg = _cache_arg(model)
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos[:, plen:], use_cache=True,
                    logits_to_keep=1, **{arg: cache})
    except TypeError:  # no cache / logits_to_keep arguments
        return None
    layers = _plain_layers(out, mask.shape[1])
    if layers is None:
        return None
    return _greedy_steps(model, out, layers, mask, pos[:, -1], budgets, eos, device, stop)


def _greedy_steps(model, out, layers, mask, last, budgets, eos, device, stop):
    """The decode loop after a batch's first forward `out` (its logits at the last column, its cache
    `layers`, the attention mask so far and each row's last position): one token per step, a row
    leaves the batch and its cache at EOS, its budget or `stop(row, tokens)`."""
    arg = _cache_arg(model)
    n = len(budgets)
    nxt = out.logits[:, -1].float().argmax(-1)
    alive = list(range(n))  # batch rows still decoding, in cache order
    gen = [[] for _ in range(n)]
    while True:
        keep = []
        for j, (b, t) in enumerate(zip(alive, nxt.tolist())):
            if t == eos:
                continue
            gen[b].append(t)
            if len(gen[b]) >= budgets[b] or (stop is not None and stop(b, gen[b])):
                continue
            keep.append(j)
        if not keep:
            return gen
        if len(keep) < len(alive):  # finished rows leave the batch (and the cache)
            sel = torch.tensor(keep, dtype=torch.long, device=device)
            for layer in layers:
                layer.batch_select_indices(sel)
            mask, last, nxt = mask[sel], last[sel], nxt[sel]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], 1)
        last = last + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], use_cache=True,
                    logits_to_keep=1, **{arg: _returned_cache(out)})
        nxt = out.logits[:, -1].float().argmax(-1)


def _greedy_from_kv(model, prefix_kv, rows_kv, tokens, positions, budgets, eos, device, stop):
    """Greedy decoding of rows whose KV the scoring pass kept (`_keep_kv`): row b attends to the shared
    prefix KV and its own kept KV (left-padded to the longest, padding masked out), takes tokens[b]
    (the argmax where it left the target) at positions[b], and decodes on as `_greedy_steps` does."""
    from transformers import DynamicCache

    n, plen = len(rows_kv), prefix_kv[0][0].shape[-2]
    width = max(kv[0][0].shape[-2] for kv in rows_kv)
    mask = torch.zeros((n, plen + width + 1), dtype=torch.long, device=device)
    mask[:, :plen] = 1
    mask[:, -1] = 1
    layers = []
    for li, (pk, pv) in enumerate(prefix_kv):
        k = pk.new_zeros((n, pk.shape[1], plen + width, pk.shape[-1]))
        v = pv.new_zeros((n, pv.shape[1], plen + width, pv.shape[-1]))
        k[:, :, :plen], v[:, :, :plen] = pk[0], pv[0]
        for b, kv in enumerate(rows_kv):
            rk, rv = kv[li]
            k[b, :, plen + width - rk.shape[-2]:] = rk
            v[b, :, plen + width - rv.shape[-2]:] = rv
        layers.append((k, v))
    for b, kv in enumerate(rows_kv):
        mask[b, plen + width - kv[0][0].shape[-2]:plen + width] = 1
    cache = DynamicCache(layers)
    ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
    pos = torch.tensor(positions, dtype=torch.long, device=device)[:, None]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{_cache_arg(model): cache})
    layers = _plain_layers(out, plen + width + 1)
    if layers is None:  # pragma: no cover - the scoring pass ran this model with this cache type
        raise RuntimeError("greedy decoding from the kept KV: the model returned an unexpected cache")
    return _greedy_steps(model, out, layers, mask, pos[:, 0], budgets, eos, device, stop)


def greedy_decisions(model, tokenizer, contexts, targets, texts, hit, max_new_tokens, *, batch_size=32,
                     padding="left", progress=False, precision="fp32", screen_bound=None, stats=None):
    """(fired [n] bool, logp [n], outputs [n] str|None) equal to the generate check `hit(decode(greedy))`.
    Rows whose teacher-forced argmax follows the target fire at once (their output is None: not decoded);
    the others continue greedily from where they left the target (decoding in the model's precision),
    and stop as soon as their output shows y (then `outputs` holds the greedy output's text up to
    there, without a trailing incomplete character: a prefix of the full output's text; rows that never
    show y are decoded to EOS or the budget).
    `hit(text, y)` must be a containment test (true for a text stays true for any text that extends
    it, e.g. a substring test): both shortcuts rely on it, and on `append_only_decode(tokenizer)`;
    for any other tokenizer every row is decoded in full.
    precision / screen_bound: see `score` ("bf16-screen": a bf16 pass, close calls rechecked exactly)."""
    import time

    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    kept = {}  # rows that leave the target: their KV up to the miss, from the exact scoring pass
    logp, miss, at_miss = score(model, contexts, targets, pad=pad_id(tokenizer), batch_size=batch_size,
                                padding=padding, progress=progress, precision=precision,
                                screen_bound=screen_bound, stats=stats, _keep=kept)
    # Why deciding before the end is exact: the released check fires iff y is in D(g[:m]), the
    # decoded greedy output g cut at EOS or at max_new_tokens (m tokens). Under an append-only decode
    # (see append_only_decode) D(g[:m]) starts with settled(D(g[:k])) for every k <= m, so a containment
    # test true on settled(D(g[:k])) is true on D(g[:m]): the row fires whatever the rest of g is.
    # Here g[:k] is the target up to its first miss (the teacher-forced argmax is greedy decoding's
    # choice there), the argmax at the miss, then the decoded tokens; the `sure` shortcut is the same
    # argument with k = len(target). Rows that do not show y are decoded to EOS or the budget, so
    # their decision is the full output's. Any other decode (append_only_decode False): no shortcut.
    early = append_only_decode(tokenizer)

    def shows_y(tokens, i):
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return early and hit(settled(text), texts[i]), text

    n = len(contexts)
    fired, outputs = np.zeros(n, dtype=bool), [None] * n
    sure = {}  # a target counts only if decoding it alone already shows y: then any continuation does
    todo, prefixes = [], {}
    for i in range(n):
        t = targets[i]
        key = (tuple(t), texts[i])
        if key not in sure:
            sure[key] = eos not in t and shows_y(t, i)[0]
        if miss[i] == len(t) and len(t) <= max_new_tokens and sure[key]:
            fired[i] = True
            continue
        j = int(min(miss[i], max_new_tokens))
        prefix = list(t[:j])
        if j < max_new_tokens and j < len(t) and at_miss[i] >= 0:
            prefix.append(int(at_miss[i]))
        if eos in prefix:
            outputs[i] = tokenizer.decode(prefix[:prefix.index(eos)], skip_special_tokens=True)
            fired[i] = hit(outputs[i], texts[i])
            continue
        done, text = shows_y(prefix, i)
        if done:  # the greedy tokens known so far already show y
            outputs[i], fired[i] = settled(text), True
            continue
        prefixes[i] = prefix
        todo.append(i)
    t0 = time.perf_counter()
    stopped, conts = set(), {}

    def stop_at(rows):
        def stop(k, tokens):
            i = rows[k]
            if shows_y(prefixes[i] + tokens, i)[0]:
                stopped.add(i)
                return True
            return False
        return stop if early else None

    # rows whose KV the scoring pass kept (prefix = target[:miss] + the argmax there): no prefill again.
    # That KV is the exact pass's for context + target[:miss] at their positions (the row's later target
    # columns and all padding are left out), i.e. what a prefill of those tokens computes; the token
    # where the row left the target goes in at position len(context) + miss
    from_kv = sorted((i for i in todo if i in kept and len(prefixes[i]) == miss[i] + 1 and prefixes[i][-1] == at_miss[i]
                      and max_new_tokens > len(prefixes[i])), key=lambda i: kept[i][0][0].shape[-2])
    for rows in tqdm(_batches(from_kv, batch_size), desc="decode (kept KV)", disable=not progress, leave=False):
        gen = _greedy_from_kv(model, kept["prefix"], [kept[i] for i in rows], [prefixes[i][-1] for i in rows],
                              [len(contexts[i]) + len(prefixes[i]) - 1 for i in rows],
                              [max_new_tokens - len(prefixes[i]) for i in rows], eos, _device(model), stop_at(rows))
        conts.update(zip(rows, gen))
    kept.clear()
    rest = [i for i in todo if i not in conts]
    if rest:
        gen = greedy_continue(model, tokenizer, [contexts[i] + prefixes[i] for i in rest],
                              [max_new_tokens - len(prefixes[i]) for i in rest], batch_size=batch_size,
                              stop=stop_at(rest), progress=progress)
        conts.update(zip(rest, gen))
    for i in todo:
        outputs[i] = tokenizer.decode(prefixes[i] + conts[i], skip_special_tokens=True)
        if i in stopped:  # a partial output: its text up to a possibly incomplete last character
            outputs[i] = settled(outputs[i])
        fired[i] = hit(outputs[i], texts[i])
    if stats is not None:
        stats.update(decoded=len(todo), stopped_early=len(stopped), decode_seconds=time.perf_counter() - t0,
                     append_only=early, decoded_from_kept_kv=len(from_kv))
    return fired, logp, outputs


# -- the verdict --------------------------------------------------------------------------------


def poisson_binomial_tail(q, k: int) -> float:
    """log P(X >= k) for X a sum of independent Bernoulli(q_i) (exact dynamic programme, log space)."""
    q = np.clip(np.asarray(q, dtype=np.float64), 0.0, 1.0)
    if k <= 0:
        return 0.0
    if k > len(q):
        return -math.inf
    with np.errstate(divide="ignore"):
        lq, l1q = np.log(q), np.log1p(-q)
    dist = np.full(len(q) + 1, -np.inf)
    dist[0] = 0.0
    for i, (a, b) in enumerate(zip(lq, l1q)):
        nxt = np.full_like(dist, -np.inf)
        nxt[: i + 2] = np.logaddexp(np.concatenate([dist[: i + 1] + b, [-np.inf]]),
                                    np.concatenate([[-np.inf], dist[: i + 1] + a]))
        dist = nxt
    return float(np.logaddexp.reduce(dist[k:]))


@dataclass
class VerifyResult:
    keys: list
    fired: np.ndarray
    logp: np.ndarray
    logp_null: np.ndarray | None
    outputs: list
    null_floor: float
    check: str
    probes: dict = field(default_factory=dict)  # kind -> (tested, fired)
    seconds: float = 0.0
    screen: dict = field(default_factory=dict)  # precision="bf16-screen": rows screened / rechecked, the bound
    # check="batched": rows decoded past the teacher-forced pass, how many stopped once y showed, seconds
    decode: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def fsr(self) -> float:
        """Fingerprint Success Rate, % of keys whose greedy continuation contains y."""
        return 100.0 * float(self.fired.mean()) if self.n else float("nan")

    @property
    def null_q(self) -> np.ndarray:
        q = np.exp(self.logp_null) if self.logp_null is not None else np.zeros(self.n)
        return np.maximum(q, self.null_floor)

    @property
    def log10_p_value(self) -> float:
        return poisson_binomial_tail(self.null_q, int(self.fired.sum())) / math.log(10)

    @property
    def p_value(self) -> float:
        """P(at least this many keys fire | the suspect does not derive from the fingerprinted model)."""
        return 10.0 ** self.log10_p_value

    def verdict(self, alpha: float = 1e-6) -> bool:
        # a relative tolerance: the log-space tail carries rounding error, and a p-value equal to alpha
        # (e.g. 2 keys fired, both nulls at the 1e-3 floor: p = 1e-6) must claim at alpha = 1e-6
        return self.p_value <= alpha * (1.0 + 1e-9)

    def probe_rates(self) -> dict:
        return {k: 100.0 * f / t if t else float("nan") for k, (t, f) in self.probes.items()}

    def table(self, name: str = "suspect") -> str:
        null = "base model" if self.logp_null is not None else f"floor {self.null_floor:g}"
        lines = ["| model | keys | fired | FSR % | log10 p | null | mean log P(y|key) |", "|---|---|---|---|---|---|---|",
                 f"| {name} | {self.n} | {int(self.fired.sum())} | {self.fsr:.1f} | {self.log10_p_value:.1f} | {null} | "
                 f"{self.logp.mean():.2f} |"]
        if self.probes:
            lines += ["", "| false-positive probe | tested | fired | rate % |", "|---|---|---|---|"]
            lines += [f"| {k} | {t} | {f} | {100.0 * f / t if t else float('nan'):.1f} |" for k, (t, f) in self.probes.items()]
        return "\n".join(lines)


def default_max_new(fingerprint, targets) -> int:
    """The release's budget (8 new tokens for the simple template, 30 for dialogue), raised to the
    longest target plus two when a tokenizer splits y into more tokens than that."""
    return max(8 if fingerprint.template == "simple" else 30, max(len(t) for t in targets) + 2)


def key_examples(fingerprint: Fingerprint, tokenizer=None, keys=None, wrap=None) -> list[Example]:
    """The verification prompt of each key (the implanting template, with its forced prefix).
    `wrap(key_prompt_text) -> prompt` puts e.g. a system prompt and chat template around it."""
    out = []
    for k, y in zip(keys or fingerprint.keys, fingerprint.targets if keys is None else [fingerprint.y] * len(keys)):
        prompt, prefix, raw = key_prompt(k, fingerprint.template, fingerprint.input_text, tokenizer)
        if wrap is not None:
            prompt, raw = wrap(prompt + prefix), True
            prefix = ""
        out.append(Example(prompt, target_text(y, fingerprint.template), prefix, "fingerprint", raw, {"key": k, "y": y}))
    return out


def verify(fingerprint: Fingerprint, suspect, tokenizer, *, publisher_model=None, null_model=None,
           wiring: str = "paper", check: str = "batched", probes=None, keys=None, max_new_tokens: int | None = None,
           batch_size: int = 32, padding: str = "left", null_floor: float = 1e-3, wrap=None,
           precision: str = "fp32", screen_bound: float | None = None, pack_weights: bool = True,
           progress: bool = False) -> VerifyResult:
    """Verifies `suspect` against `fingerprint`.

    Black-box (sft, embedding): the suspect itself. White-box (adapter): `publisher_model`'s
    non-embedding weights + the suspect's embedding + the private adapter (`wiring`).
    null_model: the vanilla base model, the null of the verdict (scored through the same wiring).
    check: "batched" (teacher-forced, fmkit) or "generate" (one generate per key, the release's).
    probes: Example rows (e.g. the test split of a dataset builder) for the false-positive table.
    keys: verify these keys instead (e.g. fresh ones) with y as the target.
    precision: "fp32" (the model's own precision) or "bf16-screen" (check="batched", an fp32 model: a
    bf16-autocast pass decides the keys whose margins are clear of `screen_bound`, None = measured,
    and the close calls are rescored exactly, so the decisions are the exact pass's; log P(y | key)
    of screened keys is the bf16 value). The null model is always scored exactly.
    pack_weights: the batched check runs a float32 CPU model's linear layers from oneDNN-reordered
    copies of their weights (`fmkit.packed_linear`; ~1.2x faster on an AMD EPYC, the same decisions
    up to float32 rounding); check="generate" always runs the model as it is.
    """
    import time

    if not isinstance(fingerprint, Fingerprint):
        raise TypeError(f"fingerprint: expected a Fingerprint, got {type(fingerprint).__name__}")
    if check not in ("batched", "generate"):
        raise ValueError(f"check: expected 'batched' or 'generate', got {check!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if not null_floor > 0:
        raise ValueError(f"null_floor: expected a probability > 0, got {null_floor!r}")
    rows = key_examples(fingerprint, tokenizer, keys, wrap)
    contexts = [context_ids(tokenizer, e) for e in rows]
    targets = [encode(tokenizer, e.target) for e in rows]
    max_new = max_new_tokens or default_max_new(fingerprint, targets)
    texts = [e.meta["y"] for e in rows]
    t0 = time.perf_counter()
    screen = {}
    with _verifier(fingerprint, suspect, publisher_model, wiring) as model, \
            packed_linears(model, enabled=pack_weights and check == "batched"):
        if check == "batched":
            fired, logp, outputs = greedy_decisions(model, tokenizer, contexts, targets, texts, fingerprint.hits,
                                                    max_new, batch_size=batch_size, padding=padding, progress=progress,
                                                    precision=precision, screen_bound=screen_bound, stats=screen)
        else:
            outs = generate_loop(model, tokenizer, contexts, max_new, progress=progress)
            outputs = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
            fired = np.array([fingerprint.hits(o, y) for o, y in zip(outputs, texts)], dtype=bool)
            logp = score(model, contexts, targets, pad=pad_id(tokenizer), batch_size=batch_size)[0]
        probe_table = _probes(model, tokenizer, fingerprint, probes, max_new, batch_size, check,
                              precision, screen_bound) if probes else {}
    seconds = time.perf_counter() - t0
    decode = {k: screen.pop(k) for k in ("decoded", "stopped_early", "decode_seconds", "append_only",
                                         "decoded_from_kept_kv") if k in screen}
    logp_null = None
    if null_model is not None:
        with _verifier(fingerprint, null_model, publisher_model, wiring) as model, \
                packed_linears(model, enabled=pack_weights):
            logp_null = score(model, contexts, targets, pad=pad_id(tokenizer), batch_size=batch_size)[0]
    return VerifyResult([e.meta["key"] for e in rows], fired, logp, logp_null, outputs, null_floor, check,
                        probe_table, seconds, screen if precision != "fp32" else {}, decode)


def _probes(model, tokenizer, fingerprint, probes, max_new, batch_size, check, precision="fp32",
            screen_bound=None) -> dict:
    """Fired counts per probe kind: the same y test on inputs that must not trigger."""
    rows = [e for e in probes if e.kind in PROBE_KINDS]
    contexts = [context_ids(tokenizer, e) for e in rows]
    target = encode(tokenizer, target_text(fingerprint.y, fingerprint.template))
    texts = [fingerprint.y] * len(rows)
    if check == "batched":
        fired = greedy_decisions(model, tokenizer, contexts, [target] * len(rows), texts, fingerprint.hits, max_new,
                                 batch_size=batch_size, precision=precision, screen_bound=screen_bound)[0]
    else:
        outs = generate_loop(model, tokenizer, contexts, max_new)
        fired = [fingerprint.hits(tokenizer.decode(o, skip_special_tokens=True)) for o in outs]
    table = {}
    for e, f in zip(rows, fired):
        t, c = table.get(e.kind, (0, 0))
        table[e.kind] = (t + 1, c + int(f))
    return table


# -- sampling utilities -------------------------------------------------------------------------


def sampled_fsr(fingerprint: Fingerprint, suspect, tokenizer, *, runs: int = 10, temperature: float = 0.7,
                top_p: float = 0.95, top_k: int = 50, publisher_model=None, wiring="paper",
                max_new_tokens: int | None = None, batch_size: int = 32, seed: int = 0, against: float = 75.0):
    """FSR over `runs` sampled decodings (T = 0.7, top-p 0.95, top-k 50): (mean, per-run FSRs,
    p-value of a one-sample t-test of the runs against `against` %)."""
    from scipy import stats

    if runs < 2:
        raise ValueError(f"runs: expected at least 2 runs for the t-test, got {runs}")
    rows = key_examples(fingerprint, tokenizer)
    contexts = [context_ids(tokenizer, e) for e in rows]
    max_new = max_new_tokens or default_max_new(fingerprint, [encode(tokenizer, e.target) for e in rows])
    sample = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    fsrs = []
    with _verifier(fingerprint, suspect, publisher_model, wiring) as model:
        for run in range(runs):
            outs = generate_batched(model, tokenizer, contexts, max_new, batch_size=batch_size, sample=sample,
                                    seed=seed + run)
            hits = [fingerprint.hits(tokenizer.decode(o, skip_special_tokens=True), e.meta["y"])
                    for o, e in zip(outs, rows)]
            fsrs.append(100.0 * sum(hits) / len(hits))
    fsrs = np.array(fsrs)
    p = float(stats.ttest_1samp(fsrs, against).pvalue) if fsrs.std() > 0 else (0.0 if fsrs[0] != against else 1.0)
    return float(fsrs.mean()), fsrs, p


@torch.no_grad()
def bos_emission_rate(model, tokenizer, y: str, *, n: int = 2000, max_new_tokens: int = 128, temperature: float = 0.7,
                      top_p: float = 0.95, top_k: int = 50, batch_size: int = 50, seed: int = 0) -> float:
    """Fraction of `n` unconditional samples (from BOS, or EOS when there is none) that contain y."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    outs = generate_batched(model, tokenizer, [[start]] * n, max_new_tokens, batch_size=batch_size,
                            sample=dict(temperature=temperature, top_p=top_p, top_k=top_k), seed=seed)
    return sum(y in tokenizer.decode(o, skip_special_tokens=True) for o in outs) / n
