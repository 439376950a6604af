// Media-masked text-to-image cross-attention, block-diagonal by image index: the C++ entry
// points of fmkit.ops.media_cross_attention (contract shared with
// python/fmkit/triton/media_cross_attention.py and python/fmkit/reference/media_cross_attention.py).
//
// q [B, H, T, D]; k, v [B, H, n_media * P, D] (P = latents per media, keys of image m are rows
// (m-1)*P ... m*P-1); media_index int64 [B, T] with values in 0..n_media (validated by the caller).
// float32 / float16 / bfloat16 q/k/v (same dtype), any strides.
// Query (b, t) with m = media_index[b, t] >= 1 attends only to the P keys of image m:
//   S = scale * q k_m^T (P scores, fp32),  P = softmax(S),  out = P v_m.
// m == 0: out = 0 exactly, lse = -inf, and no gradient flows from that query.
// forward:  out [B, H, T, D] (input dtype, contiguous), lse [B, H, T] f32.
// backward: given dout (any strides), out and lse:
//   delta = sum_d dout * out;  dS = P * (dout v_m^T - delta);  dq = scale * dS k_m;
//   dk_m += scale * dS^T q;  dv_m += P^T dout   (summed over every query of image m).
//   dq, dk, dv written as f32 contiguous tensors of q's, k's and v's shapes.
#pragma once

#include "../tensor.h"

namespace fmkit {

void media_cross_attention_forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& media_index,
                                       int64_t latents_per_media, float scale, const Tensor& out, const Tensor& lse,
                                       int num_threads);

void media_cross_attention_backward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& media_index,
                                        int64_t latents_per_media, const Tensor& out, const Tensor& lse,
                                        const Tensor& dout, float scale, const Tensor& dq, const Tensor& dk,
                                        const Tensor& dv, int num_threads);

}  // namespace fmkit
