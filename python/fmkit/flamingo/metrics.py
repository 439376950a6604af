"""The metrics of OpenFlamingo's evaluation suite, as pure functions (no Java, no network).

- `ptb_tokenize`: PTB-style tokenisation as the COCO caption evaluation applies it before its
  scorers (lower case, punctuation split off and dropped, contractions split: "don't" ->
  "do n't"), written for fmkit; the COCO toolkit runs Stanford's Java tokenizer instead.
- `cider_d`: CIDEr-D exactly as the COCO caption evaluation's `Cider` scorer computes it on
  tokenised text: TF-IDF n-gram vectors (n = 1..4, document frequencies over the reference
  sets of the corpus), candidate counts clipped at the reference's, a Gaussian length penalty
  (sigma 6), averaged over references and n, times 10. Its length is the scorer's: the number
  of bigrams, not of words (a quirk kept for equality).
- `vqa_accuracy`: the official VQA accuracy, min(1, #humans agreeing / 3) averaged over the 10
  leave-one-out subsets of the 10 human answers, after the official normalisation.
- `roc_auc`: area under the ROC curve (HatefulMemes), ties counted as one half.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

# Tokens the COCO evaluation drops after tokenising (PTB punctuation and bracket tokens).
_DROPPED = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--", "...",
            ";", "(", ")", "[", "]", "{", "}", '"'}
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
_LEADING = "\"'`([{"
_TRAILING = "\"`)]}.,;:?!"


def _split_word(word: str) -> list[str]:
    head, tail = [], []
    while word and word[0] in _LEADING:
        head.append(word[0])
        word = word[1:]
    while word:
        if word.endswith("..."):
            tail.insert(0, "...")
            word = word[:-3]
        elif word[-1] in _TRAILING:
            tail.insert(0, word[-1])
            word = word[:-1]
        else:
            break
    out = []
    for clitic in _CLITICS:
        if word.endswith(clitic) and len(word) > len(clitic):
            out = [word[: -len(clitic)], clitic]
            break
    else:
        if word.endswith("'") and len(word) > 1:  # plural possessive: "dogs'" -> "dogs '"
            out = [word[:-1], "'"]
        elif word:
            out = [word]
    # Punctuation inside a word separates it, except hyphens, periods in numbers and apostrophes.
    parts = []
    for piece in out:
        parts.extend(t for t in re.split(r"([,;:?!\"()\[\]{}]|(?<!\d)\.(?!\d))", piece) if t)
    return head + parts + tail


def ptb_tokenize(text: str) -> str:
    """PTB-style tokens of `text`, lower-cased, punctuation removed, joined by single spaces."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    tokens = []
    for word in text.lower().replace("\n", " ").split():
        tokens.extend(t for t in _split_word(word) if t not in _DROPPED)
    return " ".join(tokens)


def _ngrams(sentence: str, n: int) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check_caption_inputs(candidates, references):
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise TypeError(f"candidates: expected a sequence of strings, got {type(candidates).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"references: expected a sequence of lists of strings, got {type(references).__name__}")
    if len(candidates) != len(references):
        raise ValueError(f"references: {len(references)} reference lists for {len(candidates)} candidates")
    if not candidates:
        raise ValueError("candidates: expected at least one candidate")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}]: expected a non-empty list of reference strings, got {refs!r}")


def cider_d_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], *, tokenize: bool = True,
                   n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-candidate CIDEr-D (see the module docstring); `tokenize=False` takes pre-tokenised text."""
    _check_caption_inputs(candidates, references)
    prep = ptb_tokenize if tokenize else (lambda s: s)
    cands = [_ngrams(prep(c), n) for c in candidates]
    refs = [[_ngrams(prep(r), n) for r in rs] for rs in references]
    df = Counter(g for rs in refs for g in {g for r in rs for g in r})
    log_docs = math.log(float(len(refs)))

    def vector(counts):
        vec = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            value = float(tf) * (log_docs - math.log(max(1.0, df[gram])))
            vec[k][gram] = value
            norm[k] += value * value
            if k == 1:  # the COCO scorer's "length" counts bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for cand, rs in zip(cands, refs):
        vec, norm, length = vector(cand)
        total = [0.0] * n
        for r in rs:
            vec_r, norm_r, length_r = vector(r)
            penalty = math.exp(-((length - length_r) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                value = sum(min(v, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, v in vec[k].items())
                if norm[k] != 0 and norm_r[k] != 0:
                    value /= norm[k] * norm_r[k]
                total[k] += value * penalty
        scores.append(sum(total) / n / len(rs) * 10.0)
    return scores


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], *, tokenize: bool = True,
            n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D: the mean of `cider_d_scores` (the number COCO's evaluation reports, x100
    in papers). `references[i]` are the human captions of candidate i."""
    scores = cider_d_scores(candidates, references, tokenize=tokenize, n=n, sigma=sigma)
    return sum(scores) / len(scores)


# ---- VQA accuracy ----

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official evaluation maps contractions typed without apostrophes ("dont", "youre") to their
# spelled form. The forms below generate that map: each key is the form with some or all of its
# apostrophes removed.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she's should've shouldn't "
    "shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's "
    "something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll "
    "they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's "
    "where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all "
    "y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


def _contraction_map() -> dict[str, str]:
    out = {}
    for form in _CONTRACTED:
        positions = [i for i, ch in enumerate(form) if ch == "'"]
        for mask in range(1, 2 ** len(positions)):  # every non-empty subset of apostrophes removed
            drop = {p for j, p in enumerate(positions) if mask >> j & 1}
            key = "".join(ch for i, ch in enumerate(form) if i not in drop)
            if key not in _ARTICLES and key not in _NUMBER_WORDS:
                out.setdefault(key, form)
    return out


_CONTRACTIONS = _contraction_map()


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_NUMBER.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _process_digits_articles(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(answer: str) -> str:
    """The official normalisation: punctuation (kept inside numbers like 1,000 and 2.5), number
    words to digits, articles dropped, apostrophe-less contractions spelled out, lower case."""
    return _process_digits_articles(_process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


VQA_HUMAN_ANSWERS = 10


def vqa_accuracy_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]], *,
                        normalize: str = "official") -> list[float]:
    """Per-question official VQA accuracy.

    Each question must have the 10 human answers the official metric assumes (VQAv2, OK-VQA,
    TextVQA and VizWiz all collect 10); another count raises ValueError. `normalize`:
    "official" normalises the prediction and the answers only when the humans disagree (as the
    official script does); "always" normalises every time; "none" compares stripped strings.
    """
    if normalize not in ("official", "always", "none"):
        raise ValueError(f"normalize: expected 'official', 'always' or 'none', got {normalize!r}")
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise TypeError(f"predictions: expected a sequence of strings, got {type(predictions).__name__}")
    if len(predictions) != len(answers):
        raise ValueError(f"answers: {len(answers)} answer lists for {len(predictions)} predictions")
    scores = []
    for i, (pred, humans) in enumerate(zip(predictions, answers)):
        if isinstance(humans, str) or len(humans) != VQA_HUMAN_ANSWERS:
            got = "a string" if isinstance(humans, str) else f"{len(humans)} answers"
            raise ValueError(f"answers[{i}]: expected the {VQA_HUMAN_ANSWERS} human answers the official VQA "
                             f"accuracy assumes (it averages over the 10 leave-one-out subsets), got {got}")
        if not isinstance(pred, str):
            raise TypeError(f"predictions[{i}]: expected a str, got {type(pred).__name__}")
        clean = lambda s: s.replace("\n", " ").replace("\t", " ").strip()  # noqa: E731
        humans = [clean(a) for a in humans]
        pred = clean(pred)
        if normalize == "always" or (normalize == "official" and len(set(humans)) > 1):
            humans = [normalize_vqa_answer(a) for a in humans]
            pred = normalize_vqa_answer(pred)
        matches = [a == pred for a in humans]
        total = sum(matches)
        # Leave human j out: the others agreeing with the prediction, capped at 3.
        scores.append(sum(min(1.0, (total - m) / 3.0) for m in matches) / len(humans))
    return scores


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]], *, normalize: str = "official") -> float:
    """Mean official VQA accuracy in [0, 1] (see `vqa_accuracy_scores`)."""
    scores = vqa_accuracy_scores(predictions, answers, normalize=normalize)
    if not scores:
        raise ValueError("predictions: expected at least one prediction")
    return sum(scores) / len(scores)


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of `scores` for binary `labels` (1 positive), ties as 1/2."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"labels: {y.shape[0]} labels for {s.shape[0]} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels: expected 0/1 labels")
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"labels: ROC-AUC needs both classes, got {pos} positives and {neg} negatives")
    if not np.isfinite(s).all():
        raise ValueError("scores: expected finite values")
    # Average ranks (ties share the mean of their ranks): the Mann-Whitney U statistic.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))
