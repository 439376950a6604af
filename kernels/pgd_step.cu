// CUDA backend of the fused PGD step (contract: csrc/ops/pgd_step.h).
//
// Grid (B, chunks): block (b, c) owns elements [c * chunk, (c + 1) * chunk) of sample b, 256
// threads, each handling 4 independent, coalesced elements per loop trip. Inactive samples'
// blocks return at once.
//   linf : one kernel, 4 transfers (read x, g, x0; write x).
//   l2   : three kernels, no atomics (deterministic):
//          1. per-block partial |g|^2           -> ws[0 : B*chunks]
//          2. every block sums its sample's partials in a fixed order, s = a / (|g| + 1e-10),
//             per-block partial |(x + s g) - x0|^2  -> ws[B*chunks : 2*B*chunks]
//          3. sums those, factor = min(1, eps / |d|), recomputes d and writes C(x0 + factor d).
//          8 transfers (1 + 3 + 4). Partials are fp32 (block tree reduction of fp32 lanes).
// Everything is enqueued on the caller's stream; nothing synchronises the host.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "ops/pgd_step.h"

namespace fmkit {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int64_t kMinChunk = kThreads * kUnroll * 4;  // 4096 elements
constexpr int64_t kMaxChunks = 1024;

template <typename T> struct IO;
template <> struct IO<float> {
  static __device__ __forceinline__ float load(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};
template <> struct IO<__half> {
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(__ldg(p)); }
  static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
};
template <> struct IO<__nv_bfloat16> {
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
};

__device__ __forceinline__ float clampf(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Sum over the block (fp32); the result is valid in every thread.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_part[kThreads / 32];
  __shared__ float total;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < kThreads / 32 ? warp_part[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

// Fixed-order sum of one sample's per-block partials (every thread computes the same value).
__device__ __forceinline__ float sum_partials(const float* p, int64_t n) {
  float s = 0.f;
  for (int64_t k = 0; k < n; ++k) s += p[k];
  return s;
}

struct Range {
  int64_t b, begin, end;
};
__device__ __forceinline__ Range block_range(int64_t N, int64_t chunk) {
  const int64_t b = blockIdx.x, c0 = int64_t(blockIdx.y) * chunk;
  return Range{b, c0, c0 + chunk < N ? c0 + chunk : N};
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pgd_linf_kernel(T* __restrict__ x, const T* __restrict__ g,
                                                            const T* __restrict__ x0, const float* __restrict__ eps,
                                                            const float* __restrict__ alpha,
                                                            const bool* __restrict__ active, float lo, float hi,
                                                            int64_t N, int64_t chunk) {
  const Range r = block_range(N, chunk);
  if (active != nullptr && !active[r.b]) return;
  const float e = eps[r.b], ne = -e, a = alpha[r.b];
  const int64_t off = r.b * N;
  for (int64_t i0 = r.begin + threadIdx.x; i0 < r.end; i0 += kThreads * kUnroll) {
    float xv[kUnroll], gv[kUnroll], zv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * kThreads;
      if (i < r.end) {
        xv[u] = IO<T>::load(x + off + i);
        gv[u] = IO<T>::load(g + off + i);
        zv[u] = IO<T>::load(x0 + off + i);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * kThreads;
      if (i < r.end) {
        const float sg = gv[u] > 0.f ? 1.f : (gv[u] < 0.f ? -1.f : 0.f);
        const float xp = __fadd_rn(xv[u], a * sg);  // a * sg is exact: same as torchattacks' two ops
        const float d = clampf(__fsub_rn(xp, zv[u]), ne, e);
        IO<T>::store(x + off + i, clampf(__fadd_rn(zv[u], d), lo, hi));
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pgd_l2_gsq_kernel(const T* __restrict__ g, const bool* __restrict__ active,
                                                              float* __restrict__ part, int64_t N, int64_t chunk) {
  const Range r = block_range(N, chunk);
  if (active != nullptr && !active[r.b]) return;
  float acc = 0.f;
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads) {
    const float v = IO<T>::load(g + r.b * N + i);
    acc += v * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[r.b * gridDim.y + blockIdx.y] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pgd_l2_dsq_kernel(const T* __restrict__ x, const T* __restrict__ g,
                                                              const T* __restrict__ x0,
                                                              const float* __restrict__ alpha,
                                                              const bool* __restrict__ active,
                                                              const float* __restrict__ gpart,
                                                              float* __restrict__ dpart, int64_t N, int64_t chunk) {
  const Range r = block_range(N, chunk);
  if (active != nullptr && !active[r.b]) return;
  const int64_t nch = gridDim.y;
  const float s = alpha[r.b] / (sqrtf(sum_partials(gpart + r.b * nch, nch)) + 1e-10f);
  const int64_t off = r.b * N;
  float acc = 0.f;
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads) {
    const float d = (IO<T>::load(x + off + i) + s * IO<T>::load(g + off + i)) - IO<T>::load(x0 + off + i);
    acc += d * d;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) dpart[r.b * nch + blockIdx.y] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pgd_l2_write_kernel(T* __restrict__ x, const T* __restrict__ g,
                                                                const T* __restrict__ x0,
                                                                const float* __restrict__ eps,
                                                                const float* __restrict__ alpha,
                                                                const bool* __restrict__ active,
                                                                const float* __restrict__ gpart,
                                                                const float* __restrict__ dpart, float lo, float hi,
                                                                int64_t N, int64_t chunk) {
  const Range r = block_range(N, chunk);
  if (active != nullptr && !active[r.b]) return;
  const int64_t nch = gridDim.y;
  const float s = alpha[r.b] / (sqrtf(sum_partials(gpart + r.b * nch, nch)) + 1e-10f);
  const float q = eps[r.b] / sqrtf(sum_partials(dpart + r.b * nch, nch));  // inf for eps = inf or |d| = 0
  const float f = q < 1.f ? q : 1.f;
  const int64_t off = r.b * N;
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += kThreads) {
    const float z = IO<T>::load(x0 + off + i);
    const float d = (IO<T>::load(x + off + i) + s * IO<T>::load(g + off + i)) - z;
    IO<T>::store(x + off + i, clampf(z + d * f, lo, hi));
  }
}

int64_t chunk_size(int64_t N) {
  int64_t chunk = kMinChunk;
  while ((N + chunk - 1) / chunk > kMaxChunks) chunk *= 2;
  return chunk;
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

template <typename T>
void launch(const Tensor& x, const Tensor& g, const Tensor& x0, const Tensor& eps, const Tensor& alpha,
            const bool* act, PgdNorm norm, float lo, float hi, float* ws, cudaStream_t stream) {
  const int64_t B = x.size(0), N = x.size(1), chunk = chunk_size(N), nch = (N + chunk - 1) / chunk;
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(nch));
  T* xp = x.ptr<T>();
  const T* gp = g.ptr<T>();
  const T* zp = x0.ptr<T>();
  if (norm == PgdNorm::linf) {
    pgd_linf_kernel<T><<<grid, kThreads, 0, stream>>>(xp, gp, zp, eps.ptr<float>(), alpha.ptr<float>(), act, lo, hi,
                                                      N, chunk);
    check_launch("pgd_step linf kernel");
    return;
  }
  float* gpart = ws;
  float* dpart = ws + B * nch;
  pgd_l2_gsq_kernel<T><<<grid, kThreads, 0, stream>>>(gp, act, gpart, N, chunk);
  pgd_l2_dsq_kernel<T><<<grid, kThreads, 0, stream>>>(xp, gp, zp, alpha.ptr<float>(), act, gpart, dpart, N, chunk);
  pgd_l2_write_kernel<T><<<grid, kThreads, 0, stream>>>(xp, gp, zp, eps.ptr<float>(), alpha.ptr<float>(), act,
                                                        gpart, dpart, lo, hi, N, chunk);
  check_launch("pgd_step l2 kernels");
}

}  // namespace

int64_t pgd_step_workspace_floats_cuda(int64_t B, int64_t N) {
  const int64_t chunk = chunk_size(std::max<int64_t>(N, 1));
  return 2 * B * ((N + chunk - 1) / chunk);
}

void pgd_step_cuda(const Tensor& x, const Tensor& g, const Tensor& x0, const Tensor& eps, const Tensor& alpha,
                   const Tensor* active, PgdNorm norm, float lo, float hi, const Tensor& workspace,
                   uintptr_t stream) {
  x.check_device(DeviceKind::cuda);
  pgd_step_check(x, g, x0, eps, alpha, active, lo, hi);
  if (norm != PgdNorm::linf && norm != PgdNorm::l2) fail("norm", "expected linf or l2");
  const int64_t B = x.size(0), N = x.size(1);
  if (B > 0x7fffffffLL) fail(x.name, "batch too large");
  workspace.check_device(DeviceKind::cuda).check_same_device(x).check_dtype({DType::f32}).check_contiguous();
  if (workspace.numel() < pgd_step_workspace_floats_cuda(B, N))
    fail(workspace.name, "needs at least " + std::to_string(pgd_step_workspace_floats_cuda(B, N)) + " floats");
  if (B == 0 || N == 0) return;
  const bool* act = active ? active->ptr<bool>() : nullptr;
  float* ws = workspace.ptr<float>();
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (x.dtype) {
    case DType::f32: launch<float>(x, g, x0, eps, alpha, act, norm, lo, hi, ws, s); break;
    case DType::f16: launch<__half>(x, g, x0, eps, alpha, act, norm, lo, hi, ws, s); break;
    case DType::bf16: launch<__nv_bfloat16>(x, g, x0, eps, alpha, act, norm, lo, hi, ws, s); break;
    default: fail(x.name, "unsupported dtype");
  }
}

}  // namespace fmkit
