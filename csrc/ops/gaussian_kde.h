// Gaussian kernel sums for KDE: the C++ entry point of fmkit.ops.gaussian_kde.
#pragma once

#include "../tensor.h"

namespace fmkit {

// out[m] = sum_i exp(-sum_j (queries[m, j] - points_t[j, i])^2), all float64.
// queries [M, q] (any strides), points_t [q, N] contiguous (structure of arrays, so the
// inner loop over i is a unit-stride vector loop), out [M] contiguous. The caller scales
// both by 1 / (h_j * sqrt(2)) and applies the normalisation.
void gaussian_kernel_sum_cpu(const Tensor& queries, const Tensor& points_t, const Tensor& out, int num_threads);

}  // namespace fmkit
