"""OpenFlamingo (Awadalla et al., arXiv:2308.01390): Perceiver Resampler and gated, media-masked
cross-attention around any Hugging Face causal LM, on fmkit's fused attention kernels; its
training recipe (`fmkit.flamingo.train`, data in `fmkit.flamingo.data`) and few-shot evaluation
(`fmkit.flamingo.evaluate`, metrics in `fmkit.flamingo.metrics`)."""
from fmkit.flamingo.model import (
    END_OF_CHUNK_TOKEN,
    IMAGE_TOKEN,
    Flamingo,
    FlamingoLayer,
    FlamingoParameterCount,
    conditioned,
    create_flamingo,
    find_decoder_layers,
    flamingo_parameter_count,
    freeze_for_training,
    load_openflamingo_state_dict,
)
from fmkit.flamingo.modules import (
    FeedForward,
    GatedCrossAttentionBlock,
    MaskedCrossAttention,
    PerceiverAttention,
    PerceiverResampler,
)

from fmkit.flamingo.evaluate import FewShotEvaluator, Rices, build_prompt, effective_num_shots  # noqa: E402
from fmkit.flamingo.metrics import cider_d, ptb_tokenize, roc_auc, vqa_accuracy  # noqa: E402
from fmkit.flamingo.train import ClipVisionTower, train_flamingo  # noqa: E402

__all__ = [
    "train_flamingo", "ClipVisionTower", "FewShotEvaluator", "Rices", "build_prompt", "effective_num_shots",
    "cider_d", "ptb_tokenize", "roc_auc", "vqa_accuracy",
    "Flamingo", "FlamingoLayer", "create_flamingo", "load_openflamingo_state_dict", "conditioned",
    "find_decoder_layers", "freeze_for_training", "flamingo_parameter_count", "FlamingoParameterCount",
    "IMAGE_TOKEN", "END_OF_CHUNK_TOKEN",
    "PerceiverResampler", "PerceiverAttention", "MaskedCrossAttention", "GatedCrossAttentionBlock", "FeedForward",
]
