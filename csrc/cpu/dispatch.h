// Runtime SIMD dispatch. Every csrc/cpu/*.cpp is compiled once per SIMD level (CMakeLists.txt:
// scalar, sse2, avx2, avx512 on x86-64; scalar, neon on aarch64), each time into its own
// namespace fmkit::cpu_<level> (the FMKIT_CPU_NS compile definition), with that level's
// compiler flags. simd.h and tile.h are inside the namespace too, so no inline function or
// template compiled for one level is shared with another. At import, cpu_dispatch.cpp picks
// one level from cpuid (or FMKIT_SIMD) and bindings.cpp calls its entry points through
// cpu_kernels().
//
// The ops headers (csrc/ops/*.h) declare each CPU entry point once in namespace fmkit: that
// declaration is the contract and the signature every level's copy is declared with here
// (decltype), but fmkit::<entry point> itself is never defined.
#pragma once

#include <string>
#include <vector>

#include "ops/class_spectrum.h"
#include "ops/clip_loss.h"
#include "ops/gaussian_kde.h"
#include "ops/knn.h"
#include "ops/media_cross_attention.h"
#include "ops/perceiver_attention.h"
#include "ops/pgd_step.h"
#include "ops/stain_jitter.h"

#define FMKIT_CPU_ENTRY_POINTS(X)                                                                     \
  X(knn_candidates_cpu) X(knn_center_radius_cpu) X(knn_rerank_cpu) X(knn_nearest_cpu)               \
  X(kmeans_cluster_sums_cpu) X(gaussian_kernel_sum_cpu) X(contrastive_forward_cpu)                  \
  X(contrastive_backward_cpu) X(perceiver_attention_forward_cpu) X(perceiver_attention_backward_cpu) \
  X(media_cross_attention_forward_cpu) X(media_cross_attention_backward_cpu) X(pgd_step_cpu) \
  X(stain_jitter_cpu) X(class_spectrum_cpu) X(class_spectrum_int8_available_cpu)

#define FMKIT_CPU_DECLARE_ONE(fn) decltype(::fmkit::fn) fn;
// The entry points of one level, plus the level's name as its compiler flags define it
// (cpu/simd_level.cpp), so a level is never reported under a name its code does not match.
#define FMKIT_CPU_DECLARE_LEVEL(ns) \
  namespace ns {                    \
  FMKIT_CPU_ENTRY_POINTS(FMKIT_CPU_DECLARE_ONE)  \
  const char* simd_level();         \
  }

namespace fmkit {

#ifdef FMKIT_CPU_NS
FMKIT_CPU_DECLARE_LEVEL(FMKIT_CPU_NS)
#endif

struct CpuKernels {
#define FMKIT_CPU_POINTER(fn) decltype(&::fmkit::fn) fn;
  FMKIT_CPU_ENTRY_POINTS(FMKIT_CPU_POINTER)
#undef FMKIT_CPU_POINTER
};

struct SimdInfo {
  std::string detected;               // best level this CPU (and OS) supports
  std::string selected;               // the level in use
  std::vector<std::string> compiled;  // levels built into this extension, lowest first
};

// Selects the level once: FMKIT_SIMD if set (an error if unknown, above `detected` or not
// compiled), else the best compiled level the CPU supports. Throws std::runtime_error with a
// message naming FMKIT_SIMD.
const SimdInfo& simd_select();
// The selected level's entry points (simd_select() must have succeeded).
const CpuKernels& cpu_kernels();

}  // namespace fmkit
