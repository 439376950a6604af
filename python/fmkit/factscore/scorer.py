"""FActScore: the share of a generation's atomic facts supported by the knowledge source,
averaged over the prompts the model answered, with the gamma length penalty, bootstrap
confidence intervals over prompts, and `estimator_error` against human scores."""
from __future__ import annotations

import json
import math
import re
from typing import Sequence

import numpy as np

from fmkit.factscore.text import is_abstain


def length_penalty(n_facts: int, gamma: float) -> float:
    """1 if n_facts > gamma (or gamma == 0), else exp(1 - gamma / n_facts)."""
    if gamma < 0:
        raise ValueError(f"gamma: expected a number >= 0, got {gamma}")
    if not gamma or n_facts > gamma:
        return 1.0
    return math.exp(1 - gamma / n_facts)


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one per prompt), resampling prompts."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


_SUBJECTIVE = re.compile(r"\b(best|greatest|famous|beautiful|talented|renowned|important|influential|"
                         r"remarkable|widely regarded|considered|believed|legacy|inspir\w*|passion\w*)\b", re.I)


def is_verifiable(fact: str) -> bool:
    """VeriScore's idea as a rule: a checkable claim names something (a capitalised word after
    the first, or a number) and is not an opinion."""
    words = fact.split()
    names = any(w[:1].isupper() for w in words[1:]) or any(c.isdigit() for c in fact)
    return names and not _SUBJECTIVE.search(fact)


def dedupe(facts: Sequence[str]) -> list[str]:
    """Drops repeated claims (compared lower-cased, spaces and final punctuation normalised)."""
    seen, out = set(), []
    for f in facts:
        key = " ".join(f.lower().rstrip(" .!?").split())
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


class FactScorer:
    """Scores generations against a knowledge source.

    Args:
        knowledge_source: a KnowledgeSource (or pass one to get_score).
        verifier: LogitVerifier, TextVerifier, NPScorer or an Ensemble of them.
        atomic_fact_generator: an AtomicFactGenerator (not needed with `atomic_facts=`).
        retriever: used for verifiers that have none of their own (default BM25, k = 5).
        abstain_detection_type: None, "generic" or "perplexity_ai".
        verifiable_only: drop facts `is_verifiable` rejects before verification (VeriScore's idea).
        dedupe_facts: drop repeated facts within a response.
    """

    def __init__(self, knowledge_source=None, verifier=None, atomic_fact_generator=None, retriever=None,
                 abstain_detection_type: str | None = None, verifiable_only: bool = False,
                 dedupe_facts: bool = False, progress: bool = True):
        from fmkit.factscore.retrieval import BM25Retriever

        if abstain_detection_type is not None:
            is_abstain("x", abstain_detection_type)  # validates the name
        self.knowledge_source, self.verifier = knowledge_source, verifier
        self.atomic_fact_generator = atomic_fact_generator
        self.retriever = retriever or BM25Retriever(k=5)
        self.abstain_detection_type = abstain_detection_type
        self.verifiable_only, self.dedupe_facts, self.progress = verifiable_only, dedupe_facts, progress

    def _retrieve(self, verifier, pairs: list[tuple[str, str]], ks) -> list[tuple]:
        retriever = getattr(verifier, "retriever", None) or self.retriever
        by_topic: dict[str, list[int]] = {}
        for i, (topic, _) in enumerate(pairs):
            by_topic.setdefault(topic, []).append(i)
        items: list = [None] * len(pairs)
        for topic, idx in by_topic.items():
            found = retriever.retrieve(topic, [pairs[i][1] for i in idx], ks.get_passages(topic))
            for i, ps in zip(idx, found):
                items[i] = (topic, pairs[i][1], ps)
        return items

    def verify(self, pairs: list[tuple[str, str]], knowledge_source=None) -> list[bool]:
        """Decisions for (topic, fact) pairs, all in one batch per verifier."""
        from fmkit.factscore.verify import Ensemble

        ks = knowledge_source or self.knowledge_source
        if ks is None:
            raise ValueError("knowledge_source: none given (pass one to FactScorer or get_score)")
        if self.verifier is None:
            raise ValueError("verifier: none given")
        if not pairs:
            return []
        if isinstance(self.verifier, Ensemble):
            stub = [(t, f, None) for t, f in pairs]
            return self.verifier.verify(stub, retrieve=lambda v, sub: self._retrieve(v, [(t, f) for t, f, _ in sub], ks))
        return self.verifier.verify(self._retrieve(self.verifier, pairs, ks))

    def get_score(self, topics: Sequence[str], generations: Sequence[str], gamma: float = 10,
                  atomic_facts: Sequence[Sequence[str] | None] | None = None, knowledge_source=None,
                  verbose: bool = False, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
        """Upstream-compatible result: score, init_score (gamma > 0), respond_ratio, decisions,
        num_facts_per_response; plus score_ci / init_score_ci (bootstrap over answered prompts).
        Under torch.distributed (world size > 1) each rank scores every world-th generation and
        the results are gathered, so every rank returns the full result."""
        topics, generations = list(topics), list(generations)
        if len(topics) != len(generations):
            raise ValueError(f"topics and generations: expected equal lengths, got {len(topics)} and {len(generations)}")
        if atomic_facts is not None and len(atomic_facts) != len(generations):
            raise ValueError(f"atomic_facts: expected one entry per generation ({len(generations)}), got {len(atomic_facts)}")
        for i, (t, g) in enumerate(zip(topics, generations)):
            if not isinstance(t, str) or not isinstance(g, str):
                raise TypeError(f"topics[{i}] and generations[{i}]: expected strings, got "
                                f"{type(t).__name__} and {type(g).__name__}")
        ks = knowledge_source or self.knowledge_source
        if ks is None:
            raise ValueError("knowledge_source: none given (pass one to FactScorer or get_score)")
        for t in dict.fromkeys(topics):  # fail before any model runs
            ks.get_passages(t)
        rank, world = _dist_rank_world()
        mine = list(range(rank, len(topics), world))
        local = self._decisions([topics[i] for i in mine], [generations[i] for i in mine],
                                None if atomic_facts is None else [atomic_facts[i] for i in mine], ks)
        decisions = _gather(mine, local, len(topics), world)
        return summarize(decisions, gamma, n_boot=n_boot, alpha=alpha, seed=seed)

    def _decisions(self, topics, generations, atomic_facts, ks) -> list[list[dict] | None]:
        facts: list[list[str] | None] = []
        todo = []
        for i, g in enumerate(generations):
            if is_abstain(g, self.abstain_detection_type):
                facts.append(None)
            elif atomic_facts is not None:
                given = atomic_facts[i]
                facts.append(None if given is None else [str(f) for f in given])
            else:
                facts.append([])
                todo.append(i)
        if todo:
            if self.atomic_fact_generator is None:
                raise ValueError("atomic_fact_generator: none given; pass one or precomputed atomic_facts")
            for i, pairs in zip(todo, self.atomic_fact_generator.batch([generations[i] for i in todo])):
                facts[i] = [f for _, fs in pairs for f in fs]
        for i, fs in enumerate(facts):
            if fs is None:
                continue
            if self.dedupe_facts:
                fs = dedupe(fs)
            if self.verifiable_only:
                fs = [f for f in fs if is_verifiable(f)]
            facts[i] = fs or None  # no facts: the response counts as an abstention
        pairs = [(topics[i], f) for i, fs in enumerate(facts) if fs for f in fs]
        flat = iter(self.verify(pairs, ks))
        return [None if fs is None else [{"atom": f, "is_supported": bool(next(flat))} for f in fs] for fs in facts]


def summarize(decisions: Sequence[list[dict] | None], gamma: float = 10, n_boot: int = 2000, alpha: float = 0.05,
              seed: int = 0) -> dict:
    """The score keys from per-response decisions (None = no response)."""
    answered = [d for d in decisions if d is not None]
    raw = [float(np.mean([x["is_supported"] for x in d])) for d in answered]
    penalised = [length_penalty(len(d), gamma) * r for d, r in zip(answered, raw)]
    nan = float("nan")
    out = {
        "score": float(np.mean(penalised)) if answered else nan,
        "respond_ratio": len(answered) / len(decisions) if decisions else nan,
        "decisions": list(decisions),
        "num_facts_per_response": float(np.mean([len(d) for d in answered])) if answered else nan,
        "score_ci": bootstrap_ci(penalised, n_boot, alpha, seed),
        "num_responses": len(answered),
    }
    if gamma:
        out["init_score"] = float(np.mean(raw)) if answered else nan
        out["init_score_ci"] = bootstrap_ci(raw, n_boot, alpha, seed)
    return out


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(mine: list[int], local: list, n: int, world: int) -> list:
    if world == 1:
        return local
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, list(zip(mine, local)))
    out: list = [None] * n
    for part in parts:
        for i, d in part:
            out[i] = d
    return out


# -- human annotations ------------------------------------------------------------------------------


def human_factscore(path: str) -> float:
    """FActScore from upstream's labeled JSONL (one response per line, `annotations` a list of
    sentences with `human-atomic-facts` [{text, label: S|NS|IR}], or null for no response):
    S / (S + NS) per response, IR ignored, averaged over responses; no gamma penalty."""
    scores = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            ann = rec.get("annotations")
            if ann is None:
                continue
            labels = [a["label"] for s in ann for a in (s.get("human-atomic-facts") or [])]
            bad = set(labels) - {"S", "NS", "IR"}
            if bad:
                raise ValueError(f"{path}:{n}: unknown labels {sorted(bad)}; expected S, NS or IR")
            s, ns = labels.count("S"), labels.count("NS")
            if s + ns:
                scores.append(s / (s + ns))
    if not scores:
        raise ValueError(f"{path}: no annotated responses")
    return float(np.mean(scores))


def estimator_error(estimated: dict[str, float], human: dict[str, float | str]) -> dict:
    """ER per subject model (|estimated - human|, in the units given; paths in `human` are read
    with human_factscore, a fraction) and whether the estimator keeps the human ranking."""
    human = {m: human_factscore(v) if isinstance(v, str) else float(v) for m, v in human.items()}
    missing = sorted(set(human) ^ set(estimated))
    if missing:
        raise ValueError(f"estimated and human: expected the same models, these are in only one: {missing}")
    er = {m: abs(float(estimated[m]) - human[m]) for m in human}
    order_e = sorted(human, key=lambda m: -float(estimated[m]))
    order_h = sorted(human, key=lambda m: -human[m])
    return {"er": er, "mean_er": float(np.mean(list(er.values()))), "ranking_preserved": order_e == order_h,
            "human": human}
