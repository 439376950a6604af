// k-means update on the CPU: float64 per-cluster sums and counts (declared in ops/knn.h).
//
// Threads own contiguous ranges of clusters and each scans every assignment, adding only the
// rows of its own clusters. Every cluster's rows are therefore added in row order whatever
// the thread count, so the sums are bitwise those of a sequential index_add_, while each row
// is read once and no float64 copy of x is made.
#include <algorithm>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/simd.h"
#include "cpu/dispatch.h"
#include "ops/knn.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)
namespace {

using simd::load_as_float;

template <typename T>
void cluster_sums(const Tensor& x, const int64_t* assign, int64_t k, double* sums, int64_t* counts, int threads) {
  const T* base = x.ptr<T>();
  const int64_t N = x.size(0), d = x.size(1), s0 = x.stride(0), s1 = x.stride(1);
  std::fill(sums, sums + k * d, 0.0);
  std::fill(counts, counts + k, int64_t{0});
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int t = 0, nt = 1;
#endif
    const int64_t lo = k * t / nt, hi = k * (t + 1) / nt;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t a = assign[n];
      if (a < lo || a >= hi) continue;
      double* dst = sums + a * d;
      const T* src = base + n * s0;
      if (s1 == 1) {
        for (int64_t j = 0; j < d; ++j) dst[j] += static_cast<double>(load_as_float(src + j));
      } else {
        for (int64_t j = 0; j < d; ++j) dst[j] += static_cast<double>(load_as_float(src + j * s1));
      }
      ++counts[a];
    }
  }
}

}  // namespace

void kmeans_cluster_sums_cpu(const Tensor& x, const Tensor& assign, const Tensor& out_sums, const Tensor& out_counts,
                             int num_threads) {
  x.check_dim(2).check_device(DeviceKind::cpu).check_dtype({DType::f32, DType::f16, DType::bf16});
  const int64_t N = x.size(0), d = x.size(1);
  assign.check_device(DeviceKind::cpu).check_dtype({DType::i64}).check_shape({N}).check_contiguous();
  out_sums.check_device(DeviceKind::cpu).check_dtype({DType::f64}).check_dim(2).check_contiguous();
  const int64_t k = out_sums.size(0);
  out_sums.check_shape({k, d});
  out_counts.check_device(DeviceKind::cpu).check_dtype({DType::i64}).check_shape({k}).check_contiguous();
  const int64_t* a = assign.ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    if (a[n] < 0 || a[n] >= k) fail(assign.name, "cluster index out of range [0, " + std::to_string(k) + ")");
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, k)));
  switch (x.dtype) {
    case DType::f32: cluster_sums<float>(x, a, k, out_sums.ptr<double>(), out_counts.ptr<int64_t>(), threads); break;
    case DType::f16: cluster_sums<simd::f16>(x, a, k, out_sums.ptr<double>(), out_counts.ptr<int64_t>(), threads); break;
    default: cluster_sums<simd::bf16>(x, a, k, out_sums.ptr<double>(), out_counts.ptr<int64_t>(), threads); break;
  }
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
