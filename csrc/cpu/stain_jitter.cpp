// CPU backend of the fused HED stain colour jitter (contract: csrc/ops/stain_jitter.h).
//
// Rows (b, h) are spread over the threads. A row is cut into chunks of kChunk pixels: the three
// channels are gathered (any strides) into fp32 buffers as optical densities, then the whole chain
// runs on vectors (3 logs for float32 input, a 256-entry table for uint8; 9 FMAs; 3 exps), and the
// chunk is stored into the contiguous output. One read and one write of every byte.
#include "cpu/dispatch.h"
#include "ops/stain_jitter.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/simd.h"

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

// od[3][kChunk] -> out[3][kChunk] (clipped to [0, 1]).
inline void chain(const float (*od)[kChunk], float (*out)[kChunk], int64_t n, const Coef& k, float scale, float eps) {
  const float inv = 1.f / scale;
  for (int64_t i = 0; i < n; i += simd::VW) {  // buffers are padded to kChunk: whole vectors only
    const vfloat o0 = simd::vload(od[0] + i), o1 = simd::vload(od[1] + i), o2 = simd::vload(od[2] + i);
    for (int c = 0; c < 3; ++c) {
      const vfloat z = o0 * k.a[c] + o1 * k.a[3 + c] + o2 * k.a[6 + c] + k.b[c];
      vfloat v = (simd::vexp(-z) - eps) * inv;
      v = v < 0.f ? simd::splat(0.f) : v;
      v = v > 1.f ? simd::splat(1.f) : v;
      simd::vstore(out[c] + i, v);
    }
  }
}

template <typename T>
void run(const Tensor& img, const Coef* coef, const Tensor& out, float scale, float eps, int num_threads) {
  const int64_t B = img.size(0), H = img.size(2), W = img.size(3);
  const int64_t sb = img.stride(0), sc = img.stride(1), sh = img.stride(2), sw = img.stride(3);
  const T* src = img.ptr<T>();
  T* dst = out.ptr<T>();
  constexpr bool u8 = std::is_same<T, uint8_t>::value;
  float lut[256];  // uint8: the optical density of each code value, computed once in double
  if (u8)
    for (int v = 0; v < 256; ++v) lut[v] = static_cast<float>(-std::log(scale * (v / 255.0) + eps));
  const int threads = std::max(1, num_threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t row = 0; row < B * H; ++row) {
    const int64_t b = row / H, h = row % H;
    alignas(64) float od[3][kChunk];
    alignas(64) float res[3][kChunk];
    for (int c = 0; c < 3; ++c) std::fill(od[c], od[c] + kChunk, 0.f);
    for (int64_t w0 = 0; w0 < W; w0 += kChunk) {
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
          const vfloat magic = simd::splat(12582912.f);  // 1.5 * 2^23: rounds to nearest even
          for (int64_t i = 0; i < n; i += simd::VW)
            simd::vstore(res[c] + i, (simd::vload(res[c] + i) * 255.f + magic) - magic);
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
