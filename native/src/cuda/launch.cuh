// The one kernel launch helper of the CUDA side, and the declaration of dynamic shared memory,
// in the two builds of the same kernel sources:
//   - nvcc (the real device): DSV2_LAUNCH(kernel, grid, block, smem, stream)(args...) is
//     kernel<<<grid, block, smem, stream>>>(args...);
//   - the emulator build (DSV2_CUDA_EMU, native/emu: the .cu files compiled as plain C++, where
//     <<<>>> does not exist): the emulated runtime checks the configuration and runs the grid.
// A template kernel goes in parentheses: DSV2_LAUNCH((tc_kernel<BM, BN>), grid, ...)(args).
// DSV2_DYNAMIC_SMEM(T, name, align) declares `name` as the block's dynamic shared memory
// (extern __shared__ __align__(align) T name[] on the device).
#pragma once
#include <cuda_runtime.h>

#include <utility>

#if defined(DSV2_CUDA_EMU)

#define DSV2_LAUNCH(kernel, grid, block, smem, stream) \
  ::dsv2emu::Launch(kernel, #kernel, grid, block, smem, stream)
#define DSV2_DYNAMIC_SMEM(T, name, align) T* const name = static_cast<T*>(::dsv2emu::dynamic_smem(align))

#else

namespace dsv2::cuda {

template <class... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  Launch(void (*k)(P...), dim3 g, dim3 b, size_t sm, cudaStream_t s) : kernel(k), grid(g), block(b), smem(sm), stream(s) {}
  template <class... A>
  void operator()(A&&... a) const {
    kernel<<<grid, block, smem, stream>>>(std::forward<A>(a)...);
  }
};

}  // namespace dsv2::cuda

#define DSV2_LAUNCH(kernel, grid, block, smem, stream) ::dsv2::cuda::Launch(kernel, grid, block, smem, stream)
#define DSV2_DYNAMIC_SMEM(T, name, align) extern __shared__ __align__(align) T name[]

#endif
