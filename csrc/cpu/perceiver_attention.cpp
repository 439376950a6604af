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
// All products share one register-blocked micro-kernel (MR rows x 2 vectors, GCC vector
// extensions) whose A operand is read as broadcasts a[k * a_ks + r] and B as vector rows
// b[k * b_ks + c]; each product above is arranged so both are plain strided panels. Padded
// rows/columns are zero (or masked to P = 0), so they add nothing to any product.
// When B * H < threads, the backward splits a (b, h)'s query blocks into chunks whose dK/dV
// partials are summed afterwards (O(chunks * (M + L2) * D) scratch); otherwise every (b, h) is
// owned by one thread and writes its gradients directly.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/simd.h"
#include "ops/perceiver_attention.h"

namespace fmkit {
namespace {

using simd::load_as_float;
using simd::MR;
using simd::NR;
using simd::vfloat;
using simd::VW;
constexpr int NV = NR / VW;
static_assert(NV == 2, "the micro-kernel dispatch below assumes two vectors per micro-tile row");
typedef int32_t vint __attribute__((vector_size(VW * sizeof(int32_t))));

// Largest query block: 64 rows (the perceiver's latent count) keeps the per-thread strips
// (~100 KiB each at 320 keys) and packed operands inside L2.
constexpr int64_t kMaxBlock = 64;
// Smallest block worth splitting down to when there are few (b, h) pairs.
constexpr int64_t kMinBlock = 16;

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
inline vfloat splat(float v) { return vfloat{} + v; }
inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }
inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }

// exp on a vector: x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite split of ln2), a degree-7
// Taylor polynomial for e^r and 2^n assembled in the exponent field. Clamping to [-88, 88]
// keeps 2^n normal or exactly 0 (so exp(-inf) = 0 and tiny probabilities flush to 0 instead
// of producing denormals); a libm call per score would cost as much as the products.
inline vfloat vexp(vfloat x) {
  const vfloat lo = splat(-88.f), hi = splat(88.f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vfloat magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat n = (x * 1.44269504088896341f + magic) - magic;
  vfloat r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vfloat p = splat(1.f / 5040.f);
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// ---- fp32 -> storage, round to nearest even ----

inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));  // NaN stays NaN
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (x >= 0x38800000u) {  // normal half: rebias the exponent, round the 13 dropped bits
    const uint32_t b = x - (112u << 23);
    return static_cast<uint16_t>(sign | ((b + 0x0fffu + ((b >> 13) & 1u)) >> 13));
  }
  // Subnormal half (units of 2^-24): shift the full significand right and round; a carry into
  // bit 10 correctly yields the smallest normal.
  const int shift = 126 - static_cast<int>(x >> 23);
  if (shift > 24) return static_cast<uint16_t>(sign);
  const uint32_t m = (x & 0x7fffffu) | 0x800000u;
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);  // overflow carries into inf
}

inline void store_as(float* p, float v) { *p = v; }
inline void store_as(simd::f16* p, float v) { p->bits = float_to_half_bits(v); }
inline void store_as(simd::bf16* p, float v) { p->bits = float_to_bf16_bits(v); }

// ---- micro-kernel ----

// One operand pair of a product C = sum_k A(r, k) B(k, c): A(r, k) = a[k * a_ks + r],
// B(k, c) = b[k * b_ks + c]. A product may sum several pairs (one per key source).
struct Seg {
  const float* a;
  int64_t a_ks;
  const float* b;
  int64_t b_ks;
  int64_t K;
};

// C[r0 .. r0 + MR) x [c0 .. c0 + NVC * VW) summed over `nseg` pairs, kept in registers
// (2 * MR accumulators); store(row, col, acc) receives each of the first `rvalid` rows.
template <int NVC, typename Store>
inline void micro(const Seg* seg, int nseg, int64_t r0, int64_t c0, int rvalid, Store& store) {
  vfloat acc[MR][NVC];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NVC; ++v) acc[r][v] = vfloat{};
  for (int s = 0; s < nseg; ++s) {
    const float* a = seg[s].a + r0;
    const float* b = seg[s].b + c0;
    const int64_t a_ks = seg[s].a_ks, b_ks = seg[s].b_ks, K = seg[s].K;
    for (int64_t k = 0; k < K; ++k) {
      vfloat bv[NVC];
      for (int v = 0; v < NVC; ++v) bv[v] = vload(b + k * b_ks + v * VW);
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
template <typename Store>
void gemm(int64_t rows, int64_t cols, const Seg* seg, int nseg, Store&& store) {
  for (int64_t c0 = 0; c0 < cols; c0 += NR) {
    const bool full = cols - c0 >= NR;
    for (int64_t r0 = 0; r0 < rows; r0 += MR) {
      const int rv = static_cast<int>(std::min<int64_t>(MR, rows - r0));
      if (full)
        micro<NV>(seg, nseg, r0, c0, rv, store);
      else
        micro<1>(seg, nseg, r0, c0, rv, store);
    }
  }
}

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

// Rows [0, n) -> out[d * ld + j] (transposed), columns [n, ld) zeroed.
template <typename T>
void pack_t(const Slice<T>& x, int64_t n, int64_t D, int64_t ld, float* out) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) out[d * ld + j] = x.at(j, d);
  for (int64_t d = 0; d < D; ++d) std::fill(out + d * ld + n, out + (d + 1) * ld, 0.f);
}

// Rows [0, n) -> out[j * Dp + d], columns [D, Dp) zeroed.
template <typename T>
void pack_rows(const Slice<T>& x, int64_t n, int64_t D, int64_t Dp, float* out) {
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
  vstore(tmp, v);
  for (int64_t c = 0; c < n; ++c) store_as(dst + col + c, tmp[c]);
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

// Leading dimension of query-indexed strips: rows of MR (A side) and vectors of VW (B side).
inline int64_t query_ld(int64_t rows) { return std::max<int64_t>(MR, std::max(round_up(rows, MR), round_up(rows, VW))); }

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
        gemm(src.n[s], nqv, &seg, 1,
             [&](int64_t r, int64_t c, vfloat acc) { vstore(dst + r * ldq + c, scale * acc); });
      }
      // Column softmax statistics, vectorised over the queries of the block.
      for (int64_t c = 0; c < nqv; c += VW) {
        vfloat m = splat(ninf);
        for (int s = 0; s < 2; ++s)
          for (int64_t j = 0; j < src.n[s]; ++j) m = vmax(m, vload(st.data() + (src.off[s] + j) * ldq + c));
        vfloat l{};
        for (int s = 0; s < 2; ++s)
          for (int64_t j = 0; j < src.n[s]; ++j) {
            float* p = st.data() + (src.off[s] + j) * ldq + c;
            const vfloat e = vexp(vload(p) - m);
            vstore(p, e);
            l += e;
          }
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
          gemm(bq, ncv, &sseg, 1,
               [&](int64_t r, int64_t c, vfloat acc) { vstore(sp.data() + r * ldS + off + c, scale * acc); });
          const Seg pseg{doT.data(), ldq, vT.data() + D * off, src.np[s], D};
          gemm(bq, ncv, &pseg, 1, [&](int64_t r, int64_t c, vfloat acc) { vstore(dp.data() + r * ldS + off + c, acc); });
        }
        // P = exp(S - lse) (padded key columns forced to 0), dS = scale P (dP - delta),
        // written over S and dP, plus dS^T for the dQ product.
        for (int64_t i = 0; i < bq; ++i) {
          const vfloat li = splat(lse_r[i]), di = splat(delta[i]);
          for (int s = 0; s < 2; ++s) {
            const int64_t n = src.n[s], off = src.off[s];
            for (int64_t c = 0; c < n; c += VW) {
              float* pp = sp.data() + i * ldS + off + c;
              float* dd = dp.data() + i * ldS + off + c;
              vfloat p = vexp(vload(pp) - li);
              if (n - c < VW) {
                vint lane;
                for (int v = 0; v < VW; ++v) lane[v] = v < n - c ? -1 : 0;
                p = lane ? p : vfloat{};
              }
              const vfloat ds = scale * p * (vload(dd) - di);
              vstore(pp, p);
              vstore(dd, ds);
              float* t = dsT.data() + (off + c) * ldq + i;
              for (int v = 0; v < VW && c + v < n; ++v) t[v * ldq] = ds[v];
            }
          }
        }
        // dV += P^T dO, dK += dS^T Q: keys on rows, reading the row-major P / dS strips.
        for (int s = 0; s < 2; ++s) {
          if (src.n[s] == 0) continue;
          const int64_t off = src.off[s];
          const Seg vseg{sp.data() + off, ldS, dor.data(), Dp, bq};
          gemm(src.n[s], Dp, &vseg, 1, [&](int64_t r, int64_t c, vfloat acc) {
            float* p = dv_acc.data() + (off + r) * Dp + c;
            vstore(p, vload(p) + acc);
          });
          const Seg kseg{dp.data() + off, ldS, qr.data(), Dp, bq};
          gemm(src.n[s], Dp, &kseg, 1, [&](int64_t r, int64_t c, vfloat acc) {
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
void check_output(const Tensor& g, DType dtype, std::initializer_list<int64_t> shape) {
  g.check_device(DeviceKind::cpu).check_dtype({dtype}).check_shape(shape);
  // An empty tensor (e.g. dkm with M = 0) is trivially contiguous whatever strides it reports.
  if (g.numel() > 0) g.check_contiguous();
}

int clamp_threads(int num_threads) {
#ifdef _OPENMP
  return std::max(1, num_threads);
#else
  (void)num_threads;
  return 1;
#endif
}

}  // namespace

void perceiver_attention_forward_cpu(const Tensor& q, const Tensor& km, const Tensor& vm, const Tensor& kl,
                                     const Tensor& vl, float scale, const Tensor& out, const Tensor& lse,
                                     int num_threads) {
  check_common(q, km, vm, kl, vl);
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), D = q.size(3);
  check_output(out, q.dtype, {B, H, L, D});
  check_output(lse, DType::f32, {B, H, L});
  const int threads = clamp_threads(num_threads);
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
  check_output(dq, DType::f32, {B, H, L, D});
  check_output(dkm, DType::f32, {B, H, M, D});
  check_output(dvm, DType::f32, {B, H, M, D});
  check_output(dkl, DType::f32, {B, H, L2, D});
  check_output(dvl, DType::f32, {B, H, L2, D});
  const int threads = clamp_threads(num_threads);
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

}  // namespace fmkit
