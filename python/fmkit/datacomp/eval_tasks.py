"""Evaluation tasks read from local files, for `fmkit datacomp evaluate`.

DataComp's suite downloads its 38 datasets; fmkit never reaches the network, so users point it
at their own copies in one of two plain layouts, detected from the folder's contents:

classification  an image-folder tree  ROOT/<class folder>/<image files>  (torchvision's
                ImageFolder layout; labels follow the sorted folder names), optionally with
                ROOT/classnames.txt (one display name per line, in sorted-folder order) and
                ROOT/templates.txt (one prompt template per line, containing "{}" or "{c}").
retrieval       a DataComp-format pool (parquet + tar shards, see fmkit.datacomp.pool): each
                caption is the positive of its own image.

Each task's main metric follows DataComp (fmkit.clip.evaluate.main_metric: accuracy unless the
task name says otherwise, mean recall@1 for retrieval), and `datacomp_average` gives the
headline mean over the tasks given.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
# Used when a classification task brings no templates.txt: a few generic photo prompts, as
# clip_benchmark falls back to for datasets without their own.
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a good photo of a {}.",
                     "a close-up photo of a {}.", "a cropped photo of the {}.")


def task_kind(path) -> str:
    """"retrieval" for a pool folder (parquet files), "classification" for an image-folder tree."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"task path {str(path)!r}: not a folder (expected an image-folder tree or a pool)")
    if any(p.suffix == ".parquet" for p in root.iterdir()):
        return "retrieval"
    if any(p.is_dir() for p in root.iterdir()):
        return "classification"
    raise ValueError(f"task path {str(path)!r}: neither parquet shards (retrieval) nor class sub-folders "
                     "(classification) found")


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _load_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((image_size, image_size)), dtype=np.float32) / 255.0


def load_classification_task(path, image_size: int = 32):
    """(images float [N, 3, S, S] in [0, 1], labels int64 [N], classnames, templates) of an
    image-folder tree (see the module docstring)."""
    root = Path(path)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"task path {str(path)!r}: no class sub-folders")
    classnames = [p.name for p in folders]
    names_file = root / "classnames.txt"
    if names_file.exists():
        classnames = _read_lines(names_file)
        if len(classnames) != len(folders):
            raise ValueError(f"{names_file}: {len(classnames)} names for {len(folders)} class folders")
    templates = list(DEFAULT_TEMPLATES)
    templates_file = root / "templates.txt"
    if templates_file.exists():
        templates = _read_lines(templates_file)
    images, labels = [], []
    for label, folder in enumerate(folders):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_load_image(file, image_size))
                labels.append(label)
    if not images:
        raise ValueError(f"task path {str(path)!r}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, torch.tensor(labels, dtype=torch.long), classnames, templates


def write_classification_task(root, images: torch.Tensor, labels: Sequence[int], classnames: Sequence[str],
                              templates: Sequence[str] | None = None) -> Path:
    """Writes images [N, 3, H, W] in [0, 1] as an image-folder tree that load_classification_task
    reads back: one folder per class (zero-padded index, so the sorted order is the class order),
    PNG files (lossless), classnames.txt and, if given, templates.txt."""
    from PIL import Image

    root = Path(root)
    width = len(str(max(len(classnames) - 1, 0)))
    for c in range(len(classnames)):
        (root / f"{c:0{width}d}").mkdir(parents=True, exist_ok=True)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, (img, label) in enumerate(zip(pixels, labels)):
        Image.fromarray(img).save(root / f"{int(label):0{width}d}" / f"{i:06d}.png")
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
    if templates:
        (root / "templates.txt").write_text("\n".join(templates) + "\n", encoding="utf-8")
    return root


def make_synthetic_eval_tasks(out_dir, *, n: int = 512, seed: int = 1, class_names: Sequence[str] | None = None
                              ) -> dict[str, str]:
    """Two held-out tasks on the classes of `make_synthetic_pool` (clean captions, fresh draws):
    {"synthetic_classification": image-folder path, "synthetic_retrieval": pool path}.

    The retrieval items carry per-image attributes (make_synthetic_pool(attributes=True):
    background, and size, colour and corner of a mark), so each caption names its own image:
    with n <= 64 x classes (512 for the default 8) no two captions are equal. Class names alone
    would leave n / classes identical captions per class and cap recall@1 at chance among them."""
    from fmkit.datacomp.data import load_pool_samples
    from fmkit.datacomp.pool import make_synthetic_pool

    retrieval_dir = os.path.join(out_dir, "retrieval")
    info = make_synthetic_pool(retrieval_dir, n=n, seed=seed, corrupt_frac=0.0, non_english_frac=0.0,
                               bad_size_frac=0.0, class_names=class_names, attributes=True)
    images, _, _ = load_pool_samples(retrieval_dir)
    classification_dir = os.path.join(out_dir, "classification")
    write_classification_task(classification_dir, images, info.labels, info.class_names,
                              ["a photo of a {} in the garden", "a photo of a {}"])
    return {"synthetic_classification": classification_dir, "synthetic_retrieval": retrieval_dir}


def evaluate_tasks(model, tokenize, tasks: Mapping[str, str], *, image_size: int = 32, batch_size: int = 64,
                   device=None, progress: bool = True) -> dict:
    """Runs every task ({name: path}) and returns {"tasks": {name: metrics}, "average": ...,
    "n_tasks": ...} where the average is DataComp's headline (mean of each task's main metric)."""
    from tqdm import tqdm

    from fmkit.clip.evaluate import datacomp_average, retrieval_recall, zero_shot_accuracy, zero_shot_classifier
    from fmkit.datacomp.data import load_pool_samples

    if not tasks:
        raise ValueError("tasks: expected at least one NAME=PATH task")
    results = {}
    for name, path in tqdm(tasks.items(), desc="evaluate", disable=not progress):
        kind = task_kind(path)
        with torch.no_grad():
            if kind == "classification":
                images, labels, classnames, templates = load_classification_task(path, image_size)
                classifier = zero_shot_classifier(model, tokenize, classnames, templates, device=device)
                metrics = zero_shot_accuracy(model, classifier, images, labels, topk=(1, 5), batch_size=batch_size,
                                             device=device)
            else:
                images, captions, _ = load_pool_samples(path, None, image_size)
                metrics = retrieval_recall(model, images, tokenize(captions), batch_size=batch_size, device=device)
                metrics["main_metric"] = metrics["mean_recall@1"]
        results[name] = {"kind": kind, **metrics}
    headline = datacomp_average({name: {k: v for k, v in m.items() if k != "kind"} for name, m in results.items()})
    return {"tasks": results, "average": headline["average"], "n_tasks": headline["n_tasks"],
            "main_metrics": headline["per_task"]}
