// What the CPU kernels share: the vector width and micro-tile shape of this build's target,
// vector helpers (GCC vector extensions, including a polynomial exp), and fp32 loads from /
// round-to-nearest-even stores to float32 / float16 / bfloat16 storage.
#pragma once

#include <cstdint>
#include <cstring>

#include "../tensor.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace simd {

#ifndef FMKIT_CPU_NS
#error "csrc/cpu sources are compiled once per SIMD level with -DFMKIT_CPU_NS=cpu_<level> (see CMakeLists.txt)"
#endif

// The level follows the compiler flags of this translation unit. "scalar" is the baseline
// build with one-lane vectors and auto-vectorisation off: a true scalar reference path.
#if defined(FMKIT_SIMD_SCALAR)
constexpr int VW = 1;
constexpr int MR = 6;
constexpr const char* kLevelName = "scalar";
#elif defined(__AVX512F__)
constexpr int VW = 16;  // floats per vector register
constexpr int MR = 12;  // micro-tile rows: 24 accumulators + 2 panel loads + 1 broadcast fit in 32 zmm registers
constexpr const char* kLevelName = "avx512";
#elif defined(__AVX2__)
constexpr int VW = 8;
constexpr int MR = 6;   // 12 accumulators in 16 ymm registers
constexpr const char* kLevelName = "avx2";
#elif defined(__ARM_NEON)
constexpr int VW = 8;   // two q registers per vector: 24 of the 32 hold the accumulators
constexpr int MR = 6;
constexpr const char* kLevelName = "neon";
#else
constexpr int VW = 4;
constexpr int MR = 6;
constexpr const char* kLevelName = "sse2";
#endif
constexpr int NR = 2 * VW;  // micro-tile columns: two vector registers per row
typedef float vfloat __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(VW * sizeof(int32_t))));

// Element tags for 16-bit floats, so kernels can be templated on the storage type.
struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };
inline float load_as_float(const float* p) { return *p; }
inline float load_as_float(const f16* p) { return half_to_float(p->bits); }
inline float load_as_float(const bf16* p) { return bf16_to_float(p->bits); }

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
inline void store_as(f16* p, float v) { p->bits = float_to_half_bits(v); }
inline void store_as(bf16* p, float v) { p->bits = float_to_bf16_bits(v); }

// ---- vector helpers ----

inline vfloat splat(float v) { return vfloat{} + v; }
inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }
inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }

// Lanes [0, rem) true: masks the last, partial vector of a row.
inline vint lane_mask(int64_t rem) {
  vint m;
  for (int c = 0; c < VW; ++c) m[c] = c < rem ? -1 : 0;
  return m;
}

// exp on a vector: x = n ln2 + r with |r| <= ln2 / 2, a degree-7 Taylor polynomial for e^r
// (relative error < 1e-8 before rounding) and 2^n built in the exponent field. The kernels
// exp every score (some twice per pass), so a scalar libm call per element would cost as much
// as the products. The clamp to [-88, 88] keeps 2^n a normal number or exactly 0 (n = -127
// gives a zero exponent field), so exp(-inf) = 0, tiny probabilities flush to 0 instead of
// producing denormals, and no lane ever overflows; NaN passes through the comparisons unchanged.
inline vfloat vexp(vfloat x) {
  const vfloat lo = splat(-88.f), hi = splat(88.f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vfloat magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat n = (x * 1.44269504088896341f + magic) - magic;
  vfloat r = x - n * 0.693359375f;  // ln2 split in two (Cody-Waite) so r is exact enough
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

}  // namespace simd
}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
