"""`fmkit flamingo train | eval` (loaded by file from fmkit.cli; torch is imported inside run)."""
from __future__ import annotations

import argparse
import os

from fmkit.cli import UsageError, _check_output, _device, _input_dir, _positive_int, _require

TASKS = ("coco", "flickr", "vqav2", "okvqa", "textvqa", "vizwiz", "hatefulmemes", "imagenet")


def _shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,4,8, got {text!r}") from None
    if not shots or any(s < 0 for s in shots):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return shots


def _existing(path: str) -> str:
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"no such file or folder: {path!r}")
    return path


def add_parser(sub) -> None:
    fl = sub.add_parser("flamingo", help="OpenFlamingo: train on interleaved + pair data, few-shot evaluation",
                        description="OpenFlamingo's training recipe and few-shot evaluation on local data.")
    steps = fl.add_subparsers(dest="flamingo_command", required=True, metavar="STEP")
    tr = steps.add_parser("train", help="train the perceiver and cross-attention blocks",
                          description="Trains a Flamingo (a local Hugging Face LM + an fmkit.clip tower) on MMC4-style "
                                      "JSONL documents and/or LAION-style WebDataset shards.")
    tr.add_argument("--lm", required=True, type=_input_dir, metavar="DIR",
                    help="a local Hugging Face causal LM folder (model + tokenizer; nothing is downloaded)")
    tr.add_argument("--vision", required=True, type=_input_dir, metavar="DIR",
                    help="a `fmkit datacomp train` output folder (its CLIP image tower)")
    tr.add_argument("--mmc4", type=_existing, default=None, metavar="PATH", help="MMC4-style .jsonl file or folder")
    tr.add_argument("--laion", type=_existing, default=None, metavar="PATH", help="WebDataset .tar shard or folder")
    tr.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder (must be empty or absent)")
    tr.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tr.add_argument("--steps", type=_positive_int, required=True, help="optimizer steps")
    tr.add_argument("--batch-size-mmc4", type=_positive_int, default=128, help="interleaved documents per step")
    tr.add_argument("--batch-size-laion", type=_positive_int, default=128, help="pairs per step")
    tr.add_argument("--loss-multiplier-laion", type=float, default=1.0, help="weight of the pair loss")
    tr.add_argument("--loss-multiplier-mmc4", type=float, default=1.0, help="weight of the interleaved loss")
    tr.add_argument("--lr", type=float, default=1e-4, help="learning rate (constant after warm-up)")
    tr.add_argument("--warmup", type=int, default=5000, help="linear warm-up steps")
    tr.add_argument("--accum-steps", type=_positive_int, default=1, help="gradient accumulation steps")
    tr.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="fp32, bf16 autocast, or fp16 autocast with a GradScaler")
    tr.add_argument("--sim-threshold", type=float, default=0.24, help="MMC4 image-sentence similarity threshold")
    tr.add_argument("--cross-attn-every-n-layers", type=_positive_int, default=1, help="block placement n")
    tr.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    tr.add_argument("--strategy", choices=["auto", "none", "ddp", "fsdp2"], default="auto",
                    help="data parallelism under torchrun: ddp, or fsdp2 (fully_shard: parameters, gradients and "
                         "optimizer state sharded over the ranks); auto: ddp with more than one process, else none")
    tr.add_argument("--fsdp", action="store_true", help="the same as --strategy fsdp2")
    tr.add_argument("--seed", type=int, default=0, help="data order and sampling seed")
    tr.add_argument("--device", type=_device, default=None, help="cpu, cuda or cuda:N")

    ev = steps.add_parser("eval", help="few-shot evaluation (random or RICES demonstrations)",
                          description="Evaluates a `fmkit flamingo train` checkpoint few-shot on a local data set.")
    ev.add_argument("--checkpoint", required=True, type=_input_dir, metavar="DIR", help="a `fmkit flamingo train` "
                    "output folder")
    ev.add_argument("--task", required=True, choices=TASKS, help="the benchmark (its prompt, metric and layout)")
    ev.add_argument("--data", required=True, type=_input_dir, metavar="DIR",
                    help="the task's folder: coco/flickr karpathy.json + images; VQA {train,test}_questions.json, "
                         "{train,test}_annotations.json, images/; hatefulmemes train.jsonl, test.jsonl; "
                         "imagenet train/<class>/, val/<class>/")
    ev.add_argument("--shots", type=_shots, default=[0, 4, 8, 16, 32], help="comma-separated shot counts")
    ev.add_argument("--rices", action="store_true", help="RICES demonstrations (default: random, seeded)")
    ev.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N queries")
    ev.add_argument("--batch-size", type=_positive_int, default=8, help="queries per generation batch")
    ev.add_argument("--num-beams", type=_positive_int, default=3, help="beam search width")
    ev.add_argument("--seed", type=int, default=0, help="random demonstrations' seed")
    ev.add_argument("--out", default=None, metavar="RESULTS.json", help="also write the results as JSON")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args) -> int:
    _require("transformers", "PIL")
    return {"train": _train, "eval": _eval}[args.flamingo_command](args)


def _train(args) -> int:
    if args.mmc4 is None and args.laion is None:
        raise UsageError("give --mmc4 and/or --laion")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite: give one of them")
    if args.fsdp:
        if args.strategy not in ("auto", "fsdp2"):
            raise UsageError(f"--fsdp and --strategy {args.strategy}: give one of them")
        args.strategy = "fsdp2"
    if args.mmc4 is not None:
        _require("scipy")  # the Hungarian assignment
    from fmkit._output import replace_dir
    from fmkit.flamingo.train import CHECKPOINT_NAME

    if args.resume:
        if not os.path.exists(os.path.join(args.out, CHECKPOINT_NAME)):
            raise UsageError(f"--resume: no {CHECKPOINT_NAME} in --out {args.out!r} to resume from")
    else:
        _check_output(args.out, args.overwrite, "--out")
    import torch
    import torch.distributed as dist

    from fmkit.flamingo.data import InterleavedStream, PairStream, image_transform
    from fmkit.flamingo.train import build_flamingo, train_flamingo, write_meta

    launched = "WORLD_SIZE" in os.environ  # torchrun (or another launcher that sets the env:// variables)
    strategy = args.strategy
    if strategy == "auto":
        strategy = "ddp" if launched and int(os.environ["WORLD_SIZE"]) > 1 else "none"
    if strategy != "none" and not launched:
        raise UsageError(f"--strategy {strategy}: run under torchrun (WORLD_SIZE is not set), e.g. "
                         f"torchrun --nproc_per_node 2 $(which fmkit) flamingo train ...")
    if strategy == "none" and launched and int(os.environ["WORLD_SIZE"]) > 1:
        raise UsageError("--strategy none under torchrun with more than one process: every rank would train "
                         "its own copy; give --strategy ddp or fsdp2")
    distributed = strategy != "none"
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(args.seed)
    model, tokenizer, image_size = build_flamingo(args.lm, args.vision,
                                                  cross_attn_every_n_layers=args.cross_attn_every_n_layers)
    proc = image_transform(image_size)
    common = dict(seed=args.seed, rank=rank, world_size=world)
    mmc4 = InterleavedStream(args.mmc4, tokenizer, proc, args.batch_size_mmc4, sim_threshold=args.sim_threshold,
                             **common) if args.mmc4 else None
    laion = PairStream(args.laion, tokenizer, proc, args.batch_size_laion, **common) if args.laion else None

    def train_into(out_dir):
        result = train_flamingo(model, mmc4=mmc4, laion=laion, steps=args.steps, lr=args.lr, warmup=args.warmup,
                                loss_multiplier_mmc4=args.loss_multiplier_mmc4,
                                loss_multiplier_laion=args.loss_multiplier_laion, accum_steps=args.accum_steps,
                                precision=args.precision, gradient_checkpointing=args.gradient_checkpointing,
                                checkpoint_dir=str(out_dir), resume=args.resume, strategy=strategy,
                                device=args.device)
        if rank == 0:
            write_meta(str(out_dir), lm=os.path.abspath(args.lm), vision=os.path.abspath(args.vision),
                       cross_attn_every_n_layers=args.cross_attn_every_n_layers, image_size=image_size)
        return result

    if args.resume or distributed:  # in place: the checkpoint there is the point (and every rank sees one folder)
        os.makedirs(args.out, exist_ok=True)
        result = train_into(args.out)
    else:
        with replace_dir(args.out, overwrite=True, what="--out") as tmp:
            result = train_into(tmp)
    if rank == 0:
        print(f"trained {result.step} steps; final loss {result.losses[-1]:.4f} "
              f"({result.samples_per_second:.1f} samples/s) -> {args.out}")
    return 0


def _eval(args) -> int:
    if args.out:
        _check_output(args.out, args.overwrite, "--out")
    import json

    from fmkit._output import replace_file
    from fmkit.flamingo.data import image_transform, load_task
    from fmkit.flamingo.evaluate import FewShotEvaluator
    from fmkit.flamingo.train import load_trained_flamingo

    try:
        data = load_task(args.task, args.data)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--data {args.data}: {exc}") from None
    model, tokenizer, image_size = load_trained_flamingo(args.checkpoint)
    ev = FewShotEvaluator(model, tokenizer, image_transform(image_size), task=args.task, demos=data["demos"],
                          queries=data["queries"], classes=data["classes"], batch_size=args.batch_size,
                          num_beams=args.num_beams, seed=args.seed, progress=True)
    scores = ev.evaluate(shots=args.shots, rices=args.rices, limit=args.limit)
    metric = {"captioning": "CIDEr", "vqa": "VQA accuracy"}.get(ev.kind, "ROC-AUC" if args.task == "hatefulmemes"
                                                                   else "accuracy")
    print(f"{args.task} ({metric}, {'RICES' if args.rices else 'random'} demonstrations)")
    for shots, value in scores.items():
        print(f"  {shots:>3}-shot  {100 * value:7.2f}")
    if args.out:
        with replace_file(args.out, overwrite=True, what="--out") as tmp, open(tmp, "w") as f:
            json.dump({"task": args.task, "metric": metric, "rices": args.rices,
                       "scores": {str(k): v for k, v in scores.items()}}, f, indent=1)
        print("wrote", args.out)
    return 0
