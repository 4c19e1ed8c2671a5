// Device scratch and a stream for one op-level CUDA call (ops_cuda.cc, ops_cuda_dense.cc).
#pragma once
#ifdef DSV2_WITH_CUDA
#include <cstddef>
#include <vector>

#include "cuda/cuda_ops.h"

namespace dsv2::ops {

void require_cuda_usable(const char* what);

// Device scratch and a stream for one call, released on every path.
class Scope {
 public:
  // Every op-level CUDA entry starts here: say why when CUDA cannot run (no driver, no
  // device) instead of surfacing the first failing runtime call.
  Scope() : stream_((require_cuda_usable("this CUDA op"), cuda::stream_create())) {}
  ~Scope() {
    // Never throw from here (it would terminate the process): wait for queued work so the
    // buffers are not freed under a running kernel, ignoring errors — finish() or the failing
    // call has already reported them.
    cuda::stream_wait_quiet(stream_);
    for (void* p : bufs_) cuda::free(p);
    cuda::stream_destroy(stream_);
  }
  void* stream() const { return stream_; }
  template <class T>
  T* alloc(size_t n) {
    bufs_.push_back(cuda::alloc(n * sizeof(T)));
    return static_cast<T*>(bufs_.back());
  }
  template <class T>
  T* upload(const T* host, size_t n) {
    T* d = alloc<T>(n);
    cuda::copy_h2d(d, host, n * sizeof(T), stream_);
    return d;
  }
  void finish() { cuda::stream_sync(stream_); }

 private:
  void* stream_ = nullptr;
  std::vector<void*> bufs_;
};

}  // namespace dsv2::ops
#endif
