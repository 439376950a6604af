// The only pybind11 file: one def per op. Arrays arrive as DLPack capsules
// (torch.utils.dlpack.to_dlpack / __dlpack__()), outputs are preallocated by Python.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "cpu/dispatch.h"
#include "ops/class_spectrum.h"
#include "ops/clip_loss.h"
#include "ops/gaussian_kde.h"
#include "ops/knn.h"
#include "ops/media_cross_attention.h"
#include "ops/perceiver_attention.h"
#include "ops/pgd_step.h"
#include "ops/stain_jitter.h"
#include "tensor.h"

namespace py = pybind11;
using fmkit::DLPackHandle;

namespace {

// Takes ownership of a "dltensor" capsule for the duration of one call.
DLPackHandle borrow(const py::capsule& capsule, const char* name) {
  PyObject* obj = capsule.ptr();
  if (!PyCapsule_IsValid(obj, "dltensor"))
    throw std::invalid_argument(std::string(name) + ": expected an unconsumed DLPack capsule");
  auto* managed = static_cast<fmkit::dl::ManagedTensor*>(PyCapsule_GetPointer(obj, "dltensor"));
  // Renaming marks the capsule as consumed, so its destructor does not free the tensor;
  // DLPackHandle's destructor calls the producer's deleter instead.
  PyCapsule_SetName(obj, "used_dltensor");
  return DLPackHandle(managed, name);
}

fmkit::KnnMetric parse_metric(const std::string& metric) {
  if (metric == "l2") return fmkit::KnnMetric::l2;
  if (metric == "ip") return fmkit::KnnMetric::ip;
  throw std::invalid_argument("metric: expected 'l2' or 'ip', got '" + metric + "'");
}

// Like borrow, for an optional argument: None gives nullptr.
std::unique_ptr<DLPackHandle> borrow_optional(const py::object& obj, const char* name) {
  if (obj.is_none()) return nullptr;
  if (!PyCapsule_IsValid(obj.ptr(), "dltensor"))
    throw std::invalid_argument(std::string(name) + ": expected an unconsumed DLPack capsule or None");
  auto* managed = static_cast<fmkit::dl::ManagedTensor*>(PyCapsule_GetPointer(obj.ptr(), "dltensor"));
  PyCapsule_SetName(obj.ptr(), "used_dltensor");
  return std::make_unique<DLPackHandle>(managed, name);
}

const fmkit::Tensor* tensor_or_null(const std::unique_ptr<DLPackHandle>& h) { return h ? &h->tensor() : nullptr; }

fmkit::ContrastiveKind parse_contrastive_kind(const std::string& kind) {
  if (kind == "softmax") return fmkit::ContrastiveKind::softmax;
  if (kind == "sigmoid") return fmkit::ContrastiveKind::sigmoid;
  throw std::invalid_argument("kind: expected 'softmax' or 'sigmoid', got '" + kind + "'");
}

fmkit::PgdNorm parse_pgd_norm(const std::string& norm) {
  if (norm == "linf") return fmkit::PgdNorm::linf;
  if (norm == "l2") return fmkit::PgdNorm::l2;
  throw std::invalid_argument("norm: expected 'linf' or 'l2' (compiled kernels), got '" + norm + "'");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fmkit compiled kernels (CPU" 
#ifdef FMKIT_WITH_CUDA
            " + CUDA"
#endif
            ")";
#ifdef FMKIT_WITH_CUDA
  m.attr("cuda_archs") = FMKIT_CUDA_ARCH_LIST;
  m.attr("with_cuda") = true;
#else
  m.attr("cuda_archs") = "";
  m.attr("with_cuda") = false;
#endif
  // The CPU kernels' SIMD level (cpu/dispatch.h). A bad FMKIT_SIMD fails the import here, with
  // a message naming FMKIT_SIMD, the requested and the supported levels.
  const fmkit::SimdInfo& simd = fmkit::simd_select();
  m.attr("simd_detected") = simd.detected;
  m.attr("simd_selected") = simd.selected;
  py::list compiled;
  for (const auto& level : simd.compiled) compiled.append(level);
  m.attr("simd_compiled") = py::tuple(compiled);
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif

  m.def(
      "knn_candidates_cpu",
      [](py::capsule queries, py::capsule database, py::capsule center, const std::string& metric, int64_t kprime,
         int64_t self_offset, py::capsule out_score, py::capsule out_index, int num_threads) {
        auto q = borrow(queries, "queries"), db = borrow(database, "database"), c = borrow(center, "center");
        auto s = borrow(out_score, "out_score"), i = borrow(out_index, "out_index");
        const auto m = parse_metric(metric);
        py::gil_scoped_release release;
        fmkit::cpu_kernels().knn_candidates_cpu(q.tensor(), db.tensor(), c.tensor(), m, kprime, self_offset, s.tensor(), i.tensor(),
                                  num_threads);
      },
      py::arg("queries"), py::arg("database"), py::arg("center"), py::arg("metric"), py::arg("kprime"),
      py::arg("self_offset"), py::arg("out_score"), py::arg("out_index"), py::arg("num_threads"),
      "kprime approximate-score candidates per query (contract in csrc/ops/knn.h), written into out_score/out_index.");

  m.def(
      "knn_center_radius_cpu",
      [](py::capsule database, const std::string& metric, py::capsule out_center, py::capsule out_radius,
         int num_threads) {
        auto db = borrow(database, "database"), c = borrow(out_center, "out_center"), r = borrow(out_radius, "out_radius");
        const auto m = parse_metric(metric);
        py::gil_scoped_release release;
        fmkit::cpu_kernels().knn_center_radius_cpu(db.tensor(), m, c.tensor(), r.tensor(), num_threads);
      },
      py::arg("database"), py::arg("metric"), py::arg("out_center"), py::arg("out_radius"), py::arg("num_threads"),
      "Centre and float64 radius max|y - c| of the database (see csrc/ops/knn.h).");
  m.def(
      "knn_rerank_cpu",
      [](py::capsule queries, py::capsule database, py::capsule candidates, const std::string& metric,
         py::capsule out_dist, py::capsule out_index, int num_threads) {
        auto q = borrow(queries, "queries"), db = borrow(database, "database"), c = borrow(candidates, "candidates");
        auto d = borrow(out_dist, "out_dist"), i = borrow(out_index, "out_index");
        const auto m = parse_metric(metric);
        py::gil_scoped_release release;
        fmkit::cpu_kernels().knn_rerank_cpu(q.tensor(), db.tensor(), c.tensor(), m, d.tensor(), i.tensor(), num_threads);
      },
      py::arg("queries"), py::arg("database"), py::arg("candidates"), py::arg("metric"), py::arg("out_dist"),
      py::arg("out_index"), py::arg("num_threads"), "Float64 re-rank of kNN candidates, sorted by (distance, index).");

  m.def(
      "knn_nearest_cpu",
      [](py::capsule queries, py::capsule database, py::capsule center, const std::string& metric,
         py::capsule out_index, py::capsule out_second, py::capsule out_dist, py::capsule out_qnorm, int num_threads) {
        auto q = borrow(queries, "queries"), db = borrow(database, "database"), c = borrow(center, "center");
        auto i = borrow(out_index, "out_index"), s = borrow(out_second, "out_second");
        auto d = borrow(out_dist, "out_dist"), n = borrow(out_qnorm, "out_qnorm");
        const auto m = parse_metric(metric);
        py::gil_scoped_release release;
        fmkit::cpu_kernels().knn_nearest_cpu(q.tensor(), db.tensor(), c.tensor(), m, i.tensor(), s.tensor(), d.tensor(), n.tensor(),
                               num_threads);
      },
      py::arg("queries"), py::arg("database"), py::arg("center"), py::arg("metric"), py::arg("out_index"),
      py::arg("out_second"), py::arg("out_dist"), py::arg("out_qnorm"), py::arg("num_threads"),
      "k = 1: best row, second-best score, float64 distance and query norm per query (see csrc/ops/knn.h).");

  m.def(
      "kmeans_cluster_sums_cpu",
      [](py::capsule x, py::capsule assign, py::capsule out_sums, py::capsule out_counts, int num_threads) {
        auto xs = borrow(x, "x"), a = borrow(assign, "assign");
        auto s = borrow(out_sums, "out_sums"), c = borrow(out_counts, "out_counts");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().kmeans_cluster_sums_cpu(xs.tensor(), a.tensor(), s.tensor(), c.tensor(), num_threads);
      },
      py::arg("x"), py::arg("assign"), py::arg("out_sums"), py::arg("out_counts"), py::arg("num_threads"),
      "float64 per-cluster sums (row order within each cluster) and counts for the k-means update.");

  m.def(
      "gaussian_kernel_sum_cpu",
      [](py::capsule queries, py::capsule points_t, py::capsule out, int num_threads) {
        auto q = borrow(queries, "queries"), p = borrow(points_t, "points_t"), o = borrow(out, "out");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().gaussian_kernel_sum_cpu(q.tensor(), p.tensor(), o.tensor(), num_threads);
      },
      py::arg("queries"), py::arg("points_t"), py::arg("out"), py::arg("num_threads"),
      "out[m] = sum_i exp(-|queries[m] - points[i]|^2), float64 (see csrc/ops/gaussian_kde.h).");

  m.def(
      "contrastive_forward_cpu",
      [](py::capsule x, py::capsule y, float scale, float bias, const std::string& kind, py::capsule out_row,
         py::object out_col, int num_threads) {
        const auto k = parse_contrastive_kind(kind);
        auto xh = borrow(x, "x"), yh = borrow(y, "y"), r = borrow(out_row, "out_row");
        auto c = borrow_optional(out_col, "out_col");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().contrastive_forward_cpu(xh.tensor(), yh.tensor(), scale, bias, k, r.tensor(), tensor_or_null(c),
                                       num_threads);
      },
      py::arg("x"), py::arg("y"), py::arg("scale"), py::arg("bias"), py::arg("kind"), py::arg("out_row"),
      py::arg("out_col"), py::arg("num_threads"),
      "Row (and column) LSE or row softplus sums of scale * x y^T + bias (contract in csrc/ops/clip_loss.h).");
  m.def(
      "contrastive_backward_cpu",
      [](py::capsule x, py::capsule y, float scale, float bias, const std::string& kind, py::capsule row,
         py::object col, py::capsule w_row, py::object w_col, py::capsule out_dx, py::capsule out_dy,
         py::capsule out_stats, int num_threads) {
        const auto k = parse_contrastive_kind(kind);
        auto xh = borrow(x, "x"), yh = borrow(y, "y"), r = borrow(row, "row"), wr = borrow(w_row, "w_row");
        auto c = borrow_optional(col, "col"), wc = borrow_optional(w_col, "w_col");
        auto dx = borrow(out_dx, "out_dx"), dy = borrow(out_dy, "out_dy"), st = borrow(out_stats, "out_stats");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().contrastive_backward_cpu(xh.tensor(), yh.tensor(), scale, bias, k, r.tensor(), tensor_or_null(c),
                                        wr.tensor(), tensor_or_null(wc), dx.tensor(), dy.tensor(), st.tensor(),
                                        num_threads);
      },
      py::arg("x"), py::arg("y"), py::arg("scale"), py::arg("bias"), py::arg("kind"), py::arg("row"), py::arg("col"),
      py::arg("w_row"), py::arg("w_col"), py::arg("out_dx"), py::arg("out_dy"), py::arg("out_stats"),
      py::arg("num_threads"),
      "out_dx = scale G y, out_dy = scale G^T x, out_stats = (sum G<x,y>, sum G) (contract in csrc/ops/clip_loss.h).");

  m.def(
      "perceiver_attention_forward_cpu",
      [](py::capsule q, py::capsule km, py::capsule vm, py::capsule kl, py::capsule vl, float scale, py::capsule out,
         py::capsule lse, int num_threads) {
        auto qh = borrow(q, "q"), kmh = borrow(km, "km"), vmh = borrow(vm, "vm"), klh = borrow(kl, "kl"),
             vlh = borrow(vl, "vl"), oh = borrow(out, "out"), lh = borrow(lse, "lse");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().perceiver_attention_forward_cpu(qh.tensor(), kmh.tensor(), vmh.tensor(), klh.tensor(), vlh.tensor(),
                                               scale, oh.tensor(), lh.tensor(), num_threads);
      },
      py::arg("q"), py::arg("km"), py::arg("vm"), py::arg("kl"), py::arg("vl"), py::arg("scale"), py::arg("out"),
      py::arg("lse"), py::arg("num_threads"),
      "Two-source (media + latent keys) attention forward into out/lse (contract in csrc/ops/perceiver_attention.h).");
  m.def(
      "perceiver_attention_backward_cpu",
      [](py::capsule q, py::capsule km, py::capsule vm, py::capsule kl, py::capsule vl, py::capsule out,
         py::capsule lse, py::capsule dout, float scale, py::capsule dq, py::capsule dkm, py::capsule dvm,
         py::capsule dkl, py::capsule dvl, int num_threads) {
        auto qh = borrow(q, "q"), kmh = borrow(km, "km"), vmh = borrow(vm, "vm"), klh = borrow(kl, "kl"),
             vlh = borrow(vl, "vl"), oh = borrow(out, "out"), lh = borrow(lse, "lse"), gh = borrow(dout, "dout");
        auto dqh = borrow(dq, "dq"), dkmh = borrow(dkm, "dkm"), dvmh = borrow(dvm, "dvm"), dklh = borrow(dkl, "dkl"),
             dvlh = borrow(dvl, "dvl");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().perceiver_attention_backward_cpu(qh.tensor(), kmh.tensor(), vmh.tensor(), klh.tensor(), vlh.tensor(),
                                                oh.tensor(), lh.tensor(), gh.tensor(), scale, dqh.tensor(),
                                                dkmh.tensor(), dvmh.tensor(), dklh.tensor(), dvlh.tensor(),
                                                num_threads);
      },
      py::arg("q"), py::arg("km"), py::arg("vm"), py::arg("kl"), py::arg("vl"), py::arg("out"), py::arg("lse"),
      py::arg("dout"), py::arg("scale"), py::arg("dq"), py::arg("dkm"), py::arg("dvm"), py::arg("dkl"), py::arg("dvl"),
      py::arg("num_threads"),
      "Gradients of perceiver_attention_forward_cpu as f32 dq/dkm/dvm/dkl/dvl (contract in csrc/ops/perceiver_attention.h).");

  m.def(
      "media_cross_attention_forward_cpu",
      [](py::capsule q, py::capsule k, py::capsule v, py::capsule media_index, int64_t latents_per_media, float scale,
         py::capsule out, py::capsule lse, int num_threads) {
        auto qh = borrow(q, "q"), kh = borrow(k, "k"), vh = borrow(v, "v"), mh = borrow(media_index, "media_index"),
             oh = borrow(out, "out"), lh = borrow(lse, "lse");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().media_cross_attention_forward_cpu(qh.tensor(), kh.tensor(), vh.tensor(), mh.tensor(), latents_per_media,
                                                 scale, oh.tensor(), lh.tensor(), num_threads);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("media_index"), py::arg("latents_per_media"), py::arg("scale"),
      py::arg("out"), py::arg("lse"), py::arg("num_threads"),
      "Block-diagonal (by image index) text-to-media attention forward (contract in csrc/ops/media_cross_attention.h).");
  m.def(
      "media_cross_attention_backward_cpu",
      [](py::capsule q, py::capsule k, py::capsule v, py::capsule media_index, int64_t latents_per_media,
         py::capsule out, py::capsule lse, py::capsule dout, float scale, py::capsule dq, py::capsule dk,
         py::capsule dv, int num_threads) {
        auto qh = borrow(q, "q"), kh = borrow(k, "k"), vh = borrow(v, "v"), mh = borrow(media_index, "media_index"),
             oh = borrow(out, "out"), lh = borrow(lse, "lse"), gh = borrow(dout, "dout");
        auto dqh = borrow(dq, "dq"), dkh = borrow(dk, "dk"), dvh = borrow(dv, "dv");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().media_cross_attention_backward_cpu(qh.tensor(), kh.tensor(), vh.tensor(), mh.tensor(),
                                                  latents_per_media, oh.tensor(), lh.tensor(), gh.tensor(), scale,
                                                  dqh.tensor(), dkh.tensor(), dvh.tensor(), num_threads);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("media_index"), py::arg("latents_per_media"), py::arg("out"),
      py::arg("lse"), py::arg("dout"), py::arg("scale"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
      py::arg("num_threads"),
      "Gradients of media_cross_attention_forward_cpu as f32 dq/dk/dv (contract in csrc/ops/media_cross_attention.h).");

  m.def(
      "pgd_step_cpu",
      [](py::capsule x, py::capsule grad, py::capsule x_orig, py::capsule eps, py::capsule alpha, py::object active,
         const std::string& norm, float lo, float hi, int num_threads) {
        const auto nm = parse_pgd_norm(norm);
        auto xh = borrow(x, "x_adv"), gh = borrow(grad, "grad"), x0h = borrow(x_orig, "x_orig");
        auto eh = borrow(eps, "eps"), ah = borrow(alpha, "step_size");
        auto act = borrow_optional(active, "active");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().pgd_step_cpu(xh.tensor(), gh.tensor(), x0h.tensor(), eh.tensor(), ah.tensor(), tensor_or_null(act), nm,
                            lo, hi, num_threads);
      },
      py::arg("x"), py::arg("grad"), py::arg("x_orig"), py::arg("eps"), py::arg("alpha"), py::arg("active"),
      py::arg("norm"), py::arg("lo"), py::arg("hi"), py::arg("num_threads"),
      "In-place fused PGD step on [B, N] x (linf / l2; contract in csrc/ops/pgd_step.h).");

  m.def(
      "stain_jitter_cpu",
      [](py::capsule images, py::capsule coef, py::capsule out, float scale, float eps, int num_threads) {
        auto ih = borrow(images, "images"), ch = borrow(coef, "coef"), oh = borrow(out, "out");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().stain_jitter_cpu(ih.tensor(), ch.tensor(), oh.tensor(), scale, eps, num_threads);
      },
      py::arg("images"), py::arg("coef"), py::arg("out"), py::arg("scale"), py::arg("eps"), py::arg("num_threads"),
      "Fused HED stain jitter of [B, 3, H, W] uint8/float32 images (contract in csrc/ops/stain_jitter.h).");

  m.def(
      "class_spectrum_cpu",
      [](py::capsule features, py::capsule rows, py::capsule offsets, py::capsule eigenvalues, py::capsule sums,
         py::capsule unit_sums, py::capsule row_norms, bool normalize, int gram, int num_threads) {
        auto fh = borrow(features, "features"), rh = borrow(rows, "rows"), oh = borrow(offsets, "offsets");
        auto eh = borrow(eigenvalues, "eigenvalues"), sh = borrow(sums, "sums"), uh = borrow(unit_sums, "unit_sums");
        auto nh = borrow(row_norms, "row_norms");
        py::gil_scoped_release release;
        fmkit::cpu_kernels().class_spectrum_cpu(fh.tensor(), rh.tensor(), oh.tensor(), eh.tensor(), sh.tensor(),
                                                uh.tensor(), nh.tensor(), normalize, gram, num_threads);
      },
      py::arg("features"), py::arg("rows"), py::arg("offsets"), py::arg("eigenvalues"), py::arg("sums"),
      py::arg("unit_sums"), py::arg("row_norms"), py::arg("normalize"), py::arg("gram"), py::arg("num_threads"),
      "Eigenvalues of every class's (cosine) Gram matrix / n, and class sums (contract in csrc/ops/class_spectrum.h).");
  m.def(
      "class_spectrum_int8_available_cpu", [] { return fmkit::cpu_kernels().class_spectrum_int8_available_cpu(); },
      "Whether the selected SIMD level on this CPU and OS can run class_spectrum's int8 Gram route (AMX-INT8).");

#ifdef FMKIT_WITH_CUDA
  m.def("pgd_step_workspace_floats_cuda", &fmkit::pgd_step_workspace_floats_cuda, py::arg("B"), py::arg("N"));
  m.def(
      "pgd_step_cuda",
      [](py::capsule x, py::capsule grad, py::capsule x_orig, py::capsule eps, py::capsule alpha, py::object active,
         const std::string& norm, float lo, float hi, py::capsule workspace, uintptr_t stream) {
        const auto nm = parse_pgd_norm(norm);
        auto xh = borrow(x, "x_adv"), gh = borrow(grad, "grad"), x0h = borrow(x_orig, "x_orig");
        auto eh = borrow(eps, "eps"), ah = borrow(alpha, "step_size"), wh = borrow(workspace, "workspace");
        auto act = borrow_optional(active, "active");
        py::gil_scoped_release release;
        fmkit::pgd_step_cuda(xh.tensor(), gh.tensor(), x0h.tensor(), eh.tensor(), ah.tensor(), tensor_or_null(act), nm,
                             lo, hi, wh.tensor(), stream);
      },
      py::arg("x"), py::arg("grad"), py::arg("x_orig"), py::arg("eps"), py::arg("alpha"), py::arg("active"),
      py::arg("norm"), py::arg("lo"), py::arg("hi"), py::arg("workspace"), py::arg("stream"),
      "CUDA version of pgd_step_cpu, enqueued on `stream` (an integer cudaStream_t); no host sync.");
#endif

#ifdef FMKIT_WITH_CUDA
  m.def("knn_workspace_bytes_cuda", &fmkit::knn_workspace_bytes_cuda, py::arg("Q"), py::arg("N"), py::arg("d"),
        py::arg("kprime"));
  m.def("knn_max_kprime_cuda", &fmkit::knn_max_kprime_cuda);
  m.def(
      "knn_candidates_cuda",
      [](py::capsule queries, py::capsule database, py::capsule center, const std::string& metric, int64_t kprime,
         int64_t self_offset, py::capsule out_score, py::capsule out_index, py::capsule workspace, uintptr_t stream) {
        auto q = borrow(queries, "queries"), db = borrow(database, "database"), c = borrow(center, "center");
        auto s = borrow(out_score, "out_score"), i = borrow(out_index, "out_index"), w = borrow(workspace, "workspace");
        const auto m = parse_metric(metric);
        py::gil_scoped_release release;
        fmkit::knn_candidates_cuda(q.tensor(), db.tensor(), c.tensor(), m, kprime, self_offset, s.tensor(),
                                   i.tensor(), w.tensor(), stream);
      },
      py::arg("queries"), py::arg("database"), py::arg("center"), py::arg("metric"), py::arg("kprime"),
      py::arg("self_offset"), py::arg("out_score"), py::arg("out_index"), py::arg("workspace"), py::arg("stream"),
      "CUDA version of knn_candidates_cpu, enqueued on `stream` (an integer cudaStream_t).");
#endif
}
