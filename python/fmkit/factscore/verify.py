"""Fact verification against retrieved passages.

LogitVerifier decides each fact from the next-token logits of "True" vs "False" after the
verification prompt, in one forward pass, all facts in padded batches; prompts that share a
token prefix (the same topic and passages, e.g. with per-topic retrieval) are grouped by longest
common prefix and share that prefix's KV cache, so the long context is encoded once per group. `verify_generate` is the per-fact
`generate` path (what OpenFActScore runs) kept as the reference the batched path is tested and
benchmarked against. TextVerifier parses free-text replies of chat-style backends; NPScorer is
the nonparametric masked-LM check; Ensemble ANDs verifiers.
"""
from __future__ import annotations

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
    after the prompt in one forward pass (no decoding).

    Prefix sharing (`share_prefix=True`): every prompt is tokenised whole, then the prompts of a
    batch are sorted by their token ids and cut into groups by longest common token prefix (the
    cut that runs the fewest prompt tokens; a group's shared part has at least
    `min_shared_prefix` tokens, see `group`). Each group's common prefix runs through the
    model once (batch 1); then its suffixes (at least the last token of each prompt), up to
    batch_size at a time, are packed into one sequence that attends to the prefix's KV cache under
    a block mask, so the cache is never copied (`engine="packed"`, used by "auto" on Hugging Face
    sdpa/eager attention). `engine="copy"` (for other attention paths) copies the cache into
    padded suffix batches that may mix groups instead: the same results, but it moves the whole
    prefix cache once per fact, which costs more than the suffix compute on a CPU. Because the
    split is made on the ids of the whole prompt, every prompt sees exactly the tokens of its
    unshared forward, so the margins equal it up to floating-point rounding. Facts share a long prefix when they share their passages, e.g. with
    `BM25Retriever(passages="per_topic")`; with upstream's per-fact retrieval most prompts share
    only the definition line. Prompts in no group run whole, in padded batches."""

    def __init__(self, model, tokenizer=None, *, batch_size: int = 16, padding_side: str = "right",
                 share_prefix: bool = True, min_shared_prefix: int = 32, engine: str = "auto",
                 chat: bool | None = None, true_words=("True", " True"), false_words=("False", " False"),
                 retriever=None, cache=None):
        if isinstance(model, (str, os.PathLike)):
            model, tokenizer = load_causal_lm(str(model))
        if tokenizer is None:
            raise TypeError("tokenizer: required when model is a model object, not a path")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if not isinstance(min_shared_prefix, int) or min_shared_prefix < 1:
            raise ValueError(f"min_shared_prefix: expected a positive integer, got {min_shared_prefix!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.padding_side, self.share_prefix = batch_size, padding_side, share_prefix
        if engine not in ("auto", "packed", "copy"):
            raise ValueError(f"engine: expected 'auto', 'packed' or 'copy', got {engine!r}")
        self.min_shared_prefix, self.engine = min_shared_prefix, engine
        self.chat = has_chat_template(tokenizer) if chat is None else chat
        self.true_ids = _word_token_ids(tokenizer, true_words, "True")
        self.false_ids = _word_token_ids(tokenizer, false_words, "False")
        if set(self.true_ids) & set(self.false_ids):
            raise ValueError("verifier tokenizer maps 'True' and 'False' to the same first token")
        self.retriever, self.cache = retriever, cache
        self.model_id = model_id_of(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.forward_rows = 0  # sequences run through the model, for tests
        self.forward_tokens = 0  # token positions run through the model (padding included)
        self.last_groups: list[tuple[int, list[int]]] = []  # (shared prefix length, members) of the last call
        self.last_forward_tokens = 0  # forward_tokens of the last call

    # -- prompts as token ids -----------------------------------------------------------------------

    def encode(self, topic: str, fact: str, passages: Sequence[dict]) -> tuple[int, ...]:
        """Token ids of the whole verification prompt (chat-wrapped if `chat`). Every path
        (batched, shared-prefix, one at a time, generate) feeds exactly these ids."""
        head, tail = prompt_parts(topic, fact, passages)
        text = head + tail
        if self.chat:
            text = "".join(chat_split(self.tokenizer, head, tail))
        return tuple(self.tokenizer.encode(text, add_special_tokens=not self.chat))

    def group(self, seqs: Sequence[Sequence[int]]) -> tuple[list[tuple[int, list[int]]], list[int]]:
        """([(shared prefix length, member indices)], singles). The sequences are sorted by their
        ids, so the common prefix of any run of them is the minimum of the neighbours' common
        prefixes; the sorted order is cut into runs by dynamic programming to minimise the
        prompt tokens run through the model: a prompt alone costs its length, a group of m
        prompts with common prefix L costs L + sum(len_i - L). A group needs
        L >= min_shared_prefix, and L stops one token short of its shortest member, so every
        member keeps a suffix whose last position is read."""
        n = len(seqs)
        order = sorted(range(n), key=lambda i: tuple(seqs[i]))
        s = [seqs[i] for i in order]
        lcp = []
        for a, b in zip(s, s[1:]):
            m, k = min(len(a), len(b)), 0
            while k < m and a[k] == b[k]:
                k += 1
            lcp.append(k)
        best = [0] * (n + 1)  # best[j]: least tokens for the first j sorted sequences
        cut: list[tuple[int, int]] = [(0, 0)] * (n + 1)  # (start of the last run, its prefix length)
        for j in range(1, n + 1):
            best[j], cut[j] = best[j - 1] + len(s[j - 1]), (j - 1, 0)
            shared, total = len(s[j - 1]) - 1, len(s[j - 1])
            for i in range(j - 2, -1, -1):  # the run s[i:j]
                shared = min(shared, lcp[i], len(s[i]) - 1)
                total += len(s[i])
                if shared < self.min_shared_prefix:
                    break  # runs starting further left share even less
                cost = best[i] + total - (j - i - 1) * shared
                if cost < best[j]:
                    best[j], cut[j] = cost, (i, shared)
        groups: list[tuple[int, list[int]]] = []
        singles: list[int] = []
        j = n
        while j > 0:
            i, shared = cut[j]
            if j - i > 1:
                groups.append((shared, [order[k] for k in range(i, j)]))
            else:
                singles.append(order[i])
            j = i
        return groups[::-1], singles[::-1]

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
        return torch.stack([logits[:, :nt].max(1).values, logits[:, nt:].max(1).values], 1).double()

    def _base(self, **kw):
        self.forward_rows += kw["input_ids"].shape[0]
        self.forward_tokens += kw["input_ids"].numel()
        base = self.model.base_model
        if "past_key_values" in kw:  # transformers >= 5.2x calls it `cache`, older ones past_key_values
            import inspect

            if "cache" in inspect.signature(base.forward).parameters:
                kw["cache"] = kw.pop("past_key_values")
        return base(**kw, return_dict=True)

    def _padded(self, seqs: list[Sequence[int]]) -> torch.Tensor:
        """Scores of full sequences, padded together (sorted by length to waste little)."""
        out = torch.empty(len(seqs), 2, dtype=torch.float64)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(seqs[i])
                cols = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
                ids[r, cols] = torch.tensor(list(seqs[i]))
                mask[r, cols] = 1
            # positions count real tokens only, so left padding does not shift them
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            hidden = self._base(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
            last = torch.full((len(idx),), width - 1) if self.padding_side == "left" else mask.sum(1) - 1
            out[idx] = self._head(hidden[torch.arange(len(idx)), last])
        return out

    def _prefill(self, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) [1, heads, len, dim] of one prefix run alone."""
        from transformers import DynamicCache

        p = torch.tensor([list(prefix)])
        cache = DynamicCache(config=self.model.config)
        self._base(input_ids=p, attention_mask=torch.ones_like(p), use_cache=True, past_key_values=cache)
        if hasattr(cache, "layers"):
            return [(layer.keys, layer.values) for layer in cache.layers]
        return list(zip(cache.key_cache, cache.value_cache))  # older transformers

    def _suffix_batch(self, rows: list[tuple[int, int]], seqs, kv: dict, plen: dict) -> torch.Tensor:
        """Scores of one batch of (sequence index, group) rows: the groups' prefix caches stacked
        (each padded to the longest prefix, the padding masked), then the suffixes in one forward."""
        from transformers import DynamicCache

        n = len(rows)
        lmax = max(plen[g] for _, g in rows)
        suffix = [seqs[i][plen[g]:] for i, g in rows]
        width = max(len(x) for x in suffix)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, lmax + width), dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        for r, ((i, g), x) in enumerate(zip(rows, suffix)):
            off = width - len(x) if self.padding_side == "left" else 0
            ids[r, off:off + len(x)] = torch.tensor(list(x))
            mask[r, :plen[g]] = 1
            mask[r, lmax + off:lmax + off + len(x)] = 1
            pos[r] = plen[g] + (torch.arange(width) - off).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        for layer in range(len(next(iter(kv.values())))):
            k0, v0 = kv[rows[0][1]][layer]
            keys = k0.new_zeros((n, k0.shape[1], lmax, k0.shape[3]))
            values = v0.new_zeros((n, v0.shape[1], lmax, v0.shape[3]))
            for r, (_, g) in enumerate(rows):
                keys[r, :, :plen[g]] = kv[g][layer][0][0]
                values[r, :, :plen[g]] = kv[g][layer][1][0]
            cache.update(keys, values, layer)
        hidden = self._base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                            past_key_values=cache).last_hidden_state
        last = [(width - 1) if self.padding_side == "left" else len(x) - 1 for x in suffix]
        return self._head(hidden[torch.arange(n), torch.tensor(last)])

    def _packed_ok(self) -> bool:
        """Whether the model takes a custom 4D attention mask (HF sdpa or eager attention)."""
        impl = getattr(self.model.config, "_attn_implementation", None)
        return self.engine == "packed" or (self.engine == "auto" and impl in ("sdpa", "eager"))

    def _packed_suffixes(self, prefix, suffixes: list[Sequence[int]]) -> torch.Tensor:
        """Scores of prefix + each suffix: the prefix runs once (batch 1); then the suffixes, up to
        batch_size at a time, are packed one after another into ONE sequence that attends to the
        prefix's cache under a block mask (a suffix token sees the prefix and the earlier tokens of
        its own suffix only, at the positions it has in its own prompt). The prefix cache is not
        copied per fact: each pack starts from a batch-1 cache of the prefix."""
        from transformers import DynamicCache

        plen = len(prefix)
        kv = self._prefill(prefix)
        eager = getattr(self.model.config, "_attn_implementation", None) == "eager"
        out = torch.empty(len(suffixes), 2, dtype=torch.float64)
        for s in range(0, len(suffixes), self.batch_size):
            chunk = suffixes[s:s + self.batch_size]
            ids = torch.tensor([[t for x in chunk for t in x]])
            seg = torch.tensor([j for j, x in enumerate(chunk) for _ in x])
            inner = torch.tensor([k for x in chunk for k in range(len(x))])
            n = ids.shape[1]
            own = (seg[None, :] == seg[:, None]) & (inner[None, :] <= inner[:, None])
            allowed = torch.cat([torch.ones(n, plen, dtype=torch.bool), own], 1)[None, None]
            mask = allowed
            if eager:
                dtype = next(self.model.parameters()).dtype
                mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
            cache = DynamicCache(config=self.model.config)
            for layer, (k, v) in enumerate(kv):  # a fresh cache holding the prefix (batch 1, not copied per fact)
                cache.update(k, v, layer)
            hidden = self._base(input_ids=ids, attention_mask=mask, position_ids=(plen + inner)[None],
                                use_cache=True, past_key_values=cache).last_hidden_state[0]
            ends = torch.tensor([len(x) for x in chunk]).cumsum(0) - 1
            out[s:s + len(chunk)] = self._head(hidden[ends])
        return out

    def _shared(self, seqs, groups: list[tuple[int, list[int]]]) -> dict[int, torch.Tensor]:
        """Scores of the grouped sequences. Packed engine (HF sdpa/eager attention): per group, the
        prefix once and its suffixes packed under a block mask (`_packed_suffixes`). Otherwise
        ("copy"): each group's prefix runs once and its KV cache is copied into padded suffix
        batches that may mix groups (groups sorted by prefix length, so little cache padding; a
        group's cache is dropped once its last member has run)."""
        out: dict[int, torch.Tensor] = {}
        if self._packed_ok():
            for length, members in groups:
                scores = self._packed_suffixes(seqs[members[0]][:length], [seqs[i][length:] for i in members])
                for i, sc in zip(members, scores):
                    out[i] = sc
            return out
        kv: dict[int, list] = {}
        plen: dict[int, int] = {}
        pending: list[tuple[int, int]] = []
        last_of = {g: members[-1] for g, (_, members) in enumerate(groups)}

        def flush():
            scores = self._suffix_batch(pending, seqs, kv, plen)
            for (i, g), sc in zip(pending, scores):
                out[i] = sc
                if i == last_of[g]:
                    del kv[g]
            pending.clear()

        for g in sorted(range(len(groups)), key=lambda g: groups[g][0]):
            length, members = groups[g]
            plen[g] = length
            kv[g] = self._prefill(seqs[members[0]][:length])
            for i in members:
                pending.append((i, g))
                if len(pending) == self.batch_size:
                    flush()
        if pending:
            flush()
        return out

    @torch.inference_mode()
    def margins(self, items: Sequence[Item]) -> list[float]:
        """logit(True) - logit(False) per (topic, fact, passages); > 0 means supported."""
        return self.margins_of_ids([self.encode(*it) for it in items])

    @torch.inference_mode()
    def margins_of_ids(self, seqs: Sequence[Sequence[int]]) -> list[float]:
        """Margins of already tokenised whole prompts (see `encode`)."""
        if any(len(s) == 0 for s in seqs):
            raise ValueError("margins: every prompt needs at least one token")
        scores = torch.empty(len(seqs), 2, dtype=torch.float64)
        tokens_before = self.forward_tokens
        if self.share_prefix:
            groups, singles = self.group(seqs)
        else:
            groups, singles = [], list(range(len(seqs)))
        self.last_groups = groups
        for i, sc in self._shared(seqs, groups).items():
            scores[i] = sc
        if singles:
            scores[singles] = self._padded([seqs[i] for i in singles])
        self.last_forward_tokens = self.forward_tokens - tokens_before
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
            ids = torch.tensor([list(self.encode(*it))])
            gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True, pad_token_id=self.pad_id,
                                      temperature=None, top_p=None, top_k=None)
            first = gen.logits[0][0].double()
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
