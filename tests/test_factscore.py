"""fmkit.factscore without transformers: text rules, BM25, chunking, knowledge source, scoring,
bootstrap, caches, dense retrieval (hashing encoder), end to end with scripted components.
Spec §2.3 points 1-6, 9-12, 14 (the model-based points are in test_factscore_models.py)."""
import json
import math
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

from fmkit.factscore import (DEMOS, AtomicFactGenerator, BM25, BM25Retriever, DenseRetriever, Ensemble, FactScorer,
                             KnowledgeSource, LMCache, SentenceSplitter, bootstrap_ci, chunk_sections, dedupe,
                             estimator_error, human_factscore, is_abstain, is_verifiable, length_penalty,
                             parse_facts, parse_true_false, prompt_parts, summarize, verification_prompt)
from fmkit.factscore._tiny import OverlapVerifier, ScriptedLM, hashing_encoder, toy_corpus
from fmkit.factscore.atomic_facts import INSTRUCTION



def test_sockets_are_blocked():
    import socket

    with pytest.raises(OSError, match="offline"):
        socket.create_connection(("example.com", 80))


# -- 1. length penalty ----------------------------------------------------------------------------

def test_length_penalty_values():
    assert length_penalty(5, 10) == pytest.approx(math.exp(-1))
    assert length_penalty(10, 10) == 1.0 and length_penalty(11, 10) == 1.0
    assert length_penalty(1, 10) == pytest.approx(math.exp(-9))
    assert length_penalty(3, 0) == 1.0
    with pytest.raises(ValueError, match="gamma"):
        length_penalty(3, -1)


def test_summarize_gamma_and_init_score():
    d = [[{"atom": "a", "is_supported": True}] * 4 + [{"atom": "b", "is_supported": False}], None,
         [{"atom": "c", "is_supported": True}] * 10]
    out = summarize(d, gamma=10)
    assert out["init_score"] == pytest.approx((0.8 + 1.0) / 2)
    assert out["score"] == pytest.approx((0.8 * math.exp(-1) + 1.0) / 2)
    assert out["respond_ratio"] == pytest.approx(2 / 3)
    assert out["num_facts_per_response"] == pytest.approx(7.5)
    no_gamma = summarize(d, gamma=0)
    assert "init_score" not in no_gamma and no_gamma["score"] == pytest.approx(0.9)


# -- 2. abstention --------------------------------------------------------------------------------

def test_abstention_detectors():
    assert is_abstain("") and is_abstain("  \n")
    assert not is_abstain("I'm sorry, but no.")
    assert is_abstain("I'm sorry, I cannot.", "generic") and is_abstain("Could you provide more details?", "generic")
    assert not is_abstain("Ada was a chemist.", "generic")
    assert is_abstain("I could not find any information [1] about him.", "perplexity_ai")
    assert is_abstain("There are no search results for that name.", "perplexity_ai")
    assert is_abstain("[1][2] Please try a more general question.", "perplexity_ai")
    assert not is_abstain("Ada Lind is a chemist [1].\nI could not find more.", "perplexity_ai")
    with pytest.raises(ValueError, match="abstain_detection_type"):
        is_abstain("x", "nope")
    with pytest.raises(TypeError, match="generation"):
        is_abstain(None)


def test_none_responses_excluded_from_score_and_counts():
    corpus = toy_corpus(2)
    ks = KnowledgeSource.from_records(corpus)
    t0, t1 = ks.titles()
    scorer = FactScorer(ks, OverlapVerifier(), abstain_detection_type="generic", progress=False)
    out = scorer.get_score([t0, t1, t0], ["x", "I'm sorry, no idea.", ""], gamma=0,
                           atomic_facts=[[f"{t0} worked."], ["ignored"], ["ignored"]])
    assert out["decisions"][1] is None and out["decisions"][2] is None
    assert out["respond_ratio"] == pytest.approx(1 / 3) and out["num_facts_per_response"] == 1.0


# -- 3. splitter ------------------------------------------------------------------------------------

def test_splitter_repairs():
    split = SentenceSplitter()
    assert split("John F. Kennedy was born in 1917. He served in the Navy.") == [
        "John F. Kennedy was born in 1917.", "He served in the Navy."]
    assert split("Dr. Lind works at St. Mary's. She is 40.") == ["Dr. Lind works at St. Mary's.", "She is 40."]
    assert split("Hello. This is a test. Ok. And more.") == ["Hello. This is a test. Ok.", "And more."]
    assert split("He left in 1990. then he came back. Done fine.") == ["He left in 1990. then he came back.",
                                                                        "Done fine."]
    assert split('He said "Stop." Then "Go." went on.') == ['He said "Stop."', 'Then "Go." went on.']


# -- 4. prompt assembly and parsing -----------------------------------------------------------------

def test_atomic_fact_prompt_blocks():
    gen = AtomicFactGenerator(ScriptedLM({}))
    sentence = "Kenji Moravec coached a youth team in Sestra."
    prompt = gen.prompt(sentence)
    blocks = prompt.split("\n\n")
    fixed = list(DEMOS)[:7]
    for block, s in zip(blocks, fixed):
        assert block == INSTRUCTION + s + "\n" + "\n".join(f"- {f}" for f in DEMOS[s])
    assert blocks[7].startswith(INSTRUCTION + "Kenji Moravec played midfield")  # BM25's pick
    assert prompt.endswith(INSTRUCTION + sentence + "\n") and len(blocks) == 9
    non_bio = AtomicFactGenerator(ScriptedLM({}), is_bio=False)
    assert non_bio.prompt(sentence).count(INSTRUCTION) == 9  # 8 fixed + the target


def test_parse_facts():
    assert parse_facts("- a\n- b") == ["a.", "b."]
    assert parse_facts(" - He was born.\n- He sang!\n\nPlease breakdown ...\n- x") == ["He was born.", "He sang!"]
    assert parse_facts("") == []
    # a preamble before the list is not a fact (upstream drops it too), nor is a reply with no list
    assert parse_facts("Here are the independent facts:\n- a\n- b") == ["a.", "b."]
    assert parse_facts("1. Mara Velden: The film is a drama.") == []


def test_atomic_fact_generation_scripted_and_bio_rules():
    lm = ScriptedLM({"Ada Lind was born in 1950 in Oslo.": ["Ada Lind was born.", "Ada Lind was born in 1950.",
                                                              "Ada Lind was born in Oslo.", "Ada Lind was born in 1951."]})
    gen = AtomicFactGenerator(lm)
    out = gen("Sure, here is a bio.\nAda Lind was born in 1950 in Oslo.")
    assert out == [("Ada Lind was born in 1950 in Oslo.", ["Ada Lind was born in 1950.", "Ada Lind was born in Oslo."])]
    assert lm.calls == 1


# -- 5. chunker, retrieval order ---------------------------------------------------------------------

@pytest.mark.parametrize("max_tokens", [1, 3, 7, 256])
def test_chunker_limits_and_reproduces(max_tokens):
    text = "  Alpha beta,  gamma.\nDelta  epsilon zeta eta theta iota kappa lambda mu.  "
    passages = chunk_sections([text], None, max_tokens)
    assert all(len(p.split()) <= max_tokens for p in passages)
    assert "".join(passages) == text
    two = chunk_sections(["a b c", "d e f g"], None, 4)
    assert two == ["a b c d ", "e f g"]  # a piece keeps the whitespace after it
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_sections([text], None, 0)


def test_retrieval_k_and_reversed_prompt_order():
    ps = [{"title": "T", "text": f"passage {i} about item{i}"} for i in range(6)]
    got = BM25Retriever(k=3).retrieve("T", ["item4 item4 item2"], ps)[0]
    assert len(got) == 3 and got[0]["text"].endswith("item4") and got[1]["text"].endswith("item2")
    head, tail = prompt_parts("T", "A fact.", got)
    assert head.index("item4") > head.index("item2")  # best passage last, next to the question
    assert tail == "Input: A fact. True or False?\nOutput:"
    assert verification_prompt("T", " A fact. ", got) == head + tail
    assert prompt_parts("T", "f", [{"title": "T", "text": "no stop"}])[0].endswith("no stop.\n\n")


def test_per_topic_passages_shared_by_all_facts_of_a_topic():
    ps = [{"title": "T", "text": f"passage {i} about item{i} and item{(i + 1) % 6}"} for i in range(6)]
    facts = ["item4 item4", "item2 fact", "item4 item4", "item0"]
    bm = BM25Retriever(k=2, passages="per_topic")
    got = bm.retrieve("T", facts, ps)
    assert all(g == got[0] for g in got) and len(got[0]) == 2
    # the top k by summed per-fact BM25 score over the distinct facts (one concatenated query)
    index = BM25([f"{p['title']} {p['text']}".split() for p in ps])
    total = sum(index.scores(f"T {f}".split()) for f in dict.fromkeys(facts))
    assert [ps.index(p) for p in got[0]] == list(np.argsort(-total, kind="stable")[:2])
    assert got[0] != BM25Retriever(k=2).retrieve("T", ["item0"], ps)[0]  # per_fact differs for this fact
    enc = hashing_encoder(32)
    dense = DenseRetriever(enc, k=3, passages="per_topic").retrieve("T", facts, ps)
    q = enc([f"T {f}" for f in dict.fromkeys(facts)]).sum(0)
    brute = torch.topk(enc([f"{p['title']} {p['text']}" for p in ps]) @ q, 3).indices.tolist()
    assert all(d == dense[0] for d in dense) and [ps.index(p) for p in dense[0]] == brute
    for cls in (BM25Retriever, lambda **kw: DenseRetriever(enc, **kw)):
        with pytest.raises(ValueError, match="passages"):
            cls(k=2, passages="per_doc")
    # end to end: every fact of a topic is verified against the same passages
    ks = KnowledgeSource.from_records(toy_corpus(2), max_tokens=12)
    seen = []

    class Spy(OverlapVerifier):
        def verify(self, items):
            seen.extend(items)
            return super().verify(items)
    t0, t1 = ks.titles()
    FactScorer(ks, Spy(), retriever=BM25Retriever(k=2, passages="per_topic")).get_score(
        [t0, t1, t0], ["x"] * 3, atomic_facts=[["a b.", "c d."], ["e."], ["f g."]], gamma=0)
    for t in (t0, t1):
        assert len({tuple(p["text"] for p in ps_) for tt, _, ps_ in seen if tt == t}) == 1


# -- 6. chat-style parser ----------------------------------------------------------------------------

@pytest.mark.parametrize("reply,expected", [
    ("True", True), ("false.", False), ("It is true, not false", False), ("False... no, True", True),
    ("Yes", True), ("I do not know", False), ("There is no information.", False), ("Cannot say", False),
    ("Unknown", False), ("Correct!", True),
])
def test_parse_true_false(reply, expected):
    assert parse_true_false(reply) is expected


# -- BM25 ----------------------------------------------------------------------------------------------

def test_bm25_formula_by_hand():
    corpus = [["a", "b"], ["a", "c", "c"], ["d"]]
    bm = BM25(corpus)
    n, avgdl = 3, 2.0
    idf_c = math.log(n - 1 + 0.5) - math.log(1 + 0.5)
    expected = idf_c * 2 * 2.5 / (2 + 1.5 * (1 - 0.75 + 0.75 * 3 / avgdl))
    assert bm.scores(["c"])[1] == pytest.approx(expected)
    idf = {"a": math.log(1.5) - math.log(2.5), "b": idf_c, "c": idf_c, "d": idf_c}
    floor = 0.25 * sum(idf.values()) / 4  # 'a' has a negative idf: floored
    assert bm.scores(["a"])[0] == pytest.approx(floor * 2.5 / (1 + 1.5))
    assert np.allclose(bm.scores(["c", "c"]), 2 * bm.scores(["c"]))  # repeated query words count twice
    assert bm.top_k([["zzz"]], 2).tolist() == [[0, 1]]  # ties: lower index first
    with pytest.raises(ValueError, match="corpus"):
        BM25([])


# -- 9. ensemble and caches --------------------------------------------------------------------------

class _Fixed:
    def __init__(self, answers, retriever=None):
        self.answers, self.seen, self.retriever = answers, [], retriever

    def verify(self, items):
        self.seen.append([f for _, f, _ in items])
        return [self.answers[f] for _, f, _ in items]


def test_ensemble_and_logic_runs_second_only_on_supported():
    a = _Fixed({"x": True, "y": False, "z": True})
    b = _Fixed({"x": True, "y": True, "z": False})
    out = Ensemble(a, b).verify([("t", "x", []), ("t", "y", []), ("t", "z", [])])
    assert out == [True, False, False] and b.seen == [["x", "z"]]


def test_cache_round_trip_and_model_key(tmp_path):
    cache = LMCache(str(tmp_path / "c.sqlite"))
    calls = []

    def fn(ps):
        calls.append(list(ps))
        return [p.upper() for p in ps]

    assert cache.cached("m1", fn, ["a", "b", "a"]) == ["A", "B", "A"]
    assert cache.cached("m1", fn, ["b", "a"]) == ["B", "A"] and len(calls) == 1
    cache.cached("m2", fn, ["a"])
    assert len(calls) == 2 and len(cache) == 3
    assert LMCache(str(tmp_path / "c.sqlite")).get_many("m1", ["a"]) == {"a": "A"}  # persisted


def _writer(path, worker):
    cache = LMCache(path)
    for i in range(60):
        cache.put_many("m", {f"w{worker}-{i}": i})


def test_cache_two_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    LMCache(path)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(LMCache(path)) == 120


def test_verifier_cache_skips_model_calls(tmp_path):
    from fmkit.factscore.verify import TextVerifier

    calls = []

    def backend(prompts):
        calls.append(len(prompts))
        return ["True"] * len(prompts)

    v = TextVerifier(backend, cache=LMCache(), model_id="stub")
    items = [("t", "f1", [{"title": "t", "text": "x"}]), ("t", "f2", [])]
    assert v.verify(items) == [True, True] and v.verify(items) == [True, True] and calls == [2]


# -- 10. end to end ------------------------------------------------------------------------------------

def test_end_to_end_exact_score():
    corpus = [{"title": "Ada Lind", "text": "Ada Lind is a chemist. Ada Lind was born in Oslo in 1950."},
              {"title": "Bo Rask", "text": ["Bo Rask is a pilot.", "Bo Rask lives in Tarnby."]},
              {"title": "Cy Moe", "text": "Cy Moe paints murals of harbour workers."}]
    ks = KnowledgeSource.from_records(corpus)
    table = {"Ada Lind is a chemist from Oslo.": ["Ada Lind is a chemist.", "Ada Lind is from Oslo."],
             "She was born in 1960.": ["Ada Lind was born in 1960."],
             "Bo Rask is a pilot who lives in Paris.": ["Bo Rask is a pilot.", "Bo Rask lives in Paris."]}
    lm = ScriptedLM(table)
    scorer = FactScorer(ks, OverlapVerifier(), AtomicFactGenerator(lm), progress=False)
    out = scorer.get_score(["Ada Lind", "Bo Rask", "Cy Moe"],
                           ["Ada Lind is a chemist from Oslo. She was born in 1960.",
                            "Bo Rask is a pilot who lives in Paris.", ""], gamma=0)
    # Ada: chemist yes, "from Oslo" -> 'from' missing in text -> no, 1960 no => 1/3; Bo: 1/2
    assert [d["is_supported"] for d in out["decisions"][0]] == [True, False, False]
    assert out["score"] == pytest.approx((1 / 3 + 1 / 2) / 2) and out["respond_ratio"] == pytest.approx(2 / 3)
    assert lm.calls == 1  # all sentences of all generations in one LM call
    lo, hi = out["score_ci"]
    assert lo <= out["score"] <= hi
    assert set(out) >= {"score", "init_score", "respond_ratio", "decisions", "num_facts_per_response"} - {"init_score"}


def test_bad_inputs_are_named():
    ks = KnowledgeSource.from_records(toy_corpus(1))
    scorer = FactScorer(ks, OverlapVerifier())
    with pytest.raises(KeyError, match="Nobody"):
        scorer.get_score(["Nobody"], ["text"], atomic_facts=[["a."]])
    with pytest.raises(ValueError, match="equal lengths"):
        scorer.get_score(["a", "b"], ["x"])
    with pytest.raises(TypeError, match="generations"):
        scorer.get_score([ks.titles()[0]], [None])
    with pytest.raises(ValueError, match="atomic_fact_generator"):
        scorer.get_score([ks.titles()[0]], ["Some text."])


# -- 11. knowledge source ----------------------------------------------------------------------------

def test_knowledge_source_build(tmp_path):
    path = tmp_path / "kb.jsonl"
    rows = [{"title": "A", "text": "one two three four five"}, {"title": "B", "text": ["s1 s2", "s3"]},
            {"title": "A", "text": "duplicate"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ks = KnowledgeSource.build(str(path), str(tmp_path / "kb.db"), max_tokens=2)
    assert len(ks) == 2 and [p["text"] for p in ks.get_passages("A")] == ["one two", "three four", "five"]
    assert [p["text"] for p in ks.get_passages("B")] == ["s1 s2", "s3"]
    again = KnowledgeSource(str(tmp_path / "kb.db"))  # reopened from disk
    assert again.get_passages("B")[0] == {"title": "B", "text": "s1 s2"}
    with pytest.raises(KeyError, match="'C' is not in the knowledge source"):
        ks.get_passages("C")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "A"}\n')
    with pytest.raises(ValueError, match="'title' and 'text'"):
        KnowledgeSource.build(str(bad))
    with pytest.raises(FileExistsError, match="already exists"):
        KnowledgeSource.build(str(path), str(tmp_path / "kb.db"))


# -- 12. dense retrieval --------------------------------------------------------------------------------

def test_dense_retrieval_equals_brute_force_and_caches(tmp_path):
    g = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
    texts = {}

    def enc(batch):
        return torch.stack([table[texts.setdefault(t, len(texts))] for t in batch])

    passages = [{"title": "T", "text": f"p{i}"} for i in range(30)]
    r = DenseRetriever(enc, k=5, cache_dir=str(tmp_path))
    facts = [f"f{i}" for i in range(8)]
    got = r.retrieve("T", facts, passages)
    P, Q = enc([f"T p{i}" for i in range(30)]), enc([f"T f{i}" for i in range(8)])
    expected = torch.topk(Q @ P.T, 5, dim=1).indices.tolist()
    assert [[int(p["text"][1:]) for p in row] for row in got] == expected
    r.retrieve("T", facts[:2], passages)
    assert r.encoded_topics == 1
    r2 = DenseRetriever(enc, k=5, cache_dir=str(tmp_path))  # on-disk cache of the first one
    r2.retrieve("T", facts[:1], passages)
    assert r2.encoded_topics == 0
    with pytest.raises(ValueError, match="k: expected"):
        DenseRetriever(enc, k=0)


def test_dense_retrieval_end_to_end_with_hashing_encoder():
    ks = KnowledgeSource.from_records(toy_corpus(3), max_tokens=12)
    t = ks.titles()[1]
    scorer = FactScorer(ks, OverlapVerifier(retriever=DenseRetriever(hashing_encoder(), k=2)))
    first = ks.get_passages(t)[0]["text"].split(".")[0] + "."
    out = scorer.get_score([t], ["x"], gamma=0, atomic_facts=[[first, f"{t} was an astronaut on Mars."]])
    assert [d["is_supported"] for d in out["decisions"][0]] == [True, False]


# -- statistics ------------------------------------------------------------------------------------------

def test_bootstrap_ci_covers_at_nominal_rate():
    rng = np.random.default_rng(1)
    p, n_prompts, facts, reps = 0.6, 60, 12, 300
    covered = 0
    for r in range(reps):
        per_prompt = (rng.random((n_prompts, facts)) < p).mean(1)
        lo, hi = bootstrap_ci(per_prompt, n_boot=1000, seed=r)
        covered += lo <= p <= hi
    rate = covered / reps
    assert 0.90 <= rate <= 0.99, rate  # nominal 0.95; binomial sd over 300 reps is 0.013


def test_dedupe_and_verifiability():
    assert dedupe(["A is b.", "a is  b", "C."]) == ["A is b.", "C."]
    assert is_verifiable("Ada Lind was born in 1950.") and is_verifiable("She moved to Oslo.")
    assert not is_verifiable("She is widely regarded as a talented artist.")
    assert not is_verifiable("she was kind.")


def test_estimator_error_reads_labeled_format(tmp_path):
    path = tmp_path / "ChatGPT.jsonl"
    lines = [{"topic": "A", "output": "x", "annotations": [
        {"text": "s", "human-atomic-facts": [{"text": "a", "label": "S"}, {"text": "b", "label": "NS"},
                                             {"text": "c", "label": "IR"}]}]},
        {"topic": "B", "output": "", "annotations": None},
        {"topic": "C", "output": "y", "annotations": [{"text": "s", "human-atomic-facts": [{"text": "a", "label": "S"}]}]}]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    assert human_factscore(str(path)) == pytest.approx(0.75)
    out = estimator_error({"ChatGPT": 0.70, "Other": 0.2}, {"ChatGPT": str(path), "Other": 0.3})
    assert out["er"]["ChatGPT"] == pytest.approx(0.05) and out["ranking_preserved"]
    assert not estimator_error({"a": 0.1, "b": 0.2}, {"a": 0.3, "b": 0.1})["ranking_preserved"]
    with pytest.raises(ValueError, match="same models"):
        estimator_error({"a": 0.1}, {"b": 0.1})
