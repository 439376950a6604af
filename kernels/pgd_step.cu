// CUDA backend of the fused PGD step (contract: csrc/ops/pgd_step.h).
//
// Memory floors (E = B*N elements, s = element size; one "transfer" = E*s bytes):
//   linf: read x, g, x0 + write x                        = 4 transfers (the best possible).
//   l2  : |d|^2 = |u|^2 + 2 s <u,g> + s^2 |g|^2 with u = x - x0, so one read pass over x, g, x0
//         yields every per-sample sum the update needs (|g|^2, |u|^2, <u,g>), and one update
//         pass reads x, g, x0 and writes x                = 7 transfers (torch.compile: 8, since its
//         second reduction needs |g| first). The expansion cancels only when |d| << |u| + s|g|,
//         and there the projection factor is 1 unless eps << |d| too; the per-sample sums are
//         combined in double to keep the cancellation at fp32-partial accuracy.
//
// Kernels:
//   linf: per-sample (B, chunks) grid (pgd_linf_kernel); 16-byte vectors when the pointers are
//     aligned and N is a multiple of the vector width, else scalar coalesced accesses (see there
//     for why not the flat map).
//   map (l2 update): persistent grid (SM count x resident blocks), grid-stride over
//     16-byte vectors of the flattened [B*N] tensors, kUnroll vectors of each tensor in flight per
//     thread. The flat layout keeps every SM busy to the last vector whatever B and N are
//     (256 samples of 150528 elements would leave ragged per-sample tails with a (B, chunk) grid).
//     A vector's sample is e / N (32-bit division while B*N < 2^31); a vector that straddles two
//     samples (N not a multiple of the vector width) falls back to per-element parameters.
//     The l2 update walks the vectors backwards: the reduction pass ran forwards, so the last
//     tens of MB it read are still in L2 when the update starts.
//   l2 reduce: one block per (sample, 8192-element chunk), so even B = 1 spreads over many SMs;
//     scalar head and tail around the 16-byte-aligned body. Writes 3 fp32 partials per block.
//   l2 finalize: one warp per sample sums its partials in a fixed order (double) and stores
//     s = a / (|g| + 1e-10) and f = min(1, eps / |d|). No atomics: results are deterministic.
// Pointers that are not all 16-byte aligned (sliced views) use the same kernels with 1-element
// "vectors". Everything is enqueued on the caller's stream; nothing synchronises the host, and
// the only allocation is the caller's workspace, so the call can be captured in a CUDA graph.
//
// Measured on an H100 80GB HBM3, 256x3x224x224, 2026-11-26 (torch.compile of the torchattacks
// step in brackets): linf fp32 0.316 ms (0.258), bf16 0.224 ms (0.151) with pgd_linf_kernel;
// l2 fp32 0.474 ms (0.461), bf16 0.282 ms (0.274) with the reduce + finalize + map design.
// The byte floors at 3.0 TB/s are 0.205 / 0.103 ms (linf) and 0.36 / 0.18 ms (l2): linf is
// 1.5-2x off its floor. On an H200 (2026-12-04, A/B script benchmarks/gpu_pgd_linf_ab.py) the
// 16-byte vectors left fp32 as it was (0.304 vs 0.305 ms) and made bf16 18% faster (0.220 vs
// 0.269 ms); torch.compile took 0.200 / 0.139 ms against floors of 0.149 / 0.075 ms at 4.13 TB/s.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "ops/pgd_step.h"

namespace fmkit {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;                 // map kernels: 3 * 2 16-byte loads in flight per thread
constexpr int kRedUnroll = 4;              // reduce kernel: 3 * 4 (no stores to wait for)
constexpr int64_t kRedChunk = 8192;        // multiple of kThreads * 8 (the widest vector)
constexpr int64_t kMaxChunks = 1024;       // bounds the finalize kernel's work per sample
constexpr int kLinfUnroll = 4;             // linf kernel: 4 scalar elements of each tensor per trip
constexpr int64_t kLinfMinChunk = kThreads * kLinfUnroll * 4;  // 4096 elements

template <typename T> struct Cvt;
template <> struct Cvt<float> {
  static __device__ __forceinline__ float in(float v) { return v; }
  static __device__ __forceinline__ float out(float v) { return v; }
};
template <> struct Cvt<__half> {
  static __device__ __forceinline__ float in(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half out(float v) { return __float2half_rn(v); }
};
template <> struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float in(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 out(float v) { return __float2bfloat16_rn(v); }
};

// The integer type one load of V elements of T moves (so the compiler emits one LDG/STG of that width).
template <int Bytes> struct Raw;
template <> struct Raw<16> { using type = uint4; };
template <> struct Raw<8> { using type = uint2; };
template <> struct Raw<4> { using type = unsigned int; };
template <> struct Raw<2> { using type = unsigned short; };

template <typename T, int V>
using RawT = typename Raw<sizeof(T) * V>::type;

// Loads stay in their raw (packed) form until used: 16-bit data then costs half the registers
// of converted floats, which keeps occupancy up with all loads of a trip in flight.
// x is read and then written by the same thread, so it must not go through the read-only path;
// g and x0 are never written during the kernel and may.
template <typename T, int V, bool ReadOnly>
__device__ __forceinline__ RawT<T, V> load_raw(const T* p) {
  using R = RawT<T, V>;
  return ReadOnly ? __ldg(reinterpret_cast<const R*>(p)) : *reinterpret_cast<const R*>(p);
}

template <typename T, int V>
__device__ __forceinline__ float elem(const RawT<T, V>& r, int j) {
  return Cvt<T>::in(reinterpret_cast<const T*>(&r)[j]);
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[V]) {
  using R = typename Raw<sizeof(T) * V>::type;
  R r;
  T* e = reinterpret_cast<T*>(&r);
#pragma unroll
  for (int j = 0; j < V; ++j) e[j] = Cvt<T>::out(v[j]);
  *reinterpret_cast<R*>(p) = r;
}

__host__ __device__ __forceinline__ float clampf(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Per-sample update rules. `params` is read once per vector (an L1 hit: samples are long runs).
struct LinfOp {
  const float* eps;
  const float* alpha;
  float lo, hi;
  struct P {
    float e, a;
  };
  __device__ __forceinline__ P params(int64_t b) const { return P{__ldg(eps + b), __ldg(alpha + b)}; }
  __device__ __forceinline__ float apply(const P& p, float x, float g, float z) const {
    const float sg = g > 0.f ? 1.f : (g < 0.f ? -1.f : 0.f);
    // Explicit roundings: no fma contraction, so fp32 equals torchattacks' op-by-op result
    // (a * sg is exact).
    const float xp = __fadd_rn(x, p.a * sg);
    const float d = clampf(__fsub_rn(xp, z), -p.e, p.e);
    return clampf(__fadd_rn(z, d), lo, hi);
  }
};

struct L2Op {
  const float* sf;  // [2, B]: step scale s, projection factor f (from the finalize kernel)
  int64_t B;
  float lo, hi;
  struct P {
    float s, f;
  };
  __device__ __forceinline__ P params(int64_t b) const { return P{__ldg(sf + b), __ldg(sf + B + b)}; }
  __device__ __forceinline__ float apply(const P& p, float x, float g, float z) const {
    const float d = (x + p.s * g) - z;
    return clampf(z + d * p.f, lo, hi);
  }
};

// One element, sample looked up on its own: vectors that straddle samples and the flat tail.
template <typename T, typename I, typename Op>
__device__ __forceinline__ void map_scalar(T* x, const T* g, const T* x0, const bool* active, const Op& op, I N,
                                           I e) {
  const I b = e / N;
  if (active != nullptr && !active[b]) return;
  const float xv = Cvt<T>::in(x[e]), gv = Cvt<T>::in(__ldg(g + e)), zv = Cvt<T>::in(__ldg(x0 + e));
  x[e] = Cvt<T>::out(op.apply(op.params(b), xv, gv, zv));
}

// Elementwise pass over the flat [B*N] tensors (pointers aligned to V elements).
// I: uint32_t when B*N < 2^31 (cheap division for the sample index), else uint64_t.
template <typename T, int V, typename I, bool Reverse, typename Op>
__global__ void __launch_bounds__(kThreads) pgd_map_kernel(T* __restrict__ x, const T* __restrict__ g,
                                                           const T* __restrict__ x0, const bool* __restrict__ active,
                                                           Op op, I N, I nvec, I total) {
  const I stride = I(gridDim.x) * (kThreads * kUnroll);
  for (I v0 = I(blockIdx.x) * (kThreads * kUnroll) + threadIdx.x; v0 < nvec; v0 += stride) {
    RawT<T, V> xv[kUnroll], gv[kUnroll], zv[kUnroll];
    typename Op::P p[kUnroll];
    I vi[kUnroll];
    bool in_range[kUnroll], whole[kUnroll], run[kUnroll];
    // All loads of the trip first, so 3 * kUnroll independent 16-byte loads are in flight.
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const I v = v0 + I(u * kThreads);
      in_range[u] = v < nvec;
      vi[u] = Reverse ? nvec - 1 - v : v;
      const I e = vi[u] * V;
      const I b = e / N;
      whole[u] = e - b * N + V <= N;  // the vector lies in one sample
      run[u] = in_range[u] && whole[u] && (active == nullptr || active[b]);
      if (run[u]) {
        p[u] = op.params(b);
        xv[u] = load_raw<T, V, false>(x + e);
        gv[u] = load_raw<T, V, true>(g + e);
        zv[u] = load_raw<T, V, true>(x0 + e);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const I e = vi[u] * V;
      if (run[u]) {
        float o[V];
#pragma unroll
        for (int j = 0; j < V; ++j)
          o[j] = op.apply(p[u], elem<T, V>(xv[u], j), elem<T, V>(gv[u], j), elem<T, V>(zv[u], j));
        store_vec<T, V>(x + e, o);
      } else if (in_range[u] && !whole[u]) {
        for (int j = 0; j < V; ++j) map_scalar<T, I, Op>(x, g, x0, active, op, N, e + I(j));
      }
    }
  }
  // The last total % V elements (fewer than V): first threads of the grid.
  const I t = I(blockIdx.x) * kThreads + threadIdx.x, e = nvec * V + t;
  if (t < I(V) && e < total) map_scalar<T, I, Op>(x, g, x0, active, op, N, e);
}

// linf: grid (B, chunks), block (b, c) owns vectors [c * chunk, (c + 1) * chunk) of sample b and
// each thread moves kLinfUnroll coalesced vectors of each tensor per trip. V = 16 / sizeof(T)
// (3 * kLinfUnroll 16-byte loads in flight) when the three pointers are 16-byte aligned and the
// samples start on a vector boundary (N % V == 0); V = 1 (scalar, the design measured on an H100
// on 2026-11-26) otherwise. The flat persistent map kernel below measured slower for linf
// (0.503 vs 0.316 ms fp32 on the H100; not understood), so only the l2 update uses the map.
// `nv` and `chunk` count vectors.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) pgd_linf_kernel(T* __restrict__ x, const T* __restrict__ g,
                                                                const T* __restrict__ x0, LinfOp op,
                                                                const bool* __restrict__ active, int64_t nv,
                                                                int64_t chunk) {
  const int64_t b = blockIdx.x, begin = int64_t(blockIdx.y) * chunk;
  const int64_t end = begin + chunk < nv ? begin + chunk : nv;
  if (active != nullptr && !active[b]) return;
  const LinfOp::P p = op.params(b);
  const int64_t off = b * nv * V;
  for (int64_t i0 = begin + threadIdx.x; i0 < end; i0 += kThreads * kLinfUnroll) {
    RawT<T, V> xv[kLinfUnroll], gv[kLinfUnroll], zv[kLinfUnroll];
#pragma unroll
    for (int u = 0; u < kLinfUnroll; ++u) {
      const int64_t i = i0 + u * kThreads;
      if (i < end) {
        xv[u] = load_raw<T, V, false>(x + off + i * V);
        gv[u] = load_raw<T, V, true>(g + off + i * V);
        zv[u] = load_raw<T, V, true>(x0 + off + i * V);
      }
    }
#pragma unroll
    for (int u = 0; u < kLinfUnroll; ++u) {
      const int64_t i = i0 + u * kThreads;
      if (i < end) {
        float o[V];
#pragma unroll
        for (int j = 0; j < V; ++j)
          o[j] = op.apply(p, elem<T, V>(xv[u], j), elem<T, V>(gv[u], j), elem<T, V>(zv[u], j));
        store_vec<T, V>(x + off + i * V, o);
      }
    }
  }
}

// Split of the flat element range [e0, e1) into a scalar head [e0, head_end), 16-byte vectors
// [vb, ve) (vector indices) and a scalar tail [tail_begin, e1). Host-callable for the emulation test.
struct TileSplit {
  int64_t head_end, vb, ve, tail_begin;
};
__host__ __device__ __forceinline__ TileSplit split_tile(int64_t e0, int64_t e1, int64_t V) {
  const int64_t vb = (e0 + V - 1) / V, ve = e1 / V;
  if (vb > ve) return TileSplit{e1, 0, 0, e1};  // inside one vector, touching neither edge
  return TileSplit{vb * V, vb, ve, ve * V};
}

// Sum over the block of NV values (fp32, fixed tree); valid in thread 0.
template <int NV>
__device__ __forceinline__ void block_sum(float (&v)[NV]) {
  __shared__ float part[NV][kThreads / 32];
#pragma unroll
  for (int k = 0; k < NV; ++k)
    for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0)
    for (int k = 0; k < NV; ++k) part[k][warp] = v[k];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      float w = lane < kThreads / 32 ? part[k][lane] : 0.f;
      for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
      v[k] = w;
    }
  }
}

// Block t = b * nch + c: partial |g|^2, |u|^2, <u, g> (u = x - x0) of chunk c of sample b.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) pgd_l2_reduce_kernel(const T* __restrict__ x, const T* __restrict__ g,
                                                                 const T* __restrict__ x0,
                                                                 const bool* __restrict__ active,
                                                                 float* __restrict__ part, int64_t N, int64_t chunk,
                                                                 int64_t nch) {
  const int64_t t = blockIdx.x, b = t / nch, c = t - b * nch;
  if (active != nullptr && !active[b]) return;
  const int64_t e0 = b * N + c * chunk, e1 = b * N + ((c + 1) * chunk < N ? (c + 1) * chunk : N);
  const TileSplit s = split_tile(e0, e1, V);
  float acc[3] = {0.f, 0.f, 0.f};  // gg, uu, ug
  auto add = [&acc](float xv, float gv, float zv) {
    const float u = xv - zv;
    acc[0] += gv * gv;
    acc[1] += u * u;
    acc[2] += u * gv;
  };
  for (int64_t v0 = s.vb + threadIdx.x; v0 < s.ve; v0 += kThreads * kRedUnroll) {
    RawT<T, V> xv[kRedUnroll], gv[kRedUnroll], zv[kRedUnroll];
#pragma unroll
    for (int u = 0; u < kRedUnroll; ++u) {
      const int64_t v = v0 + u * kThreads;
      if (v < s.ve) {
        xv[u] = load_raw<T, V, true>(x + v * V);
        gv[u] = load_raw<T, V, true>(g + v * V);
        zv[u] = load_raw<T, V, true>(x0 + v * V);
      }
    }
#pragma unroll
    for (int u = 0; u < kRedUnroll; ++u)
      if (v0 + u * kThreads < s.ve)
#pragma unroll
        for (int j = 0; j < V; ++j) add(elem<T, V>(xv[u], j), elem<T, V>(gv[u], j), elem<T, V>(zv[u], j));
  }
  // Head and tail hold fewer than V elements each.
  int64_t e = s.head_end - e0 > threadIdx.x ? e0 + threadIdx.x : -1;
  if (e >= 0) add(Cvt<T>::in(__ldg(x + e)), Cvt<T>::in(__ldg(g + e)), Cvt<T>::in(__ldg(x0 + e)));
  e = e1 - s.tail_begin > threadIdx.x ? s.tail_begin + threadIdx.x : -1;
  if (e >= 0) add(Cvt<T>::in(__ldg(x + e)), Cvt<T>::in(__ldg(g + e)), Cvt<T>::in(__ldg(x0 + e)));
  block_sum<3>(acc);
  if (threadIdx.x == 0)
    for (int k = 0; k < 3; ++k) part[t * 3 + k] = acc[k];
}

// s and f of one sample from its summed |g|^2, |u|^2, <u, g> (host-callable for the emulation test).
struct L2Factors {
  float s, f;
};
__host__ __device__ __forceinline__ L2Factors l2_factors(double gg, double uu, double ug, float a, float e) {
  const float s = a / (static_cast<float>(sqrt(gg)) + 1e-10f);
  double dd = uu + 2.0 * s * ug + double(s) * s * gg;  // |(x + s g) - x0|^2, with the s actually applied
  dd = dd < 0.0 ? 0.0 : dd;                             // rounding; keeps NaN
  const double q = double(e) / sqrt(dd);                // inf for eps = inf or |d| = 0
  return L2Factors{s, q < 1.0 ? static_cast<float>(q) : 1.f};  // NaN (0 / 0) -> 1, as before
}

__global__ void __launch_bounds__(kThreads) pgd_l2_finalize_kernel(const float* __restrict__ part,
                                                                   const float* __restrict__ eps,
                                                                   const float* __restrict__ alpha,
                                                                   const bool* __restrict__ active,
                                                                   float* __restrict__ sf, int64_t B, int64_t nch) {
  const int64_t b = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (b >= B || (active != nullptr && !active[b])) return;  // uniform per warp
  double sum[3] = {0.0, 0.0, 0.0};
  for (int64_t c = lane; c < nch; c += 32)
    for (int k = 0; k < 3; ++k) sum[k] += part[(b * nch + c) * 3 + k];
  for (int k = 0; k < 3; ++k)
    for (int o = 16; o > 0; o >>= 1) sum[k] += __shfl_xor_sync(0xffffffffu, sum[k], o);
  if (lane == 0) {
    const L2Factors r = l2_factors(sum[0], sum[1], sum[2], alpha[b], eps[b]);
    sf[b] = r.s;
    sf[B + b] = r.f;
  }
}

int64_t linf_chunk_size(int64_t N) {
  int64_t chunk = kLinfMinChunk;
  while ((N + chunk - 1) / chunk > kMaxChunks) chunk *= 2;
  return chunk;
}

int64_t chunk_size(int64_t N) {
  int64_t chunk = kRedChunk;
  while ((N + chunk - 1) / chunk > kMaxChunks) chunk *= 2;
  return chunk;
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    check_launch("pgd_step: device query");
  return std::max(n, 1);
}

// Persistent grid: as many blocks as can be resident, fewer when there is less work.
template <typename Kernel>
unsigned map_grid(Kernel kernel, uint64_t nvec) {
  static int resident = 0;  // per instantiation; the same on every device of one architecture
  if (resident == 0) {
    int nb = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, kernel, kThreads, 0) != cudaSuccess)
      check_launch("pgd_step: occupancy query");
    resident = std::max(nb, 1);
  }
  const uint64_t per_block = uint64_t(kThreads) * kUnroll;
  const uint64_t want = std::max<uint64_t>((nvec + per_block - 1) / per_block, 1);
  return static_cast<unsigned>(std::min<uint64_t>(want, uint64_t(sm_count()) * resident));
}

template <typename T, int V, bool Reverse, typename Op>
void launch_map(T* x, const T* g, const T* x0, const bool* act, const Op& op, int64_t N, int64_t total,
                cudaStream_t stream) {
  const int64_t nvec = total / V;
  if (total < (int64_t(1) << 31)) {
    auto k = pgd_map_kernel<T, V, uint32_t, Reverse, Op>;
    k<<<map_grid(k, nvec), kThreads, 0, stream>>>(x, g, x0, act, op, uint32_t(N), uint32_t(nvec), uint32_t(total));
  } else {
    auto k = pgd_map_kernel<T, V, uint64_t, Reverse, Op>;
    k<<<map_grid(k, nvec), kThreads, 0, stream>>>(x, g, x0, act, op, uint64_t(N), uint64_t(nvec), uint64_t(total));
  }
}

template <typename T, int V>
void launch_v(T* x, const T* g, const T* x0, const float* eps, const float* alpha, const bool* act, PgdNorm norm,
              float lo, float hi, float* ws, int64_t B, int64_t N, cudaStream_t stream) {
  const int64_t total = B * N;
  const int64_t chunk = chunk_size(N), nch = (N + chunk - 1) / chunk;
  float* part = ws;             // [B, nch, 3]
  float* sf = ws + 3 * B * nch;  // [2, B]
  pgd_l2_reduce_kernel<T, V><<<static_cast<unsigned>(B * nch), kThreads, 0, stream>>>(x, g, x0, act, part, N,
                                                                                      chunk, nch);
  pgd_l2_finalize_kernel<<<static_cast<unsigned>((B * 32 + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      part, eps, alpha, act, sf, B, nch);
  launch_map<T, V, true>(x, g, x0, act, L2Op{sf, B, lo, hi}, N, total, stream);
  check_launch("pgd_step l2 kernels");
}

template <typename T>
void launch(const Tensor& x, const Tensor& g, const Tensor& x0, const Tensor& eps, const Tensor& alpha,
            const bool* act, PgdNorm norm, float lo, float hi, float* ws, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t B = x.size(0), N = x.size(1);
  T* xp = x.ptr<T>();
  const T* gp = g.ptr<T>();
  const T* zp = x0.ptr<T>();
  const uintptr_t addr = reinterpret_cast<uintptr_t>(xp) | reinterpret_cast<uintptr_t>(gp) |
                         reinterpret_cast<uintptr_t>(zp);
  if (norm == PgdNorm::linf) {
    const int64_t chunk = linf_chunk_size(N);
    const LinfOp op{eps.ptr<float>(), alpha.ptr<float>(), lo, hi};
    // FMKIT_PGD_LINF_SCALAR=1 keeps the scalar kernel (for A/B timing on a GPU).
    static const bool scalar_only = std::getenv("FMKIT_PGD_LINF_SCALAR") != nullptr;
    if (addr % 16 == 0 && N % kVec == 0 && !scalar_only) {
      const int64_t nv = N / kVec, chunk_v = std::max<int64_t>(chunk / kVec, kThreads * kLinfUnroll);
      const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>((nv + chunk_v - 1) / chunk_v));
      pgd_linf_kernel<T, kVec><<<grid, kThreads, 0, stream>>>(xp, gp, zp, op, act, nv, chunk_v);
    } else {
      const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>((N + chunk - 1) / chunk));
      pgd_linf_kernel<T, 1><<<grid, kThreads, 0, stream>>>(xp, gp, zp, op, act, N, chunk);
    }
    check_launch("pgd_step linf kernel");
    return;
  }
  if (addr % 16 == 0)
    launch_v<T, kVec>(xp, gp, zp, eps.ptr<float>(), alpha.ptr<float>(), act, norm, lo, hi, ws, B, N, stream);
  else  // a sliced view: correct, not fast
    launch_v<T, 1>(xp, gp, zp, eps.ptr<float>(), alpha.ptr<float>(), act, norm, lo, hi, ws, B, N, stream);
}

}  // namespace

int64_t pgd_step_workspace_floats_cuda(int64_t B, int64_t N) {
  const int64_t chunk = chunk_size(std::max<int64_t>(N, 1));
  return 3 * B * ((N + chunk - 1) / chunk) + 2 * B;
}

void pgd_step_cuda(const Tensor& x, const Tensor& g, const Tensor& x0, const Tensor& eps, const Tensor& alpha,
                   const Tensor* active, PgdNorm norm, float lo, float hi, const Tensor& workspace,
                   uintptr_t stream) {
  x.check_device(DeviceKind::cuda);
  pgd_step_check(x, g, x0, eps, alpha, active, lo, hi);
  if (norm != PgdNorm::linf && norm != PgdNorm::l2) fail("norm", "expected linf or l2");
  const int64_t B = x.size(0), N = x.size(1);
  workspace.check_device(DeviceKind::cuda).check_same_device(x).check_dtype({DType::f32}).check_contiguous();
  if (workspace.numel() < pgd_step_workspace_floats_cuda(B, N))
    fail(workspace.name, "needs at least " + std::to_string(pgd_step_workspace_floats_cuda(B, N)) + " floats");
  if (B == 0 || N == 0) return;
  // One reduce block per (sample, chunk) on grid.x.
  if (B * ((N + chunk_size(N) - 1) / chunk_size(N)) > 0x7fffffffLL) fail(x.name, "batch too large");
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
