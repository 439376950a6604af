"""fmkit.factscore with tiny random Hugging Face models and a locally trained tokenizer:
batched verification equals one-at-a-time and the generate path (spec §2.3.7 and the issue's
added points), the NP scorer (§2.3.8), encoders, generation, and torch.distributed sharding."""
import os
import socket

import pytest
import torch

pytest.importorskip("transformers")

from fmkit.factscore import (AtomicFactGenerator, BM25Retriever, DenseRetriever, FactScorer, HFEncoder,  # noqa: E402
                             HFGenerator, KnowledgeSource, LogitVerifier, NPScorer)
from fmkit.factscore._tiny import (OverlapVerifier, tiny_llama, tiny_mlm, toy_corpus, toy_knowledge,  # noqa: E402
                                   word_tokenizer)

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def setup():
    return toy_knowledge()


def _items(ks, n_per_topic=5):
    """Facts whose retrieved passages repeat within a topic (prefix sharing) and differ across."""
    out = []
    r = BM25Retriever(k=2)
    for t in ks.titles():
        ps = ks.get_passages(t)
        facts = [f"{t} was born in Tarnby .", f"{t} worked as a judge .", "He met a pilot in 1950 .",
                 f"{t} moved to Oslo", "x"][:n_per_topic]
        out += [(t, f, p) for f, p in zip(facts, r.retrieve(t, facts, ps))]
    out.append((ks.titles()[0], "A fact with no passages .", []))
    return out


@pytest.fixture(scope="module")
def reference(setup):
    """Margins of the per-fact paths: one prompt per forward, and generate's first-token logits."""
    _, tok, ks = setup
    model = tiny_llama(len(tok), seed=1)
    items = _items(ks)
    v = LogitVerifier(model, tok, batch_size=1, share_prefix=False)
    single = torch.tensor([v.margins([it])[0] for it in items])
    gen = torch.tensor(v.verify_generate(items))
    return model, items, single, gen


def test_single_equals_generate_first_token(reference):
    _, _, single, gen = reference
    assert torch.allclose(single, gen, atol=2e-5) and ((single > 0) == (gen > 0)).all()


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [3, 64])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_batched_equals_single_and_generate(setup, reference, padding_side, batch_size, share_prefix):
    _, tok, _ = setup
    model, items, single, gen = reference
    v = LogitVerifier(model, tok, batch_size=batch_size, padding_side=padding_side, share_prefix=share_prefix)
    batched = torch.tensor(v.margins(items))
    assert torch.allclose(batched, single, atol=2e-5) and torch.allclose(batched, gen, atol=2e-5)
    assert ((batched > 0) == (gen > 0)).all()


def test_one_forward_per_fact_no_generate(setup):
    _, tok, ks = setup
    model = tiny_llama(len(tok))
    model.generate = lambda *a, **k: pytest.fail("the batched verifier must not decode")
    items = _items(ks)
    v = LogitVerifier(model, tok, batch_size=4, share_prefix=False)
    calls = []
    model.base_model.register_forward_hook(lambda m, a, kw, out: calls.append(1), with_kwargs=True)
    v.verify(items)
    assert v.forward_rows == len(items) and len(calls) == -(-len(items) // 4)
    shared = LogitVerifier(model, tok, batch_size=64, share_prefix=True, min_shared_prefix=8)
    shared.verify(items)  # a row per ungrouped fact; per group, a prefill row and one packed row (<= 64 facts)
    grouped = sum(len(m) for _, m in shared.last_groups)
    assert shared.last_groups and shared.forward_rows == len(items) - grouped + 2 * len(shared.last_groups)


@pytest.mark.parametrize("favour", [True, False])
def test_bias_decides(setup, favour):
    _, tok, ks = setup
    model = tiny_llama(len(tok))
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids("True" if favour else "False")] = 5.0
    model.set_output_embeddings(head)
    assert LogitVerifier(model, tok).verify(_items(ks)) == [favour] * len(_items(ks))


def test_tokenizer_without_true_false_is_rejected(setup):
    corpus, _, _ = setup
    tok = word_tokenizer([r["title"] for r in corpus], extra_words=("yes", "no"))
    with pytest.raises(ValueError, match="no 'True' token"):
        LogitVerifier(tiny_llama(len(tok)), tok)


class _ZeroHidden(torch.nn.Module):
    """Every position's hidden state is the same vector: all similarities tie, so P_i is the share
    of passage tokens equal to the masked token."""

    def forward(self, input_ids, attention_mask=None, output_hidden_states=True):
        from types import SimpleNamespace

        return SimpleNamespace(hidden_states=[torch.zeros(*input_ids.shape, 8)])


def test_np_scorer_known_probabilities():
    tok = word_tokenizer(["alpha beta gamma delta the of Fact :"])
    np_ = NPScorer(_ZeroHidden(), tok, threshold=0.3)
    ps = [{"title": "T", "text": "alpha beta"}, {"title": "T", "text": "alpha gamma"}]
    assert np_.probability("alpha delta", ps) == pytest.approx((2 / 4 + 0) / 2)
    assert np_.probability("the alpha of", ps) == pytest.approx(0.5)  # stop words skipped
    assert np_.probability("delta", ps) == 0.0  # gold token absent from the passages
    assert np_.probability("the of", ps) == 0.0  # nothing left after stop words
    assert np_.verify([("T", "the alpha", ps), ("T", "alpha delta", ps)]) == [True, False]


def test_np_scorer_tiny_mlm_runs(setup):
    _, tok, ks = setup
    t = ks.titles()[0]
    np_ = NPScorer(tiny_mlm(len(tok)), tok)
    p = np_.probability(f"{t} worked as a judge", ks.get_passages(t)[:3])
    assert 0.0 <= p <= 1.0


def test_hf_encoder_dense_retrieval_and_generator(setup):
    from transformers import BertConfig, BertModel

    _, tok, ks = setup
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=512)).eval()
    enc = HFEncoder(bert, tok)
    e = enc(["a b", "c"])
    assert e.shape == (2, 32) and torch.allclose(e.norm(dim=1), torch.ones(2))
    t = ks.titles()[0]
    got = DenseRetriever(enc, k=2).retrieve(t, ["x", "y"], ks.get_passages(t))
    assert all(len(r) == 2 for r in got)
    gen = HFGenerator(tiny_llama(len(tok)), tok, max_new_tokens=5, temperature=0.0, batch_size=2)
    facts = AtomicFactGenerator(gen).batch(["Ada was born in Oslo. She worked as a judge.", "Bo moved."])
    assert len(facts) == 2 and len(facts[0]) == 2


def test_end_to_end_tiny_verifier(setup):
    _, tok, ks = setup
    model = tiny_llama(len(tok), seed=2)
    t0, t1 = ks.titles()[:2]
    facts = [[f"{t0} was born in Tarnby .", f"{t0} worked as a judge ."], [f"{t1} met a pilot ."]]
    outs = [FactScorer(ks, LogitVerifier(model, tok, batch_size=bs, share_prefix=sp)).get_score(
        [t0, t1], ["x", "y"], atomic_facts=facts) for bs, sp in ((1, False), (8, True))]
    assert outs[0]["decisions"] == outs[1]["decisions"] and outs[0]["score"] == outs[1]["score"]


def _rank(rank, world, port, corpus, queue):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ks = KnowledgeSource.from_records(corpus, max_tokens=12)
        titles = ks.titles()
        topics = [titles[i % 3] for i in range(7)]
        facts = [[p["text"].split(".")[0] + ".", "Nonsense claim here."] for t in topics for p in ks.get_passages(t)[:1]]
        out = FactScorer(ks, OverlapVerifier()).get_score(topics, ["x"] * 7, atomic_facts=facts, gamma=0)
        queue.put((rank, out["decisions"], out["score"]))
    finally:
        dist.destroy_process_group()


def test_distributed_two_gloo_ranks_equal_single(monkeypatch):
    import multiprocessing as mp

    monkeypatch.undo()  # gloo talks over local sockets
    corpus = toy_corpus(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, corpus, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    ks = KnowledgeSource.from_records(corpus, max_tokens=12)
    titles = ks.titles()
    topics = [titles[i % 3] for i in range(7)]
    facts = [[ks.get_passages(t)[0]["text"].split(".")[0] + ".", "Nonsense claim here."] for t in topics]
    single = FactScorer(ks, OverlapVerifier()).get_score(topics, ["x"] * 7, atomic_facts=facts, gamma=0)
    for _, decisions, score in results:
        assert decisions == single["decisions"] and score == single["score"]
