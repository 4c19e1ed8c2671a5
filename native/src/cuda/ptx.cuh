// Inline-PTX wrappers of the tensor-core kernels (gemm.cu through gemm_mma.cuh,
// mla_prefill_flash.cu, mla_decode_mma.cu, moe_mma.cu, moe.cu): cp.async, ldmatrix, mma.sync
// m16n8k16 bf16 → f32 and the f32 → bf16x2 pack, all sm_80+ PTX (the same code runs on sm_90a).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4; a 32-bit register holds two b16 values, the lower index in
// the lower 16 bits:
//   A (16×16, row-major): a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8, 2t+9],
//                         a3 = A[g+8][2t+8, 2t+9]
//   B (16×8, "col"):      b0 = B[2t, 2t+1][g],      b1 = B[2t+8, 2t+9][g]
//   C (16×8, f32):        c0, c1 = C[g][2t, 2t+1],  c2, c3 = C[g+8][2t, 2t+1]
// ldmatrix gives each lane the same kind of piece of an 8×8 b16 matrix: row g, columns 2t, 2t+1
// (with .trans: column g, rows 2t, 2t+1 of the matrix as stored).
//
// Two implementations of each wrapper: the inline PTX for nvcc, and (DSV2_CUDA_EMU, the
// emulator build) native/emu/ptx.h, written from the PTX ISA text, not from these kernels.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>
#if defined(DSV2_CUDA_EMU)
#include "../../emu/ptx.h"
#endif

namespace dsv2::cuda::ptx {

#if defined(DSV2_CUDA_EMU)

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return ::dsv2emu::cvta_to_shared(p); }
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  ::dsv2emu::ptx::cp_async(dst, src, 16, src_bytes, ::dsv2emu::ptx::CpCache::kCg);
}
__device__ __forceinline__ void cp_async_commit() { ::dsv2emu::ptx::cp_async_commit_group(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  ::dsv2emu::ptx::cp_async_wait_group(N);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t& d0, uint32_t& d1, uint32_t& d2, uint32_t& d3, uint32_t addr) {
  uint32_t d[4];
  ::dsv2emu::ptx::ldmatrix(4, false, d, addr);
  d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& d0, uint32_t& d1, uint32_t& d2, uint32_t& d3,
                                                  uint32_t addr) {
  uint32_t d[4];
  ::dsv2emu::ptx::ldmatrix(4, true, d, addr);
  d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t& d0, uint32_t& d1, uint32_t addr) {
  uint32_t d[2];
  ::dsv2emu::ptx::ldmatrix(2, false, d, addr);
  d0 = d[0], d1 = d[1];
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  ::dsv2emu::ptx::mma_m16n8k16(c, a, b, c, ::dsv2emu::ptx::MmaType::kBF16);
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) { return ::dsv2emu::ptx::cvt_rn_bf16x2_f32(hi, lo); }
__device__ __forceinline__ uint4 ld_nc_na_v4(const void* p) { return ::dsv2emu::ptx::ld_global_nc<uint4>(p); }
__device__ __forceinline__ uint2 ld_nc_na_v2(const void* p) { return ::dsv2emu::ptx::ld_global_nc<uint2>(p); }
__device__ __forceinline__ float mul_rn_f32(float a, float b) { return ::dsv2emu::ptx::mul_rn_f32(a, b); }
__device__ __forceinline__ uint32_t cvt_f16x2_e4m3x2(uint16_t codes) { return ::dsv2emu::ptx::cvt_rn_f16x2_e4m3x2(codes); }

#else

// cvta.to.shared: the 32-bit .shared address of generic pointer p (p must point into shared memory).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async.cg.shared.global (16 bytes, L2 only): dst = 16-byte-aligned shared address, src = 16-byte-
// aligned global pointer, src_bytes (16 or 0) read, the rest zero-filled: 0 writes 16 zeros, reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
// cp.async.commit_group: closes this thread's cp.asyncs issued since the last commit into one group.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// cp.async.wait_group N: waits until at most N of this thread's committed groups are pending (N = 0:
// all landed); other threads' copies are visible only after a following barrier (__syncthreads).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8×8 b16 matrices; lane l gives the 16-byte-aligned
// shared address of row l % 8 of matrix l / 8, and d_i receives this lane's piece of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t& d0, uint32_t& d1, uint32_t& d2, uint32_t& d3, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(d0), "=r"(d1), "=r"(d2), "=r"(d3)
               : "r"(addr));
}
// ldmatrix ….x4.trans: as ldmatrix_x4, each matrix transposed (a row-major [k][n] tile gives B fragments).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& d0, uint32_t& d1, uint32_t& d2, uint32_t& d3,
                                                  uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(d0), "=r"(d1), "=r"(d2), "=r"(d3)
               : "r"(addr));
}
// ldmatrix ….x2: two 8×8 b16 matrices; lanes 0..15 give the row addresses (lane l: row l % 8 of
// matrix l / 8), the addresses of lanes 16..31 are unused.
__device__ __forceinline__ void ldmatrix_x2(uint32_t& d0, uint32_t& d1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(d0), "=r"(d1) : "r"(addr));
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: c += a · b, a = A fragment (4 × bf16x2),
// b0, b1 = B fragment (2 × bf16x2), c = C fragment (4 × f32), layouts above; the whole warp, converged.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// cvt.rn.bf16x2.f32: two f32 → one bf16x2 register, each rounded to nearest even; `lo` goes to the
// lower 16 bits (the lower column / k index of a fragment), `hi` to the upper (PTX: d = {a, b}, a high).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  uint32_t d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}


// ld.global.nc.L1::no_allocate.v4.u32 / .v2.u32: 16 / 8 bytes (16- / 8-byte aligned) of global
// memory that is read once and not written by the kernel (weights): no L1 allocation.
__device__ __forceinline__ uint4 ld_nc_na_v4(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
__device__ __forceinline__ uint2 ld_nc_na_v2(const void* p) {
  uint2 r;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}

// mul.rn.f32 (no .ftz): an f32 product that keeps subnormal inputs and results whatever the
// compiler's -ftz setting.
__device__ __forceinline__ float mul_rn_f32(float a, float b) {
  float d;
  asm("mul.rn.f32 %0, %1, %2;\n" : "=f"(d) : "f"(a), "f"(b));
  return d;
}

// cvt.rn.f16x2.e4m3x2 (sm_89+): two e4m3 codes (low byte → low half) to two f16, exactly.
__device__ __forceinline__ uint32_t cvt_f16x2_e4m3x2(uint16_t codes) {
  uint32_t d;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(d) : "h"(codes));
  return d;
}

#endif  // DSV2_CUDA_EMU

}  // namespace dsv2::cuda::ptx
