"""FActScore benchmark: batched single-pass verification and BM25 retrieval against the anchors'
ways of doing them, on a generated 10k-passage knowledge source (200 topics x 50 passages).

- verify: fmkit's LogitVerifier (one forward pass per fact, padded batches, shared-prefix KV
  cache where facts share their passages) against the per-fact `generate` path OpenFActScore
  runs with an HF model (first generated token's logits; at its strongest setting, 1 new token;
  the full sizes also time upstream's 128-token decode). Same model, same passages, same tokens.
  The 'exact' column is decision agreement >= 99% with the per-fact 1-token path.
  Quick: a tiny random Llama; full: SmolLM2-135M-Instruct when installed (else the tiny one).
- bm25: index + top-5 for a batch of queries over one 10k-passage corpus, fmkit's sparse BM25
  against rank_bm25.BM25Okapi (get_scores per query, as upstream); 'exact' = same top-5 scores.
"""
from __future__ import annotations

import importlib.util
import random

import numpy as np
import torch

from fmkit.bench import unavailable

N_TOPICS, PASSAGES_PER_TOPIC, WORDS_PER_PASSAGE = 200, 50, 40
# quick: every case within a few seconds on 2 CPU cores; full: the target sizes
SIZES = {True: {"topics": 40, "facts": 12, "k": 5, "bm25_queries": 50},
         False: {"topics": N_TOPICS, "facts": 1000, "k": 5, "bm25_queries": 1000}}


def synthetic_source(seed: int = 0, n_topics: int = N_TOPICS):
    """Articles of PASSAGES_PER_TOPIC passages each over a 2,000-word vocabulary."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    records = []
    for t in range(n_topics):
        title = f"Person{t} Example"
        sections = [" ".join([title] + rng.choices(vocab, k=WORDS_PER_PASSAGE - 2)) + "."
                    for _ in range(PASSAGES_PER_TOPIC)]
        records.append({"title": title, "text": sections})
    return records


def _facts(records, n, seed=1):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rec = records[rng.randrange(len(records))]
        words = rng.choice(rec["text"]).split()[2:-1] if i % 2 == 0 else [f"w{rng.randrange(2000)}" for _ in range(6)]
        out.append((rec["title"], " ".join([rec["title"].split()[0]] + rng.sample(words, 6)) + "."))
    return out


def _models(quick):
    from fmkit.factscore import load_causal_lm, smollm2_path
    from fmkit.factscore._tiny import tiny_llama, word_tokenizer

    if not quick and smollm2_path():
        model, tok = load_causal_lm(smollm2_path())
        return model, tok, "SmolLM2-135M"
    records = synthetic_source()
    tok = word_tokenizer([s for r in records[:20] for s in r["text"]] + [f"w{i}" for i in range(2000)] +
                         ["Answer the question about based on the given context . Title : Text : Input : "
                          "True or False ? Output : Person Example"] + [f"Person{t}" for t in range(N_TOPICS)])
    return tiny_llama(len(tok), hidden=128, layers=2), tok, "tiny Llama d=128"


def _verify_case(quick):
    from fmkit.factscore import BM25Retriever, KnowledgeSource, LogitVerifier

    size = SIZES[quick]
    records = synthetic_source(n_topics=size["topics"])
    ks = KnowledgeSource.from_records(records, max_tokens=WORDS_PER_PASSAGE)
    facts = _facts(records, size["facts"])
    r = BM25Retriever(k=size["k"])
    items = []
    for topic in dict.fromkeys(t for t, _ in facts):
        mine = [f for t, f in facts if t == topic]
        items += [(topic, f, ps) for f, ps in zip(mine, r.retrieve(topic, mine, ks.get_passages(topic)))]
    model, tok, name = _models(quick)
    shared = LogitVerifier(model, tok, batch_size=16, share_prefix=True, chat=False)
    plain = LogitVerifier(model, tok, batch_size=16, share_prefix=False, chat=False)
    # The anchor runs first (warm-up call included) and leaves its decisions; fmkit's rows are
    # then compared with them: 'exact' = decision agreement >= 99%, filled in as they run.
    reference, exact = {}, {}

    def anchor(tokens):
        def run():
            reference.setdefault(tokens, np.array(plain.verify_generate(items, tokens)) > 0)
        return run

    def ours(name, v):
        def run():
            got = np.array(v.margins(items)) > 0
            exact[name] = bool((got == reference[1]).mean() >= 0.99)
        return run

    contenders = [("per-fact generate, 1 token", anchor(1), True)]
    if not quick:
        contenders.append(("per-fact generate, 128 tokens (upstream)", anchor(128), True))
    contenders += [("fmkit batched, shared prefix", ours("fmkit batched, shared prefix", shared), False),
                   ("fmkit batched", ours("fmkit batched", plain), False)]
    n_tokens = sum(len(p) + len(q) for p, q in (plain.encode(*it) for it in items))
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "shape": f"{len(items)} facts, {len(records) * PASSAGES_PER_TOPIC} passages, k={size['k']}, {name}",
        "flops": 2.0 * n_params * n_tokens,
        "contenders": contenders,
        "exact": exact,
        "repeats": 1,
    }


def _bm25_case(quick):
    from fmkit.factscore.bm25 import BM25

    rng = random.Random(2)
    corpus = [s.split() for r in synthetic_source(n_topics=SIZES[quick]["topics"]) for s in r["text"]]
    queries = [[f"w{rng.randrange(2000)}" for _ in range(8)] for _ in range(SIZES[quick]["bm25_queries"])]

    def ours():
        return BM25(corpus).top_k(queries, 5)

    contenders = [("fmkit BM25 (sparse product)", ours, False)]
    exact = {}
    if importlib.util.find_spec("rank_bm25") is None:
        contenders.append(("rank_bm25 BM25Okapi", unavailable("rank_bm25 not installed"), True))
    else:
        from rank_bm25 import BM25Okapi

        def theirs():
            index = BM25Okapi(corpus)
            return np.stack([np.argsort(index.get_scores(q))[::-1][:5] for q in queries])

        contenders.append(("rank_bm25 BM25Okapi", theirs, True))
        sample = queries[:20]
        ref = BM25Okapi(corpus)
        mine = BM25(corpus)
        exact["fmkit BM25 (sparse product)"] = all(
            np.allclose(np.sort(ref.get_scores(q))[::-1][:5], mine.scores(q)[row])
            for q, row in zip(sample, mine.top_k(sample, 5)))
    return {
        "shape": f"index + top-5, {len(corpus)} passages, {len(queries)} queries",
        "flops": 0.0,
        "contenders": contenders,
        "exact": exact,
        "repeats": 1,
    }


class _Cases:
    def __init__(self, builders):
        self._builders = builders

    def __len__(self):
        return len(self._builders)

    def __iter__(self):
        return (b() for b in self._builders)


def cases(device: torch.device, quick: bool):
    if importlib.util.find_spec("transformers") is None:
        return _Cases([lambda: _bm25_case(quick)])
    return _Cases([lambda: _verify_case(quick), lambda: _bm25_case(quick)])
