"""FActScore benchmark: batched single-pass verification and BM25 retrieval against the anchors'
ways of doing them, on a generated knowledge source of synthetic biographies (invented people),
stored in a local SQLite file: 200 topics x 50 passages = 10,000 passages in the full size.

- verify: fmkit's LogitVerifier (one forward pass per fact, padded batches, prompts grouped by
  longest common token prefix so each topic's context is encoded once) against the per-fact
  `generate` path OpenFActScore runs with an HF model (first generated token's logits, at its
  cheapest: 1 new token). Same model, same prompts: both use per-topic passages
  (`BM25Retriever(k=5, passages="per_topic")`), so every fact of a topic has the same context.
  - quick: a tiny random Llama, 12 facts of 3 topics; all contenders run the same facts, and the
    table's ratio is the comparison. 'exact' = decision agreement >= 99% with the per-fact path.
  - full: SmolLM2-135M-Instruct when installed (else the tiny Llama), 1,000 facts = 40 topics x 25
    facts (a generation's worth each; the paper reports about 26-41 facts per response). fmkit
    verifies all 1,000; the per-fact path, at several seconds per fact on a CPU, is timed on a
    random 100 of them (its rate is per fact: one prompt per `generate` call). The two are in
    separate table rows, so the table has no ratio for them; the summary printed after the
    cases gives facts/s, the ratio, the decision agreement on the 100 shared facts, and the
    spread: the per-fact path's s/fact p10/p50/p90, fmkit's s/fact per prefix group p10/p50/p90
    and the ratio of the two medians (robust to a load spike in one path's timing), each path's
    CPU seconds (user+sys) per fact and the 1-minute load average around each timed call. Then
    both paths run once more, interleaved topic by topic (`paired`), so that a change of load on
    this shared machine hits both alike; that pooled ratio is the summary's last line. In the
    full size the framework's warm-up call runs a small part of the work (the first topic, or the
    first 2 facts), the timed call(s) the whole of it.
- bm25: index + top-5 for a batch of queries over one corpus of all passages, fmkit's sparse BM25
  against rank_bm25.BM25Okapi (get_scores per query, as upstream); 'exact' = same top-5 scores.
"""
from __future__ import annotations

import importlib.util
import json
import os
import random
import resource
import statistics
import tempfile
import time

import numpy as np
import torch

from fmkit.bench import unavailable

N_TOPICS, PASSAGES_PER_TOPIC, WORDS_PER_PASSAGE = 200, 50, 60
# quick: every case within seconds on 2 CPU cores; full: the target sizes
SIZES = {True: {"topics": 40, "fact_topics": 3, "facts_per_topic": 4, "k": 3, "anchor_sample": None,
                "bm25_queries": 50, "repeats": 3},
         False: {"topics": N_TOPICS, "fact_topics": 40, "facts_per_topic": 25, "k": 5, "anchor_sample": 100,
                 "bm25_queries": 1000, "repeats": 2}}

FIRST = ["Arlo", "Brenna", "Cato", "Dagny", "Elio", "Fenna", "Goran", "Hale", "Ines", "Joram", "Kaia", "Lev",
         "Mira", "Nils", "Oona", "Pavel", "Quinn", "Rhea", "Soren", "Tova"]
LAST = ["Venn", "Marlow", "Ostrander", "Quill", "Halvard", "Brisk", "Corwen", "Delacey", "Ember", "Fallon"]
CITIES = ["Port Quill", "Tarnby", "Velmora", "Oskeld", "Brightwater", "Caldra", "Nareth", "Sollen", "Ivory Bay",
          "Kestrel Falls", "Morrow", "Eastwick"]
JOBS = ["painter", "chemist", "pilot", "novelist", "architect", "cellist", "botanist", "judge", "engineer",
        "journalist", "surgeon", "teacher"]
PLACES = ["the Caldra Institute", "the Northern Conservatory", "Velmora University", "the Harbor Museum",
          "the Royal Survey Office", "the Tarnby Observatory", "the Eastwick Hospital", "the Quill Press"]
THINGS = ["a study of river birds", "a bridge over the Sollen", "three symphonies", "a history of the coast",
          "a new kind of glass", "a map of the northern islands", "a novel about sailors", "a school for girls"]


def person_name(t: int) -> str:
    return f"{FIRST[t % len(FIRST)]} {LAST[(t // len(FIRST)) % len(LAST)]}{'' if t < 200 else t}"


def _sentences(name: str, rng: random.Random):
    """Endless stream of short biographical sentences about `name` (invented facts)."""
    first = name.split()[0]
    while True:
        y = 1850 + rng.randrange(150)
        yield rng.choice([
            f"In {y} {name} moved to {rng.choice(CITIES)} and worked as a {rng.choice(JOBS)}.",
            f"{name} studied at {rng.choice(PLACES)} from {y} to {y + 1 + rng.randrange(6)}.",
            f"{first} completed {rng.choice(THINGS)} in {y}.",
            f"In {y} {first} married a {rng.choice(JOBS)} from {rng.choice(CITIES)}.",
            f"{name} received the {rng.choice(CITIES)} Prize in {y} for {rng.choice(THINGS)}.",
            f"{first} taught at {rng.choice(PLACES)} for {2 + rng.randrange(20)} years.",
        ])


def synthetic_source(seed: int = 0, n_topics: int = N_TOPICS):
    """One article per invented person: exactly PASSAGES_PER_TOPIC * WORDS_PER_PASSAGE words of
    short bio sentences (chunked at WORDS_PER_PASSAGE words, so PASSAGES_PER_TOPIC passages)."""
    rng = random.Random(seed)
    records = []
    for t in range(n_topics):
        name = person_name(t)
        words, stream = [], _sentences(name, rng)
        while len(words) < PASSAGES_PER_TOPIC * WORDS_PER_PASSAGE:
            words += next(stream).split()
        records.append({"title": name, "text": " ".join(words[:PASSAGES_PER_TOPIC * WORDS_PER_PASSAGE])})
    return records


def _facts(records, n_topics: int, per_topic: int, seed: int = 1):
    """(topic, fact) pairs: n_topics random articles, per_topic facts each; even-numbered facts
    are whole sentences of the article (true), odd ones the same with a city, job or year changed."""
    rng = random.Random(seed)
    out = []
    for rec in rng.sample(records, n_topics):
        sentences = [s.strip() + "." for s in rec["text"].split(".")[1:-1] if len(s.split()) > 3]
        for i in range(per_topic):
            s = rng.choice(sentences)
            if i % 2:
                for pool in (CITIES, JOBS):
                    hit = [w for w in pool if w in s]
                    if hit:
                        s = s.replace(hit[0], rng.choice([w for w in pool if w != hit[0]]))
                        break
                else:
                    s = s.replace("1", "2", 1)
            out.append((rec["title"], s))
    return out


def _models(quick):
    from fmkit.factscore import load_causal_lm, smollm2_path
    from fmkit.factscore._tiny import tiny_llama, word_tokenizer

    if not quick and smollm2_path():
        model, tok = load_causal_lm(smollm2_path())
        return model, tok, "SmolLM2-135M-Instruct (fp32)"
    records = synthetic_source(n_topics=20)
    tok = word_tokenizer([r["text"] for r in records] + [r["title"] for r in records] + CITIES + JOBS + PLACES +
                         THINGS + ["Answer the question about based on the given context . Title : Text : Input : "
                                   "True or False ? Output :"] + [f"{y}" for y in range(1800, 2100)])
    return tiny_llama(len(tok), hidden=128, layers=2), tok, "tiny random Llama d=128"


class _Run:
    """A contender callable that records its results and the wall time of each call. With
    `warmup` (a smaller workload), the first call (the framework's warm-up) runs that instead."""

    def __init__(self, fn, work, warmup=None):
        self.fn, self.work, self.warmup = fn, work, warmup
        self.calls, self.times, self.result = 0, [], None
        self.cpu, self.faults, self.load = [], [], []  # per timed call: CPU s, minor faults, loadavg(1 min)

    def __call__(self):
        self.calls += 1
        if self.calls == 1 and self.warmup is not None:
            return self.fn(self.warmup)
        r0, l0, t0 = resource.getrusage(resource.RUSAGE_SELF), os.getloadavg()[0], time.perf_counter()
        self.result = self.fn(self.work)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        if self.calls > 1:  # the first call is the framework's warm-up
            self.times.append(t1 - t0)
            self.cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
            self.faults.append(r1.ru_minflt - r0.ru_minflt)
            self.load.append((l0, os.getloadavg()[0]))
        return self.result


SUMMARY: dict = {}


def _verify_case(quick):
    from fmkit.factscore import BM25Retriever, KnowledgeSource, LogitVerifier

    size = SIZES[quick]
    records = synthetic_source(n_topics=size["topics"])
    tmp = tempfile.TemporaryDirectory(prefix="fmkit_bench_factscore_")
    db = os.path.join(tmp.name, "knowledge.db")
    KnowledgeSource.from_records(records, db_path=db, max_tokens=WORDS_PER_PASSAGE).close()
    ks = KnowledgeSource(db)  # read back from the SQLite file, as a user would
    n_passages = sum(len(ks.get_passages(t)) for t in ks.titles())
    facts = _facts(records, size["fact_topics"], size["facts_per_topic"])
    retriever = BM25Retriever(k=size["k"], passages="per_topic")
    items = []
    for topic in dict.fromkeys(t for t, _ in facts):
        mine = [f for t, f in facts if t == topic]
        items += [(topic, f, ps) for f, ps in zip(mine, retriever.retrieve(topic, mine, ks.get_passages(topic)))]
    model, tok, name = _models(quick)
    shared = LogitVerifier(model, tok, batch_size=32, share_prefix=True, chat=False)
    plain = LogitVerifier(model, tok, batch_size=32, share_prefix=False, chat=False)
    seqs = [plain.encode(*it) for it in items]
    n_tokens = sum(len(s) for s in seqs)
    n_params = sum(p.numel() for p in model.parameters())
    sample = list(range(len(items)))
    if size["anchor_sample"] and size["anchor_sample"] < len(items):
        sample = sorted(random.Random(3).sample(sample, size["anchor_sample"]))
    first_topic = [i for i, it in enumerate(items) if it[0] == items[0][0]]
    full = not quick

    def per_fact(idx):
        out = []
        for i in idx:
            t0 = time.perf_counter()
            out.append(plain.verify_generate([items[i]], 1)[0])
            per_fact.seconds.append(time.perf_counter() - t0)
        return np.array(out)
    per_fact.seconds = []

    def fmkit(verifier):
        def fn(idx):
            return np.array(verifier.margins_of_ids([seqs[i] for i in idx]))
        return fn

    # fmkit's spread: the wall time of each prefix group (its prefix, then its packed suffixes)
    group_times: list[tuple[int, float]] = []
    packed = shared._packed_suffixes

    def timed_group(prefix, suffixes):
        t0 = time.perf_counter()
        out = packed(prefix, suffixes)
        group_times.append((len(suffixes), time.perf_counter() - t0))
        return out
    shared._packed_suffixes = timed_group

    anchor = _Run(per_fact, sample, sample[:2] if full else None)
    ours = _Run(fmkit(shared), list(range(len(items))), first_topic if full else None)
    exact: dict = {}

    def check(name, run):
        def fn():
            got = run()
            if run.calls > 1 or not full:  # the timed call(s): compare on the anchor's facts
                ref = anchor.result
                exact[name] = bool(((got[sample] > 0) == (ref > 0)).mean() >= 0.99)
            return got
        return fn

    SUMMARY.clear()
    SUMMARY.update(quick=quick, model=name, items=len(items), topics=len({t for t, _ in facts}),
                   passages=n_passages, anchor=anchor, ours=ours, shared=shared, sample=sample,
                   prompt_tokens=n_tokens, tmp=tmp, per_fact=per_fact, group_times=group_times,
                   item_list=items, seqs=seqs, plain_verifier=plain,
                   load_start=os.getloadavg())
    sub = f"{len(sample)} of the {len(items)} facts (random)" if len(sample) < len(items) else f"{len(items)} facts"
    base = (f"{n_passages} passages in SQLite, k={size['k']} per-topic passages, "
            f"{SUMMARY['topics']} topics, {name}")
    anchor_row = ("per-fact generate, 1 token (OpenFActScore's path)", anchor, True)
    ours_row = ("fmkit batched, shared prefix", check("fmkit batched, shared prefix", ours), False)
    if quick:
        plain_run = _Run(fmkit(plain), list(range(len(items))))
        SUMMARY["plain"] = plain_run
        contenders = [anchor_row, ours_row, ("fmkit batched, no sharing", check("fmkit batched, no sharing",
                                                                                 plain_run), False)]
        return [{"shape": f"{sub}, {base}", "flops": 2.0 * n_params * n_tokens, "contenders": contenders,
                 "exact": exact, "repeats": size["repeats"]}]
    sample_tokens = sum(len(seqs[i]) for i in sample)
    # fmkit's GFLOP/s counts the tokens it runs (each group's prefix once, then the suffixes), so
    # the '% torch.mm' column stays a hardware rate, not the unshared work's equivalent.
    groups, singles = shared.group(seqs)
    run_tokens = sum(L + sum(len(seqs[i]) - L for i in members) for L, members in groups)
    run_tokens += sum(len(seqs[i]) for i in singles)
    return [{"shape": f"{sub}, {base}", "flops": 2.0 * n_params * sample_tokens, "contenders": [anchor_row],
             "exact": exact, "repeats": 1},
            {"shape": f"all {len(items)} facts, {base}", "flops": 2.0 * n_params * run_tokens,
             "contenders": [ours_row], "exact": exact, "repeats": size["repeats"]}]


def summary() -> dict | None:
    """facts/s of the per-fact path and of fmkit, their ratio, the decision agreement on the
    facts both ran, the spread, and the prompt tokens each path runs; None before a run."""
    s = SUMMARY
    if not s or not s["anchor"].times or not s["ours"].times:
        return None
    anchor, ours, sample = s["anchor"], s["ours"], s["sample"]
    a_rate = [len(sample) / t for t in anchor.times]
    o_rate = [s["items"] / t for t in ours.times]
    ref, got = anchor.result, ours.result[sample]
    per = sorted(s["per_fact"].seconds[-len(sample):])
    groups = s["shared"].last_groups
    # s/fact of each prefix group of fmkit's timed calls (the warm-up's groups dropped)
    timed = s["group_times"][-len(groups) * len(ours.times):] if groups else []
    group_s = sorted(t / n for n, t in timed)

    def pct(xs):
        return [xs[len(xs) // 10], xs[len(xs) // 2], xs[(9 * len(xs)) // 10]] if xs else []

    a_cpu = statistics.median(c / len(sample) for c in anchor.cpu)
    o_cpu = statistics.median(c / s["items"] for c in ours.cpu)
    return {
        "model": s["model"], "facts": s["items"], "topics": s["topics"], "passages": s["passages"],
        "anchor_facts": len(sample),
        "anchor_facts_per_s": statistics.median(a_rate), "fmkit_facts_per_s": statistics.median(o_rate),
        "fmkit_facts_per_s_runs": o_rate, "anchor_facts_per_s_runs": a_rate,
        "ratio": statistics.median(o_rate) / statistics.median(a_rate),
        "agreement": float(((got > 0) == (ref > 0)).mean()),
        "max_abs_margin_diff": float(np.abs(got - ref).max()),
        "anchor_s_per_fact_p10_p50_p90": pct(per),
        "fmkit_group_s_per_fact_p10_p50_p90": pct(group_s),
        "ratio_of_p50": pct(per)[1] / pct(group_s)[1] if group_s else None,
        "anchor_cpu_s_per_fact": a_cpu, "fmkit_cpu_s_per_fact": o_cpu, "ratio_cpu": a_cpu / o_cpu,
        "anchor_minor_faults": anchor.faults, "fmkit_minor_faults": ours.faults,
        "loadavg_1min_anchor_calls": anchor.load, "loadavg_1min_fmkit_calls": ours.load,
        "loadavg_case_start": list(s["load_start"]), "loadavg_summary": list(os.getloadavg()),
        "threads": torch.get_num_threads(),
        "prompt_tokens_unshared": s["prompt_tokens"],
        "prompt_tokens_fmkit": s["shared"].last_forward_tokens,
        "groups": len(groups), "mean_shared_prefix": float(np.mean([g[0] for g in groups])) if groups else 0.0,
    }


def paired() -> dict | None:
    """Both paths again, interleaved topic by topic, so that both see the same load: for each topic
    with facts in the per-fact sample, fmkit verifies all of the topic's facts (one call) and the
    per-fact path its sampled facts, in alternating order (fmkit first on even topics). The ratio
    is pooled over topics (fmkit facts/s over per-fact facts/s, each from summed times), with the
    p10/p50/p90 of the per-topic ratios. Runs after the framework's timings; None before a run."""
    s = SUMMARY
    if not s or not s["anchor"].times or not s["ours"].times:
        return None
    items, seqs, shared, plain = s["item_list"], s["seqs"], s["shared"], s["plain_verifier"]
    in_sample = set(s["sample"])
    wrapped = shared.__dict__.pop("_packed_suffixes", None)  # untimed per group here
    last = shared.last_groups, shared.last_forward_tokens  # kept for `summary` of the framework's runs
    rows, agree = [], []
    try:
        for j, topic in enumerate(dict.fromkeys(it[0] for it in items)):
            idx = [i for i, it in enumerate(items) if it[0] == topic]
            a_idx = [i for i in idx if i in in_sample]
            if not a_idx:
                continue
            timing = {}
            for path in (("fmkit", "anchor") if j % 2 == 0 else ("anchor", "fmkit")):
                t0 = time.perf_counter()
                if path == "fmkit":
                    ours = dict(zip(idx, shared.margins_of_ids([seqs[i] for i in idx])))
                else:
                    theirs = [plain.verify_generate([items[i]], 1)[0] for i in a_idx]
                timing[path] = time.perf_counter() - t0
            agree += [(ours[i] > 0) == (m > 0) for i, m in zip(a_idx, theirs)]
            rows.append((len(idx), timing["fmkit"], len(a_idx), timing["anchor"]))
    finally:
        if wrapped is not None:
            shared._packed_suffixes = wrapped
        shared.last_groups, shared.last_forward_tokens = last
    per_topic = sorted((n / tf) / (m / ta) for n, tf, m, ta in rows)
    pooled = (sum(r[0] for r in rows) / sum(r[1] for r in rows)) / (sum(r[2] for r in rows) / sum(r[3] for r in rows))
    return {"topics": len(rows), "fmkit_facts": sum(r[0] for r in rows), "anchor_facts": sum(r[2] for r in rows),
            "fmkit_s": sum(r[1] for r in rows), "anchor_s": sum(r[3] for r in rows), "ratio": pooled,
            "per_topic_ratio_p10_p50_p90": [per_topic[len(per_topic) // 10], per_topic[len(per_topic) // 2],
                                            per_topic[(9 * len(per_topic)) // 10]],
            "agreement": sum(agree) / len(agree), "loadavg_end": list(os.getloadavg())}


def _print_summary():
    r = summary()
    if r is None:
        return
    t0 = time.perf_counter()
    r["paired"] = p = paired()
    r["paired_wall_s"] = time.perf_counter() - t0
    print(f"\nfactscore verify summary ({r['model']}, {r['facts']} facts of {r['topics']} topics, {r['passages']} "
          f"passages):\n  per-fact generate: {r['anchor_facts_per_s']:.3f} facts/s (timed on {r['anchor_facts']} "
          f"facts; s/fact p10/p50/p90 {', '.join(f'{x:.2f}' for x in r['anchor_s_per_fact_p10_p50_p90'])})\n"
          f"  fmkit shared prefix: {r['fmkit_facts_per_s']:.3f} facts/s (all {r['facts']} facts; runs "
          f"{', '.join(f'{x:.3f}' for x in r['fmkit_facts_per_s_runs'])})\n"
          f"  ratio {r['ratio']:.2f}x; decision agreement {100 * r['agreement']:.1f}% on the {r['anchor_facts']} "
          f"facts both ran (max |margin diff| {r['max_abs_margin_diff']:.2e})\n"
          f"  prompt tokens run: {r['prompt_tokens_unshared']} unshared, {r['prompt_tokens_fmkit']} by fmkit "
          f"({r['groups']} prefix groups, mean shared prefix {r['mean_shared_prefix']:.0f} tokens)", flush=True)
    if r["ratio_of_p50"] is not None:
        print(f"  spread: fmkit s/fact per prefix group p10/p50/p90 "
              f"{', '.join(f'{x:.3f}' for x in r['fmkit_group_s_per_fact_p10_p50_p90'])}; ratio of the medians "
              f"(per-fact p50 / fmkit group p50) {r['ratio_of_p50']:.2f}x", flush=True)
    print(f"  CPU s/fact (user+sys, {r['threads']} threads): per-fact {r['anchor_cpu_s_per_fact']:.3f}, fmkit "
          f"{r['fmkit_cpu_s_per_fact']:.4f}, ratio {r['ratio_cpu']:.2f}x; load average (1 min) at the timed calls: "
          f"per-fact {', '.join(f'{a:.2f}->{b:.2f}' for a, b in r['loadavg_1min_anchor_calls'])}, fmkit "
          f"{', '.join(f'{a:.2f}->{b:.2f}' for a, b in r['loadavg_1min_fmkit_calls'])}", flush=True)
    print(f"  interleaved rerun ({p['topics']} topics, both paths per topic in alternating order, "
          f"{r['paired_wall_s']:.0f} s): fmkit {p['fmkit_facts']} facts in {p['fmkit_s']:.1f} s, per-fact "
          f"{p['anchor_facts']} facts in {p['anchor_s']:.1f} s; ratio {p['ratio']:.2f}x (per-topic ratio "
          f"p10/p50/p90 {', '.join(f'{x:.2f}' for x in p['per_topic_ratio_p10_p50_p90'])}); decision agreement "
          f"{100 * p['agreement']:.1f}%", flush=True)
    print("factscore verify summary JSON: " + json.dumps(r), flush=True)


def _bm25_case(quick):
    from fmkit.factscore.bm25 import BM25

    rng = random.Random(2)
    corpus = [p.split() for r in synthetic_source(n_topics=SIZES[quick]["topics"])
              for p in _chunks(r["text"])]
    words = sorted({w for d in corpus[:500] for w in d})
    queries = [rng.sample(words, 8) for _ in range(SIZES[quick]["bm25_queries"])]

    def ours():
        return BM25(corpus).top_k(queries, 5)

    contenders = [("fmkit BM25 (sparse product)", ours, False)]
    exact = {}
    if importlib.util.find_spec("rank_bm25") is None:
        contenders.append(("rank_bm25 BM25Okapi", unavailable("rank_bm25 not installed"), True))
    else:
        from rank_bm25 import BM25Okapi

        def theirs():
            index = BM25Okapi(corpus)
            return np.stack([np.argsort(index.get_scores(q))[::-1][:5] for q in queries])

        contenders.append(("rank_bm25 BM25Okapi", theirs, True))
        sample = queries[:20]
        ref = BM25Okapi(corpus)
        mine = BM25(corpus)
        exact["fmkit BM25 (sparse product)"] = all(
            np.allclose(np.sort(ref.get_scores(q))[::-1][:5], mine.scores(q)[row])
            for q, row in zip(sample, mine.top_k(sample, 5)))
    return {
        "shape": f"index + top-5, {len(corpus)} passages, {len(queries)} queries",
        "flops": 0.0,
        "contenders": contenders,
        "exact": exact,
        "repeats": 1,
    }


def _chunks(text: str) -> list[str]:
    from fmkit.factscore.knowledge import chunk_sections

    return chunk_sections([text], None, WORDS_PER_PASSAGE)


class _Cases:
    def __init__(self, builders, n_cases):
        self._builders, self._n = builders, n_cases

    def __len__(self):
        return self._n

    def __iter__(self):
        for b in self._builders:
            out = b()
            for case in (out if isinstance(out, list) else [out]):
                yield case
        _print_summary()  # runs once the framework has timed the last case


def cases(device: torch.device, quick: bool):
    if importlib.util.find_spec("transformers") is None:
        return _Cases([lambda: _bm25_case(quick)], 1)
    return _Cases([lambda: _verify_case(quick), lambda: _bm25_case(quick)], 2 if quick else 3)
