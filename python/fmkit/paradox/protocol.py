"""The Generative AI Paradox protocol (West et al., arXiv:2311.00059): selective and interrogative
evaluation, and the automatic variant of Oh et al. (arXiv:2402.06204).

Components are plain callables so that a HF model, a scripted stub or stored human labels plug
in the same way:
  generator(inputs: list[str]) -> list[str]
  judge(input, output, reference) -> "win" | "tie" | "loss"       (output against the reference)
  chooser(inputs: list[str], candidates: list[list[str]]) -> list[int]   (-1: malformed = wrong)
The HF-backed ones (HFGenerator, LoglikChooser, LetterChooser, LMPairwiseJudge, LoglikAnswerer)
live at the end of this module.
"""
from __future__ import annotations

import datetime
import random
import re
import string
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from fmkit.paradox.stats import agreement_matrix, paired_bootstrap, pearson

VERDICTS = ("win", "tie", "loss")


@dataclass
class ParadoxItem:
    """One task instance: its input, the human-written reference output, the distractors of the
    discriminative version, optionally a human's own generated output and a difficulty label."""

    input: str
    reference: str
    distractors: list[str]
    human_gen_output: str | None = None
    difficulty: str | None = None
    id: str | None = None

    def __post_init__(self):
        if not isinstance(self.input, str):
            raise TypeError(f"input: expected a string, got {type(self.input).__name__}")
        if not isinstance(self.reference, str) or not self.reference.strip():
            raise ValueError(f"reference: expected a non-empty string (item {self.id or self.input[:40]!r})")
        if isinstance(self.distractors, str) or not isinstance(self.distractors, (list, tuple)) \
                or len(self.distractors) == 0:
            raise ValueError(f"distractors: item {self.id or self.input[:40]!r} has no distractors; the "
                             "discriminative version needs at least one")
        for d in self.distractors:
            if not isinstance(d, str) or not d.strip():
                raise ValueError(f"distractors: item {self.id or self.input[:40]!r} has an empty distractor")
        self.distractors = list(self.distractors)

    @classmethod
    def from_dict(cls, d: dict) -> "ParadoxItem":
        known = {k: d[k] for k in ("input", "reference", "distractors", "human_gen_output", "difficulty", "id")
                 if k in d}
        missing = [k for k in ("input", "reference", "distractors") if k not in d]
        if missing:
            raise ValueError(f"item {d.get('id', '?')}: missing field(s) {', '.join(missing)}")
        return cls(**known)


def shuffled_candidates(item: ParadoxItem, seed: int, index: int) -> tuple[list[str], int]:
    """The reference and distractors in a seeded order (per item, independent of the others) and
    the reference's position in it."""
    cands = [item.reference] + list(item.distractors)
    order = list(range(len(cands)))
    random.Random(f"{seed}:{index}").shuffle(order)
    return [cands[k] for k in order], order.index(0)


def generation_score(verdicts: Sequence[str], tie_weight: float = 1.0) -> dict:
    """G = mean of 1[win] + tie_weight * 1[tie] (tie_weight 1: 'as good as or better'; 0.5: win + half
    tie), with the win/tie/loss rates."""
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad:
        raise ValueError(f"judge: expected verdicts in {VERDICTS}, got {bad[0]!r}")
    if not 0.0 <= tie_weight <= 1.0:
        raise ValueError(f"tie_weight: expected a number in [0, 1], got {tie_weight}")
    n = len(verdicts)
    rates = {v: (sum(x == v for x in verdicts) / n if n else float("nan")) for v in VERDICTS}
    return {"G": rates["win"] + tie_weight * rates["tie"], **{f"{v}_rate": r for v, r in rates.items()}}


def paradox_holds(G: float, D: float, G_h: float, D_h: float) -> bool:
    """The paper's sub-hypothesis 1: generation at or above human level, understanding below it."""
    return bool(G >= G_h and D < D_h)


@dataclass
class HumanBaseline:
    """Human numbers for one dataset, supplied as data. `discrimination` is D_h (a float) or per-item
    0/1 correctness (then item-level human correlations are reported). `generation` is G_h; when
    absent, the items' human_gen_output are judged like the model's, else parity (0.5)."""

    discrimination: float | Sequence[float]
    generation: float | None = None
    generation_per_item: Sequence[float] | None = None
    source: str = "supplied as data"


@dataclass
class SelectiveReport:
    dataset: str
    n_items: int
    G: float
    win_rate: float
    tie_rate: float
    loss_rate: float
    D: float
    G_h: float | None
    G_h_source: str | None
    D_h: float | None
    paradox_holds: bool | None
    gap_D: float | None  # D_h - D
    D_by_difficulty: dict
    correlation_model: float
    correlation_human: float | None
    ci: dict
    same_model: bool | None
    models: dict
    provenance: str | None
    started: str
    finished: str
    tie_weight: float
    per_item: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _model_id(component) -> str:
    if component is None:
        return "stored outputs"
    for attr in ("model_id", "__name__"):
        value = getattr(component, attr, None)
        if value:
            return str(value)
    return type(component).__name__


def selective_eval(items: Sequence[ParadoxItem], generator: Callable, judge: Callable, chooser: Callable,
                   human: HumanBaseline | None = None, seed: int = 0, tie_weight: float = 1.0,
                   dataset: str = "dataset", same_model: bool | None = None, provenance: str | None = None,
                   n_boot: int = 1000, outputs: Sequence[str] | None = None) -> SelectiveReport:
    """Generative and discriminative versions of the same items.

    G: the judge compares each generated output with the reference (`generation_score`). D: the
    chooser picks among the reference and distractors in a seeded order; a malformed choice (-1 or
    out of range) counts as wrong. With `human`, the paradox flag G >= G_h and D < D_h and the gap
    D_h - D are reported. `outputs` skips generation with stored model outputs.
    """
    items = list(items)
    if not items:
        raise ValueError("items: expected at least one ParadoxItem")
    for k, it in enumerate(items):
        if not isinstance(it, ParadoxItem):
            raise TypeError(f"items[{k}]: expected a ParadoxItem, got {type(it).__name__}")
    started = _now()
    if outputs is None:
        outputs = list(generator([it.input for it in items]))
    if len(outputs) != len(items):
        raise ValueError(f"generator: returned {len(outputs)} outputs for {len(items)} items")
    verdicts = [judge(it.input, out, it.reference) for it, out in zip(items, outputs)]
    gen = generation_score(verdicts, tie_weight)
    gen_success = np.array([1.0 if v == "win" else tie_weight if v == "tie" else 0.0 for v in verdicts])

    shuffled = [shuffled_candidates(it, seed, k) for k, it in enumerate(items)]
    chosen = list(chooser([it.input for it in items], [c for c, _ in shuffled]))
    if len(chosen) != len(items):
        raise ValueError(f"chooser: returned {len(chosen)} choices for {len(items)} items")
    disc = np.array([float(c == g) for c, (_, g) in zip(chosen, shuffled)])
    D = float(disc.mean())
    levels = sorted({it.difficulty for it in items if it.difficulty is not None}, key=str)
    by_diff = {lvl: float(disc[[it.difficulty == lvl for it in items]].mean()) for lvl in levels}

    G_h = D_h = flag = gap = corr_h = None
    G_h_source = None
    if human is not None:
        d_h = human.discrimination
        if np.ndim(d_h) == 0:
            D_h, d_h_items = float(d_h), None
        else:
            d_h_items = np.asarray(d_h, dtype=float)
            if len(d_h_items) != len(items):
                raise ValueError(f"human.discrimination: {len(d_h_items)} per-item labels do not line up with "
                                 f"the {len(items)} items")
            D_h = float(d_h_items.mean())
        g_h_items = None
        if human.generation_per_item is not None:
            g_h_items = np.asarray(human.generation_per_item, dtype=float)
            if len(g_h_items) != len(items):
                raise ValueError(f"human.generation_per_item: {len(g_h_items)} labels do not line up with the "
                                 f"{len(items)} items")
        if human.generation is not None:
            G_h, G_h_source = float(human.generation), human.source
        elif g_h_items is not None:
            G_h, G_h_source = float(g_h_items.mean()), human.source
        elif all(it.human_gen_output for it in items):
            h_verdicts = [judge(it.input, it.human_gen_output, it.reference) for it in items]
            G_h, G_h_source = generation_score(h_verdicts, tie_weight)["G"], "human outputs judged like the model's"
            g_h_items = np.array([1.0 if v == "win" else tie_weight if v == "tie" else 0.0 for v in h_verdicts])
        else:
            G_h, G_h_source = 0.5, "parity (no human outputs given)"
        flag, gap = paradox_holds(gen["G"], D, G_h, D_h), D_h - D
        if d_h_items is not None and g_h_items is not None:
            corr_h = pearson(g_h_items, d_h_items)

    ci = {
        "G": paired_bootstrap({"g": gen_success}, lambda c: c["g"].mean(), n_boot, seed),
        "D": paired_bootstrap({"d": disc}, lambda c: c["d"].mean(), n_boot, seed),
        "G_minus_D": paired_bootstrap({"g": gen_success, "d": disc}, lambda c: c["g"].mean() - c["d"].mean(),
                                      n_boot, seed),
    }
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant column is reported as NaN, the common case on tiny sets
        corr_m = pearson(gen_success, disc)
    per_item = [{"id": it.id if it.id is not None else k, "output": out, "verdict": v, "gen_success": float(g),
                 "candidates": c, "gold": gi, "chosen": int(ch), "disc_correct": float(dc),
                 "difficulty": it.difficulty}
                for k, (it, out, v, g, (c, gi), ch, dc) in enumerate(zip(items, outputs, verdicts, gen_success,
                                                                         shuffled, chosen, disc))]
    return SelectiveReport(
        dataset=dataset, n_items=len(items), G=gen["G"], win_rate=gen["win_rate"], tie_rate=gen["tie_rate"],
        loss_rate=gen["loss_rate"], D=D, G_h=G_h, G_h_source=G_h_source, D_h=D_h, paradox_holds=flag, gap_D=gap,
        D_by_difficulty=by_diff, correlation_model=corr_m, correlation_human=corr_h, ci=ci, same_model=same_model,
        models={"generator": _model_id(generator), "judge": _model_id(judge), "chooser": _model_id(chooser)},
        provenance=provenance, started=started, finished=_now(), tie_weight=tie_weight, per_item=per_item)


def dataset_correlations(reports: Sequence[SelectiveReport]) -> dict:
    """Pearson and Spearman of G vs D across datasets, and the datasets where the flag fails
    (never only an aggregate yes/no)."""
    from fmkit.paradox.stats import spearman

    G = [r.G for r in reports]
    D = [r.D for r in reports]
    return {"pearson": pearson(G, D), "spearman": spearman(G, D),
            "paradox_holds": {r.dataset: r.paradox_holds for r in reports},
            "failing": [r.dataset for r in reports if r.paradox_holds is False]}


# -- judges ----------------------------------------------------------------------------------------


class PairwiseJudge:
    """Turns compare(input, a, b) -> 'A' | 'B' | 'tie' (which is better) into a verdict on the
    output against the reference. Both orders are asked; disagreement is a tie (position bias)."""

    def __init__(self, compare: Callable, model_id: str | None = None):
        self.compare = compare
        self.model_id = model_id or _model_id(compare)

    def __call__(self, input: str, output: str, reference: str) -> str:
        first = {"A": "win", "B": "loss"}.get(self.compare(input, output, reference), "tie")
        second = {"B": "win", "A": "loss"}.get(self.compare(input, reference, output), "tie")
        return first if first == second else "tie"


class StoredJudge:
    """Stored verdicts (e.g. human pairwise labels), looked up by item input."""

    def __init__(self, verdicts: dict, model_id: str = "stored labels"):
        bad = [v for v in verdicts.values() if v not in VERDICTS]
        if bad:
            raise ValueError(f"verdicts: expected values in {VERDICTS}, got {bad[0]!r}")
        self.verdicts, self.model_id = dict(verdicts), model_id

    def __call__(self, input, output, reference):
        if input not in self.verdicts:
            raise ValueError(f"verdicts: no stored label for input {input[:60]!r}")
        return self.verdicts[input]


def _normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 after lower-casing and removing punctuation and articles."""
    p, r = _normalize_answer(prediction).split(), _normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum(min(p.count(w), r.count(w)) for w in set(p))
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def answer_match(prediction: str, reference: str) -> float:
    """1 when the normalised reference appears as a whole-word span of the normalised prediction
    (a full-sentence answer 'The capital is Paris.' matches 'Paris'), else the token F1."""
    p, r = _normalize_answer(prediction), _normalize_answer(reference)
    if r and f" {r} " in f" {p} ":
        return 1.0
    return token_f1(prediction, reference)


class ReferenceMetricJudge:
    """'tie' (as good as the reference) when metric(output, reference) >= threshold, else 'loss';
    a reference metric cannot say that an output beats the reference."""

    def __init__(self, metric: Callable = answer_match, threshold: float = 0.5, model_id: str | None = None):
        self.metric, self.threshold = metric, threshold
        self.model_id = model_id or f"reference metric {getattr(metric, '__name__', 'metric')} >= {threshold}"

    def __call__(self, input, output, reference):
        return "tie" if self.metric(output, reference) >= self.threshold else "loss"


# -- interrogative evaluation ----------------------------------------------------------------------


@dataclass
class Question:
    question: str
    options: list[str]
    answer: int

    def __post_init__(self):
        if len(self.options) < 2 or not 0 <= self.answer < len(self.options):
            raise ValueError(f"question {self.question[:40]!r}: needs >= 2 options and an answer index among them")


@dataclass
class InterrogativeReport:
    accuracy: float
    by_domain: dict
    human_accuracy: float | dict | None
    gap: float | dict | None  # human - model
    paradox_holds: bool | dict | None
    n_questions: int
    n_filtered: int
    per_prompt: list[dict]
    models: dict
    same_model: bool | None
    started: str
    finished: str

    def to_dict(self) -> dict:
        return asdict(self)


def interrogative_eval(prompts: Sequence[str], generator: Callable, question_maker: Callable, answerer: Callable,
                       validity_filter: Callable | None = None, human_accuracy=None,
                       domains: Sequence[str] | None = None, same_model: bool | None = None,
                       contents: Sequence[str] | None = None) -> InterrogativeReport:
    """The model generates content per prompt; question_maker(prompt, content) -> [Question]; invalid
    questions (validity_filter(content, question) False) are dropped; answerer(content, question)
    -> option index (-1 or out of range: malformed = wrong) answers with its own content in context.
    human_accuracy is a float or {domain: float}; the paradox holds where model < human."""
    prompts = list(prompts)
    if domains is not None and len(domains) != len(prompts):
        raise ValueError(f"domains: {len(domains)} labels do not line up with the {len(prompts)} prompts")
    domains = list(domains) if domains is not None else ["all"] * len(prompts)
    started = _now()
    contents = list(contents) if contents is not None else list(generator(prompts))
    if len(contents) != len(prompts):
        raise ValueError(f"generator: returned {len(contents)} contents for {len(prompts)} prompts")
    per_prompt, n_filtered = [], 0
    correct_by_domain: dict = {}
    for p, c, dom in zip(prompts, contents, domains):
        qs = list(question_maker(p, c))
        if validity_filter is not None:
            kept = [q for q in qs if validity_filter(c, q)]
            n_filtered += len(qs) - len(kept)
            qs = kept
        answers = [answerer(c, q) for q in qs]
        right = [float(a == q.answer) for a, q in zip(answers, qs)]
        correct_by_domain.setdefault(dom, []).extend(right)
        per_prompt.append({"prompt": p, "content": c, "domain": dom, "questions": [asdict(q) for q in qs],
                           "answers": answers, "accuracy": float(np.mean(right)) if right else float("nan")})
    all_right = [x for v in correct_by_domain.values() for x in v]
    acc = float(np.mean(all_right)) if all_right else float("nan")
    by_domain = {d: float(np.mean(v)) if v else float("nan") for d, v in correct_by_domain.items()}
    gap = flag = None
    if isinstance(human_accuracy, dict):
        missing = set(by_domain) - set(human_accuracy)
        if missing:
            raise ValueError(f"human_accuracy: no value for domain(s) {sorted(missing)}")
        gap = {d: human_accuracy[d] - by_domain[d] for d in by_domain}
        flag = {d: bool(by_domain[d] < human_accuracy[d]) for d in by_domain}
    elif human_accuracy is not None:
        gap, flag = float(human_accuracy) - acc, bool(acc < float(human_accuracy))
    return InterrogativeReport(
        accuracy=acc, by_domain=by_domain, human_accuracy=human_accuracy, gap=gap, paradox_holds=flag,
        n_questions=len(all_right), n_filtered=n_filtered, per_prompt=per_prompt,
        models={"generator": _model_id(generator), "question_maker": _model_id(question_maker),
                "answerer": _model_id(answerer)}, same_model=same_model, started=started, finished=_now())


# -- Oh et al. (arXiv:2402.06204): generation accuracy vs evaluation accuracy --------------------


@dataclass
class EvaluationParadoxReport:
    generation_accuracy: float
    evaluation_accuracy: float
    n_unfaithful: int
    unfaithful_rate: float  # among questions the model got wrong itself
    per_item: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    """TriviaQA-style: the normalised prediction equals, or contains, a normalised reference alias."""
    p = _normalize_answer(prediction)
    return any(_normalize_answer(r) and (p == _normalize_answer(r) or f" {_normalize_answer(r)} " in f" {p} ")
               for r in references)


def evaluation_paradox(questions: Sequence[str], references: Sequence[Sequence[str]], answer_fn: Callable,
                       judge_fn: Callable, candidates: Sequence[str] | None = None,
                       is_correct: Callable = exact_match) -> EvaluationParadoxReport:
    """The same model answers each question (answer_fn(questions) -> answers), then judges a candidate
    answer (judge_fn(question, answer) -> True for 'correct'); candidates default to its own answers.
    Evaluation accuracy: the verdict equals the candidate's true correctness. Unfaithful: a correct
    verdict on a question the model itself answered wrongly."""
    questions = list(questions)
    if len(references) != len(questions):
        raise ValueError(f"references: {len(references)} reference lists for {len(questions)} questions")
    answers = list(answer_fn(questions))
    if len(answers) != len(questions):
        raise ValueError(f"answer_fn: returned {len(answers)} answers for {len(questions)} questions")
    candidates = answers if candidates is None else list(candidates)
    if len(candidates) != len(questions):
        raise ValueError(f"candidates: {len(candidates)} candidates for {len(questions)} questions")
    rows = []
    for q, refs, a, c in zip(questions, references, answers, candidates):
        gen_ok = is_correct(a, refs)
        truth = is_correct(c, refs)
        verdict = bool(judge_fn(q, c))
        rows.append({"question": q, "answer": a, "gen_correct": gen_ok, "candidate": c, "candidate_correct": truth,
                     "verdict": verdict, "eval_correct": verdict == truth,
                     "unfaithful": verdict == truth and not gen_ok})
    n_wrong = sum(not r["gen_correct"] for r in rows)
    n_unf = sum(r["unfaithful"] for r in rows)
    return EvaluationParadoxReport(
        generation_accuracy=float(np.mean([r["gen_correct"] for r in rows])),
        evaluation_accuracy=float(np.mean([r["eval_correct"] for r in rows])),
        n_unfaithful=n_unf, unfaithful_rate=n_unf / n_wrong if n_wrong else float("nan"), per_item=rows)


def paired_agreement(selective: SelectiveReport, interrogative_accuracy: Sequence[float] | None = None):
    """Per-item agreement matrix of generation success, discrimination success and (when given,
    one value per item) self-interrogation accuracy."""
    cols = {"generation": [p["gen_success"] for p in selective.per_item],
            "discrimination": [p["disc_correct"] for p in selective.per_item]}
    if interrogative_accuracy is not None:
        if len(interrogative_accuracy) != selective.n_items:
            raise ValueError(f"interrogative_accuracy: {len(interrogative_accuracy)} values for "
                             f"{selective.n_items} items")
        cols["interrogation"] = [float(x >= 0.5) if x == x else float("nan") for x in interrogative_accuracy]
    return agreement_matrix(cols)


# -- distributed ---------------------------------------------------------------------------------


def run_sharded(fn: Callable, items: Sequence, group=None) -> list:
    """fn(items[rank::world]) on each rank of an initialised torch.distributed group, results gathered
    back into item order on every rank (a single process when torch.distributed is not initialised)."""
    import torch.distributed as dist

    items = list(items)
    if not (dist.is_available() and dist.is_initialized()):
        return list(fn(items))
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    mine = list(fn(items[rank::world]))
    gathered = [None] * world
    dist.all_gather_object(gathered, mine, group=group)
    out = [None] * len(items)
    for r, part in enumerate(gathered):
        out[r::world] = part
    return out


# -- HF-backed components ------------------------------------------------------------------------


def _chat_prompt(tokenizer, text: str, chat: bool) -> str:
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


class HFGenerator:
    """Greedy generation with a HF causal LM (chat template when the tokenizer has one)."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 40, chat: bool = True, batch_size: int = 8,
                 progress: bool = False):
        self.model, self.tok, self.max_new_tokens, self.chat = model, tokenizer, max_new_tokens, chat
        self.batch_size, self.progress = batch_size, progress
        self.model_id = getattr(model.config, "_name_or_path", None) or type(model).__name__

    def __call__(self, inputs: Sequence[str]) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        tok, outs = self.tok, []
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            for s in tqdm(range(0, len(inputs), self.batch_size), desc="generating", disable=not self.progress):
                texts = [_chat_prompt(tok, t, self.chat) for t in inputs[s:s + self.batch_size]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
                with torch.inference_mode():
                    gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                              pad_token_id=pad)
                outs += [t.strip() for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:],
                                                             skip_special_tokens=True)]
        finally:
            tok.padding_side = side
        return outs


class LoglikChooser:
    """Discrimination mode (b): argmax of the normalised log-likelihood of each candidate given the
    input, scored by `score_choices` (normalization 'char' = lm-eval acc_norm, 'token', 'sum', ...)."""

    def __init__(self, model, tokenizer, normalization: str = "char", prompt: str = "{input}\nAnswer:",
                 chat: bool = False, **score_kwargs):
        self.model, self.tok, self.normalization, self.prompt, self.chat = model, tokenizer, normalization, prompt, chat
        self.score_kwargs = score_kwargs
        self.model_id = getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.last_scores = None

    def __call__(self, inputs: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[int]:
        from fmkit.paradox.scoring import score_choices

        ctxs = [_chat_prompt(self.tok, self.prompt.format(input=t), self.chat) for t in inputs]
        self.last_scores = score_choices(self.model, self.tok, ctxs, [list(c) for c in candidates],
                                         unconditional=self.normalization == "pmi", **self.score_kwargs)
        return self.last_scores.predictions(self.normalization)


LETTERS = "ABCDEFGHIJ"


def letter_prompt(input: str, candidates: Sequence[str]) -> str:
    lines = [input, "", "Which option is correct? Reply with the letter only."]
    lines += [f"{LETTERS[k]}. {c}" for k, c in enumerate(candidates)]
    return "\n".join(lines)


def parse_letter(text: str, n: int) -> int:
    """The first standalone option letter in `text`, -1 when none (malformed counts as wrong)."""
    m = re.search(r"\b([A-J])\b", text.strip())
    if not m or LETTERS.index(m.group(1)) >= n:
        return -1
    return LETTERS.index(m.group(1))


class LetterChooser:
    """Discrimination mode (a): a prompted letter choice parsed from a generated reply."""

    def __init__(self, generate: Callable):
        self.generate = generate
        self.model_id = _model_id(generate)

    def __call__(self, inputs, candidates):
        replies = self.generate([letter_prompt(t, c) for t, c in zip(inputs, candidates)])
        return [parse_letter(r, len(c)) for r, c in zip(replies, candidates)]


class LMPairwiseJudge(PairwiseJudge):
    """An LLM as pairwise judge: which of responses A and B is better, read off the log-likelihood
    of ' A' vs ' B' after the question (no free-form parsing); both orders, disagreement = tie."""

    def __init__(self, model, tokenizer, chat: bool = True):
        self.model, self.tok, self.chat = model, tokenizer, chat
        super().__init__(self._compare, model_id=getattr(model.config, "_name_or_path", None) or type(model).__name__)

    def _compare(self, input, a, b):
        from fmkit.paradox.scoring import score_choices

        text = (f"Task: {input}\nResponse A: {a}\nResponse B: {b}\n"
                "Which response is better and more correct? Answer with A or B.")
        ctx = _chat_prompt(self.tok, text, self.chat) + ("" if self.chat else "\nAnswer:")
        s = score_choices(self.model, self.tok, [ctx], [["A", "B"]], unconditional=False,
                          target_delimiter="" if self.chat else " ")
        return "AB"[s.predictions("sum")[0]]


class LoglikAnswerer:
    """Answers a multiple-choice Question with the content in context, by log-likelihood."""

    def __init__(self, model, tokenizer, normalization: str = "char"):
        self.model, self.tok, self.normalization = model, tokenizer, normalization
        self.model_id = getattr(model.config, "_name_or_path", None) or type(model).__name__

    def __call__(self, content: str, question: Question) -> int:
        from fmkit.paradox.scoring import score_choices

        ctx = f"{content}\n\nQuestion: {question.question}\nAnswer:"
        s = score_choices(self.model, self.tok, [ctx], [list(question.options)],
                          unconditional=self.normalization == "pmi")
        return s.predictions(self.normalization)[0]
