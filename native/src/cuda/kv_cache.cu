// Paged latent KV cache on the GPU: append (fused FP8 quantization), read back, poison.
// Token layout as in dsv2/mla.h; codes and scales are bit-identical to the CPU op: the
// same conversion functions (core/fp8.h, core/dtype.h), IEEE division x / scale, and the tile
// amax as a max over finite |x| (order-independent, so the reduction order cannot matter).
#include "common.cuh"
#include "cuda_ops.h"
#include "../core/dtype.h"
#include "../core/fp8.h"
#include "kv_token.cuh"

namespace dsv2::cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps per token

__device__ __forceinline__ int64_t load_slot(const void* slots, DType t, int64_t i) {
  return t == DType::kI64 ? static_cast<const int64_t*>(slots)[i] : static_cast<const int32_t*>(slots)[i];
}


// One block per token.
__global__ void kv_append_kernel(KvAppendParams p) {
  const KvLayout L = p.cache.layout;
  const int64_t i = blockIdx.x;
  const int64_t slot = load_slot(p.slots, p.slots_dtype, i);
  uint8_t* dst = p.cache.data + slot * L.bytes_per_token();
  const float* c = p.c_kv + i * L.d_c;
  const float* pe = p.k_pe + i * L.d_r;
  if (L.dtype == DType::kF32) {
    for (int64_t e = threadIdx.x; e < L.d_c; e += blockDim.x) store_f32(dst + 4 * e, c[e]);
    for (int64_t e = threadIdx.x; e < L.d_r; e += blockDim.x) store_f32(dst + 4 * (L.d_c + e), pe[e]);
    return;
  }
  if (L.dtype == DType::kBF16) {
    for (int64_t e = threadIdx.x; e < L.d_c; e += blockDim.x) store_u16(dst + 2 * e, f32_to_bf16(c[e]));
    for (int64_t e = threadIdx.x; e < L.d_r; e += blockDim.x) store_u16(dst + 2 * (L.d_c + e), f32_to_bf16(pe[e]));
    return;
  }
  // fp8: a warp per 128-element tile.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  for (int64_t t = warp; t < L.n_tiles(); t += n_warps) {
    const int64_t b = t * kFp8Tile, e = min(L.d_c, b + kFp8Tile);
    float amax = 0.0f;
    for (int64_t k = b + lane; k < e; k += 32) {
      const float a = fabsf(c[k]);
      if (isfinite(a) && a > amax) amax = a;
    }
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    const float s = fp8_scale(amax, L.pow2_scales);
    for (int64_t k = b + lane; k < e; k += 32) dst[k] = f32_to_e4m3(c[k] / s);
    if (lane == 0) store_f32(dst + L.d_c + 4 * t, s);
  }
  uint8_t* pe_dst = dst + L.d_c + 4 * L.n_tiles();
  for (int64_t e = threadIdx.x; e < L.d_r; e += blockDim.x) store_u16(pe_dst + 2 * e, f32_to_bf16(pe[e]));
}

}  // namespace

namespace {

__global__ void kv_read_kernel(KvReadParams p) {
  const KvLayout L = p.cache.layout;
  const int64_t i = blockIdx.x;
  const uint8_t* tok = p.cache.data + load_slot(p.slots, p.slots_dtype, i) * L.bytes_per_token();
  for (int64_t e = threadIdx.x; e < L.d_c + L.d_r; e += blockDim.x) {
    const float v = decode_element(L, tok, e);
    if (e < L.d_c) p.c_kv[i * L.d_c + e] = v;
    else p.k_pe[i * L.d_r + e - L.d_c] = v;
  }
}

// NaN encodings in every byte group of every token (see kv_poison in the CPU ops).
__global__ void kv_poison_kernel(KvCacheView c) {
  const KvLayout L = c.layout;
  const int64_t bpt = L.bytes_per_token();
  for (int64_t tokn = blockIdx.x; tokn < c.pages * L.page_size; tokn += gridDim.x) {
    uint8_t* tok = c.data + tokn * bpt;
    if (L.dtype == DType::kF32) {
      for (int64_t e = threadIdx.x; e < L.d_c + L.d_r; e += blockDim.x) store_f32(tok + 4 * e, __int_as_float(0x7fc00000));
    } else if (L.dtype == DType::kBF16) {
      for (int64_t e = threadIdx.x; e < L.d_c + L.d_r; e += blockDim.x) store_u16(tok + 2 * e, 0x7fc0);
    } else {
      for (int64_t e = threadIdx.x; e < L.d_c; e += blockDim.x) tok[e] = 0x7f;
      for (int64_t t = threadIdx.x; t < L.n_tiles(); t += blockDim.x) store_f32(tok + L.d_c + 4 * t, __int_as_float(0x7fc00000));
      for (int64_t e = threadIdx.x; e < L.d_r; e += blockDim.x) store_u16(tok + L.d_c + 4 * L.n_tiles() + 2 * e, 0x7fc0);
    }
  }
}

}  // namespace

void kv_append(const KvAppendParams& p, void* stream) {
  if (p.n_tokens == 0) return;
  DSV2_LAUNCH(kv_append_kernel, static_cast<unsigned>(p.n_tokens), kThreads, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void kv_read(const KvReadParams& p, void* stream) {
  if (p.n_tokens == 0) return;
  DSV2_LAUNCH(kv_read_kernel, static_cast<unsigned>(p.n_tokens), kThreads, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void kv_poison(const KvCacheView& c, void* stream) {
  const int64_t tokens = c.pages * c.layout.page_size;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(tokens, 65535));
  DSV2_LAUNCH(kv_poison_kernel, grid, kThreads, 0, static_cast<cudaStream_t>(stream))(c);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
