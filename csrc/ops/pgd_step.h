// Fused in-place PGD step: the C++ entry points of fmkit.ops.pgd_step_ (contract shared with
// python/fmkit/triton/pgd_step.py and python/fmkit/reference/pgd_step.py; spec
// shared/specs/adversarial.md §1.1, §2.3).
//
// x, g, x0: [B, N] contiguous, same dtype (float32 / float16 / bfloat16), x updated in place.
// eps, alpha: float32 [B] contiguous; active: bool [B] contiguous or null (all active).
// Per active sample b, in fp32 (C(v) = min(max(v, lo), hi); lo = -inf / hi = inf: no clamp):
//   linf: x' = x + a sign(g);  d = min(max(x' - x0, -eps), eps);  x <- C(x0 + d)
//         (the torchattacks PGD formula, op by op, so fp32 results equal it bitwise)
//   l2:   s = a / (|g|_2 + 1e-10);  d = (x + s g) - x0;  d <- d min(1, eps / |d|_2);  x <- C(x0 + d)
// sign(0) = 0. eps = inf never projects. Inactive samples are not touched (bit-identical).
// Norms accumulate in fp32: fixed 4096-element chunks summed in vector lanes, chunk partials
// summed in double in chunk order, so results do not depend on the thread count.
// 16-bit x is rounded once (to nearest even) on store.
#pragma once

#include <cstdint>

#include "../tensor.h"

namespace fmkit {

enum class PgdNorm : int { linf = 0, l2 = 1 };

void pgd_step_cpu(const Tensor& x, const Tensor& g, const Tensor& x0, const Tensor& eps, const Tensor& alpha,
                  const Tensor* active, PgdNorm norm, float lo, float hi, int num_threads);

#ifdef FMKIT_WITH_CUDA
// Same contract on CUDA tensors, enqueued on `stream` (a cudaStream_t passed as an integer).
// `workspace`: contiguous float32 CUDA buffer of at least pgd_step_workspace_floats_cuda(B, N)
// elements (per-block partial norms of the l2 passes; unused by linf). Deterministic (no atomics);
// nothing synchronises the host, so the call can be captured in a CUDA graph.
int64_t pgd_step_workspace_floats_cuda(int64_t B, int64_t N);
void pgd_step_cuda(const Tensor& x, const Tensor& g, const Tensor& x0, const Tensor& eps, const Tensor& alpha,
                   const Tensor* active, PgdNorm norm, float lo, float hi, const Tensor& workspace, uintptr_t stream);
#endif

// Argument checks shared by both entry points (throws std::invalid_argument naming the argument).
inline void pgd_step_check(const Tensor& x, const Tensor& g, const Tensor& x0, const Tensor& eps,
                           const Tensor& alpha, const Tensor* active, float lo, float hi) {
  x.check_dim(2).check_dtype({DType::f32, DType::f16, DType::bf16}).check_contiguous();
  const int64_t B = x.size(0), N = x.size(1);
  for (const Tensor* t : {&g, &x0}) {
    t->check_same_device(x).check_dtype({x.dtype}).check_shape({B, N}).check_contiguous();
  }
  for (const Tensor* t : {&eps, &alpha}) {
    t->check_same_device(x).check_dtype({DType::f32}).check_shape({B}).check_contiguous();
  }
  if (active) active->check_same_device(x).check_dtype({DType::boolean}).check_shape({B}).check_contiguous();
  if (!(lo <= hi)) fail("clamp", "expected low <= high");
}

}  // namespace fmkit
