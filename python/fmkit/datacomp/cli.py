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
        from fmkit.clip import create_model, train_clip

        images, captions, _ = load_pool_samples(args.pool, args.uids, args.image_size)
        tokenizer = WordTokenizer(captions)
        model = create_model(args.model, vocab_size=len(tokenizer), context_length=tokenizer.context_length,
                             image_size=args.image_size)
        result = train_clip(model, batches(images, tokenizer(captions), args.batch_size), steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, checkpoint_dir=args.out)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "fmkit_clip.json"), "w") as f:
            json.dump({"model": args.model, "image_size": args.image_size, "vocab": tokenizer.vocab,
                       "context_length": tokenizer.context_length}, f)
        torch.save(model.state_dict(), os.path.join(args.out, "model.pt"))
        print(f"trained {result.step} steps on {len(captions)} samples; final loss {result.losses[-1]:.4f}")
        return 0
    if cmd == "evaluate":
        from fmkit.clip import create_model, retrieval_recall

        with open(os.path.join(args.checkpoint, "fmkit_clip.json")) as f:
            meta = json.load(f)
        tokenizer = WordTokenizer([], context_length=meta["context_length"])
        tokenizer.vocab, tokenizer.eot = meta["vocab"], len(meta["vocab"]) + 2
        model = create_model(meta["model"], vocab_size=len(tokenizer), context_length=meta["context_length"],
                             image_size=meta["image_size"])
        model.load_state_dict(torch.load(os.path.join(args.checkpoint, "model.pt")))
        model.eval()
        images, captions, _ = load_pool_samples(args.pool, None, meta["image_size"])
        with torch.no_grad():
            print(json.dumps(retrieval_recall(model, images, tokenizer(captions)), indent=1))
        return 0
    return 1
