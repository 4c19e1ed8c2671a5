// dsv2 CUDA emulator: the bf16 types and conversions of cuda_bf16.h that the kernels use,
// written from the bf16 format (the top 16 bits of an IEEE f32), round to nearest even.
#pragma once
#include "cuda_runtime.h"

struct __nv_bfloat16 {
  unsigned short __x;
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

namespace dsv2emu {
// f32 → bf16, round to nearest even; NaN → the canonical quiet NaN 0x7fff (as cvt.rn.bf16.f32).
inline unsigned short f32_to_bf16_rn(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  const unsigned lsb = (u >> 16) & 1u;
  return static_cast<unsigned short>((u + 0x7fffu + lsb) >> 16);
}
inline float bf16_bits_to_f32(unsigned short h) {
  const unsigned u = static_cast<unsigned>(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
}  // namespace dsv2emu

inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {::dsv2emu::f32_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return ::dsv2emu::bf16_bits_to_f32(h.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
