// Run-time CUDA probe with a CPU-only fallback answer.
#include "device.h"

#include <mutex>

namespace dsv2 {

const CudaInfo& cuda_info() {
  static CudaInfo info;
  static std::once_flag once;
  std::call_once(once, [] {
#ifdef DSV2_WITH_CUDA
    info.compiled = true;
#ifdef DSV2_CUDA_ARCHS
    info.archs = DSV2_CUDA_ARCHS;
#endif
    cuda_probe(&info);
#else
    info.compiled = false;
    info.unavailable =
        "this addon was built without CUDA (no CUDA compiler was found at build time, or "
        "DSV2_CUDA=OFF); rebuild with nvcc on PATH: npm run build:native";
#endif
  });
  return info;
}

}  // namespace dsv2
