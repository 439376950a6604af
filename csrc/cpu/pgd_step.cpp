// CPU backend of the fused PGD step (contract: csrc/ops/pgd_step.h).
//
// Work is cut into (sample, 4096-element chunk) units. With at least as many samples as threads,
// each thread owns whole samples and runs every pass of a sample back to back (the sample's
// x / g / x0, ~1.8 MB at 3x224x224 fp32, are still in L2/L3 for the next pass); otherwise the
// chunks of one sample are spread over the threads pass by pass. Both modes use the same chunk
// partials, so results are identical. Inner loops are plain float loops over one chunk that the
// compiler vectorises (-O3 -march=native); 16-bit storage is widened on load.
#include "cpu/dispatch.h"
#include "ops/pgd_step.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/simd.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace {

using simd::bf16;
using simd::f16;
constexpr int64_t kChunk = 4096;

struct Params {
  float eps, alpha, lo, hi;
};

template <typename T>
inline void load_chunk(const T* p, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = simd::load_as_float(p + i);
}

// sum of squares of n floats, fp32 lanes (fixed association: 16 lanes then a fixed tree).
inline double sumsq(const float* v, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += v[i + l] * v[i + l];
  for (int l = 0; i < n; ++i, ++l) acc[l] += v[i] * v[i];
  double s = 0;
  for (int l = 0; l < 16; ++l) s += acc[l];
  return s;
}

// One sample's kernels, templated on the storage type. Each works on [begin, end) of the sample.
template <typename T>
struct Sample {
  T* x;
  const T* g;
  const T* x0;

  void linf(int64_t b0, int64_t b1, Params p) const {
    float xs[kChunk], gs[kChunk], zs[kChunk];
    for (int64_t c = b0; c < b1; c += kChunk) {
      const int64_t n = std::min(kChunk, b1 - c);
      load_chunk(x + c, xs, n);
      load_chunk(g + c, gs, n);
      load_chunk(x0 + c, zs, n);
      const float a = p.alpha, e = p.eps, ne = -p.eps, lo = p.lo, hi = p.hi;
      // Explicit vectors: GCC left the scalar loop below unvectorised with AVX2 flags (4x slower
      // than AVX-512 and 2x slower than SSE2 at 64x3x224x224). Same operations per element, so
      // every level writes the same bits.
      int64_t i = 0;
      using simd::vfloat;
      for (; i + simd::VW <= n; i += simd::VW) {
        const vfloat gv = simd::vload(gs + i), z = simd::vload(zs + i);
        const vfloat sg = gv > 0.f ? simd::splat(1.f) : (gv < 0.f ? simd::splat(-1.f) : vfloat{});
        vfloat d = (simd::vload(xs + i) + a * sg) - z;
        d = d < ne ? simd::splat(ne) : d;
        d = d > e ? simd::splat(e) : d;
        vfloat v = z + d;
        v = v < lo ? simd::splat(lo) : v;
        v = v > hi ? simd::splat(hi) : v;
        simd::vstore(xs + i, v);
      }
      for (; i < n; ++i) {
        const float sg = gs[i] > 0.f ? 1.f : (gs[i] < 0.f ? -1.f : 0.f);
        const float xp = xs[i] + a * sg;
        float d = xp - zs[i];
        d = d < ne ? ne : d;
        d = d > e ? e : d;
        float v = zs[i] + d;
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
        xs[i] = v;
      }
      for (int64_t i = 0; i < n; ++i) simd::store_as(x + c + i, xs[i]);
    }
  }

  double grad_sq(int64_t c, int64_t n) const {
    float gs[kChunk];
    load_chunk(g + c, gs, n);
    return sumsq(gs, n);
  }

  // d = (x + s g) - x0 into ds; returns sum d^2.
  double delta(int64_t c, int64_t n, float s, float* ds) const {
    float xs[kChunk], gs[kChunk];
    load_chunk(x + c, xs, n);
    load_chunk(g + c, gs, n);
    load_chunk(x0 + c, ds, n);
    for (int64_t i = 0; i < n; ++i) ds[i] = (xs[i] + s * gs[i]) - ds[i];
    return sumsq(ds, n);
  }

  void l2_write(int64_t c, int64_t n, float s, float factor, float lo, float hi) const {
    float ds[kChunk], zs[kChunk];
    delta(c, n, s, ds);  // recomputed: one pass less traffic than storing d
    load_chunk(x0 + c, zs, n);
    for (int64_t i = 0; i < n; ++i) {
      float v = zs[i] + ds[i] * factor;
      v = v < lo ? lo : v;
      v = v > hi ? hi : v;
      ds[i] = v;
    }
    for (int64_t i = 0; i < n; ++i) simd::store_as(x + c + i, ds[i]);
  }
};

inline float l2_scale(double gsq, float alpha) {
  return alpha / (static_cast<float>(std::sqrt(gsq)) + 1e-10f);
}
inline float l2_factor(double dsq, float eps) {
  const float dn = static_cast<float>(std::sqrt(dsq));
  const float f = eps / dn;  // eps/0 = inf, inf/dn = inf: factor 1 (no projection)
  return f < 1.f ? f : 1.f;
}

template <typename T>
void run(const Tensor& xt, const Tensor& gt, const Tensor& x0t, const float* eps, const float* alpha,
         const bool* active, PgdNorm norm, float lo, float hi, int num_threads) {
  const int64_t B = xt.size(0), N = xt.size(1);
  const int64_t nchunks = (N + kChunk - 1) / kChunk;
  auto sample = [&](int64_t b) {
    return Sample<T>{xt.ptr<T>() + b * N, gt.ptr<T>() + b * N, x0t.ptr<T>() + b * N};
  };
  const int threads = std::max(1, num_threads);
  if (B >= threads || nchunks == 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t b = 0; b < B; ++b) {
      if (active && !active[b]) continue;
      const Sample<T> s = sample(b);
      if (norm == PgdNorm::linf) {
        s.linf(0, N, Params{eps[b], alpha[b], lo, hi});
        continue;
      }
      double gsq = 0, dsq = 0;
      for (int64_t c = 0; c < N; c += kChunk) gsq += s.grad_sq(c, std::min(kChunk, N - c));
      const float sc = l2_scale(gsq, alpha[b]);
      float tmp[kChunk];
      for (int64_t c = 0; c < N; c += kChunk) dsq += s.delta(c, std::min(kChunk, N - c), sc, tmp);
      const float f = l2_factor(dsq, eps[b]);
      for (int64_t c = 0; c < N; c += kChunk) s.l2_write(c, std::min(kChunk, N - c), sc, f, lo, hi);
    }
    return;
  }
  // Few samples: chunks of each sample in parallel, pass by pass.
  std::vector<double> part(nchunks);
  for (int64_t b = 0; b < B; ++b) {
    if (active && !active[b]) continue;
    const Sample<T> s = sample(b);
    if (norm == PgdNorm::linf) {
      const Params p{eps[b], alpha[b], lo, hi};
#pragma omp parallel for schedule(static) num_threads(threads)
      for (int64_t k = 0; k < nchunks; ++k) s.linf(k * kChunk, std::min(N, (k + 1) * kChunk), p);
      continue;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < nchunks; ++k) part[k] = s.grad_sq(k * kChunk, std::min(kChunk, N - k * kChunk));
    double gsq = 0;
    for (int64_t k = 0; k < nchunks; ++k) gsq += part[k];
    const float sc = l2_scale(gsq, alpha[b]);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < nchunks; ++k) {
      float tmp[kChunk];
      part[k] = s.delta(k * kChunk, std::min(kChunk, N - k * kChunk), sc, tmp);
    }
    double dsq = 0;
    for (int64_t k = 0; k < nchunks; ++k) dsq += part[k];
    const float f = l2_factor(dsq, eps[b]);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < nchunks; ++k) s.l2_write(k * kChunk, std::min(kChunk, N - k * kChunk), sc, f, lo, hi);
  }
}

}  // namespace

void pgd_step_cpu(const Tensor& x, const Tensor& g, const Tensor& x0, const Tensor& eps, const Tensor& alpha,
                  const Tensor* active, PgdNorm norm, float lo, float hi, int num_threads) {
  x.check_device(DeviceKind::cpu);
  pgd_step_check(x, g, x0, eps, alpha, active, lo, hi);
  if (norm != PgdNorm::linf && norm != PgdNorm::l2) fail("norm", "expected linf or l2");
  if (x.numel() == 0) return;
  const float* e = eps.ptr<float>();
  const float* a = alpha.ptr<float>();
  const bool* act = active ? active->ptr<bool>() : nullptr;
  switch (x.dtype) {
    case DType::f32: run<float>(x, g, x0, e, a, act, norm, lo, hi, num_threads); break;
    case DType::f16: run<f16>(x, g, x0, e, a, act, norm, lo, hi, num_threads); break;
    case DType::bf16: run<bf16>(x, g, x0, e, a, act, norm, lo, hi, num_threads); break;
    default: fail(x.name, "unsupported dtype");
  }
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
