// FP8 E4M3FN (OCP): 1 sign, 4 exponent (bias 7), 3 mantissa bits; max 448 (0x7E); NaN 0x7F
// (and 0xFF); no infinities. Encoding is round-to-nearest-even and SATURATING, like CUDA's
// __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3): finite |x| >= 448 and ±inf give ±448,
// NaN gives 0x7F. The sign bit is kept for zeros and for tiny values that round to zero.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "dtype.h"

namespace dsv2 {

constexpr float kFp8Max = 448.0f;

DSV2_HD inline uint8_t f32_to_e4m3(float x) {
  uint32_t bits = f32_bits(x);
  uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  uint32_t a = bits & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7f;                  // NaN
  if (a >= 0x43e00000u) return sign | 0x7e;           // >= 448 (and inf): saturate
  if (a < 0x3c800000u) {                              // below 2^-6: subnormal grid of 2^-9
    // |x| / 2^-9, rounded to nearest even: exact in f32 arithmetic (scaling by a power of two
    // is exact and nearbyint rounds ties to even in the default mode).
    float q = nearbyintf(bits_f32(a) * 512.0f);
    return sign | static_cast<uint8_t>(q);            // q <= 8: 8 is the smallest normal, 0x08
  }
  // normal: keep 3 mantissa bits of the f32's 23, rounding the other 20 to nearest even
  uint32_t e = (a >> 23) - 127 + 7;                   // 1..15
  uint32_t m = a & 0x7fffffu;
  uint32_t r = (e << 3) | (m >> 20);
  uint32_t rem = m & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (r & 1u))) ++r;  // may carry into the exponent
  if (r > 0x7eu) r = 0x7eu;                           // 464 <= |x| < 480 can round to 0x7f: saturate
  return sign | static_cast<uint8_t>(r);
}

// Decoding by formula (the definition; the host builds its table from it, the device uses it).
DSV2_HD inline float e4m3_to_f32_formula(uint8_t c) {
  const uint32_t sign = static_cast<uint32_t>(c & 0x80u) << 24;
  const uint32_t e = (c >> 3) & 0xfu, m = c & 0x7u;
  if (e == 0xf && m == 0x7) return bits_f32(sign | 0x7fc00000u);   // NaN
  if (e == 0) {                                                   // subnormal: m · 2^-9, exact
    const float v = static_cast<float>(m) * 0.001953125f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((e - 7 + 127) << 23) | (m << 20));     // (1 + m/8) · 2^(e-7)
}

// Decoding through a 256-entry table: the hot path of fp8 cache reads.
struct E4m3Table {
  float v[256];
  E4m3Table() {
    for (int c = 0; c < 256; ++c) v[c] = e4m3_to_f32_formula(static_cast<uint8_t>(c));
  }
};
inline const float* e4m3_table() {
  static const E4m3Table t;
  return t.v;
}
#ifndef __CUDA_ARCH__
inline float e4m3_to_f32(uint8_t c) { return e4m3_table()[c]; }
#endif

// Group scale: amax / 448 over the finite |values| (rounded up to a power of two when
// pow2), or 1 when the group has no finite non-zero value.
DSV2_HD inline float fp8_scale(float amax, bool pow2) {
  if (!(amax > 0.0f) || !std::isfinite(amax)) return 1.0f;
  float s = amax / kFp8Max;
  if (pow2) {
    // 2^ceil(log2 s), by bits: a normal s keeps its exponent when its mantissa is zero and
    // steps it up otherwise; a subnormal s (amax below ~5e-36) rounds up to the power of two
    // above its highest mantissa bit.
    const uint32_t b = f32_bits(s);
    const uint32_t man = b & 0x007fffffu;
    if ((b & 0x7f800000u) != 0) {
      s = man == 0 ? s : bits_f32((b & 0x7f800000u) + 0x00800000u);
    } else {
      uint32_t top = 0x00400000u;
      while (!(man & top)) top >>= 1;              // man != 0: s > 0
      s = bits_f32(man == top ? top : top << 1);   // top << 1 may be 0x00800000 = 2^-126
    }
  }
  return s;
}

}  // namespace dsv2
