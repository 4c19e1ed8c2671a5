// Names of error codes and dtypes, the strings the TypeScript layer relies on.
#include <sstream>
#include "dsv2/status.h"
#include "dsv2/tensor.h"

namespace dsv2 {

const char* code_name(Code c) {
  switch (c) {
    case Code::kShape: return "E_SHAPE";
    case Code::kDtype: return "E_DTYPE";
    case Code::kRange: return "E_RANGE";
    case Code::kArg: return "E_ARG";
    case Code::kCheckpoint: return "E_CHECKPOINT";
    case Code::kCuda: return "E_CUDA";
    case Code::kOom: return "E_OOM";
    case Code::kAborted: return "E_ABORTED";
    case Code::kDisposed: return "E_DISPOSED";
    case Code::kUnsupported: return "E_UNSUPPORTED";
    case Code::kDevice: return "E_DEVICE";
    case Code::kInternal: return "E_INTERNAL";
  }
  return "E_INTERNAL";
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kFP8E4M3: return "fp8_e4m3";
    case DType::kI32: return "i32";
    case DType::kI64: return "i64";
    case DType::kI8: return "i8";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kBF16: case DType::kF16: return 2;
    case DType::kFP8E4M3: case DType::kI8: return 1;
    case DType::kI64: return 8;
  }
  return 0;
}

bool parse_dtype(const std::string& s, DType* out) {
  static const DType all[] = {DType::kF32, DType::kBF16, DType::kF16,
                              DType::kFP8E4M3, DType::kI32, DType::kI64, DType::kI8};
  for (DType t : all) {
    if (s == dtype_name(t)) { *out = t; return true; }
  }
  return false;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

}  // namespace dsv2
