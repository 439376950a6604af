"""fmkit.flamingo.metrics.cider_d against pycocoevalcap's Cider on pre-tokenised text (the COCO
caption evaluation; its Java PTB tokenizer is not used: both sides get the same tokens).
Install the peer with `pip install pycocoevalcap`; without it the module is skipped."""
import random

import numpy as np
import pytest

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed (pip install pycocoevalcap)")
from pycocoevalcap.cider.cider import Cider  # noqa: E402

from fmkit.flamingo.metrics import cider_d, cider_d_scores, ptb_tokenize  # noqa: E402

pytestmark = pytest.mark.slow

WORDS = ("a man dog cat on the grass red blue riding horse sitting table with two of in front small big "
         "white black plate food street").split()


def corpus(seed, n, max_refs=5):
    rng = random.Random(seed)
    sent = lambda: " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))  # noqa: E731 (lengths 1..12: short n-grams too)
    cands = [sent() for _ in range(n)]
    refs = [[sent() for _ in range(rng.randint(1, max_refs))] for _ in range(n)]
    cands[0] = refs[0][0]  # an exact match
    return cands, refs


@pytest.mark.parametrize("seed,n", [(0, 1), (1, 2), (2, 25), (3, 120)])
def test_cider_d_equals_pycocoevalcap(seed, n):
    cands, refs = corpus(seed, n)
    score, scores = Cider().compute_score({i: refs[i] for i in range(n)}, {i: [cands[i]] for i in range(n)})
    np.testing.assert_allclose(cider_d_scores(cands, refs, tokenize=False), scores, rtol=1e-12, atol=1e-12)
    assert cider_d(cands, refs, tokenize=False) == pytest.approx(score, rel=1e-12, abs=1e-12)


def test_cider_d_equals_pycocoevalcap_after_fmkit_tokenisation():
    raw_cands = ["A man, riding a horse.", "Two dogs' bowls!", "It's a cat (on a mat)."]
    raw_refs = [["A man rides a horse.", "a person riding a brown horse"], ["two dog bowls", "Bowls of two dogs."],
                ["A cat on a mat.", "It's a cat sitting on the mat!"]]
    cands = [ptb_tokenize(c) for c in raw_cands]
    refs = [[ptb_tokenize(r) for r in rs] for rs in raw_refs]
    score, _ = Cider().compute_score({i: refs[i] for i in range(3)}, {i: [cands[i]] for i in range(3)})
    assert cider_d(raw_cands, raw_refs) == pytest.approx(score, rel=1e-12)
