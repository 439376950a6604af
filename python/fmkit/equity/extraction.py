"""Schema-constrained extraction with a causal LM, and its validation per field and subgroup.

`StructuredExtractor` never generates free text: for each field it scores every allowed value,
plus "not mentioned", by its log-likelihood as the answer to the field's question about the
document, and returns the best one (and all scores). "Not mentioned" (the document says nothing)
is kept apart from a negative value (the document says "no"): `validate_extraction` counts the
two confusions separately, because treating missing as absent biases a prevalence.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fmkit.equity import _bootstrap as bs
from fmkit.equity.audit import as_array, check_aligned, group_maps, label_str

NOT_MENTIONED = "not mentioned"


@dataclasses.dataclass(frozen=True)
class Field:
    """One schema field: the question asked of each document and its allowed values."""
    name: str
    question: str
    values: tuple[str, ...]
    positive: str | None = None  # binary fields: the value whose rate is estimated (sensitivity)

    @property
    def options(self) -> tuple[str, ...]:
        return self.values + ((NOT_MENTIONED,) if NOT_MENTIONED not in self.values else ())


def _fields(schema) -> list[Field]:
    if isinstance(schema, Field):
        schema = [schema]
    if isinstance(schema, dict):
        items = []
        for name, spec in schema.items():
            if isinstance(spec, Field):
                items.append(spec)
            elif isinstance(spec, dict):
                if "values" not in spec:
                    raise ValueError(f"schema[{name!r}]: expected a dict with 'values' (and 'question'), got {spec}")
                items.append(Field(str(name), spec.get("question", f"What is the {name}?"),
                                   tuple(map(str, spec["values"])), spec.get("positive")))
            elif isinstance(spec, (list, tuple)):
                items.append(Field(str(name), f"What is the {name}?", tuple(map(str, spec))))
            else:
                raise TypeError(f"schema[{name!r}]: expected a Field, a dict or a list of values, got "
                                f"{type(spec).__name__}")
        schema = items
    if not isinstance(schema, (list, tuple)) or not schema or not all(isinstance(f, Field) for f in schema):
        raise TypeError("schema: expected a dict {field: values or {'question', 'values'}} or a list of Field")
    for f in schema:
        if len(f.values) == 0:
            raise ValueError(f"schema[{f.name!r}]: needs at least one allowed value")
        if len(set(f.options)) != len(f.options):
            raise ValueError(f"schema[{f.name!r}]: allowed values repeat: {f.values}")
        if f.positive is not None and f.positive not in f.values:
            raise ValueError(f"schema[{f.name!r}]: positive value {f.positive!r} is not among {f.values}")
    return list(schema)


@dataclasses.dataclass
class Extraction:
    """values[field]: the chosen value per document; scores[field]: [n_docs, n_options] log-likelihoods."""
    values: dict[str, list[str]]
    scores: dict[str, np.ndarray]
    options: dict[str, tuple[str, ...]]
    model_id: str

    def records(self) -> list[dict[str, str]]:
        names = list(self.values)
        return [{f: self.values[f][i] for f in names} for i in range(len(self.values[names[0]]) if names else 0)]


class StructuredExtractor:
    """Constrained choice among a schema's values by log-likelihood (spec §3.1).

    Args:
        lm: a Hugging Face causal LM (pass its `tokenizer`), or a callable
            ``lm(prompt, options) -> sequence of scores`` (any other model or rule).
        schema: {field: [values]} or {field: {"question": ..., "values": [...], "positive": ...}}
            or a list of Field. "not mentioned" is always an allowed answer.
        demos: few-shot examples [(text, {field: value})] placed before each document.
        score: "sum" (log-likelihood of the whole value) or "mean" (per token).
        chat: wrap the prompt in the tokenizer's chat template (default: when it has one).
        reuse_prompt: score the options from the prompt's KV cache (HF models; False: one padded
            sequence per option, for models whose cache cannot be repeated along the batch).
        calibrate: subtract each option's score on a content-free document ("N/A"), which removes
            a small model's preference for one answer regardless of the text (contextual
            calibration, Zhao et al. 2021).
    """

    def __init__(self, lm, schema, demos=None, tokenizer=None, *, score: str = "sum", chat: bool | None = None,
                 batch_size: int = 16, model_id: str | None = None, reuse_prompt: bool = True,
                 calibrate: bool = False):
        self.fields = _fields(schema)
        bs.check_choice("score", score, ("sum", "mean"))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.demos = list(demos or [])
        for d in self.demos:
            if not (isinstance(d, (tuple, list)) and len(d) == 2 and isinstance(d[1], dict)):
                raise TypeError("demos: expected a list of (text, {field: value}) pairs")
        self.lm, self.tokenizer, self.score_kind, self.batch_size = lm, tokenizer, score, batch_size
        self.reuse_prompt, self.calibrate = reuse_prompt, calibrate
        self._hf = hasattr(lm, "forward") and hasattr(lm, "config")
        if self._hf and tokenizer is None:
            raise TypeError("tokenizer: a Hugging Face model needs its tokenizer (tokenizer=...)")
        if not self._hf and not callable(lm):
            raise TypeError(f"lm: expected a Hugging Face causal LM or a callable(prompt, options), got "
                            f"{type(lm).__name__}")
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        self.model_id = model_id or (getattr(lm.config, "name_or_path", "") or type(lm).__name__ if self._hf
                                     else getattr(lm, "__name__", type(lm).__name__))

    def prompt(self, text: str, field: Field) -> str:
        """The text the allowed values are scored after."""
        def block(t, answer=None):
            q = f"Document: {t}\nQuestion: {field.question} Answer with one of: {', '.join(field.options)}.\nAnswer:"
            return q + (f" {answer}\n\n" if answer is not None else "")

        shots = "".join(block(t, vals.get(field.name, NOT_MENTIONED)) for t, vals in self.demos)
        body = shots + block(text)
        if self.chat:
            body = self.tokenizer.apply_chat_template([{"role": "user", "content": body[:-len("Answer:")].rstrip()}],
                                                      add_generation_prompt=True, tokenize=False)
        return body

    def extract(self, texts, progress: bool = False) -> Extraction:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a list of strings")
        texts = list(texts) + (["N/A"] if self.calibrate else [])
        jobs = [(i, f) for f in self.fields for i in range(len(texts))]
        scores = {f.name: np.zeros((len(texts), len(f.options))) for f in self.fields}
        if self._hf:
            self._score_hf(texts, jobs, scores, progress)
        else:
            for i, f in jobs:
                s = np.asarray(self.lm(self.prompt(texts[i], f), list(f.options)), dtype=np.float64)
                if s.shape != (len(f.options),):
                    raise ValueError(f"lm: the callable returned {s.shape} scores for {len(f.options)} options")
                scores[f.name][i] = s
        if self.calibrate:  # the last row is the content-free document
            scores = {k: v[:-1] - v[-1] for k, v in scores.items()}
        values = {f.name: [f.options[j] for j in scores[f.name].argmax(1)] for f in self.fields}
        return Extraction(values, scores, {f.name: f.options for f in self.fields}, str(self.model_id))

    __call__ = extract

    def _score_hf(self, texts, jobs, scores, progress):
        import torch

        tok, model = self.tokenizer, self.lm
        device = next(model.parameters()).device
        seqs = []  # (field, doc, option index, prompt ids, option ids)
        opt_ids = {}
        for i, f in jobs:
            p_ids = tok(self.prompt(texts[i], f), add_special_tokens=not self.chat)["input_ids"]
            for j, o in enumerate(f.options):
                if (f.name, o) not in opt_ids:
                    text = (" " if not self.chat else "") + o
                    opt_ids[(f.name, o)] = tok(text, add_special_tokens=False)["input_ids"]
                seqs.append((f.name, i, j, p_ids, opt_ids[(f.name, o)]))
        from tqdm import tqdm

        model.eval()
        if self.reuse_prompt:
            return self._score_cached(seqs, scores, device, tqdm, progress)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0

        order = sorted(range(len(seqs)), key=lambda s: len(seqs[s][3]) + len(seqs[s][4]))  # less padding
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        with torch.inference_mode():
            for batch in tqdm(batches, desc="extract", disable=not progress):
                rows = [seqs[s][3] + seqs[s][4] for s in batch]
                width = max(map(len, rows))
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, row in enumerate(rows):
                    ids[r, :len(row)] = torch.tensor(row)
                    mask[r, :len(row)] = 1
                # Only the positions that predict option tokens go through the LM head: full logits
                # are [batch, length, vocab] (0.6 GB for SmolLM2 at 16 x 200 tokens).
                rows_i = torch.cat([torch.full((len(seqs[s][4]),), r) for r, s in enumerate(batch)])
                pos = torch.cat([torch.arange(len(seqs[s][3]) - 1, len(seqs[s][3]) - 1 + len(seqs[s][4]))
                                 for s in batch])
                targets = ids[rows_i, pos + 1].to(device)
                ids, mask = ids.to(device), mask.to(device)
                decoder, head = model.get_decoder(), model.get_output_embeddings()
                if decoder is not None and head is not None:
                    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                    logits = head(hidden[rows_i.to(device), pos.to(device)]).float()
                else:  # models whose head is not a plain projection of the decoder output
                    logits = model(input_ids=ids, attention_mask=mask).logits[rows_i, pos].float()
                lp_all = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0].cpu()
                start = 0
                for s in batch:
                    name, i, j, _, o_ids = seqs[s]
                    lp = lp_all[start:start + len(o_ids)]
                    start += len(o_ids)
                    scores[name][i, j] = float(lp.sum() if self.score_kind == "sum" else lp.mean())


    def _cache_arg(self) -> str:
        import inspect

        # transformers >= 5.24 renamed past_key_values to cache (the old name warns)
        return "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"

    def _score_cached(self, seqs, scores, device, tqdm, progress):
        """One forward over each prompt; the options continue from its KV cache (the prompt is
        most of the tokens, so this is about n_options times less work than scoring prompt + option
        sequences). The first option token's log-probability comes from the prompt's last position."""
        import torch

        model = self.lm
        groups: dict = {}
        for name, i, j, p_ids, o_ids in seqs:
            groups.setdefault((name, i), (p_ids, []))[1].append((j, o_ids))
        with torch.inference_mode():
            for (name, i), (p_ids, opts) in tqdm(groups.items(), desc="extract", disable=not progress):
                out = model(input_ids=torch.tensor([p_ids], device=device), use_cache=True, logits_to_keep=1)
                first = torch.log_softmax(out.logits[0, -1].float(), -1)
                lps = {j: [float(first[o[0]])] for j, o in opts}
                longer = [(j, o) for j, o in opts if len(o) > 1]
                if longer:
                    cache = out.past_key_values
                    cache.batch_repeat_interleave(len(longer))
                    width = max(len(o) for _, o in longer) - 1
                    ids = torch.zeros((len(longer), width), dtype=torch.long)
                    for r, (_, o) in enumerate(longer):
                        ids[r, :len(o) - 1] = torch.tensor(o[:-1])
                    mask = torch.ones((len(longer), len(p_ids) + width), dtype=torch.long)
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                                   **{self._cache_arg(): cache}).logits.float()
                    logp = torch.log_softmax(logits, -1)
                    for r, (j, o) in enumerate(longer):  # right padding: later tokens never see it
                        lps[j] += [float(logp[r, t, o[t + 1]]) for t in range(len(o) - 1)]
                for j, lp in lps.items():
                    scores[name][i, j] = sum(lp) if self.score_kind == "sum" else sum(lp) / len(lp)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _columns(x, name: str) -> dict[str, np.ndarray]:
    if isinstance(x, Extraction):
        x = x.values
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], dict):
        keys = list(x[0])
        x = {k: [r.get(k, NOT_MENTIONED) for r in x] for k in keys}
    if not isinstance(x, dict):
        raise TypeError(f"{name}: expected an Extraction, a dict {{field: values}} or a list of dicts")
    out = {}
    for k, v in x.items():
        arr = as_array(v, f"{name}[{k!r}]")
        out[k] = np.array([NOT_MENTIONED if (e is None or (isinstance(e, float) and e != e)) else str(e)
                           for e in arr.tolist()], dtype=object)
    return out


@dataclasses.dataclass
class FieldValidation:
    field: str
    groups: list
    n: np.ndarray
    values: list[str]
    confusion: np.ndarray  # [G, V, V] gold x pred counts
    metrics: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # name -> (estimate, lo, hi) over groups
    per_value: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]  # precision/recall -> value -> ...
    reference: Any
    differences: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # error-rate name -> group - reference
    flagged: dict[str, np.ndarray]  # CI of the difference excludes 0
    positive: str | None = None  # the positive value of a binary field


@dataclasses.dataclass
class ValidationResult:
    fields: dict[str, FieldValidation]
    alpha: float
    n_boot: int

    def rows(self) -> list[dict]:
        out = []
        for fv in self.fields.values():
            for j, g in enumerate(fv.groups):
                for name, (e, lo, hi) in fv.metrics.items():
                    out.append({"field": fv.field, "group": label_str(g), "n": int(fv.n[j]), "metric": name,
                                "estimate": float(e[j]), "lo": float(lo[j]), "hi": float(hi[j])})
                for kind, per in fv.per_value.items():
                    for v, (e, lo, hi) in per.items():
                        out.append({"field": fv.field, "group": label_str(g), "n": int(fv.n[j]),
                                    "metric": f"{kind}[{v}]", "estimate": float(e[j]), "lo": float(lo[j]),
                                    "hi": float(hi[j])})
        return out

    def flags(self) -> list[dict]:
        """Groups whose error rate differs from the reference group's (CI of the difference excludes 0)."""
        out = []
        for fv in self.fields.values():
            for name, (e, lo, hi) in fv.differences.items():
                for j, g in enumerate(fv.groups):
                    if g == fv.reference:
                        continue
                    out.append({"field": fv.field, "metric": name, "group": label_str(g),
                                "reference": label_str(fv.reference), "difference": float(e[j]), "lo": float(lo[j]),
                                "hi": float(hi[j]), "flagged": bool(fv.flagged[name][j])})
        return out

    def sens_spec(self, field: str):
        """Per-group (sensitivity, specificity) point estimates of a binary field, for Rogan-Gladen.

        Defined as `corrected_disparity` uses them (the prevalence of the positive value among all
        rows): every gold row without the positive value is a negative, "not mentioned" included.
        The validation table's specificity leaves "not mentioned" rows out, so the two differ when
        the field has such rows; passing the table's figure as `spec=` would mix definitions."""
        fv = self.fields[field]
        if fv.positive is None:
            raise ValueError(f"field: {field!r} has no positive value; pass positive={{{field!r}: value}}")
        p = fv.values.index(fv.positive)
        c = fv.confusion
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = c[:, p, p] / c[:, p, :].sum(-1)
            negatives = c.sum((1, 2)) - c[:, p, :].sum(-1)
            spec = (negatives - (c[:, :, p].sum(-1) - c[:, p, p])) / negatives
        return {label_str(g): (float(sens[j]), float(spec[j])) for j, g in enumerate(fv.groups)}

    def to_markdown(self, digits: int = 2) -> str:
        lines = []
        for fv in self.fields.values():
            names = [m for m in ("exact_match", "macro_f1", "sensitivity", "specificity", "missing_read_as_value",
                                 "value_read_as_missing") if m in fv.metrics]
            lines.append(f"| {fv.field}: group | n | " + " | ".join(names) + " |")
            lines.append("|---|---:|" + "---|" * len(names))
            for j, g in enumerate(fv.groups):
                cells = []
                for m in names:
                    e, lo, hi = (a[j] for a in fv.metrics[m])
                    cells.append("n/a" if e != e else f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]")
                lines.append(f"| {label_str(g)} | {int(fv.n[j])} | " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)


def _confusion_metrics(c: np.ndarray, values: list[str], positive: str | None):
    """From confusion counts [..., V, V] (gold x pred): summary metrics and per-value precision/recall."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = c.sum((-1, -2))
        tp = np.diagonal(c, axis1=-2, axis2=-1)
        gold_n, pred_n = c.sum(-1), c.sum(-2)
        prec, rec = tp / pred_n, tp / gold_n
        f1 = 2 * tp / (gold_n + pred_n)
        with_values = gold_n + pred_n > 0
        macro = np.where(with_values, f1, 0).sum(-1) / with_values.sum(-1)
        m = {"exact_match": tp.sum(-1) / n, "macro_f1": macro}
        nm = values.index(NOT_MENTIONED) if NOT_MENTIONED in values else None
        if nm is not None:
            other = [i for i in range(len(values)) if i != nm]
            m["missing_read_as_value"] = c[..., nm, other].sum(-1) / c[..., nm, :].sum(-1)
            m["value_read_as_missing"] = c[..., other, nm].sum(-1) / c[..., other, :].sum((-1, -2))
            m["n_missing_read_as_value"] = c[..., nm, other].sum(-1)
            m["n_value_read_as_missing"] = c[..., other, nm].sum(-1)
        if positive is not None:
            p = values.index(positive)
            neg = [i for i in range(len(values)) if i not in (p, nm)]
            m["sensitivity"] = c[..., p, p] / gold_n[..., p]
            m["specificity"] = (c[..., neg, :].sum((-1, -2)) - c[..., neg, p].sum(-1)) / c[..., neg, :].sum((-1, -2))
            if nm is not None:  # the missing-vs-absence confusion of a yes/no field, both directions
                m["absent_read_as_missing"] = c[..., neg, nm].sum(-1)
                m["missing_read_as_absent"] = c[..., nm, neg].sum(-1)
    return m, {"precision": prec, "recall": rec}


def validate_extraction(pred, gold, groups, *, fields=None, positive: dict | None = None, reference_group=None,
                        n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> ValidationResult:
    """Per field x subgroup: exact match, macro-F1, per-value precision/recall, sensitivity and
    specificity of binary fields (`positive={field: value}`; a "not mentioned" gold row is neither),
    and the missingness-vs-absence confusion ("not mentioned" vs a value), each with a bootstrap CI
    (rows resampled within groups). A group is flagged where the CI of its error-rate difference to
    the reference group (default: the largest) excludes 0: 1 - exact match, and 1 - sensitivity and
    1 - specificity for binary fields.
    """
    alpha, n_boot = bs.check_alpha(alpha), bs.check_n_boot(n_boot)
    P, Gd = _columns(pred, "pred"), _columns(gold, "gold")
    names = list(fields) if fields is not None else [f for f in Gd if f in P]
    if not names:
        raise ValueError("pred, gold: no field appears in both")
    positive = dict(positive or {})
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        if name not in P or name not in Gd:
            raise ValueError(f"fields: {name!r} is missing from {'pred' if name not in P else 'gold'}")
        gv, pv = Gd[name], P[name]
        check_aligned(len(gv), f"gold[{name!r}]", pv, f"pred[{name!r}]")
        (codes, labels), = group_maps(groups, len(gv)).values()
        values = sorted(set(gv.tolist()) | set(pv.tolist()) | {NOT_MENTIONED})
        pos = positive.get(name)
        if pos is not None and pos not in values:
            raise ValueError(f"positive[{name!r}]: {pos!r} never occurs in gold or pred ({values})")
        V, G = len(values), len(labels)
        vi = {v: i for i, v in enumerate(values)}
        cell = (codes * V + np.array([vi[v] for v in gv])) * V + np.array([vi[v] for v in pv])
        conf = np.bincount(cell, minlength=G * V * V).reshape(G, V, V).astype(np.float64)
        n_g = conf.sum((1, 2))
        ref = int(np.argmax(n_g)) if reference_group is None else labels.index(reference_group) \
            if reference_group in labels else _bad_ref(reference_group, labels)
        m0, pv0 = _confusion_metrics(conf, values, pos)
        reps_c = rng.multinomial(n_g.astype(np.int64), (conf / n_g[:, None, None]).reshape(G, -1),
                                 size=(max(n_boot, 1), G)).reshape(-1, G, V, V).astype(np.float64)
        mr, pvr = _confusion_metrics(reps_c, values, pos)

        def ci(point, reps):
            if n_boot == 0:
                return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
            lo, hi = bs.intervals(point, reps.reshape(len(reps), -1), alpha, "percentile")
            return point, lo.reshape(point.shape), hi.reshape(point.shape)

        metrics = {k: ci(m0[k], mr[k]) for k in m0 if not k.startswith("n_") and "_read_as_" not in k
                   or k in ("missing_read_as_value", "value_read_as_missing")}
        for k in m0:  # counts: no interval
            if k.startswith("n_") or k in ("absent_read_as_missing", "missing_read_as_absent"):
                metrics[k] = (m0[k], np.full(G, np.nan), np.full(G, np.nan))
        per_value = {kind: {v: ci(pv0[kind][:, i], pvr[kind][:, :, i]) for i, v in enumerate(values)}
                     for kind in pv0}
        errors = {"error_rate": 1 - m0["exact_match"]}
        errors_r = {"error_rate": 1 - mr["exact_match"]}
        if pos is not None:
            for k in ("sensitivity", "specificity"):
                errors[f"1 - {k}"], errors_r[f"1 - {k}"] = 1 - m0[k], 1 - mr[k]
        diffs, flags = {}, {}
        for k in errors:
            d0 = errors[k] - errors[k][ref]
            dr = errors_r[k] - errors_r[k][:, ref:ref + 1]
            diffs[k] = ci(d0, dr)
            flags[k] = (diffs[k][1] > 0) | (diffs[k][2] < 0)
            flags[k][ref] = False
        out[name] = FieldValidation(name, labels, n_g.astype(np.int64), values, conf, metrics, per_value, labels[ref],
                                    diffs, flags, pos)
    return ValidationResult(out, alpha, n_boot)


def _bad_ref(ref, labels):
    raise ValueError(f"reference_group: {ref!r} is not one of the groups {[label_str(x) for x in labels][:20]}")
