// dsv2 core tensor: a non-owning view (dtype, device, shape, data). Memory belongs to
// the caller (a JS typed array held alive by the addon, or later a device allocation).
// Tensors are dense and row-major; strides are implied by the shape.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv2 {

enum class DType { kF32, kBF16, kF16, kFP8E4M3, kI32, kI64, kI8 };
enum class Device { kCpu, kCuda };

const char* dtype_name(DType t);
size_t dtype_size(DType t);
bool parse_dtype(const std::string& s, DType* out);

struct TensorView {
  DType dtype = DType::kF32;
  Device device = Device::kCpu;
  std::vector<int64_t> shape;
  void* data = nullptr;
  size_t nbytes = 0;  // bytes behind data; checked against shape × dtype

  int rank() const { return static_cast<int>(shape.size()); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  // Product of all dimensions but the last: the "rows" of a [..., d] tensor.
  int64_t rows() const {
    int64_t n = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
    return n;
  }
};

std::string shape_str(const std::vector<int64_t>& s);

// What an op returns: a dtype and shape for the addon to allocate before the work runs.
struct OutSpec {
  DType dtype;
  std::vector<int64_t> shape;
};

}  // namespace dsv2
