"""OpenFlamingo (Awadalla et al., arXiv:2308.01390): Perceiver Resampler and gated, media-masked
cross-attention around any Hugging Face causal LM, on fmkit's fused attention kernels."""
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

__all__ = [
    "Flamingo", "FlamingoLayer", "create_flamingo", "load_openflamingo_state_dict", "conditioned",
    "find_decoder_layers", "freeze_for_training", "flamingo_parameter_count", "FlamingoParameterCount",
    "IMAGE_TOKEN", "END_OF_CHUNK_TOKEN",
    "PerceiverResampler", "PerceiverAttention", "MaskedCrossAttention", "GatedCrossAttentionBlock", "FeedForward",
]
