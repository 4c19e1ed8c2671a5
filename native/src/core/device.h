// What the CUDA side of this build can do on this machine, probed at run time. The
// CUDA runtime is linked statically, so this works (and says why not) without a driver.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace dsv2 {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;     // compute capability
  size_t total_memory = 0;      // bytes
  size_t free_memory = 0;       // bytes, at probe time
  int multiprocessors = 0;
  bool kernel_ok = false;       // a dsv2 kernel ran on it (a compiled arch matches)
  std::string kernel_error;     // why not, when kernel_ok is false
};

struct CudaInfo {
  bool compiled = false;        // this binary contains CUDA kernels
  bool emulated = false;        // ... built for the emulated device of native/emu (tests only, no GPU)
  std::string archs;            // CMAKE_CUDA_ARCHITECTURES of the build
  int runtime_version = 0;      // e.g. 13000
  int driver_version = 0;       // 0 when no driver is installed
  std::vector<CudaDeviceInfo> devices;
  std::string unavailable;      // empty when CUDA is usable, else the reason
};

// Probes once per process and caches the answer (device enumeration costs ~100 ms).
const CudaInfo& cuda_info();

#ifdef DSV2_WITH_CUDA
void cuda_probe(CudaInfo* info);  // native/src/cuda/device.cu
#endif

}  // namespace dsv2
