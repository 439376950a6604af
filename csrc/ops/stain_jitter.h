// Fused HED stain colour jitter: the C++ entry point of fmkit.ops.stain_jitter (contract shared with
// python/fmkit/triton/stain_jitter.py and python/fmkit/reference/stain_jitter.py; spec
// shared/specs/augment_diversity_equity.md §1.2.3).
//
// images: [B, 3, H, W] uint8 or float32, any strides (uint8 reads as v / 255).
// coef:   float32 [B, 12] contiguous: per image the folded 3x3 matrix A (row-major, A[k][c]) and the
//         bias b[3] of the whole HED chain. With M the stain matrix, A = M^-1 diag(alpha) M and
//         b = beta M (Python computes them in float64 and rounds once).
// out:    [B, 3, H, W] contiguous, images' dtype.
// Per pixel p (rgb row vector), s = scale (1: optical density, 255: the release's quirk):
//   od = -ln(s p + eps);   out = clip((exp(-(od A + b)) - eps) / s, 0, 1)
// which is S = od M^-1, S' = alpha S + beta, out = (exp(-S' M) - eps) / s with the two 3x3 products
// folded into one. uint8 results are round(255 out), ties to even. fp32 throughout; vector log and
// exp are polynomials (relative error ~1e-7), so results match the float64 reference to ~1e-6.
#pragma once

#include "../tensor.h"

namespace fmkit {

void stain_jitter_cpu(const Tensor& images, const Tensor& coef, const Tensor& out, float scale, float eps,
                      int num_threads);

inline void stain_jitter_check(const Tensor& images, const Tensor& coef, const Tensor& out, float scale,
                               float eps) {
  images.check_dim(4).check_dtype({DType::u8, DType::f32});
  if (images.size(1) != 3) fail(images.name, "expected 3 (RGB) channels in dim 1");
  const int64_t B = images.size(0), H = images.size(2), W = images.size(3);
  coef.check_same_device(images).check_dtype({DType::f32}).check_shape({B, 12}).check_contiguous();
  out.check_same_device(images).check_dtype({images.dtype}).check_shape({B, 3, H, W}).check_contiguous();
  if (!(scale > 0.f)) fail("scale", "expected a positive value");
  if (!(eps > 0.f)) fail("eps", "expected a positive value");
}

}  // namespace fmkit
