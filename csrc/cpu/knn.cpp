// kNN candidate search on the CPU (contract in ops/knn.h).
//
// Computes score tiles with a register-blocked fp32 micro-kernel (MR query rows x NR
// database columns held in vector registers, GCC vector extensions so the same source
// vectorises for AVX-512, AVX2 and NEON) and filters each micro-tile against the
// running per-query threshold before anything is written: the distance matrix is never
// stored, not even per tile. Per-query selection is a bounded max-heap of kprime
// (score, index) pairs kept directly in the output rows.
//
// Work is split over (query block x database split) items with OpenMP; the database is
// split only when there are too few query blocks to keep every thread busy, and the
// splits' candidate lists are merged at the end. Database tiles are re-packed (converted
// to fp32, centred, transposed into NR-wide panels) per query block: that costs 1/QB of
// the arithmetic and keeps the workspace independent of N.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/simd.h"
#include "cpu/dispatch.h"
#include "ops/knn.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace {

using simd::MR;
using simd::NR;
using simd::VW;
using simd::vfloat;
using simd::load_as_float;
// Query rows per work item: as many as keep every thread busy with two items, up to
// kMaxQueryBlock, because each item re-packs the database (a 1/QB overhead).
constexpr int kMaxQueryBlock = 64 * MR;

// True if any lane of a or b is below t. This runs once per row of every micro-tile, so it
// must be a compare + mask test, not a loop over lanes.
inline bool any_below(vfloat a, vfloat b, float t) {
#if defined(__AVX512F__) && !defined(FMKIT_SIMD_SCALAR)
  const __m512 vt = _mm512_set1_ps(t);
  return (_mm512_cmp_ps_mask(reinterpret_cast<__m512&>(a), vt, _CMP_LT_OQ) |
          _mm512_cmp_ps_mask(reinterpret_cast<__m512&>(b), vt, _CMP_LT_OQ)) != 0;
#elif defined(__AVX2__) && !defined(FMKIT_SIMD_SCALAR)
  const __m256 vt = _mm256_set1_ps(t);
  return _mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(reinterpret_cast<__m256&>(a), vt, _CMP_LT_OQ),
                                         _mm256_cmp_ps(reinterpret_cast<__m256&>(b), vt, _CMP_LT_OQ))) != 0;
#else
  const auto pass = (a < t) | (b < t);
  bool any = false;
  for (int c = 0; c < VW; ++c) any |= pass[c] != 0;
  return any;
#endif
}

// Bit c set where lane c of (a, b) (NR = 2 * VW lanes) is below t.
inline uint64_t below_mask(vfloat a, vfloat b, float t) {
#if defined(__AVX512F__) && !defined(FMKIT_SIMD_SCALAR)
  const __m512 vt = _mm512_set1_ps(t);
  return static_cast<uint64_t>(_mm512_cmp_ps_mask(reinterpret_cast<__m512&>(a), vt, _CMP_LT_OQ)) |
         static_cast<uint64_t>(_mm512_cmp_ps_mask(reinterpret_cast<__m512&>(b), vt, _CMP_LT_OQ)) << VW;
#elif defined(__AVX2__) && !defined(FMKIT_SIMD_SCALAR)
  const __m256 vt = _mm256_set1_ps(t);
  return static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(reinterpret_cast<__m256&>(a), vt, _CMP_LT_OQ))) |
         static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(reinterpret_cast<__m256&>(b), vt, _CMP_LT_OQ))) << VW;
#else
  uint64_t m = 0;
  for (int c = 0; c < VW; ++c) m |= static_cast<uint64_t>(a[c] < t) << c | static_cast<uint64_t>(b[c] < t) << (c + VW);
  return m;
#endif
}

struct Candidate {
  float score;
  int64_t index;
};
inline bool before(const Candidate& a, const Candidate& b) {
  return a.score < b.score || (a.score == b.score && a.index < b.index);
}

// Max-heap (by `before`) of fixed capacity over caller-owned storage.
struct BoundedHeap {
  Candidate* items;
  int64_t capacity;

  void reset() {
    for (int64_t i = 0; i < capacity; ++i) items[i] = {std::numeric_limits<float>::infinity(), std::numeric_limits<int64_t>::max()};
  }
  float threshold() const { return items[0].score; }
  void push(Candidate c) {
    if (!before(c, items[0])) return;
    // Sift the new element down from the root, replacing the current maximum.
    int64_t i = 0;
    for (;;) {
      int64_t l = 2 * i + 1, r = l + 1, big = i;
      Candidate bigv = c;
      if (l < capacity && before(bigv, items[l])) { big = l; bigv = items[l]; }
      if (r < capacity && before(bigv, items[r])) { big = r; bigv = items[r]; }
      if (big == i) break;
      items[i] = items[big];
      i = big;
    }
    items[i] = c;
  }
  void sort() { std::sort(items, items + capacity, before); }
};


struct Problem {
  const void* queries; int64_t q_stride0, q_stride1;
  const void* database; int64_t db_stride0, db_stride1;
  const float* center;    // database centre (both metrics: IP ranks by <x, y - c>, same order)
  const float* q_center;  // query centre: center for L2, nullptr for IP
  int64_t Q, N, d, kprime, self_offset;
  float norm_weight, dot_weight;  // score = norm_weight*|y|^2 + dot_weight*<x, y>
};

// Packs rows [row0, row0 + rows) of a matrix into row-major fp32 [rows_padded][d], centred.
template <typename T>
void pack_rows(const T* base, int64_t s0, int64_t s1, int64_t row0, int64_t rows, int64_t d,
               const float* center, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = base + (row0 + r) * s0;
    float* dst = out + r * d;
    for (int64_t k = 0; k < d; ++k) dst[k] = load_as_float(src + k * s1) - (center ? center[k] : 0.f);
  }
}

// Packs rows [row0, row0 + rows), centred, into W-wide interleaved blocks [block][d][W], zero
// padded: database panels (W = NR, with squared norms; padding norms are +inf so padding
// columns never pass the filter) and query row groups (W = MR, norms = nullptr).
template <int W, typename T>
void pack_interleaved(const T* base, int64_t s0, int64_t s1, int64_t row0, int64_t rows, int64_t d,
                      const float* center, float* out, float* norms) {
  const int64_t blocks = (rows + W - 1) / W;
  for (int64_t p = 0; p < blocks; ++p) {
    float* block = out + p * d * W;
    for (int c = 0; c < W; ++c) {
      const int64_t r = p * W + c;
      if (r < rows) {
        const T* src = base + (row0 + r) * s0;
        float norm = 0.f;
        for (int64_t k = 0; k < d; ++k) {
          const float v = load_as_float(src + k * s1) - (center ? center[k] : 0.f);
          block[k * W + c] = v;
          norm += v * v;
        }
        if (norms) norms[r] = norm;
      } else {
        for (int64_t k = 0; k < d; ++k) block[k * W + c] = 0.f;
        if (norms) norms[r] = std::numeric_limits<float>::infinity();
      }
    }
  }
}

template <typename T>
void pack_panels(const T* base, int64_t s0, int64_t s1, int64_t row0, int64_t rows, int64_t d,
                 const float* center, float* panels, float* norms) {
  pack_interleaved<NR>(base, s0, s1, row0, rows, d, center, panels, norms);
}

template <typename T>
void pack_row_groups(const T* base, int64_t s0, int64_t s1, int64_t row0, int64_t rows, int64_t d,
                     const float* center, float* out) {
  pack_interleaved<MR>(base, s0, s1, row0, rows, d, center, out, nullptr);
}

// Dot products of ROWS query rows with one NR-wide panel, in vector registers. The rows are
// either d-strided (Packed = false: rows[r * d + k]) or packed [d][ROWS] by pack_row_groups
// (Packed = true: rows[k * ROWS + r]); packed, every broadcast is at a fixed offset from one
// pointer, so the loop needs no per-row addresses (d-strided rows need ROWS of them, more than
// there are free registers).
template <int ROWS, bool Packed>
inline void dot_tile(const float* rows, int64_t d, const float* panel, vfloat (&acc)[ROWS][2]) {
  for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = vfloat{} ;
  for (int64_t k = 0; k < d; ++k) {
    vfloat b0, b1;
    __builtin_memcpy(&b0, panel + k * NR, sizeof(vfloat));
    __builtin_memcpy(&b1, panel + k * NR + VW, sizeof(vfloat));
    for (int r = 0; r < ROWS; ++r) {
      const float a = Packed ? rows[k * ROWS + r] : rows[r * d + k];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
}

// One MR x NR micro-tile of dot products, then the filter against each row's heap.
template <int ROWS>
inline void micro_tile(const float* qrows, int64_t d, const float* panel, const float* norms,
                       int64_t col0, int64_t query0, const Problem& pb, BoundedHeap* heaps) {
  vfloat acc[ROWS][2];
  dot_tile<ROWS, false>(qrows, d, panel, acc);
  vfloat n0, n1;
  __builtin_memcpy(&n0, norms, sizeof(vfloat));
  __builtin_memcpy(&n1, norms + VW, sizeof(vfloat));
  for (int r = 0; r < ROWS; ++r) {
    BoundedHeap& heap = heaps[r];
    const vfloat s0 = pb.norm_weight * n0 + pb.dot_weight * acc[r][0];
    const vfloat s1 = pb.norm_weight * n1 + pb.dot_weight * acc[r][1];
    // Columns arrive in increasing index order, so an equal score never displaces a
    // kept candidate: a strict comparison is exact.
    if (!any_below(s0, s1, heap.threshold())) continue;
    const int64_t self = pb.self_offset >= 0 ? query0 + r + pb.self_offset : -1;
    for (int c = 0; c < NR; ++c) {
      const float s = c < VW ? s0[c] : s1[c - VW];
      const int64_t j = col0 + c;
      if (s < heap.threshold() && j != self) heap.push({s, j});
    }
  }
}

template <typename T>
void search_item(const Problem& pb, int64_t q0, int64_t q_rows, int64_t db0, int64_t db_rows,
                 Candidate* out_rows, std::vector<float>& qbuf, std::vector<float>& panels,
                 std::vector<float>& norms, int64_t tile_rows) {
  const int64_t d = pb.d;
  pack_rows(static_cast<const T*>(pb.queries), pb.q_stride0, pb.q_stride1, q0, q_rows, d, pb.q_center, qbuf.data());
  std::vector<BoundedHeap> heaps(q_rows);
  for (int64_t r = 0; r < q_rows; ++r) {
    heaps[r] = {out_rows + r * pb.kprime, pb.kprime};
    heaps[r].reset();
  }
  for (int64_t t0 = 0; t0 < db_rows; t0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, db_rows - t0);
    pack_panels(static_cast<const T*>(pb.database), pb.db_stride0, pb.db_stride1, db0 + t0, rows, d,
                pb.center, panels.data(), norms.data());
    const int64_t n_panels = (rows + NR - 1) / NR;
    for (int64_t r0 = 0; r0 < q_rows; r0 += MR) {
      const float* qrows = qbuf.data() + r0 * d;
      for (int64_t p = 0; p < n_panels; ++p) {
        const float* panel = panels.data() + p * d * NR;
        const float* pn = norms.data() + p * NR;
        const int64_t col0 = db0 + t0 + p * NR;
        if (q_rows - r0 >= MR) {
          micro_tile<MR>(qrows, d, panel, pn, col0, q0 + r0, pb, heaps.data() + r0);
        } else {
          // Tail rows: one row at a time keeps the code small; it is at most MR-1 rows.
          for (int64_t r = r0; r < q_rows; ++r)
            micro_tile<1>(qbuf.data() + r * d, d, panel, pn, col0, q0 + r, pb, heaps.data() + r);
        }
      }
    }
  }
  for (auto& h : heaps) h.sort();
}

template <typename T>
void run(const Problem& pb, Candidate* result, int num_threads) {
  const int64_t per_thread = (pb.Q + 2 * num_threads - 1) / (2 * num_threads);
  const int64_t QB = std::max<int64_t>(MR, std::min<int64_t>(kMaxQueryBlock, (per_thread + MR - 1) / MR * MR));
  const int64_t n_qblocks = (pb.Q + QB - 1) / QB;
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(
      num_threads > n_qblocks ? (num_threads + n_qblocks - 1) / n_qblocks : 1, pb.N / std::max<int64_t>(pb.kprime, NR)));
  // Panel tile: about 128 KiB of packed database so that it stays in L2 across a query block.
  const int64_t tile_rows = std::max<int64_t>(NR, std::min<int64_t>(512, (32768 / std::max<int64_t>(pb.d, 1)) / NR * NR));
  // Split s writes into its own [Q, kprime] list; split 0 into the result.
  std::vector<Candidate> extra(static_cast<size_t>((splits - 1) * pb.Q * pb.kprime));
  const int64_t split_rows = (pb.N + splits - 1) / splits;
  const int64_t n_items = n_qblocks * splits;

#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> qbuf(QB * pb.d), panels((tile_rows + NR) * pb.d), norms(tile_rows + NR);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n_items; ++item) {
      const int64_t qb = item / splits, s = item % splits;
      const int64_t q0 = qb * QB, q_rows = std::min<int64_t>(QB, pb.Q - q0);
      const int64_t db0 = s * split_rows, db_rows = std::min(split_rows, pb.N - db0);
      Candidate* out = s == 0 ? result + q0 * pb.kprime : extra.data() + ((s - 1) * pb.Q + q0) * pb.kprime;
      if (db_rows <= 0) {
        BoundedHeap h{out, q_rows * pb.kprime};
        h.reset();
        continue;
      }
      search_item<T>(pb, q0, q_rows, db0, db_rows, out, qbuf, panels, norms, tile_rows);
    }
    if (splits > 1) {
      std::vector<Candidate> merged;
#pragma omp for schedule(static)
      for (int64_t q = 0; q < pb.Q; ++q) {
        merged.assign(result + q * pb.kprime, result + (q + 1) * pb.kprime);
        for (int64_t s = 1; s < splits; ++s) {
          const Candidate* part = extra.data() + ((s - 1) * pb.Q + q) * pb.kprime;
          merged.insert(merged.end(), part, part + pb.kprime);
        }
        std::partial_sort(merged.begin(), merged.begin() + pb.kprime, merged.end(), before);
        std::copy(merged.begin(), merged.begin() + pb.kprime, result + q * pb.kprime);
      }
    }
  }
}

// ---- k = 1: the best and the second-best score per row instead of a heap ----
//
// For one neighbour the candidate contract holds with a single candidate, the best-scoring
// row, and the second-best score as the threshold every other row reaches; that gap is what
// Python's certificate needs. Keeping two floats per row makes the filter one compare against
// a register-resident threshold and removes the heap, the sort and the kprime-wide re-rank.
struct Best2 {
  float s1, s2;  // best score (ties: lower index) and the best score of every other row
  int64_t i1;    // -1 until a finite score is seen
};

inline void merge_best2(Best2& a, const Best2& b) {  // b covers higher indices than a
  if (b.s1 < a.s1) {
    a.s2 = std::min(a.s1, b.s2);
    a.s1 = b.s1;
    a.i1 = b.i1;
  } else {
    a.s2 = std::min(a.s2, b.s1);
  }
}

// Columns arrive in increasing index order: a score equal to the best goes to s2 (gap 0, so
// the row is left to the exact fallback) and the best keeps the lower index.
// `lanes` has a bit for every column that was below b.s2 when tested. After a row's first
// tiles that is usually a single column; the first tile of a row passes every column, and
// a branch per column there mispredicts often, so several columns are reduced without
// branches to the tile's own best two and merged.
__attribute__((noinline)) void best2_update(Best2& b, const float* scores, uint64_t lanes, int64_t col0) {
  if ((lanes & (lanes - 1)) == 0) {
    const int c = __builtin_ctzll(lanes);
    const float s = scores[c];
    if (s < b.s1) {
      b.s2 = b.s1;
      b.s1 = s;
      b.i1 = col0 + c;
    } else if (s < b.s2) {
      b.s2 = s;
    }
    return;
  }
  const float inf = std::numeric_limits<float>::infinity();
#if defined(__AVX512F__) && !defined(FMKIT_SIMD_SCALAR)
  // Columns outside `lanes` (>= b.s2, or NaN padding) become +inf: they cannot change the
  // merged result. At least two lanes are set, so both minima are finite.
  const __m512 vinf = _mm512_set1_ps(inf);
  __m512 lo = _mm512_mask_loadu_ps(vinf, static_cast<__mmask16>(lanes), scores);
  __m512 hi = _mm512_mask_loadu_ps(vinf, static_cast<__mmask16>(lanes >> VW), scores + VW);
  const float m1 = _mm512_reduce_min_ps(_mm512_min_ps(lo, hi));
  const __m512 vm1 = _mm512_set1_ps(m1);
  const uint64_t at = static_cast<uint64_t>(_mm512_cmp_ps_mask(lo, vm1, _CMP_EQ_OQ)) |
                      static_cast<uint64_t>(_mm512_cmp_ps_mask(hi, vm1, _CMP_EQ_OQ)) << VW;
  const int c1 = __builtin_ctzll(at);  // the lowest column at the minimum
  const uint64_t drop = uint64_t{1} << c1;
  lo = _mm512_mask_mov_ps(lo, static_cast<__mmask16>(drop), vinf);
  hi = _mm512_mask_mov_ps(hi, static_cast<__mmask16>(drop >> VW), vinf);
  const float m2 = _mm512_reduce_min_ps(_mm512_min_ps(lo, hi));
  merge_best2(b, Best2{m1, m2, col0 + c1});
#else
  float m1 = inf, m2 = inf;
  int c1 = -1;
  for (int c = 0; c < NR; ++c) {
    const float s = scores[c];  // NaN (padding with IP) fails every comparison
    const bool lt = s < m1;
    m2 = lt ? m1 : (s < m2 ? s : m2);
    c1 = lt ? c : c1;
    m1 = lt ? s : m1;
  }
  if (c1 >= 0) merge_best2(b, Best2{m1, m2, col0 + c1});
#endif
}

template <int ROWS>
inline void best2_tile(const float* qgroup, int64_t d, const float* panel, const float* norms, int64_t col0,
                       const Problem& pb, Best2* best) {
  vfloat acc[ROWS][2];
  dot_tile<ROWS, true>(qgroup, d, panel, acc);
  vfloat n0, n1;
  __builtin_memcpy(&n0, norms, sizeof(vfloat));
  __builtin_memcpy(&n1, norms + VW, sizeof(vfloat));
  // Almost every tile improves no row: the test runs on the accumulators in registers and
  // only a hit stores its row's scores (indexing acc in a loop would spill it every tile).
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) {
    const vfloat s0 = pb.norm_weight * n0 + pb.dot_weight * acc[r][0];
    const vfloat s1 = pb.norm_weight * n1 + pb.dot_weight * acc[r][1];
    const uint64_t lanes = below_mask(s0, s1, best[r].s2);
    if (__builtin_expect(lanes != 0, 0)) {
      float scores[NR];
      __builtin_memcpy(scores, &s0, sizeof(vfloat));
      __builtin_memcpy(scores + VW, &s1, sizeof(vfloat));
      best2_update(best[r], scores, lanes, col0);
    }
  }
}

// `scratch` holds one Best2 per row of the zero-padded last group.
template <typename T>
void nearest_item(const Problem& pb, int64_t q0, int64_t q_rows, int64_t db0, int64_t db_rows, Best2* best,
                  std::vector<float>& qbuf, std::vector<float>& panels, std::vector<float>& norms,
                  std::vector<Best2>& scratch, int64_t tile_rows) {
  const int64_t d = pb.d;
  const int64_t groups = (q_rows + MR - 1) / MR;
  pack_row_groups(static_cast<const T*>(pb.queries), pb.q_stride0, pb.q_stride1, q0, q_rows, d, pb.q_center,
                  qbuf.data());
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < groups * MR; ++r) scratch[r] = {inf, inf, -1};
  for (int64_t t0 = 0; t0 < db_rows; t0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, db_rows - t0);
    pack_panels(static_cast<const T*>(pb.database), pb.db_stride0, pb.db_stride1, db0 + t0, rows, d,
                pb.center, panels.data(), norms.data());
    const int64_t n_panels = (rows + NR - 1) / NR;
    // Panel-major: one panel (d * NR floats) stays in L1 while the query groups stream past it.
    for (int64_t p = 0; p < n_panels; ++p) {
      const float* panel = panels.data() + p * d * NR;
      const float* pn = norms.data() + p * NR;
      const int64_t col0 = db0 + t0 + p * NR;
      for (int64_t g = 0; g < groups; ++g)
        best2_tile<MR>(qbuf.data() + g * d * MR, d, panel, pn, col0, pb, scratch.data() + g * MR);
    }
  }
  std::copy(scratch.begin(), scratch.begin() + q_rows, best);
}

// Fills out_index, out_second (the threshold), out_dist (float64 distance or inner product
// of the chosen row, computed like rerank) and out_qnorm (float64 |x - c| of the fp32-centred
// query, as the certificate uses it).
template <typename T>
void run_nearest(const Problem& pb, int64_t* out_index, float* out_second, double* out_dist, double* out_qnorm,
                 int num_threads) {
  const int64_t per_thread = (pb.Q + 2 * num_threads - 1) / (2 * num_threads);
  const int64_t QB = std::max<int64_t>(MR, std::min<int64_t>(kMaxQueryBlock, (per_thread + MR - 1) / MR * MR));
  const int64_t n_qblocks = (pb.Q + QB - 1) / QB;
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(
      num_threads > n_qblocks ? (num_threads + n_qblocks - 1) / n_qblocks : 1, pb.N / NR));
  const int64_t tile_rows = std::max<int64_t>(NR, std::min<int64_t>(512, (32768 / std::max<int64_t>(pb.d, 1)) / NR * NR));
  std::vector<Best2> best(static_cast<size_t>(splits * pb.Q));
  const int64_t split_rows = (pb.N + splits - 1) / splits;
  const int64_t n_items = n_qblocks * splits;
  const T* qbase = static_cast<const T*>(pb.queries);
  const T* dbase = static_cast<const T*>(pb.database);
  const bool ip = pb.q_center == nullptr;

#pragma omp parallel num_threads(num_threads)
  {
    const int64_t padded = (QB + MR - 1) / MR * MR;
    std::vector<float> qbuf(padded * pb.d), panels((tile_rows + NR) * pb.d), norms(tile_rows + NR);
    std::vector<Best2> scratch(padded);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n_items; ++item) {
      const int64_t qb = item / splits, s = item % splits;
      const int64_t q0 = qb * QB, q_rows = std::min<int64_t>(QB, pb.Q - q0);
      const int64_t db0 = s * split_rows, db_rows = std::min(split_rows, pb.N - db0);
      Best2* out = best.data() + s * pb.Q + q0;
      if (db_rows <= 0) {
        const float inf = std::numeric_limits<float>::infinity();
        for (int64_t r = 0; r < q_rows; ++r) out[r] = {inf, inf, -1};
        continue;
      }
      nearest_item<T>(pb, q0, q_rows, db0, db_rows, out, qbuf, panels, norms, scratch, tile_rows);
    }
    // Each row's float64 sums run in index order (as in rerank), a serial chain of d adds;
    // kRows rows side by side keep the FP units busy meanwhile.
    constexpr int kRows = 8;
#pragma omp for schedule(static)
    for (int64_t g0 = 0; g0 < pb.Q; g0 += kRows) {
      const T* x[kRows];
      const T* y[kRows];
      for (int r = 0; r < kRows; ++r) {
        const int64_t q = std::min(g0 + r, pb.Q - 1);  // rows past the end repeat the last one
        Best2 b = best[q];
        for (int64_t s = 1; s < splits; ++s) merge_best2(b, best[s * pb.Q + q]);
        if (b.i1 < 0) {  // no comparable score (NaN input): leave the row to the exact fallback
          b.i1 = 0;
          b.s2 = -std::numeric_limits<float>::infinity();
        }
        out_index[q] = b.i1;
        out_second[q] = b.s2;
        x[r] = qbase + q * pb.q_stride0;
        y[r] = dbase + b.i1 * pb.db_stride0;
      }
      double acc[kRows] = {}, norm[kRows] = {};
      for (int64_t j = 0; j < pb.d; ++j) {
        for (int r = 0; r < kRows; ++r) {
          const float xf = load_as_float(x[r] + j * pb.q_stride1);
          const double xv = xf;
          const double yv = load_as_float(y[r] + j * pb.db_stride1);
          if (ip) {
            acc[r] += xv * yv;
          } else {
            const double diff = xv - yv;
            acc[r] += diff * diff;
          }
          const double xc = ip ? xv : static_cast<double>(xf - pb.q_center[j]);
          norm[r] += xc * xc;
        }
      }
      for (int r = 0; r < kRows && g0 + r < pb.Q; ++r) {
        out_dist[g0 + r] = acc[r];
        out_qnorm[g0 + r] = std::sqrt(norm[r]);
      }
    }
  }
}

template <typename T>
void center_and_radius(const Tensor& database, bool centred, float* center, double* radius, int threads) {
  const T* base = database.ptr<T>();
  const int64_t N = database.size(0), d = database.size(1), s0 = database.stride(0), s1 = database.stride(1);
  std::vector<double> total(d, 0.0);
  if (centred) {
#pragma omp parallel num_threads(threads)
    {
      std::vector<double> part(d, 0.0);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < d; ++k) part[k] += load_as_float(base + n * s0 + k * s1);
#pragma omp critical
      for (int64_t k = 0; k < d; ++k) total[k] += part[k];
    }
  }
  for (int64_t k = 0; k < d; ++k) center[k] = static_cast<float>(total[k] / N);
  double worst = 0.0;
#pragma omp parallel for num_threads(threads) reduction(max : worst) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    double norm = 0.0;
    for (int64_t k = 0; k < d; ++k) {
      // The same fp32 centring as the candidate kernel, then an exact-enough fp64 norm.
      const double v = load_as_float(base + n * s0 + k * s1) - center[k];
      norm += v * v;
    }
    worst = std::max(worst, norm);
  }
  *radius = std::sqrt(worst);
}

template <typename T>
void rerank(const Tensor& queries, const Tensor& database, const int64_t* cand, int64_t kprime, bool ip,
            double* out_dist, int64_t* out_index, int64_t k, int threads) {
  const T* qb = queries.ptr<T>();
  const T* db = database.ptr<T>();
  const int64_t Q = queries.size(0), d = queries.size(1);
  const int64_t qs0 = queries.stride(0), qs1 = queries.stride(1), ds0 = database.stride(0), ds1 = database.stride(1);
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> x(d);
    std::vector<std::pair<double, int64_t>> rows(kprime);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < Q; ++q) {
      for (int64_t j = 0; j < d; ++j) x[j] = load_as_float(qb + q * qs0 + j * qs1);
      for (int64_t c = 0; c < kprime; ++c) {
        const int64_t n = cand[q * kprime + c];
        const T* y = db + n * ds0;
        double acc = 0.0;
        if (ip) {
          for (int64_t j = 0; j < d; ++j) acc += x[j] * static_cast<double>(load_as_float(y + j * ds1));
          rows[c] = {-acc, n};  // descending inner product == ascending negation
        } else {
          for (int64_t j = 0; j < d; ++j) {
            const double diff = x[j] - load_as_float(y + j * ds1);
            acc += diff * diff;
          }
          rows[c] = {acc, n};
        }
      }
      std::partial_sort(rows.begin(), rows.begin() + k, rows.end());
      for (int64_t c = 0; c < k; ++c) {
        out_dist[q * k + c] = ip ? -rows[c].first : rows[c].first;
        out_index[q * k + c] = rows[c].second;
      }
    }
  }
}

void check_float_matrix(const Tensor& t) {
  t.check_dim(2).check_device(DeviceKind::cpu).check_dtype({DType::f32, DType::f16, DType::bf16});
}

}  // namespace

void knn_center_radius_cpu(const Tensor& database, KnnMetric metric, const Tensor& out_center,
                           const Tensor& out_radius, int num_threads) {
  check_float_matrix(database);
  if (database.size(0) < 1) fail(database.name, "must have at least one row");
  out_center.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({database.size(1)}).check_contiguous();
  out_radius.check_device(DeviceKind::cpu).check_dtype({DType::f64}).check_shape({1});
  (void)metric;  // both metrics centre the database (IP: only the database, see Problem)
  const bool centred = true;
  const int threads = std::max(1, num_threads);
  switch (database.dtype) {
    case DType::f32: center_and_radius<float>(database, centred, out_center.ptr<float>(), out_radius.ptr<double>(), threads); break;
    case DType::f16: center_and_radius<simd::f16>(database, centred, out_center.ptr<float>(), out_radius.ptr<double>(), threads); break;
    default: center_and_radius<simd::bf16>(database, centred, out_center.ptr<float>(), out_radius.ptr<double>(), threads); break;
  }
}

void knn_rerank_cpu(const Tensor& queries, const Tensor& database, const Tensor& candidates, KnnMetric metric,
                    const Tensor& out_dist, const Tensor& out_index, int num_threads) {
  check_float_matrix(queries);
  check_float_matrix(database);
  if (database.dtype != queries.dtype) fail(database.name, "must have the same dtype as " + queries.name);
  if (database.size(1) != queries.size(1)) fail(database.name, "feature dimension does not match " + queries.name);
  const int64_t Q = queries.size(0), N = database.size(0);
  candidates.check_device(DeviceKind::cpu).check_dtype({DType::i64}).check_dim(2).check_contiguous();
  if (candidates.size(0) != Q) fail(candidates.name, "must have one row per query");
  const int64_t kprime = candidates.size(1);
  out_dist.check_device(DeviceKind::cpu).check_dtype({DType::f64}).check_dim(2).check_contiguous();
  const int64_t k = out_dist.size(1);
  out_dist.check_shape({Q, k});
  out_index.check_device(DeviceKind::cpu).check_dtype({DType::i64}).check_shape({Q, k}).check_contiguous();
  if (k < 1 || k > kprime) fail(out_dist.name, "k must be in [1, number of candidates]");
  const int64_t* cand = candidates.ptr<int64_t>();
  for (int64_t i = 0; i < Q * kprime; ++i)
    if (cand[i] < 0 || cand[i] >= N) fail(candidates.name, "index out of range [0, " + std::to_string(N) + ")");
  const bool ip = metric == KnnMetric::ip;
  const int threads = std::max(1, num_threads);
  switch (queries.dtype) {
    case DType::f32: rerank<float>(queries, database, cand, kprime, ip, out_dist.ptr<double>(), out_index.ptr<int64_t>(), k, threads); break;
    case DType::f16: rerank<simd::f16>(queries, database, cand, kprime, ip, out_dist.ptr<double>(), out_index.ptr<int64_t>(), k, threads); break;
    default: rerank<simd::bf16>(queries, database, cand, kprime, ip, out_dist.ptr<double>(), out_index.ptr<int64_t>(), k, threads); break;
  }
}

void knn_candidates_cpu(const Tensor& queries, const Tensor& database, const Tensor& center,
                        KnnMetric metric, int64_t kprime, int64_t self_offset,
                        const Tensor& out_score, const Tensor& out_index, int num_threads) {
  queries.check_dim(2).check_device(DeviceKind::cpu).check_dtype({DType::f32, DType::f16, DType::bf16});
  database.check_dim(2).check_device(DeviceKind::cpu);
  if (database.dtype != queries.dtype) fail(database.name, "must have the same dtype as " + queries.name);
  const int64_t Q = queries.size(0), N = database.size(0), d = queries.size(1);
  if (database.size(1) != d) fail(database.name, "feature dimension " + std::to_string(database.size(1)) + " does not match " + queries.name + " (" + std::to_string(d) + ")");
  center.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({d}).check_contiguous();
  const int64_t eligible = self_offset >= 0 ? N - 1 : N;
  if (kprime < 1 || kprime > eligible) fail("kprime", "must be in [1, " + std::to_string(eligible) + "], got " + std::to_string(kprime));
  if (self_offset >= 0 && self_offset + Q > N) fail("self_offset", "queries must be rows of the database");
  out_score.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({Q, kprime}).check_contiguous();
  out_index.check_device(DeviceKind::cpu).check_dtype({DType::i64}).check_shape({Q, kprime}).check_contiguous();
  if (Q == 0) return;

  Problem pb{queries.data, queries.stride(0), queries.stride(1), database.data, database.stride(0), database.stride(1),
             center.ptr<float>(), metric == KnnMetric::l2 ? center.ptr<float>() : nullptr, Q, N, d, kprime, self_offset,
             metric == KnnMetric::l2 ? 1.f : 0.f, metric == KnnMetric::l2 ? -2.f : -1.f};
  std::vector<Candidate> result(static_cast<size_t>(Q * kprime));
  const int threads = std::max(1, num_threads);
  switch (queries.dtype) {
    case DType::f32: run<float>(pb, result.data(), threads); break;
    case DType::f16: run<simd::f16>(pb, result.data(), threads); break;
    default: run<simd::bf16>(pb, result.data(), threads); break;
  }
  float* scores = out_score.ptr<float>();
  int64_t* indices = out_index.ptr<int64_t>();
  for (int64_t i = 0; i < Q * kprime; ++i) {
    scores[i] = result[i].score;
    indices[i] = result[i].index;
  }
}

void knn_nearest_cpu(const Tensor& queries, const Tensor& database, const Tensor& center, KnnMetric metric,
                     const Tensor& out_index, const Tensor& out_second, const Tensor& out_dist,
                     const Tensor& out_qnorm, int num_threads) {
  check_float_matrix(queries);
  check_float_matrix(database);
  if (database.dtype != queries.dtype) fail(database.name, "must have the same dtype as " + queries.name);
  const int64_t Q = queries.size(0), N = database.size(0), d = queries.size(1);
  if (database.size(1) != d) fail(database.name, "feature dimension " + std::to_string(database.size(1)) + " does not match " + queries.name + " (" + std::to_string(d) + ")");
  if (N < 1) fail(database.name, "must have at least one row");
  center.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({d}).check_contiguous();
  out_index.check_device(DeviceKind::cpu).check_dtype({DType::i64}).check_shape({Q}).check_contiguous();
  out_second.check_device(DeviceKind::cpu).check_dtype({DType::f32}).check_shape({Q}).check_contiguous();
  out_dist.check_device(DeviceKind::cpu).check_dtype({DType::f64}).check_shape({Q}).check_contiguous();
  out_qnorm.check_device(DeviceKind::cpu).check_dtype({DType::f64}).check_shape({Q}).check_contiguous();
  if (Q == 0) return;
  Problem pb{queries.data, queries.stride(0), queries.stride(1), database.data, database.stride(0), database.stride(1),
             center.ptr<float>(), metric == KnnMetric::l2 ? center.ptr<float>() : nullptr, Q, N, d, 1, -1,
             metric == KnnMetric::l2 ? 1.f : 0.f, metric == KnnMetric::l2 ? -2.f : -1.f};
  const int threads = std::max(1, num_threads);
  int64_t* idx = out_index.ptr<int64_t>();
  float* second = out_second.ptr<float>();
  double* dist = out_dist.ptr<double>();
  double* qnorm = out_qnorm.ptr<double>();
  switch (queries.dtype) {
    case DType::f32: run_nearest<float>(pb, idx, second, dist, qnorm, threads); break;
    case DType::f16: run_nearest<simd::f16>(pb, idx, second, dist, qnorm, threads); break;
    default: run_nearest<simd::bf16>(pb, idx, second, dist, qnorm, threads); break;
  }
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
