"""Zero-shot evaluation of CLIP-style models, following DataComp / clip_benchmark.

    zero_shot_classifier(model, tokenize, classnames, templates) -> [d, C] class embeddings
    zero_shot_accuracy(model, classifier, images, labels, topk=(1, 5)) -> {"acc1", "acc5", ...}
    retrieval_recall(model, images, texts, ks=(1, 5, 10)) -> recall@k both directions
    datacomp_average(results) -> the headline average of each task's main metric

Models are anything with encode_image / encode_text (fmkit's CLIP, OpenClipAdapter, open_clip
models), or a forward(image, text) -> (image_features, text_features, ...) callable. Features
are L2-normalised here; evaluation runs in fp32 under no_grad in eval mode (DataComp turns amp
off for evaluation) and restores the model's training mode afterwards.

Retrieval never forms the N x M similarity matrix: the top-k lists come from fmkit.ops.knn
(metric "ip"), which is exact, bounded in memory, and breaks ties toward the lower index.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from fmkit.ops import knn

# DataComp's main metric per task (DC `aggregate_scores.py`; DCP §3.5): accuracy unless listed.
# Matched against the task name's last path component, lower-cased, by substring.
MAIN_METRIC_OVERRIDES = (
    ("caltech101", "mean_per_class_recall"),
    ("fgvc_aircraft", "mean_per_class_recall"),
    ("flowers", "mean_per_class_recall"),
    ("pets", "mean_per_class_recall"),
    ("iwildcam", "macro_f1"),
    ("fmow", "worst_region_acc"),
    ("dollar_street", "worst_income_top5_acc"),
    ("geode", "worst_region_acc"),
    ("winogavil", "jaccard"),
    ("retrieval", "mean_recall@1"),
    ("flickr", "mean_recall@1"),
    ("mscoco", "mean_recall@1"),
)
UNSCORED_TASKS = ("fairface", "utkface")  # reported separately, not in the average


@contextlib.contextmanager
def _eval_mode(model):
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def _module(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _device(model, default=None):
    if default is not None:
        return torch.device(default)
    try:
        return next(_module(model).parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _encode(model, data: torch.Tensor, batch_size: int, device, tower: str) -> torch.Tensor:
    """L2-normalised fp32 features of one tower ("image" or "text"), `batch_size` rows at a time."""
    m, dev = _module(model), _device(model, device)
    encode = getattr(m, f"encode_{tower}", None)
    out = []
    with _eval_mode(m):
        for chunk in data.split(batch_size):
            chunk = chunk.to(dev)
            if encode is not None:
                x = encode(chunk)
            else:  # forward(image, text) -> (image_features, text_features, ...)
                x = m(chunk, None)[0] if tower == "image" else m(None, chunk)[1]
            out.append(F.normalize(x.float(), dim=-1))
    return torch.cat(out)


def encode_images(model, images: torch.Tensor, *, batch_size: int = 64, device=None) -> torch.Tensor:
    """L2-normalised fp32 image features [N, d], computed `batch_size` at a time."""
    return _encode(model, images, batch_size, device, "image")


def encode_texts(model, texts: torch.Tensor, *, batch_size: int = 256, device=None) -> torch.Tensor:
    """L2-normalised fp32 text features [M, d] from token ids [M, T]."""
    return _encode(model, texts, batch_size, device, "text")


def _check_positive_ints(name, values):
    values = (values,) if isinstance(values, int) else tuple(values)
    if not values or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in values):
        raise ValueError(f"{name}: expected positive ints, got {values!r}")
    return values


def zero_shot_classifier(model, tokenize: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                         templates: Sequence[str | Callable[[str], str]], *, batch_size: int = 256,
                         device=None) -> torch.Tensor:
    """Class embeddings [d, C] (open_clip's orientation): for each class, the mean of the
    normalised text embeddings of every template filled with the class name, renormalised.

    templates: format strings with "{}" or "{c}" (clip_benchmark / open_clip style) or callables
    classname -> prompt (OpenAI style). tokenize: list of prompts -> LongTensor [n, T].
    """
    if isinstance(classnames, str) or len(classnames) == 0:
        raise ValueError("classnames: expected a non-empty sequence of class names")
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError("templates: expected a non-empty sequence of templates (e.g. 'a photo of a {}.')")
    for t in templates:
        if not callable(t) and not (isinstance(t, str) and ("{}" in t or "{c}" in t)):
            raise ValueError(f"templates: {t!r} is neither a callable nor a string containing '{{}}' or '{{c}}'")
    weights = []
    for name in classnames:
        prompts = [t(name) if callable(t) else t.format(name, c=name) for t in templates]
        tokens = tokenize(prompts)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[0] != len(prompts):
            raise ValueError(f"tokenize: expected a [{len(prompts)}, T] tensor of token ids, got "
                             f"{getattr(tokens, 'shape', type(tokens).__name__)}")
        features = encode_texts(model, tokens, batch_size=batch_size, device=device)
        weights.append(F.normalize(features.mean(0), dim=-1))
    return torch.stack(weights, dim=1)


def zero_shot_accuracy(model, classifier: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, *,
                       topk: Sequence[int] = (1, 5), batch_size: int = 64, device=None) -> dict[str, float]:
    """Top-k accuracy ("acc1", "acc5", ... for k <= C, as clip_benchmark) and
    "mean_per_class_recall" (balanced accuracy over the classes present), as fractions in [0, 1]."""
    topk = _check_positive_ints("topk", topk)
    if not isinstance(classifier, torch.Tensor) or classifier.dim() != 2:
        raise ValueError(f"classifier: expected a [d, C] tensor from zero_shot_classifier, got "
                         f"{getattr(classifier, 'shape', type(classifier).__name__)}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images: expected a [N, 3, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels: expected a [N] = [{images.shape[0]}] tensor of class indices, got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")
    num_classes = classifier.shape[1]
    labels = labels.long().cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels: class indices must lie in [0, {num_classes})")
    features = encode_images(model, images, batch_size=batch_size, device=device)
    if features.shape[1] != classifier.shape[0]:
        raise ValueError(f"classifier: embedding dim {classifier.shape[0]} does not match the model's "
                         f"{features.shape[1]}")
    logits = (features @ classifier.to(features.device, torch.float32)).cpu()
    kmax = min(max(topk), num_classes)
    ranked = logits.topk(kmax, dim=1).indices
    hits = ranked == labels[:, None]
    out = {}
    for k in topk:
        if k <= num_classes:
            out[f"acc{k}"] = hits[:, :k].any(1).float().mean().item()
    top1 = hits[:, 0]
    recalls = [top1[labels == c].float().mean() for c in labels.unique()]
    out["mean_per_class_recall"] = torch.stack(recalls).mean().item() if recalls else float("nan")
    return out


def recall_from_features(image_features: torch.Tensor, text_features: torch.Tensor,
                         text_to_image: torch.Tensor | None = None, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Retrieval recall@k from normalised features (image [N, d], text [M, d]).

    text_to_image [M]: the image of each caption (default: caption i describes image i).
    "image_retrieval_recall@k": fraction of captions whose image is among its k most similar
    images; "text_retrieval_recall@k": fraction of images with at least one of their captions
    among their k most similar captions (clip_benchmark's names and definitions). k above the
    candidate count counts as that count. "mean_recall@1" is DataComp's main retrieval metric.

    Ties: DataComp runs clip_benchmark, which takes each query's k best with torch.topk and
    counts a hit when a positive is among them; among equal scores the order is whatever
    torch.topk returns (unspecified). Here equal scores are ordered by index (fmkit.ops.knn),
    one of those orders: identical results on tie-free scores, and on tied scores (identical
    captions or images) a positive is a hit only if the ranking reaches it, never for merely
    tying with the k-th candidate.
    """
    ks = _check_positive_ints("ks", ks)
    n, m = image_features.shape[0], text_features.shape[0]
    if n == 0 or m == 0:
        raise ValueError("images / texts: expected at least one of each")
    if text_to_image is None:
        if n != m:
            raise ValueError(f"text_to_image: required when the caption count {m} differs from the image count {n}")
        text_to_image = torch.arange(n)
    text_to_image = torch.as_tensor(text_to_image).long().to(image_features.device)
    if text_to_image.shape != (m,):
        raise ValueError(f"text_to_image: expected shape [{m}], got {list(text_to_image.shape)}")
    if text_to_image.min() < 0 or text_to_image.max() >= n:
        raise ValueError(f"text_to_image: image indices must lie in [0, {n})")
    x, y = image_features.float().contiguous(), text_features.float().contiguous()
    out = {}
    k_img = min(max(ks), n)
    _, nearest_images = knn(y, x, k_img, metric="ip")  # [M, k]
    hits_img = nearest_images == text_to_image[:, None]
    k_txt = min(max(ks), m)
    _, nearest_texts = knn(x, y, k_txt, metric="ip")  # [N, k]
    hits_txt = text_to_image[nearest_texts] == torch.arange(n, device=x.device)[:, None]
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = hits_img[:, : min(k, n)].any(1).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = hits_txt[:, : min(k, m)].any(1).float().mean().item()
    r1_img = hits_img[:, 0].float().mean().item()
    r1_txt = hits_txt[:, 0].float().mean().item()
    out["mean_recall@1"] = (r1_img + r1_txt) / 2
    return out


def retrieval_recall(model, images: torch.Tensor, texts: torch.Tensor, *, ks: Sequence[int] = (1, 5, 10),
                     text_to_image: torch.Tensor | None = None, batch_size: int = 64, device=None) -> dict:
    """Image <-> text retrieval recall@k (see recall_from_features): features are computed in
    chunks of `batch_size` and the top-k come from fmkit.ops.knn, so nothing N x M is formed."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images: expected a [N, 3, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    if not isinstance(texts, torch.Tensor) or texts.dim() != 2:
        raise ValueError(f"texts: expected token ids [M, T], got {getattr(texts, 'shape', type(texts))}")
    ks = _check_positive_ints("ks", ks)
    image_features = encode_images(model, images, batch_size=batch_size, device=device)
    text_features = encode_texts(model, texts, batch_size=batch_size, device=device)
    return recall_from_features(image_features, text_features, text_to_image, ks)


def main_metric(task: str, metrics: Mapping[str, float] | float) -> float | None:
    """A task's DataComp main metric: metrics["main_metric"] if given, the override for the task
    (MAIN_METRIC_OVERRIDES), else "acc1"; None for the unscored fairness tasks."""
    if isinstance(metrics, (int, float)):
        return float(metrics)
    base = task.rsplit("/", 1)[-1].lower()
    if any(name in base for name in UNSCORED_TASKS):
        return None
    if "main_metric" in metrics:
        return float(metrics["main_metric"])
    key = next((k for name, k in MAIN_METRIC_OVERRIDES if name in base or name in task.lower()), "acc1")
    if key == "mean_recall@1" and key not in metrics:
        return (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    if key not in metrics:
        raise ValueError(f"results[{task!r}]: missing the main metric {key!r} (have {sorted(metrics)})")
    return float(metrics[key])


def datacomp_average(results: Mapping[str, Mapping[str, float] | float]) -> dict:
    """DataComp's headline: the unweighted mean over tasks of each task's main metric.

    results: task name -> metrics dict (as returned above) or the main metric itself. DataComp
    averages 38 tasks (asserted in its aggregate_scores.py); here any number is accepted and
    "n_tasks" reports how many entered the average. FairFace / UTKFace are skipped.
    """
    if not results:
        raise ValueError("results: expected at least one task")
    per_task = {}
    for task, metrics in results.items():
        value = main_metric(task, metrics)
        if value is not None:
            per_task[task] = value
    if not per_task:
        raise ValueError("results: no scored task")
    return {"average": sum(per_task.values()) / len(per_task), "n_tasks": len(per_task), "per_task": per_task}
