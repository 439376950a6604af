"""`fmkit demo datacomp`: the DataComp workflow end to end on a generated pool, offline.

A noisy synthetic pool (half the captions name the wrong class, some are not English, some
images are too small) is filtered three ways (no filter, basic, CLIP score top 30% on the
L/14 embeddings); a `tiny` CLIP is trained on each subset with the same recipe and budget and
evaluated zero-shot on clean held-out images of the same classes.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from fmkit.clip import create_model, train_clip, zero_shot_accuracy, zero_shot_classifier
from fmkit.datacomp.data import WordTokenizer, batches, load_pool_samples
from fmkit.datacomp.filters import basic_filter, clip_score_filter, no_filter
from fmkit.datacomp.pool import make_synthetic_pool, write_uids

TEMPLATES = ["a photo of a {} in the garden", "a photo of a {}"]


def run_demo(out_dir: str, n: int = 2048, steps: int = 200, seed: int = 0, progress: bool = True) -> dict:
    from tqdm import tqdm

    torch.manual_seed(seed)
    pool_dir = os.path.join(out_dir, "pool")
    info = make_synthetic_pool(pool_dir, n=n, seed=seed, corrupt_frac=0.5, non_english_frac=0.15,
                               bad_size_frac=0.2)
    held_out = make_synthetic_pool(os.path.join(out_dir, "eval"), n=512, seed=seed + 1, corrupt_frac=0.0,
                                   non_english_frac=0.0, bad_size_frac=0.0, class_names=info.class_names)
    eval_images, _, _ = load_pool_samples(held_out.pool_dir)
    eval_labels = torch.from_numpy(np.asarray(held_out.labels, dtype=np.int64))
    tokenizer = WordTokenizer(info.captions + [t.format(c) for c in info.class_names for t in TEMPLATES])
    filters = {
        "no filter": lambda d: no_filter(d, progress=False),
        "basic": lambda d: basic_filter(d, progress=False),
        "CLIP score (L/14, top 30%)": lambda d: clip_score_filter(d, arch="l14", fraction=0.3, progress=False),
    }
    rows = {}
    for name, filt in tqdm(filters.items(), desc="datacomp demo", disable=not progress):
        uids_path = os.path.join(out_dir, name.split()[0].lower() + "_uids.npy")
        write_uids(filt(pool_dir), uids_path)
        images, captions, _ = load_pool_samples(pool_dir, uids_path)
        torch.manual_seed(seed)
        model = create_model("tiny", vocab_size=len(tokenizer), context_length=tokenizer.context_length,
                             image_size=32)
        train_clip(model, batches(images, tokenizer(captions), batch_size=64, seed=seed), steps=steps, batch_size=64,
                   lr=1e-3, warmup=20, precision="fp32", progress=False)
        model.eval()
        with torch.no_grad():
            classifier = zero_shot_classifier(model, tokenizer, info.class_names, TEMPLATES)
            acc = zero_shot_accuracy(model, classifier, eval_images, eval_labels, topk=(1,))
        rows[name] = {"kept": len(captions), "zero_shot_top1": acc["acc1"]}
    print(f"\nsynthetic pool: {n} samples ({int(info.clean.sum())} clean); tiny CLIP, {steps} steps of 64")
    print(f"{'filter':<28}{'kept':>8}{'zero-shot top-1':>18}")
    for name, r in rows.items():
        print(f"{name:<28}{r['kept']:>8}{100 * r['zero_shot_top1']:>17.1f}%")
    return rows
