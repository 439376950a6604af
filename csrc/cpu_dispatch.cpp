// Picks the SIMD level of the CPU kernels once, at import (see cpu/dispatch.h). Compiled with
// the baseline flags only, like bindings.cpp: it runs before anything is known about the CPU.
#include "cpu/dispatch.h"

#include <cstdlib>
#include <stdexcept>

namespace fmkit {

// cpu_levels.inc is written by CMake: FMKIT_CPU_LEVEL(cpu_<level>) for each compiled level,
// lowest first.
#define FMKIT_CPU_LEVEL(ns) FMKIT_CPU_DECLARE_LEVEL(ns)
#include "cpu_levels.inc"
#undef FMKIT_CPU_LEVEL

namespace {

struct Level {
  const char* name;
  CpuKernels kernels;
};

const std::vector<Level>& compiled_levels() {
#define FMKIT_CPU_ADDRESS(fn) &ns_::fn,
  static const std::vector<Level> levels = [] {
    std::vector<Level> out;
#define FMKIT_CPU_LEVEL(ns) \
  { namespace ns_ = ns; out.push_back({ns_::simd_level(), {FMKIT_CPU_ENTRY_POINTS(FMKIT_CPU_ADDRESS)}}); }
#include "cpu_levels.inc"
#undef FMKIT_CPU_LEVEL
    return out;
  }();
#undef FMKIT_CPU_ADDRESS
  return levels;
}

// Every level name in increasing order of capability (aarch64: scalar < neon).
const std::vector<std::string>& known_levels() {
  static const std::vector<std::string> names = {"scalar", "sse2", "neon", "avx2", "avx512"};
  return names;
}

int rank(const std::string& name) {
  const auto& k = known_levels();
  for (size_t i = 0; i < k.size(); ++i)
    if (k[i] == name) return static_cast<int>(i);
  return -1;
}

// The best level the CPU and the OS support. GCC's __builtin_cpu_supports also checks (via
// XGETBV) that the OS saves the AVX / AVX-512 register state, without which the instructions
// fault even on a CPU that has them.
std::string detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return "avx2";
  return "sse2";  // part of x86-64
#elif defined(__aarch64__)
  return "neon";  // part of AArch64
#else
  return "scalar";
#endif
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

const SimdInfo& simd_select() {
  static const SimdInfo info = [] {
    SimdInfo r;
    r.detected = detect();
    // Testing aid: FMKIT_SIMD_CPU=<level> makes the CPU look like one that supports at most that
    // level (an AVX2 machine on an AVX-512 host); it can only lower the detected level.
    if (const char* cap = std::getenv("FMKIT_SIMD_CPU"))
      if (rank(cap) >= 0 && rank(cap) < rank(r.detected)) r.detected = cap;
    const int cpu_rank = rank(r.detected);
    std::vector<std::string> usable;  // compiled and supported by this CPU
    for (const auto& level : compiled_levels()) {
      r.compiled.push_back(level.name);
      if (rank(level.name) <= cpu_rank) usable.push_back(level.name);
    }
    const char* env = std::getenv("FMKIT_SIMD");
    const std::string want = env ? env : "";
    if (want.empty()) {
      if (usable.empty())
        throw std::runtime_error("fmkit: no compiled SIMD level runs on this CPU (detected " + r.detected +
                                 ", compiled " + join(r.compiled) + "); rebuild with FMKIT_NATIVE=OFF");
      r.selected = usable.back();
      return r;
    }
    const std::string where = "FMKIT_SIMD=" + want + ": ";
    const std::string known = "compiled levels: " + join(r.compiled) + "; this CPU supports up to " + r.detected;
    if (rank(want) < 0) throw std::runtime_error(where + "unknown SIMD level (" + known + ")");
    if (rank(want) > cpu_rank)
      throw std::runtime_error(where + "this CPU does not support " + want + " (" + known + ")");
    for (const auto& u : usable)
      if (u == want) {
        r.selected = want;
        return r;
      }
    throw std::runtime_error(where + "level not compiled into this build (" + known + ")");
  }();
  return info;
}

const CpuKernels& cpu_kernels() {
  static const CpuKernels* k = [] {
    const std::string& sel = simd_select().selected;
    for (const auto& level : compiled_levels())
      if (sel == level.name) return &level.kernels;
    throw std::logic_error("fmkit: selected SIMD level is not compiled");
  }();
  return *k;
}

}  // namespace fmkit
