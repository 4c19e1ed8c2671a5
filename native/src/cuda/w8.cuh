// 8-bit weight codes (int8, fp8 e4m3; one f32 scale per 128 × 128 block, dense.h GemmParams)
// as the tensor cores and the SIMT kernels read them: two codes → a bf16x2 mma operand, exactly
// (every int8 and every e4m3 value is a bf16 value), and one code · its block scale → the f32
// the CPU op multiplies with (one f32 rounding, as its dequantisation).
#pragma once
#include <cstdint>

#include "common.cuh"
#include "ptx.cuh"
#include "dsv2/dense.h"
#include "../core/fp8.h"

namespace dsv2::cuda::w8 {

// f32 multiply that keeps subnormal inputs whatever the compiler's -ftz setting (PTX mul
// without .ftz): an exact power-of-two rescale of a subnormal stays exact.
__device__ __forceinline__ float mul_keep_subnormal(float a, float b) { return ptx::mul_rn_f32(a, b); }

// Two e4m3 codes (byte 0 → low half, byte 1 → high half of `w2`, the other bytes ignored) →
// bf16x2, exactly (every e4m3 value, subnormals included, is a bf16 value):
//  - the code's 7 magnitude bits placed at f32 bits 20..26 give an f32 of value e4m3 · 2^-120
//    (exponent bias 127 vs 7; an e4m3 subnormal lands on an f32 subnormal with the same
//    mantissa), so · 2^120 is the value, exactly; its top 16 bits are the bf16;
//  - the sign is or-ed in; NaN codes (magnitude 0x7f) become a bf16 NaN, as the CPU's table.
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t w2) {
  const uint32_t spread = __byte_perm(w2, 0u, 0x4140);  // [b0, 0, b1, 0]
  const float lo = mul_keep_subnormal(__uint_as_float((spread << 20) & 0x07f00000u), 0x1p120f);
  const float hi = mul_keep_subnormal(__uint_as_float((spread << 4) & 0x07f00000u), 0x1p120f);
  const uint32_t sign = (spread << 8) & 0x80008000u;
  // 0x7f in a half's low 7 bits carries into its bit 7 after + 1: 0x7fc0 in that half (NaN).
  const uint32_t nan = ((((spread & 0x007f007fu) + 0x00010001u) & 0x00800080u) >> 7) * 0x7fc0u;
  return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632) | sign | nan;
}

// Two int8 codes (bytes 0 and 1 of `w2`) → bf16x2, exactly: an integer of magnitude ≤ 128
// has ≤ 8 significant bits, so the top 16 bits of its f32 are the value.
__device__ __forceinline__ uint32_t i8x2_to_bf16x2(uint32_t w2) {
  const float lo = static_cast<float>(static_cast<int8_t>(w2 & 0xffu));
  const float hi = static_cast<float>(static_cast<int8_t>((w2 >> 8) & 0xffu));
  return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xffff0000u);
}

template <DType kCode>
__device__ __forceinline__ uint32_t codes_to_bf16x2(uint32_t w2) {
  static_assert(kCode == DType::kI8 || kCode == DType::kFP8E4M3, "8-bit codes");
  if constexpr (kCode == DType::kI8) return i8x2_to_bf16x2(w2);
  else return e4m3x2_to_bf16x2(w2);
}

// The value of one code (the integer, or the e4m3 number).
__device__ __forceinline__ float code_value(uint8_t c, DType t) {
  return t == DType::kI8 ? static_cast<float>(static_cast<int8_t>(c)) : e4m3_to_f32_formula(c);
}

// W[r, c] of a [rows, cols] 8-bit matrix with block scales `scale` [⌈rows/128⌉, ⌈cols/128⌉]:
// code · scale in one f32 rounding (the CPU op's dequantised value, subnormals kept).
__device__ __forceinline__ float scaled_weight(const uint8_t* w, DType t, const float* scale, int64_t rows, int64_t cols,
                                               int64_t r, int64_t c) {
  (void)rows;
  const int64_t cb = (cols + kWeightBlock - 1) / kWeightBlock;
  return mul_keep_subnormal(code_value(w[r * cols + c], t), scale[(r / kWeightBlock) * cb + c / kWeightBlock]);
}

__host__ __device__ __forceinline__ bool is_8bit(DType t) { return t == DType::kI8 || t == DType::kFP8E4M3; }

}  // namespace dsv2::cuda::w8
