// CUDA device probe: runtime/driver versions, each device's properties, and a one-kernel
// smoke test that proves a compiled architecture matches the device.
#include <string>
#include "common.cuh"
#include "../core/device.h"

namespace dsv2 {
namespace {

__global__ void iota_kernel(int* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i * 3 + 1;
}

// Runs iota_kernel on the current device and checks the result. Returns "" on success.
std::string smoke_test() {
  constexpr int n = 1000;
  int* d = nullptr;
  cudaError_t err = cudaMalloc(&d, n * sizeof(int));
  if (err != cudaSuccess) return std::string("cudaMalloc: ") + cudaGetErrorName(err);
  DSV2_LAUNCH(iota_kernel, ceil_div(n, 256), 256, 0, nullptr)(d, n);
  err = cudaGetLastError();
  int host[n];
  if (err == cudaSuccess) err = cudaMemcpy(host, d, sizeof(host), cudaMemcpyDeviceToHost);
  cudaFree(d);
  if (err != cudaSuccess) return std::string("kernel launch: ") + cudaGetErrorName(err);
  for (int i = 0; i < n; ++i)
    if (host[i] != i * 3 + 1) return "kernel produced wrong values";
  return "";
}

}  // namespace

void cuda_probe(CudaInfo* info) {
#if defined(DSV2_CUDA_EMU)
  info->emulated = true;  // the DSV2_CUDA_EMULATOR build: every "device" below is native/emu
#endif
  cudaRuntimeGetVersion(&info->runtime_version);
  if (cudaDriverGetVersion(&info->driver_version) != cudaSuccess) info->driver_version = 0;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info->unavailable = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(err) +
                        " (" + cudaGetErrorString(err) + ")";
    if (info->driver_version == 0) info->unavailable += "; no NVIDIA driver is installed";
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return;
  }
  if (count == 0) {
    info->unavailable = "no CUDA device is visible (CUDA_VISIBLE_DEVICES?)";
    return;
  }
  bool any_ok = false;
  for (int i = 0; i < count; ++i) {
    CudaDeviceInfo d;
    d.index = i;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    d.name = prop.name;
    d.major = prop.major;
    d.minor = prop.minor;
    d.total_memory = prop.totalGlobalMem;
    d.multiprocessors = prop.multiProcessorCount;
    if (cudaSetDevice(i) == cudaSuccess) {
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) d.free_memory = free_b;
      d.kernel_error = smoke_test();
      d.kernel_ok = d.kernel_error.empty();
      any_ok = any_ok || d.kernel_ok;
    }
    info->devices.push_back(d);
  }
  cudaSetDevice(0);
  if (!any_ok)
    info->unavailable = "no device could run a dsv2 kernel (compiled for " + info->archs + ")";
}

}  // namespace dsv2
