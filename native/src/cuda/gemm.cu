// y[M, N] = x[M, K] · W[N, K]ᵀ on the GPU, f32 activations, f32/bf16/f16 weights, fp32
// accumulation (GemmParams, as the CPU op).
//
// Two SIMT kernels chosen in one visible dispatch (gemm below):
// - M ≤ 8 (decode): weight streaming. A warp per output column n walks W's row with
//   coalesced loads and keeps M accumulators; x rows come from L1/L2 (every warp reads the
//   same x). The bound is W's bytes over memory bandwidth.
// - M > 8: 64×64 output tiles, K in steps of 16 through shared memory, 4×4 outputs per
//   thread (256 threads).
// Tensor-core (mma.sync / wgmma) kernels for bf16 are the next step for prefill shapes.
#include "common.cuh"
#include "cuda_ops.h"
#include "../core/dtype.h"

namespace dsv2::cuda {
namespace {

constexpr int kGemvMaxM = 8;
constexpr int kGemvWarps = 8;

__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(GemmParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (n >= p.n) return;
  float acc[kGemvMaxM];
#pragma unroll
  for (int m = 0; m < kGemvMaxM; ++m) acc[m] = 0.0f;
  for (int64_t k = lane; k < p.k; k += 32) {
    const float w = load_weight(p.w, p.w_dtype, n * p.k + k);
#pragma unroll
    for (int m = 0; m < kGemvMaxM; ++m)
      if (m < p.m) acc[m] = fmaf(w, p.x[m * p.k + k], acc[m]);
  }
#pragma unroll
  for (int m = 0; m < kGemvMaxM; ++m) {
    float v = acc[m];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && m < p.m) p.y[m * p.n + n] = v;
  }
}

constexpr int kTile = 64, kTileK = 16;

__global__ void __launch_bounds__(256) gemm_tiled_kernel(GemmParams p) {
  __shared__ float xs[kTileK][kTile + 1];  // [k][m], padded against bank conflicts
  __shared__ float ws[kTileK][kTile + 1];  // [k][n]
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 × 16 threads, 4 × 4 outputs each
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
    for (int i = threadIdx.x; i < kTile * kTileK; i += 256) {
      const int r = i / kTileK, kk = i % kTileK;
      const int64_t m = m0 + r, n = n0 + r, k = k0 + kk;
      xs[kk][r] = (m < p.m && k < p.k) ? p.x[m * p.k + k] : 0.0f;
      ws[kk][r] = (n < p.n && k < p.k) ? load_weight(p.w, p.w_dtype, n * p.k + k) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = xs[kk][ty * 4 + i];
        b[i] = ws[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < p.m && n < p.n) p.y[m * p.n + n] = acc[i][j];
    }
}

}  // namespace

const char* gemm_kernel_name(const GemmParams& p) { return p.m <= kGemvMaxM ? "gemv" : "tiled"; }

void gemm(const GemmParams& p, void* stream) {
  if (p.m == 0 || p.n == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.m <= kGemvMaxM) {
    gemv_kernel<<<ceil_div(p.n, kGemvWarps), kGemvWarps * 32, 0, s>>>(p);
  } else {
    DSV2_CHECK(ceil_div(p.m, kTile) <= 65535, kUnsupported, "CUDA gemm: m = " << p.m << " rows exceed the tiled kernel's grid");
    const dim3 grid(ceil_div(p.n, kTile), ceil_div(p.m, kTile));
    gemm_tiled_kernel<<<grid, 256, 0, s>>>(p);
  }
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
