// Per-class Gram spectra (contract in csrc/ops/class_spectrum.h).
//
// A diversity metric over many classes solves thousands of small symmetric eigenproblems
// (1,000 classes of 100 rows: 1,000 matrices of 100 × 100). LAPACK solves one at a time: its
// tridiagonal QL is a serial chain of divisions and square roots, so a 100 × 100 solve costs
// about 0.3 ms in the reduction and 0.3 ms in QL on one core. Here each vector lane holds a
// different class: the Householder reduction and the QL sweeps run the same instructions on
// L classes at once (L = doubles per vector register), with per-lane masks where the classes'
// convergence differs. The Gram products use a register-tiled float64 kernel on the lower
// triangle only, or, for float32 rows on AMX-INT8 CPUs, exact int8 tile products of the rows
// rounded to 31 bits (int8_gram below).
#include "../ops/class_spectrum.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "simd.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// The exact int8 Gram route (below) needs AMX tiles: x86-64 Linux (the tile state is enabled per
// process by arch_prctl), an AVX-512BW build level, and a compiler that knows the AMX target.
#if defined(__x86_64__) && defined(__linux__) && defined(__AVX512BW__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define FMKIT_INT8_GRAM 1
// GCC 12's AVX-512 intrinsics initialise their "undefined" pass-through operand from itself,
// which -Wuninitialized reports at every inlined call (GCC bug 105593); nothing is read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fmkit {
namespace FMKIT_CPU_NS {
namespace {

#if defined(FMKIT_SIMD_SCALAR)
constexpr int L = 1;   // doubles per vector register (one: the scalar reference path)
constexpr int G = 1;   // classes per group
constexpr int TJ = 4;  // Gram micro-tile columns
#else
constexpr int L = simd::VW / 2;
constexpr int G = L;
constexpr int TJ = 12;  // L rows × 12 columns: 12 accumulators, one row vector, one broadcast
#endif
typedef double vh __attribute__((vector_size(L * sizeof(double))));    // one register (Gram kernels)
// Unaligned loads through a may_alias type: GCC turned std::memcpy of a 4-double vector into a
// copy through the stack at AVX2 (Gram kernel 6x slower than at AVX-512).
typedef double vh_u __attribute__((vector_size(L * sizeof(double)), aligned(sizeof(double)), may_alias));
inline vh load(const double* p) { return *reinterpret_cast<const vh_u*>(p); }
inline void store(double* p, vh v) { *reinterpret_cast<vh_u*>(p) = v; }
typedef float vf_u __attribute__((vector_size(L * sizeof(float)), aligned(sizeof(float)), may_alias));
inline vh load(const float* p) { return __builtin_convertvector(*reinterpret_cast<const vf_u*>(p), vh); }  // exact
typedef double vd __attribute__((vector_size(G * sizeof(double))));    // one class per lane
typedef int64_t vm __attribute__((vector_size(G * sizeof(int64_t))));

// Dot-product Gram tiles (gram_rows): TR × TR row pairs, TR² accumulators + 2 TR row loads.
constexpr int TR = L >= 8 ? 4 : (L == 1 ? 2 : 3);
constexpr int64_t kChunkRows = 128;  // rows per Gram update when the d × d Gram is the smaller

inline vd splat(double v) { return vd{} + v; }
inline vm splat_m(int64_t v) { return vm{} + v; }
inline vd vabs(vd x) { return x < 0.0 ? -x : x; }
inline vd vsqrt(vd x) {  // -fno-math-errno (CMakeLists.txt) lets this become vector square roots
  vd r;
  for (int c = 0; c < G; ++c) r[c] = std::sqrt(x[c]);
  return r;
}
inline bool any(vm m) {
  for (int c = 0; c < G; ++c)
    if (m[c]) return true;
  return false;
}
inline bool all(vm m) {
  for (int c = 0; c < G; ++c)
    if (!m[c]) return false;
  return true;
}
// r = sqrt(x) and 1 / r for x = f² + g² >= 0 (a Givens rotation's length). AVX-512: VRSQRT14PD's
// 14-bit estimate and two Newton steps (FMA ports only, ~1 ulp), since a square root and a division
// per QL step would hold the shared divider for ~30 cycles per vector; inputs near the exponent
// range's ends (where the estimate or x · y loses accuracy) take the exact path.
inline void root_and_inverse(vd x, vd& r, vd& ir) {
#if defined(__AVX512F__)
  constexpr double kLow = 0x1p-960, kHigh = 0x1p960;
  if (G == 8 && all((x >= kLow) & (x <= kHigh))) {
    vd y = reinterpret_cast<vd>(_mm512_rsqrt14_pd(reinterpret_cast<__m512d>(x)));
    const vd h = 0.5 * x;
    y = y * (1.5 - h * y * y);
    y = y * (1.5 - h * y * y);
    r = x * y;
    ir = y;
    return;
  }
#endif
  r = vsqrt(x);
  ir = 1.0 / r;
}
inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }
// Row length of gram_lower's transposed Gram buffer for m columns.
inline int64_t gram_ld(int64_t m) { return round_up(round_up(m, TJ), L); }
// Largest d of the int8 route: its int32 tile accumulators sum up to 4 × d products of 2^14.
constexpr int64_t kInt8MaxD = 32767;
inline int64_t packed(int64_t i, int64_t j) { return i * (i + 1) / 2 + j; }  // lower triangle, j <= i

// gt[j][i] += Σ_k pt[k][i] pt[k][j] for j <= i < m (gt row-major with row length ld; entries
// above the diagonal are also written, and ignored). pt is [K][ld], zero in columns [m, ld),
// ld a multiple of L and >= round_up(m, TJ). The k range runs in slices that fit the L1 cache
// with all tiles, so the panel is read from L2 once per slice rather than once per tile.
void gram_lower(const double* pt, int64_t K, int64_t ld, int64_t m, double* gt) {
  const int64_t slice = std::max<int64_t>(8, 24 * 1024 / (8 * ld));
  for (int64_t k0 = 0; k0 < K; k0 += slice) {
    const int64_t k1 = std::min(K, k0 + slice);
    for (int64_t i0 = 0; i0 < m; i0 += L) {
      for (int64_t j0 = 0; j0 < m && j0 < i0 + L; j0 += TJ) {
        vh acc[TJ];
        for (int t = 0; t < TJ; ++t) acc[t] = load(gt + (j0 + t) * ld + i0);
        const double* p = pt + k0 * ld;
        for (int64_t k = k0; k < k1; ++k, p += ld) {
          const vh vi = load(p + i0);
          for (int t = 0; t < TJ; ++t) acc[t] += vi * p[j0 + t];
        }
        for (int t = 0; t < TJ; ++t) store(gt + (j0 + t) * ld + i0, acc[t]);
      }
    }
  }
}

inline double hsum(vh v) {
  double s = 0;
  for (int c = 0; c < L; ++c) s += v[c];
  return s;
}

// The rows of the class that comes next, prefetched (prefetcht1) a few cache lines at a time while
// the current class's Gram products run: those are compute-bound, and the next rows would
// otherwise be read from memory at the start of their first pass (~6% of the op when a class's
// rows lie anywhere in the features).
struct NextRows {
  const char* base = nullptr;  // features; null: nothing to fetch (strided rows, or no next class)
  int64_t row_bytes = 0, lines_per_row = 0, n = 0;
  const int64_t* rows = nullptr;
  int64_t row = 0, line = 0;  // the next cache line to fetch
  void fetch(int64_t lines) {
    // The position stays in registers: a division, or a store of the position, per line cost 7%
    // of the Gram products in perf.
    int64_t r = row, l = line;
    for (; lines > 0 && r < n; --lines) {
      __builtin_prefetch(base + rows[r] * row_bytes + 64 * l, 0, 2);
      if (++l == lines_per_row) {
        l = 0;
        ++r;
      }
    }
    row = r;
    line = l;
  }
};

#if defined(__AVX512F__)
// The 16 horizontal sums of a 4 × 4 tile's accumulators, s[4 t + u] = Σ acc[t][u], by a
// transposition tree: 28 shuffles and 14 additions, where 16 separate sums take ~7 dependent
// operations each (the tile's K loop is only ~6 times longer).
inline void tile_sums(const vh (&acc)[4][4], double* s) {
  __m512d x[8], y[4];
  for (int p = 0; p < 8; ++p) {
    const __m512d a = reinterpret_cast<__m512d>(acc[p / 2][2 * (p % 2)]);
    const __m512d b = reinterpret_cast<__m512d>(acc[p / 2][2 * (p % 2) + 1]);
    x[p] = _mm512_add_pd(_mm512_unpacklo_pd(a, b), _mm512_unpackhi_pd(a, b));
  }
  for (int p = 0; p < 4; ++p)
    y[p] = _mm512_add_pd(_mm512_shuffle_f64x2(x[2 * p], x[2 * p + 1], 0x88),
                         _mm512_shuffle_f64x2(x[2 * p], x[2 * p + 1], 0xDD));
  for (int p = 0; p < 2; ++p)
    _mm512_storeu_pd(s + 8 * p, _mm512_add_pd(_mm512_shuffle_f64x2(y[2 * p], y[2 * p + 1], 0x88),
                                              _mm512_shuffle_f64x2(y[2 * p], y[2 * p + 1], 0xDD)));
}
#endif

// g[i][j] = <r_i, r_j> for j <= i < m (g row-major, row length m; the diagonal tiles also write
// some entries above the diagonal). r is [round_up(m, TR)][K] row-major, K a multiple of L, zero
// beyond the real rows and columns. The rows are the class's own, so nothing is transposed; each
// TR × TR tile keeps its 2 TR rows in L1 over the whole K and reduces its accumulators once.
void gram_rows(const double* r, int64_t K, int64_t m, double* g, NextRows& next) {
  const int64_t blocks = (m + TR - 1) / TR;
  const int64_t lines_per_tile = next.base ? (next.n * next.lines_per_row * 2 / (blocks * (blocks + 1)) + 1) : 0;
  for (int64_t i0 = 0; i0 < m; i0 += TR) {
    for (int64_t j0 = 0; j0 <= i0; j0 += TR) {
      next.fetch(lines_per_tile);
      vh acc[TR][TR] = {};
      for (int64_t k = 0; k < K; k += L) {
        vh a[TR], b[TR];
        for (int t = 0; t < TR; ++t) {
          a[t] = load(r + (i0 + t) * K + k);
          b[t] = load(r + (j0 + t) * K + k);
        }
        for (int t = 0; t < TR; ++t)
          for (int u = 0; u < TR; ++u) acc[t][u] += a[t] * b[u];
      }
      double s[TR * TR];
#if defined(__AVX512F__)
      if constexpr (L == 8 && TR == 4) {
        tile_sums(acc, s);
      } else
#endif
      {
        for (int t = 0; t < TR; ++t)
          for (int u = 0; u < TR; ++u) s[TR * t + u] = hsum(acc[t][u]);
      }
      for (int t = 0; t < TR && i0 + t < m; ++t)
        for (int u = 0; u < TR && j0 + u < m; ++u) g[(i0 + t) * m + j0 + u] = s[TR * t + u];
    }
  }
}

#ifdef FMKIT_INT8_GRAM
// Gram products of float32 rows from exact int8 products (AMX tiles; the Ozaki splitting).
// Each row x is scaled by a power of two 2^e, so that max|x| 2^e lies in [0.99 · 2^30, 127 · 2^24),
// and rounded to integers v: that rounding (at most 2^-31 max|x| per element) is the only error.
// v = Σ_k D_k 256^(3-k) with signed digits D_k in [-128, 127], so
//   <v_i, v_j> = Σ_{s=0..6} 256^(6-s) Σ_{k+l=s} <D_k(i), D_l(j)>,
// and every inner sum is exact in int32 (at most 4 pairs × d × 2^14 < 2^31 for d < 32768). The
// result is the float64 Gram matrix of the rounded rows, up to float64 rounding of the last
// seven-term sum. An AMX tile product does 16 × 16 × 64 int8 multiply-adds, so the 16 digit
// products cost less than one float64 product at AVX-512 rate.
namespace int8_gram {

constexpr int kDigits = 4;

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The CPU has AMX-TILE and AMX-INT8 (CPUID.7.0:EDX bits 24, 25) and Linux grants this process the
// tile state (ARCH_REQ_XCOMP_PERM for XTILEDATA); checked once.
bool available() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 24) & 1) || !((d >> 25) & 1)) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return ok;
}

// The digit planes are stored as tiles, [plane][16-row block][64-column block][16][64]: a tile
// load then reads 1 KB from one page rather than 16 lines K bytes apart (measured: 4% less time
// for the whole op at d = 512; tile products slowed ~2x once a class's operands passed ~256 KB).
inline int64_t tile_offset(int64_t i, int64_t steps) { return (i / 16) * steps * 1024 + (i % 16) * 64; }

// One row into its digit planes: row[k * plane + (j / 64) * 1024 + j % 64] = D_k of element j
// (row: the row's place in plane 0, tile_offset), zero for j in [d, K). Returns e. x 2^e is exact (a power of two); it runs in float64 when 2^e leaves float32's range.
// In the same pass (the row is in L1 now), unit_sums[j] += x[j] · inv.
inline int quantize_row(const float* x, int64_t d, float amax, int8_t* row, int64_t plane, int64_t K,
                        double* __restrict unit_sums, double inv) {
  int p = 0;
  const double mant = std::frexp(static_cast<double>(amax), &p);
  const int e = amax > 0 ? (mant < 127.0 / 128.0 ? 31 - p : 30 - p) : 0;
  const bool narrow = e >= -126 && e <= 127;  // 2^e is a normal float32: scale in float32
  const __m512 scale32 = _mm512_set1_ps(narrow ? std::ldexp(1.0f, e) : 1.0f);
  const __m512d scale = _mm512_set1_pd(std::ldexp(1.0, e));
  const __m512i half = _mm512_set1_epi32(128);
  const __m512d inv_v = _mm512_set1_pd(inv);
  for (int64_t j = 0; j < K; j += 16) {
    const int64_t left = d - j;
    const __mmask16 mask = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
    const __mmask8 m_lo = static_cast<__mmask8>(mask), m_hi = static_cast<__mmask8>(mask >> 8);
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + j);
    const __m512d v_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d v_hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    _mm512_mask_storeu_pd(unit_sums + j, m_lo, _mm512_fmadd_pd(v_lo, inv_v, _mm512_maskz_loadu_pd(m_lo, unit_sums + j)));
    _mm512_mask_storeu_pd(unit_sums + j + 8, m_hi,
                          _mm512_fmadd_pd(v_hi, inv_v, _mm512_maskz_loadu_pd(m_hi, unit_sums + j + 8)));
    __m512i q;
    if (narrow) {
      q = _mm512_cvtps_epi32(_mm512_mul_ps(v, scale32));
    } else {
      const __m256i lo = _mm512_cvtpd_epi32(_mm512_mul_pd(v_lo, scale));
      const __m256i hi = _mm512_cvtpd_epi32(_mm512_mul_pd(v_hi, scale));
      q = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    for (int k = kDigits - 1; k >= 0; --k) {  // the low byte, read as signed, is the digit; carry the rest
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + k * plane + (j / 64) * 1024 + j % 64),
                       _mm512_cvtepi32_epi8(q));
      q = _mm512_srai_epi32(_mm512_add_epi32(q, half), 8);
    }
  }
  return e;
}

// The B operand of a tile product is the VNNI layout of the transposed rows: for each plane,
// 16-row block J and 64-byte column block t, a 16 × 64-byte tile with
// tile[r][4c + u] = planes[row 16J + c][64t + 4r + u], i.e. the block's 16 × 16 int32 transposed
// (four rounds of 2 × 2 block swaps: 32-bit, 64-bit, 128-bit and 256-bit).
inline void transpose16x16(const int8_t* src, int64_t stride, int8_t* dst) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + i * stride);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4)
    for (int j = 0; j < 2; ++j) {
      r[i + j] = _mm512_unpacklo_epi64(t[i + j], t[i + j + 2]);
      r[i + j + 2] = _mm512_unpackhi_epi64(t[i + j], t[i + j + 2]);
    }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
  // the rounds leave input column i in register kFrom[i] (columns 1 and 2 of each four swapped)
  static constexpr int kFrom[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
  for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + i * 64, r[kFrom[i]]);
}

void to_vnni(const int8_t* planes, int64_t np, int64_t K, int8_t* vnni) {
  const int64_t blocks = np / 16, steps = K / 64;
  for (int k = 0; k < kDigits; ++k)
    for (int64_t J = 0; J < blocks; ++J)
      for (int64_t t = 0; t < steps; ++t)
        transpose16x16(planes + ((k * blocks + J) * steps + t) * 1024, 64,
                       vnni + ((k * blocks + J) * steps + t) * 1024);
}

// g[i][j] = <v_i, v_j> (the rounded rows, in units of 2^-(e_i + e_j)) for j <= i < m; g row-major,
// row length m (diagonal tiles also write some entries above the diagonal). Tiles 0-3 accumulate
// the weights s = 0..3 (10 digit pairs), then tiles 0-2 the weights s = 4..6 (6 pairs); the other
// tiles hold the operands.
__attribute__((target("amx-tile,amx-int8"))) void gram(const int8_t* planes, const int8_t* vnni, int64_t np,
                                                        int64_t K, int64_t m, int32_t* scratch, double* g) {
  const int64_t blocks = np / 16, steps = K / 64;
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  asm volatile("" ::: "memory");  // the planes were written by plain stores; tile loads are asm
  double weight[7];
  for (int s = 0; s < 7; ++s) weight[s] = std::ldexp(1.0, 8 * (6 - s));
  for (int64_t I = 0; I < blocks; ++I) {
    for (int64_t J = 0; J <= I; ++J) {
      const int8_t* a = planes + I * steps * 1024;
      const int8_t* b = vnni + J * steps * 1024;
      const int64_t ap = np * K, bp = blocks * steps * 1024;  // plane strides
#define FMKIT_A(tile, k) _tile_loadd(tile, a + (k) * ap + t * 1024, 64)
#define FMKIT_B(tile, l) _tile_loadd(tile, b + (l) * bp + t * 1024, 64)
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      // A tile load costs ~3x a tile product (measured: 21 vs 7.4 ns on this project's Xeon), so
      // the orders below load each operand once a step: 8 loads for the 10 pairs of s <= 3 (four
      // operand tiles), 6 for the 6 pairs of s >= 4 (five); 16 loads in all before.
      for (int64_t t = 0; t < steps; ++t) {  // accumulator s holds the pairs k + l = s
        FMKIT_B(6, 0);
        FMKIT_A(4, 3);
        _tile_dpbssd(3, 4, 6);  // (3, 0)
        FMKIT_A(4, 2);
        _tile_dpbssd(2, 4, 6);  // (2, 0)
        FMKIT_B(7, 1);
        _tile_dpbssd(3, 4, 7);  // (2, 1)
        FMKIT_A(5, 0);
        _tile_dpbssd(0, 5, 6);  // (0, 0)
        _tile_dpbssd(1, 5, 7);  // (0, 1)
        FMKIT_A(4, 1);
        _tile_dpbssd(1, 4, 6);  // (1, 0)
        _tile_dpbssd(2, 4, 7);  // (1, 1)
        FMKIT_B(6, 2);
        _tile_dpbssd(2, 5, 6);  // (0, 2)
        _tile_dpbssd(3, 4, 6);  // (1, 2)
        FMKIT_B(7, 3);
        _tile_dpbssd(3, 5, 7);  // (0, 3)
      }
      _tile_stored(0, scratch + 0 * 256, 64);
      _tile_stored(1, scratch + 1 * 256, 64);
      _tile_stored(2, scratch + 2 * 256, 64);
      _tile_stored(3, scratch + 3 * 256, 64);
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      for (int64_t t = 0; t < steps; ++t) {  // s = 4, 5, 6 in tiles 0, 1, 2
        FMKIT_A(3, 1);
        FMKIT_A(4, 2);
        FMKIT_A(5, 3);
        FMKIT_B(6, 3);
        _tile_dpbssd(0, 3, 6);  // (1, 3)
        _tile_dpbssd(1, 4, 6);  // (2, 3)
        _tile_dpbssd(2, 5, 6);  // (3, 3)
        FMKIT_B(7, 2);
        _tile_dpbssd(0, 4, 7);  // (2, 2)
        _tile_dpbssd(1, 5, 7);  // (3, 2)
        FMKIT_B(6, 1);
        _tile_dpbssd(0, 5, 6);  // (3, 1)
      }
#undef FMKIT_A
#undef FMKIT_B
      _tile_stored(0, scratch + 4 * 256, 64);
      _tile_stored(1, scratch + 5 * 256, 64);
      _tile_stored(2, scratch + 6 * 256, 64);
      for (int r = 0; r < 16 && 16 * I + r < m; ++r) {
        double* out = g + (16 * I + r) * m + 16 * J;
        const int cols = static_cast<int>(std::min<int64_t>(16, m - 16 * J));
        for (int c = 0; c < cols; ++c) {
          double v = 0;
          for (int s = 0; s < 7; ++s) v += weight[s] * scratch[s * 256 + r * 16 + c];
          out[c] = v;
        }
      }
    }
  }
  _tile_release();
}

}  // namespace int8_gram
#endif

// The reflector of column k (LAPACK dlarfg): v (v[k + 1] = 1, rows k + 1 ..), tau, and the
// column's entries of the tridiagonal form, dg[k] and e[k].
inline vd reflector(const vd* a, int64_t k, int64_t m, vd* dg, vd* e, vd* v) {
  const vd alpha = a[packed(k + 1, k)];
  vd xn2 = {};
  for (int64_t i = k + 2; i < m; ++i) xn2 += a[packed(i, k)] * a[packed(i, k)];
  const vm zero = xn2 == 0.0;  // nothing to annihilate: H = I
  const vd norm = vsqrt(alpha * alpha + xn2);
  const vd beta = alpha >= 0.0 ? -norm : norm;
  const vd scale = zero ? vd{} : 1.0 / (alpha - beta);
  dg[k] = a[packed(k, k)];
  e[k] = zero ? alpha : beta;
  v[k + 1] = splat(1.0);
  for (int64_t i = k + 2; i < m; ++i) v[i] = a[packed(i, k)] * scale;
  return zero ? vd{} : (beta - alpha) / beta;
}

// w = tau A v + (-tau/2 (tau A v)·v) v on rows k + 1 .. from the partial products in w (A v).
inline void finish_w(vd* w, const vd* v, vd tau, int64_t k, int64_t m) {
  vd wv = {};
  for (int64_t i = k + 1; i < m; ++i) {
    w[i] *= tau;
    wv += w[i] * v[i];
  }
  const vd half = -0.5 * tau * wv;
  for (int64_t i = k + 1; i < m; ++i) w[i] += half * v[i];
}

// Rows i .. i + R - 1 of the fused pass of tridiagonalize (columns k + 2 .. of each): the rank-2
// update of step k (A -= v wᵀ + w vᵀ) and the product w2 = A v2 of step k + 1. R rows at a time
// load the shared w, v, v2 and w2 once for all R and store w2 once: one row at a time the pass is
// bound by loads and stores rather than by its four FMAs per element (Zen 4).
template <int R>
inline void fused_rows(vd* a, int64_t i, int64_t k, const vd* v, const vd* w, const vd* v2, vd* w2) {
  vd* r[R];
  vd vr[R], wr[R], ur[R], s[R];
  for (int t = 0; t < R; ++t) {
    r[t] = a + packed(i + t, 0);
    vr[t] = v[i + t];
    wr[t] = w[i + t];
    ur[t] = v2[i + t];
    s[t] = vd{};
  }
  for (int64_t j = k + 2; j < i; ++j) {
    const vd wj = w[j], vj = v[j], v2j = v2[j];
    vd acc = w2[j];
    for (int t = 0; t < R; ++t) {
      const vd at = r[t][j] - (vr[t] * wj + wr[t] * vj);
      r[t][j] = at;
      s[t] += at * v2j;
      acc += at * ur[t];
    }
    w2[j] = acc;
  }
  for (int t = 0; t < R; ++t)  // the R × R triangle the rows share, diagonal included
    for (int64_t j = i; j <= i + t; ++j) {
      const vd at = r[t][j] - (vr[t] * w[j] + wr[t] * v[j]);
      r[t][j] = at;
      if (j < i + t) {
        s[t] += at * v2[j];
        w2[j] += at * ur[t];
      } else {
        w2[j] += s[t] + at * ur[t];
      }
    }
}
#if defined(__AVX512F__)
constexpr int kFusedRows = 4;  // 16 of the 32 registers hold the rows' v, w, v2 and sums
#else
constexpr int kFusedRows = 2;
#endif

// Householder reduction of the G packed lower-triangular matrices in `a` (m × m, one per lane)
// to tridiagonal form: diagonal dg[0, m), off-diagonal e[0, m - 1), e[m - 1] = 0 (LAPACK
// dsytd2's lower variant, without the reflectors). The rank-2 update of step k and the
// matrix-vector product of step k + 1 share one pass over the trailing block (its column k + 1
// is updated first, to build step k + 1's reflector), so the block is read from L2 once a step.
void tridiagonalize(vd* a, int64_t m, vd* dg, vd* e, vd* v, vd* w, vd* v2, vd* w2) {
  if (m >= 3) {
    const vd tau = reflector(a, 0, m, dg, e, v);
    for (int64_t i = 1; i < m; ++i) w[i] = vd{};
    for (int64_t i = 1; i < m; ++i) {  // w = A22 v over the lower triangle
      const vd* row = a + packed(i, 0);
      const vd vi = v[i];
      vd s = row[i] * vi;
      for (int64_t j = 1; j < i; ++j) {
        s += row[j] * v[j];
        w[j] += row[j] * vi;
      }
      w[i] += s;
    }
    finish_w(w, v, tau, 0, m);
  }
  for (int64_t k = 0; k + 2 < m; ++k) {
    // column k + 1 of A22 -= v wᵀ + w vᵀ (rows k + 1 ..)
    for (int64_t i = k + 1; i < m; ++i) a[packed(i, k + 1)] -= v[i] * w[k + 1] + w[i] * v[k + 1];
    if (k + 3 < m) {  // step k + 1 exists: its reflector, then the fused pass
      const vd tau2 = reflector(a, k + 1, m, dg, e, v2);
      for (int64_t i = k + 2; i < m; ++i) w2[i] = vd{};
      int64_t i = k + 2;
      for (; i + kFusedRows <= m; i += kFusedRows) fused_rows<kFusedRows>(a, i, k, v, w, v2, w2);
      for (; i < m; ++i) fused_rows<1>(a, i, k, v, w, v2, w2);
      finish_w(w2, v2, tau2, k + 1, m);
      std::swap(v, v2);
      std::swap(w, w2);
    } else {
      for (int64_t i = k + 2; i < m; ++i) {
        vd* row = a + packed(i, 0);
        const vd vi = v[i], wi = w[i];
        for (int64_t j = k + 2; j <= i; ++j) row[j] -= vi * w[j] + wi * v[j];
      }
    }
  }
  if (m >= 2) {
    dg[m - 2] = a[packed(m - 2, m - 2)];
    e[m - 2] = a[packed(m - 1, m - 2)];
  }
  dg[m - 1] = a[packed(m - 1, m - 1)];
  e[m - 1] = vd{};
}

// Eigenvalues of H × G tridiagonal matrices (dg[h], e[h]: H sub-groups of G lanes; e[h][m - 1]
// = 0) in dg: implicit QL with Wilkinson shifts (tqli), eigenvalues only. Each lane works on its
// own eigenvalue l[c]: a lane whose eigenvalue has converged moves on at once instead of idling
// until every lane's has (that lock-step cost ~2.8 sweeps per eigenvalue against ~1.7 needed).
// A sweep runs over the union of the lanes' ranges [l[c], split[c]); a lane computes and discards
// outside its own. A sweep step is a chain of a square root and a division, so one register of
// lanes would wait on their latency: the H independent sub-groups run in the same loop and the
// core overlaps them. Returns, per sub-group, the lanes that did not converge within 30 sweeps
// for one eigenvalue.
template <int H>
void tridiagonal_eigenvalues(vd* const* dg, vd* const* e, int64_t m, vm* failed) {
  constexpr double eps = std::numeric_limits<double>::epsilon();
  vd floor[H];
  vm l[H], iters[H];
  for (int h = 0; h < H; ++h) {
    vd norm = {};
    for (int64_t i = 0; i < m; ++i) {
      const vd row = vabs(dg[h][i]) + vabs(e[h][i]) + (i ? vabs(e[h][i - 1]) : vd{});
      norm = row > norm ? row : norm;
    }
    // An off-diagonal below eps ||T|| moves no eigenvalue by more than the reduction's own error.
    floor[h] = eps * norm;
    failed[h] = vm{};
    l[h] = vm{};
    iters[h] = vm{};
  }
  auto small = [&](int h, int64_t s, int c) {
    return std::abs(e[h][s][c]) <= eps * (std::abs(dg[h][s][c]) + std::abs(dg[h][s + 1][c])) + floor[h][c];
  };
  for (;;) {
    // Each lane moves past its converged eigenvalues; a lane at m - 1 (or failed) is done.
    vm split[H], active[H];
    int64_t top = 0, low = m;
    bool any_active = false;
    for (int h = 0; h < H; ++h) {
      for (int c = 0; c < G; ++c) {
        int64_t lc = l[h][c];
        while (lc < m - 1 && small(h, lc, c)) {
          ++lc;
          iters[h][c] = 0;
        }
        if (lc < m - 1 && iters[h][c] == 30) {
          failed[h][c] = -1;
          lc = m - 1;
        }
        l[h][c] = lc;
      }
      active[h] = (l[h] < m - 1) & ~failed[h];
      vm found = ~active[h];
      split[h] = splat_m(m - 1);
      int64_t from = m;
      for (int c = 0; c < G; ++c)
        if (active[h][c]) from = std::min<int64_t>(from, l[h][c]);
      for (int64_t s = from + 1; s < m - 1; ++s) {  // e[l] is not small: the split is after l
        const vm hit = (vabs(e[h][s]) <= eps * (vabs(dg[h][s]) + vabs(dg[h][s + 1])) + floor[h]) & (l[h] < s);
        split[h] = (hit & ~found) ? splat_m(s) : split[h];
        found |= hit;
        if ((s - from) % 8 == 7 && all(found)) break;  // a horizontal test costs more than a few compares
      }
      for (int c = 0; c < G; ++c)
        if (active[h][c]) {
          any_active = true;
          top = std::max<int64_t>(top, split[h][c]);
          low = std::min<int64_t>(low, l[h][c]);
        }
      iters[h] += active[h] & 1;
    }
    if (!any_active) break;
    // Wilkinson shift from the leading 2 × 2 of each lane's block
    vd g[H], s[H], cs[H], p[H];
    vm run[H], stopped[H];
    for (int h = 0; h < H; ++h) {
      vd el, dl, dl1, d_split;
      for (int c = 0; c < G; ++c) {
        const int64_t lc = std::min<int64_t>(l[h][c], m - 2);
        el[c] = e[h][lc][c];
        dl[c] = dg[h][lc][c];
        dl1[c] = dg[h][lc + 1][c];
        d_split[c] = dg[h][split[h][c]][c];
      }
      el = active[h] ? el : splat(1.0);  // finished lanes: any finite shift, discarded
      vd t = (dl1 - dl) / (2.0 * el);
      const vd r = vsqrt(t * t + 1.0);
      g[h] = d_split - dl + el / (t + (t >= 0.0 ? r : -r));
      s[h] = splat(1.0);
      cs[h] = splat(1.0);
      p[h] = vd{};
      run[h] = active[h];
      stopped[h] = vm{};
    }
    for (int64_t i = top - 1; i >= low; --i) {
      for (int h = 0; h < H; ++h) {
        vd* dh = dg[h];
        vd* eh = e[h];
        const vm in = run[h] & (split[h] > i) & (l[h] <= i);
        const vd f = s[h] * eh[i], b = cs[h] * eh[i];
        vd r, ir;
        root_and_inverse(f * f + g[h] * g[h], r, ir);
        eh[i + 1] = in ? r : eh[i + 1];
        const vm underflow = in & (r == 0.0);  // the rotation vanished: deflate here
        const vm ok = in & ~underflow;
        const vd sn = f * ir, cn = g[h] * ir;
        const vd gg = dh[i + 1] - p[h];
        const vd rr = (dh[i] - gg) * sn + 2.0 * cn * b;
        const vd pn = sn * rr;
        dh[i + 1] = ok ? gg + pn : (underflow ? dh[i + 1] - p[h] : dh[i + 1]);
        g[h] = ok ? cn * rr - b : g[h];
        s[h] = ok ? sn : s[h];
        cs[h] = ok ? cn : cs[h];
        p[h] = ok ? pn : p[h];
        stopped[h] |= underflow;
        run[h] &= ~underflow;
      }
    }
    for (int h = 0; h < H; ++h)
      for (int c = 0; c < G; ++c) {
        if (run[h][c]) {
          const int64_t lc = l[h][c];
          dg[h][lc][c] -= p[h][c];
          e[h][lc][c] = g[h][c];
        }
        if (run[h][c] || stopped[h][c]) e[h][split[h][c]][c] = 0.0;
      }
  }
}

// Sub-groups of G classes whose QL sweeps run interleaved (tridiagonal_eigenvalues).
#if defined(FMKIT_SIMD_SCALAR)
constexpr int H = 1;
#else
constexpr int H = 2;
#endif

struct Buffers {
  std::vector<double> rows, inv, pt, gram;
  std::vector<double> class_sums;    // class_gram's Σx and Σx/|x| over the class so far, K each
  std::vector<vd> a, v, w, v2, w2, dg[H], e[H];
  std::vector<int8_t> planes, vnni;  // the int8 route's digit planes and their VNNI copy
  std::vector<float> staging;        // strided float32 rows, gathered
  std::vector<int32_t> scratch;
};

#ifdef FMKIT_INT8_GRAM
// class_gram's n <= d side for float32 rows through int8_gram: the norms and sums in float64 as
// there, then G from the rounded rows, scaled to the cosine kernel by its own diagonal (so G is
// exactly the cosine Gram matrix of the rounded rows) or, without normalising, by 2^-(e_i + e_j).
bool class_gram_int8(const float* x, int64_t s0, int64_t s1, int64_t d, const int64_t* rows, int64_t n,
                     bool normalize, double* __restrict sums, double* __restrict unit_sums, double* norms,
                     Buffers& buf) {
  const int64_t np = round_up(n, 16), K = round_up(d, 64);
  if (s1 != 1) buf.staging.resize(n * d);
  auto row_of = [&](int64_t i) { return s1 == 1 ? x + rows[i] * s0 : buf.staging.data() + i * d; };
  bool good = true;
  buf.planes.resize(int8_gram::kDigits * np * K);
  buf.vnni.resize(buf.planes.size());
  buf.scratch.resize(7 * 256);
  buf.gram.resize(n * n);
  buf.inv.resize(n);
  const int64_t plane = np * K;
  const int64_t steps = K / 64;
  for (int k = 0; k < int8_gram::kDigits; ++k)  // the padding rows of the last block
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t i = n; i < np; ++i)
        std::memset(buf.planes.data() + k * plane + int8_gram::tile_offset(i, steps) + t * 1024, 0, 64);
  const __m512 sign = _mm512_set1_ps(-0.0f);
  constexpr int64_t kAhead = 4;  // rows prefetched ahead: a class's rows may lie anywhere in features
  for (int64_t i = 0; i < n; ++i) {
    if (s1 != 1)
      for (int64_t j = 0; j < d; ++j) buf.staging[i * d + j] = x[rows[i] * s0 + j * s1];
    const float* src = row_of(i);
    const char* next = s1 == 1 && i + kAhead < n ? reinterpret_cast<const char*>(x + rows[i + kAhead] * s0) : nullptr;
    __m512d sq_lo = _mm512_setzero_pd(), sq_hi = _mm512_setzero_pd();
    __m512 top = _mm512_setzero_ps();
    for (int64_t j = 0; j < d; j += 16) {  // 16 floats: two halves of 8 doubles
      if (next) _mm_prefetch(next + 4 * j, _MM_HINT_T0);
      const __mmask16 mask = d - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (d - j)) - 1);
      const __mmask8 m_lo = static_cast<__mmask8>(mask), m_hi = static_cast<__mmask8>(mask >> 8);
      const __m512 v = _mm512_maskz_loadu_ps(mask, src + j);
      top = _mm512_max_ps(top, _mm512_andnot_ps(sign, v));
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
      const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
      sq_lo = _mm512_fmadd_pd(lo, lo, sq_lo);
      sq_hi = _mm512_fmadd_pd(hi, hi, sq_hi);
      _mm512_mask_storeu_pd(sums + j, m_lo, _mm512_add_pd(_mm512_maskz_loadu_pd(m_lo, sums + j), lo));
      _mm512_mask_storeu_pd(sums + j + 8, m_hi, _mm512_add_pd(_mm512_maskz_loadu_pd(m_hi, sums + j + 8), hi));
    }
    const double norm = std::sqrt(_mm512_reduce_add_pd(_mm512_add_pd(sq_lo, sq_hi)));
    norms[i] = norm;
    if (!std::isfinite(norm) || (normalize && norm == 0)) {
      good = false;  // the caller reports the row; nothing below would be used
      continue;
    }
    const int e = int8_gram::quantize_row(src, d, _mm512_reduce_max_ps(top),
                                          buf.planes.data() + int8_gram::tile_offset(i, steps), plane, K, unit_sums,
                                          normalize ? 1.0 / norm : 1.0);
    buf.inv[i] = std::ldexp(1.0, -e);
  }
  if (!good) return false;
  int8_gram::to_vnni(buf.planes.data(), np, K, buf.vnni.data());
  double* g = buf.gram.data();
  int8_gram::gram(buf.planes.data(), buf.vnni.data(), np, K, n, buf.scratch.data(), g);
  if (normalize)
    for (int64_t i = 0; i < n; ++i) buf.inv[i] = 1.0 / std::sqrt(g[i * n + i]);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) g[i * n + j] *= buf.inv[i] * buf.inv[j];
  return true;
}
#endif

// One class: norms and sums of its rows, and the lower triangle of its Gram matrix G (m × m,
// m = min(n, d)) into buf.gram (transposed, row length ld). Returns false for a non-finite row,
// or a zero row when normalising.
template <typename T>
bool class_gram(const T* x, int64_t s0, int64_t s1, int64_t d, const int64_t* rows, int64_t n, bool normalize,
                bool int8, double* sums, double* unit_sums, double* norms, Buffers& buf, NextRows& next) {
#ifdef FMKIT_INT8_GRAM
  if constexpr (std::is_same_v<T, float>)
    if (int8 && n <= d) return class_gram_int8(x, s0, s1, d, rows, n, normalize, sums, unit_sums, norms, buf);
#endif
  const int64_t m = std::min(n, d);
  const int64_t ld = gram_ld(m);
  const bool rows_side = n <= d;  // G = U Uᵀ; else G = Uᵀ U, accumulated kChunkRows rows at a time
  const int64_t block = rows_side ? n : std::min(n, kChunkRows);
  buf.inv.resize(n);
  bool good = true;
  if (rows_side) {  // float64 copies of the rows (G is scaled by 1 / |x_i||x_j| afterwards)
    const int64_t K = round_up(d, L);
    const int64_t padded = round_up(n, TR);
    buf.rows.resize(padded * K);  // no fill: every element is written below
    buf.gram.resize(m * m);
    double* inv = buf.inv.data();
    std::fill(buf.rows.data() + n * K, buf.rows.data() + padded * K, 0.0);
    // The class sums Σx and Σx/|x|, kRowBlock rows at a time while those rows are in L1: one
    // row at a time they would read and write both sum rows per row (two stores per element), and
    // down the columns of the whole class every load would walk 100 rows 4 KB apart (L1 sets and
    // TLB entries exhausted: 13 µs of a 100 × 512 class).
    constexpr int64_t kRowBlock = 4;
    buf.class_sums.assign(2 * K, 0.0);
    double* __restrict su = buf.class_sums.data();
    double* __restrict us = su + K;
    for (int64_t i = 0; i < n; ++i) {
      const T* src = x + rows[i] * s0;
      double* __restrict row = buf.rows.data() + i * K;
      // The norm is summed while the row is copied (two sums: one would wait on each FMA).
      vh sq0 = {}, sq1 = {};
      int64_t k = 0;
      if (s1 == 1)
        for (; k + 2 * L <= d; k += 2 * L) {
          const vh v0 = load(src + k), v1 = load(src + k + L);
          store(row + k, v0);
          store(row + k + L, v1);
          sq0 += v0 * v0;
          sq1 += v1 * v1;
        }
      for (int64_t j = k; j < d; ++j) row[j] = static_cast<double>(src[j * s1]);
      for (int64_t j = d; j < K; ++j) row[j] = 0.0;
      for (; k < K; k += L) {
        const vh v = load(row + k);
        sq0 += v * v;
      }
      const double norm = std::sqrt(hsum(sq0 + sq1));
      norms[i] = norm;
      if (!std::isfinite(norm) || (normalize && norm == 0)) good = false;
      inv[i] = normalize && norm > 0 ? 1.0 / norm : 1.0;
      if (i % kRowBlock == kRowBlock - 1 || i == n - 1) {
        const int64_t first = i - i % kRowBlock;
        for (int64_t c = 0; c < K; c += L) {
          vh a = load(su + c), b = load(us + c);
          for (int64_t r = first; r <= i; ++r) {
            const vh v = load(buf.rows.data() + r * K + c);
            a += v;
            b += v * inv[r];
          }
          store(su + c, a);
          store(us + c, b);
        }
      }
    }
    for (int64_t k = 0; k < d; ++k) {
      sums[k] += su[k];
      unit_sums[k] += us[k];
    }
    gram_rows(buf.rows.data(), K, m, buf.gram.data(), next);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j <= i; ++j) buf.gram[i * m + j] *= inv[i] * inv[j];
    return good;
  }
  buf.rows.resize(d);
  buf.pt.assign(block * ld, 0.0);
  buf.gram.assign((ld + TJ) * ld, 0.0);  // transposed: gram[j * ld + i] = G[i][j]
  double* pt = buf.pt.data();
  for (int64_t b0 = 0; b0 < n; b0 += block) {  // G = Uᵀ U, one block of rows at a time
    const int64_t nb = std::min(block, n - b0);
    for (int64_t i = 0; i < nb; ++i) {
      const T* src = x + rows[b0 + i] * s0;
      double* row = buf.rows.data();
      double sq[8] = {};
      for (int64_t k = 0; k < d; ++k) {
        row[k] = static_cast<double>(src[k * s1]);
        sq[k % 8] += row[k] * row[k];
      }
      const double norm = std::sqrt(((sq[0] + sq[1]) + (sq[2] + sq[3])) + ((sq[4] + sq[5]) + (sq[6] + sq[7])));
      norms[b0 + i] = norm;
      if (!std::isfinite(norm) || (normalize && norm == 0)) good = false;
      const double inv = normalize && norm > 0 ? 1.0 / norm : 1.0;
      double* dst = pt + i * ld;
      for (int64_t k = 0; k < d; ++k) {
        sums[k] += row[k];
        unit_sums[k] += row[k] * inv;
        dst[k] = row[k] * inv;
      }
    }
    gram_lower(pt, nb, ld, m, buf.gram.data());
  }
  return good;
}

template <typename T>
void run(const Tensor& features, const int64_t* rows, const int64_t* offsets, int64_t C, double* eig, int64_t P,
         double* sums, double* unit_sums, double* norms, bool normalize, bool int8, int num_threads) {
  const T* x = features.ptr<T>();
  const int64_t d = features.size(1), s0 = features.stride(0), s1 = features.stride(1);
  std::vector<int64_t> order(C);
  std::iota(order.begin(), order.end(), 0);
  auto size_of = [&](int64_t c) { return std::min<int64_t>(offsets[c + 1] - offsets[c], d); };
  // Largest first (the dynamic schedule then ends on small groups); lanes of a group share a size.
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return size_of(a) > size_of(b); });
  const int64_t groups = (C + G * H - 1) / (G * H);
#pragma omp parallel num_threads(std::max(1, num_threads))
  {
    Buffers buf;
    std::vector<double> values;
#pragma omp for schedule(dynamic, 1)
    for (int64_t gi = 0; gi < groups; ++gi) {
      const int64_t first = gi * G * H, classes = std::min<int64_t>(G * H, C - first);
      const int64_t mg = size_of(order[first]);
      vm bad[H] = {};
      int shift[H][G] = {};  // each lane's matrix is G / n scaled by 2^-shift
      vd* dg[H];
      vd* e[H];
      for (int h = 0; h < H; ++h) {
        buf.dg[h].assign(mg, vd{});
        buf.e[h].assign(mg, vd{});
        dg[h] = buf.dg[h].data();
        e[h] = buf.e[h].data();
        buf.a.assign(mg * (mg + 1) / 2, vd{});
        buf.v.assign(mg, vd{});
        buf.w.assign(mg, vd{});
        buf.v2.assign(mg, vd{});
        buf.w2.assign(mg, vd{});
        for (int64_t lane = 0; lane < G && h * G + lane < classes; ++lane) {
          const int64_t c = order[first + h * G + lane], n = offsets[c + 1] - offsets[c];
          NextRows next;
          const int64_t k = first + h * G + lane + 1;  // the next class in this thread's likely order
          if (s1 == 1 && k < C) {
            const int64_t nc = order[k];
            next = {reinterpret_cast<const char*>(x), s0 * static_cast<int64_t>(sizeof(T)),
                    (d * static_cast<int64_t>(sizeof(T)) + 63) / 64, offsets[nc + 1] - offsets[nc], rows + offsets[nc]};
          }
          const bool good = class_gram(x, s0, s1, d, rows + offsets[c], n, normalize, int8, sums + c * d,
                                       unit_sums + c * d, norms + offsets[c], buf, next);
          if (!good) {
            bad[h][lane] = -1;
            continue;  // its lane stays zero; the caller raises for the bad row
          }
          const int64_t m = std::min(n, d);
          // n <= d: gram is G row-major; else transposed with row length ld (gram_lower)
          const int64_t si = n <= d ? m : 1, sj = n <= d ? 1 : gram_ld(m);
          // Scaled by a power of two to a largest diagonal in [1, 2): the reduction squares its
          // entries, which for rows far from 1 in size (unnormalised) would under- or overflow.
          double top = 0;
          for (int64_t i = 0; i < m; ++i) top = std::max(top, buf.gram[i * (si + sj)]);
          const double inv_n = 1.0 / static_cast<double>(n);
          if (top > 0 && std::isfinite(top)) shift[h][lane] = std::ilogb(top * inv_n);
          const double scale = std::ldexp(inv_n, -shift[h][lane]);
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j <= i; ++j) buf.a[packed(i, j)][lane] = buf.gram[i * si + j * sj] * scale;
        }
        tridiagonalize(buf.a.data(), mg, dg[h], e[h], buf.v.data(), buf.w.data(), buf.v2.data(), buf.w2.data());
      }
      vm failed[H];
      tridiagonal_eigenvalues<H>(dg, e, mg, failed);
      values.resize(mg);
      for (int64_t k = 0; k < classes; ++k) {
        const int h = static_cast<int>(k / G), lane = static_cast<int>(k % G);
        double* out = eig + order[first + k] * P;
        if (bad[h][lane] || failed[h][lane]) {
          std::fill(out, out + P, std::numeric_limits<double>::quiet_NaN());
          continue;
        }
        for (int64_t i = 0; i < mg; ++i) values[i] = std::ldexp(dg[h][i][lane], shift[h][lane]);
        std::sort(values.begin(), values.end(), [](double a, double b) { return a > b; });
        std::copy(values.begin(), values.end(), out);
        std::fill(out + mg, out + P, 0.0);
      }
    }
  }
}

}  // namespace

bool class_spectrum_int8_available_cpu() {
#ifdef FMKIT_INT8_GRAM
  return int8_gram::available();
#else
  return false;
#endif
}

void class_spectrum_cpu(const Tensor& features, const Tensor& rows, const Tensor& offsets, const Tensor& eigenvalues,
                        const Tensor& sums, const Tensor& unit_sums, const Tensor& row_norms, bool normalize,
                        int gram, int num_threads) {
  features.check_device(DeviceKind::cpu);
  class_spectrum_check(features, rows, offsets, eigenvalues, sums, unit_sums, row_norms);
  const int64_t M = features.size(0), d = features.size(1), C = offsets.size(0) - 1, R = rows.size(0);
  const int64_t* off = offsets.ptr<int64_t>();
  const int64_t* idx = rows.ptr<int64_t>();
  if (off[0] != 0 || off[C] != R) fail(offsets.name, "expected offsets[0] = 0 and offsets[-1] = len(rows)");
  int64_t largest = 0;
  for (int64_t c = 0; c < C; ++c) {
    if (off[c + 1] <= off[c]) fail(offsets.name, "expected strictly increasing offsets (every class non-empty)");
    largest = std::max(largest, std::min(off[c + 1] - off[c], d));
  }
  for (int64_t r = 0; r < R; ++r)
    if (idx[r] < 0 || idx[r] >= M) fail(rows.name, "expected row indices in [0, features.shape[0])");
  if (eigenvalues.size(1) < largest)
    fail(eigenvalues.name, "expected at least max_c min(n_c, d) = " + std::to_string(largest) + " columns");
  if (gram < 0 || gram > 2) fail("gram", "expected 0 (auto), 1 (float64) or 2 (int8)");
  const bool int8_ready = class_spectrum_int8_available_cpu();
  if (gram == 2 && !int8_ready)
    fail("gram", "'int8' needs AMX-INT8 tiles (an x86-64 Linux CPU with AMX, at the avx512 SIMD level); "
                 "this CPU or build has none: use 'auto' or 'float64'");
  if (gram == 2 && features.dtype != DType::f32) fail("gram", "'int8' rounds float32 rows; features are float64");
  if (gram == 2 && d > kInt8MaxD) fail("gram", "'int8' supports d <= " + std::to_string(kInt8MaxD) + " (int32 accumulators)");
  const bool int8 = gram != 1 && int8_ready && features.dtype == DType::f32 && d <= kInt8MaxD;
  std::fill(sums.ptr<double>(), sums.ptr<double>() + sums.numel(), 0.0);
  std::fill(unit_sums.ptr<double>(), unit_sums.ptr<double>() + unit_sums.numel(), 0.0);
  if (C == 0) return;
  auto go = [&](auto tag) {
    using T = decltype(tag);
    run<T>(features, idx, off, C, eigenvalues.ptr<double>(), eigenvalues.size(1), sums.ptr<double>(),
           unit_sums.ptr<double>(), row_norms.ptr<double>(), normalize, int8, num_threads);
  };
  if (features.dtype == DType::f32) {
    go(float{});
  } else {
    go(double{});
  }
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
