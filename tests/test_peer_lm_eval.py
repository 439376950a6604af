"""Differential test: fmkit.paradox.score_choices against lm-evaluation-harness's `hf` model
`loglikelihood` on the same requests and the same tiny local model (skips without lm_eval)."""
import random
import warnings

import numpy as np
import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

WORDS = ("the cat sat on a mat while dog slept by door she opened window and cold air came in he poured "
         "coffee added milk stirred it slowly bread is baked oven ice melts birds fly south winter").split()


def _items(n, seed=0):
    rng = random.Random(seed)
    ctxs, choices, gold = [], [], []
    for k in range(n):
        ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))
        if k % 5 == 1:
            ctx = ctx[:-2]  # ends mid-word
        if k % 7 == 3:
            ctx += " "  # a trailing space lm-eval moves to the option
        if k % 11 == 5:
            ctx = ""  # conditioned on the prefix token
        opts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(4)]
        ctxs.append(ctx)
        choices.append(opts)
        gold.append(rng.randrange(4))
    return ctxs, choices, gold


def _lm_eval_lls(lm, ctxs, choices, unconditional=False):
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=("" if unconditional else c, " " + o), idx=j)
            for c, opts in zip(ctxs, choices) for j, o in enumerate(opts)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = lm.loglikelihood(reqs, disable_tqdm=True)
    out, at = [], 0
    for opts in choices:
        out.append(res[at:at + len(opts)])
        at += len(opts)
    return out


@pytest.mark.parametrize("max_length", [None, 40])  # 40: many contexts are truncated from the left
def test_matches_lm_eval_hf_loglikelihood(max_length):
    from lm_eval.models.huggingface import HFLM

    from fmkit.paradox.models import tiny_model_and_tokenizer
    from fmkit.paradox.scoring import TruncationWarning, score_choices

    model, tok = tiny_model_and_tokenizer(seed=5)
    ctxs, choices, gold = _items(30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8, device="cpu", max_length=max_length)
    theirs = _lm_eval_lls(lm, ctxs, choices)
    theirs_u = _lm_eval_lls(lm, ctxs, choices, unconditional=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = score_choices(model, tok, ctxs, choices, gold=gold, max_length=max_length, batch_size=16)
    assert any(issubclass(w.category, TruncationWarning) for w in caught) == (max_length is not None)
    if max_length is not None:
        assert 3 < sum(ours.truncated) < len(ctxs)
    ll_theirs = [np.array([ll for ll, _ in row]) for row in theirs]
    for i in range(len(ctxs)):
        np.testing.assert_allclose(ours.loglik[i], ll_theirs[i], atol=1e-4, rtol=0)
        np.testing.assert_allclose(ours.unconditional[i], [ll for ll, _ in theirs_u[i]], atol=1e-4, rtol=0)
        assert list(ours.greedy[i]) == [g for _, g in theirs[i]]
    # lm-eval's multiple_choice process_results: acc = argmax ll, acc_norm = argmax ll / len(choice)
    acc = np.mean([np.argmax(ll) == g for ll, g in zip(ll_theirs, gold)])
    acc_norm = np.mean([np.argmax(ll / np.array([len(c) for c in cs], float)) == g
                        for ll, cs, g in zip(ll_theirs, choices, gold)])
    assert ours.predictions("sum") == [int(np.argmax(ll)) for ll in ll_theirs]
    m = ours.metrics()
    assert (m["acc"], m["acc_norm"]) == (acc, acc_norm)
