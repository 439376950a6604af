"""ClipLoss and SigLipLoss: open_clip semantics on the fused contrastive op, single GPU or distributed."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from fmkit.ops.clip_loss import _check, _kernels, clip_loss, contrastive_loss


def gather_features(t: torch.Tensor, group=None, with_grad: bool = True) -> list[torch.Tensor]:
    """All-gather along dim 0. With grad, backward sums every rank's gradient into the owner's slice."""
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return list(dist_fn.all_gather(t, group=group))
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t.contiguous(), group=group)
    return out


class ClipLoss(nn.Module):
    """open_clip's ClipLoss (mean of image->text and text->image cross entropies), fused.

    forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
    `logit_scale` is the multiplier (open_clip passes `logit_scale.exp()`).

    Single process: the fused symmetric loss. Distributed (world_size > 1):
      local_loss=True,  gather_with_grad=True : local rows x gathered columns, labels offset by
          B * rank; exact full-batch gradients after DDP averaging (recommended).
      local_loss=False, gather_with_grad=True : every rank evaluates the full symmetric loss on
          the gathered features (exact; the fused op keeps this O(N d) rather than O(N^2)).
      gather_with_grad=False                  : open_clip's non-autograd gather (its own slot
          keeps the gradient only when local_loss=False), reproduced for parity, not exact.
      ring=True                               : like local_loss + gather_with_grad, but features
          travel around a ring of point-to-point exchanges, so no rank holds every feature with
          gradient, and gradients travel back the same way.
    """

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
                 use_horovod=False, *, ring=False, group=None, backend="auto"):
        super().__init__()
        if use_horovod:
            raise ValueError("use_horovod: horovod is not supported; fmkit uses torch.distributed")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels  # labels are never materialised here; accepted for compatibility
        self.rank = rank
        self.world_size = world_size
        self.ring = ring
        self.group = group
        self.backend = backend

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        if logit_bias is not None:
            raise ValueError("logit_bias: ClipLoss has no bias (softmax cross entropy is shift invariant)")
        if self.world_size <= 1:
            loss = clip_loss(image_features, text_features, logit_scale, backend=self.backend)
        else:
            _check(image_features, text_features, logit_scale, None, "softmax", self.backend)
            loss = self._distributed(image_features, text_features, logit_scale)
        return {"contrastive_loss": loss} if output_dict else loss

    def _distributed(self, x, y, s):
        b = x.shape[0]
        offset = b * self.rank
        if self.ring:
            r_img = ring_row_statistics(x, y, s, None, "softmax", self.group, self.backend)
            r_txt = ring_row_statistics(y, x, s, None, "softmax", self.group, self.backend)
            positives = s * (x.float() * y.float()).sum(1)
            return ((r_img - positives).mean() + (r_txt - positives).mean()) / 2
        xs = gather_features(x, self.group, self.gather_with_grad)
        ys = gather_features(y, self.group, self.gather_with_grad)
        if not self.gather_with_grad and not self.local_loss:
            xs[self.rank], ys[self.rank] = x, y
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        if not self.local_loss:
            return clip_loss(x_all, y_all, s, backend=self.backend)
        image_to_text = contrastive_loss(x, y_all, s, kind="softmax", symmetric=False, offset=offset,
                                         positives=True, backend=self.backend)
        text_to_image = contrastive_loss(y, x_all, s, kind="softmax", symmetric=False, offset=offset,
                                         positives=True, backend=self.backend)
        return (image_to_text + text_to_image) / 2


class SigLipLoss(nn.Module):
    """open_clip's SigLipLoss: -1/B sum_ij log sigmoid(z_ij (s <x_i, y_j> + b)), fused.

    Distributed: each rank's image rows meet every rank's text block; blocks from other ranks
    are negative-only. dist_impl "shift" and "bidir" (open_clip's default) pass text blocks
    around a ring of point-to-point exchanges with gradients sent back the same way ("bidir"
    runs as "shift": identical results, without the bidirectional bandwidth saving); "gather"
    all-gathers the texts with gradient. The loss is normalised by the local batch B, as in
    open_clip.
    """

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None, *, group=None, backend="auto"):
        super().__init__()
        dist_impl = dist_impl or "bidir"
        if dist_impl not in ("bidir", "shift", "gather"):
            raise ValueError(f"dist_impl: expected 'bidir', 'shift' or 'gather', got {dist_impl!r}")
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.dist_impl = dist_impl
        self.group = group
        self.backend = backend

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        if logit_bias is None:
            logit_bias = torch.zeros((), dtype=torch.float32, device=image_features.device)
        if self.world_size <= 1:
            loss = clip_loss(image_features, text_features, logit_scale, logit_bias=logit_bias, kind="sigmoid",
                             backend=self.backend)
        else:
            _check(image_features, text_features, logit_scale, logit_bias, "sigmoid", self.backend)
            loss = self._distributed(image_features, text_features, logit_scale, logit_bias)
        return {"contrastive_loss": loss} if output_dict else loss

    def _distributed(self, x, y, s, b):
        if self.dist_impl == "gather":
            ys = gather_features(y, self.group, with_grad=True)
            offset = x.shape[0] * self.rank
            y_all = torch.cat(ys)
            return contrastive_loss(x, y_all, s, b, kind="sigmoid", symmetric=False, offset=offset,
                                    positives=True, backend=self.backend)
        softplus_sums = ring_row_statistics(x, y, s, b, "sigmoid", self.group, self.backend)
        positives = s * (x.float() * y.float()).sum(1) + b
        return (softplus_sums - positives).sum() / x.shape[0]


# ---- ring: row statistics of local rows against every rank's column block ----

def _exchange(tensors, group):
    """Sends `tensors` to the next rank and returns the ones received from the previous rank."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    nxt = dist.get_global_rank(group, (rank + 1) % world) if group is not None else (rank + 1) % world
    prv = dist.get_global_rank(group, (rank - 1) % world) if group is not None else (rank - 1) % world
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t.contiguous(), nxt, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, r, prv, group) for r in received]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


class _RingRowStatistics(torch.autograd.Function):
    """softmax: r_i = log sum over every rank's columns of exp(L_ij); sigmoid: sum_j softplus(L_ij).

    Forward passes the column blocks around the ring and merges per-block statistics; backward
    passes them around again (recomputing tiles), with each block's gradient accumulator
    travelling with it and arriving back at its owner after the last hop.
    """

    @staticmethod
    def forward(ctx, x, y, scale, bias, kind, group, backend):
        kernels = _kernels(backend, x)
        s, b = scale.float().reshape(()), bias.float().reshape(())
        world = dist.get_world_size(group)
        block = y.detach()
        total = None
        for step in range(world):
            stat, _ = kernels.forward(x.detach(), block, s, b, kind, False)
            if total is None:
                total = stat
            else:
                total = torch.logaddexp(total, stat) if kind == "softmax" else total + stat
            if step < world - 1:
                (block,) = _exchange([block], group)
        ctx.save_for_backward(x, y, scale, bias, total)
        ctx.config = (kind, group, backend)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        x, y, scale, bias, total = ctx.saved_tensors
        kind, group, backend = ctx.config
        kernels = _kernels(backend, x)
        s, b = scale.float().reshape(()), bias.float().reshape(())
        world = dist.get_world_size(group)
        w_row = grad_total.float().contiguous()
        block = y.detach()
        block_grad = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
        dx = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        stats = torch.zeros(2, dtype=torch.float64, device=x.device)
        for step in range(world):
            gx, gy, st = kernels.backward(x.detach(), block, s, b, kind, total, None, w_row, None)
            dx += gx
            block_grad += gy
            stats += st
            if step < world - 1:
                block, block_grad = _exchange([block, block_grad], group)
            else:
                (block_grad,) = _exchange([block_grad], group)  # the last hop returns it to its owner
        grad_scale = stats[0].to(scale.dtype).reshape(scale.shape)
        grad_bias = stats[1].to(bias.dtype).reshape(bias.shape)
        return dx.to(x.dtype), block_grad.to(y.dtype), grad_scale, grad_bias, None, None, None


def ring_row_statistics(x, y, scale, bias, kind, group=None, backend="auto"):
    if bias is None:
        bias = torch.zeros((), dtype=torch.float32, device=x.device)
    return _RingRowStatistics.apply(x, y, scale, bias, kind, group, backend)
