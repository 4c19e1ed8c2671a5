// Device memory, copies and streams behind the plain-C++ interface of cuda_ops.h.
#include "common.cuh"
#include "cuda_ops.h"

namespace dsv2::cuda {

void* alloc(size_t bytes) {
  void* p = nullptr;
  if (bytes == 0) return nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    std::ostringstream o;
    o << "cudaMalloc of " << bytes << " bytes failed: " << cudaGetErrorName(err) << " (" << free_b << " of " << total_b
      << " bytes free on the device)";
    throw Error(err == cudaErrorMemoryAllocation ? Code::kOom : Code::kCuda, o.str());
  }
  return p;
}

void free(void* p) noexcept {
  if (p) cudaFree(p);
}

void memset(void* p, int value, size_t bytes, void* stream) {
  if (bytes) DSV2_CUDA_CHECK(cudaMemsetAsync(p, value, bytes, static_cast<cudaStream_t>(stream)));
}

void copy_h2d(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes) DSV2_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)));
}

void copy_d2h(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes) DSV2_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)));
}

void copy_d2d(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes) DSV2_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)));
}

double time_ms(void* stream, int iters, const std::function<void()>& enqueue) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaEvent_t a, b;
  DSV2_CUDA_CHECK(cudaEventCreate(&a));
  DSV2_CUDA_CHECK(cudaEventCreate(&b));
  DSV2_CUDA_CHECK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; ++i) enqueue();
  DSV2_CUDA_CHECK(cudaEventRecord(b, s));
  DSV2_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  DSV2_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / iters;
}

void* stream_create() {
  cudaStream_t s;
  DSV2_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

void stream_destroy(void* s) noexcept {
  if (s) cudaStreamDestroy(static_cast<cudaStream_t>(s));
}

void stream_sync(void* s) { DSV2_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s))); }

void stream_wait_quiet(void* s) noexcept {
  if (s && cudaStreamSynchronize(static_cast<cudaStream_t>(s)) != cudaSuccess) cudaGetLastError();
}

}  // namespace dsv2::cuda
