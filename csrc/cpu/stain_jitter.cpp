// CPU backend of the fused HED stain colour jitter (contract: csrc/ops/stain_jitter.h).
//
// Rows (b, h) are spread over the threads. Per pixel: 3 optical densities (3 logs for float32
// input, a 256-entry table for uint8), 9 FMAs, 3 exps, clip. A unit-stride row runs whole vectors
// from load to store in registers; other strides (and a row's last W % VW pixels) are gathered
// in chunks of kChunk pixels into fp32 buffers first. Every output is contiguous. One read and
// one write of every byte.
#include "cpu/dispatch.h"
#include "ops/stain_jitter.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/simd.h"

#if !defined(FMKIT_SIMD_SCALAR)
#define FMKIT_STAIN_VECTOR_IO 1  // the scalar level keeps the plain loops: it is the reference path
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#else
#define FMKIT_STAIN_VECTOR_IO 0
#endif

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace {

using simd::vfloat;
using simd::vint;
constexpr int64_t kChunk = 256;  // a multiple of every VW

// ln x for finite x > 0 (normal numbers; eps keeps the argument >= 1e-6 here). x = m 2^e with
// m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(t), t = (m - 1) / (m + 1), |t| <= 0.172, whose odd
// series to t^9 leaves a relative error below 4e-10 before rounding. NaN in, NaN out.
inline vfloat vlog(vfloat x) {
  vint bits;
  std::memcpy(&bits, &x, sizeof bits);
  vint e = ((bits >> 23) & 0xff) - 127;
  const vint mbits = (bits & 0x7fffff) | 0x3f800000;
  vfloat m;
  std::memcpy(&m, &mbits, sizeof m);
  const vint big = m > 1.41421356f;  // lanes: -1 where true
  m = big ? m * 0.5f : m;
  e = e - big;
  const vfloat t = (m - 1.f) / (m + 1.f), t2 = t * t;
  vfloat p = t2 * (1.f / 9.f) + 1.f / 7.f;
  p = p * t2 + 1.f / 5.f;
  p = p * t2 + 1.f / 3.f;
  p = p * t2 + 1.f;
  const vfloat ef = __builtin_convertvector(e, vfloat);
  const vfloat r = (2.f * t) * p + ef * 0.693147180559945f;
  return x != x ? x : r;
}

struct Coef {
  float a[9];
  float b[3];
};

// Optical densities of one vector of pixels -> their clipped RGB in [0, 1] (three planes).
inline void chain_block(vfloat o0, vfloat o1, vfloat o2, const Coef& k, float inv, float eps, vfloat out[3]) {
  for (int c = 0; c < 3; ++c) {
    const vfloat z = o0 * k.a[c] + o1 * k.a[3 + c] + o2 * k.a[6 + c] + k.b[c];
    vfloat v = (simd::vexp(-z) - eps) * inv;
    v = v < 0.f ? simd::splat(0.f) : v;
    out[c] = v > 1.f ? simd::splat(1.f) : v;
  }
}

// od[3][kChunk] -> out[3][kChunk] (clipped to [0, 1]).
inline void chain(const float (*od)[kChunk], float (*out)[kChunk], int64_t n, const Coef& k, float scale, float eps) {
  const float inv = 1.f / scale;
  for (int64_t i = 0; i < n; i += simd::VW) {  // buffers are padded to kChunk: whole vectors only
    vfloat v[3];
    chain_block(simd::vload(od[0] + i), simd::vload(od[1] + i), simd::vload(od[2] + i), k, inv, eps, v);
    for (int c = 0; c < 3; ++c) simd::vstore(out[c] + i, v[c]);
  }
}

inline vfloat round_to_code(vfloat v) {  // [0, 1] -> 0..255 as floats, nearest even
  const vfloat magic = simd::splat(12582912.f);  // 1.5 * 2^23
  return (v * 255.f + magic) - magic;
}

#if FMKIT_STAIN_VECTOR_IO
// Unit-stride rows (the common NCHW case) stay in registers from load to store: the scalar
// gather/convert loops of the strided path cost more than the colour chain itself.
typedef uint8_t vbyte __attribute__((vector_size(simd::VW)));

inline vint codes(const uint8_t* p) {
  vbyte b;
  std::memcpy(&b, p, sizeof b);
  return __builtin_convertvector(b, vint);
}

inline vfloat lookup(vint idx, const float* table) {  // table[idx] per lane, 0 <= idx < 256
#if defined(__AVX512F__)
  __m512i i;
  std::memcpy(&i, &idx, sizeof i);
  const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xffff, i, table, 4);  // (the unmasked form trips -Wmaybe-uninitialized)
  vfloat r;
  std::memcpy(&r, &g, sizeof r);
  return r;
#elif defined(__AVX2__)
  __m256i i;
  std::memcpy(&i, &idx, sizeof i);
  const __m256 g = _mm256_i32gather_ps(table, i, 4);
  vfloat r;
  std::memcpy(&r, &g, sizeof r);
  return r;
#else
  vfloat r;
  for (int l = 0; l < simd::VW; ++l) r[l] = table[idx[l]];
  return r;
#endif
}

inline void store_codes(uint8_t* q, vfloat v) {
  const vbyte b = __builtin_convertvector(__builtin_convertvector(round_to_code(v), vint), vbyte);
  std::memcpy(q, &b, sizeof b);
}

// Pixels [0, n) of one unit-stride row, n a multiple of VW.
template <typename T>
void row_vectors(const T* p0, const T* p1, const T* p2, T* q0, T* q1, T* q2, int64_t n, const Coef& k,
                 const float* lut, float scale, float eps) {
  const float inv = 1.f / scale;
  for (int64_t i = 0; i < n; i += simd::VW) {
    vfloat v[3];
    if constexpr (std::is_same<T, uint8_t>::value) {
      // Codes through the optical-density table (one gather per channel): 20-30% less CPU time
      // than the vector log of the float path on a Xeon with AVX-512 and with AVX2.
      chain_block(lookup(codes(p0 + i), lut), lookup(codes(p1 + i), lut), lookup(codes(p2 + i), lut), k, inv, eps, v);
      store_codes(q0 + i, v[0]);
      store_codes(q1 + i, v[1]);
      store_codes(q2 + i, v[2]);
    } else {
      const auto od = [&](const float* p) { return -vlog(simd::vload(p + i) * scale + eps); };
      chain_block(od(p0), od(p1), od(p2), k, inv, eps, v);
      simd::vstore(q0 + i, v[0]);
      simd::vstore(q1 + i, v[1]);
      simd::vstore(q2 + i, v[2]);
    }
  }
}

// uint8 input has only 256 values per channel, so exp(-(od A + b)) factors per image into
// three tables per output channel: out_c = E_c0[p0] E_c1[p1] E_c2[p2], with
// E_ck[v] = exp(-(od(v) a_kc + [k = 0] b_c)) in double. Nine lookups and two products replace
// three exps, three FMAs and three lookups per pixel (the exps run once per image and code),
// and the result is closer to the exact chain (each factor rounded once).
constexpr int kTables = 9 * 256;  // [c][k][v]
// Only 4-lane levels use them: with AVX2 / AVX-512 nine gathers cost more than three table
// gathers and three vector exps (measured on a Xeon with AVX-512), so those builds leave them out.
constexpr bool kProductTables = simd::VW <= 4;

// Fills one image's tables; false if a partial product could leave the normal float range
// (|exponent sum| > 85: extreme alpha / beta), then the image takes the exp path.
inline bool fill_tables(const Coef& k, const double* od, float* tab) {
  for (int c = 0; c < 3; ++c) {
    double bound = std::fabs(k.b[c]);
    for (int j = 0; j < 3; ++j) {
      double m = 0;
      for (int v = 0; v < 256; ++v) m = std::max(m, std::fabs(od[v] * k.a[3 * j + c]));
      bound += m;
    }
    if (!(bound <= 85.0)) return false;  // also false for NaN coefficients
  }
  for (int c = 0; c < 3; ++c)
    for (int j = 0; j < 3; ++j)
      for (int v = 0; v < 256; ++v)
        tab[(c * 3 + j) * 256 + v] =
            static_cast<float>(std::exp(-(od[v] * k.a[3 * j + c] + (j == 0 ? k.b[c] : 0.0))));
  return true;
}

// Pixels [0, n) of one unit-stride uint8 row through the image's tables, n a multiple of VW.
inline void row_tables(const uint8_t* p0, const uint8_t* p1, const uint8_t* p2, uint8_t* q0, uint8_t* q1,
                       uint8_t* q2, int64_t n, const float* tab, float inv, float eps) {
  uint8_t* q[3] = {q0, q1, q2};
  for (int64_t i = 0; i < n; i += simd::VW) {
    const vint i0 = codes(p0 + i), i1 = codes(p1 + i), i2 = codes(p2 + i);
    for (int c = 0; c < 3; ++c) {
      const float* t = tab + c * 3 * 256;
      const vfloat e = lookup(i0, t) * lookup(i1, t + 256) * lookup(i2, t + 512);
      vfloat v = (e - eps) * inv;
      v = v < 0.f ? simd::splat(0.f) : v;
      v = v > 1.f ? simd::splat(1.f) : v;
      store_codes(q[c] + i, v);
    }
  }
}
#endif

template <typename T>
void run(const Tensor& img, const Coef* coef, const Tensor& out, float scale, float eps, int num_threads) {
  const int64_t B = img.size(0), H = img.size(2), W = img.size(3);
  const int64_t sb = img.stride(0), sc = img.stride(1), sh = img.stride(2), sw = img.stride(3);
  const T* src = img.ptr<T>();
  T* dst = out.ptr<T>();
  constexpr bool u8 = std::is_same<T, uint8_t>::value;
  float lut[256];  // uint8: the optical density of each code value, computed once in double
  double od64[256];
  if (u8)
    for (int v = 0; v < 256; ++v) {
      od64[v] = -std::log(scale * (v / 255.0) + eps);
      lut[v] = static_cast<float>(od64[v]);
    }
  const int threads = std::max(1, num_threads);
#if FMKIT_STAIN_VECTOR_IO
  // uint8 with unit-stride rows: per-image product tables (row_tables), 9 KiB per image.
  // Without hardware gathers (SSE2, NEON: 4 lanes) nine scalar lookups beat three 4-lane exps
  // (42 -> 24 ms per 256x3x96x96 batch on one core).
  const bool tabled = kProductTables && u8 && sw == 1 && W >= simd::VW;
  std::vector<float> tables(tabled ? B * kTables : 0);
  std::vector<uint8_t> has_table(tabled ? B : 0);
  if constexpr (kProductTables) {
    if (tabled) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
      for (int64_t b = 0; b < B; ++b) has_table[b] = fill_tables(coef[b], od64, tables.data() + b * kTables);
    }
  }
#endif
  // Dynamic blocks of rows: on a shared machine a thread that loses its core must not hold the
  // whole call back (static halves ran 3x slower than one thread under a busy neighbour).
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
  for (int64_t row = 0; row < B * H; ++row) {
    const int64_t b = row / H, h = row % H;
    alignas(64) float od[3][kChunk];
    alignas(64) float res[3][kChunk];
    for (int c = 0; c < 3; ++c) std::fill(od[c], od[c] + kChunk, 0.f);
    int64_t w_start = 0;
#if FMKIT_STAIN_VECTOR_IO
    if (sw == 1) {
      const T* p = src + b * sb + h * sh;
      T* q = dst + (b * 3 * H + h) * W;
      w_start = W - W % simd::VW;
      bool done = false;
      if constexpr (u8 && kProductTables) {
        if (tabled && has_table[b]) {
          row_tables(p, p + sc, p + 2 * sc, q, q + H * W, q + 2 * H * W, w_start, tables.data() + b * kTables,
                     1.f / scale, eps);
          done = true;
        }
      }
      if (!done)
        row_vectors<T>(p, p + sc, p + 2 * sc, q, q + H * W, q + 2 * H * W, w_start, coef[b], lut, scale, eps);
    }
#endif
    for (int64_t w0 = w_start; w0 < W; w0 += kChunk) {
      const int64_t n = std::min(kChunk, W - w0);
      for (int c = 0; c < 3; ++c) {
        const T* p = src + b * sb + c * sc + h * sh + w0 * sw;
        if constexpr (u8) {
          for (int64_t i = 0; i < n; ++i) od[c][i] = lut[p[i * sw]];
        } else {
          for (int64_t i = 0; i < n; ++i) od[c][i] = p[i * sw];
          for (int64_t i = 0; i < n; i += simd::VW)
            simd::vstore(od[c] + i, -vlog(simd::vload(od[c] + i) * scale + eps));
        }
      }
      chain(od, res, n, coef[b], scale, eps);
      for (int c = 0; c < 3; ++c) {
        T* q = dst + ((b * 3 + c) * H + h) * W + w0;
        if constexpr (u8) {
          for (int64_t i = 0; i < n; i += simd::VW) simd::vstore(res[c] + i, round_to_code(simd::vload(res[c] + i)));
          for (int64_t i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(res[c][i]);
        } else {
          std::memcpy(q, res[c], n * sizeof(float));
        }
      }
    }
  }
}

}  // namespace

void stain_jitter_cpu(const Tensor& images, const Tensor& coef, const Tensor& out, float scale, float eps,
                      int num_threads) {
  images.check_device(DeviceKind::cpu);
  stain_jitter_check(images, coef, out, scale, eps);
  if (images.numel() == 0) return;
  const Coef* k = reinterpret_cast<const Coef*>(coef.ptr<float>());
  if (images.dtype == DType::u8) {
    run<uint8_t>(images, k, out, scale, eps, num_threads);
  } else {
    run<float>(images, k, out, scale, eps, num_threads);
  }
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
