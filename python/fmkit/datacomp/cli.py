"""`fmkit datacomp make-pool | filter | train | evaluate`."""
from __future__ import annotations

import json
import os

import torch


def run(args) -> int:
    from fmkit.datacomp import apply_filter, make_synthetic_pool
    from fmkit.datacomp.data import WordTokenizer, batches, load_pool_samples

    cmd = args.datacomp_command
    if cmd == "make-pool":
        info = make_synthetic_pool(args.out, n=args.n, seed=args.seed)
        print(f"wrote {len(info.uids)} samples ({int(info.clean.sum())} clean) to {args.out}")
        return 0
    if cmd == "filter":
        kw = {k: v for k, v in (("fraction", args.fraction), ("threshold", args.threshold), ("arch", args.arch))
              if v is not None}
        uids = apply_filter(args.name, args.pool, args.out, **kw)
        print(f"{args.name}: kept {len(uids)} samples -> {args.out}")
        return 0
    if cmd == "train":
        from fmkit.clip import SCALES, create_model, model_config, train_clip

        model_name = args.model or SCALES[args.scale]["model"]
        image_size = args.image_size or model_config(model_name)["vision"]["image_size"]
        images, captions, _ = load_pool_samples(args.pool, args.uids, image_size)
        tokenizer = WordTokenizer(captions)
        model = create_model(model_name, vocab_size=len(tokenizer), context_length=tokenizer.context_length,
                             image_size=image_size)
        batch_size = args.batch_size or SCALES[args.scale]["batch_size"]
        result = train_clip(model, batches(images, tokenizer(captions), batch_size), scale=args.scale,
                            steps=args.steps, batch_size=batch_size, lr=args.lr, warmup=args.warmup,
                            accum_freq=args.accum_freq, precision=args.precision, device=args.device,
                            checkpoint_dir=args.out)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "fmkit_clip.json"), "w") as f:
            json.dump({"model": model_name, "image_size": images.shape[-1], "vocab": tokenizer.vocab,
                       "context_length": tokenizer.context_length, "scale": args.scale}, f)
        torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
        print(f"trained {result.step} steps on {len(captions)} samples; final loss {result.losses[-1]:.4f}")
        return 0
    if cmd == "make-eval":
        from fmkit.datacomp.eval_tasks import make_synthetic_eval_tasks

        tasks = make_synthetic_eval_tasks(args.out, n=args.n, seed=args.seed)
        print("wrote evaluation tasks; evaluate with: " + " ".join(f"--task {k}={v}" for k, v in tasks.items()))
        return 0
    if cmd == "evaluate":
        from fmkit.datacomp.eval_tasks import evaluate_tasks

        tasks = {}
        for spec in args.task:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--task: expected NAME=PATH, got {spec!r}")
            tasks[name] = path
        if args.pool:
            tasks["pool_retrieval"] = args.pool
        if not tasks:
            raise ValueError("evaluate: give at least one --task NAME=PATH (or --pool)")
        model, tokenizer, image_size = load_trained(args.checkpoint)
        result = evaluate_tasks(model, tokenizer, tasks, image_size=image_size)
        print(f"{'task':<28}{'kind':<16}{'main metric':>12}")
        for name, value in result["main_metrics"].items():
            print(f"{name:<28}{result['tasks'][name]['kind']:<16}{100 * value:>11.1f}%")
        print(f"{'DataComp average':<44}{100 * result['average']:>11.1f}%  ({result['n_tasks']} tasks)")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
            print("wrote", args.out)
        return 0
    return 1


def load_trained(checkpoint_dir):
    """(model in eval mode, its WordTokenizer, image size) of a `fmkit datacomp train` output folder."""
    from fmkit.clip import create_model
    from fmkit.datacomp.data import WordTokenizer

    meta_path = os.path.join(checkpoint_dir, "fmkit_clip.json")
    if not os.path.exists(meta_path):
        raise ValueError(f"--checkpoint {checkpoint_dir!r}: no fmkit_clip.json (not a `fmkit datacomp train` output)")
    with open(meta_path) as f:
        meta = json.load(f)
    tokenizer = WordTokenizer([], context_length=meta["context_length"])
    tokenizer.vocab, tokenizer.eot = meta["vocab"], len(meta["vocab"]) + 2
    model = create_model(meta["model"], vocab_size=len(tokenizer), context_length=meta["context_length"],
                         image_size=meta["image_size"])
    model.load_state_dict(torch.load(os.path.join(checkpoint_dir, "model.pt")))
    model.eval()
    return model, tokenizer, meta["image_size"]
