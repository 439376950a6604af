"""fmkit.equity extraction: constrained choice with a tiny random Llama and a locally trained
tokenizer (spec §3.3 item 4), per-group validation (item 5), offline run (item 7)."""
import socket

import numpy as np
import pytest

from fmkit.equity import NOT_MENTIONED, Field, StructuredExtractor, subgroup_audit, validate_extraction

import torch

SCHEMA = {"employment": {"question": "What is the patient's employment status?",
                         "values": ["employed", "unemployed", "retired"]},
          "housing": {"question": "Is the patient housed?", "values": ["yes", "no"], "positive": "yes"}}
TEXTS = ["Patient works as a teacher and lives with family.", "No fixed address, sleeping in shelter.",
         "Retired engineer, owns a house.", "Presents with cough."]


@pytest.fixture(scope="module")
def tiny_lm():  # importing transformers' Llama takes several seconds: the tests using it are slow-marked
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = TEXTS + ["Document Question Answer with one of : , . not mentioned employed unemployed retired yes no",
                      SCHEMA["employment"]["question"], SCHEMA["housing"]["question"]]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "<s>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                bos_token="<s>")
    cfg = transformers.LlamaConfig(vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                   max_position_embeddings=256, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    head = torch.nn.Linear(32, fast.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
    model.lm_head = head
    return model, fast


def _biased(model, tok, words, strength=40.0):
    with torch.no_grad():
        model.lm_head.bias.zero_()
        for w in words.split():
            model.lm_head.bias[tok.convert_tokens_to_ids(w)] = strength


@pytest.mark.slow
def test_extractor_follows_the_biased_first_token_and_stays_in_schema(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(TypeError, match="tokenizer"):
        StructuredExtractor(model, SCHEMA)
    ex = StructuredExtractor(model, SCHEMA, tokenizer=tok)
    _biased(model, tok, "retired")
    out = ex.extract(TEXTS)
    assert out.values["employment"] == ["retired"] * len(TEXTS)
    assert out.scores["employment"].shape == (len(TEXTS), 4)
    assert out.options["employment"] == ("employed", "unemployed", "retired", NOT_MENTIONED)
    _biased(model, tok, "not mentioned")  # both tokens of the value
    out = ex(TEXTS)
    assert out.values["employment"] == [NOT_MENTIONED] * len(TEXTS)
    assert out.values["housing"] == [NOT_MENTIONED] * len(TEXTS)
    _biased(model, tok, "yes", 0.0)  # unbiased random model: still only allowed values
    out = StructuredExtractor(model, SCHEMA, tokenizer=tok, score="mean", batch_size=3).extract(TEXTS)
    for f in SCHEMA:
        assert set(out.values[f]) <= set(SCHEMA[f]["values"]) | {NOT_MENTIONED}
    assert out.records()[0].keys() == set(SCHEMA)


@pytest.mark.slow
@pytest.mark.parametrize("reuse_prompt", [True, False])
def test_extractor_scores_match_a_direct_forward(tiny_lm, reuse_prompt):
    model, tok = tiny_lm
    _biased(model, tok, "yes", 0.0)
    ex = StructuredExtractor(model, {"housing": SCHEMA["housing"]}, tokenizer=tok, batch_size=5,
                             reuse_prompt=reuse_prompt)
    out = ex.extract(TEXTS[:1])
    cal = StructuredExtractor(model, {"housing": SCHEMA["housing"]}, tokenizer=tok, calibrate=True).extract(TEXTS[:1])
    empty = StructuredExtractor(model, {"housing": SCHEMA["housing"]}, tokenizer=tok).extract(["N/A"])
    np.testing.assert_allclose(cal.scores["housing"], out.scores["housing"] - empty.scores["housing"], atol=1e-4)
    prompt = tok(ex.prompt(TEXTS[0], ex.fields[0]))["input_ids"]
    for j, o in enumerate(ex.fields[0].options):
        ids = torch.tensor([prompt + tok(" " + o, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1], -1)
        want = sum(float(lp[t - 1, ids[0, t]]) for t in range(len(prompt), ids.shape[1]))
        assert out.scores["housing"][0, j] == pytest.approx(want, abs=1e-4)


def test_extractor_with_a_callable_and_demos():
    seen = []

    def lm(prompt, options):
        seen.append(prompt)
        return [1.0 if o == ("yes" if "house" in prompt.split("Document:")[-1] else NOT_MENTIONED) else 0.0
                for o in options]

    ex = StructuredExtractor(lm, {"housing": Field("housing", "Housed?", ("yes", "no"))},
                             demos=[("Lives in a flat.", {"housing": "yes"})])
    out = ex.extract(["Owns a house.", "Cough."])
    assert out.values["housing"] == ["yes", NOT_MENTIONED]
    assert "Lives in a flat." in seen[0] and "Answer: yes" in seen[0]
    with pytest.raises(TypeError, match="lm: expected"):
        StructuredExtractor(42, SCHEMA)
    with pytest.raises(ValueError, match="repeat"):
        StructuredExtractor(lm, {"x": ["a", "a"]})
    with pytest.raises(TypeError, match="texts"):
        ex.extract("one string")


def _constructed(k=3):
    # group g1: 10 rows gold yes -> 8 yes, 1 no, 1 not mentioned; 10 gold no -> 9 no, 1 yes;
    #           5 gold not mentioned -> 4 nm, 1 no
    # group g2: the same confusion (identical error rates)
    # group g3: 10 gold yes -> 4 yes, 6 no; 10 gold no -> 9 no, 1 not mentioned; 5 nm -> 5 nm
    rows = []
    for grp in ("g1", "g2"):
        rows += [(grp, "yes", "yes")] * 8 + [(grp, "yes", "no"), (grp, "yes", NOT_MENTIONED)]
        rows += [(grp, "no", "no")] * 9 + [(grp, "no", "yes")]
        rows += [(grp, NOT_MENTIONED, NOT_MENTIONED)] * 4 + [(grp, NOT_MENTIONED, "no")]
    rows += [("g3", "yes", "yes")] * 4 + [("g3", "yes", "no")] * 6
    rows += [("g3", "no", "no")] * 9 + [("g3", "no", NOT_MENTIONED)] + [("g3", NOT_MENTIONED, NOT_MENTIONED)] * 5
    g, gold, pred = (np.array(c, dtype=object) for c in zip(*(rows * k)))
    return g, gold, pred


def test_validation_exact_per_group_values_and_flags():
    g, gold, pred = _constructed()
    v = validate_extraction({"housing": pred}, {"housing": gold}, g, positive={"housing": "yes"}, n_boot=300,
                            reference_group="g1").fields["housing"]
    assert v.groups == ["g1", "g2", "g3"] and v.n.tolist() == [75, 75, 75]
    m = {k: e for k, (e, _, _) in v.metrics.items()}
    np.testing.assert_allclose(m["sensitivity"], [0.8, 0.8, 0.4])
    np.testing.assert_allclose(m["specificity"], [0.9, 0.9, 1.0])
    np.testing.assert_allclose(m["exact_match"], [21 / 25, 21 / 25, 18 / 25])
    np.testing.assert_array_equal(m["absent_read_as_missing"], [0, 0, 3])  # gold no -> not mentioned
    np.testing.assert_array_equal(m["missing_read_as_absent"], [3, 3, 0])  # gold not mentioned -> no
    np.testing.assert_allclose(m["missing_read_as_value"], [1 / 5, 1 / 5, 0])
    np.testing.assert_allclose(m["value_read_as_missing"], [1 / 20, 1 / 20, 1 / 20])
    yes = v.values.index("yes")
    np.testing.assert_allclose(v.per_value["precision"]["yes"][0], [8 / 9, 8 / 9, 1.0])
    np.testing.assert_allclose(v.per_value["recall"]["yes"][0], [0.8, 0.8, 0.4])
    assert v.confusion[2, yes, yes] == 12
    # only g3's sensitivity differs (0.4 vs 0.8); g2 is identical to the reference
    assert v.flagged["1 - sensitivity"].tolist() == [False, False, True]
    assert not v.flagged["1 - specificity"].any() and not v.flagged["error_rate"][1]
    assert "sensitivity" in validate_extraction({"housing": pred}, {"housing": gold}, g,
                                                positive={"housing": "yes"}, n_boot=10).to_markdown()


def test_validation_bad_input():
    g, gold, pred = _constructed()
    with pytest.raises(ValueError, match="has 224 rows"):
        validate_extraction({"h": pred[:-1]}, {"h": gold}, g, n_boot=0)
    with pytest.raises(ValueError, match="positive"):
        validate_extraction({"h": pred}, {"h": gold}, g, positive={"h": "maybe"}, n_boot=0)
    with pytest.raises(ValueError, match="no field"):
        validate_extraction({"a": pred}, {"b": gold}, g, n_boot=0)
    with pytest.raises(TypeError, match="pred"):
        validate_extraction(pred, {"h": gold}, g)


@pytest.mark.slow
def test_runs_with_sockets_blocked(tiny_lm, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model, tok = tiny_lm
    out = StructuredExtractor(model, SCHEMA, tokenizer=tok).extract(TEXTS)
    rng = np.random.default_rng(0)
    subgroup_audit(rng.integers(0, 2, 100), rng.uniform(size=100), rng.integers(0, 3, 100), n_boot=20,
                   interval="bca", cluster=rng.integers(0, 30, 100))
    validate_extraction(out, out, ["a", "b", "a", "b"], n_boot=10)


def test_sens_spec_counts_not_mentioned_as_negative_like_corrected_disparity():
    from fmkit.equity import corrected_disparity

    g, gold, pred = _constructed()
    val = validate_extraction({"housing": pred}, {"housing": gold}, g, positive={"housing": "yes"}, n_boot=10)
    ss = val.sens_spec("housing")
    # g1: 15 gold non-"yes" rows (10 no + 5 not mentioned), one read as yes; the table's 0.9 leaves nm out
    expected = {"g1": (0.8, 14 / 15), "g2": (0.8, 14 / 15), "g3": (0.4, 1.0)}
    for grp, (se, sp) in expected.items():
        assert ss[grp] == pytest.approx((se, sp), abs=1e-12)
    from_sample = corrected_disparity(pred, g, positive="yes", validation=(pred, gold, g), n_boot=10)
    from_rates = corrected_disparity(pred, g, positive="yes", sens={k: v[0] for k, v in ss.items()},
                                     spec={k: v[1] for k, v in ss.items()}, n_boot=10)
    np.testing.assert_allclose(from_rates.corrected[0], from_sample.corrected[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="field: 'employment' has no positive value"):
        validate_extraction({"employment": pred}, {"employment": gold}, g, n_boot=10).sens_spec("employment")
