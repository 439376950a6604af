// Exact Gaussian kernel sums on the CPU (contract in ops/gaussian_kde.h).
//
// One query per OpenMP iteration; the inner loop over points is unit-stride over a
// structure-of-arrays copy and carries no dependence except the sum, so GCC vectorises it,
// exp included (glibc's libmvec, enabled by -fno-math-errno). The points (16 B each for
// q = 2) stay in L2 across queries. Cost: M * N * (q + exp) flops, no M x N memory.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/dispatch.h"
#include "ops/gaussian_kde.h"

namespace fmkit {
namespace FMKIT_CPU_NS {  // one copy per SIMD level (cpu/dispatch.h)

void gaussian_kernel_sum_cpu(const Tensor& queries, const Tensor& points_t, const Tensor& out, int num_threads) {
  queries.check_dim(2).check_device(DeviceKind::cpu).check_dtype({DType::f64});
  points_t.check_dim(2).check_device(DeviceKind::cpu).check_dtype({DType::f64}).check_contiguous();
  const int64_t M = queries.size(0), q = queries.size(1), N = points_t.size(1);
  if (points_t.size(0) != q)
    fail(points_t.name, "expected [" + std::to_string(q) + ", N] (one row per query dimension), got " +
                            std::to_string(points_t.size(0)) + " rows");
  out.check_device(DeviceKind::cpu).check_dtype({DType::f64}).check_shape({M}).check_contiguous();
  const double* qp = queries.ptr<double>();
  const double* pts = points_t.ptr<double>();
  double* dst = out.ptr<double>();
  const int64_t s0 = queries.stride(0), s1 = queries.stride(1);

#pragma omp parallel for num_threads(std::max(1, num_threads)) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    double x[8];
    const bool small = q <= 8;
    std::vector<double> big;
    if (!small) big.resize(q);
    double* xm = small ? x : big.data();
    for (int64_t j = 0; j < q; ++j) xm[j] = qp[m * s0 + j * s1];
    double acc = 0.0;
    if (q == 2) {
      const double x0 = xm[0], x1 = xm[1];
      const double* p0 = pts;
      const double* p1 = pts + N;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < N; ++i) {
        const double a = x0 - p0[i], b = x1 - p1[i];
        acc += std::exp(-(a * a + b * b));
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < N; ++i) {
        double s = 0.0;
        for (int64_t j = 0; j < q; ++j) {
          const double a = xm[j] - pts[j * N + i];
          s += a * a;
        }
        acc += std::exp(-s);
      }
    }
    dst[m] = acc;
  }
}

}  // namespace FMKIT_CPU_NS
}  // namespace fmkit
