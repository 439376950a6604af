// Contrastive-loss (CLIP softmax / SigLIP sigmoid) row/column statistics and gradients on
// the CPU (contract in ops/clip_loss.h).
//
// Work is split over row blocks of BM <= 16 MR rows of X (192 with AVX-512; OpenMP, dynamic
// schedule); each row block walks the columns in chunks of BN = 384 and keeps one [BM x BN]
// fp32 score strip per thread (~300 KiB, L2 resident): the M x N logits are never stored.
// Per chunk:
//   forward:  S = X_I Y_J^T into the strip, then the row LSE (running max + rescaled sum),
//             the column LSE partials (per-thread running (max, sum) per column, merged at
//             the end with a stable log-add-exp), or the row softplus sums;
//   backward: S recomputed, G written over it (the dot products are consumed first for
//             sum G<x,y>), then dX_I += G Y_J (fp32 [BM x d] accumulator per row block) and
//             dY_J += G^T X_I into a per-thread fp32 [N x d] accumulator, summed at the end.
// That is the minimum of four N^2 d products for forward + backward. All three products use
// one register-blocked micro-kernel (cpu/tile.h: MR rows x NR = NV vectors, GCC vector extensions,
// as in knn.cpp) on operands packed once per call into fp32 panels: the "A" side is read as
// broadcasts a[k * a_ks + r] (one pointer + constant displacements), the "B" side as NR-wide
// rows of a [K][NR] panel, so every inner loop streams contiguous memory.
// Inputs are converted to fp32 once (any strides, f32/f16/bf16); all panels are zero-padded
// so micro-tiles are always full, and padded rows/columns are masked out of every statistic
// and forced to G = 0, which makes them contribute nothing to the products.
// exp / log1p are small polynomials on vectors (the strip is exp'ed twice per pass, so a
// scalar libm call per element would cost as much as the products); arguments are clamped
// to [-88, 88] so nothing overflows and exp(-88) flushes to 0.
// Memory: O((M + N) d) packed operands + O(threads * N * d) dY accumulators + O(threads * BM * BN).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/simd.h"
#include "cpu/tile.h"
#include "cpu/dispatch.h"
#include "ops/clip_loss.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace {

using namespace simd;  // vector width and micro-tile shape, vector helpers, 16-bit loads
using cpu::micro;
using cpu::round_up;
using cpu::Seg;
constexpr int NV = NR / VW;  // vector registers per micro-tile row
constexpr int64_t gcd_(int64_t a, int64_t b) { return b == 0 ? a : gcd_(b, a % b); }
// The strip's column count must be a multiple of NR (micro-tile columns of S) and of MR (the
// dY product walks the strip's columns in groups of MR).
constexpr int64_t kColQuantum = MR / gcd_(MR, NR) * NR;
// 384 columns: the [BM x BN] strip plus its packed copy stay in L2 (~600 KiB at BM = 192);
// 192..768 measured within noise of each other.
constexpr int64_t BN = ((384 + kColQuantum - 1) / kColQuantum) * kColQuantum;
// Rows per block, which is also the K of the dY += G^T X product (its C tiles are loaded and
// stored once per block): 16 MR was ~7% faster than 8 MR in the backward at N = 4096, d = 512.
constexpr int64_t kMaxBM = 16 * MR;

inline float hmax(vfloat v) {
  float m = v[0];
  for (int c = 1; c < VW; ++c) m = std::max(m, v[c]);
  return m;
}
inline float hsum(vfloat v) {
  float s = 0.f;
  for (int c = 0; c < VW; ++c) s += v[c];
  return s;
}

// log1p(e) for e in [0, 1]: 1 + e = 2^k (1 + f) with f in [-0.29, 0.42] (computed without
// rounding 1 + e, which would lose e's low bits when e is small), then
// log(1 + f) = 2 atanh(f / (2 + f)) as an odd series in s = f / (2 + f), |s| <= 0.172.
inline vfloat vlog1p01(vfloat e) {
  const auto big = e > splat(0.41421356f);
  const vfloat f = big ? (e - 1.f) * 0.5f : e;
  const vfloat k = big ? splat(0.693147180559945f) : vfloat{};
  const vfloat s = f / (f + 2.f);
  const vfloat s2 = s * s;
  vfloat p = splat(2.f / 11.f);
  p = p * s2 + 2.f / 9.f;
  p = p * s2 + 2.f / 7.f;
  p = p * s2 + 2.f / 5.f;
  p = p * s2 + 2.f / 3.f;
  return k + (s + s) + s * (s2 * p);
}

inline vfloat vabs(vfloat z) { return z < 0.f ? -z : z; }

// softplus(z) = max(z, 0) + log1p(exp(-|z|)): no overflow for any z, exact tail for z << 0.
inline vfloat vsoftplus(vfloat z) { return vmax(z, vfloat{}) + vlog1p01(vexp(-vabs(z))); }

// sigmoid(z) from e = exp(-|z|) <= 1, so neither branch overflows.
inline vfloat vsigmoid(vfloat z) {
  const vfloat e = vexp(-vabs(z));
  const vfloat inv = 1.f / (1.f + e);
  return z >= 0.f ? inv : e * inv;
}

// C[MR x NR] = sum_k A(r, k) B(k, :) with A(r, k) = a[k * a_ks + r] and B(k, :) the NR floats at
// b + k * NR (the packed panels below): the shared micro-kernel of cpu/tile.h with one operand
// pair; `store(r, col, acc)` receives the accumulators (kept in registers: 2 * MR of 32).
template <typename Store>
inline void micro_nr(int64_t K, const float* a, int64_t a_ks, const float* b, Store&& store) {
  const Seg seg{a, a_ks, b, NR, K};
  micro<NV>(&seg, cpu::OneSeg{}, 0, 0, MR, store);
}

// Packing (called inside a parallel region: the loops are orphaned `omp for`s).

// rows x d matrix -> [ceil(rows / W)][d][W]: W consecutive rows interleaved, zero padded. The
// A operand of S = X Y^T (W = MR) and its B operand Y^T (W = NR).
template <int W, typename T>
void pack_interleaved(const T* base, int64_t s0, int64_t s1, int64_t rows, int64_t d, float* out) {
  const int64_t groups = (rows + W - 1) / W;
#pragma omp for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    float* dst = out + g * d * W;
    for (int r = 0; r < W; ++r) {
      const int64_t row = g * W + r;
      if (row < rows) {
        const T* src = base + row * s0;
        for (int64_t k = 0; k < d; ++k) dst[k * W + r] = load_as_float(src + k * s1);
      } else {
        for (int64_t k = 0; k < d; ++k) dst[k * W + r] = 0.f;
      }
    }
  }
}

// rows x d matrix -> [ceil(d / NR)][rows][NR]: NR-column panels, zero padded in d. The B
// operand of G Y (rows of Y) and of G^T X (rows of X).
template <typename T>
void pack_column_panels(const T* base, int64_t s0, int64_t s1, int64_t rows, int64_t d, float* out) {
  const int64_t panels = (d + NR - 1) / NR;
#pragma omp for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const T* src = base + row * s0;
    for (int64_t p = 0; p < panels; ++p) {
      float* dst = out + (p * rows + row) * NR;
      for (int c = 0; c < NR; ++c) {
        const int64_t k = p * NR + c;
        dst[c] = k < d ? load_as_float(src + k * s1) : 0.f;
      }
    }
  }
}

struct Shape {
  int64_t M, N, d;
  int64_t BM;  // rows per block (multiple of MR)
};

inline int64_t pick_bm(int64_t M, int threads) {
  // A multiple of `threads` blocks (at least two per thread) of at most kMaxBM rows, all about
  // the same size, so that the last round of the dynamic schedule is not one thread's alone.
  const int64_t per_thread = std::max<int64_t>(2, (M + threads * kMaxBM - 1) / (threads * kMaxBM));
  const int64_t blocks = per_thread * threads;
  return std::max<int64_t>(MR, std::min<int64_t>(kMaxBM, round_up((M + blocks - 1) / blocks, MR)));
}

// strip[r][j] = alpha * <x_{i0+r}, y_{j0+j}> + beta for r < round_up(bm, MR), j < round_up(bn, NR).
inline void score_tile(const float* Xa, const float* Yt, int64_t d, int64_t i0, int64_t bm, int64_t j0,
                       int64_t bn, float alpha, float beta, float* strip) {
  const int64_t groups = (bm + MR - 1) / MR, panels = (bn + NR - 1) / NR;
  for (int64_t p = 0; p < panels; ++p) {
    const float* b = Yt + (j0 / NR + p) * d * NR;
    for (int64_t g = 0; g < groups; ++g) {
      const float* a = Xa + (i0 / MR + g) * d * MR;
      float* c = strip + g * MR * BN + p * NR;
      micro_nr(d, a, MR, b, [&](int64_t r, int64_t col, vfloat acc) { vstore(c + r * BN + col, alpha * acc + beta); });
    }
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <typename T>
void forward_impl(const Tensor& x, const Tensor& y, float scale, float bias, ContrastiveKind kind,
                  const Tensor& out_row, const Tensor* out_col, int threads) {
  const int64_t M = x.size(0), N = y.size(0), d = x.size(1);
  const bool softmax = kind == ContrastiveKind::softmax;
  const bool want_col = softmax && out_col != nullptr;
  float* row_out = out_row.ptr<float>();
  const int64_t row_stride = out_row.stride(0);
  if (M == 0 || N == 0) {
    // LSE of nothing is -inf; a sum of nothing is 0.
    const float empty_row = softmax ? -std::numeric_limits<float>::infinity() : 0.f;
    for (int64_t i = 0; i < M; ++i) row_out[i * row_stride] = empty_row;
    if (want_col)
      for (int64_t j = 0; j < N; ++j) out_col->ptr<float>()[j * out_col->stride(0)] = -std::numeric_limits<float>::infinity();
    return;
  }
  const int64_t BM = pick_bm(M, threads);
  const int64_t Mp = round_up(M, MR), Np = round_up(N, NR);
  std::vector<float> Xa(Mp * d), Yt(Np * d);
  // Per-thread column partials (running max, rescaled sum), padded to whole vectors.
  const int64_t Ncol = round_up(N, BN);
  std::vector<float> cmax(want_col ? threads * Ncol : 0), csum(want_col ? threads * Ncol : 0);
  const int64_t n_blocks = (M + BM - 1) / BM;
  const float ninf = -std::numeric_limits<float>::infinity();

#pragma omp parallel num_threads(threads)
  {
    pack_interleaved<MR>(x.ptr<T>(), x.stride(0), x.stride(1), M, d, Xa.data());
    pack_interleaved<NR>(y.ptr<T>(), y.stride(0), y.stride(1), N, d, Yt.data());  // ends with a barrier
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* cm = want_col ? cmax.data() + tid * Ncol : nullptr;
    float* cs = want_col ? csum.data() + tid * Ncol : nullptr;
    if (want_col) {
      std::fill(cm, cm + Ncol, ninf);
      std::fill(cs, cs + Ncol, 0.f);
    }
    std::vector<float> strip(round_up(BM, MR) * BN);
    std::vector<float> rmax(BM), rsum(BM);
    std::vector<double> rsp(BM);

#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t i0 = blk * BM, bm = std::min(BM, M - i0);
      std::fill(rmax.begin(), rmax.end(), ninf);
      std::fill(rsum.begin(), rsum.end(), 0.f);
      std::fill(rsp.begin(), rsp.end(), 0.0);
      for (int64_t j0 = 0; j0 < N; j0 += BN) {
        const int64_t bn = std::min(BN, N - j0);
        score_tile(Xa.data(), Yt.data(), d, i0, bm, j0, bn, scale, bias, strip.data());
        const int64_t full = bn / VW, rem = bn % VW;
        const vint tail = lane_mask(rem);
        // Rows: L of the padding lanes of the last vector is replaced by -inf, which adds 0.
        for (int64_t r = 0; r < bm; ++r) {
          const float* L = strip.data() + r * BN;
          if (softmax) {
            vfloat mv = splat(ninf);
            for (int64_t v = 0; v < full; ++v) mv = vmax(mv, vload(L + v * VW));
            if (rem) mv = vmax(mv, tail ? vload(L + full * VW) : splat(ninf));
            const float m_new = std::max(rmax[r], hmax(mv));
            const vfloat mn = splat(m_new);
            vfloat sv{};
            for (int64_t v = 0; v < full; ++v) sv += vexp(vload(L + v * VW) - mn);
            if (rem) sv += tail ? vexp(vload(L + full * VW) - mn) : vfloat{};
            // exp(-inf) = 0 on the first chunk; afterwards the old sum is rescaled once.
            rsum[r] = rsum[r] * std::exp(rmax[r] - m_new) + hsum(sv);
            rmax[r] = m_new;
          } else {
            vfloat sv{};
            for (int64_t v = 0; v < full; ++v) sv += vsoftplus(vload(L + v * VW));
            if (rem) sv += tail ? vsoftplus(vload(L + full * VW)) : vfloat{};
            rsp[r] += hsum(sv);  // fp32 within a chunk (<= BN terms over VW lanes), fp64 across
          }
        }
        if (want_col) {
          // Columns: whole vectors including padding lanes (their partials are never read).
          for (int64_t v = 0; v < (bn + VW - 1) / VW; ++v) {
            const float* L = strip.data() + v * VW;
            vfloat mv = splat(ninf);
            for (int64_t r = 0; r < bm; ++r) mv = vmax(mv, vload(L + r * BN));
            const vfloat mo = vload(cm + j0 + v * VW), mn = vmax(mo, mv);
            vfloat sv = vload(cs + j0 + v * VW) * vexp(mo - mn);
            for (int64_t r = 0; r < bm; ++r) sv += vexp(vload(L + r * BN) - mn);
            vstore(cm + j0 + v * VW, mn);
            vstore(cs + j0 + v * VW, sv);
          }
        }
      }
      for (int64_t r = 0; r < bm; ++r)
        row_out[(i0 + r) * row_stride] =
            softmax ? static_cast<float>(rmax[r] + std::log(static_cast<double>(rsum[r]))) : static_cast<float>(rsp[r]);
    }

    if (want_col) {
      // Merge the threads' (max, sum) pairs: col = M + log sum_t s_t exp(m_t - M).
      float* col_out = out_col->ptr<float>();
      const int64_t col_stride = out_col->stride(0);
#pragma omp for schedule(static)
      for (int64_t j = 0; j < N; ++j) {
        float m = ninf;
        for (int t = 0; t < threads; ++t) m = std::max(m, cmax[t * Ncol + j]);
        double s = 0.0;
        if (m != ninf)
          for (int t = 0; t < threads; ++t) s += csum[t * Ncol + j] * std::exp(static_cast<double>(cmax[t * Ncol + j]) - m);
        col_out[j * col_stride] = m == ninf ? ninf : static_cast<float>(m + std::log(s));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

struct BackwardArgs {
  float scale, bias;
  bool softmax, col_term;
  const float* row;    // [M]
  const float* w_row;  // [M]
  const float* col;    // [round_up(N, BN)] zero padded (col_term only)
  const float* w_col;  // [round_up(N, BN)] zero padded (col_term only)
};

template <typename T>
void backward_impl(const Tensor& x, const Tensor& y, const BackwardArgs& ba, float* dx, float* dy, double* stats,
                   int threads) {
  const int64_t M = x.size(0), N = y.size(0), d = x.size(1);
  const int64_t BM = pick_bm(M, threads);
  const int64_t Mp = round_up(M, MR), Np = round_up(N, NR), dp = round_up(d, NR), dpan = dp / NR;
  const int64_t Nacc = round_up(N, MR);  // dY rows written: whole MR groups of the strip's columns
  std::vector<float> Xa(Mp * d), Yt(Np * d), Xr(dp * M), Yr(dp * N);
  std::vector<float> dy_acc(static_cast<size_t>(threads) * Nacc * dp);
  const int64_t n_blocks = (M + BM - 1) / BM;
  double g_dot = 0.0, g_sum = 0.0;

#pragma omp parallel num_threads(threads) reduction(+ : g_dot, g_sum)
  {
    pack_interleaved<MR>(x.ptr<T>(), x.stride(0), x.stride(1), M, d, Xa.data());
    pack_interleaved<NR>(y.ptr<T>(), y.stride(0), y.stride(1), N, d, Yt.data());
    pack_column_panels(x.ptr<T>(), x.stride(0), x.stride(1), M, d, Xr.data());
    pack_column_panels(y.ptr<T>(), y.stride(0), y.stride(1), N, d, Yr.data());  // ends with a barrier
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* dyt = dy_acc.data() + static_cast<size_t>(tid) * Nacc * dp;
    std::fill(dyt, dyt + Nacc * dp, 0.f);
    const int64_t BMp = round_up(BM, MR);
    std::vector<float> strip(BMp * BN), gp(BMp * BN), dx_acc(BMp * dp);

#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t i0 = blk * BM, bm = std::min(BM, M - i0), groups = (bm + MR - 1) / MR;
      std::fill(dx_acc.begin(), dx_acc.end(), 0.f);
      for (int64_t j0 = 0; j0 < N; j0 += BN) {
        const int64_t bn = std::min(BN, N - j0);
        score_tile(Xa.data(), Yt.data(), d, i0, bm, j0, bn, 1.f, 0.f, strip.data());
        // G over the strip (in place), with sum G S and sum G on the way. Padding columns get
        // G = 0 up to a whole MR group so the G^T X product may read them.
        const int64_t full = bn / VW, rem = bn % VW, gcols = round_up(bn, MR);
        const vint tail = lane_mask(rem);
        for (int64_t r = 0; r < bm; ++r) {
          float* S = strip.data() + r * BN;
          const vfloat ri = splat(ba.row[i0 + r]);
          const float wi = ba.w_row[i0 + r];
          vfloat acc_dot{}, acc_sum{};
          auto one = [&](int64_t v, bool masked) {
            const vfloat s = vload(S + v * VW);
            const vfloat L = ba.scale * s + ba.bias;
            vfloat g;
            if (ba.softmax) {
              g = wi * vexp(L - ri);
              if (ba.col_term) g += vload(ba.w_col + j0 + v * VW) * vexp(L - vload(ba.col + j0 + v * VW));
            } else {
              g = wi * vsigmoid(L);
            }
            if (masked) g = tail ? g : vfloat{};
            acc_dot += g * s;
            acc_sum += g;
            vstore(S + v * VW, g);
          };
          for (int64_t v = 0; v < full; ++v) one(v, false);
          if (rem) one(full, true);
          for (int64_t j = round_up(bn, VW); j < gcols; ++j) S[j] = 0.f;
          g_dot += hsum(acc_dot);
          g_sum += hsum(acc_sum);
        }
        // G again as the A operand of G Y: [group][j][MR], rows past bm zero.
        for (int64_t g = 0; g < groups; ++g) {
          float* dst = gp.data() + g * bn * MR;
          for (int r = 0; r < MR; ++r) {
            const int64_t row = g * MR + r;
            if (row < bm) {
              const float* src = strip.data() + row * BN;
              for (int64_t j = 0; j < bn; ++j) dst[j * MR + r] = src[j];
            } else {
              for (int64_t j = 0; j < bn; ++j) dst[j * MR + r] = 0.f;
            }
          }
        }
        // dX_I += G Y_J: K = bn, the Y panel (bn x NR) is reused by every row group.
        for (int64_t p = 0; p < dpan; ++p) {
          const float* b = Yr.data() + (p * N + j0) * NR;
          for (int64_t g = 0; g < groups; ++g) {
            float* c = dx_acc.data() + g * MR * dp + p * NR;
            micro_nr(bn, gp.data() + g * bn * MR, MR, b,
                     [&](int64_t r, int64_t col, vfloat acc) { float* q = c + r * dp + col; vstore(q, vload(q) + acc); });
          }
        }
        // dY_J += G^T X_I: A(r, k) = G[k][jg + r] is read straight from the strip, K = bm.
        for (int64_t p = 0; p < dpan; ++p) {
          const float* b = Xr.data() + (p * M + i0) * NR;
          for (int64_t jg = 0; jg < gcols; jg += MR) {
            float* c = dyt + (j0 + jg) * dp + p * NR;
            micro_nr(bm, strip.data() + jg, BN, b,
                     [&](int64_t r, int64_t col, vfloat acc) { float* q = c + r * dp + col; vstore(q, vload(q) + acc); });
          }
        }
      }
      for (int64_t r = 0; r < bm; ++r)
        for (int64_t k = 0; k < d; ++k) dx[(i0 + r) * d + k] = ba.scale * dx_acc[r * dp + k];
    }
    // The implicit barrier of the `omp for` above: every thread's dY partial is complete.
#pragma omp for schedule(static)
    for (int64_t j = 0; j < N; ++j) {
      float* out = dy + j * d;
      const float* part = dy_acc.data() + j * dp;
      for (int64_t k = 0; k < d; ++k) out[k] = part[k];
      for (int t = 1; t < threads; ++t) {
        part += static_cast<size_t>(Nacc) * dp;
        for (int64_t k = 0; k < d; ++k) out[k] += part[k];
      }
      for (int64_t k = 0; k < d; ++k) out[k] *= ba.scale;
    }
  }
  stats[0] = g_dot;
  stats[1] = g_sum;
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

void check_features(const Tensor& x, const Tensor& y) {
  x.check_dim(2).check_device(DeviceKind::cpu).check_dtype({DType::f32, DType::f16, DType::bf16});
  y.check_dim(2).check_device(DeviceKind::cpu).check_dtype({DType::f32, DType::f16, DType::bf16});
  if (y.dtype != x.dtype)
    fail(y.name, std::string("must have the same dtype as ") + x.name + " (" + dtype_name(x.dtype) + "), got " +
                     dtype_name(y.dtype));
  if (y.size(1) != x.size(1))
    fail(y.name, "feature dimension " + std::to_string(y.size(1)) + " does not match " + x.name + " (" +
                     std::to_string(x.size(1)) + ")");
}

void check_vector(const Tensor& t, int64_t n) {
  t.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_dim(1).check_shape({n});
}


// A 1-D f32 argument (any stride) copied into a zero-padded contiguous buffer.
std::vector<float> gather_vector(const Tensor& t, int64_t n, int64_t padded) {
  std::vector<float> out(padded, 0.f);
  const float* p = t.ptr<float>();
  for (int64_t i = 0; i < n; ++i) out[i] = p[i * t.stride(0)];
  return out;
}

}  // namespace

void contrastive_forward_cpu(const Tensor& x, const Tensor& y, float scale, float bias, ContrastiveKind kind,
                             const Tensor& out_row, const Tensor* out_col, int num_threads) {
  check_features(x, y);
  check_vector(out_row, x.size(0));
  if (out_col) check_vector(*out_col, y.size(0));
  const int threads = cpu::thread_count(num_threads);
  switch (x.dtype) {
    case DType::f32: forward_impl<float>(x, y, scale, bias, kind, out_row, out_col, threads); break;
    case DType::f16: forward_impl<simd::f16>(x, y, scale, bias, kind, out_row, out_col, threads); break;
    default: forward_impl<simd::bf16>(x, y, scale, bias, kind, out_row, out_col, threads); break;
  }
}

void contrastive_backward_cpu(const Tensor& x, const Tensor& y, float scale, float bias, ContrastiveKind kind,
                              const Tensor& row, const Tensor* col, const Tensor& w_row, const Tensor* w_col,
                              const Tensor& out_dx, const Tensor& out_dy, const Tensor& out_stats, int num_threads) {
  check_features(x, y);
  const int64_t M = x.size(0), N = y.size(0), d = x.size(1);
  check_vector(row, M);
  check_vector(w_row, M);
  if (col) check_vector(*col, N);
  if (w_col) check_vector(*w_col, N);
  const bool softmax = kind == ContrastiveKind::softmax;
  if (softmax && w_col && !col) fail("col", "required when w_col is given (softmax column term)");
  out_dx.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({M, d}).check_contiguous();
  out_dy.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({N, d}).check_contiguous();
  out_stats.check_device(DeviceKind::cpu).check_dtype({DType::f64}).check_shape({2});
  double* stats = out_stats.ptr<double>();
  const int64_t stats_stride = out_stats.stride(0);
  if (M == 0 || N == 0) {
    std::fill(out_dx.ptr<float>(), out_dx.ptr<float>() + M * d, 0.f);
    std::fill(out_dy.ptr<float>(), out_dy.ptr<float>() + N * d, 0.f);
    stats[0] = stats[stats_stride] = 0.0;
    return;
  }
  const int threads = cpu::thread_count(num_threads);
  const int64_t Npad = round_up(N, BN);
  const std::vector<float> rowv = gather_vector(row, M, M), w_rowv = gather_vector(w_row, M, M);
  const bool col_term = softmax && w_col != nullptr;
  const std::vector<float> colv = col_term ? gather_vector(*col, N, Npad) : std::vector<float>();
  const std::vector<float> w_colv = col_term ? gather_vector(*w_col, N, Npad) : std::vector<float>();
  BackwardArgs ba{scale, bias, softmax, col_term, rowv.data(), w_rowv.data(), colv.data(), w_colv.data()};
  double st[2];
  switch (x.dtype) {
    case DType::f32: backward_impl<float>(x, y, ba, out_dx.ptr<float>(), out_dy.ptr<float>(), st, threads); break;
    case DType::f16: backward_impl<simd::f16>(x, y, ba, out_dx.ptr<float>(), out_dy.ptr<float>(), st, threads); break;
    default: backward_impl<simd::bf16>(x, y, ba, out_dx.ptr<float>(), out_dy.ptr<float>(), st, threads); break;
  }
  stats[0] = st[0];
  stats[stats_stride] = st[1];
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
