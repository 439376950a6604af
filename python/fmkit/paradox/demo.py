"""`fmkit demo paradox`: selective and interrogative evaluation, and the Oh et al. variant, with
SmolLM2-135M-Instruct as generator, chooser and answerer on the bundled items (fmkit.paradox.data).

Every selective item is scored three ways: generation + judge, multiple-choice log-likelihood, and
self-interrogation (rule-made questions about the item's own generated output, answered by the same
model with that output in context); the per-item agreement matrix of the three is printed.

Judges, stated plainly: G uses a reference-metric judge (the reference as a whole-word span of the
output, else token F1 >= 0.5: 'as good as' or not; it cannot say 'better'), and, as a second column, SmolLM2 itself as a pairwise
judge (both orders, disagreement = tie). Human baselines are the item author's data (one person, see
data.PROVENANCE), not a crowd study. Without SmolLM2 it says how to install it and runs a small
Llama trained here for a few seconds on the items' text (numbers then only exercise the pipeline).
"""
from __future__ import annotations

import json
import os
import time

REQUIRES = ("transformers", "tokenizers", "matplotlib")


def _train_small_lm(seconds: float = 20.0):
    """A 2-layer Llama trained on the bundled items' text (a fallback, not a capable model)."""
    import torch

    from fmkit.paradox import data
    from fmkit.paradox.models import tiny_llama, train_tokenizer

    text = " ".join(f"{it.input} Answer: {it.reference}." for it in data.qa_items() + data.completion_items())
    tok = train_tokenizer(vocab_size=400, corpus=text)
    model = tiny_llama(len(tok), seed=0, hidden=96, max_positions=512).train()
    ids = torch.tensor(tok.encode(text))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    t0, step = time.time(), 0
    while time.time() - t0 < seconds and step < 300:
        starts = torch.randint(0, len(ids) - 65, (8,))
        batch = torch.stack([ids[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    model.eval().config._name_or_path = f"small Llama trained here ({step} steps, loss {loss.item():.2f})"
    return model, tok


def _yes_no_judge(model, tok):
    """judge_fn(question, answer) for the Oh et al. variant: ' Yes' vs ' No' by log-likelihood."""
    from fmkit.paradox.protocol import _chat_prompt
    from fmkit.paradox.scoring import score_choices

    def judge(question, answer):
        ctx = _chat_prompt(tok, f"Question: {question}\nProposed answer: {answer}\nIs the proposed answer correct? "
                                "Reply Yes or No.", True)
        s = score_choices(model, tok, [ctx], [["Yes", "No"]], unconditional=False, target_delimiter="")
        return s.predictions("sum")[0] == 0
    judge.model_id = getattr(model.config, "_name_or_path", "model")
    return judge


def _plot(reports, inter, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for r, c in zip(reports, ("#1f77b4", "#ff7f0e")):
        ax.scatter([r.G], [r.D], color=c, marker="o", s=60, label=f"model: {r.dataset}")
        ax.scatter([r.G_h], [r.D_h], color=c, marker="^", s=60, label=f"human (author): {r.dataset}")
        ax.annotate("", (r.G, r.D), (r.G_h, r.D_h), arrowprops={"arrowstyle": "->", "color": c, "alpha": 0.5})
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("generation G (reference-metric judge)")
    ax.set_ylabel("discrimination D (acc_norm)")
    ax.set_title("G against D per dataset", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    names = [f"{r.dataset}\nselective" for r in reports] + ["stories\ninterrogative"]
    model_vals = [r.D for r in reports] + [inter.accuracy]
    human_vals = [r.D_h for r in reports] + [float("nan")]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], human_vals, 0.4, label="human (author key)", color="#999999")
    ax.bar([i + 0.2 for i in x], model_vals, 0.4, label="model", color="#1f77b4")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("understanding accuracy")
    ax.set_title("human-model gap (no human data for the stories)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out_dir: str) -> None:
    from fmkit.paradox import data
    from fmkit.paradox.models import SMOLLM2_INSTALL, load_smollm2, smollm2_dir
    from fmkit.paradox.protocol import (HFGenerator, HumanBaseline, LetterChooser, LMPairwiseJudge, LoglikAnswerer,
                                        LoglikChooser, ReferenceMetricJudge, evaluation_paradox, interrogative_eval,
                                        paired_agreement, selective_eval)

    t_start = time.time()
    if smollm2_dir() is not None:
        print("loading SmolLM2-135M-Instruct (de-quantising the GGUF, tens of seconds) ...", flush=True)
        model, tok = load_smollm2()
        real = True
    else:
        print(f"SmolLM2-135M-Instruct is not installed ({SMOLLM2_INSTALL}); training a small local Llama on the "
              "items instead: its numbers only exercise the pipeline.", flush=True)
        model, tok = _train_small_lm()
        real = False
    name = model.config._name_or_path
    gen = HFGenerator(model, tok, max_new_tokens=20, progress=True)
    chooser = LoglikChooser(model, tok, normalization="char")
    letter = LetterChooser(HFGenerator(model, tok, max_new_tokens=4))
    ref_judge = ReferenceMetricJudge(threshold=0.5)
    lm_judge = LMPairwiseJudge(model, tok)
    answerer = LoglikAnswerer(model, tok)
    reports, rows, matrices = [], [], []
    for ds, make in data.DATASETS.items():
        items = make()
        human = HumanBaseline(discrimination=1.0, source=data.PROVENANCE["human_discrimination"])
        rep = selective_eval(items, gen, ref_judge, chooser, human=human, dataset=ds, same_model=True,
                             provenance=json.dumps(data.PROVENANCE))
        outputs = [p["output"] for p in rep.per_item]
        rep_lm = selective_eval(items, None, lm_judge, letter, dataset=ds, same_model=True, outputs=outputs)
        # Third way on the SAME items: questions about the item's own generated output, answered by the
        # same model with that output in context (spec 3.2.3 interrogative pipeline).
        by_input = {it.input: it for it in items}
        self_q = interrogative_eval([it.input for it in items], None,
                                    lambda prompt, content: data.output_questions(by_input[prompt], content),
                                    answerer, validity_filter=data.output_question_valid, domains=[ds] * len(items),
                                    same_model=True, contents=outputs)
        interr_acc = [p["accuracy"] for p in self_q.per_prompt]
        names, agree = paired_agreement(rep, interrogative_accuracy=interr_acc)
        interr_ok = [float(a >= 0.5) if a == a else None for a in interr_acc]
        triples = [(p["gen_success"], p["disc_correct"], x) for p, x in zip(rep.per_item, interr_ok)]
        asked = [t for t in triples if t[2] is not None]
        matrices.append({"dataset": ds, "names": names, "matrix": agree.tolist(), "n_items": len(items),
                         "n_interrogated": len(asked), "n_questions": self_q.n_questions,
                         "n_filtered": self_q.n_filtered, "interrogation_accuracy": self_q.accuracy,
                         "all_three_agree": float(sum(len(set(t)) == 1 for t in asked) / len(asked)) if asked
                         else None,
                         "per_item": [{"id": p["id"], "generation": g, "discrimination": d, "interrogation": x,
                                       "interrogation_accuracy": a}
                                      for p, (g, d, x), a in zip(rep.per_item, triples, interr_acc)]})
        reports.append(rep)
        rows.append({"dataset": ds, "n": rep.n_items, "G (ref-metric judge)": rep.G,
                     "win/tie/loss, model as pairwise judge": f"{rep_lm.win_rate:.2f}/{rep_lm.tie_rate:.2f}/{rep_lm.loss_rate:.2f}",
                     "G_h (author, same judge)": rep.G_h, "D (acc_norm)": rep.D, "D (letter, generated)": rep_lm.D,
                     "D_h (author key)": rep.D_h, "D easy": rep.D_by_difficulty.get("easy"),
                     "D hard": rep.D_by_difficulty.get("hard"), "paradox holds": rep.paradox_holds,
                     "gen/disc agreement": float(agree[0, 1])})
        with open(os.path.join(out_dir, f"selective_{ds}.json"), "w") as f:
            json.dump({"ref_metric_judge": rep.to_dict(), "lm_judge_letter_choice": rep_lm.to_dict(),
                       "self_interrogation_on_own_outputs": self_q.to_dict(), "agreement": matrices[-1]}, f,
                      indent=1, default=str)

    prompts = [p for p, _ in data.STORY_PROMPTS]
    slots = {p: s for p, s in data.STORY_PROMPTS}
    story_gen = HFGenerator(model, tok, max_new_tokens=48, progress=True)
    inter = interrogative_eval(prompts, story_gen, lambda p, c: data.story_questions(slots[p]),
                               answerer, validity_filter=data.story_question_valid, same_model=True)
    qa = data.qa_items()
    oh = evaluation_paradox([it.input for it in qa], data.qa_references(), HFGenerator(model, tok, max_new_tokens=16),
                            _yes_no_judge(model, tok))
    with open(os.path.join(out_dir, "interrogative.json"), "w") as f:
        json.dump(inter.to_dict(), f, indent=1, default=str)
    with open(os.path.join(out_dir, "oh_et_al.json"), "w") as f:
        json.dump(oh.to_dict(), f, indent=1, default=str)

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cols = list(rows[0])
    lines = [f"Model: {name}. Judge for G: the reference as a whole-word span of the output, else token F1 >= 0.5 "
             "(tie or loss only); second column: the same model as pairwise judge, both orders, disagreement = "
             "tie. Human numbers: the item author's (one person), not a crowd study.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "Per-item agreement, three ways on the same items: generation (ref-metric judge), discrimination "
              "(acc_norm) and self-interrogation about the item's own output (questions made by rule from the "
              "output, answered by the same model with the output in context; an item counts as understood when "
              ">= half its questions are right; items with no valid question are left out of that column).", "",
              "| dataset | items asked / all | questions (filtered) | self-interrogation acc | gen=disc | "
              "gen=interr | disc=interr | all three agree |", "|---|---|---|---|---|---|---|---|"]
    for m in matrices:
        a = m["matrix"]
        lines.append(f"| {m['dataset']} | {m['n_interrogated']} / {m['n_items']} | {m['n_questions']} "
                     f"({m['n_filtered']}) | {fmt(m['interrogation_accuracy'])} | {fmt(a[0][1])} | {fmt(a[0][2])} | "
                     f"{fmt(a[1][2])} | {fmt(m['all_three_agree'])} |")
    lines += ["", "| interrogative (own stories) | value |", "|---|---|",
              f"| questions kept / filtered as unsupported by the story | {inter.n_questions} / {inter.n_filtered} |",
              f"| answer accuracy on its own stories | {fmt(inter.accuracy)} |",
              "| human accuracy | not measured (no human data) |",
              "", "| Oh et al. variant (QA, model judges its own answers) | value |", "|---|---|",
              f"| generation accuracy (exact match) | {fmt(oh.generation_accuracy)} |",
              f"| evaluation accuracy (Yes/No verdict right) | {fmt(oh.evaluation_accuracy)} |",
              f"| unfaithful judgments (right verdict, own answer wrong) | {oh.n_unfaithful} |",
              "", f"Total time {time.time() - t_start:.0f} s."]
    table = "\n".join(lines)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    _plot(reports, inter, os.path.join(out_dir, "paradox_g_vs_d.png"))
    print(table)
