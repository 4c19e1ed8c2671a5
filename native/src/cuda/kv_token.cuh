// Device-side access to one cached token (layout in dsv2/mla.h), shared by the cache and
// attention kernels. Byte-wise loads: fp8 scales and bf16 k_pe need not be aligned.
#pragma once
#include <cstdint>

#include "dsv2/mla.h"
#include "../core/dtype.h"
#include "../core/fp8.h"

namespace dsv2::cuda {

__device__ __forceinline__ void store_u16(uint8_t* p, uint16_t v) { memcpy(p, &v, 2); }
__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) { uint16_t v; memcpy(&v, p, 2); return v; }
__device__ __forceinline__ void store_f32(uint8_t* p, float v) { memcpy(p, &v, 4); }
__device__ __forceinline__ float load_f32(const uint8_t* p) { float v; memcpy(&v, p, 4); return v; }

// Element e of a cached token as f32 (c_kv dims first, then k_pe), dequantized.
__device__ __forceinline__ float decode_element(const KvLayout& L, const uint8_t* tok, int64_t e) {
  if (L.dtype == DType::kF32) return load_f32(tok + 4 * e);
  if (L.dtype == DType::kBF16) return bf16_to_f32(load_u16(tok + 2 * e));
  if (e < L.d_c) return e4m3_to_f32_formula(tok[e]) * load_f32(tok + L.d_c + 4 * (e / kFp8Tile));
  return bf16_to_f32(load_u16(tok + L.d_c + 4 * L.n_tiles() + 2 * (e - L.d_c)));
}

}  // namespace dsv2::cuda
