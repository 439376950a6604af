// CUDA backend of the kNN candidate search (contract: csrc/ops/knn.h).
//
// What runs, per chunk of Qc query rows (queries are processed chunk by chunk so the
// workspace stays bounded):
//   init      : count[r] = 0, thresh[r] = UINT64_MAX for the chunk's rows.
//   for each chunk of Nc database rows:
//     score   : 128x128 block tile, 256 threads, 8x8 register micro tile, BK = 8 with a
//               double-buffered shared-memory stage. Operands are converted to fp32 (and
//               the center subtracted, L2) while staging, so any dtype/stride works and the
//               inner loop is plain fp32 FMA (no TF32, no tensor cores). |y - c|^2 is summed
//               by the threads that stage y. The epilogue does NOT write a score matrix:
//               each score becomes a 64-bit key  ordered(score) << 32 | db_index  (unique, so
//               "smallest kprime keys" is exactly the (score, index) order the contract asks
//               for) and only keys <= thresh[row] are appended to the row's candidate
//               buffer buf[row, 0:cap) (block-aggregated atomics: one global atomic per row
//               per block).
//     compact : (only rows whose buffer could overflow on the next chunk, count > cap - Nc)
//               one block per row radix-selects the kprime smallest keys of the buffer,
//               moves them to its front and tightens thresh[row].
//   final     : same select on every row, then a shared-memory bitonic sort of the kprime
//               survivors, decoded into out_score / out_index.
//
// Why this shape: for small kprime almost every score fails the threshold test after the
// first few chunks, so the cost is the GEMM alone (no Q x N score traffic); for large kprime
// the buffer absorbs several chunks between compactions, so the running list is not
// re-streamed per chunk. Correctness never depends on thresh being tight: it only ever
// discards keys larger than kprime keys already kept.
//
// Assumptions: N <= 2^32 - 1 (the index is the low 32 bits of the key, so no real key equals
// UINT64_MAX); kprime <= 4096 (the final sort holds kprime keys in 32 KB of shared memory);
// self-excluded pairs are never emitted, so they cannot be selected.
//
// Workspace (bytes) = Qc * (cap * 8 + 8 + 4), cap = kprime + 2 * Nc, Qc * Nc <= 2^24
// (i.e. <= 256 MiB + 8 * Qc * kprime + small).

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/knn.h"

namespace fmkit {
namespace {

constexpr int kBM = 128;           // query rows per score block
constexpr int kBN = 128;           // database rows per score block
constexpr int kBK = 8;             // d-slice per shared-memory stage
constexpr int kPad = 4;            // keeps float4 alignment, breaks the transposed-store bank conflict
constexpr int kScoreThreads = 256;
constexpr int kSelectThreads = 256;  // == number of radix bins (one bin per thread in the scan)
constexpr int kMaxKprime = 4096;
constexpr int64_t kTileBudget = int64_t(1) << 24;  // Qc * Nc: bounds the buffers to 256 MiB (+ kprime part)
constexpr int64_t kMinNc = 4096;
constexpr int64_t kMaxNc = 65536;  // one block per row selects over ~2 Nc keys: keep that short
constexpr uint64_t kKeyMax = ~uint64_t(0);

// Operands are staged as raw bits and converted only when written to shared memory, so the
// next stage's global loads have no consumer before the FMA loop (no stall on their latency).
template <typename T> struct Raw;
template <> struct Raw<float> {
  using type = float;
  static __device__ __forceinline__ float f32(float v) { return v; }
};
template <> struct Raw<__half> {
  using type = unsigned short;
  static __device__ __forceinline__ float f32(unsigned short v) { return __half2float(__ushort_as_half(v)); }
};
template <> struct Raw<__nv_bfloat16> {
  using type = unsigned short;
  static __device__ __forceinline__ float f32(unsigned short v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
};

// Monotone float -> uint32 map; -0 and every NaN are canonicalised first so that equal
// scores compare equal (and tie-break by index) and NaNs sort after +inf.
__device__ __forceinline__ uint32_t ordered_bits(float s) {
  if (s == 0.0f) s = 0.0f;
  uint32_t u = __float_as_uint(s);
  if (s != s) u = 0x7fc00000u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float decode_score(uint32_t u) {
  return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}

__global__ void knn_init_kernel(uint64_t* __restrict__ thresh, int* __restrict__ count, int rows) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r < rows) {
    thresh[r] = kKeyMax;
    count[r] = 0;
  }
}

// Scores one 128x128 tile of (query chunk) x (database chunk) and appends the keys that pass
// the row's threshold to that row's candidate buffer.
template <typename T, bool kL2>
__global__ void __launch_bounds__(kScoreThreads, 2)
knn_score_kernel(const T* __restrict__ X, int64_t xs0, int64_t xs1,
                 const T* __restrict__ Y, int64_t ys0, int64_t ys1,
                 const float* __restrict__ center, int d,
                 int64_t q0, int qrows, int64_t n0, int ncols, int64_t self_offset,
                 const uint64_t* __restrict__ thresh, int* __restrict__ count,
                 uint64_t* __restrict__ buf, int cap) {
  __shared__ __align__(16) float As[2][kBK][kBM + kPad];
  __shared__ __align__(16) float Bs[2][kBK][kBN + kPad];
  __shared__ float s_ynorm[kBN];
  __shared__ uint64_t s_thresh[kBM];
  __shared__ int s_rowcnt[kBM];
  __shared__ int s_base[kBM];

  const int tid = threadIdx.x;
  const int tx = tid & 15;
  const int ty = tid >> 4;
  const int row0 = blockIdx.y * kBM;  // local row (within the query chunk) of the tile
  const int col0 = blockIdx.x * kBN;  // local column (within the database chunk)

  // Staging assignment: each thread loads 4 consecutive k of one query row and of one
  // database row per stage (two threads per row cover kBK = 8).
  const int lrow = tid >> 1;
  const int lk = (tid & 1) * 4;
  const bool a_ok = row0 + lrow < qrows;
  const bool b_ok = col0 + lrow < ncols;
  using R = typename Raw<T>::type;
  const R* xrow = reinterpret_cast<const R*>(X) + (q0 + row0 + (a_ok ? lrow : 0)) * xs0;
  const R* yrow = reinterpret_cast<const R*>(Y) + (n0 + col0 + (b_ok ? lrow : 0)) * ys0;

  if (tid < kBM) {
    s_thresh[tid] = (row0 + tid < qrows) ? thresh[row0 + tid] : 0;
    s_rowcnt[tid] = 0;
  }

  // Zero raw value and zero center beyond d make the padded k contribute exactly 0. Rows past
  // the tile edge stage -c instead of 0; their results are never emitted.
  R ra[4], rb[4];
  float rc[4];
  float ysq = 0.0f;
  auto load_stage = [&](int k0) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int k = k0 + lk + e;
      const bool in = k < d;
      ra[e] = (in && a_ok) ? xrow[k * xs1] : R(0);
      rb[e] = (in && b_ok) ? yrow[k * ys1] : R(0);
      rc[e] = (kL2 && in) ? center[k] : 0.0f;
    }
  };
  auto store_stage = [&](int s) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float a = Raw<T>::f32(ra[e]) - rc[e];
      const float b = Raw<T>::f32(rb[e]) - rc[e];
      if (kL2) ysq = fmaf(b, b, ysq);
      As[s][lk + e][lrow] = a;
      Bs[s][lk + e][lrow] = b;
    }
  };

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  // d == 0 still runs one all-zero stage, which keeps the loop structure simple.
  const int nstages = d > 0 ? (d + kBK - 1) / kBK : 1;
  load_stage(0);
  store_stage(0);
  __syncthreads();

  int cur = 0;
  for (int s = 0; s < nstages; ++s) {
    // Unconditional (past the last stage every k >= d, so it stages zeros): a branch here
    // lets ptxas sink the loads below the FMAs instead of overlapping them.
    load_stage((s + 1) * kBK);
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[cur][k][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[cur][k][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[cur][k][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[cur][k][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    // One barrier per stage suffices: the buffer written here was last read in stage s-1,
    // and every thread has passed the barrier that ended stage s-1.
    store_stage(cur ^ 1);
    __syncthreads();
    cur ^= 1;
  }

  if (kL2) {
    // The two threads staging database row lrow hold the even/odd halves of |y - c|^2.
    ysq += __shfl_xor_sync(0xffffffffu, ysq, 1);
    if ((tid & 1) == 0) s_ynorm[lrow] = ysq;
  }
  __syncthreads();

  // ---- epilogue: threshold filter, block-aggregated append ----
  int rloc[8], cloc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) rloc[i] = (i < 4) ? ty * 4 + i : 64 + ty * 4 + (i - 4);
#pragma unroll
  for (int j = 0; j < 8; ++j) cloc[j] = (j < 4) ? tx * 4 + j : 64 + tx * 4 + (j - 4);

  auto make_key = [&](int i, int j) -> uint64_t {
    const float s = kL2 ? s_ynorm[cloc[j]] - 2.0f * acc[i][j] : -acc[i][j];
    return (uint64_t(ordered_bits(s)) << 32) | uint64_t(uint32_t(n0 + col0 + cloc[j]));
  };

  uint64_t pass = 0;  // bit i*8+j
  int off[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int r = row0 + rloc[i];
    int cnt = 0;
    if (r < qrows) {
      const int64_t excluded = self_offset >= 0 ? q0 + r + self_offset : -1;
      const uint64_t th = s_thresh[rloc[i]];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = col0 + cloc[j];
        if (c < ncols && n0 + c != excluded && make_key(i, j) <= th) {
          pass |= uint64_t(1) << (i * 8 + j);
          ++cnt;
        }
      }
    }
    off[i] = cnt ? atomicAdd(&s_rowcnt[rloc[i]], cnt) : 0;
  }
  __syncthreads();
  if (tid < kBM) {
    const int n = s_rowcnt[tid];
    s_base[tid] = n ? atomicAdd(&count[row0 + tid], n) : 0;
  }
  __syncthreads();
  if (pass) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if ((pass >> (i * 8)) & 0xffu) {
        uint64_t* dst = buf + int64_t(row0 + rloc[i]) * cap + s_base[rloc[i]] + off[i];
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if ((pass >> (i * 8 + j)) & 1u) *dst++ = make_key(i, j);
      }
    }
  }
}

// One block per query row. Radix-selects (8-bit digits, MSB first) the kprime smallest of the
// row's count[row] unique keys. kFinal: sort them and write the outputs. Otherwise: only rows
// with count > limit (could overflow on the next chunk) are compacted to the front of the
// buffer, and thresh tightens to the largest key that may still matter.
template <bool kFinal>
__global__ void __launch_bounds__(kSelectThreads)
knn_select_kernel(uint64_t* __restrict__ buf, int* __restrict__ count, uint64_t* __restrict__ thresh,
                  int cap, int limit, int kprime,
                  float* __restrict__ out_score, int64_t* __restrict__ out_index) {
  __shared__ uint64_t s_keys[kMaxKprime];
  __shared__ unsigned s_hist[kSelectThreads];
  __shared__ unsigned s_warp[kSelectThreads / 32];
  __shared__ unsigned s_digit, s_before, s_cnt;
  __shared__ int s_n;

  const int row = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  int n = count[row];
  if (!kFinal && n <= limit) return;  // uniform across the block
  n = min(n, cap);
  uint64_t* keys = buf + int64_t(row) * cap;
  const int k = min(kprime, n);

  uint64_t thr = kKeyMax;  // select every key <= thr
  if (n > k) {
    uint64_t prefix = 0, pmask = 0;
    unsigned rank = unsigned(k);  // 1-based rank still to find among keys matching prefix
    for (int shift = 56;; shift -= 8) {
      s_hist[tid] = 0;
      __syncthreads();
      for (int base = 0; base < n; base += kSelectThreads) {
        const int i = base + tid;
        uint64_t key = 0;
        bool v = i < n;
        if (v) key = keys[i];
        v = v && (key & pmask) == prefix;
        const unsigned bin = v ? unsigned(key >> shift) & 0xffu : 0x100u;
        // Most keys share their top bytes: aggregate per warp before the shared atomic.
        const unsigned peers = __match_any_sync(0xffffffffu, bin);
        if (v && (__ffs(peers) - 1) == lane) atomicAdd(&s_hist[bin], unsigned(__popc(peers)));
      }
      __syncthreads();
      const unsigned h = s_hist[tid];
      unsigned incl = h;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
      }
      if (lane == 31) s_warp[warp] = incl;
      __syncthreads();
      for (int w = 0; w < warp; ++w) incl += s_warp[w];
      const unsigned excl = incl - h;
      if (h > 0 && excl < rank && rank <= incl) {  // exactly one bin holds the rank-th key
        s_digit = unsigned(tid);
        s_before = excl;
        s_cnt = h;
      }
      __syncthreads();
      prefix |= uint64_t(s_digit) << shift;
      pmask |= uint64_t(0xff) << shift;
      rank -= s_before;
      // Done once every key in the chosen bin is needed: keys <= prefix|ones are exactly k.
      if (rank == s_cnt || shift == 0) {
        thr = prefix | ((uint64_t(1) << shift) - 1);
        break;  // uniform: every thread read the same shared values
      }
      // The shared scalars / s_warp / s_hist are rewritten only after the next iteration's
      // first barrier, which every thread reaches after reading them here.
    }
  }

  if (tid == 0) s_n = 0;
  __syncthreads();
  for (int i = tid; i < n; i += kSelectThreads) {
    const uint64_t key = keys[i];
    if (key <= thr) {
      const int p = atomicAdd(&s_n, 1);
      if (p < kMaxKprime) s_keys[p] = key;
    }
  }
  __syncthreads();
  const int m = min(s_n, k);  // == k: keys are unique

  if (!kFinal) {
    for (int i = tid; i < m; i += kSelectThreads) keys[i] = s_keys[i];
    if (tid == 0) {
      count[row] = m;
      thresh[row] = thr;
    }
    return;
  }

  int P = 1;
  while (P < m) P <<= 1;
  for (int i = m + tid; i < P; i += kSelectThreads) s_keys[i] = kKeyMax;
  __syncthreads();
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < (P >> 1); i += kSelectThreads) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool asc = (lo & size) == 0;
        const uint64_t a = s_keys[lo], b = s_keys[hi];
        if ((a > b) == asc) {
          s_keys[lo] = b;
          s_keys[hi] = a;
        }
      }
      __syncthreads();
    }
  }
  float* os = out_score + int64_t(row) * kprime;
  int64_t* oi = out_index + int64_t(row) * kprime;
  for (int j = tid; j < kprime; j += kSelectThreads) {
    if (j < m) {
      const uint64_t key = s_keys[j];
      os[j] = decode_score(uint32_t(key >> 32));
      oi[j] = int64_t(uint32_t(key));
    } else {  // unreachable when kprime <= eligible rows (validated); keeps outputs defined
      os[j] = __uint_as_float(0x7f800000u);
      oi[j] = -1;
    }
  }
}

struct Plan {
  int64_t Qc;   // query rows per chunk (rows of the candidate buffer)
  int64_t Nc;   // database rows per score launch
  int64_t cap;  // candidate-buffer slots per row
};

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

Plan make_plan(int64_t Q, int64_t N, int64_t kprime) {
  Q = std::max<int64_t>(Q, 1);
  N = std::max<int64_t>(N, 1);
  kprime = std::max<int64_t>(kprime, 1);
  const int64_t Qp = round_up(Q, kBM);
  Plan p;
  // Few queries -> wider database chunks, so each score launch still fills the GPU.
  p.Nc = std::min(std::max(round_up(kTileBudget / Qp, kBN), kMinNc), kMaxNc);
  p.Nc = std::min(p.Nc, round_up(N, kBN));
  p.Qc = std::max<int64_t>(kTileBudget / p.Nc / kBM * kBM, kBM);
  p.Qc = std::min(p.Qc, Q);
  p.cap = kprime + 2 * p.Nc;  // after a compaction (<= kprime kept) two chunks always fit
  return p;
}

int64_t workspace_bytes(const Plan& p) { return p.Qc * (p.cap * 8 + 8 + 4); }

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("knn_candidates_cuda: ") + what + " launch failed: " +
                             cudaGetErrorString(e));
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int dev) {
    if (cudaGetDevice(&prev_) != cudaSuccess) prev_ = -1;
    if (prev_ != dev) {
      const cudaError_t e = cudaSetDevice(dev);
      if (e != cudaSuccess)
        throw std::runtime_error(std::string("knn_candidates_cuda: cudaSetDevice failed: ") +
                                 cudaGetErrorString(e));
    }
  }
  ~DeviceGuard() {
    int cur = -1;
    if (prev_ >= 0 && cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

template <typename T>
void run_typed(const Tensor& queries, const Tensor& database, const float* center, bool l2,
               int64_t kprime, int64_t self_offset, const Tensor& out_score,
               const Tensor& out_index, const Tensor& workspace, cudaStream_t stream) {
  const int64_t Q = queries.size(0), N = database.size(0), d = queries.size(1);
  const Plan p = make_plan(Q, N, kprime);
  uint8_t* ws = workspace.ptr<uint8_t>();
  uint64_t* buf = reinterpret_cast<uint64_t*>(ws);
  uint64_t* thresh = reinterpret_cast<uint64_t*>(ws + p.Qc * p.cap * 8);
  int* count = reinterpret_cast<int*>(ws + p.Qc * p.cap * 8 + p.Qc * 8);
  const T* X = static_cast<const T*>(queries.data);
  const T* Y = static_cast<const T*>(database.data);
  const int cap = int(p.cap);
  const int limit = int(p.cap - p.Nc);

  for (int64_t q0 = 0; q0 < Q; q0 += p.Qc) {
    const int qrows = int(std::min(p.Qc, Q - q0));
    knn_init_kernel<<<unsigned((qrows + 255) / 256), 256, 0, stream>>>(thresh, count, qrows);
    check_launch("init");
    for (int64_t n0 = 0; n0 < N; n0 += p.Nc) {
      const int ncols = int(std::min(p.Nc, N - n0));
      const dim3 grid(unsigned((ncols + kBN - 1) / kBN), unsigned((qrows + kBM - 1) / kBM));
      if (l2)
        knn_score_kernel<T, true><<<grid, kScoreThreads, 0, stream>>>(
            X, queries.stride(0), queries.stride(1), Y, database.stride(0), database.stride(1),
            center, int(d), q0, qrows, n0, ncols, self_offset, thresh, count, buf, cap);
      else
        knn_score_kernel<T, false><<<grid, kScoreThreads, 0, stream>>>(
            X, queries.stride(0), queries.stride(1), Y, database.stride(0), database.stride(1),
            nullptr, int(d), q0, qrows, n0, ncols, self_offset, thresh, count, buf, cap);
      check_launch("score");
      if (n0 + ncols < N) {
        knn_select_kernel<false><<<unsigned(qrows), kSelectThreads, 0, stream>>>(
            buf, count, thresh, cap, limit, int(kprime), nullptr, nullptr);
        check_launch("compact");
      }
    }
    knn_select_kernel<true><<<unsigned(qrows), kSelectThreads, 0, stream>>>(
        buf, count, thresh, cap, limit, int(kprime), out_score.ptr<float>() + q0 * kprime,
        out_index.ptr<int64_t>() + q0 * kprime);
    check_launch("select");
  }
}

}  // namespace

int64_t knn_max_kprime_cuda() { return kMaxKprime; }

int64_t knn_workspace_bytes_cuda(int64_t Q, int64_t N, int64_t d, int64_t kprime) {
  (void)d;
  return workspace_bytes(make_plan(Q, N, kprime));
}

void knn_candidates_cuda(const Tensor& queries, const Tensor& database, const Tensor& center,
                         KnnMetric metric, int64_t kprime, int64_t self_offset,
                         const Tensor& out_score, const Tensor& out_index, const Tensor& workspace,
                         uintptr_t stream) {
  queries.check_device(DeviceKind::cuda).check_dim(2).check_dtype({DType::f32, DType::f16, DType::bf16});
  database.check_device(DeviceKind::cuda).check_same_device(queries).check_dim(2);
  if (database.dtype != queries.dtype)
    fail(database.name, std::string("dtype ") + dtype_name(database.dtype) +
                            " does not match queries dtype " + dtype_name(queries.dtype));
  const int64_t Q = queries.size(0), d = queries.size(1), N = database.size(0);
  if (database.size(1) != d)
    fail(database.name, "expected " + std::to_string(d) + " columns (as queries), got " +
                            std::to_string(database.size(1)));
  if (d > (int64_t(1) << 30)) fail(queries.name, "dimension too large");
  if (N > int64_t(0xffffffffLL)) fail(database.name, "at most 2^32 - 1 rows are supported");
  const bool l2 = metric == KnnMetric::l2;
  if (!l2 && metric != KnnMetric::ip) fail("metric", "unknown metric");
  if (l2) {
    center.check_device(DeviceKind::cuda).check_same_device(queries).check_dtype({DType::f32});
    center.check_shape({d}).check_contiguous();
  }
  if (kprime < 1 || kprime > kMaxKprime)
    fail("kprime", "must be in [1, " + std::to_string(kMaxKprime) + "], got " + std::to_string(kprime));
  const int64_t eligible = self_offset >= 0 ? N - 1 : N;
  if (kprime > eligible)
    fail("kprime", std::to_string(kprime) + " exceeds the number of eligible database rows (" +
                       std::to_string(eligible) + ")");
  out_score.check_device(DeviceKind::cuda).check_same_device(queries).check_dtype({DType::f32});
  out_score.check_shape({Q, kprime}).check_contiguous();
  out_index.check_device(DeviceKind::cuda).check_same_device(queries).check_dtype({DType::i64});
  out_index.check_shape({Q, kprime}).check_contiguous();
  workspace.check_device(DeviceKind::cuda).check_same_device(queries).check_dtype({DType::u8});
  workspace.check_contiguous();
  const int64_t need = knn_workspace_bytes_cuda(Q, N, d, kprime);
  if (workspace.numel() < need)
    fail(workspace.name, "needs at least " + std::to_string(need) + " bytes, got " +
                             std::to_string(workspace.numel()));
  if (reinterpret_cast<uintptr_t>(workspace.data) % 8 != 0)
    fail(workspace.name, "must be 8-byte aligned");
  if (Q == 0) return;

  DeviceGuard guard(queries.device_id);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const float* c = l2 ? center.ptr<const float>() : nullptr;
  switch (queries.dtype) {
    case DType::f32:
      run_typed<float>(queries, database, c, l2, kprime, self_offset, out_score, out_index, workspace, s);
      break;
    case DType::f16:
      run_typed<__half>(queries, database, c, l2, kprime, self_offset, out_score, out_index, workspace, s);
      break;
    case DType::bf16:
      run_typed<__nv_bfloat16>(queries, database, c, l2, kprime, self_offset, out_score, out_index, workspace, s);
      break;
    default:
      fail(queries.name, "unsupported dtype");
  }
}

}  // namespace fmkit
