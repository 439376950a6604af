"""fmkit.paradox protocol: the spec's test plan (section 3.3) with scripted stubs, no model."""
import warnings

import numpy as np
import pytest

from fmkit.paradox import (HumanBaseline, PairwiseJudge, ParadoxItem, Question, ReferenceMetricJudge, StoredJudge,
                           cohen_kappa, dataset_correlations, evaluation_paradox, fleiss_kappa, generation_score,
                           interrogative_eval, paired_agreement, paradox_holds, pearson, run_sharded, selective_eval,
                           shuffled_candidates, spearman)
from fmkit.paradox.protocol import LetterChooser, parse_letter
from fmkit.paradox.stats import ConstantInputWarning


def _items(n=6):
    return [ParadoxItem(input=f"q{k}", reference=f"ref{k}", distractors=[f"d{k}a", f"d{k}b", f"d{k}c"],
                        difficulty="hard" if k % 2 else "easy", human_gen_output=f"human{k}") for k in range(n)]


def test_generation_score_counts_and_tie_weight():
    v = ["win", "tie", "tie", "loss"]
    assert generation_score(v) == {"G": 0.75, "win_rate": 0.25, "tie_rate": 0.5, "loss_rate": 0.25}
    assert generation_score(v, tie_weight=0.5)["G"] == 0.5
    with pytest.raises(ValueError, match="verdicts"):
        generation_score(["draw"])


def test_selective_eval_arithmetic_with_scripted_components():
    items = _items()
    verdicts = {f"q{k}": v for k, v in enumerate(["win", "tie", "loss", "win", "tie", "loss"])}
    judge = StoredJudge({**verdicts})

    def chooser(inputs, cands):  # right on the first four, wrong on item 4, malformed on item 5
        return [c.index(f"ref{k}") if k < 4 else (c.index(f"d{k}a") if k == 4 else -1)
                for k, c in enumerate(cands)]

    rep = selective_eval(items, lambda xs: [f"out{x}" for x in xs], judge, chooser,
                         human=HumanBaseline(discrimination=[1, 1, 1, 1, 1, 0], generation=0.5), dataset="toy")
    assert (rep.G, rep.win_rate, rep.tie_rate, rep.loss_rate) == (pytest.approx(4 / 6), 2 / 6, 2 / 6, 2 / 6)
    assert rep.D == pytest.approx(4 / 6) and rep.D_h == pytest.approx(5 / 6)
    assert rep.paradox_holds is True and rep.gap_D == pytest.approx(1 / 6)
    assert rep.D_by_difficulty == {"easy": pytest.approx(2 / 3), "hard": pytest.approx(2 / 3)}
    assert [p["disc_correct"] for p in rep.per_item] == [1, 1, 1, 1, 0, 0]
    lo, hi = rep.ci["D"]
    assert lo <= rep.D <= hi
    assert rep.models["judge"] == "stored labels" and rep.started <= rep.finished
    tw = selective_eval(items, lambda xs: xs, judge, chooser, tie_weight=0.5)
    assert tw.G == pytest.approx(3 / 6)


def test_shuffling_is_seeded_and_tracks_the_reference():
    item = _items(1)[0]
    a, b = shuffled_candidates(item, 0, 3), shuffled_candidates(item, 0, 3)
    assert a == b and a[0][a[1]] == "ref0" and sorted(a[0]) == sorted(["ref0", "d0a", "d0b", "d0c"])
    golds = {shuffled_candidates(item, s, 0)[1] for s in range(40)}
    assert len(golds) > 1  # the reference moves with the seed


@pytest.mark.parametrize("G,D,G_h,D_h,expected", [
    (0.9, 0.5, 0.5, 0.9, True), (0.4, 0.5, 0.5, 0.9, False), (0.9, 0.95, 0.5, 0.9, False),
    (0.4, 0.95, 0.5, 0.9, False), (0.5, 0.5, 0.5, 0.9, True), (0.9, 0.9, 0.5, 0.9, False)])
def test_paradox_flag_truth_table(G, D, G_h, D_h, expected):
    assert paradox_holds(G, D, G_h, D_h) is expected


def test_human_generation_baseline_judged_or_parity():
    items = _items(4)

    def judge(inp, out, ref):
        return "tie" if out.startswith("human") else "loss"

    rep = selective_eval(items, lambda xs: xs, judge, lambda i, c: [0] * len(i), human=HumanBaseline(0.9))
    assert rep.G_h == 1.0 and "judged" in rep.G_h_source
    for it in items:
        it.human_gen_output = None
    rep = selective_eval(items, lambda xs: xs, judge, lambda i, c: [0] * len(i), human=HumanBaseline(0.9))
    assert rep.G_h == 0.5 and "parity" in rep.G_h_source


def test_bad_input_items_and_human_labels():
    with pytest.raises(ValueError, match="no distractors"):
        ParadoxItem("q", "r", [])
    with pytest.raises(ValueError, match="empty distractor"):
        ParadoxItem("q", "r", ["a", " "])
    with pytest.raises(ValueError, match="reference"):
        ParadoxItem("q", "", ["a"])
    with pytest.raises(ValueError, match="do not line up"):
        selective_eval(_items(3), lambda xs: xs, lambda *a: "tie", lambda i, c: [0] * len(i),
                       human=HumanBaseline([1, 0]))
    with pytest.raises(TypeError, match=r"items\[0\]"):
        selective_eval([{"input": "q"}], lambda xs: xs, lambda *a: "tie", lambda i, c: [0])


def test_pairwise_judge_order_swapped_disagreement_is_a_tie():
    assert PairwiseJudge(lambda i, a, b: "A")("x", "out", "ref") == "tie"  # always the first: position bias
    assert PairwiseJudge(lambda i, a, b: "A" if a == "out" else "B")("x", "out", "ref") == "win"
    assert PairwiseJudge(lambda i, a, b: "B" if a == "out" else "A")("x", "out", "ref") == "loss"
    assert ReferenceMetricJudge()("x", "the Paris", "Paris") == "tie"
    assert ReferenceMetricJudge()("x", "Rome", "Paris") == "loss"
    assert ReferenceMetricJudge()("x", "The capital of France is Paris.", "Paris") == "tie"  # span match
    assert ReferenceMetricJudge()("x", "Parisian food", "Paris") == "loss"  # whole words only


def test_letter_parsing_malformed_is_wrong():
    assert parse_letter("B. blue", 4) == 1 and parse_letter("answer: (C)", 4) == 2
    assert parse_letter("I think so", 4) == -1 and parse_letter("E", 4) == -1
    chooser = LetterChooser(lambda prompts: ["A", "zzz"])
    assert chooser(["q1", "q2"], [["x", "y"], ["x", "y"]]) == [0, -1]


def test_interrogative_pipeline_with_stubs():
    prompts = ["story about a cat", "story about a dog", "poem about rain"]

    def question_maker(prompt, content):
        return [Question("who?", ["cat", "dog"], 0 if "cat" in content else 1), Question("invalid", ["a", "b"], 0)]

    answers = {"cat": 0, "dog": "malformed"}

    def answerer(content, q):
        a = answers.get(content.split()[-1], 1)
        return -1 if a == "malformed" else a

    rep = interrogative_eval(prompts, lambda ps: [p.replace("story about a ", "text ") for p in ps], question_maker,
                             answerer, validity_filter=lambda c, q: q.question != "invalid",
                             human_accuracy={"story": 1.0, "poem": 0.9}, domains=["story", "story", "poem"])
    assert rep.n_filtered == 3 and rep.n_questions == 3
    assert rep.by_domain == {"story": 0.5, "poem": 1.0} and rep.accuracy == pytest.approx(2 / 3)
    assert rep.gap == {"story": 0.5, "poem": pytest.approx(-0.1)}
    assert rep.paradox_holds == {"story": True, "poem": False}
    with pytest.raises(ValueError, match="domains"):
        interrogative_eval(prompts, lambda ps: ps, question_maker, answerer, domains=["x"])


def test_correlations_and_constant_vectors():
    x = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    assert pearson(x, x) == pytest.approx(1.0) and pearson(x, 1 - x) == pytest.approx(-1.0)
    assert pearson([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 100]) == pytest.approx(1.0)
    with pytest.warns(ConstantInputWarning):
        assert np.isnan(pearson([1, 1, 1], [0, 1, 0]))


def test_kappas_on_known_values():
    a = ["y", "y", "n", "n", "y", "n"]
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(["y", "n", "y", "n"], ["y", "y", "n", "n"]) == pytest.approx(0.0)
    assert fleiss_kappa([["y", "y", "y"], ["n", "n", "n"]]) == pytest.approx(1.0)
    # Fleiss (1971)-style check: by hand, P_i = [1, 1/3, 1/3, 1], p_j = [1/2, 1/2] -> (2/3 - 1/2) / (1/2)
    assert fleiss_kappa([["y"] * 3, ["y", "y", "n"], ["n", "n", "y"], ["n"] * 3]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="raters"):
        fleiss_kappa([["y"], ["n"]])


def test_oh_et_al_unfaithful_judgments_counted_exactly():
    qs = [f"question {k}" for k in range(10)]
    refs = [[f"answer{k}"] for k in range(10)]
    # The scripted model answers 0-5 right and 6-9 wrong; as a judge it calls answers 0-3 and 6-7 correct.
    own = [f"answer{k}" if k < 6 else "no idea" for k in range(10)]
    says_correct = {k for k in range(10) if k < 4 or k in (6, 7)}
    rep = evaluation_paradox(qs, refs, lambda q: own, lambda q, a: int(q.split()[1]) in says_correct)
    # verdict right: 0-3 (correct, says correct), 8-9 (wrong, says wrong); wrong: 4-5, 6-7
    assert rep.generation_accuracy == 0.6 and rep.evaluation_accuracy == 0.6
    assert rep.n_unfaithful == 2 and rep.unfaithful_rate == 0.5  # 8 and 9: judged rightly, answered wrongly
    other = [f"answer{k}" for k in range(10)]  # judging someone else's (all correct) answers
    rep2 = evaluation_paradox(qs, refs, lambda q: own, lambda q, a: int(q.split()[1]) in says_correct,
                              candidates=other)
    assert rep2.n_unfaithful == 2  # 6, 7: called correct rightly though it could not answer them


def test_dataset_level_and_agreement_and_sharding_fallback():
    items = _items(4)
    reps = []
    for k, d in enumerate([0.2, 0.4, 0.6, 0.8]):
        rep = selective_eval(items, lambda xs: xs, lambda *a: "tie", lambda i, c: [0] * len(i),
                             human=HumanBaseline(0.7, generation=0.5), dataset=f"ds{k}")
        rep.G, rep.D = 0.1 * k, d
        rep.paradox_holds = paradox_holds(rep.G, rep.D, 0.5, 0.7)
        reps.append(rep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = dataset_correlations(reps)
    assert out["pearson"] == pytest.approx(1.0) and out["failing"] == ["ds0", "ds1", "ds2", "ds3"]
    names, m = paired_agreement(reps[0], [1.0, 0.0, 1.0, 1.0])
    assert names == ["generation", "discrimination", "interrogation"] and np.allclose(np.diag(m), 1.0)
    assert run_sharded(lambda xs: [x * 2 for x in xs], [1, 2, 3]) == [2, 4, 6]  # not distributed: one process


def test_self_interrogation_on_each_items_own_output_gives_a_three_way_matrix():
    """The demo's third way: rule-made questions about the item's OWN output, answered with that
    output in context, on the same items as generation and discrimination."""
    from fmkit.paradox import data, interrogative_eval, paired_agreement, selective_eval

    items = data.qa_items()[:4]
    outputs = ["The capital of France is Paris.", "Lyon", "I do not know.", ""]
    # 'stated' question only when exactly one candidate is in the output, right or wrong
    q0 = data.output_questions(items[0], outputs[0])
    assert [q.question.startswith("Which of these does") for q in q0] == [True, False]
    assert q0[0].options[q0[0].answer] == "Paris" and q0[1].options[q0[1].answer] == "capital"
    q1 = data.output_questions(items[1], "Lyon is big")  # a wrong answer is still what the text states
    assert not any(q.options[q.answer] == "Tokyo" for q in q1)
    assert data.output_questions(items[3], "") == []
    for it, out in zip(items, outputs):
        for q in data.output_questions(it, out):
            assert data.output_question_valid(out, q)
            assert sum(data._has_span(out, o) for o in q.options) == 1
    assert not data.output_question_valid("Paris and Lyon", Question("q", ["Paris", "Lyon"], 0))

    by_input = {it.input: it for it in items}
    first = lambda content, q: 0  # noqa: E731  a scripted answerer: always the first option
    inter = interrogative_eval([it.input for it in items], None, lambda p, c: data.output_questions(by_input[p], c),
                               first, validity_filter=data.output_question_valid, contents=outputs)
    acc = [p["accuracy"] for p in inter.per_prompt]
    expected = [np.mean([q.answer == 0 for q in data.output_questions(it, o)]) if data.output_questions(it, o)
                else np.nan for it, o in zip(items, outputs)]
    np.testing.assert_array_equal(acc, expected)
    rep = selective_eval(items, None, ReferenceMetricJudge(), lambda xs, cs: [0] * len(xs), outputs=outputs)
    names, m = paired_agreement(rep, interrogative_accuracy=acc)
    assert names == ["generation", "discrimination", "interrogation"] and m.shape == (3, 3)
    gen = np.array([p["gen_success"] for p in rep.per_item])
    ok = ~np.isnan(acc)
    assert m[0, 2] == pytest.approx(np.mean(gen[ok] == (np.array(acc)[ok] >= 0.5)))
