// The register-blocked fp32 micro-kernel shared by the CPU kernels (clip_loss,
// perceiver_attention, media_cross_attention), a small GEMM driver around it, and helpers that
// pack rows of any storage type into the zero-padded fp32 panels it reads.
//
// A product is C = sum_k A(r, k) B(k, c) with A(r, k) = a[k * a_ks + r] read as scalar
// broadcasts (one pointer + constant displacements) and B(k, c) = b[k * b_ks + c] read as
// VW-wide vector rows, so both operands are plain strided panels and every inner loop streams
// contiguous memory. Callers arrange each product (and pad / zero its operands) so that micro-
// tiles are always readable; padded rows and columns must be finite (zero, or masked) so they
// add nothing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/simd.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace cpu {

// OpenMP thread count from Python's torch.get_num_threads(); anything below 1 means 1.
inline int thread_count(int requested) { return requested < 1 ? 1 : requested; }


using simd::MR;
using simd::NR;
using simd::vfloat;
using simd::VW;

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// One operand pair of a product (see above), k < K. A product may sum several pairs (e.g. one
// per key source) into the same accumulators.
struct Seg {
  const float* a;
  int64_t a_ks;
  const float* b;
  int64_t b_ks;
  int64_t K;
};

// C[r0 .. r0 + MR) x [c0 .. c0 + NVC * VW) summed over `nseg` pairs, kept in registers
// (NVC * MR accumulators: 24 + 2 panel loads + 1 broadcast of 32 zmm registers with AVX-512);
// store(row, col, acc) receives each vector of the first `rvalid` rows, col = c0 + v * VW.
// `nseg` is an int, or OneSeg{} where the count is known to be 1: a runtime segment loop around
// the k loop was ~5-10% slower on the single-source media attention (1 thread, noisy 2-core box).
using OneSeg = std::integral_constant<int, 1>;
template <int NVC, typename NSeg, typename Store>
inline void micro(const Seg* seg, NSeg nseg, int64_t r0, int64_t c0, int rvalid, Store&& store) {
  vfloat acc[MR][NVC];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NVC; ++v) acc[r][v] = vfloat{};
  for (int s = 0; s < nseg; ++s) {
    const float* a = seg[s].a + r0;
    const float* b = seg[s].b + c0;
    const int64_t a_ks = seg[s].a_ks, b_ks = seg[s].b_ks, K = seg[s].K;
    for (int64_t k = 0; k < K; ++k) {
      vfloat bv[NVC];
      for (int v = 0; v < NVC; ++v) bv[v] = simd::vload(b + k * b_ks + v * VW);
      const float* ak = a + k * a_ks;
      for (int r = 0; r < MR; ++r) {
        const float x = ak[r];
        for (int v = 0; v < NVC; ++v) acc[r][v] += x * bv[v];
      }
    }
  }
  for (int r = 0; r < rvalid; ++r)
    for (int v = 0; v < NVC; ++v) store(r0 + r, c0 + v * VW, acc[r][v]);
}

// rows x cols product (cols a multiple of VW). A must be readable (finite) up to
// round_up(rows, MR) rows, B up to cols columns; only rows < `rows` reach `store`.
// Column panels outermost so each B panel stays in L1 while the row blocks stream past it.
template <typename NSeg, typename Store>
void gemm(int64_t rows, int64_t cols, const Seg* seg, NSeg nseg, Store&& store) {
  for (int64_t c0 = 0; c0 < cols; c0 += NR) {
    const bool full = cols - c0 >= NR;
    for (int64_t r0 = 0; r0 < rows; r0 += MR) {
      const int rv = static_cast<int>(std::min<int64_t>(MR, rows - r0));
      if (full)
        micro<NR / VW>(seg, nseg, r0, c0, rv, store);
      else
        micro<1>(seg, nseg, r0, c0, rv, store);
    }
  }
}

template <typename Store>
void gemm(int64_t rows, int64_t cols, const Seg& seg, Store&& store) {
  gemm(rows, cols, &seg, OneSeg{}, store);
}

// ---- packing: `Rows` is any view with float at(j, d) (row j, column d, converted to fp32) ----

// Rows [0, n) -> out[d * ld + j] (transposed), columns [n, ld) zeroed.
template <typename Rows>
void pack_t(const Rows& x, int64_t n, int64_t D, int64_t ld, float* out) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) out[d * ld + j] = x.at(j, d);
  for (int64_t d = 0; d < D; ++d) std::fill(out + d * ld + n, out + (d + 1) * ld, 0.f);
}

// Rows [0, n) -> out[j * Dp + d], columns [D, Dp) zeroed.
template <typename Rows>
void pack_rows(const Rows& x, int64_t n, int64_t D, int64_t Dp, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    float* o = out + j * Dp;
    for (int64_t d = 0; d < D; ++d) o[d] = x.at(j, d);
    std::fill(o + D, o + Dp, 0.f);
  }
}

// Writes the first min(VW, D - col) lanes of v to dst[col ...] (rows are unpadded in D).
template <typename T>
inline void store_lanes(T* dst, int64_t col, int64_t D, vfloat v) {
  const int64_t n = std::min<int64_t>(VW, D - col);
  if (n <= 0) return;
  float tmp[VW];
  simd::vstore(tmp, v);
  for (int64_t c = 0; c < n; ++c) simd::store_as(dst + col + c, tmp[c]);
}

// ---- softmax over score strips (the attention kernels) ----

// Forward, keys on rows: the running column max m over rows [0, n) of the vector column at p
// (rows ld apart), then those rows replaced by exp(x - m) with their sum added to l. A key axis
// made of several row ranges (sources) is walked range by range, max first, so the sums are
// formed in the same order as one contiguous range would be.
inline vfloat column_max(const float* p, int64_t ld, int64_t n, vfloat m) {
  for (int64_t j = 0; j < n; ++j) m = simd::vmax(m, simd::vload(p + j * ld));
  return m;
}
inline vfloat column_exp_sum(float* p, int64_t ld, int64_t n, vfloat m, vfloat l) {
  for (int64_t j = 0; j < n; ++j) {
    float* q = p + j * ld;
    const vfloat e = simd::vexp(simd::vload(q) - m);
    simd::vstore(q, e);
    l += e;
  }
  return l;
}

// Backward, one query row over n keys: P = exp(S - lse) (key columns past n, i.e. padding,
// forced to 0), dS = scale P (dP - delta), written over s and dp, and dS^T scattered to
// ds_t[c * ldq] for the dQ product.
inline void softmax_grad_row(float* s, float* dp, float* ds_t, int64_t ldq, int64_t n, vfloat lse, vfloat delta,
                             float scale) {
  for (int64_t c = 0; c < n; c += VW) {
    vfloat p = simd::vexp(simd::vload(s + c) - lse);
    if (n - c < VW) p = simd::lane_mask(n - c) ? p : vfloat{};
    const vfloat ds = scale * p * (simd::vload(dp + c) - delta);
    simd::vstore(s + c, p);
    simd::vstore(dp + c, ds);
    float* t = ds_t + c * ldq;
    for (int v = 0; v < VW && c + v < n; ++v) t[v * ldq] = ds[v];
  }
}

// Leading dimension of query-indexed strips: rows of MR (A side) and vectors of VW (B side).
inline int64_t query_ld(int64_t rows) { return std::max<int64_t>(MR, std::max(round_up(rows, MR), round_up(rows, VW))); }

}  // namespace cpu
}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
