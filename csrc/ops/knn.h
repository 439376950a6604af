// kNN candidate search: the C++ entry points shared by the CPU and CUDA backends.
//
// What a backend computes (the "candidate contract", see python/fmkit/ops/knn.py):
//   For every query row i it returns kprime database rows, out_index[i, :], and their
//   approximate scores out_score[i, :] (float32, sorted ascending, ties by lower index),
//   such that every database row NOT returned has a computed score >= out_score[i, kprime-1].
//     metric L2: score_j = |y_j - c|^2 - 2 <x_i - c, y_j - c>   (c = `center`, fp32 [d])
//     metric IP: score_j = -<x_i, y_j - c>   (CPU; the CUDA kernel ignores `center`: c = 0)
//   For a fixed query, -<x_i, c> shifts every IP score alike, so the ranking is unchanged and
//   the rounding error scales with |y_j - c| instead of |y_j| (offset data).
//   The score is computed in fp32 with fp32 accumulation (no TF32); its rounding error is
//   bounded by (d + 4) * 2^-24 * (|x_i - c| + |y_j - c|)^2. Python uses that bound to
//   certify that re-ranking the candidates in float64 gives the exact top-k.
//   If self_offset >= 0, database row (i + self_offset) is never a candidate for query i
//   (self-exclusion by index, so duplicated points still find each other).
#pragma once

#include <cstdint>

#include "../tensor.h"

namespace fmkit {

enum class KnnMetric : int { l2 = 0, ip = 1 };

// queries [Q, d], database [N, d]: float32 / float16 / bfloat16, any strides.
// center: float32 [d] contiguous. out_score: float32 [Q, kprime], out_index: int64 [Q, kprime],
// both contiguous. 1 <= kprime <= number of eligible database rows.
void knn_candidates_cpu(const Tensor& queries, const Tensor& database, const Tensor& center,
                        KnnMetric metric, int64_t kprime, int64_t self_offset,
                        const Tensor& out_score, const Tensor& out_index, int num_threads);

// Centre (float32 mean of the database rows, both metrics) and the float64 radius
// max_j |y_j - c| used by the exactness certificate. out_center f32 [d], out_radius f64 [1].
void knn_center_radius_cpu(const Tensor& database, KnnMetric metric, const Tensor& out_center,
                           const Tensor& out_radius, int num_threads);

// Re-ranks candidates [Q, kprime] (int64) with the direct float64 distance (or inner product)
// and writes the best k per row sorted by (distance, index): out_dist f64 [Q, k], out_index i64 [Q, k].
void knn_rerank_cpu(const Tensor& queries, const Tensor& database, const Tensor& candidates, KnnMetric metric,
                    const Tensor& out_dist, const Tensor& out_index, int num_threads);

// k = 1 in one pass, for the certificate with the single best row as the candidate list:
// per query the best-scoring database row (score as in the contract above, ties to the lower
// index) -> out_index i64 [Q]; the smallest score of every OTHER row -> out_second f32 [Q]
// (+inf if N = 1, -inf if no score compared, which no certificate accepts); the float64
// distance (L2: sum (x - y)^2; IP: <x, y>) to the chosen row -> out_dist f64 [Q]; and the
// float64 norm of the fp32-centred query |x - c| (IP: |x|) -> out_qnorm f64 [Q].
void knn_nearest_cpu(const Tensor& queries, const Tensor& database, const Tensor& center, KnnMetric metric,
                     const Tensor& out_index, const Tensor& out_second, const Tensor& out_dist,
                     const Tensor& out_qnorm, int num_threads);

// k-means update (csrc/cpu/knn_kmeans.cpp): float64 per-cluster sums of the rows of x
// [N, d] (f32 / f16 / bf16) by assign i64 [N] in [0, k), each cluster's rows added in row
// order -> out_sums f64 [k, d]; members per cluster -> out_counts i64 [k].
void kmeans_cluster_sums_cpu(const Tensor& x, const Tensor& assign, const Tensor& out_sums, const Tensor& out_counts,
                             int num_threads);

#ifdef FMKIT_WITH_CUDA
// Same contract on CUDA tensors. `workspace` is a contiguous uint8 CUDA buffer of at least
// knn_workspace_bytes_cuda(...) bytes, allocated by the caller; `stream` is a cudaStream_t
// passed as an integer (torch.cuda.current_stream().cuda_stream). Nothing synchronises the host.
int64_t knn_workspace_bytes_cuda(int64_t Q, int64_t N, int64_t d, int64_t kprime);
int64_t knn_max_kprime_cuda();
void knn_candidates_cuda(const Tensor& queries, const Tensor& database, const Tensor& center,
                         KnnMetric metric, int64_t kprime, int64_t self_offset,
                         const Tensor& out_score, const Tensor& out_index, const Tensor& workspace,
                         uintptr_t stream);
#endif

}  // namespace fmkit
