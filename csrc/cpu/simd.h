// What the CPU kernels share: the vector width and micro-tile shape of this build's target,
// and fp32 loads from float32 / float16 / bfloat16 storage.
#pragma once

#include <cstdint>

#include "../tensor.h"

namespace fmkit {
namespace simd {

#if defined(__AVX512F__)
constexpr int VW = 16;  // floats per vector register
constexpr int MR = 12;  // micro-tile rows: 24 accumulators + 2 panel loads + 1 broadcast fit in 32 zmm registers
#elif defined(__AVX__) || defined(__ARM_NEON)
constexpr int VW = 8;
constexpr int MR = 6;   // 12 accumulators in 16 ymm registers
#else
constexpr int VW = 4;
constexpr int MR = 6;
#endif
constexpr int NR = 2 * VW;  // micro-tile columns: two vector registers per row
typedef float vfloat __attribute__((vector_size(VW * sizeof(float))));

// Element tags for 16-bit floats, so kernels can be templated on the storage type.
struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };
inline float load_as_float(const float* p) { return *p; }
inline float load_as_float(const f16* p) { return half_to_float(p->bits); }
inline float load_as_float(const bf16* p) { return bf16_to_float(p->bits); }

}  // namespace simd
}  // namespace fmkit
