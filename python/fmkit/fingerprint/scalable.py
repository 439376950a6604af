"""Scalable fingerprints (the "Scalable Fingerprinting" line of work): one response per key, drawn by
perinucleus sampling, so that many fingerprints can be implanted without teaching the model an
unnatural string. The first response token comes from just outside the base model's nucleus
(likely enough to be learnt cheaply, unlikely enough not to be guessed); the rest is greedy."""
from __future__ import annotations

import torch

from fmkit.fingerprint.artifact import Fingerprint
from fmkit.fingerprint.data import Example, context_ids, key_prompt
from fmkit.fingerprint.keys import KeyGenerator


def perinucleus_candidates(probs: torch.Tensor, nucleus_p: float = 0.8, width: int = 3) -> tuple[torch.Tensor, int]:
    """(candidate token ids, nucleus size): the `width` most likely tokens after the smallest set of
    tokens whose probability reaches `nucleus_p`."""
    if not 0.0 < nucleus_p < 1.0:
        raise ValueError(f"nucleus_p: expected a probability in (0, 1), got {nucleus_p!r}")
    if width < 1:
        raise ValueError(f"width: expected a positive integer, got {width!r}")
    order = torch.argsort(probs, descending=True, stable=True)
    cum = torch.cumsum(probs[order], 0)
    size = int((cum < nucleus_p).sum()) + 1  # smallest prefix with mass >= nucleus_p
    cands = order[size:size + width]
    if len(cands) == 0:
        raise ValueError("nucleus_p: the nucleus covers the whole vocabulary; lower nucleus_p")
    return cands, size


@torch.no_grad()
def perinucleus_responses(model, tokenizer, contexts, *, nucleus_p: float = 0.8, width: int = 3,
                          response_tokens: int = 4, seed: int = 0) -> list[str]:
    """One response per context: a perinucleus first token, then greedy continuation."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    for ctx in contexts:
        ids = torch.tensor([ctx], device=device)
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1).cpu()
        cands, _ = perinucleus_candidates(probs, nucleus_p, width)
        w = probs[cands] / probs[cands].sum() if probs[cands].sum() > 0 else torch.ones(len(cands)) / len(cands)
        first = int(cands[torch.multinomial(w, 1, generator=g)])
        tokens = [first]
        if response_tokens > 1:
            gen = model.generate(input_ids=torch.tensor([ctx + tokens], device=device), do_sample=False,
                                 max_new_tokens=response_tokens - 1, pad_token_id=tokenizer.eos_token_id)
            tokens += [t for t in gen[0, len(ctx) + 1:].tolist() if t != tokenizer.eos_token_id]
        out.append(tokenizer.decode(tokens, skip_special_tokens=True) or tokenizer.decode([first]))
    return out


def perinucleus_fingerprint(model, tokenizer, n: int = 64, *, keys=None, template: str = "simple",
                            nucleus_p: float = 0.8, width: int = 3, response_tokens: int = 4, pool=None,
                            k_range=(2, 4), seed: int = 0) -> Fingerprint:
    """A Fingerprint with `n` keys (KeyGenerator, or `keys`) and a perinucleus response for each."""
    gen = KeyGenerator(pool, n, k_range, seed)
    keys = list(keys) if keys is not None else gen.generate()
    contexts = []
    for k in keys:
        prompt, prefix, raw = key_prompt(k, template, tokenizer=tokenizer)
        contexts.append(context_ids(tokenizer, Example(prompt, "", prefix, raw_prompt=raw)))
    responses = perinucleus_responses(model, tokenizer, contexts, nucleus_p=nucleus_p, width=width,
                                      response_tokens=response_tokens, seed=seed)
    responses = [r if r.strip() else "." for r in responses]
    return Fingerprint(keys, responses[0], responses=responses, template=template, pool=gen.pool,
                       k_range=tuple(k_range), seed=seed,
                       config={"perinucleus": {"nucleus_p": nucleus_p, "width": width,
                                               "response_tokens": response_tokens}})
