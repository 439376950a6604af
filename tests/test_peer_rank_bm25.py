"""fmkit's BM25 against rank_bm25.BM25Okapi, whose constants and idf floor it adopts, on random
corpora with repeated and unseen query words (negative idfs floored at epsilon * mean idf)."""
import random

import numpy as np
import pytest

from fmkit.factscore.bm25 import BM25

pytestmark = pytest.mark.slow


def _corpus(seed, n_docs, vocab):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    docs = [[rng.choice(words[: rng.randint(2, vocab)]) for _ in range(rng.randint(1, 40))] for _ in range(n_docs)]
    queries = [[rng.choice(words) for _ in range(rng.randint(1, 6))] + (["unseen"] if i % 3 == 0 else [])
               for i in range(20)]
    return docs, queries


@pytest.mark.parametrize("seed,n_docs,vocab", [(0, 1, 5), (1, 7, 4), (2, 300, 60), (3, 2000, 500)])
def test_scores_equal_rank_bm25(seed, n_docs, vocab):
    rank_bm25 = pytest.importorskip("rank_bm25")
    docs, queries = _corpus(seed, n_docs, vocab)
    ours, theirs = BM25(docs), rank_bm25.BM25Okapi(docs)
    got = ours.batch_scores(queries)
    for q, row in zip(queries, got):
        np.testing.assert_allclose(row, theirs.get_scores(q), rtol=1e-12, atol=1e-12)
    top = ours.top_k(queries, 3)
    for q, row in zip(queries, top):  # the same top scores (their order of tied documents is unspecified)
        s = theirs.get_scores(q)
        np.testing.assert_allclose(np.sort(s)[::-1][: len(row)], s[row], rtol=1e-12)

