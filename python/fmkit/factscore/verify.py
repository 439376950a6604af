"""Fact verification against retrieved passages.

LogitVerifier decides each fact from the next-token logits of "True" vs "False" after the
verification prompt, in one forward pass, all facts in padded batches; facts whose prompts share
the same passages (same topic, same retrieved set) share the prompt prefix's KV cache, so the
long context is encoded once per distinct passage set. `verify_generate` is the per-fact
`generate` path (what OpenFActScore runs) kept as the reference the batched path is tested and
benchmarked against. TextVerifier parses free-text replies of chat-style backends; NPScorer is
the nonparametric masked-LM check; Ensemble ANDs verifiers.
"""
from __future__ import annotations

import copy
import math
import os
import string
from typing import Callable, Sequence

import torch

from fmkit.factscore.lm import chat_split, has_chat_template, load_causal_lm, model_id_of
from fmkit.factscore.text import parse_true_false

Item = tuple  # (topic, fact, passages): passages best first, as the retriever returns them


def prompt_parts(topic: str, fact: str, passages: Sequence[dict]) -> tuple[str, str]:
    """(context, question) of the verification prompt: the definition line, the passages in
    reversed rank order (best last, next to the question), then `Input: <fact> True or False?`."""
    definition = f"Answer the question about {topic} based on the given context.\n\n"
    context = "".join(f"Title: {p['title']}\nText: {p['text'].replace('<s>', '').replace('</s>', '')}\n\n"
                      for p in reversed(passages))
    definition = (definition + context).strip()
    if definition and definition[-1] not in string.punctuation:
        definition += "."
    return definition + "\n\n", f"Input: {fact.strip()} True or False?\nOutput:"


def verification_prompt(topic: str, fact: str, passages: Sequence[dict]) -> str:
    return "".join(prompt_parts(topic, fact, passages))


def _word_token_ids(tokenizer, words: Sequence[str], what: str) -> list[int]:
    """First token of each spelling, kept only if that token decodes to the word itself."""
    ids = []
    for w in words:
        toks = tokenizer.encode(w, add_special_tokens=False)
        if toks and tokenizer.decode(toks[:1]).strip() == w.strip():
            ids.append(toks[0])
    if not ids:
        raise ValueError(f"verifier tokenizer has no {what!r} token (no spelling of {list(words)} is a single "
                         f"first token that decodes to {what!r}); pass true_words/false_words it does have")
    return sorted(set(ids))


class LogitVerifier:
    """Supported iff max logit over the "True" spellings > max over the "False" spellings, read
    after the prompt in one forward pass (no decoding)."""

    def __init__(self, model, tokenizer=None, *, batch_size: int = 16, padding_side: str = "right",
                 share_prefix: bool = True, chat: bool | None = None, true_words=("True", " True"),
                 false_words=("False", " False"), retriever=None, cache=None):
        if isinstance(model, (str, os.PathLike)):
            model, tokenizer = load_causal_lm(str(model))
        if tokenizer is None:
            raise TypeError("tokenizer: required when model is a model object, not a path")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.padding_side, self.share_prefix = batch_size, padding_side, share_prefix
        self.chat = has_chat_template(tokenizer) if chat is None else chat
        self.true_ids = _word_token_ids(tokenizer, true_words, "True")
        self.false_ids = _word_token_ids(tokenizer, false_words, "False")
        if set(self.true_ids) & set(self.false_ids):
            raise ValueError("verifier tokenizer maps 'True' and 'False' to the same first token")
        self.retriever, self.cache = retriever, cache
        self.model_id = model_id_of(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.forward_rows = 0  # sequences run through the model, for tests

    # -- prompts as token ids -----------------------------------------------------------------------

    def encode(self, topic: str, fact: str, passages: Sequence[dict]) -> tuple[tuple[int, ...], list[int]]:
        """(prefix ids, question ids). Every path (batched, one at a time, generate) feeds exactly
        prefix + question, so they see the same tokens."""
        head, tail = prompt_parts(topic, fact, passages)
        if self.chat:
            head, tail = chat_split(self.tokenizer, head, tail)
        prefix = self.tokenizer.encode(head, add_special_tokens=not self.chat)
        return tuple(prefix), self.tokenizer.encode(tail, add_special_tokens=False)

    # -- scoring ---------------------------------------------------------------------------------------

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, 2] (True score, False score) from final hidden states: only the candidate rows of the
        output embedding are multiplied (a softcap or bias is monotone and does not change order)."""
        head = self.model.get_output_embeddings()
        ids = self.true_ids + self.false_ids
        logits = hidden.to(head.weight.dtype) @ head.weight[ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[ids]
        nt = len(self.true_ids)
        return torch.stack([logits[:, :nt].max(1).values, logits[:, nt:].max(1).values], 1).float()

    def _base(self, **kw):
        self.forward_rows += kw["input_ids"].shape[0]
        base = self.model.base_model
        if "past_key_values" in kw:  # transformers >= 5.2x calls it `cache`, older ones past_key_values
            import inspect

            if "cache" in inspect.signature(base.forward).parameters:
                kw["cache"] = kw.pop("past_key_values")
        return base(**kw, return_dict=True)

    def _padded(self, seqs: list[list[int]]) -> torch.Tensor:
        """Scores of full sequences, padded together (sorted by length to waste little)."""
        out = torch.empty(len(seqs), 2)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(seqs[i])
                cols = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
                ids[r, cols] = torch.tensor(seqs[i])
                mask[r, cols] = 1
            # positions count real tokens only, so left padding does not shift them
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            hidden = self._base(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
            last = torch.full((len(idx),), width - 1) if self.padding_side == "left" else mask.sum(1) - 1
            out[idx] = self._head(hidden[torch.arange(len(idx)), last])
        return out

    def _shared(self, prefix: tuple[int, ...], questions: list[list[int]]) -> torch.Tensor:
        """Scores of prefix + each question: the prefix runs once, its KV cache is copied per batch."""
        from transformers import DynamicCache

        p = torch.tensor([prefix])
        cache = DynamicCache(config=self.model.config)
        self._base(input_ids=p, attention_mask=torch.ones_like(p), use_cache=True, past_key_values=cache)
        plen = len(prefix)
        out = torch.empty(len(questions), 2)
        order = sorted(range(len(questions)), key=lambda i: len(questions[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            width = max(len(questions[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), plen + width), dtype=torch.long)
            mask[:, :plen] = 1
            for r, i in enumerate(idx):
                n = len(questions[i])
                ids[r, :n] = torch.tensor(questions[i])
                mask[r, plen:plen + n] = 1
            batch_cache = copy.deepcopy(cache)
            if len(idx) > 1:
                batch_cache.batch_repeat_interleave(len(idx))
            pos = (plen + torch.arange(width)).expand(len(idx), width)
            hidden = self._base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                past_key_values=batch_cache).last_hidden_state
            last = mask[:, plen:].sum(1) - 1
            out[idx] = self._head(hidden[torch.arange(len(idx)), last])
        return out

    @torch.inference_mode()
    def margins(self, items: Sequence[Item]) -> list[float]:
        """logit(True) - logit(False) per (topic, fact, passages); > 0 means supported."""
        encoded = [self.encode(*it) for it in items]
        scores = torch.empty(len(items), 2)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (prefix, _) in enumerate(encoded):
            groups.setdefault(prefix, []).append(i)
        singles = []
        for prefix, members in groups.items():
            if self.share_prefix and len(members) > 1:
                scores[members] = self._shared(prefix, [encoded[i][1] for i in members])
            else:
                singles += members
        if singles:
            scores[singles] = self._padded([list(encoded[i][0]) + encoded[i][1] for i in singles])
        return (scores[:, 0] - scores[:, 1]).tolist()

    def verify(self, items: Sequence[Item]) -> list[bool]:
        if self.cache is None:
            return [m > 0 for m in self.margins(items)]
        prompts = [verification_prompt(*it) for it in items]
        by_prompt = dict(zip(prompts, items))
        margins = self.cache.cached(self.model_id + "#logit", lambda ps: self.margins([by_prompt[p] for p in ps]),
                                    prompts)
        return [m > 0 for m in margins]

    @torch.inference_mode()
    def verify_generate(self, items: Sequence[Item], max_new_tokens: int = 1) -> list[float]:
        """The per-fact path: `generate` on one prompt at a time, reading the first generated
        token's logits (upstream decodes up to 128 tokens for this; max_new_tokens=1 is that
        path at its cheapest). Returns margins like `margins`."""
        out = []
        for it in items:
            prefix, question = self.encode(*it)
            ids = torch.tensor([list(prefix) + question])
            gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True, pad_token_id=self.pad_id,
                                      temperature=None, top_p=None, top_k=None)
            first = gen.logits[0][0].float()
            out.append((first[self.true_ids].max() - first[self.false_ids].max()).item())
        return out


class TextVerifier:
    """A chat-style backend `fn(prompts) -> replies` (a local generator or any callable), its
    replies read by `parse_true_false`."""

    def __init__(self, fn: Callable[[list[str]], list[str]], retriever=None, cache=None, model_id=None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable list[str] -> list[str], got {type(fn).__name__}")
        self.fn, self.retriever, self.cache = fn, retriever, cache
        self.model_id = model_id or model_id_of(fn)

    def verify(self, items: Sequence[Item]) -> list[bool]:
        prompts = [verification_prompt(*it) for it in items]
        replies = self.cache.cached(self.model_id, self.fn, prompts) if self.cache is not None else self.fn(prompts)
        return [parse_true_false(r) for r in replies]


# Function words (and punctuation) the NP score skips: they occur in any passage and say nothing.
STOP_WORDS = tuple("""a an the and or but if of at by for with about against between into through during
before after above below to from up down in out on off over under again further then once here there when
where why how all any both each few more most other some such no nor not only own same so than too very
s t can will just don should now i me my we our you your he him his she her it its they them their what
which who whom this that these those am is are was were be been being have has had having do does did
doing would could also as""".split()) + tuple(string.punctuation)


class NPScorer:
    """Nonparametric probability of a fact under a masked LM over BM25-retrieved passages:
    for each non-stop-word token of `Fact: <fact>`, mask it and compare the masked position's
    hidden state with every passage token's (softmax of q.h/sqrt(d)); P = mass on passage tokens
    equal to the masked one (0 if it never occurs); NP = mean P; supported iff NP > threshold.
    No non-stop-word token leaves NP = 0 (upstream crashes there)."""

    def __init__(self, model, tokenizer=None, *, threshold: float = 0.3, k: int = 3, stop_words=STOP_WORDS,
                 batch_size: int = 32, retriever=None, cache=None):
        from fmkit.factscore.retrieval import BM25Retriever

        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForMaskedLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)
            model = AutoModelForMaskedLM.from_pretrained(model)
        if tokenizer is None or getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError("npm tokenizer: expected a tokenizer with a mask token")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.threshold, self.batch_size = threshold, batch_size
        self.retriever = retriever or BM25Retriever(k=k)
        self.cache = cache
        stop = set()
        for w in stop_words:
            for spelling in (w, " " + w):
                stop.update(tokenizer.encode(spelling, add_special_tokens=False)[:1])
        self.stop_ids = stop
        self.model_id = model_id_of(model)

    def _hidden(self, ids: list[list[int]]) -> list[torch.Tensor]:
        out = []
        for s in range(0, len(ids), self.batch_size):
            chunk = ids[s:s + self.batch_size]
            width = max(len(x) for x in chunk)
            pad = self.tokenizer.pad_token_id or 0
            t = torch.full((len(chunk), width), pad, dtype=torch.long)
            m = torch.zeros_like(t)
            for r, x in enumerate(chunk):
                t[r, :len(x)] = torch.tensor(x)
                m[r, :len(x)] = 1
            res = self.model(input_ids=t, attention_mask=m, output_hidden_states=True)
            h = res.hidden_states[-1]
            out += [h[r, :len(x)].float() for r, x in enumerate(chunk)]
        return out

    def _question_positions(self, fact: str) -> tuple[list[int], list[int]]:
        ids = self.tokenizer.encode(f"Fact: {fact.strip()}", add_special_tokens=True)
        colon = self.tokenizer.encode(":", add_special_tokens=False)
        start = 0
        for i, t in enumerate(ids):  # skip BOS and everything up to the prefix's colon
            if colon and t == colon[-1]:
                start = i + 1
                break
        end = len(ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id in ids[start:]:
            end = ids.index(self.tokenizer.eos_token_id, start)
        special = set(self.tokenizer.all_special_ids)
        return ids, [i for i in range(start, end) if ids[i] not in self.stop_ids and ids[i] not in special]

    @torch.inference_mode()
    def probability(self, fact: str, passages: Sequence[dict]) -> float:
        ids, positions = self._question_positions(fact)
        if not positions or not passages:
            return 0.0
        p_ids = [self.tokenizer.encode(p["text"], add_special_tokens=False) for p in passages]
        p_ids = [x for x in p_ids if x]
        if not p_ids:
            return 0.0
        h = torch.cat(self._hidden(p_ids))
        tok = torch.tensor([t for x in p_ids for t in x])
        masked = []
        for i in positions:
            q = list(ids)
            q[i] = self.tokenizer.mask_token_id
            masked.append(q)
        qh = torch.stack([hq[i] for hq, i in zip(self._hidden(masked), positions)])
        s = torch.softmax(qh @ h.T / math.sqrt(h.shape[1]), dim=1)
        gold = torch.tensor([ids[i] for i in positions])
        p = (s * (tok[None, :] == gold[:, None])).sum(1)
        return float(p.mean())

    def verify(self, items: Sequence[Item]) -> list[bool]:
        def compute(keys):
            return [self.probability(*by_key[k]) for k in keys]

        if self.cache is None:
            return [self.probability(f, ps) > self.threshold for _, f, ps in items]
        by_key = {f + "#" + "#".join(p["text"] for p in ps): (f, ps) for _, f, ps in items}
        keys = [f + "#" + "#".join(p["text"] for p in ps) for _, f, ps in items]
        return [v > self.threshold for v in self.cache.cached(self.model_id + "#npm", compute, keys)]


class Ensemble:
    """Supported iff every verifier says so; each later verifier sees only the facts still
    supported (so NP runs only where the LM said True, as upstream)."""

    def __init__(self, *verifiers):
        if not verifiers:
            raise ValueError("Ensemble: expected at least one verifier")
        self.verifiers = verifiers
        self.retriever = None

    def verify(self, items: Sequence[Item], retrieve=None) -> list[bool]:
        result = [True] * len(items)
        for v in self.verifiers:
            live = [i for i, r in enumerate(result) if r]
            if not live:
                break
            sub = [items[i] for i in live]
            if retrieve is not None:
                sub = retrieve(v, sub)
            for i, ok in zip(live, v.verify(sub)):
                result[i] = ok
        return result
