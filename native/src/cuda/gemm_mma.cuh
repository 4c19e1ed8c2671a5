// Tensor-core building blocks of the bf16 GEMM (gemm.cu): cp.async, ldmatrix and
// mma.sync m16n8k16 (bf16 × bf16 → f32), all sm_80+ PTX (the same code runs on sm_90a).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   A (16×16, row-major): a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8, 2t+9],
//                         a3 = A[g+8][2t+8, 2t+9]   (the lower k in the lower 16 bits)
//   B (16×8, "col"):      b0 = B[2t, 2t+1][g],      b1 = B[2t+8, 2t+9][g]
//   C (16×8, f32):        c0, c1 = C[g][2t, 2t+1],  c2, c3 = C[g+8][2t, 2t+1]
// With B[k][n] = W[n][k] (nn.Linear layout), b0/b1 are two consecutive bf16 of W's row n: an
// 8×8 block of W rows read by ldmatrix (non-transposed) is exactly a B fragment half.
#pragma once
#include <cfloat>
#include <cstdint>

namespace dsv2::cuda::mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global → shared copy; src_bytes = 0 zero-fills the destination and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8×8 b16 matrices; lane l gives the address of row (l % 8) of matrix (l / 8).
__device__ __forceinline__ void ldmatrix_x4(uint32_t& d0, uint32_t& d1, uint32_t& d2, uint32_t& d3, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(d0), "=r"(d1), "=r"(d2), "=r"(d3)
               : "r"(addr));
}

// c += a · b (m16n8k16, bf16 inputs, f32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 → bf16x2 (round to nearest even); `lo` goes to the lower 16 bits.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  uint32_t d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

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
