// Per-class Gram spectra: the C++ entry point of fmkit.ops.class_spectrum (contract shared with
// python/fmkit/reference/class_spectrum.py; used by fmkit.diversity.class_diversity, spec
// shared/specs/augment_diversity_equity.md §2).
//
// features:    [M, d] float32 or float64, any strides.
// rows:        int64 [R]: row indices into features, the rows of class 0, then class 1, ...
// offsets:     int64 [C + 1]: class c owns rows[offsets[c] : offsets[c + 1]] (n_c >= 1 rows);
//              offsets[0] = 0, offsets[C] = R.
// eigenvalues: float64 [C, P] contiguous, P >= max_c min(n_c, d). Row c: the eigenvalues of
//              G_c / n_c in descending order, then zeros. G_c is the smaller of U Uᵀ (n_c × n_c)
//              and Uᵀ U (d × d), which share their non-zero eigenvalues; U holds the class's rows,
//              each divided by its norm when `normalize` (the cosine kernel of the Vendi score).
//              NaN for a class with a non-finite row, or a zero row when `normalize`, and for the
//              (never observed) case of an eigenvalue iteration that does not converge.
// sums:        float64 [C, d] contiguous: Σ x over the class's rows.
// unit_sums:   float64 [C, d] contiguous: Σ x / |x| (Σ x when not `normalize`).
// row_norms:   float64 [R] contiguous: |x| of each listed row (the caller names bad rows from it).
// Everything is computed in float64: Gram products by a register-tiled kernel, eigenvalues by
// Householder tridiagonalisation and implicit QL, each run on as many classes at once as a
// vector register holds doubles (one class per lane). The int8 Gram route (float32 features,
// n_c <= d, AMX-INT8 CPUs) rounds each row to 31 bits (error at most 2^-31 of the row's largest
// |x|) and forms the exact Gram matrix of the rounded rows from int8 tile products; the cosine
// kernel then divides by the rounded rows' own norms. sums, unit_sums and row_norms always come
// from the float64 pass over the unrounded rows.
#pragma once

#include "../tensor.h"

namespace fmkit {

// gram: 0 "auto" (int8 for float32 features where available, else float64), 1 "float64", 2 "int8".
void class_spectrum_cpu(const Tensor& features, const Tensor& rows, const Tensor& offsets, const Tensor& eigenvalues,
                        const Tensor& sums, const Tensor& unit_sums, const Tensor& row_norms, bool normalize,
                        int gram, int num_threads);
// Whether this CPU, OS and SIMD level can run the int8 Gram route (AMX-INT8 tiles).
bool class_spectrum_int8_available_cpu();

inline void class_spectrum_check(const Tensor& features, const Tensor& rows, const Tensor& offsets,
                                 const Tensor& eigenvalues, const Tensor& sums, const Tensor& unit_sums,
                                 const Tensor& row_norms) {
  features.check_dim(2).check_dtype({DType::f32, DType::f64});
  const int64_t d = features.size(1);
  if (d < 1) fail(features.name, "expected at least one feature column");
  rows.check_same_device(features).check_dtype({DType::i64}).check_dim(1).check_contiguous();
  offsets.check_same_device(features).check_dtype({DType::i64}).check_dim(1).check_contiguous();
  if (offsets.size(0) < 1) fail(offsets.name, "expected C + 1 >= 1 entries");
  const int64_t C = offsets.size(0) - 1, R = rows.size(0);
  eigenvalues.check_same_device(features).check_dtype({DType::f64}).check_dim(2).check_contiguous();
  if (eigenvalues.size(0) != C) fail(eigenvalues.name, "expected one row per class (offsets has C + 1 entries)");
  sums.check_same_device(features).check_dtype({DType::f64}).check_shape({C, d}).check_contiguous();
  unit_sums.check_same_device(features).check_dtype({DType::f64}).check_shape({C, d}).check_contiguous();
  row_norms.check_same_device(features).check_dtype({DType::f64}).check_shape({R}).check_contiguous();
}

}  // namespace fmkit
