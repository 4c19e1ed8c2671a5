// Argument checks shared by the ops*.cc files: each throws dsv2::Error naming the argument.
#pragma once
#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "dsv2/dense.h"
#include "dsv2/status.h"
#include "dsv2/tensor.h"

namespace dsv2::ops {

inline void require_cpu(const TensorView& t, const char* name) {
  DSV2_CHECK(t.device == Device::kCpu, kDevice,
             name << ": tensor is on cuda, but this op runs on cpu in this build");
}

inline void require_dtype(const TensorView& t, const char* name, std::initializer_list<DType> ok) {
  for (DType d : ok)
    if (t.dtype == d) return;
  std::ostringstream allowed;
  bool first = true;
  for (DType d : ok) {
    allowed << (first ? "" : ", ") << dtype_name(d);
    first = false;
  }
  DSV2_FAIL(kDtype, name << ": dtype " << dtype_name(t.dtype) << " is not accepted (expected "
                         << allowed.str() << ")");
}

inline void require_rank(const TensorView& t, const char* name, int lo, int hi) {
  DSV2_CHECK(t.rank() >= lo && t.rank() <= hi, kShape,
             name << ": rank " << t.rank() << " (shape " << shape_str(t.shape) << ") is not accepted (expected "
                  << (lo == hi ? std::to_string(lo) : std::to_string(lo) + ".." + std::to_string(hi)) << ")");
}

inline const std::initializer_list<DType> kFloatWeights = {DType::kF32, DType::kBF16, DType::kF16};
inline const std::initializer_list<DType> kIndex = {DType::kI32, DType::kI64};

inline void require_finite(double v, const char* name) {
  DSV2_CHECK(std::isfinite(v), kRange, name << " = " << v << " must be a finite number");
}

// Exact shape check; -1 in `want` matches any size. `what` explains the expected shape.
inline void require_shape(const TensorView& t, const char* name, const std::vector<int64_t>& want, const char* what) {
  bool ok = t.shape.size() == want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || want[i] == t.shape[i];
  DSV2_CHECK(ok, kShape, name << ": shape " << shape_str(t.shape) << " does not match " << what);
}

inline bool parallel(Impl impl) { return impl != Impl::kReference; }

inline std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t last) {
  s.back() = last;
  return s;
}


}  // namespace dsv2::ops
