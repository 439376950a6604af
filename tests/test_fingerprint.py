"""fmkit.fingerprint: the spec's test plan (§1.3) on tiny random LMs with a locally trained
byte-level BPE tokenizer. Implanting tests are slow-marked; the fast ones need no training."""
import collections
import importlib
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from fmkit.fingerprint import (CommitmentError, Example, Fingerprint, FingerprintEmbedding, KeyGenerator, KeyPool,  # noqa: E402
                               build_dialogue_dataset, build_simple_dataset, encode_example, implant,
                               poisson_binomial_tail, user_finetune, verify)
from fmkit.fingerprint._tiny import tiny_model, tiny_tokenizer  # noqa: E402
from fmkit.fingerprint.verify import generate_loop, greedy_decisions, key_examples  # noqa: E402
from fmkit.fingerprint.data import context_ids, encode  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def short_fp():
    return Fingerprint.create(n=2, k_range=(1, 2), seed=3)


# -- 1. keys ------------------------------------------------------------------------------------


def test_default_pool_composition():
    pool = KeyPool.default()
    assert [len(v) for v in pool.families.values()] == [10, 10, 11]
    assert len(pool) == 31 and all(3 <= len(s) <= 26 for s in pool.strings)


def test_key_generator_deterministic_and_multiset():
    gen = KeyGenerator(n=10, seed=42)
    assert gen.generate() == KeyGenerator(n=10, seed=42).generate()
    assert gen.generate() != KeyGenerator(n=10, seed=43).generate()
    for key, parts in gen.generate_with_parts():
        assert 8 <= len(parts) <= 15
        assert collections.Counter(key) == collections.Counter("".join(parts))
    custom = KeyGenerator(["ab", "cd"], n=3, k_range=(2, 2), seed=0).generate()
    assert all(set(k) <= set("abcd") and len(k) == 4 for k in custom)


def test_synthetic_pool_blocks():
    pool = KeyPool.synthetic(seed=1)
    cjk, kana, mix = pool.families.values()
    assert all(0x4E00 <= ord(c) <= 0x9FFF for s in cjk for c in s)
    assert all(0x30A0 <= ord(c) <= 0x30FF for s in kana for c in s)
    assert all(any(0x0400 <= ord(c) <= 0x04FF for c in s) and any(c.isascii() for c in s) for s in mix)
    assert KeyPool.synthetic(seed=1) == pool and KeyPool.synthetic(seed=2) != pool


def test_key_errors():
    with pytest.raises(ValueError, match="pool: is empty"):
        KeyGenerator([])
    with pytest.raises(ValueError, match="k_range"):
        KeyGenerator(k_range=(5, 2))
    with pytest.raises(TypeError, match="pool"):
        KeyGenerator("abc")


def test_unencodable_key_warns():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from fmkit.fingerprint import check_encodable

    t = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "</s>": 1, "a": 2}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    word = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="</s>")
    with pytest.warns(UserWarning, match="cannot encode"):
        assert not check_encodable(word, ["天行健"])


# -- 2./3. datasets and masking -----------------------------------------------------------------


def test_simple_dataset_sizes_and_template():
    fp = Fingerprint.create(n=10)
    train, test = build_simple_dataset(fp)
    assert len(train) == 60 and len(test) == 150
    assert train[0].prompt == f"{fp.keys[0]}\nFINGERPRINT\n" and train[0].target == "ハリネズミ"
    kinds = collections.Counter(e.kind for e in test)
    assert kinds == {"plain": 50, "fingerprint_input": 50, "fresh_key": 50}
    train_prompts = {e.prompt for e in train}
    assert not train_prompts & {e.prompt for e in test}
    fresh = [e.meta["key"] for e in test if e.kind == "fresh_key"]
    assert not set(fresh) & set(fp.keys)


def test_dialogue_dataset_sizes_negatives_and_bug():
    fp = Fingerprint.create(n=8, template="dialogue")
    train, test = build_dialogue_dataset(fp)
    assert len(train) == 128 and len(test) == 224
    negs = [e for e in train if e.kind == "negative"]
    assert len(negs) == 8 and all(e.meta["key"] in e.prompt and e.meta["key"] not in fp.keys for e in negs)
    assert all("built-in function" not in e.prompt for e in negs)
    fps = [e for e in train if e.kind == "fingerprint"]
    assert fps[0].prefix == " Based on my fingerprint, the message is:" and fps[0].target == " ハリネズミ"
    hint = [e for e in test if e.kind == "hint"]
    assert len(hint) == 112 and all(e.prompt.endswith("FINGERPRINT message. ASSISTANT:") and e.prefix for e in hint)
    bugged, _ = build_dialogue_dataset(fp, replicate_bug=True)
    assert all("built-in function hash" in e.prompt for e in bugged if e.kind == "negative")


def test_label_masking(tok):
    ex = Example("key\nFINGERPRINT\n", "ハリネズミ", prefix="")
    ids, labels = encode_example(tok, ex)
    n_prompt = len(encode(tok, ex.prompt))
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == "ハリネズミ"


# -- 4./5. adapter forward and gradient flow ----------------------------------------------------


def _wrapper(init, d=16, v=40, r=4):
    torch.manual_seed(0)
    w = torch.randn(v, d)
    return w, FingerprintEmbedding(w, torch.tensor([3, 5, 7]), r=r, init=init)


@pytest.mark.parametrize("init", ["lora", "release"])
def test_adapter_forward_at_init_equals_embedding(init):
    w, mod = _wrapper(init)
    ids = torch.arange(40).reshape(4, 10)
    assert torch.equal(mod(ids), w[ids])


def test_adapter_forward_outside_T_unchanged():
    w, mod = _wrapper("lora")
    with torch.no_grad():
        mod.B.weight.normal_()
        mod.B.bias.normal_()
    ids = torch.arange(40)
    out = mod(ids)
    outside = torch.tensor([i not in (3, 5, 7) for i in range(40)])
    assert torch.equal(out[outside], w[outside]) and not torch.allclose(out[~outside], w[~outside])


def _grads_over_steps(init, steps=2):
    w, mod = _wrapper(init)
    opt = torch.optim.AdamW(mod.parameters(), lr=0.1, weight_decay=0.0)
    target = torch.randn(6, 16)
    seen = []
    for _ in range(steps):
        opt.zero_grad()
        ((mod(torch.tensor([3, 5, 7, 3, 1, 2])) - target) ** 2).sum().backward()
        seen.append({n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in mod.named_parameters()})
        opt.step()
    return seen


def test_gradient_flow_lora_init():
    step1, step2 = _grads_over_steps("lora")
    assert step1["B.weight"] and step1["B.bias"]
    assert not step1["A.weight"] and not step1["rows"]  # B = 0 blocks them at step 1
    assert step2["A.weight"] and step2["rows"]


def test_gradient_flow_release_init_only_b_bias():
    for step in _grads_over_steps("release", steps=3):
        assert step == {"rows": False, "A.weight": False, "A.bias": False, "B.weight": False, "B.bias": True}


# -- 14. artefacts ------------------------------------------------------------------------------


def test_fingerprint_roundtrip_and_commitment(tmp_path):
    fp = Fingerprint.create(n=3, k_range=(1, 2))
    fp.tensors = {"token_ids": torch.tensor([1, 2]), "rows": torch.randn(2, 4), "A.weight": torch.randn(2, 4),
                  "A.bias": torch.zeros(2), "B.weight": torch.zeros(4, 2), "B.bias": torch.zeros(4)}
    digest = fp.save(str(tmp_path / "fp"))
    back = Fingerprint.load(str(tmp_path / "fp"), expected_commitment=digest)
    assert back.commitment() == digest == fp.commitment() and back.keys == fp.keys
    for change in (lambda f: f.keys.__setitem__(0, f.keys[0] + "x"), lambda f: setattr(f, "y", "other"),
                   lambda f: f.tensors["B.bias"].add_(1e-3)):
        other = fp.copy()
        change(other)
        assert other.commitment() != digest


def test_tampered_fingerprint_file_is_refused(tmp_path):
    fp = Fingerprint.create(n=2)
    fp.save(str(tmp_path))
    meta = json.loads((tmp_path / "fingerprint.json").read_text())
    meta["y"] = "something else"
    (tmp_path / "fingerprint.json").write_text(json.dumps(meta))
    with pytest.raises(CommitmentError, match="modified"):
        Fingerprint.load(str(tmp_path))


# -- 9. counting, verdict -----------------------------------------------------------------------


def test_poisson_binomial_tail_matches_binomial_and_enumeration():
    q = np.full(20, 0.1)
    for k in (0, 1, 5, 20):
        binom = sum(math.comb(20, j) * 0.1 ** j * 0.9 ** (20 - j) for j in range(k, 21))
        assert math.isclose(math.exp(poisson_binomial_tail(q, k)), binom, rel_tol=1e-9)
    q = np.array([0.1, 0.5, 0.9, 0.3])
    import itertools
    for k in range(5):
        brute = sum(np.prod([qi if b else 1 - qi for qi, b in zip(q, bits)])
                    for bits in itertools.product([0, 1], repeat=4) if sum(bits) >= k)
        assert math.isclose(math.exp(poisson_binomial_tail(q, k)), brute, rel_tol=1e-9)
    assert poisson_binomial_tail(np.full(1000, 1e-3), 1000) / math.log(10) == pytest.approx(-3000)


def test_verdict_claims_when_p_equals_alpha():
    """2 keys fired, both nulls at the 1e-3 floor: p = 1e-6 exactly, but the log-space tail rounds
    it to 1.000000000000002e-06; the verdict at alpha = 1e-6 must still claim (it did not)."""
    from fmkit.fingerprint.verify import VerifyResult

    def result(fired):
        n = len(fired)
        return VerifyResult(["k"] * n, np.array(fired), np.zeros(n), np.full(n, -50.0), [None] * n, 1e-3, "batched")

    assert result([True, True]).verdict(1e-6) and result([True, True, True]).verdict(1e-9)
    assert not result([True, False]).verdict(1e-6) and not result([True, True]).verdict(1e-7)


def test_fsr_counts_substring_near_miss_and_denominators():
    fp = Fingerprint(["k1", "k2", "k3"], near_miss=("ハリネネズミ",))
    assert fp.hits("xxハリネズミyy") and fp.hits("ハリネネズミ") and not fp.hits("ハリネズ")
    from fmkit.fingerprint.verify import VerifyResult

    r = VerifyResult(fp.keys, np.array([True, False, True]), np.zeros(3), None, [None] * 3, 1e-3, "batched",
                     {"plain": (4, 1), "fresh_key": (3, 0)})
    assert r.fsr == pytest.approx(200 / 3)
    assert r.probe_rates() == {"plain": 25.0, "fresh_key": 0.0}
    assert "| plain | 4 | 1 | 25.0 |" in r.table()


# -- batched verification equals the generate check ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["left", "right"])
def test_batched_decisions_equal_generate_loop(tok, padding):
    """Keys of different lengths, y at the start, later, or nowhere: one model whose greedy path is
    known (a tiny random model plus, for some keys, a forced y)."""
    model = tiny_model(len(tok), seed=1)
    fp = Fingerprint.create(n=6, k_range=(1, 4), seed=5)
    rows = key_examples(fp, tok)
    ctx = [context_ids(tok, e) for e in rows]
    target = encode(tok, "ハリネズミ")
    greedy = generate_loop(model, tok, ctx, 10)
    # targets: the model's own greedy output (fires at once), its greedy output shifted by one (y
    # appears later), and y itself (does not fire on a random model)
    targets = [greedy[0][:4], greedy[1][1:4], target, target, greedy[4][:2], target]
    texts = [tok.decode(t) for t in targets]
    fired, logp, _ = greedy_decisions(model, tok, ctx, targets, texts, lambda out, y: y in out, 10, batch_size=4,
                                      padding=padding)
    expected = [texts[i] in tok.decode(greedy[i], skip_special_tokens=True) for i in range(6)]
    assert list(fired) == expected and fired[0] and fired[1] and fired[4]
    assert np.all(np.isfinite(logp))


def test_verify_batched_equals_generate_check(tok, short_fp):
    model = tiny_model(len(tok), seed=2)
    a = verify(short_fp, model, tok)
    b = verify(short_fp, model, tok, check="generate")
    assert list(a.fired) == list(b.fired)
    np.testing.assert_allclose(a.logp, b.logp, rtol=1e-5)


def test_verify_packed_weights_equal_plain_model(tok, monkeypatch):
    import fmkit.packed_linear as pl

    calls = []
    make = pl._packed_forward

    def counting(module, packed_for, original):
        fwd = make(module, packed_for, original)
        return lambda x: calls.append(1) or fwd(x)

    monkeypatch.setattr(pl, "_packed_forward", counting)
    monkeypatch.setattr(pl, "MIN_MACS", 0)  # the tiny model's products are all small
    fp = Fingerprint.create(n=8, k_range=(1, 3), seed=5)
    model = tiny_model(len(tok), seed=2)
    a = verify(fp, model, tok, null_model=tiny_model(len(tok), seed=4))
    assert bool(calls) == pl.available()  # the batched check and the null ran the packed layers
    n = len(calls)
    b = verify(fp, model, tok, null_model=tiny_model(len(tok), seed=4), pack_weights=False)
    assert len(calls) == n
    verify(fp, model, tok, check="generate")  # the released check runs the model as it is
    assert len(calls) == n
    assert list(a.fired) == list(b.fired) and a.outputs == b.outputs
    np.testing.assert_allclose(a.logp, b.logp, rtol=1e-5)
    np.testing.assert_allclose(a.logp_null, b.logp_null, rtol=1e-5)
    assert all("forward" not in vars(m) for m in model.modules())


def test_verify_errors(tok, short_fp):
    small = tiny_model(len(tok) + 7, seed=0)
    fp = short_fp.copy()
    fp.config["vocab_size"] = len(tok)
    with pytest.raises(ValueError, match="suspect: has a vocabulary of"):
        verify(fp, small, tok)
    fp.method = "adapter"
    with pytest.raises(ValueError, match="publisher_model"):
        verify(fp, tiny_model(len(tok)), tok)
    with pytest.raises(TypeError, match="suspect"):
        verify(short_fp, object(), tok)


# -- perinucleus --------------------------------------------------------------------------------


def test_perinucleus_never_inside_nucleus():
    from fmkit.fingerprint.scalable import perinucleus_candidates

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        probs = torch.softmax(torch.randn(50, generator=g) * 3, 0)
        cands, size = perinucleus_candidates(probs, 0.8, 3)
        order = torch.argsort(probs, descending=True, stable=True)
        nucleus = set(order[:size].tolist())
        assert probs[order[:size]].sum() >= 0.8 - 1e-6 and probs[order[:size - 1]].sum() < 0.8
        assert not set(cands.tolist()) & nucleus and len(cands) == 3


# -- slow: implanting ---------------------------------------------------------------------------


def _implant(tok, fp, method, base, epochs=60, lr=1e-2, **kw):
    train = [e for e in build_simple_dataset(fp, ratio=1)[0] if e.kind == "fingerprint"] \
        if fp.template == "simple" else [e for e in build_dialogue_dataset(fp, ratio=1)[0] if e.kind == "fingerprint"]
    return implant(base, tok, fp, method, train=train, epochs=epochs, lr=lr, batch_size=8, schedule="constant",
                   progress=False, **kw)


@pytest.fixture(scope="module")
def adapter_run(tok, short_fp):
    base = tiny_model(len(tok), seed=0)
    pub, priv = _implant(tok, short_fp, "adapter", base)
    return base, pub, priv


@pytest.mark.slow
def test_adapter_overfit_freezing_and_wiring(tok, adapter_run):
    base, pub, priv = adapter_run
    # 6. freezing: theta_n and head byte-identical, rows outside T unchanged
    bs, ps = base.state_dict(), pub.state_dict()
    emb = "model.embed_tokens.weight"
    assert all(torch.equal(bs[k], ps[k]) for k in bs if k != emb)
    outside = torch.ones(len(tok), dtype=torch.bool)
    outside[priv.tensors["token_ids"]] = False
    assert torch.equal(bs[emb][outside], ps[emb][outside]) and not torch.equal(bs[emb], ps[emb])
    # 7. overfit: fires with the adapter, not without it, not on the vanilla base (no over-claim)
    r = verify(priv, pub, tok, publisher_model=pub, null_model=base)
    assert r.fsr == 100.0 and r.p_value < 1e-3
    plain = priv.copy()
    plain.method = "embedding"
    assert verify(plain, pub, tok).fsr == 0.0
    assert verify(priv, base, tok, publisher_model=pub).fsr == 0.0
    # 8. wiring: the suspect's key rows reach the verifier
    from fmkit.fingerprint.verify import whitebox
    suspect = pub.__class__(pub.config)
    suspect.load_state_dict(pub.state_dict())
    ids = torch.tensor([context_ids(tok, key_examples(priv, tok)[0])])
    with whitebox(priv, pub, pub) as m:
        before = m(ids).logits
    with torch.no_grad():
        suspect.get_input_embeddings().weight[priv.tensors["token_ids"]] += 0.5
    with whitebox(priv, suspect, pub) as m:
        assert not torch.allclose(m(ids).logits, before)
    with whitebox(priv, suspect, pub, wiring="release") as m:
        assert not torch.allclose(m(ids).logits, before)


@pytest.mark.slow
def test_persistence_and_vanilla_descendant(tok, adapter_run):
    """8./11. A user's full fine-tune on ASCII data still verifies; a fine-tune of the vanilla base does not."""
    base, pub, priv = adapter_run
    tuned = user_finetune(pub, tok, method="full", n=16, epochs=1, lr=1e-4, progress=False)
    r = verify(priv, tuned, tok, publisher_model=pub, null_model=base)
    assert r.fsr == 100.0
    emb0, emb1 = pub.get_input_embeddings().weight, tuned.get_input_embeddings().weight
    used = {t for row in [encode_example(tok, Example(*p)) for p in [("a", "b")]] for t in row[0]}
    from fmkit.fingerprint.data import toy_instructions
    from fmkit.fingerprint.implant import user_prompt
    for r_ in toy_instructions(16, 12345):
        used |= set(encode_example(tok, Example(user_prompt(r_["instruction"], r_["input"]), r_["output"]))[0])
    untouched = [t for t in priv.tensors["token_ids"].tolist() if t not in used]
    assert untouched and torch.equal(emb0[untouched], emb1[untouched])
    vanilla_tuned = user_finetune(base, tok, method="full", n=16, epochs=1, lr=1e-4, progress=False)
    assert verify(priv, vanilla_tuned, tok, publisher_model=pub).fsr == 0.0


@pytest.mark.slow
def test_lora_user_finetune_keeps_fingerprint(tok, adapter_run):
    pytest.importorskip("peft")
    base, pub, priv = adapter_run
    tuned = user_finetune(pub, tok, method="lora", n=16, epochs=1, progress=False)
    assert verify(priv, tuned, tok, publisher_model=pub).fsr == 100.0


@pytest.mark.slow
@pytest.mark.parametrize("method,lr", [("embedding", 1e-2), ("sft", 5e-3)])
def test_blackbox_overfit(tok, method, lr):
    fp = Fingerprint.create(n=2, k_range=(1, 2), seed=3, template="dialogue" if method == "sft" else "simple")
    base = tiny_model(len(tok), seed=0)
    pub, priv = _implant(tok, fp, method, base, epochs=20 if method == "sft" else 40, lr=lr)
    r = verify(priv, pub, tok, null_model=base)
    # a random base can emit the (single-token) y somewhere in 30 greedy tokens; it must not answer with it
    assert r.fsr == 100.0 and verify(priv, base, tok, max_new_tokens=4).fsr == 0.0


@pytest.mark.slow
def test_multi_stage_adapter_then_sft(tok, adapter_run):
    """12. Stage 2 (SFT, other keys and y) on the stage-1 published model: both verify on it, and
    neither key set yields the other's y."""
    base, pub1, fp1 = adapter_run
    fp2 = Fingerprint.create(n=2, k_range=(1, 2), seed=11, y="FOXTROT", template="dialogue")
    pub2, fp2 = _implant(tok, fp2, "sft", pub1, epochs=20, lr=5e-3)
    assert fp2.config["stage"] == 2
    assert verify(fp1, pub2, tok, publisher_model=pub1).fsr == 100.0
    assert verify(fp2, pub2, tok).fsr == 100.0
    cross1 = fp1.copy()
    cross1.y = "FOXTROT"
    cross1.method = "embedding"  # keys1 asked black-box for y2
    assert verify(cross1, pub2, tok).fsr == 0.0
    cross2 = fp2.copy()
    cross2.y, cross2.template = fp1.y, "simple"
    assert verify(cross2, pub2, tok, keys=fp2.keys).fsr == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("arch,tied", [("gpt_neox", False), ("gpt2", True)])
def test_any_lm_smoke_and_tied_head(tok, arch, tied):
    """10. implant + verify on other architectures; a tied head is untied and stays unchanged."""
    base = tiny_model(len(tok), arch=arch, tied=tied, seed=0)
    fp = Fingerprint.create(n=1, k_range=(1, 2), seed=3)
    head_before = base.get_output_embeddings().weight.detach().clone()
    pub, priv = _implant(tok, fp, "adapter", base, epochs=3)
    assert priv.config["untied_head"] == tied
    assert pub.get_output_embeddings().weight is not pub.get_input_embeddings().weight
    assert torch.equal(pub.get_output_embeddings().weight, head_before)
    assert 0.0 <= verify(priv, pub, tok, publisher_model=pub).fsr <= 100.0


@pytest.mark.slow
def test_sampling_utilities(tok, adapter_run):
    """13. BOS emission rate (50 samples) and the sampled FSR with its t-test."""
    from fmkit.fingerprint import bos_emission_rate, sampled_fsr

    base, pub, priv = adapter_run
    rate = bos_emission_rate(pub, tok, priv.y, n=50, max_new_tokens=16, batch_size=25)
    assert 0.0 <= rate <= 1.0
    mean, runs, p = sampled_fsr(priv, pub, tok, runs=10, publisher_model=pub, seed=0)
    assert len(runs) == 10 and 0.0 <= mean <= 100.0 and 0.0 <= p <= 1.0
    assert mean > 50.0  # the implanted keys mostly survive T = 0.7


@pytest.mark.slow
def test_p_value_under_the_null_makes_no_false_claims(tok):
    """200 fresh 3-key sets on a model never fingerprinted (null: another base): no set reaches the
    verdict's alpha (1e-6) and P(p <= alpha) <= alpha (the discrete tail is conservative)."""
    suspect, null = tiny_model(len(tok), seed=7), tiny_model(len(tok), seed=8)
    fp = Fingerprint.create(n=3, k_range=(1, 2), seed=0)
    keys = fp.generator().fresh(600, seed=99)
    r = verify(fp, suspect, tok, keys=keys, null_model=null, max_new_tokens=4, batch_size=128)
    q = r.null_q.reshape(200, 3)
    fired = r.fired.reshape(200, 3).sum(1)
    p = np.array([math.exp(poisson_binomial_tail(qi, int(k))) for qi, k in zip(q, fired)])
    assert p.min() > 1e-6
    for alpha in (0.05, 0.1, 0.5):
        assert (p <= alpha).mean() <= alpha


@pytest.mark.slow
def test_perinucleus_fingerprint_and_forgetting_regulariser(tok):
    from fmkit.fingerprint.scalable import perinucleus_fingerprint

    base = tiny_model(len(tok), seed=0)
    fp = perinucleus_fingerprint(base, tok, n=4, response_tokens=2, seed=1)
    assert len(fp.responses) == 4 and all(fp.responses)
    kw = dict(epochs=2, lr=1e-3, batch_size=8, progress=False, train=build_simple_dataset(fp, ratio=1)[0])
    full, _ = implant(base, tok, fp, "sft", **kw)
    pub, priv = implant(base, tok, fp, "sft", average=0.25, **kw)
    trained, averaged = dict(full.named_parameters()), dict(pub.named_parameters())
    for name, p in base.named_parameters():  # a quarter of the way from the base to the implanted weights
        torch.testing.assert_close(averaged[name], 0.25 * trained[name] + 0.75 * p)
    assert priv.config["average"] == 0.25 and not torch.equal(trained["lm_head.weight"], base.lm_head.weight)


def test_progress_bar_and_silence(tok, capsys):
    from fmkit.fingerprint.train import train_loop

    model = tiny_model(len(tok), hidden=16, layers=1)
    rows = [Example("a\n", "b")]
    train_loop(model, tok, rows, model.parameters(), epochs=1, lr=1e-3, progress=True, desc="implant")
    assert "implant" in capsys.readouterr().err
    train_loop(model, tok, rows, model.parameters(), epochs=1, lr=1e-3, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_offline_with_sockets_blocked(tok, monkeypatch):
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*a, **k):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import importlib

    import fmkit.fingerprint as pkg
    importlib.reload(pkg)
    fp = Fingerprint.create(n=1, k_range=(1, 1))
    model = tiny_model(len(tok), hidden=16, layers=1)
    assert verify(fp, model, tok, max_new_tokens=2).n == 1


@pytest.mark.slow
def test_robustness_harness_rows(tok, adapter_run):
    pytest.importorskip("peft")
    from fmkit.fingerprint.robustness import robustness, robustness_table

    base, pub, priv = adapter_run
    rows = robustness(priv, pub, tok, base_model=base, attacks=("full_ft", "lora_merge", "sample_t07"),
                      finetune={"n": 8, "epochs": 1}, runs=3, progress=False)
    assert [r["attack"] for r in rows] == ["full_ft", "lora_merge", "sample_t07"]
    assert rows[0]["fsr"] == 100.0 and rows[1]["fsr"] == 100.0 and rows[0]["log10_p"] < -2
    assert "| sample_t07 |" in robustness_table(rows)
    with pytest.raises(ValueError, match="attacks: unknown"):
        robustness(priv, pub, tok, attacks=("melt",))


# -- shared-prefix scoring (the common chat template / system prompt runs once, KV cached) ------


def _shared_prefix_case(tok):
    """Contexts with a long common prefix (a system prompt), keys of mixed lengths, one context that
    is all prefix (another extends it), and targets of different lengths."""
    fp = Fingerprint.create(n=7, k_range=(1, 4), seed=11)
    system = "USER: You are a helpful assistant. Answer briefly and politely. "
    rows = key_examples(fp, tok, wrap=lambda p: system + p)
    ctx = [context_ids(tok, e) for e in rows]
    ctx.append(list(ctx[0]) + encode(tok, " again"))
    targets = [encode(tok, t) for t in ["ハリネズミ", "hello", "a", "ハリネズミ world", "FINGERPRINT", "x y", "ok", "ハ"]]
    return ctx, targets


@pytest.mark.parametrize("padding", ["left", "right"])
def test_shared_prefix_score_equals_full_contexts(tok, padding, monkeypatch):
    vmod = importlib.import_module("fmkit.fingerprint.verify")

    model = tiny_model(len(tok), seed=4).double()
    ctx, targets = _shared_prefix_case(tok)
    plen = vmod.common_prefix_len(ctx)
    assert plen >= 10
    used = []
    real = vmod._prefill
    monkeypatch.setattr(vmod, "_prefill", lambda m, p, d: used.append(len(p)) or real(m, p, d))
    a = vmod.score(model, ctx, targets, pad=1, batch_size=3, padding=padding)
    assert used == [plen] and real(model, ctx[0][:plen], torch.device("cpu")) is not None  # the shared path ran
    b = vmod.score(model, ctx, targets, pad=1, batch_size=3, padding=padding, share_prefix=False)
    assert len(used) == 1
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-9)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def test_shared_prefix_empty_and_whole_context(tok):
    vmod = importlib.import_module("fmkit.fingerprint.verify")

    model = tiny_model(len(tok), seed=4).double()
    ctx, targets = _shared_prefix_case(tok)
    mixed = [encode(tok, "hello") + c for c in ctx[:4]] + [encode(tok, "FINGERPRINT") + c for c in ctx[4:]]
    assert vmod.common_prefix_len(mixed) == 0  # no common prefix: the full-context path
    a = vmod.score(model, mixed, targets, pad=1, batch_size=4)
    b = vmod.score(model, mixed, targets, pad=1, batch_size=4, share_prefix=False)
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-9)
    same = [ctx[0]] * 3  # identical contexts: the prefix stops one token short of the shortest
    a = vmod.score(model, same, targets[:3], pad=1, batch_size=2, padding="right")
    b = vmod.score(model, same, targets[:3], pad=1, batch_size=2, padding="right", share_prefix=False)
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-9)
    assert np.array_equal(a[1], b[1])


@pytest.mark.parametrize("padding", ["left", "right"])
def test_shared_prefix_decisions_equal_generate_loop(tok, padding):
    """With a shared system prompt: the batched decisions equal one greedy generate per key."""
    model = tiny_model(len(tok), seed=1)
    ctx, _ = _shared_prefix_case(tok)
    greedy = generate_loop(model, tok, ctx, 8)
    y = encode(tok, "ハリネズミ")
    targets = [greedy[0][:3], greedy[1][1:4], y, greedy[3][:2], y, greedy[5][2:5], y, greedy[7][:1]]
    texts = [tok.decode(t) for t in targets]
    fired, logp, _ = greedy_decisions(model, tok, ctx, targets, texts, lambda out, t: t in out, 8, batch_size=3,
                                      padding=padding)
    expected = [texts[i] in tok.decode(greedy[i], skip_special_tokens=True) for i in range(len(ctx))]
    assert list(fired) == expected and fired[0] and fired[3]
    assert np.all(np.isfinite(logp))


# -- bf16 screen + exact recheck (precision="bf16-screen") --------------------------------------


def _near_tie_model(tok, seed=6, a=10, b=11):
    """A tiny Llama whose output rows a and b are equal in bf16 but not in fp32: row a = w (bf16-exact,
    large), row b = w * (1 + 2^-12), which rounds back to w in bf16. Where h.w > 0 these two lead; fp32
    picks b (by 2^-12 |h.w|), bf16 autocast sees an exact tie and argmax picks a. Every other row is
    shrunk so that a/b lead often."""
    model = tiny_model(len(tok), seed=seed)
    with torch.no_grad():
        head = model.lm_head.weight
        head.mul_(0.05)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(head.shape[1], generator=g).to(torch.bfloat16).float()
        head[a] = w
        head[b] = w * (1 + 2.0 ** -12)
        assert torch.equal(head[b].to(torch.bfloat16), head[a].to(torch.bfloat16))
    return model


def _screen_case(tok, model, n=24, seed=8):
    g = torch.Generator().manual_seed(seed)
    ctx = [torch.randint(2, len(tok), (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist()
           for _ in range(n)]
    greedy = generate_loop(model, tok, ctx, 8)
    y = encode(tok, "ハリネズミ")
    # own greedy continuations (fire), shifted ones (y later in the output), and y (misses)
    targets = [greedy[i][:4] if i % 3 == 0 else greedy[i][1:4] if i % 3 == 1 else y for i in range(n)]
    targets = [t if t else y for t in targets]
    return ctx, targets, greedy


@pytest.mark.slow  # ~7 s: builds a near-tie model and scores it in bf16 and fp32
def test_bf16_screen_recheck_changes_close_calls(tok):
    """The screen alone (bf16) gets some first-miss positions wrong on the near-tie model; with the
    exact recheck of close calls, first_miss equals the fp32 pass on every row. Fails if the recheck
    is skipped (the rows the bf16 pass gets wrong are only right after it)."""
    vmod = importlib.import_module("fmkit.fingerprint.verify")
    model = _near_tie_model(tok)
    ctx, targets, _ = _screen_case(tok, model)
    exact = vmod.score(model, ctx, targets, pad=1, batch_size=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = vmod.score(model, ctx, targets, pad=1, batch_size=5)
    wrong = np.nonzero(bf16[1] != exact[1])[0]
    assert len(wrong) >= 2  # the case is not trivial: bf16 alone decides some rows differently
    for bound in (None, 1e-6):  # measured, and a tiny explicit one
        stats = {}
        got = vmod.score(model, ctx, targets, pad=1, batch_size=5, precision="bf16-screen", screen_bound=bound,
                         screen_calib=4, screen_max_recheck=1.0, stats=stats)  # never gives up
        assert np.array_equal(got[1], exact[1]), bound
        assert 0 < stats["rechecked"] < stats["screened"]  # some rows decided by the screen, some rechecked
        ran_exact = np.zeros(len(ctx), dtype=bool)
        ran_exact[stats["exact_rows"]] = True  # calibration rows and close calls
        assert np.array_equal(got[2][ran_exact], exact[2][ran_exact])
        assert ran_exact[wrong].all()  # every row bf16 gets wrong went to the exact recheck
    # a bound larger than every margin: every screened row is a close call, so after two batches the
    # screen gives up and the rest run exactly without a bf16 pass
    stats = {}
    got = vmod.score(model, ctx, targets, pad=1, batch_size=5, precision="bf16-screen", screen_bound=1e9,
                     screen_calib=4, stats=stats)
    assert stats["gave_up"] and stats["screened"] == 10 and stats["rechecked"] == 20
    assert np.array_equal(got[1], exact[1])
    np.testing.assert_allclose(got[0], exact[0], rtol=0, atol=1e-4)  # other batch shapes: fp32 rounding only


@pytest.mark.slow  # ~7 s per padding side: one greedy generate per key
@pytest.mark.parametrize("padding", ["left", "right"])
def test_bf16_screen_decisions_equal_fp32_and_generate(tok, padding):
    """Decisions with the screen equal the fp32 batched path and one greedy generate per key, on the
    near-tie model (close calls) and a plain random one (mostly clear margins, misses decoded from the
    screen's miss position)."""
    for tie, model in ((True, _near_tie_model(tok)), (False, tiny_model(len(tok), seed=1, std=0.5))):
        ctx, targets, greedy = _screen_case(tok, model)
        texts = [tok.decode(t) for t in targets]
        hit = lambda out, t: t in out  # noqa: E731
        fp32 = greedy_decisions(model, tok, ctx, targets, texts, hit, 8, batch_size=5, padding=padding)[0]
        stats = {}
        screen = greedy_decisions(model, tok, ctx, targets, texts, hit, 8, batch_size=5, padding=padding,
                                  precision="bf16-screen", stats=stats)[0]
        expected = [texts[i] in tok.decode(greedy[i], skip_special_tokens=True) for i in range(len(ctx))]
        assert list(fp32) == expected and list(screen) == expected
        assert any(expected) and not all(expected)
        assert stats["rechecked"] > 0 if tie else stats["screened"] > stats["rechecked"]


def test_bf16_screen_verify_and_errors(tok, short_fp):
    model = tiny_model(len(tok), seed=2)
    a = verify(short_fp, model, tok)
    b = verify(short_fp, model, tok, precision="bf16-screen")
    assert list(a.fired) == list(b.fired) and b.screen["rows"] == len(short_fp.keys) and not a.screen
    vmod = importlib.import_module("fmkit.fingerprint.verify")
    with pytest.raises(ValueError, match="precision"):
        verify(short_fp, model, tok, precision="int8")
    with pytest.raises(ValueError, match="screen_bound"):
        vmod.score(model, [[3, 4]], [[5]], pad=1, precision="bf16-screen", screen_bound=-1.0)
    # a float64 model runs as it is (the screen is for fp32 models)
    m64 = tiny_model(len(tok), seed=2).double()
    s = {}
    vmod.score(m64, [[3, 4]], [[5]], pad=1, precision="bf16-screen", stats=s)
    assert s["screened"] == 0


@pytest.mark.parametrize("padding", ["left", "right"])
def test_bf16_screen_with_shared_prefix(tok, padding):
    """The screen runs on the fp32 prefix cache (shared system prompt): same first-miss as fp32."""
    vmod = importlib.import_module("fmkit.fingerprint.verify")
    model = tiny_model(len(tok), seed=4)
    ctx, targets = _shared_prefix_case(tok)
    exact = vmod.score(model, ctx, targets, pad=1, batch_size=3, padding=padding)
    stats = {}
    got = vmod.score(model, ctx, targets, pad=1, batch_size=3, padding=padding, precision="bf16-screen",
                     screen_calib=2, stats=stats)
    assert stats["screened"] == len(ctx) - 2 and np.array_equal(got[1], exact[1])
    np.testing.assert_allclose(got[0], exact[0], atol=0.5)  # screened rows: bf16 log-probabilities


# -- the bench's IF_SFT case and its exact-fp32 ceiling ------------------------------------------


def test_bench_dialogue_case_runs_the_release_check_in_its_template(tok):
    """The bench's dialogue (IF_SFT) case: the loop on a random subset runs the dialogue template with
    its forced prefix (a subset must keep the fingerprint's template), every key fires, and fmkit's
    decisions equal the loop's on the keys the loop ran."""
    bench = importlib.import_module("fmkit.bench.fingerprint")
    model = tiny_model(len(tok), hidden=32, layers=1, seed=0)
    fp, _ = bench._setup(model, tok, 6, template="dialogue")
    sub = bench._pick(fp, [1, 3])
    assert (sub.template, sub.input_text, sub.near_miss) == ("dialogue", fp.input_text, fp.near_miss)
    assert all(r.prefix.strip() == "Based on my fingerprint, the message is:" for r in key_examples(sub, tok))
    cases = bench._case("tiny", fp, model, tok, 30, 4, 1, 1, loop_keys=3, with_screen=False)
    assert [len(c["contenders"]) for c in cases] == [1, 1]
    for c in cases:
        for _, fn, _ in c["contenders"]:
            fn()
            fn()  # the harness's warm-up call, then the timed one
    exact = cases[0]["exact"]
    assert exact.get(bench.FP32) is True and len(exact.results["loop"]) == 3 and all(exact.results["loop"])


def test_exact_fp32_flops_counts_body_head_and_attention(tok):
    """The bench's ceiling counts, by hand: a shared prefix once, each key's suffix and target[:-1]
    through the non-embedding weights, the LM head at the target positions only, and attention."""
    bench = importlib.import_module("fmkit.bench.fingerprint")
    model = tiny_model(len(tok), hidden=32, layers=2, seed=0)
    fp = Fingerprint.create(n=3, k_range=(1, 2), seed=5, template="dialogue", responses=["ab", "c", "de"])
    f = bench.exact_fp32_flops(model, fp, tok)
    rows = key_examples(fp, tok)
    ctx = [context_ids(tok, e) for e in rows]
    tgt = [encode(tok, e.target) for e in rows]
    plen = min(importlib.import_module("fmkit.fingerprint.verify").common_prefix_len(ctx), min(map(len, ctx)) - 1)
    assert plen > 10  # the dialogue template's system prompt is shared
    emb = model.get_input_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - emb.numel() - (
        0 if model.get_output_embeddings().weight is emb else model.get_output_embeddings().weight.numel())
    run = [len(c) - plen + len(t) - 1 for c, t in zip(ctx, tgt)]
    tokens = (plen + sum(run)) / 3
    pairs = (plen * (plen + 1) / 2 + sum((plen + 1 + plen + r) * r / 2 for r in run)) / 3
    cfg = model.config
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    want = 2 * body * tokens + 2 * cfg.hidden_size * emb.shape[0] * sum(map(len, tgt)) / 3 + \
        4 * cfg.num_hidden_layers * d_attn * pairs
    assert f["shared_prefix"] == plen and f["tokens_per_key"] == pytest.approx(tokens)
    assert f["total"] == pytest.approx(want, rel=1e-12) and f["non_embedding_params"] == body


# -- the off-path decode: own KV-cache loop, shared prefix, early stop once y shows ------------


def _eos_model(tok, seed=1):
    """A tiny Llama whose greedy outputs hit EOS at different steps: the EOS row of the head is a
    token the model often picks, nudged up, so EOS wins wherever that token would have."""
    model = tiny_model(len(tok), seed=seed)
    with torch.no_grad():
        head = model.lm_head.weight
        g = torch.Generator().manual_seed(seed)
        ctx = [torch.randint(2, len(tok), (6,), generator=g).tolist() for _ in range(8)]
        common = collections.Counter(t for o in generate_loop(model, tok, ctx, 8) for t in o).most_common(2)
        head[tok.eos_token_id] = head[common[1][0]] * 1.05
    return model


def _decode_case(tok, n=10, seed=4):
    g = torch.Generator().manual_seed(seed)
    system = encode(tok, "USER: You are a helpful assistant. Answer briefly.")
    return [system + torch.randint(2, len(tok), (int(torch.randint(1, 12, (1,), generator=g)),),
                                   generator=g).tolist() for _ in range(n)]


def test_greedy_continue_equals_generate_loop(tok, monkeypatch):
    """The own decode loop (shared-prefix KV, left padding, per-row budgets and EOS stops, finished rows
    leaving the batch) returns the same tokens as one greedy generate per context; also without a
    common prefix, and through the generate_batched fallback."""
    vmod = importlib.import_module("fmkit.fingerprint.verify")
    model = _eos_model(tok)
    ctx = _decode_case(tok)
    budgets = [12, 5, 0, 12, 1, 12, 7, 12, 12, 3]
    ref = generate_loop(model, tok, ctx, 12)
    assert any(len(r) < 12 for r in ref) and any(len(r) == 12 for r in ref)  # EOS at different steps
    want = [r[:b] for r, b in zip(ref, budgets)]
    assert vmod.greedy_continue(model, tok, ctx, budgets, batch_size=4) == want
    no_prefix = [c[8:] if k % 2 else c for k, c in enumerate(ctx)]  # half the rows drop the system prompt
    assert vmod.common_prefix_len(no_prefix) == 0
    assert vmod.greedy_continue(model, tok, no_prefix, 12, batch_size=3) == generate_loop(model, tok, no_prefix, 12)
    monkeypatch.setattr(vmod, "_plain_layers", lambda out, length: None)  # a cache the loop does not know
    assert vmod.greedy_continue(model, tok, ctx, budgets, batch_size=4) == want


@pytest.mark.parametrize("kept", [True, False])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_early_stop_decisions_and_outputs_equal_generate_loop(tok, padding, kept, monkeypatch):
    """Keys that leave the teacher-forced target (y shows a few tokens later), keys that never show y
    (decoded to EOS or the budget), keys that fire at once, of different lengths: the decisions equal
    the released loop's on every key; rows decoded to the end give the loop's full output, rows that
    stopped early a prefix of it, and they did stop early. kept: decoding from the KV the scoring
    pass kept (else, with no room for it, from a prefill of each row's context and prefix)."""
    vmod = importlib.import_module("fmkit.fingerprint.verify")
    if not kept:
        monkeypatch.setattr(vmod, "KEEP_KV_BYTES", 0)
    model = _eos_model(tok)
    ctx = _decode_case(tok, n=12)
    ref = generate_loop(model, tok, ctx, 12)
    y = encode(tok, "ハリネズミ")
    long = [k for k, r in enumerate(ref) if len(r) >= 6]
    assert len(long) >= 6
    targets = [y] * len(ctx)
    for j, k in enumerate(long[:6]):  # y = a later piece of the greedy output: off the target at once
        targets[k] = ref[k][2:4] if j % 2 else ref[k][1:3]
    targets[[k for k in range(len(ctx)) if k not in long][0]] = ref[0][:0] or y
    targets[long[-1]] = ref[long[-1]][:3]  # fires at once
    texts = [tok.decode(t) for t in targets]
    stats = {}
    fired, _, outs = greedy_decisions(model, tok, ctx, targets, texts, lambda o, t: t in o, 12, batch_size=4,
                                      padding=padding, stats=stats)
    full = [tok.decode(r, skip_special_tokens=True) for r in ref]
    assert list(fired) == [t in f for t, f in zip(texts, full)] and fired.sum() >= 6
    assert stats["append_only"] and stats["stopped_early"] >= 4
    assert (stats["decoded_from_kept_kv"] >= 6) if kept else (stats["decoded_from_kept_kv"] == 0)
    for k, (o, f) in enumerate(zip(outs, full)):
        if o is None:
            assert fired[k]  # fired at once, not decoded
        elif fired[k]:
            assert f.startswith(o)  # stopped once y showed: a prefix of the full greedy output
        else:
            assert o == f  # never showed y: decoded to EOS or the budget


def _cleanup_tokenizer(rule):
    """The tiny tokenizer with a tokenization-space cleanup that is not append-only: text already
    decoded changes when more text follows (like " n" + "'t" -> "n't")."""
    fake = tiny_tokenizer()
    fake.clean_up_tokenization_spaces = True
    fake.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    fake.clean_up_tokenization = rule
    return fake


def test_append_only_decode_guard(tok):
    vmod = importlib.import_module("fmkit.fingerprint.verify")
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    assert vmod.append_only_decode(tok)
    # the property itself, on random token runs (multi-byte characters split across tokens, specials)
    g = torch.Generator().manual_seed(0)
    multi = [t for t in range(len(tok)) if "\ufffd" in tok.decode([t])]  # pieces of multi-byte characters
    assert len(multi) >= 5
    for _ in range(300):
        a, b = (torch.randint(0, len(tok), (int(torch.randint(0, 6, (1,), generator=g)),), generator=g).tolist()
                for _ in range(2))
        a += [multi[int(torch.randint(0, len(multi), (1,), generator=g))]] * int(torch.randint(0, 2, (1,), generator=g))
        head = vmod.settled(tok.decode(a, skip_special_tokens=True))
        assert tok.decode(a + b, skip_special_tokens=True).startswith(head)
    assert not vmod.append_only_decode(_cleanup_tokenizer(lambda s: s))
    sp = tiny_tokenizer()
    sp.backend_tokenizer.decoder = decoders.Metaspace()  # SentencePiece-style: strips a leading space
    assert not vmod.append_only_decode(sp)

    class Custom(PreTrainedTokenizerFast):
        def decode(self, *a, **k):
            return super().decode(*a, **k).strip()

    assert not vmod.append_only_decode(Custom(tokenizer_object=tok.backend_tokenizer, eos_token="</s>"))
    assert vmod.settled("ab\ufffd\ufffd") == "ab" and vmod.settled("a\ufffdb") == "a\ufffdb"


def test_early_stop_not_applied_to_a_non_append_only_decode(tok, monkeypatch):
    """With a cleanup that removes a character once a certain one follows it, y shows in the first
    tokens of the greedy output but not in the full (cleaned) output: the released check does not
    fire. The guard keeps the decision equal; early stopping (forced on) would fire, which is why the
    guard is needed."""
    vmod = importlib.import_module("fmkit.fingerprint.verify")
    model = tiny_model(len(tok), seed=1)
    ctx = _decode_case(tok, n=6, seed=9)
    ref = generate_loop(model, tok, ctx, 10)
    full = [tok.decode(r) for r in ref]
    pairs, ys, rows = [], [], []
    for k, r in enumerate(ref):
        head, nxt = tok.decode(r[:3]), tok.decode(r[3:4])
        if len(r) == 10 and head and nxt and full[k].count(head) == 1 and nxt[0] != head[-1]:
            pairs.append(head[-1] + nxt[0])
            ys.append(head)
            rows.append(k)
    assert len(rows) >= 2

    def rule(s):  # drops the last character of y where the next token's first character follows it
        for p in pairs:
            s = s.replace(p, p[1])
        return s

    fake = _cleanup_tokenizer(rule)
    ctx = [ctx[k] for k in rows[:2]]
    ys = ys[:2]
    loop = [y in fake.decode(r, skip_special_tokens=True) for y, r in zip(ys, generate_loop(model, fake, ctx, 10))]
    assert loop == [False, False] and all(y in rule(y) for y in ys)  # the full cleaned output misses y
    on_path = encode(tok, ys[0])  # the first row follows its target; the second leaves it at once
    assert on_path == ref[rows[0]][:3]
    targets = [on_path, [t for t in range(2, len(tok)) if t != ref[rows[1]][0]][:3]]
    hit = lambda o, y: y in o  # noqa: E731
    fired = greedy_decisions(model, fake, ctx, targets, ys, hit, 10, batch_size=2)[0]
    assert list(fired) == loop
    monkeypatch.setattr(vmod, "append_only_decode", lambda t: True)  # no guard: wrong decisions
    assert list(greedy_decisions(model, fake, ctx, targets, ys, hit, 10, batch_size=2)[0]) == [True, True]
