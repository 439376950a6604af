// Media-masked text-to-image cross-attention on the CPU, computed block-diagonally (contract in
// ops/media_cross_attention.h): query (b, t) with image index m = media_index[b, t] >= 1 attends
// only to the P = latents_per_media keys of image m; index 0 gives out = 0, lse = -inf and no
// gradient. No mask, dense or otherwise, is ever built.
//
// The queries of each batch row are first grouped by image index (a stable counting sort of
// media_index[b, :], shared by all heads), so each image's queries form one list that is cut
// into blocks of at most 64 rows. A block is then an ordinary dense attention of <= 64 gathered
// query rows against P keys, all in fp32 thread-local strips:
//   forward:  S^T = K_m Q^T (keys on rows, so max/sum are vectors over the block's queries),
//             P^T = exp(S^T - max), out = (P V_m) / sum scattered back to the rows, lse;
//   backward: S = Q K_m^T and dP = dO V_m^T (queries on rows), P = exp(S - lse),
//             dS = scale P (dP - delta), dV_m += P^T dO, dK_m += dS^T Q (fp32 accumulators per
//             image), dQ = dS K_m (via one transpose of the block's dS).
// Every product uses one register-blocked micro-kernel (cpu/tile.h; MR rows x 2 vectors, GCC vector
// extensions; A read as broadcasts a[k * a_ks + r], B as vector rows b[k * b_ks + c]). Padded
// rows/columns are zero or masked to P = 0, so they contribute nothing.
// Parallelism: forward over (b, h, block) units; backward over (b, h, image) so that each
// task owns its image's dK/dV rows and its queries' dQ rows outright (no races, no reductions).
// Assumes P is small (64 in OpenFlamingo): per-thread memory is O((64 + P) * (P + D)) floats.
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
#include "ops/media_cross_attention.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace {

using namespace simd;  // vector width, vector helpers, 16-bit loads / stores
using namespace cpu;   // micro-kernel, gemm, packing, softmax strip helpers

// Largest query block: with P = 64 keys the strips and packed operands of a block stay in L2.
constexpr int64_t kMaxBlock = 64;

// ---- operand views and packing ----

// Rows of one (b, h) slice of a [B, H, N, D] tensor, optionally gathered through a row index
// list: element (j, d) at p[row(j) * s_row + d * s_d].
template <typename T>
struct Rows {
  const T* p;
  int64_t s_row, s_d;
  const int64_t* idx;  // nullptr: row(j) = j
  float at(int64_t j, int64_t d) const { return load_as_float(p + (idx ? idx[j] : j) * s_row + d * s_d); }
};

template <typename T>
Rows<T> rows_of(const Tensor& t, int64_t b, int64_t h, int64_t first, const int64_t* idx) {
  return {t.ptr<T>() + b * t.stride(0) + h * t.stride(1) + first * t.stride(2), t.stride(2), t.stride(3), idx};
}

// Queries of each batch row grouped by image: order[b * T + start[b][m] ...] are the t with
// media_index[b, t] == m, ascending.
struct Groups {
  int64_t T, n_img;  // n_img = n_media + 1 (index 0 included)
  std::vector<int64_t> order, start;  // start: [B][n_img + 1]
  const int64_t* queries(int64_t b, int64_t m) const { return order.data() + b * T + start[b * (n_img + 1) + m]; }
  int64_t count(int64_t b, int64_t m) const {
    return start[b * (n_img + 1) + m + 1] - start[b * (n_img + 1) + m];
  }
};

Groups group_queries(const Tensor& media_index, int64_t B, int64_t T, int64_t n_media) {
  Groups g;
  g.T = T;
  g.n_img = n_media + 1;
  g.order.resize(B * T);
  g.start.assign(B * (g.n_img + 1), 0);
  const int64_t* mi = media_index.ptr<int64_t>();
  const int64_t s0 = media_index.stride(0), s1 = media_index.stride(1);
  for (int64_t b = 0; b < B; ++b) {
    int64_t* st = g.start.data() + b * (g.n_img + 1);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t m = mi[b * s0 + t * s1];
      // The caller validates, but an out-of-range index would read outside k/v here.
      if (m < 0 || m > n_media)
        fail(media_index.name, "value " + std::to_string(m) + " at [" + std::to_string(b) + ", " +
                                   std::to_string(t) + "] is outside 0.." + std::to_string(n_media));
      ++st[m + 1];
    }
    for (int64_t m = 0; m < g.n_img; ++m) st[m + 1] += st[m];
    std::vector<int64_t> fill(st, st + g.n_img);
    for (int64_t t = 0; t < T; ++t) g.order[b * T + fill[mi[b * s0 + t * s1]]++] = t;
  }
  return g;
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// A forward work unit: queries [first, first + count) of image m's list in batch row b.
struct Unit {
  int64_t b, m, first, count;
};

template <typename T>
void forward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Groups& g, int64_t P, float scale,
                  const Tensor& out, const Tensor& lse, int threads) {
  const int64_t B = q.size(0), H = q.size(1), T_ = q.size(2), D = q.size(3);
  const int64_t Dp = round_up(D, VW), np = std::max(round_up(P, MR), round_up(P, VW));
  // Units in (b, m, block) order; task = (b, h, unit of b), so consecutive tasks of a thread
  // tend to share (b, h, m) and reuse the packed keys/values.
  std::vector<Unit> units;
  std::vector<int64_t> unit_start(B + 1, 0), task_start(B + 1, 0);
  int64_t max_rows = 0;
  for (int64_t b = 0; b < B; ++b) {
    unit_start[b] = static_cast<int64_t>(units.size());
    for (int64_t m = 0; m < g.n_img; ++m) {
      const int64_t c = g.count(b, m);
      if (c == 0) continue;
      const int64_t nb = (c + kMaxBlock - 1) / kMaxBlock;  // even split: blocks differ by <= 1 row
      for (int64_t i = 0; i < nb; ++i) units.push_back({b, m, i * c / nb, (i + 1) * c / nb - i * c / nb});
      max_rows = std::max(max_rows, (c + nb - 1) / nb);
    }
    unit_start[b + 1] = static_cast<int64_t>(units.size());
    task_start[b + 1] = task_start[b] + H * (unit_start[b + 1] - unit_start[b]);
  }
  const int64_t ldq = query_ld(max_rows), n_tasks = task_start[B];
  T* out_p = out.ptr<T>();
  float* lse_p = lse.ptr<float>();
  const float ninf = -std::numeric_limits<float>::infinity();

#pragma omp parallel num_threads(threads)
  {
    // Zero-initialised once: padded lanes that no block writes must stay finite.
    std::vector<float> qT(D * ldq), kT(D * np), vr(np * Dp), st(np * ldq), mx(ldq), sum(ldq);
    int64_t packed_bh = -1, packed_m = -1;

#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_tasks; ++task) {
      const int64_t b = std::upper_bound(task_start.begin(), task_start.end(), task) - task_start.begin() - 1;
      const int64_t per_h = unit_start[b + 1] - unit_start[b];
      const int64_t h = (task - task_start[b]) / per_h;
      const Unit& u = units[unit_start[b] + (task - task_start[b]) % per_h];
      const int64_t bh = b * H + h, bq = u.count;
      const int64_t* idx = g.queries(b, u.m) + u.first;
      T* o = out_p + bh * T_ * D;
      float* ls = lse_p + bh * T_;
      if (u.m == 0) {  // text before the first image: exactly 0, lse = -inf
        for (int64_t i = 0; i < bq; ++i) {
          for (int64_t d = 0; d < D; ++d) store_as(o + idx[i] * D + d, 0.f);
          ls[idx[i]] = ninf;
        }
        continue;
      }
      if (packed_bh != bh || packed_m != u.m) {
        pack_t(rows_of<T>(k, b, h, (u.m - 1) * P, nullptr), P, D, np, kT.data());
        pack_rows(rows_of<T>(v, b, h, (u.m - 1) * P, nullptr), P, D, Dp, vr.data());
        packed_bh = bh;
        packed_m = u.m;
      }
      pack_t(rows_of<T>(q, b, h, 0, idx), bq, D, ldq, qT.data());

      // S^T[j][i] = scale <k_j, q_i>.
      const int64_t nqv = round_up(bq, VW);
      gemm(P, nqv, Seg{kT.data(), np, qT.data(), ldq, D},
           [&](int64_t r, int64_t c, vfloat acc) { vstore(st.data() + r * ldq + c, scale * acc); });
      // Column softmax statistics, vectorised over the block's queries.
      for (int64_t c = 0; c < nqv; c += VW) {
        const vfloat m = column_max(st.data() + c, ldq, P, splat(ninf));
        const vfloat l = column_exp_sum(st.data() + c, ldq, P, m, vfloat{});
        vstore(mx.data() + c, m);
        vstore(sum.data() + c, l);
      }
      for (int64_t i = 0; i < bq; ++i) {
        ls[idx[i]] = mx[i] + std::log(sum[i]);
        sum[i] = 1.f / sum[i];  // reused as the normaliser of the output rows
      }
      // out = (P V) / sum, scattered back to the query rows.
      gemm(bq, Dp, Seg{st.data(), ldq, vr.data(), Dp, P},
           [&](int64_t r, int64_t c, vfloat acc) { store_lanes(o + idx[r] * D, c, D, acc * sum[r]); });
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

template <typename T>
void backward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Groups& g, int64_t P, const Tensor& out,
                   const Tensor& lse, const Tensor& dout, float scale, const Tensor& dq, const Tensor& dk,
                   const Tensor& dv, int threads) {
  const int64_t B = q.size(0), H = q.size(1), T_ = q.size(2), D = q.size(3), NK = k.size(2);
  const int64_t Dp = round_up(D, VW), np = std::max(round_up(P, MR), round_up(P, VW));
  int64_t max_rows = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t m = 1; m < g.n_img; ++m) {
      const int64_t c = g.count(b, m), nb = (c + kMaxBlock - 1) / kMaxBlock;
      if (c) max_rows = std::max(max_rows, (c + nb - 1) / nb);
    }
  const int64_t ldq = query_ld(max_rows), ldS = np;
  const int64_t n_tasks = B * H * g.n_img;
  float* dq_p = dq.ptr<float>();
  float* dk_p = dk.ptr<float>();
  float* dv_p = dv.ptr<float>();

#pragma omp parallel num_threads(threads)
  {
    std::vector<float> qT(D * ldq), qr(ldq * Dp), doT(D * ldq), dor(ldq * Dp);
    std::vector<float> kT(D * np), kr(np * Dp), vT(D * np);
    std::vector<float> sp(ldq * ldS), dp(ldq * ldS), dsT(ldS * ldq);
    std::vector<float> dk_acc(np * Dp), dv_acc(np * Dp);
    std::vector<float> lse_r(ldq), delta(ldq);

#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_tasks; ++task) {
      const int64_t bh = task / g.n_img, m = task % g.n_img;
      const int64_t b = bh / H, h = bh % H;
      const int64_t c = g.count(b, m);
      const int64_t* list = g.queries(b, m);
      float* dqo = dq_p + bh * T_ * D;
      if (m == 0) {  // index 0: no gradient flows from these queries
        for (int64_t i = 0; i < c; ++i) std::fill(dqo + list[i] * D, dqo + (list[i] + 1) * D, 0.f);
        continue;
      }
      float* dko = dk_p + (bh * NK + (m - 1) * P) * D;
      float* dvo = dv_p + (bh * NK + (m - 1) * P) * D;
      if (c == 0) {  // an image no query attends to
        std::fill(dko, dko + P * D, 0.f);
        std::fill(dvo, dvo + P * D, 0.f);
        continue;
      }
      const Rows<T> ks = rows_of<T>(k, b, h, (m - 1) * P, nullptr);
      pack_t(ks, P, D, np, kT.data());
      pack_rows(ks, P, D, Dp, kr.data());
      pack_t(rows_of<T>(v, b, h, (m - 1) * P, nullptr), P, D, np, vT.data());
      std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
      const float* lse_bh = lse.ptr<float>() + b * lse.stride(0) + h * lse.stride(1);
      const int64_t ncv = round_up(P, VW);

      const int64_t nb = (c + kMaxBlock - 1) / kMaxBlock;
      for (int64_t blk = 0; blk < nb; ++blk) {
        const int64_t first = blk * c / nb, bq = (blk + 1) * c / nb - first;
        const int64_t* idx = list + first;
        const Rows<T> qs = rows_of<T>(q, b, h, 0, idx), gs = rows_of<T>(dout, b, h, 0, idx);
        const Rows<T> os = rows_of<T>(out, b, h, 0, idx);
        pack_t(qs, bq, D, ldq, qT.data());
        pack_rows(qs, bq, D, Dp, qr.data());
        pack_t(gs, bq, D, ldq, doT.data());
        pack_rows(gs, bq, D, Dp, dor.data());
        for (int64_t i = 0; i < bq; ++i) {
          // delta from the stored (rounded) output, as the autograd formula sees it.
          float acc = 0.f;
          for (int64_t d = 0; d < D; ++d) acc += dor[i * Dp + d] * os.at(i, d);
          delta[i] = acc;
          lse_r[i] = lse_bh[idx[i] * lse.stride(2)];
        }
        // S = scale Q K^T and dP = dO V^T, queries on rows.
        gemm(bq, ncv, Seg{qT.data(), ldq, kT.data(), np, D},
             [&](int64_t r, int64_t cc, vfloat acc) { vstore(sp.data() + r * ldS + cc, scale * acc); });
        gemm(bq, ncv, Seg{doT.data(), ldq, vT.data(), np, D},
             [&](int64_t r, int64_t cc, vfloat acc) { vstore(dp.data() + r * ldS + cc, acc); });
        // P = exp(S - lse) (padded key columns forced to 0), dS = scale P (dP - delta), written
        // over S and dP, plus dS^T for the dQ product.
        for (int64_t i = 0; i < bq; ++i) {
          const vfloat li = splat(lse_r[i]), di = splat(delta[i]);
          softmax_grad_row(sp.data() + i * ldS, dp.data() + i * ldS, dsT.data() + i, ldq, P, li, di, scale);
        }
        // dV += P^T dO, dK += dS^T Q: keys on rows, reading the row-major P / dS strips.
        gemm(P, Dp, Seg{sp.data(), ldS, dor.data(), Dp, bq}, [&](int64_t r, int64_t cc, vfloat acc) {
          float* p = dv_acc.data() + r * Dp + cc;
          vstore(p, vload(p) + acc);
        });
        gemm(P, Dp, Seg{dp.data(), ldS, qr.data(), Dp, bq}, [&](int64_t r, int64_t cc, vfloat acc) {
          float* p = dk_acc.data() + r * Dp + cc;
          vstore(p, vload(p) + acc);
        });
        // dQ = dS K, scattered back to the query rows.
        gemm(bq, Dp, Seg{dsT.data(), ldq, kr.data(), Dp, P},
             [&](int64_t r, int64_t cc, vfloat acc) { store_lanes(dqo + idx[r] * D, cc, D, acc); });
      }
      for (int64_t j = 0; j < P; ++j) {
        std::copy(dk_acc.data() + j * Dp, dk_acc.data() + j * Dp + D, dko + j * D);
        std::copy(dv_acc.data() + j * Dp, dv_acc.data() + j * Dp + D, dvo + j * D);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

void check_input(const Tensor& t, const Tensor& q) {
  t.check_device(DeviceKind::cpu).check_dim(4).check_dtype({DType::f32, DType::f16, DType::bf16});
  if (&t != &q && t.dtype != q.dtype)
    fail(t.name, std::string("must have the same dtype as ") + q.name + " (" + dtype_name(q.dtype) + "), got " +
                     dtype_name(t.dtype));
}

// Validates q/k/v/media_index/latents_per_media; returns n_media.
int64_t check_common(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& media_index, int64_t P) {
  check_input(q, q);
  check_input(k, q);
  check_input(v, q);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  k.check_shape({B, H, k.size(2), D});
  v.check_shape({B, H, k.size(2), D});
  media_index.check_device(DeviceKind::cpu).check_dtype({DType::i64}).check_dim(2).check_shape({B, T});
  if (P < 1) fail("latents_per_media", "must be >= 1, got " + std::to_string(P));
  if (k.size(2) % P != 0)
    fail("latents_per_media", std::to_string(P) + " does not divide the " + std::to_string(k.size(2)) + " rows of " +
                                  k.name);
  return k.size(2) / P;
}

// Outputs: given dtype and shape, contiguous.
}  // namespace

void media_cross_attention_forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& media_index,
                                       int64_t latents_per_media, float scale, const Tensor& out, const Tensor& lse,
                                       int num_threads) {
  const int64_t n_media = check_common(q, k, v, media_index, latents_per_media);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  out.check_cpu_output(q.dtype, {B, H, T, D});
  lse.check_cpu_output(DType::f32, {B, H, T});
  const Groups g = group_queries(media_index, B, T, n_media);
  const int threads = thread_count(num_threads);
  switch (q.dtype) {
    case DType::f32: forward_impl<float>(q, k, v, g, latents_per_media, scale, out, lse, threads); break;
    case DType::f16: forward_impl<simd::f16>(q, k, v, g, latents_per_media, scale, out, lse, threads); break;
    default: forward_impl<simd::bf16>(q, k, v, g, latents_per_media, scale, out, lse, threads); break;
  }
}

void media_cross_attention_backward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& media_index,
                                        int64_t latents_per_media, const Tensor& out, const Tensor& lse,
                                        const Tensor& dout, float scale, const Tensor& dq, const Tensor& dk,
                                        const Tensor& dv, int num_threads) {
  const int64_t n_media = check_common(q, k, v, media_index, latents_per_media);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  check_input(out, q);
  out.check_shape({B, H, T, D});
  check_input(dout, q);
  dout.check_shape({B, H, T, D});
  lse.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({B, H, T});
  dq.check_cpu_output(DType::f32, {B, H, T, D});
  dk.check_cpu_output(DType::f32, {B, H, k.size(2), D});
  dv.check_cpu_output(DType::f32, {B, H, k.size(2), D});
  const Groups g = group_queries(media_index, B, T, n_media);
  const int threads = thread_count(num_threads);
  switch (q.dtype) {
    case DType::f32:
      backward_impl<float>(q, k, v, g, latents_per_media, out, lse, dout, scale, dq, dk, dv, threads);
      break;
    case DType::f16:
      backward_impl<simd::f16>(q, k, v, g, latents_per_media, out, lse, dout, scale, dq, dk, dv, threads);
      break;
    default:
      backward_impl<simd::bf16>(q, k, v, g, latents_per_media, out, lse, dout, scale, dq, dk, dv, threads);
      break;
  }
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
