// GEMM-specific tensor-core helpers of the bf16 GEMM (gemm.cu); the PTX wrappers (cp.async,
// ldmatrix, mma.sync m16n8k16, pack_bf16) and the mma fragment layouts are in ptx.cuh.
//
// With B[k][n] = W[n][k] (nn.Linear layout), b0/b1 are two consecutive bf16 of W's row n: an
// 8×8 block of W rows read by ldmatrix (non-transposed) is exactly a B fragment half.
#pragma once
#include <cfloat>
#include <cstdint>

#include "ptx.cuh"

namespace dsv2::cuda::mma {

// gemm.cu calls the shared wrappers as mma::X.
using ptx::cp_async16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ldmatrix_x4;
using ptx::mma_bf16;
using ptx::pack_bf16;
using ptx::smem_addr;

// x ≈ hi + lo with hi = x rounded toward zero to bf16 (its top 8 significant bits) and
// lo = bf16(x − hi), round to nearest even: x − hi is exact in f32, below 2^-7·|x| and of x's
// sign, and rounding it to bf16's 8 bits costs at most 2^-8 of it: |x − hi − lo| ≤ 2^-16·|x|
// (one bf16 rounding alone: 2^-8). Each product hi·w, lo·w of bf16 values is exact in f32.
// hi, lo and x share their sign (hi toward zero, not to nearest, for this): against an
// infinite weight hi·w and lo·w are infinities of one sign, never inf − inf = NaN. Where hi is
// ±inf or NaN (x is), hi alone carries it (x − hi would be NaN for x = ±inf). A residual below
// 2^-126 in size (0 included) becomes ±2^-126 with x's sign: lo·w must never be 0·inf = NaN
// where hi·w is a valid ±inf; this moves x by at most 2^-126 (absolute, ≈ 1.2e-38).
__device__ __forceinline__ uint32_t bf16_toward_zero(float x) {
  return isnan(x) ? 0x7fc0u : __float_as_uint(x) >> 16;  // NaN stays NaN (no truncation to inf)
}
__device__ __forceinline__ float split_residual(float x, float h) {
  const float r = fabsf(h) <= FLT_MAX ? x - h : 0.0f;
  return fabsf(r) < FLT_MIN ? copysignf(FLT_MIN, x) : r;
}
__device__ __forceinline__ void split_bf16(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  hi = bf16_toward_zero(x0) | (bf16_toward_zero(x1) << 16);
  const float h0 = __uint_as_float(hi << 16), h1 = __uint_as_float(hi & 0xffff0000u);
  lo = pack_bf16(split_residual(x0, h0), split_residual(x1, h1));
}

}  // namespace dsv2::cuda::mma
