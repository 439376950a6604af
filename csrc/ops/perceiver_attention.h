// Perceiver cross-attention with two-source keys/values: the C++ entry points of
// fmkit.ops.perceiver_attention (contract shared with python/fmkit/triton/perceiver_attention.py
// and python/fmkit/reference/perceiver_attention.py).
//
// q [B, H, L, D]; media keys/values km, vm [B, H, M, D]; latent keys/values kl, vl [B, H, L2, D];
// float32 / float16 / bfloat16 (all the same dtype), any strides.
// Each query row attends over the M media keys followed by the L2 latent keys, as if they were
// concatenated (they never are):  S = scale * q [km; kl]^T,  P = softmax(S) (fp32),  out = P [vm; vl].
// forward:  out [B, H, L, D] (input dtype, contiguous), lse [B, H, L] f32 (log-sum-exp of S rows).
// backward: given dout [B, H, L, D] (any strides, input dtype), out and lse from the forward:
//   delta_i = sum_d dout_id * out_id;  dP = dout [vm; vl]^T;  dS = P * (dP - delta);
//   dq = scale * dS [km; kl];  [dkm; dkl] = scale * dS^T q;  [dvm; dvl] = P^T dout.
//   All gradients are written as f32 contiguous tensors of the matching shapes.
#pragma once

#include "../tensor.h"

namespace fmkit {

void perceiver_attention_forward_cpu(const Tensor& q, const Tensor& km, const Tensor& vm, const Tensor& kl,
                                     const Tensor& vl, float scale, const Tensor& out, const Tensor& lse,
                                     int num_threads);

void perceiver_attention_backward_cpu(const Tensor& q, const Tensor& km, const Tensor& vm, const Tensor& kl,
                                      const Tensor& vl, const Tensor& out, const Tensor& lse, const Tensor& dout,
                                      float scale, const Tensor& dq, const Tensor& dkm, const Tensor& dvm,
                                      const Tensor& dkl, const Tensor& dvl, int num_threads);

}  // namespace fmkit
