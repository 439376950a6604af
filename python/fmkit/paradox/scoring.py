"""Multiple-choice log-likelihood scoring with shared-context KV reuse.

lm-evaluation-harness's `hf` model scores every (context, option) pair as its own sequence, so a
4-option item runs its context four times (lm-eval #1351, #1425), and it returns only the summed
log-likelihood (no per-token export, lm-eval #2871). `score_choices` tokenises exactly as lm-eval
does and runs each context once. The default 'packed' engine puts a context and all its options
(each without its last token, which predicts nothing) in one sequence under a block ("tree")
attention mask, so a batch of items takes ONE forward pass with no KV cache copies, and projects
onto the vocabulary only the positions whose log-probs are needed; the 'kv' engine prefills the
contexts and copies each one's KV cache to its options. It returns the sum, per-token, per-char,
per-byte and PMI (unconditional) log-likelihoods, lm-eval's acc / acc_norm / acc_bytes /
acc_mutual_info, and every option's per-token log-probs.
"""
from __future__ import annotations

import inspect
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer names a length


class TruncationWarning(UserWarning):
    """A context was cut from the left to fit the model's window (lm-eval does the same)."""


# -- tokenisation: lm-eval's rules -----------------------------------------------------------------


def _encode(tokenizer, text: str, add_special_tokens: bool | None) -> list[int]:
    """lm-eval HFLM.tok_encode: the tokenizer's default special tokens unless told, and no second
    BOS when the text already starts with one."""
    kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    bos = tokenizer.bos_token
    if add_special_tokens is None and bos and text.startswith(bos):
        kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(text, **kwargs))


def prefix_token_id(tokenizer) -> int:
    """The token lm-eval conditions on for an empty context: BOS, else EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("tokenizer: has neither a BOS nor an EOS token to condition an empty context on")
    return int(tid)


def encode_pair(tokenizer, context: str, continuation: str, add_special_tokens: bool | None = None):
    """(context tokens, continuation tokens) as lm-eval's `loglikelihood` builds them.

    Trailing spaces of the context move to the continuation; the continuation's tokens are those
    of tokenize(context + continuation) after len(tokenize(context)), so a context that ends
    mid-word is scored on the joint tokenisation. An empty context becomes the prefix token.
    """
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        if not cont:
            raise ValueError("continuation: tokenises to nothing")
        pid = prefix_token_id(tokenizer)
        return ([pid], cont) if cont[0] != pid else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
        if not context:
            raise ValueError("contexts: a context of only whitespace has no tokens (lm-eval fails on it too); "
                             "use '' to condition on the prefix token")
    whole = _encode(tokenizer, context + continuation, add_special_tokens)
    ctx = _encode(tokenizer, context, add_special_tokens)
    return ctx, whole[len(ctx):]


def model_max_length(model, tokenizer=None) -> int:
    """The window lm-eval assumes: n_positions / max_position_embeddings / n_ctx, the tokenizer's
    model_max_length, else 2048."""
    cfg = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    value = getattr(tokenizer, "model_max_length", None)
    if value is not None and value < 1e29:  # transformers' "unset" is 1e30
        return int(value)
    return DEFAULT_MAX_LENGTH


# -- the token-level engine ----------------------------------------------------------------------


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _supports_mask_keep(model) -> bool:
    """Whether forward(logits_to_keep=<bool [B, L] mask>) projects only the kept positions."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return False
    module = sys.modules.get(type(model).__module__)
    return getattr(module, "slice_logits_to_keep", None) is not None


def _kept_logits(model, keep: torch.Tensor, use_cache: bool = True, **inputs) -> tuple[torch.Tensor, object]:
    """Logits at the True positions of `keep` [B, L], flattened to [n_kept, V], and the cache.
    Only those rows are projected onto the vocabulary when the model allows it."""
    ck = _cache_kwarg(model)
    if ck != "cache" and "cache" in inputs:
        inputs[ck] = inputs.pop("cache")
    if _supports_mask_keep(model):
        out = model(**inputs, use_cache=use_cache, logits_to_keep=keep)
        logits = out.logits
        if logits.dim() == 3:  # an older slice_logits_to_keep without bool masks
            logits = logits[keep]
    else:
        out = model(**inputs, use_cache=use_cache)
        logits = out.logits[keep]
    return logits, getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _gather_logprobs(logits: torch.Tensor, targets: torch.Tensor):
    """log softmax(logits)[target] and whether target is the argmax, in at least float32."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    lp = logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=1)
    return lp, logits.argmax(1) == targets


@torch.inference_mode()
def _score_rows(model, rows, pad_id: int, padding_side: str, device) -> list[list[tuple[np.ndarray, bool]]]:
    """rows: [(context tokens, [continuation tokens, ...])] -> per row, per continuation,
    (per-token log-probs, greedy). The contexts of all rows run as one padded batch; each
    continuation then runs from a copy of its row's KV cache, all continuations as one batch."""
    n_rows = len(rows)
    ctx_lens = torch.tensor([len(c) for c, _ in rows])
    width = int(ctx_lens.max())
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros(n_rows, width, dtype=torch.long)
    for i, (ctx, _) in enumerate(rows):
        sl = slice(width - len(ctx), width) if padding_side == "left" else slice(0, len(ctx))
        ids[i, sl] = torch.tensor(ctx)
        mask[i, sl] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    last = torch.full((n_rows,), width - 1) if padding_side == "left" else ctx_lens - 1
    keep = torch.zeros(n_rows, width, dtype=torch.bool)
    keep[torch.arange(n_rows), last] = True
    ids, mask, positions, keep = (t.to(device) for t in (ids, mask, positions, keep))
    last_logits, cache = _kept_logits(model, keep, input_ids=ids, attention_mask=mask, position_ids=positions)

    # Option j's first token is predicted by its context's last position; the rest by the option
    # itself, so the option pass feeds cont[:-1] (one-token options need no second pass).
    opt_row = [i for i, (_, conts) in enumerate(rows) for _ in conts]
    conts = [c for _, cs in rows for c in cs]
    first = torch.tensor([c[0] for c in conts], device=device)
    lp_first, greedy_first = _gather_logprobs(last_logits[torch.tensor(opt_row, device=device)], first)
    results = [[np.array([lp_first[k].item()]), bool(greedy_first[k])] for k in range(len(conts))]

    longer = [k for k, c in enumerate(conts) if len(c) > 1]
    if longer:
        o_width = max(len(conts[k]) - 1 for k in longer)
        o_ids = torch.full((len(longer), o_width), pad_id, dtype=torch.long)
        o_mask = torch.zeros(len(longer), o_width, dtype=torch.long)
        targets = []
        for r, k in enumerate(longer):
            inp = conts[k][:-1]
            o_ids[r, :len(inp)] = torch.tensor(inp)
            o_mask[r, :len(inp)] = 1
            targets.extend(conts[k][1:])
        src = torch.tensor([opt_row[k] for k in longer])
        o_pos = ctx_lens[src][:, None] + torch.arange(o_width)[None, :]
        full_mask = torch.cat([mask.cpu()[src], o_mask], dim=1)
        cache.reorder_cache(src.to(device))  # index_select: each option gets its own copy of its context
        o_keep = o_mask.bool()
        logits, _ = _kept_logits(model, o_keep.to(device), input_ids=o_ids.to(device),
                                 attention_mask=full_mask.to(device), position_ids=o_pos.to(device), cache=cache)
        lp, greedy = _gather_logprobs(logits, torch.tensor(targets, device=device))
        lp, greedy = lp.cpu().double().numpy(), greedy.cpu().numpy()
        at = 0
        for k in longer:
            n = len(conts[k]) - 1
            results[k][0] = np.concatenate([results[k][0], lp[at:at + n]])
            results[k][1] = results[k][1] and bool(greedy[at:at + n].all())
            at += n
    out, at = [], 0
    for _, cs in rows:
        out.append([tuple(results[at + j]) for j in range(len(cs))])
        at += len(cs)
    return out


def _packed_ok(model) -> bool:
    """Whether the model takes a custom 4D boolean/additive attention mask with explicit position_ids
    (Hugging Face models on the sdpa or eager attention path)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return impl in ("sdpa", "eager") and "position_ids" in inspect.signature(model.forward).parameters


@torch.inference_mode()
def _score_rows_packed(model, rows, pad_id: int, padding_side: str, device) -> list[list[tuple[np.ndarray, bool]]]:
    """rows: [(context tokens, [continuation tokens, ...])] -> per row, per continuation,
    (per-token log-probs, greedy), in ONE forward pass with no KV cache copies.

    Each row is packed as one sequence: the context, then every option's tokens but its last (the
    last token predicts nothing), each option placed at the positions right after the context. A
    block ("tree") attention mask lets a context token see the earlier context tokens and an option
    token see the whole context and the earlier tokens of its own option only, so every option is
    computed exactly as in its own (context + option) sequence. The vocabulary projection runs only
    on the positions whose next-token log-probs are needed: the context's last token (shared by the
    options' first tokens) and the fed option tokens."""
    n_rows = len(rows)
    lens = [len(c) + sum(len(o) - 1 for o in cs) for c, cs in rows]
    width = max(lens)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros(n_rows, width, dtype=torch.long)
    seg = torch.full((n_rows, width), -2, dtype=torch.long)  # -2 padding, -1 context, j option j
    keep = torch.zeros(n_rows, width, dtype=torch.bool)
    starts = []
    for i, ((ctx, conts), n) in enumerate(zip(rows, lens)):
        s0 = width - n if padding_side == "left" else 0
        starts.append(s0)
        nc = len(ctx)
        toks = list(ctx)
        segs = [-1] * nc
        ps = list(range(nc))
        for j, c in enumerate(conts):
            toks += c[:-1]
            segs += [j] * (len(c) - 1)
            ps += range(nc, nc + len(c) - 1)
        ids[i, s0:s0 + n] = torch.tensor(toks, dtype=torch.long)
        seg[i, s0:s0 + n] = torch.tensor(segs, dtype=torch.long)
        pos[i, s0:s0 + n] = torch.tensor(ps, dtype=torch.long)
        keep[i, s0 + nc - 1:s0 + n] = True
    valid = seg != -2
    allowed = (valid[:, None, :] & (pos[:, None, :] <= pos[:, :, None])
               & ((seg[:, None, :] == -1) | (seg[:, None, :] == seg[:, :, None])))
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # padding rows see themselves (no all-masked row)
    mask = allowed[:, None]
    if model.config._attn_implementation == "eager":
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
    # Row index, among the kept positions, of each position (keep flattens row-major).
    kept_index = (keep.view(-1).cumsum(0) - 1).view(n_rows, width)
    src, targets, spans = [], [], []
    for i, (ctx, conts) in enumerate(rows):
        at = starts[i] + len(ctx) - 1  # the context's last token predicts every option's first token
        per = []
        for c in conts:
            first = len(src)
            src.append(int(kept_index[i, starts[i] + len(ctx) - 1]))
            src.extend(int(kept_index[i, at + 1 + k]) for k in range(len(c) - 1))
            targets.extend(c)
            at += len(c) - 1
            per.append((first, len(c)))
        spans.append(per)
    ids, pos, mask, keep = (t.to(device) for t in (ids, pos, mask, keep))
    logits, _ = _kept_logits(model, keep, use_cache=False, input_ids=ids, attention_mask=mask, position_ids=pos)
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    lse = torch.logsumexp(logits, dim=1)
    best = logits.argmax(1)
    src_t = torch.tensor(src, device=logits.device)
    tgt_t = torch.tensor(targets, device=logits.device)
    lp = (logits[src_t, tgt_t] - lse[src_t]).cpu().double().numpy()
    greedy = (best[src_t] == tgt_t).cpu().numpy()
    return [[(lp[f:f + n].copy(), bool(greedy[f:f + n].all())) for f, n in per] for per in spans]


def score_token_requests(model, requests, *, batch_size: int = 32, padding_side: str = "left",
                         max_length: int | None = None, pad_token_id: int | None = None, progress: bool = False,
                         engine: str = "auto"):
    """Per-token log-probs of token-level (context, [continuations]) requests, one entry per
    continuation, in request order: [[(log-probs array, greedy), ...], ...].

    A context with continuation c is cut from the left to its last max_length + 1 - len(c)
    tokens when longer, exactly as lm-eval does (with a TruncationWarning); options that need
    different cuts of one context get their own context row. `batch_size` bounds the number of
    (context, continuation) sequences per forward pass.

    engine: 'packed' runs each context with all its options in one sequence under a block (tree)
    attention mask, one forward pass per batch and no cache copies (Hugging Face models on the sdpa
    or eager attention path); 'kv' prefills the contexts, copies each context's KV cache to its
    options and runs the options as a second batch (any model that takes a cache); 'auto' picks
    'packed' where the model allows it, else 'kv'. Both give the same log-probs up to rounding.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    if engine not in ("auto", "packed", "kv"):
        raise ValueError(f"engine: expected 'auto', 'packed' or 'kv', got {engine!r}")
    if engine == "auto":
        engine = "packed" if _packed_ok(model) else "kv"
    elif engine == "packed" and not _packed_ok(model):
        raise ValueError("engine: 'packed' needs a Hugging Face model on the sdpa or eager attention path; use 'kv'")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    window = max_length or model_max_length(model)
    device = next(model.parameters()).device
    pad = 0 if pad_token_id is None else int(pad_token_id)
    rows, where = [], []  # where[row] = [(request, option), ...] in row order
    n_truncated = 0
    for r, (ctx, conts) in enumerate(requests):
        if len(ctx) == 0:
            raise ValueError(f"requests[{r}]: the context has no tokens")
        groups: dict[int, list[int]] = {}
        for j, cont in enumerate(conts):
            if len(cont) == 0:
                raise ValueError(f"requests[{r}]: option {j} has no tokens")
            if len(cont) > window:
                raise ValueError(f"requests[{r}]: option {j} has {len(cont)} tokens, more than the model's "
                                 f"window of {window}")
            cut = max(0, len(ctx) + len(cont) - window - 1)
            groups.setdefault(cut, []).append(j)
        if any(cut for cut in groups):
            n_truncated += 1
        for cut, opts in groups.items():
            for s in range(0, len(opts), batch_size):  # a context with more options than a batch holds
                part = opts[s:s + batch_size]
                rows.append((list(ctx[cut:]), [list(conts[j]) for j in part]))
                where.append([(r, j) for j in part])
    if n_truncated:
        warnings.warn(f"{n_truncated} context(s) were longer than the model's window of {window} tokens with "
                      "their option and were truncated from the left, as lm-eval does", TruncationWarning,
                      stacklevel=3)
    # Longest first, so padding stays small within a batch (lm-eval sorts the same way): by the packed
    # length (context + fed option tokens) for 'packed', by the context length for 'kv'.
    if engine == "packed":
        order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + sum(len(c) - 1 for c in rows[i][1])))
    else:
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    score_rows = _score_rows_packed if engine == "packed" else _score_rows
    out = [[None] * len(conts) for _, conts in requests]
    batches, current, count = [], [], 0
    for i in order:
        n = len(rows[i][1])
        if current and count + n > batch_size:
            batches.append(current)
            current, count = [], 0
        current.append(i)
        count += n
    if current:
        batches.append(current)
    from tqdm.auto import tqdm

    for batch in tqdm(batches, desc="scoring", disable=not progress):
        for i, per_opt in zip(batch, score_rows(model, [rows[i] for i in batch], pad, padding_side, device)):
            for (r, j), res in zip(where[i], per_opt):
                out[r][j] = res
    return out


# -- the text-level API --------------------------------------------------------------------------


def _argmax(values: np.ndarray) -> int:
    return int(np.argmax(values))  # first maximum, as lm-eval's np.argmax


@dataclass
class ChoiceScores:
    """Scores of each item's options. Lists run over items; arrays over that item's options."""

    choices: list[list[str]]
    token_logprobs: list[list[np.ndarray]]
    loglik: list[np.ndarray]
    n_tokens: list[np.ndarray]
    n_chars: list[np.ndarray]
    n_bytes: list[np.ndarray]
    greedy: list[np.ndarray]
    unconditional: list[np.ndarray] | None
    truncated: list[bool]
    gold: list[int] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def per_token(self):
        return [ll / n for ll, n in zip(self.loglik, self.n_tokens)]

    @property
    def per_char(self):
        return [ll / n for ll, n in zip(self.loglik, self.n_chars)]

    @property
    def per_byte(self):
        return [ll / n for ll, n in zip(self.loglik, self.n_bytes)]

    @property
    def pmi(self):
        if self.unconditional is None:
            raise ValueError("unconditional log-likelihoods were not computed (score_choices(unconditional=True))")
        return [ll - u for ll, u in zip(self.loglik, self.unconditional)]

    def predictions(self, normalization: str = "sum") -> list[int]:
        """Chosen option per item: argmax of the sum ('sum', lm-eval acc), per char ('char',
        lm-eval acc_norm), per byte ('byte', acc_bytes), per token ('token') or 'pmi'
        (acc_mutual_info). Ties go to the first option, as with lm-eval's np.argmax."""
        values = {"sum": lambda: self.loglik, "char": lambda: self.per_char, "byte": lambda: self.per_byte,
                  "token": lambda: self.per_token, "pmi": lambda: self.pmi}
        if normalization not in values:
            raise ValueError(f"normalization: expected one of {', '.join(values)}, got {normalization!r}")
        return [_argmax(v) for v in values[normalization]()]

    def accuracy(self, normalization: str = "sum") -> np.ndarray:
        """Per-item 0/1 correctness against `gold`."""
        if self.gold is None:
            raise ValueError("gold: no gold indices were given to score_choices")
        return np.array([float(p == g) for p, g in zip(self.predictions(normalization), self.gold)])

    def metrics(self) -> dict:
        """acc, acc_norm, acc_bytes, acc_token (and acc_mutual_info) means, lm-eval's definitions."""
        out = {"acc": self.accuracy("sum").mean(), "acc_norm": self.accuracy("char").mean(),
               "acc_bytes": self.accuracy("byte").mean(), "acc_token": self.accuracy("token").mean()}
        if self.unconditional is not None:
            out["acc_mutual_info"] = self.accuracy("pmi").mean()
        return {k: float(v) for k, v in out.items()}

    def to_records(self) -> list[dict]:
        """One JSON-ready dict per (item, option): every score and the per-token log-probs."""
        recs = []
        for i, opts in enumerate(self.choices):
            for j, text in enumerate(opts):
                rec = {"item": i, "option": j, "text": text, "loglik": float(self.loglik[i][j]),
                       "n_tokens": int(self.n_tokens[i][j]), "n_chars": int(self.n_chars[i][j]),
                       "n_bytes": int(self.n_bytes[i][j]), "per_token": float(self.per_token[i][j]),
                       "per_char": float(self.per_char[i][j]), "per_byte": float(self.per_byte[i][j]),
                       "greedy": bool(self.greedy[i][j]), "truncated": self.truncated[i],
                       "token_logprobs": [float(x) for x in self.token_logprobs[i][j]]}
                if self.unconditional is not None:
                    rec["unconditional"] = float(self.unconditional[i][j])
                    rec["pmi"] = float(self.pmi[i][j])
                if self.gold is not None:
                    rec["gold"] = j == self.gold[i]
                recs.append(rec)
        return recs


def _check_text_items(contexts, choices, gold):
    if isinstance(contexts, str) or not isinstance(contexts, (list, tuple)):
        raise TypeError(f"contexts: expected a list of strings, got {type(contexts).__name__}")
    if not isinstance(choices, (list, tuple)) or len(choices) != len(contexts):
        raise ValueError(f"choices: expected one list of options per context ({len(contexts)}), got "
                         f"{len(choices) if isinstance(choices, (list, tuple)) else type(choices).__name__}")
    for i, (ctx, opts) in enumerate(zip(contexts, choices)):
        if not isinstance(ctx, str):
            raise TypeError(f"contexts[{i}]: expected a string, got {type(ctx).__name__}")
        if isinstance(opts, str) or not isinstance(opts, (list, tuple)) or len(opts) < 1:
            raise ValueError(f"choices[{i}]: expected a non-empty list of option strings")
        for j, o in enumerate(opts):
            if not isinstance(o, str):
                raise TypeError(f"choices[{i}][{j}]: expected a string, got {type(o).__name__}")
            if o == "":
                raise ValueError(f"choices[{i}][{j}]: the option is empty")
    if gold is not None:
        if len(gold) != len(contexts):
            raise ValueError(f"gold: expected {len(contexts)} indices (one per context), got {len(gold)}")
        for i, (g, opts) in enumerate(zip(gold, choices)):
            if not 0 <= int(g) < len(opts):
                raise ValueError(f"gold[{i}]: expected an index in [0, {len(opts)}), got {g}")


def score_choices(model, tokenizer, contexts, choices, gold=None, *, target_delimiter: str = " ",
                  unconditional: bool = True, batch_size: int = 32, padding_side: str = "left",
                  max_length: int | None = None, add_special_tokens: bool | None = None,
                  progress: bool = False, engine: str = "auto") -> ChoiceScores:
    """Scores each context's options as lm-eval's multiple_choice output type does.

    Request i, j is (contexts[i], target_delimiter + choices[i][j]), tokenised by lm-eval's rules
    (`encode_pair`); the unconditional requests ('' , delimiter + choice) condition on the BOS/EOS
    token as lm-eval's acc_mutual_info does. acc_norm divides by len(choice) in characters, without
    the delimiter, as lm-eval does. Contexts longer than the window are truncated from the left
    (TruncationWarning, ChoiceScores.truncated). `engine`: see `score_token_requests`.
    """
    _check_text_items(contexts, choices, gold)
    requests, unc_requests = [], []
    for ctx, opts in zip(contexts, choices):
        pairs = [encode_pair(tokenizer, ctx, target_delimiter + o, add_special_tokens) for o in opts]
        if ctx == "":  # lm-eval: prefix token (or the option's own first token) as the context, per option
            requests.extend((c, [o]) for c, o in pairs)
        else:
            requests.append((pairs[0][0], [o for _, o in pairs]))
        if unconditional:
            unc_requests.extend(encode_pair(tokenizer, "", target_delimiter + o) for o in opts)
    for i, (c, os_) in enumerate(requests):
        for o in os_:
            if not o:
                raise ValueError("choices: an option tokenises to nothing after its context; add a delimiter")
    # The unconditional requests share their one-token context: grouped, they run like one item.
    grouped_unc: dict[tuple, list[int]] = {}
    for k, (c, _) in enumerate(unc_requests):
        grouped_unc.setdefault(tuple(c), []).append(k)
    unc_rows = [(list(c), [unc_requests[k][1] for k in ks]) for c, ks in grouped_unc.items()]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    window = max_length or model_max_length(model, tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        res = score_token_requests(model, requests + unc_rows, batch_size=batch_size, padding_side=padding_side,
                                   max_length=window, pad_token_id=pad, progress=progress, engine=engine)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    main, unc_res = res[:len(requests)], res[len(requests):]
    flat_unc = [None] * len(unc_requests)
    for ks, per in zip(grouped_unc.values(), unc_res):
        for k, r in zip(ks, per):
            flat_unc[k] = r
    # Back to items: one request per item, or one per option when the context was empty.
    token_lps, greedy, trunc, unc = [], [], [], []
    at, u_at = 0, 0
    for ctx, opts in zip(contexts, choices):
        if ctx == "":
            per = [main[at + j][0] for j in range(len(opts))]
            reqs = requests[at:at + len(opts)]
            at += len(opts)
        else:
            per, reqs = main[at], [requests[at]]
            at += 1
        token_lps.append([lp for lp, _ in per])
        greedy.append(np.array([g for _, g in per]))
        trunc.append(any(len(c) + max(len(o) for o in os_) > window + 1 for c, os_ in reqs))
        if unconditional:
            unc.append(np.array([flat_unc[u_at + j][0].sum() for j in range(len(opts))]))
            u_at += len(opts)
    return ChoiceScores(
        choices=[list(o) for o in choices], token_logprobs=token_lps,
        loglik=[np.array([lp.sum() for lp in per]) for per in token_lps],
        n_tokens=[np.array([len(lp) for lp in per], dtype=float) for per in token_lps],
        n_chars=[np.array([len(o) for o in opts], dtype=float) for opts in choices],
        n_bytes=[np.array([len(o.encode("utf-8")) for o in opts], dtype=float) for opts in choices],
        greedy=greedy, unconditional=unc if unconditional else None, truncated=trunc,
        gold=None if gold is None else [int(g) for g in gold],
        meta={"target_delimiter": target_delimiter, "max_length": window, "padding_side": padding_side,
              "model": getattr(model.config, "_name_or_path", None) or type(model).__name__})


@torch.inference_mode()
def reference_token_logprobs(model, context: list[int], continuation: list[int]) -> np.ndarray:
    """The plain reference: one full forward pass over context + continuation, no cache, no
    padding (lm-eval's `hf` computation for one request)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(context) + list(continuation)[:-1]], device=device)
    logits = model(input_ids=ids).logits[0, len(context) - 1:]
    lp = torch.log_softmax(logits.double() if logits.dtype == torch.float64 else logits.float(), -1)
    return lp.gather(1, torch.tensor(continuation, device=device)[:, None])[:, 0].double().cpu().numpy()
