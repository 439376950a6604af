"""A small CLIP family, its DataComp training recipe and zero-shot evaluation.

    create_model(name="tiny", *, vocab_size=None, context_length=None, ...) -> CLIP
        CONFIGS: "tiny", "small" (ViT-S/32), "B-32", "B-16", "L-14" (open_clip dims).
        forward(images, texts) -> (image_features, text_features, logit_scale.exp()), normalised.
    OpenClipAdapter(open_clip_model), from_open_clip(name, pretrained)   (open_clip optional)
    train_clip(model, data, *, scale="tiny", steps=None, batch_size=None, lr=None, warmup=None,
               accum_freq=1, precision=None, checkpoint_dir=None, resume=True,
               distributed=False, device=None, progress=True, log_every=10, ...) -> TrainResult
        SCALES: DataComp's small / medium / large / xlarge plus "tiny".
    zero_shot_classifier, zero_shot_accuracy, retrieval_recall, recall_from_features,
    datacomp_average (mean of each task's main metric, as DataComp's headline).
"""
from fmkit.clip.evaluate import (datacomp_average, encode_images, encode_texts, main_metric, recall_from_features,
                                 retrieval_recall, zero_shot_accuracy, zero_shot_classifier)
from fmkit.clip.model import CLIP, CONFIGS, OpenClipAdapter, create_model, from_open_clip, model_config
from fmkit.clip.train import (SCALES, TrainResult, WarmupCosine, clamp_logit_scale, contrastive_backward,
                              load_checkpoint, param_groups, save_checkpoint, train_clip)

__all__ = [
    "CLIP", "CONFIGS", "OpenClipAdapter", "create_model", "from_open_clip", "model_config",
    "SCALES", "TrainResult", "WarmupCosine", "clamp_logit_scale", "contrastive_backward", "load_checkpoint",
    "param_groups", "save_checkpoint", "train_clip",
    "datacomp_average", "encode_images", "encode_texts", "main_metric", "recall_from_features",
    "retrieval_recall", "zero_shot_accuracy", "zero_shot_classifier",
]
