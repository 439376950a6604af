// Contrastive-loss tiles: the C++ entry points of fmkit.ops.clip_loss (contract shared with
// python/fmkit/triton/clip_loss.py and python/fmkit/reference/clip_loss.py).
//
// For X [M, d], Y [N, d] (float32 / float16 / bfloat16, any strides, same dtype) and
//     L_ij = scale * <x_i, y_j> + bias        (fp32 accumulation, never stored as M x N)
// forward:
//     softmax: out_row[i] = log sum_j exp(L_ij)     out_col[j] = log sum_i exp(L_ij) (if has_col)
//     sigmoid: out_row[i] = sum_j softplus(L_ij)    (out_col unused)
// backward, given the forward's row/col statistics and per-row / per-column weights:
//     softmax: G_ij = w_row[i] * exp(L_ij - row[i]) + w_col[j] * exp(L_ij - col[j])
//     sigmoid: G_ij = w_row[i] * sigmoid(L_ij)
//     out_dx = scale * G Y   [M, d] f32,   out_dy = scale * G^T X   [N, d] f32,
//     out_stats = { sum_ij G_ij <x_i, y_j>,  sum_ij G_ij }   [2] f64   (d/dscale, d/dbias)
// The positive (diagonal) terms of the losses are O(M d) and handled by the caller.
#pragma once

#include "../tensor.h"

namespace fmkit {

enum class ContrastiveKind : int { softmax = 0, sigmoid = 1 };

void contrastive_forward_cpu(const Tensor& x, const Tensor& y, float scale, float bias, ContrastiveKind kind,
                             const Tensor& out_row, const Tensor* out_col, int num_threads);

void contrastive_backward_cpu(const Tensor& x, const Tensor& y, float scale, float bias, ContrastiveKind kind,
                              const Tensor& row, const Tensor* col, const Tensor& w_row, const Tensor* w_col,
                              const Tensor& out_dx, const Tensor& out_dy, const Tensor& out_stats, int num_threads);

}  // namespace fmkit
