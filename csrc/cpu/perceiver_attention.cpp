// Perceiver cross-attention with two-source keys/values on the CPU (contract in
// ops/perceiver_attention.h): each query row of q [B, H, L, D] attends over the M media keys km
// followed by the L2 latent keys kl, without ever building [km; kl].
//
// Work unit: one (b, h) pair and one block of at most 64 query rows (more, smaller blocks when
// B * H is too small to feed the threads). Per unit everything is fp32 and thread-local:
//   - the keys/values of each source are packed separately (converted from f16/bf16, any
//     strides) into zero-padded panels and reused while the thread stays on the same (b, h);
//   - the scores of the block against both sources live in one [keys x queries] strip, each
//     source in its own padded row range, so "the concatenation" exists only as two row ranges
//     of the score strip and the products simply loop over the two sources in turn.
// Forward: S^T = K Q^T (keys on rows, so the softmax statistics are vectors over queries),
//   P^T = exp(S^T - max), out = (P V) / sum, lse = max + log(sum).
// Backward (per (b, h) chunk of query blocks; dK/dV accumulate in fp32 across its blocks):
//   S = Q K^T and dP = dO V^T (queries on rows), P = exp(S - lse), dS = scale P (dP - delta),
//   dV += P^T dO, dK += dS^T Q (both read the row-major P/dS directly), dQ = dS K (reads dS^T,
//   one explicit transpose of the block, cheap next to the products).
// All products share one register-blocked micro-kernel (cpu/tile.h; MR rows x 2 vectors, GCC vector
// extensions) whose A operand is read as broadcasts a[k * a_ks + r] and B as vector rows
// b[k * b_ks + c]; each product above is arranged so both are plain strided panels. Padded
// rows/columns are zero (or masked to P = 0), so they add nothing to any product.
// When B * H < threads, the backward splits a (b, h)'s query blocks into chunks whose dK/dV
// partials are summed afterwards (O(chunks * (M + L2) * D) scratch); otherwise every (b, h) is
// owned by one thread and writes its gradients directly.
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
#include "ops/perceiver_attention.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace {

using namespace simd;  // vector width, vector helpers, 16-bit loads / stores
using namespace cpu;   // micro-kernel, gemm, packing, softmax strip helpers

// Largest query block: 64 rows (the perceiver's latent count) keeps the per-thread strips
// (~100 KiB each at 320 keys) and packed operands inside L2.
constexpr int64_t kMaxBlock = 64;
// Smallest block worth splitting down to when there are few (b, h) pairs.
constexpr int64_t kMinBlock = 16;

// ---- operand views and packing ----

// Rows of one (b, h) slice of a [B, H, N, D] tensor: element (j, d) at p[j * s_row + d * s_d].
template <typename T>
struct Slice {
  const T* p;
  int64_t s_row, s_d;
  float at(int64_t j, int64_t d) const { return load_as_float(p + j * s_row + d * s_d); }
};

template <typename T>
Slice<T> slice(const Tensor& t, int64_t b, int64_t h) {
  return {t.ptr<T>() + b * t.stride(0) + h * t.stride(1), t.stride(2), t.stride(3)};
}


// Key sources: layout of the padded key axis shared by every strip of a call.
struct Sources {
  int64_t n[2];    // M, L2
  int64_t off[2];  // first padded row of each source in the strips
  int64_t np[2];   // padded length: a multiple of MR (A rows) and >= a multiple of VW (B columns)
  int64_t total;   // sum of np
};

Sources make_sources(int64_t M, int64_t L2) {
  Sources s;
  s.n[0] = M;
  s.n[1] = L2;
  int64_t off = 0;
  for (int i = 0; i < 2; ++i) {
    s.np[i] = std::max(round_up(s.n[i], MR), round_up(s.n[i], VW));
    s.off[i] = off;
    off += s.np[i];
  }
  s.total = off;
  return s;
}

// Query blocks: `count` blocks splitting L evenly, at most `max_rows` each.
struct Blocks {
  int64_t count, max_rows;
  int64_t begin(int64_t i, int64_t L) const { return i * L / count; }
};

Blocks make_blocks(int64_t L, int64_t BH, int threads) {
  int64_t nb = std::max<int64_t>(1, (L + kMaxBlock - 1) / kMaxBlock);
  // Few (b, h) pairs: split the queries further (down to kMinBlock rows) so every thread gets
  // about two units.
  while (BH * nb < 2 * threads && (L + nb) / (nb + 1) >= kMinBlock) ++nb;
  return {nb, L == 0 ? 0 : (L + nb - 1) / nb};
}


// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <typename T>
void forward_impl(const Tensor& q, const Tensor& km, const Tensor& vm, const Tensor& kl, const Tensor& vl,
                  float scale, const Tensor& out, const Tensor& lse, int threads) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const int64_t BH = B * H;
  if (BH == 0) return;
  const Sources src = make_sources(km.size(2), kl.size(2));
  const int64_t Dp = round_up(D, VW);
  const Blocks blk = make_blocks(L, BH, threads);
  const int64_t ldq = query_ld(blk.max_rows);
  const int64_t n_tasks = BH * blk.count;
  T* out_p = out.ptr<T>();
  float* lse_p = lse.ptr<float>();
  const float ninf = -std::numeric_limits<float>::infinity();
  const Tensor* keys[2] = {&km, &kl};
  const Tensor* vals[2] = {&vm, &vl};

#pragma omp parallel num_threads(threads)
  {
    // Zero-initialised once: padded lanes that no block writes must stay finite.
    std::vector<float> qT(D * ldq), kT(D * src.total), vr(src.total * Dp), st(src.total * ldq), mx(ldq), sum(ldq);
    int64_t packed_bh = -1;

#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_tasks; ++task) {
      const int64_t bh = task / blk.count, qb = task % blk.count;
      const int64_t b = bh / H, h = bh % H;
      const int64_t i0 = blk.begin(qb, L), bq = blk.begin(qb + 1, L) - i0;
      if (bq == 0) continue;
      T* o = out_p + (bh * L + i0) * D;
      float* ls = lse_p + bh * L + i0;
      if (src.n[0] + src.n[1] == 0) {  // no keys at all: empty sum
        for (int64_t i = 0; i < bq * D; ++i) store_as(o + i, 0.f);
        std::fill(ls, ls + bq, ninf);
        continue;
      }
      if (packed_bh != bh) {  // consecutive blocks of one (b, h) reuse the packed keys/values
        for (int s = 0; s < 2; ++s) {
          if (src.n[s] == 0) continue;
          pack_t(slice<T>(*keys[s], b, h), src.n[s], D, src.np[s], kT.data() + D * src.off[s]);
          pack_rows(slice<T>(*vals[s], b, h), src.n[s], D, Dp, vr.data() + src.off[s] * Dp);
        }
        packed_bh = bh;
      }
      const Slice<T> qs = slice<T>(q, b, h);
      const Slice<T> qblock{qs.p + i0 * qs.s_row, qs.s_row, qs.s_d};
      pack_t(qblock, bq, D, ldq, qT.data());

      // S^T[j][i] = scale <k_j, q_i>, source by source into its own row range of the strip.
      const int64_t nqv = round_up(bq, VW);
      for (int s = 0; s < 2; ++s) {
        if (src.n[s] == 0) continue;
        float* dst = st.data() + src.off[s] * ldq;
        const Seg seg{kT.data() + D * src.off[s], src.np[s], qT.data(), ldq, D};
        gemm(src.n[s], nqv, seg,
             [&](int64_t r, int64_t c, vfloat acc) { vstore(dst + r * ldq + c, scale * acc); });
      }
      // Column softmax statistics, vectorised over the queries of the block.
      for (int64_t c = 0; c < nqv; c += VW) {
        vfloat m = splat(ninf);
        for (int s = 0; s < 2; ++s) m = column_max(st.data() + src.off[s] * ldq + c, ldq, src.n[s], m);
        vfloat l{};
        for (int s = 0; s < 2; ++s) l = column_exp_sum(st.data() + src.off[s] * ldq + c, ldq, src.n[s], m, l);
        vstore(mx.data() + c, m);
        vstore(sum.data() + c, l);
      }
      for (int64_t i = 0; i < bq; ++i) {
        ls[i] = mx[i] + std::log(sum[i]);
        sum[i] = 1.f / sum[i];  // reused as the normaliser of the output rows
      }
      // out = (P V) / sum, both sources summed in registers.
      Seg segs[2];
      int ns = 0;
      for (int s = 0; s < 2; ++s)
        if (src.n[s] > 0) segs[ns++] = {st.data() + src.off[s] * ldq, ldq, vr.data() + src.off[s] * Dp, Dp, src.n[s]};
      gemm(bq, Dp, segs, ns,
           [&](int64_t r, int64_t c, vfloat acc) { store_lanes(o + r * D, c, D, acc * sum[r]); });
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

template <typename T>
void backward_impl(const Tensor& q, const Tensor& km, const Tensor& vm, const Tensor& kl, const Tensor& vl,
                   const Tensor& out, const Tensor& lse, const Tensor& dout, float scale, const Tensor& dq,
                   const Tensor& dkm, const Tensor& dvm, const Tensor& dkl, const Tensor& dvl, int threads) {
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const int64_t BH = B * H;
  if (BH == 0) return;
  const Sources src = make_sources(km.size(2), kl.size(2));
  const int64_t Dp = round_up(D, VW);
  const Blocks blk = make_blocks(L, BH, threads);
  const int64_t ldq = query_ld(blk.max_rows), ldS = src.total;
  // Chunks of query blocks per (b, h): more than one only when (b, h) pairs alone cannot
  // occupy the threads; their dK/dV partials then go through `partial` and are summed below.
  const int64_t chunks = BH >= threads ? 1 : std::min<int64_t>(blk.count, (2 * threads + BH - 1) / BH);
  const int64_t n_tasks = BH * chunks;
  const int64_t Nk = src.n[0] + src.n[1];
  std::vector<float> partial(chunks > 1 ? n_tasks * 2 * Nk * D : 0);
  const Tensor* keys[2] = {&km, &kl};
  const Tensor* vals[2] = {&vm, &vl};
  float* dk_out[2] = {dkm.ptr<float>(), dkl.ptr<float>()};
  float* dv_out[2] = {dvm.ptr<float>(), dvl.ptr<float>()};
  float* dq_p = dq.ptr<float>();

#pragma omp parallel num_threads(threads)
  {
    std::vector<float> qT(D * ldq), qr(ldq * Dp), doT(D * ldq), dor(ldq * Dp);
    std::vector<float> kT(D * src.total), kr(src.total * Dp), vT(D * src.total);
    std::vector<float> sp(ldq * ldS), dp(ldq * ldS), dsT(ldS * ldq);
    std::vector<float> dk_acc(src.total * Dp), dv_acc(src.total * Dp);
    std::vector<float> lse_r(ldq), delta(ldq);

#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_tasks; ++task) {
      const int64_t bh = task / chunks, chunk = task % chunks;
      const int64_t b = bh / H, h = bh % H;
      const int64_t qb0 = chunk * blk.count / chunks, qb1 = (chunk + 1) * blk.count / chunks;
      for (int s = 0; s < 2; ++s) {
        if (src.n[s] == 0) continue;
        const Slice<T> ks = slice<T>(*keys[s], b, h);
        pack_t(ks, src.n[s], D, src.np[s], kT.data() + D * src.off[s]);
        pack_rows(ks, src.n[s], D, Dp, kr.data() + src.off[s] * Dp);
        pack_t(slice<T>(*vals[s], b, h), src.n[s], D, src.np[s], vT.data() + D * src.off[s]);
      }
      std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
      const Slice<T> qs = slice<T>(q, b, h), gs = slice<T>(dout, b, h), os = slice<T>(out, b, h);
      const float* lse_bh = lse.ptr<float>() + b * lse.stride(0) + h * lse.stride(1);

      for (int64_t qb = qb0; qb < qb1; ++qb) {
        const int64_t i0 = blk.begin(qb, L), bq = blk.begin(qb + 1, L) - i0;
        if (bq == 0) continue;
        float* dqo = dq_p + (bh * L + i0) * D;
        if (Nk == 0) {  // no keys: nothing flows back
          std::fill(dqo, dqo + bq * D, 0.f);
          continue;
        }
        const Slice<T> qblock{qs.p + i0 * qs.s_row, qs.s_row, qs.s_d};
        const Slice<T> gblock{gs.p + i0 * gs.s_row, gs.s_row, gs.s_d};
        pack_t(qblock, bq, D, ldq, qT.data());
        pack_rows(qblock, bq, D, Dp, qr.data());
        pack_t(gblock, bq, D, ldq, doT.data());
        pack_rows(gblock, bq, D, Dp, dor.data());
        for (int64_t i = 0; i < bq; ++i) {
          // delta from the stored (rounded) output, as the autograd formula sees it.
          float acc = 0.f;
          for (int64_t d = 0; d < D; ++d) acc += dor[i * Dp + d] * os.at(i0 + i, d);
          delta[i] = acc;
          lse_r[i] = lse_bh[(i0 + i) * lse.stride(2)];
        }
        // S = scale Q K^T and dP = dO V^T, queries on rows, each source in its column range.
        for (int s = 0; s < 2; ++s) {
          if (src.n[s] == 0) continue;
          const int64_t ncv = round_up(src.n[s], VW), off = src.off[s];
          const Seg sseg{qT.data(), ldq, kT.data() + D * off, src.np[s], D};
          gemm(bq, ncv, sseg,
               [&](int64_t r, int64_t c, vfloat acc) { vstore(sp.data() + r * ldS + off + c, scale * acc); });
          const Seg pseg{doT.data(), ldq, vT.data() + D * off, src.np[s], D};
          gemm(bq, ncv, pseg, [&](int64_t r, int64_t c, vfloat acc) { vstore(dp.data() + r * ldS + off + c, acc); });
        }
        // P = exp(S - lse) (padded key columns forced to 0), dS = scale P (dP - delta),
        // written over S and dP, plus dS^T for the dQ product.
        for (int64_t i = 0; i < bq; ++i) {
          const vfloat li = splat(lse_r[i]), di = splat(delta[i]);
          for (int s = 0; s < 2; ++s) {
            const int64_t off = src.off[s];
            softmax_grad_row(sp.data() + i * ldS + off, dp.data() + i * ldS + off, dsT.data() + off * ldq + i, ldq,
                             src.n[s], li, di, scale);
          }
        }
        // dV += P^T dO, dK += dS^T Q: keys on rows, reading the row-major P / dS strips.
        for (int s = 0; s < 2; ++s) {
          if (src.n[s] == 0) continue;
          const int64_t off = src.off[s];
          const Seg vseg{sp.data() + off, ldS, dor.data(), Dp, bq};
          gemm(src.n[s], Dp, vseg, [&](int64_t r, int64_t c, vfloat acc) {
            float* p = dv_acc.data() + (off + r) * Dp + c;
            vstore(p, vload(p) + acc);
          });
          const Seg kseg{dp.data() + off, ldS, qr.data(), Dp, bq};
          gemm(src.n[s], Dp, kseg, [&](int64_t r, int64_t c, vfloat acc) {
            float* p = dk_acc.data() + (off + r) * Dp + c;
            vstore(p, vload(p) + acc);
          });
        }
        // dQ = dS K over both sources.
        Seg segs[2];
        int ns = 0;
        for (int s = 0; s < 2; ++s)
          if (src.n[s] > 0)
            segs[ns++] = {dsT.data() + src.off[s] * ldq, ldq, kr.data() + src.off[s] * Dp, Dp, src.n[s]};
        gemm(bq, Dp, segs, ns, [&](int64_t r, int64_t c, vfloat acc) { store_lanes(dqo + r * D, c, D, acc); });
      }

      // Flush dK / dV: straight into the outputs when this task owns the (b, h), else into its
      // partial slot ([dK rows of both sources; dV rows], unpadded).
      for (int s = 0; s < 2; ++s) {
        const int64_t n = src.n[s];
        for (int64_t j = 0; j < n; ++j) {
          const float* ka = dk_acc.data() + (src.off[s] + j) * Dp;
          const float* va = dv_acc.data() + (src.off[s] + j) * Dp;
          float *kd, *vd;
          if (chunks == 1) {
            kd = dk_out[s] + (bh * n + j) * D;
            vd = dv_out[s] + (bh * n + j) * D;
          } else {
            const int64_t row = (s == 0 ? 0 : src.n[0]) + j;
            kd = partial.data() + (task * 2 * Nk + row) * D;
            vd = partial.data() + (task * 2 * Nk + Nk + row) * D;
          }
          std::copy(ka, ka + D, kd);
          std::copy(va, va + D, vd);
        }
      }
    }

    if (chunks > 1) {
      // Sum the chunks' partials (the `omp for` above ends with a barrier).
#pragma omp for schedule(static)
      for (int64_t row = 0; row < BH * Nk; ++row) {
        const int64_t bh = row / Nk, j = row % Nk;
        const int s = j < src.n[0] ? 0 : 1;
        const int64_t js = s == 0 ? j : j - src.n[0];
        float* kd = dk_out[s] + (bh * src.n[s] + js) * D;
        float* vd = dv_out[s] + (bh * src.n[s] + js) * D;
        std::fill(kd, kd + D, 0.f);
        std::fill(vd, vd + D, 0.f);
        for (int64_t c = 0; c < chunks; ++c) {
          const float* base = partial.data() + (bh * chunks + c) * 2 * Nk * D;
          for (int64_t d = 0; d < D; ++d) {
            kd[d] += base[j * D + d];
            vd[d] += base[(Nk + j) * D + d];
          }
        }
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

// km/vm (and kl/vl): [B, H, N, D] with q's B, H, D; v's shape must equal k's.
void check_kv(const Tensor& k, const Tensor& v, const Tensor& q) {
  check_input(k, q);
  check_input(v, q);
  k.check_shape({q.size(0), q.size(1), k.size(2), q.size(3)});
  v.check_shape({q.size(0), q.size(1), k.size(2), q.size(3)});
}

void check_common(const Tensor& q, const Tensor& km, const Tensor& vm, const Tensor& kl, const Tensor& vl) {
  check_input(q, q);
  check_kv(km, vm, q);
  check_kv(kl, vl, q);
}

// Outputs: given dtype and shape, contiguous.
}  // namespace

void perceiver_attention_forward_cpu(const Tensor& q, const Tensor& km, const Tensor& vm, const Tensor& kl,
                                     const Tensor& vl, float scale, const Tensor& out, const Tensor& lse,
                                     int num_threads) {
  check_common(q, km, vm, kl, vl);
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  out.check_cpu_output(q.dtype, {B, H, L, D});
  lse.check_cpu_output(DType::f32, {B, H, L});
  const int threads = thread_count(num_threads);
  switch (q.dtype) {
    case DType::f32: forward_impl<float>(q, km, vm, kl, vl, scale, out, lse, threads); break;
    case DType::f16: forward_impl<simd::f16>(q, km, vm, kl, vl, scale, out, lse, threads); break;
    default: forward_impl<simd::bf16>(q, km, vm, kl, vl, scale, out, lse, threads); break;
  }
}

void perceiver_attention_backward_cpu(const Tensor& q, const Tensor& km, const Tensor& vm, const Tensor& kl,
                                      const Tensor& vl, const Tensor& out, const Tensor& lse, const Tensor& dout,
                                      float scale, const Tensor& dq, const Tensor& dkm, const Tensor& dvm,
                                      const Tensor& dkl, const Tensor& dvl, int num_threads) {
  check_common(q, km, vm, kl, vl);
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  const int64_t M = km.size(2), L2 = kl.size(2);
  check_input(out, q);
  out.check_shape({B, H, L, D});
  check_input(dout, q);
  dout.check_shape({B, H, L, D});
  lse.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({B, H, L});
  dq.check_cpu_output(DType::f32, {B, H, L, D});
  dkm.check_cpu_output(DType::f32, {B, H, M, D});
  dvm.check_cpu_output(DType::f32, {B, H, M, D});
  dkl.check_cpu_output(DType::f32, {B, H, L2, D});
  dvl.check_cpu_output(DType::f32, {B, H, L2, D});
  const int threads = thread_count(num_threads);
  switch (q.dtype) {
    case DType::f32:
      backward_impl<float>(q, km, vm, kl, vl, out, lse, dout, scale, dq, dkm, dvm, dkl, dvl, threads);
      break;
    case DType::f16:
      backward_impl<simd::f16>(q, km, vm, kl, vl, out, lse, dout, scale, dq, dkm, dvm, dkl, dvl, threads);
      break;
    default:
      backward_impl<simd::bf16>(q, km, vm, kl, vl, out, lse, dout, scale, dq, dkm, dvm, dkl, dvl, threads);
      break;
  }
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
