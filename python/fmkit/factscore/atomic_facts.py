"""Atomic-fact generation: sentences of a generation are broken into facts by a prompted LM.

The prompt per sentence is a list of demonstration blocks (`Please breakdown the following
sentence into independent facts: <sentence>`, one `- <fact>` line per fact, a blank line): the
first `n_fixed` demonstrations in order, then the `n_bm25` demonstrations most similar to the
sentence by BM25, then the instruction line for the sentence. fmkit ships its own demonstrations
(sentences about invented people); upstream's `demos/demons.json` can be loaded with
`load_demos` for exact reproduction.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Callable, Sequence

from fmkit.factscore.bm25 import BM25, whitespace_tokens
from fmkit.factscore.text import SentenceSplitter, split_paragraphs

log = logging.getLogger(__name__)

INSTRUCTION = "Please breakdown the following sentence into independent facts: "

# fmkit's demonstrations: bio-style sentences about invented people, in the upstream block format.
DEMOS: dict[str, list[str]] = {
    "Mara Velden made her film debut in the 2004 drama The Quiet Harbor.": [
        "Mara Velden made her film debut.", "Mara Velden's film debut was in 2004.",
        "Mara Velden's film debut was in The Quiet Harbor.", "The Quiet Harbor is a drama.",
        "The Quiet Harbor was released in 2004."],
    "In 1998, Tomas Rienzi was one of twelve pilots selected by the space agency for astronaut training.": [
        "Tomas Rienzi was selected for astronaut training.", "Tomas Rienzi was selected in 1998.",
        "Tomas Rienzi was a pilot.", "Twelve pilots were selected for astronaut training.",
        "The space agency selected the pilots."],
    "Before her first feature, Ilse Brandt directed three short films that screened at regional festivals.": [
        "Ilse Brandt directed three short films.", "Ilse Brandt directed the short films before her first feature.",
        "Ilse Brandt's short films screened at regional festivals."],
    "Born on 3 May 1951, Oren Kask flew as the flight engineer of the second lunar survey mission.": [
        "Oren Kask was born on 3 May 1951.", "Oren Kask flew on the second lunar survey mission.",
        "Oren Kask was the flight engineer of the second lunar survey mission."],
    "Lucia Ferran is a composer and conductor who led the Northvale Symphony for eleven years.": [
        "Lucia Ferran is a composer.", "Lucia Ferran is a conductor.", "Lucia Ferran led the Northvale Symphony.",
        "Lucia Ferran led the Northvale Symphony for eleven years."],
    "She is best known for starring in a series of romantic comedies set in coastal towns.": [
        "She is best known for starring in a series of romantic comedies.",
        "The romantic comedies are set in coastal towns."],
    "His breakthrough came with the 2011 thriller Glass Meridian, which earned him a critics' award.": [
        "He had a breakthrough.", "His breakthrough came with Glass Meridian.", "Glass Meridian is a thriller.",
        "Glass Meridian was released in 2011.", "He earned a critics' award for Glass Meridian."],
    "Anika Solberg studied chemistry at the University of Tarn and later worked as a patent examiner.": [
        "Anika Solberg studied chemistry.", "Anika Solberg studied at the University of Tarn.",
        "Anika Solberg worked as a patent examiner.", "Anika Solberg worked as a patent examiner after her studies."],
    "The novelist Piet Arlo wrote nine books, two of which were adapted for television.": [
        "Piet Arlo is a novelist.", "Piet Arlo wrote nine books.", "Two of Piet Arlo's books were adapted for television."],
    "Kenji Moravec played midfield for Sestra United from 1987 to 1995 and then coached its youth team.": [
        "Kenji Moravec played midfield.", "Kenji Moravec played for Sestra United.",
        "Kenji Moravec played for Sestra United from 1987 to 1995.", "Kenji Moravec coached Sestra United's youth team.",
        "Kenji Moravec coached the youth team after 1995."],
    "Dalia Oyelaran was elected mayor of Port Quill in 2016 and re-elected in 2020.": [
        "Dalia Oyelaran was elected mayor of Port Quill.", "Dalia Oyelaran was elected in 2016.",
        "Dalia Oyelaran was re-elected in 2020."],
    "The painter Rui Castelo is known for large murals of harbour workers.": [
        "Rui Castelo is a painter.", "Rui Castelo is known for large murals.",
        "Rui Castelo's murals show harbour workers."],
}

# A fact that ends with a bare verb ("He was born.") says nothing another fact does not.
_GENERIC_ENDINGS = ("born.", "appointed.", "known.", "elected.", "featured.", "released.", "nominated.",
                    "awarded.", "founded.", "selected.", "recognized.", "named.")
_NUMBER = re.compile(r"\b\d[\d,.]*\b")


def load_demos(path: str) -> dict[str, list[str]]:
    """Demonstrations from a local JSON file {sentence: [fact, ...]} (upstream's demons.json)."""
    with open(path, encoding="utf-8") as f:
        demos = json.load(f)
    if not isinstance(demos, dict) or not all(isinstance(v, list) for v in demos.values()):
        raise ValueError(f"demos {path!r}: expected a JSON object mapping sentences to lists of facts")
    return demos


def demo_block(sentence: str, facts: Sequence[str]) -> str:
    return INSTRUCTION + sentence + "\n" + "".join(f"- {f}\n" for f in facts) + "\n"


def parse_facts(output: str) -> list[str]:
    """Items of a `- a\\n- b` list, stripped, each ending with a period. As upstream
    (`split("- ")[1:]`), text before the first "- " (a chat model's preamble such as "Here are
    the facts:") is not a fact; text after a blank line (a model continuing with a new
    demonstration) is ignored."""
    output = output.strip().split("\n\n")[0]
    facts = []
    for item in output.split("- ")[1:]:
        item = item.strip()
        if not item or item.startswith(INSTRUCTION.strip()):
            continue
        item = item.split("\n")[0].strip()
        if item and item[-1] not in ".!?":
            item += "."
        if item:
            facts.append(item)
    return facts


def postprocess(sentence: str, facts: list[str]) -> list[str]:
    """Offline stand-in for upstream's spaCy step: drop a fact ending in a bare generic verb when
    another fact contains it, drop facts with numbers absent from the sentence, de-duplicate.
    If the sentence's numbers are no longer all covered, the raw facts are kept."""
    keep = []
    for f in facts:
        if f.lower().endswith(_GENERIC_ENDINGS) and any(f[:-1] in g for g in facts if g != f):
            continue
        if any(n.rstrip(".,") not in sentence for n in _NUMBER.findall(f)):
            continue
        if f not in keep:
            keep.append(f)
    numbers = {n.rstrip(".,") for n in _NUMBER.findall(sentence)}
    covered = {n.rstrip(".,") for f in keep for n in _NUMBER.findall(f)}
    return keep if numbers <= covered or not facts else list(dict.fromkeys(facts))


class AtomicFactGenerator:
    """`gen(generation) -> [(sentence, [facts])]` with a prompted LM.

    Args:
        lm: a callable `list[prompt] -> list[reply]` (e.g. HFGenerator, a scripted stub, an API
            client) or a local model path.
        demos: {sentence: [facts]} (default: fmkit's DEMOS).
        n_fixed, n_bm25: fixed demonstrations (first in order) and BM25-selected ones.
        is_bio: biography mode (skips "Sure"/"Please"/"Here are" sentences, post-processes facts);
            False: 8 fixed demonstrations and no BM25 ones, as upstream.
        cache: an LMCache; replies are keyed by (lm id, prompt, 0).
    """

    def __init__(self, lm, demos: dict[str, list[str]] | None = None, n_fixed: int = 7, n_bm25: int = 1,
                 is_bio: bool = True, cache=None, splitter: Callable[[str], list[str]] | None = None,
                 temperature: float = 0.7, max_new_tokens: int = 512):
        from fmkit.factscore.lm import HFGenerator, model_id_of

        if isinstance(lm, str):
            lm = HFGenerator(lm, temperature=temperature, max_new_tokens=max_new_tokens)
        if not callable(lm):
            raise TypeError(f"lm: expected a callable list[str] -> list[str] or a model path, got {type(lm).__name__}")
        self.lm, self.cache, self.is_bio = lm, cache, is_bio
        self.lm_id = model_id_of(lm)
        self.demos = dict(DEMOS if demos is None else demos)
        if not is_bio:
            n_fixed, n_bm25 = 8, 0
        if n_fixed < 0 or n_bm25 < 0:
            raise ValueError("n_fixed, n_bm25: expected integers >= 0")
        self.n_fixed, self.n_bm25 = n_fixed, n_bm25
        self._sentences = list(self.demos)
        self._bm25 = BM25([whitespace_tokens(s) for s in self._sentences]) if self._sentences and n_bm25 else None
        self.splitter = splitter or SentenceSplitter()

    def prompt(self, sentence: str) -> str:
        blocks = [demo_block(s, self.demos[s]) for s in self._sentences[:self.n_fixed]]
        if self._bm25 is not None:
            for j in self._bm25.top_k([whitespace_tokens(sentence)], self.n_bm25)[0]:
                s = self._sentences[j]
                blocks.append(demo_block(s, self.demos[s]))
        return "".join(blocks) + INSTRUCTION + sentence + "\n"

    def sentences(self, generation: str) -> list[str]:
        out = []
        for para in split_paragraphs(generation):
            sents = self.splitter(para)
            for i, s in enumerate(sents):
                if self.is_bio and (s.startswith(("Sure", "Please")) or (i == 0 and s.startswith("Here are"))
                                    or s.startswith("This sentence does not contain any facts")):
                    continue
                out.append(s)
        return out

    def __call__(self, generation: str) -> list[tuple[str, list[str]]]:
        return self.batch([generation])[0]

    def batch(self, generations: Sequence[str]) -> list[list[tuple[str, list[str]]]]:
        """All sentences of all generations go to the LM in one call (it batches them)."""
        for i, g in enumerate(generations):
            if not isinstance(g, str):
                raise TypeError(f"generations[{i}]: expected a str, got {type(g).__name__}")
            if not g.strip():  # FactScorer counts these as abstentions before getting here
                raise ValueError(f"generations[{i}] is empty: there are no facts to extract")
        per_gen = [self.sentences(g) for g in generations]
        prompts = [self.prompt(s) for sents in per_gen for s in sents]
        if self.cache is not None:
            replies = self.cache.cached(self.lm_id, self.lm, prompts)
        else:
            replies = list(self.lm(prompts)) if prompts else []
        if len(replies) != len(prompts):
            raise ValueError(f"lm returned {len(replies)} replies for {len(prompts)} prompts")
        it = iter(replies)
        out = []
        for sents in per_gen:
            pairs = []
            for s in sents:
                facts = parse_facts(next(it))
                pairs.append((s, postprocess(s, facts) if self.is_bio else facts))
            out.append(pairs)
        return out
