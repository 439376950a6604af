// fmkit's view of a tensor that crossed the Python boundary as a DLPack capsule.
//
// The extension never links libtorch: every array (torch, numpy, cupy) arrives as a
// DLPack capsule, is wrapped in a `Tensor` for the duration of one call, and is
// released afterwards. Outputs are allocated by the caller (so the framework's
// caching allocator is used) and written in place.
//
// Checks throw std::invalid_argument naming the argument; pybind11 turns that into
// ValueError on the Python side.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace fmkit {

// ---- DLPack ABI (v0.8 "unversioned" capsule layout, which torch/numpy/cupy all export) ----
namespace dl {
enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kBool = 6 };
struct Device { int32_t device_type; int32_t device_id; };
struct DataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct DLTensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; nullptr means compact row-major
  uint64_t byte_offset;
};
struct ManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};
}  // namespace dl

enum class DType { f32, f16, bf16, f64, i64, i32, u8, boolean };
enum class DeviceKind { cpu, cuda };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::f64: return "float64";
    case DType::i64: return "int64";
    case DType::i32: return "int32";
    case DType::u8: return "uint8";
    case DType::boolean: return "bool";
  }
  return "?";
}

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::f64: case DType::i64: return 8;
    case DType::u8: case DType::boolean: return 1;
  }
  return 0;
}

[[noreturn]] inline void fail(const std::string& arg, const std::string& what) {
  throw std::invalid_argument(arg + ": " + what);
}

// "[2, 3]". Messages are built with std::string alone: std::ostringstream crashed (segfault) in
// every error path that used it on the H200 machine's build (2026-12-04), while plain string
// messages worked in the same process.
inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct Tensor {
  std::string name;  // the argument name used in error messages
  void* data = nullptr;
  DType dtype = DType::f32;
  DeviceKind device = DeviceKind::cpu;
  int device_id = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements, always filled

  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int i) const { return shape.at(i < 0 ? i + shape.size() : i); }
  int64_t stride(int i) const { return strides.at(i < 0 ? i + strides.size() : i); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  bool is_contiguous() const {
    if (numel() == 0) return true;  // torch reports arbitrary strides for empty tensors
    int64_t expected = 1;
    for (int64_t i = dim() - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expected) return false;
      expected *= shape[i];
    }
    return true;
  }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }

  // ---- checks, each naming the argument ----
  const Tensor& check_dim(int64_t n) const {
    if (dim() != n) fail(name, "expected a " + std::to_string(n) + "-D tensor, got " + std::to_string(dim()) + "-D");
    return *this;
  }
  const Tensor& check_dtype(std::initializer_list<DType> allowed) const {
    for (DType t : allowed)
      if (t == dtype) return *this;
    std::string m = "unsupported dtype " + std::string(dtype_name(dtype)) + ", expected one of:";
    for (DType t : allowed) m += std::string(" ") + dtype_name(t);
    fail(name, m);
  }
  const Tensor& check_shape(std::initializer_list<int64_t> expected) const {
    std::vector<int64_t> e(expected);
    if (e != shape) fail(name, "expected shape " + shape_text(e) + ", got " + shape_text(shape));
    return *this;
  }
  const Tensor& check_contiguous() const {
    if (!is_contiguous()) fail(name, "expected a contiguous tensor");
    return *this;
  }
  // What a CPU kernel writes into: a CPU tensor of this dtype and shape, contiguous.
  const Tensor& check_cpu_output(DType t, std::initializer_list<int64_t> expected) const {
    return check_device(DeviceKind::cpu).check_dtype({t}).check_shape(expected).check_contiguous();
  }
  const Tensor& check_same_device(const Tensor& other) const {
    if (device != other.device || device_id != other.device_id)
      fail(name, "must be on the same device as " + other.name);
    return *this;
  }
  const Tensor& check_device(DeviceKind kind) const {
    if (device != kind) fail(name, kind == DeviceKind::cpu ? "expected a CPU tensor" : "expected a CUDA tensor");
    return *this;
  }
};

// Wraps a DLManagedTensor for the duration of one call and releases it afterwards.
class DLPackHandle {
 public:
  DLPackHandle(dl::ManagedTensor* managed, std::string name) : managed_(managed) {
    if (managed_ == nullptr) fail(name, "null DLPack tensor");
    const dl::DLTensor& t = managed_->dl_tensor;
    tensor_.name = std::move(name);
    tensor_.data = static_cast<char*>(t.data) + t.byte_offset;
    switch (t.device.device_type) {
      case dl::kCPU: case dl::kCUDAHost: tensor_.device = DeviceKind::cpu; break;
      case dl::kCUDA: case dl::kCUDAManaged: tensor_.device = DeviceKind::cuda; break;
      default: fail(tensor_.name, "unsupported device type " + std::to_string(t.device.device_type));
    }
    tensor_.device_id = t.device.device_id;
    if (t.dtype.lanes != 1) fail(tensor_.name, "vector dtypes are not supported");
    tensor_.dtype = decode_dtype(t.dtype, tensor_.name);
    tensor_.shape.assign(t.shape, t.shape + t.ndim);
    tensor_.strides.resize(t.ndim);
    if (t.strides != nullptr) {
      tensor_.strides.assign(t.strides, t.strides + t.ndim);
    } else {
      int64_t s = 1;
      for (int i = t.ndim - 1; i >= 0; --i) { tensor_.strides[i] = s; s *= t.shape[i]; }
    }
  }
  ~DLPackHandle() {
    if (managed_ && managed_->deleter) managed_->deleter(managed_);
  }
  DLPackHandle(const DLPackHandle&) = delete;
  DLPackHandle& operator=(const DLPackHandle&) = delete;
  const Tensor& tensor() const { return tensor_; }

 private:
  static DType decode_dtype(dl::DataType t, const std::string& name) {
    if (t.code == dl::kFloat && t.bits == 32) return DType::f32;
    if (t.code == dl::kFloat && t.bits == 16) return DType::f16;
    if (t.code == dl::kBfloat && t.bits == 16) return DType::bf16;
    if (t.code == dl::kFloat && t.bits == 64) return DType::f64;
    if (t.code == dl::kInt && t.bits == 64) return DType::i64;
    if (t.code == dl::kInt && t.bits == 32) return DType::i32;
    if (t.code == dl::kUInt && t.bits == 8) return DType::u8;
    if (t.code == dl::kBool) return DType::boolean;
    fail(name, "unsupported DLPack dtype (code " + std::to_string(t.code) + ", bits " + std::to_string(t.bits) + ")");
  }
  dl::ManagedTensor* managed_;
  Tensor tensor_;
};

// Half-precision loads without depending on a compiler's _Float16 / __bf16 support.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) { mant <<= 1; --exp; }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace fmkit
