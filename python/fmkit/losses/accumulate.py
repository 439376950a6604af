"""Gradient accumulation for contrastive losses that gives exactly the full-batch gradient.

A contrastive loss couples every sample with every other, so k micro-batches cannot simply
be summed. open_clip's `--accum-freq` (PR #267) caches all features without grad, then for
each micro-batch j recomputes its features with grad, splices them into the cache, evaluates
the full loss and back-propagates. Encoder gradients then sum to the full-batch gradient,
but logit_scale / logit_bias take part in every one of the k passes, so their gradient comes
out k times too large (open_clip #761, #957). Here they carry gradient in exactly one pass.
The RNG state is saved before each cached forward and restored before its recomputation, so
dropout and random augmentation inside the model see identical draws (open_clip does not).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def _rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class ContrastiveAccumulator:
    """Full-batch contrastive gradients from k micro-batches, at the memory of one.

    Args:
        model: callable(*micro_batch) -> (image_features, text_features, logit_scale[, logit_bias])
            (open_clip's CLIP.forward returns exactly this, with logit_scale already exponentiated).
        loss: callable(image_features, text_features, logit_scale[, logit_bias]) -> scalar,
            e.g. fmkit.losses.ClipLoss() or SigLipLoss().

    `backward(micro_batches)` runs the two passes, calls backward k times (gradients accumulate
    in .grad as usual; wrap all but the last in DDP's no_sync yourself if you use DDP) and
    returns the full-batch loss value. Then step the optimizer once.
    """

    def __init__(self, model: Callable, loss: Callable):
        self.model = model
        self.loss = loss

    def backward(self, micro_batches: Sequence[Sequence]) -> torch.Tensor:
        if len(micro_batches) == 0:
            raise ValueError("micro_batches: expected at least one micro-batch")
        states, images, texts = [], [], []
        with torch.no_grad():
            for batch in micro_batches:
                states.append(_rng_state())
                out = self.model(*batch)
                images.append(out[0])
                texts.append(out[1])
        final_state = _rng_state()
        loss_value = None
        for j, batch in enumerate(micro_batches):
            _set_rng_state(states[j])
            out = self.model(*batch)
            image = torch.cat(images[:j] + [out[0]] + images[j + 1 :])
            text = torch.cat(texts[:j] + [out[1]] + texts[j + 1 :])
            # The scale (and bias) enter every pass; let only the first carry their gradient.
            extras = [t if j == 0 else t.detach() for t in out[2:]]
            loss = self.loss(image, text, *extras)
            loss.backward()
            loss_value = loss.detach()
        _set_rng_state(final_state)
        return loss_value
