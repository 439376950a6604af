"""`fmkit datacomp make-pool | filter | train | make-eval | evaluate` (parsed in fmkit.cli)."""
from __future__ import annotations

import inspect
import json
import os

from fmkit.cli import UsageError, _check_output, _require

CHECKPOINT_META = "fmkit_clip.json"


def run(args) -> int:
    _require("pyarrow", "PIL")  # every step reads or writes parquet and images
    return {"make-pool": _make_pool, "filter": _filter, "train": _train, "make-eval": _make_eval,
            "evaluate": _evaluate}[args.datacomp_command](args)


def _make_pool(args) -> int:
    from fmkit.datacomp import make_synthetic_pool

    _check_output(args.out, args.overwrite, "DIR")
    info = make_synthetic_pool(args.out, n=args.n, seed=args.seed, attributes=args.attributes, overwrite=True)
    print(f"wrote {len(info.uids)} samples ({int(info.clean.sum())} clean) to {args.out}")
    return 0


def _filter(args) -> int:
    from fmkit._output import replace_file
    from fmkit.datacomp.filters import FILTERS
    from fmkit.datacomp.pool import write_uids

    fn = FILTERS[args.name]
    options = {"fraction": args.fraction, "threshold": args.threshold, "arch": args.arch,
               "reference_embeddings": args.reference, "centroids": args.centroids,
               "n_clusters": args.n_clusters, "fasttext_model": args.fasttext_model}
    flags = {"reference_embeddings": "--reference", "n_clusters": "--n-clusters",
             "fasttext_model": "--fasttext-model"}
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in options.items() if v is not None}
    for key in kw:
        if key not in params and not takes_any:
            raise UsageError(f"{flags.get(key, '--' + key)}: does not apply to filter {args.name!r}")
    if "reference_embeddings" in params and "reference_embeddings" not in kw:
        raise UsageError(f"--reference: filter {args.name!r} needs reference image embeddings (an .npy [n, d])")
    if "clip_score" in args.name and "fraction" not in kw and "threshold" not in kw \
            and params["fraction"].default is None:
        raise UsageError(f"filter {args.name!r}: give --fraction or --threshold")
    _check_output(args.out, args.overwrite, "--out")
    result = fn(args.pool, **kw)
    uids = result[0] if isinstance(result, tuple) else result
    with replace_file(args.out, overwrite=True, what="--out") as tmp:
        write_uids(uids, tmp)
    print(f"{args.name}: kept {len(uids)} samples -> {args.out}")
    return 0


def _train(args) -> int:
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite: give one of them")
    if args.resume:
        from fmkit.clip.train import CHECKPOINT_NAME

        if not os.path.exists(os.path.join(args.out, CHECKPOINT_NAME)):
            raise UsageError(f"--resume: no {CHECKPOINT_NAME} in --out {args.out!r} to resume from")
    else:
        _check_output(args.out, args.overwrite, "--out")
    import torch

    from fmkit._output import replace_dir
    from fmkit.clip import SCALES, create_model, model_config, train_clip
    from fmkit.datacomp.data import WordTokenizer, batches, load_pool_samples

    try:
        model_name = args.model or SCALES[args.scale]["model"]
        image_size = args.image_size or model_config(model_name)["vision"]["image_size"]
    except ValueError as exc:
        raise UsageError(f"--model: {exc}") from None
    images, captions, _ = load_pool_samples(args.pool, args.uids, image_size)
    tokenizer = WordTokenizer(captions)
    model = create_model(model_name, vocab_size=len(tokenizer), context_length=tokenizer.context_length,
                         image_size=image_size)
    batch_size = args.batch_size or SCALES[args.scale]["batch_size"]

    def train_into(out_dir):
        result = train_clip(model, batches(images, tokenizer(captions), batch_size), scale=args.scale,
                            steps=args.steps, batch_size=batch_size, lr=args.lr, warmup=args.warmup,
                            accum_freq=args.accum_freq, precision=args.precision, device=args.device,
                            checkpoint_dir=str(out_dir), resume=args.resume)
        with open(os.path.join(out_dir, CHECKPOINT_META), "w") as f:
            json.dump({"model": model_name, "image_size": images.shape[-1], "vocab": tokenizer.vocab,
                       "context_length": tokenizer.context_length, "scale": args.scale}, f)
        torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
        return result

    if args.resume:  # in place: the checkpoint there is the point
        result = train_into(args.out)
    else:  # written beside --out and renamed when complete
        with replace_dir(args.out, overwrite=True, what="--out") as tmp:
            result = train_into(tmp)
    print(f"trained {result.step} steps on {len(captions)} samples; final loss {result.losses[-1]:.4f}")
    return 0


def _make_eval(args) -> int:
    from fmkit._output import replace_dir
    from fmkit.datacomp.eval_tasks import make_synthetic_eval_tasks

    _check_output(args.out, args.overwrite, "DIR")
    with replace_dir(args.out, overwrite=True, what="DIR") as tmp:
        tasks = make_synthetic_eval_tasks(tmp, n=args.n, seed=args.seed)
    tasks = {name: os.path.join(args.out, os.path.relpath(path, tmp)) for name, path in tasks.items()}
    print("wrote evaluation tasks; evaluate with: " + " ".join(f"--task {k}={v}" for k, v in tasks.items()))
    return 0


def _evaluate(args) -> int:
    from fmkit._output import replace_file
    from fmkit.datacomp.eval_tasks import evaluate_tasks

    tasks = dict(args.task)
    if args.pool:
        tasks["pool_retrieval"] = args.pool
    if not tasks:
        raise UsageError("give at least one --task NAME=PATH (or --pool DIR)")
    if args.out:
        _check_output(args.out, args.overwrite, "--out")
    model, tokenizer, image_size = load_trained(args.checkpoint)
    result = evaluate_tasks(model, tokenizer, tasks, image_size=image_size)
    print(f"{'task':<28}{'kind':<16}{'main metric':>12}")
    for name, value in result["main_metrics"].items():
        print(f"{name:<28}{result['tasks'][name]['kind']:<16}{100 * value:>11.1f}%")
    print(f"{'DataComp average':<44}{100 * result['average']:>11.1f}%  ({result['n_tasks']} tasks)")
    if args.out:
        with replace_file(args.out, overwrite=True, what="--out") as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        print("wrote", args.out)
    return 0


def load_trained(checkpoint_dir):
    """(model in eval mode, its WordTokenizer, image size) of a `fmkit datacomp train` output folder."""
    import torch

    from fmkit.clip import create_model
    from fmkit.datacomp.data import WordTokenizer

    meta_path = os.path.join(checkpoint_dir, CHECKPOINT_META)
    if not os.path.exists(meta_path):
        raise UsageError(f"--checkpoint {checkpoint_dir!r}: no {CHECKPOINT_META} (not a `fmkit datacomp train` "
                         "output)")
    with open(meta_path) as f:
        meta = json.load(f)
    tokenizer = WordTokenizer([], context_length=meta["context_length"])
    tokenizer.vocab, tokenizer.eot = meta["vocab"], len(meta["vocab"]) + 2
    model = create_model(meta["model"], vocab_size=len(tokenizer), context_length=meta["context_length"],
                         image_size=meta["image_size"])
    model.load_state_dict(torch.load(os.path.join(checkpoint_dir, "model.pt")))
    model.eval()
    return model, tokenizer, meta["image_size"]
