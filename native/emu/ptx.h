// dsv2 CUDA emulator: the PTX instructions that native/src/cuda/ptx.cuh wraps, each written from
// the PTX ISA manual's text (sections named at each), not from the kernels. Warp-wide ones
// (ldmatrix, mma.sync) are rendezvous of the 32 lanes; cp.async copies are queued per thread and
// land at cp.async.wait_group. Unit tests: native/emu/test/emu_test.cc.
#pragma once
#include <cstdint>
#include <cstring>

#include <cuda_runtime.h>

namespace dsv2emu::ptx {

// cp.async (ISA "Data Movement: cp.async"): cp_size 4, 8 or 16 bytes (.cg: 16 only); src_size
// (≤ cp_size) bytes are read from global `src`, the rest of the cp_size bytes written as zeros;
// dst (a .shared address) and src aligned to cp_size. Asynchronous: completes at wait_group.
enum class CpCache { kCa, kCg };
void cp_async(uint32_t dst, const void* src, int cp_size, int src_size, CpCache cache);
// cp.async.commit_group: the thread's uncommitted cp.asyncs become one group (possibly empty).
void cp_async_commit_group();
// cp.async.wait_group n: waits until at most n of the thread's most recent groups are pending.
// cp.async.wait_all = commit_group + wait_group 0.
void cp_async_wait_group(int n);
void cp_async_wait_all();

// ldmatrix.sync.aligned.m8n8{.x1,.x2,.x4}{.trans}.shared.b16 (ISA "Warp-level matrix load
// instruction: ldmatrix"): num 8×8 matrices of b16; threads 8i..8i+7 give the row addresses of
// matrix i (16-byte aligned); d[i] of lane l = row l/4, elements 2(l%4), 2(l%4)+1 of matrix i
// (.trans: column l/4, rows 2(l%4), 2(l%4)+1), the lower element in the lower half.
void ldmatrix(int num, bool trans, uint32_t* d, uint32_t addr);

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 (ISA "Matrix Fragments for
// mma.m16n8k16 with floating point type"): d = a · b + c over the warp; a 4 × b16x2, b 2 ×
// b16x2, c and d 4 × f32 per lane. d and c may alias.
enum class MmaType { kBF16, kF16 };
void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, MmaType t);

// cvt.rn.bf16x2.f32 d, a, b (ISA "cvt"): d = {bf16(a) in the upper half, bf16(b) in the lower},
// round to nearest even; NaN → canonical NaN.
uint32_t cvt_rn_bf16x2_f32(float a, float b);
// cvt.rn.f16x2.e4m3x2 d, a: the two e4m3 codes of a (lower byte → lower half) as f16, exactly.
uint32_t cvt_rn_f16x2_e4m3x2(uint16_t a);
// mul.rn.f32 without .ftz: the IEEE product, subnormals kept.
float mul_rn_f32(float a, float b);

// ld.global.nc{.L1::no_allocate}.v2/.v4: a vector load, aligned to its size.
void check_global_vector(const void* p, size_t bytes, const char* op);
template <class T>
inline T ld_global_nc(const void* p) {
  check_global_vector(p, sizeof(T), "ld.global.nc");
  T v;
  memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace dsv2emu::ptx
