// dsv2 core errors: one exception type with a stable code. The addon turns it into a
// rejected promise carrying `code`; nothing in the core ever calls exit() or abort().
#pragma once
#include <stdexcept>
#include <string>
#include <sstream>

namespace dsv2 {

// Stable codes: the TypeScript Dsv2Error exposes exactly these strings. Append only.
enum class Code {
  kShape,        // E_SHAPE: a tensor's rank or sizes disagree with the op
  kDtype,        // E_DTYPE: a dtype the op does not take
  kRange,        // E_RANGE: a value outside its allowed range (ids, eps, NaN where forbidden)
  kArg,          // E_ARG: a missing or wrongly typed argument
  kCheckpoint,   // E_CHECKPOINT: a checkpoint file disagrees with its header or config
  kCuda,         // E_CUDA: a CUDA runtime error (message carries the CUDA error name)
  kOom,          // E_OOM: an allocation failed (message carries the sizes)
  kAborted,      // E_ABORTED: the caller aborted the work
  kDisposed,     // E_DISPOSED: use of a disposed object
  kUnsupported,  // E_UNSUPPORTED: valid request this build or device cannot serve
  kDevice,       // E_DEVICE: tensors on the wrong device for the op
  kInternal,     // E_INTERNAL: a bug in dsv2; please report it
};

const char* code_name(Code c);

class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  Code code() const { return code_; }
 private:
  Code code_;
};

// DSV2_CHECK(cond, code, "message " << value): throws dsv2::Error when cond is false.
#define DSV2_CHECK(cond, code, stream_expr)                         \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::ostringstream dsv2_oss_;                                  \
      dsv2_oss_ << stream_expr;                                      \
      throw ::dsv2::Error(::dsv2::Code::code, dsv2_oss_.str());      \
    }                                                                \
  } while (0)

#define DSV2_FAIL(code, stream_expr) DSV2_CHECK(false, code, stream_expr)

}  // namespace dsv2
