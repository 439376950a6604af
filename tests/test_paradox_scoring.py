"""fmkit.paradox.scoring: shared-context KV scoring against one full forward pass per
(context, option), lm-eval's acc / acc_norm definitions, left truncation, per-option export."""
import json
import warnings

import numpy as np
import pytest
import torch

from fmkit.paradox.scoring import (ChoiceScores, TruncationWarning, encode_pair, reference_token_logprobs,
                                   score_choices, score_token_requests)

CONTEXTS = [
    "The capital of France is",
    "He poured the coff",  # ends mid-word: the option's first token merges with it
    "Question: What colour is the sky on a clear day? Answer:",
    "",  # empty: conditioned on the prefix token, as lm-eval does
    "Bread is baked in an oven;   ",  # trailing spaces move to the option
]
CHOICES = [
    ["Paris.", "Tokyo, the capital of Japan", "a dog"],
    ["ee slowly", "ea", "ee, added milk, and stirred it", "fin"],
    ["blue", "green"],
    ["cat", "the mat and the door"],
    ["ice melts", "birds fly south in the winter", "x"],
]


@pytest.fixture(scope="module")
def tiny64():
    from fmkit.paradox.models import tiny_model_and_tokenizer

    return tiny_model_and_tokenizer(seed=3, dtype=torch.float64)


_REFS = {}


def _reference(model, tok, ctx, option, window=None):
    key = (id(model), ctx, option, window)
    if key not in _REFS:
        _REFS[key] = _uncached_reference(model, tok, ctx, option, window)
    return _REFS[key]


def _uncached_reference(model, tok, ctx, option, window=None):
    c, o = encode_pair(tok, ctx, " " + option)
    if window is not None:  # lm-eval: (ctx + cont)[-(window + 1):][:-1] is the model input
        keep = window + 1 - len(o)
        c = c[-keep:]
    return reference_token_logprobs(model, c, o)


def _max_err(scores, model, tok, contexts, choices, window=None):
    err = 0.0
    for i, (ctx, opts) in enumerate(zip(contexts, choices)):
        for j, opt in enumerate(opts):
            ref = _reference(model, tok, ctx, opt, window)
            assert len(ref) == len(scores.token_logprobs[i][j])
            err = max(err, float(np.abs(ref - scores.token_logprobs[i][j]).max()))
            if scores.unconditional is not None:
                ref_u = _reference(model, tok, "", opt).sum()
                err = max(err, abs(ref_u - scores.unconditional[i][j]))
    return err


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["packed", "kv"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_shared_prefix_equals_full_forward_float64(tiny64, padding_side, batch_size, engine):
    model, tok = tiny64
    s = score_choices(model, tok, CONTEXTS, CHOICES, padding_side=padding_side, batch_size=batch_size, engine=engine)
    assert _max_err(s, model, tok, CONTEXTS, CHOICES) < 1e-10
    for i, opts in enumerate(CHOICES):
        np.testing.assert_allclose(s.loglik[i], [lp.sum() for lp in s.token_logprobs[i]])
        assert list(s.n_chars[i]) == [len(o) for o in opts]


@pytest.mark.slow
def test_float32_within_1e4_and_mid_word_context_uses_joint_tokens(tiny64):
    model64, tok = tiny64
    model = type(model64)(model64.config).eval()
    model.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    s = score_choices(model, tok, CONTEXTS, CHOICES, batch_size=5)
    assert _max_err(s, model, tok, CONTEXTS, CHOICES) < 1e-4
    ctx, cont = encode_pair(tok, "He poured the coff", " ee slowly")
    whole = tok.encode("He poured the coff ee slowly")
    assert ctx + cont == whole and ctx == tok.encode("He poured the coff")


@pytest.mark.slow
def test_left_truncation_matches_lm_eval_window_and_warns(tiny64):
    model, tok = tiny64
    long_ctx = "The cat sat on the mat while the dog slept by the door. " * 6
    ctxs, chs = [long_ctx, "The capital of France is"], [["blue sky", "a very much longer option than the first one is"],
                                                         ["Paris."]]
    n_ctx = len(encode_pair(tok, long_ctx, " x")[0])
    window = n_ctx - 5
    with pytest.warns(TruncationWarning, match="truncated from the left, as lm-eval does"):
        s = score_choices(model, tok, ctxs, chs, max_length=window, unconditional=False)
    assert s.truncated == [True, False]
    assert _max_err(s, model, tok, ctxs, chs, window=window) < 1e-10
    # Without truncation the first option's score differs: the test can see a wrong cut.
    full = score_choices(model, tok, ctxs, chs, unconditional=False)
    assert abs(full.loglik[0][0] - s.loglik[0][0]) > 1e-6


@pytest.mark.slow
def test_chooser_picks_the_biased_option_and_normalisation_changes_it(tiny64):
    model, tok = tiny64
    biased = tok.encode(" blue")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[biased] = 40.0
    old = model.lm_head
    model.lm_head = head
    try:
        s = score_choices(model, tok, ["Question: What colour is it? Answer:"] * 2,
                          [["red", "blue", "green"], ["green", "red", "blue"]], gold=[1, 2])
    finally:
        model.lm_head = old
    assert s.predictions("sum") == [1, 2] and s.metrics()["acc"] == 1.0


def test_acc_and_acc_norm_follow_lm_eval_definitions():
    # Option 0: higher sum; option 1: higher per character (lm-eval acc_norm divides by len(choice)).
    choices = [["a", "a much longer answer"], ["yes", "no"], ["x", "yy"]]
    ll = [np.array([-2.0, -4.0]), np.array([-1.0, -1.0]), np.array([-3.0, -2.0])]
    unc = [np.array([-1.0, -5.0]), np.array([-2.0, -0.5]), np.array([-3.0, -2.5])]
    s = ChoiceScores(choices=choices, token_logprobs=[[np.array([v]) for v in row] for row in ll], loglik=ll,
                     n_tokens=[np.array([1.0, 4.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0])],
                     n_chars=[np.array([len(c) for c in cs], float) for cs in choices],
                     n_bytes=[np.array([len(c.encode()) for c in cs], float) for cs in choices],
                     greedy=[np.zeros(2, bool)] * 3, unconditional=unc, truncated=[False] * 3, gold=[1, 0, 1])
    for i, cs in enumerate(choices):  # lm-eval's process_results, written out
        lens = np.array([float(len(c)) for c in cs])
        assert s.predictions("sum")[i] == np.argmax(ll[i])
        assert s.predictions("char")[i] == np.argmax(ll[i] / lens)
        assert s.predictions("pmi")[i] == np.argmax(ll[i] - unc[i])
    assert s.predictions("sum") == [0, 0, 1] and s.predictions("char") == [1, 0, 1]  # ties -> first
    m = s.metrics()
    assert (m["acc"], m["acc_norm"]) == (pytest.approx(2 / 3), 1.0)
    assert m["acc_mutual_info"] == 1.0  # pmi picks [1, 0, 1] = gold
    recs = s.to_records()
    assert len(recs) == 6 and json.loads(json.dumps(recs))[1]["gold"] is True
    with pytest.raises(ValueError, match="normalization"):
        s.predictions("chars")


@pytest.mark.slow
def test_bad_input_names_the_argument(tiny64):
    model, tok = tiny64
    with pytest.raises(ValueError, match=r"choices\[0\]\[1\]: the option is empty"):
        score_choices(model, tok, ["ctx"], [["a", ""]])
    with pytest.raises(ValueError, match=r"choices\[0\]: expected a non-empty list"):
        score_choices(model, tok, ["ctx"], [[]])
    with pytest.raises(ValueError, match="gold"):
        score_choices(model, tok, ["ctx"], [["a", "b"]], gold=[2])
    with pytest.raises(TypeError, match="contexts"):
        score_choices(model, tok, "ctx", [["a"]])
    with pytest.raises(ValueError, match="padding_side"):
        score_token_requests(model, [([1, 2], [[3]])], padding_side="middle")
    with pytest.raises(ValueError, match="more than the model's window"):
        score_token_requests(model, [([1, 2], [[3] * 9])], max_length=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning when everything fits
        score_token_requests(model, [([1, 2], [[3] * 7])], max_length=8)


def test_packed_engine_tree_mask_is_exact_and_chosen_by_default(tiny64):
    """One packed pass (context + all options under a block mask) equals a full forward per option in
    float64, also when options of one item have very different lengths and one option is one token."""
    model, tok = tiny64
    ctxs = ["The cat sat on the mat while the dog", "He poured the coff"]
    chs = [["slept", "slept by the door while she opened the window and the cold air came in", "x y"],
           ["ee", "ee, added milk, and stirred it slowly before drinking"]]
    from fmkit.paradox.scoring import _packed_ok

    assert _packed_ok(model)  # 'auto' takes the packed path for this (sdpa) model
    s = score_choices(model, tok, ctxs, chs, unconditional=False, engine="packed", batch_size=5)
    assert _max_err(s, model, tok, ctxs, chs) < 1e-10


def test_engine_argument_is_checked(tiny64):
    model, tok = tiny64
    with pytest.raises(ValueError, match="engine: expected"):
        score_token_requests(model, [([1, 2], [[3, 4]])], engine="tree")
