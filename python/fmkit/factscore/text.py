"""Offline text rules: sentence splitting with FActScore's repairs, abstention detectors, and the
answer parser for chat-style verifiers. Pure Python (no NLTK, no spaCy)."""
from __future__ import annotations

import re
import string

# Tokens that end in a period without ending a sentence (compared lower-cased, without the period).
ABBREVIATIONS = frozenset("""mr mrs ms dr prof sr jr st mt ft vs etc inc ltd co corp gen col lt sgt capt
cmdr adm gov sen rep rev hon pres no vol pp ed eds al fig jan feb mar apr jun jul aug sep sept oct nov dec
e.g i.e u.s u.k a.m p.m ph.d b.a m.a b.sc m.sc""".split())

_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+(?=[A-Z0-9\"'(\[])")
_INITIAL = re.compile(r"(?:^|\s)[A-Z]\.$")


class SentenceSplitter:
    """Rule-based splitter: a sentence ends at . ! or ? followed by whitespace and an uppercase
    letter, digit, quote or bracket, unless the word before the period is an abbreviation. Then
    FActScore's repairs: an initial ("J.") never ends a sentence; a one-word first sentence joins
    the next; one-word later sentences and sentences starting lower-case join the previous one."""

    def __init__(self, abbreviations=ABBREVIATIONS):
        self.abbreviations = frozenset(a.lower().rstrip(".") for a in abbreviations)

    def raw_split(self, text: str) -> list[str]:
        out, start = [], 0
        for m in _BOUNDARY.finditer(text):
            piece = text[start:m.end()].strip()
            last = piece.rstrip("\"')]").split()[-1] if piece.split() else ""
            if last.endswith(".") and last[:-1].lower().lstrip("(\"'") in self.abbreviations:
                continue
            out.append(piece)
            start = m.end()
        tail = text[start:].strip()
        if tail:
            out.append(tail)
        return out

    def __call__(self, text: str) -> list[str]:
        sents = self.raw_split(text)
        merged: list[str] = []
        for s in sents:  # an initial ("John F. Kennedy") was split off: glue it back
            if merged and _INITIAL.search(merged[-1]):
                merged[-1] = merged[-1] + " " + s
            else:
                merged.append(s)
        out: list[str] = []
        pending = ""
        for i, s in enumerate(merged):
            if pending:
                s, pending = pending + " " + s, ""
            one_word = len(s.split()) == 1
            if not out and one_word and i + 1 < len(merged):
                pending = s
            elif out and (one_word or s[:1].islower()):
                out[-1] = out[-1] + " " + s
            else:
                out.append(s)
        if pending:
            out.append(pending)
        return out


def split_paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n") if p.strip()]


# -- abstention ---------------------------------------------------------------------------------

_NO_INFO = (  # openings of an answer engine that found nothing (paraphrased, ours)
    "i'm sorry", "i am sorry", "sorry,", "i could not find", "i couldn't find", "i cannot find",
    "i can't find", "there is no information", "there are no search results", "no search results",
    "i do not have information", "i don't have information", "unfortunately, i", "please try a more general",
    "try a more general question", "it is not clear who", "the search results do not",
)


def _generic_abstain(text: str) -> bool:
    return text.startswith("I'm sorry") or "provide more" in text


def _perplexity_abstain(text: str) -> bool:
    text = re.sub(r"\[\d+(?:,\s*\d+)*\]", "", text).strip()
    low = text.lower()
    if low.startswith(_NO_INFO):
        return True
    for para in split_paragraphs(text):  # a paragraph of content before the first refusal counts
        if any(phrase in para.lower() for phrase in _NO_INFO):
            return True
        return False
    return True


ABSTAIN_DETECTORS = {"generic": _generic_abstain, "perplexity_ai": _perplexity_abstain}


def is_abstain(text: str, detector: str | None = None) -> bool:
    """True for an empty (whitespace) generation, or one the named detector flags."""
    if not isinstance(text, str):
        raise TypeError(f"generation: expected a str, got {type(text).__name__}")
    if not text.strip():
        return True
    if detector is None:
        return False
    if detector not in ABSTAIN_DETECTORS:
        raise ValueError(f"abstain_detection_type: expected one of {sorted(ABSTAIN_DETECTORS)} or None, "
                         f"got {detector!r}")
    return ABSTAIN_DETECTORS[detector](text)


# -- chat-style verdict parser ------------------------------------------------------------------

_NEGATIONS = ("not", "cannot", "unknown", "information")


def parse_true_false(reply: str) -> bool:
    """Reads a verifier's free-text reply: only "true" -> supported, only "false" -> not, both ->
    the word whose first mention comes later decides (upstream's index comparison), neither ->
    supported unless a negation word occurs."""
    low = reply.lower()
    t, f = low.find("true"), low.find("false")
    if t >= 0 and f >= 0:
        return t > f
    if t >= 0 or f >= 0:
        return t >= 0
    words = low.translate(str.maketrans("", "", string.punctuation)).split()
    return not any(w in _NEGATIONS for w in words)
