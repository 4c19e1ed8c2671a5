// Shared CUDA helpers: the one error path of the CUDA side. Errors become dsv2::Error
// with code E_CUDA (a rejected promise in JS), never exit() or abort().
#pragma once
#include <cuda_runtime.h>
#include <sstream>
#include "dsv2/status.h"
#include "dsv2/tensor.h"
#include "../core/dtype.h"
#include "launch.cuh"

namespace dsv2 {

[[noreturn]] inline void cuda_fail(cudaError_t err, const char* expr, const char* file, int line) {
  std::ostringstream o;
  o << "CUDA error " << cudaGetErrorName(err) << " (" << cudaGetErrorString(err) << ") in "
    << expr << " at " << file << ":" << line;
  throw Error(err == cudaErrorMemoryAllocation ? Code::kOom : Code::kCuda, o.str());
}

#define DSV2_CUDA_CHECK(expr)                                                   \
  do {                                                                          \
    cudaError_t dsv2_err_ = (expr);                                             \
    if (dsv2_err_ != cudaSuccess) ::dsv2::cuda_fail(dsv2_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After every launch: catches bad launch configurations and missing kernel images.
#define DSV2_CUDA_LAUNCH_CHECK() DSV2_CUDA_CHECK(cudaGetLastError())

// Element i of a weight tensor stored as f32, bf16 or f16, as f32 (the kernels' one loader).
__device__ __forceinline__ float load_weight(const void* w, DType t, int64_t i) {
  if (t == DType::kF32) return static_cast<const float*>(w)[i];
  const uint16_t h = static_cast<const uint16_t*>(w)[i];
  return t == DType::kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace dsv2
