// dsv2 CUDA emulator: the f16 types and conversions of cuda_fp16.h that the kernels use, written
// from the IEEE binary16 format (1 sign, 5 exponent bits of bias 15, 10 mantissa bits).
#pragma once
#include "cuda_runtime.h"

struct __half {
  unsigned short __x;
};
struct __attribute__((aligned(4))) __half2 {
  __half x, y;
};

namespace dsv2emu {
// Exact: every binary16 value is an f32 value.
inline float f16_bits_to_f32(unsigned short h) {
  const int sign = (h >> 15) & 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v;
  if (e == 0x1f) v = m ? NAN : INFINITY;
  else if (e == 0) v = std::ldexp(static_cast<float>(m), -24);              // subnormal: m · 2^-24
  else v = std::ldexp(static_cast<float>(m | 0x400), e - 25);              // (1024 + m) · 2^(e-15-10)
  return sign ? -v : v;
}
}  // namespace dsv2emu

inline float __half2float(__half h) { return ::dsv2emu::f16_bits_to_f32(h.__x); }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
