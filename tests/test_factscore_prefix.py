"""LogitVerifier's prefix sharing: prompts tokenised whole, grouped by longest common token prefix,
each group's prefix run once and its KV cache reused by the suffixes. Margins and decisions must
equal the unshared forward of each whole prompt (float64, a tiny random Llama), for mixed groups,
prompts that share a prefix only up to an odd point inside the fact, duplicates and prompts with
no passages, across padding sides and batch sizes; per-topic passages give one group per topic."""
import pytest
import torch

pytest.importorskip("transformers")

from fmkit.factscore import (BM25Retriever, FactScorer, LogitVerifier, prompt_parts,  # noqa: E402
                             verification_prompt)
from fmkit.factscore._tiny import tiny_llama, toy_knowledge, word_tokenizer  # noqa: E402



@pytest.fixture(scope="module")
def setup():
    _, tok, ks = toy_knowledge(["was born in the year"])
    return tok, ks, tiny_llama(len(tok), seed=3).double()


def _mixed_items(ks):
    """Per-topic groups (same passages), per-fact passages, facts that share their prompt only up to
    a point inside the fact ("X was born" / "X was born in Tarnby ."), a duplicate, no passages."""
    items = []
    per_topic = BM25Retriever(k=2, passages="per_topic")
    per_fact = BM25Retriever(k=2)
    for t in ks.titles():
        facts = [f"{t} was born", f"{t} was born in Tarnby .", f"{t} was born in the year 1950 .",
                 f"{t} worked as a judge .", "He met a pilot in 1950 ."]
        items += [(t, f, p) for f, p in zip(facts, per_topic.retrieve(t, facts, ks.get_passages(t)))]
        items += [(t, f, p) for f, p in zip(facts[3:], per_fact.retrieve(t, facts[3:], ks.get_passages(t)))]
    items.append(items[1])  # a duplicate prompt: its whole prompt but the last token is shared
    items.append((ks.titles()[0], "A fact with no passages .", []))
    return items


@pytest.fixture(scope="module")
def reference(setup):
    tok, ks, model = setup
    items = _mixed_items(ks)
    one = LogitVerifier(model, tok, batch_size=1, share_prefix=False)
    return items, torch.tensor([one.margins([it])[0] for it in items], dtype=torch.float64)


def test_encode_tokenises_the_whole_prompt(setup):
    tok, ks, model = setup
    t = ks.titles()[0]
    it = (t, f"{t} was born .", ks.get_passages(t)[:2])
    assert list(LogitVerifier(model, tok).encode(*it)) == tok.encode(verification_prompt(*it))


@pytest.mark.parametrize("engine,padding_side", [("packed", "right"), ("copy", "left"), ("copy", "right")])
@pytest.mark.parametrize("batch_size", [2, 64])
@pytest.mark.parametrize("min_shared_prefix", [1, 32])
def test_shared_prefix_equals_unshared_float64(setup, reference, engine, padding_side, batch_size,
                                               min_shared_prefix):
    tok, _, model = setup
    items, ref = reference
    v = LogitVerifier(model, tok, batch_size=batch_size, padding_side=padding_side,
                      min_shared_prefix=min_shared_prefix, engine=engine)
    got = torch.tensor(v.margins(items), dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=0, atol=1e-10), (got - ref).abs().max()
    assert ((got > 0) == (ref > 0)).all()
    assert v.last_groups, "nothing was shared"
    seqs = [v.encode(*it) for it in items]
    grouped = sorted(i for _, m in v.last_groups for i in m)
    assert len(grouped) == len(set(grouped))
    for length, members in v.last_groups:
        assert length >= min_shared_prefix and len(members) > 1
        assert all(len(seqs[i]) > length and seqs[i][:length] == seqs[members[0]][:length] for i in members)
    unshared = sum(len(s) for s in seqs)
    assert v.last_forward_tokens < unshared  # the shared prefixes ran once


def test_odd_boundary_and_duplicate_groups(setup, reference):
    """With min_shared_prefix=1 the prompts "X was born ..." group past the end of the shorter
    fact's words, and a duplicate prompt shares all but its last token."""
    tok, _, model = setup
    items, _ = reference
    v = LogitVerifier(model, tok, min_shared_prefix=1)
    v.margins(items)
    seqs = [v.encode(*it) for it in items]
    lengths = {i: length for length, m in v.last_groups for i in m}
    dup = len(items) - 2
    assert dup in lengths and lengths[dup] == lengths[1]  # the duplicate sits in its original's group
    v.margins([items[1], items[1]])  # alone, the two share all but the last token
    assert v.last_groups == [(len(seqs[1]) - 1, [0, 1])]
    head = len(tok.encode(prompt_parts(*items[0])[0]))  # the definition line and the passages
    boundary = [length for length, m in v.last_groups if 0 in m][0]
    assert boundary > head  # the group shares past the context, into the question's words


def test_group_cuts_by_tokens_saved():
    tok = word_tokenizer(["True False"])
    v = LogitVerifier(tiny_llama(len(tok)), tok, min_shared_prefix=8)
    a, b, c = [1] * 50 + [2, 3], [1] * 50 + [2, 4], [1] * 50  # c is a prefix of a and b
    d, e = [1] * 10 + [5] * 40, [9] * 5  # d shares 10 tokens: cheaper alone
    groups, singles = v.group([a, b, c, d, e])
    assert groups == [(49, [2, 0, 1])] and singles == [3, 4]
    v.min_shared_prefix = 60
    assert v.group([a, b, c, d, e]) == ([], [2, 0, 1, 3, 4])
    v.min_shared_prefix = 1
    groups, singles = v.group([[7, 1], [7, 2], [7, 1]])
    assert groups == [(1, [0, 2, 1])] and singles == []


def test_per_topic_passages_one_group_per_topic(setup):
    tok, ks, model = setup
    per_topic = BM25Retriever(k=3, passages="per_topic")
    items = []
    for t in ks.titles():
        facts = [f"{t} worked as a {j} ." for j in ("judge", "pilot", "painter", "chemist")]
        items += [(t, f, p) for f, p in zip(facts, per_topic.retrieve(t, facts, ks.get_passages(t)))]
    v = LogitVerifier(model, tok, batch_size=8)
    got = v.margins(items)
    assert len(v.last_groups) == len(ks.titles()) and all(len(m) == 4 for _, m in v.last_groups)
    one = LogitVerifier(model, tok, share_prefix=False)
    assert torch.allclose(torch.tensor(got), torch.tensor(one.margins(items)), rtol=0, atol=1e-10)
    scorer = FactScorer(ks, v, retriever=per_topic)
    out = scorer.get_score(ks.titles(), ["x"] * 3, atomic_facts=[[f for t2, f, _ in items if t2 == t]
                                                                  for t in ks.titles()], gamma=0)
    assert [d["is_supported"] for ds in out["decisions"] for d in ds] == [m > 0 for m in got]


def test_packed_engine_is_the_default_and_copies_no_cache(setup, reference, monkeypatch):
    """On sdpa attention, "auto" packs the suffixes: one prefill per group and one forward per
    batch_size suffixes, none of them a batch of copied caches."""
    tok, _, model = setup
    items, ref = reference
    v = LogitVerifier(model, tok, batch_size=3, min_shared_prefix=1)
    assert v._packed_ok()
    monkeypatch.setattr(v, "_suffix_batch", lambda *a: pytest.fail("the packed engine copied a cache"))
    got = torch.tensor(v.margins(items), dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=0, atol=1e-10)
    grouped = sum(len(m) for _, m in v.last_groups)
    assert v.forward_rows == (len(items) - grouped) + sum(1 + -(-len(m) // 3) for _, m in v.last_groups)
    with pytest.raises(ValueError, match="engine"):
        LogitVerifier(model, tok, engine="tree")


def test_generate_path_equals_shared_float64(setup, reference):
    tok, _, model = setup
    items, ref = reference
    gen = torch.tensor(LogitVerifier(model, tok).verify_generate(items[:6]), dtype=torch.float64)
    assert torch.allclose(gen, ref[:6], rtol=0, atol=1e-8)
