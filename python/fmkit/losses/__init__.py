"""Contrastive losses as nn.Modules with open_clip's constructor semantics, on fmkit's fused op.

    ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
             use_horovod=False, *, ring=False, backend="auto")
    SigLipLoss(cache_labels=False, rank=0, world_size=1, dist_impl=None, *, backend="auto")
    ContrastiveAccumulator(model, loss)   gradient accumulation with the full-batch gradient

Distributed conventions (see the README): with `local_loss=True, gather_with_grad=True` (what
open_clip recommends) or `ring=True`, each rank's loss covers its local rows against every
column, the features' gradients carry every rank's contribution, and after DDP averages the
parameter gradients they equal the gradient of the global full-batch loss, logit_scale and
logit_bias included. Nothing N x N is ever allocated: the fused op keeps memory O(N d).
"""
from fmkit.losses.accumulate import ContrastiveAccumulator
from fmkit.losses.contrastive import ClipLoss, SigLipLoss

__all__ = ["ClipLoss", "SigLipLoss", "ContrastiveAccumulator"]
