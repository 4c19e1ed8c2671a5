// MLA prefill on the GPU, naive form (see MlaPrefillParams in dsv2/mla.h), for one sequence
// per call (the op-level entry loops over the batch):
//   1. gather: decode the sequence's cached latent keys to f32 C [s_k, d_c] and K_pe [s_k, d_r];
//   2. expand: kvx [s_k, h·(d_nope + d_v)] = C · kv_bᵀ with the gemm kernel;
//   3. attend: a warp per (query, head) walks its visible keys with an online softmax over
//      the d_nope + d_r score dims and accumulates the d_v value dims (lanes split dims).
// Generic SIMT (any d_v ≤ kPrefillMaxDv); the flash-attention kernel on tensor cores is the
// fast path still to come.
#include <cfloat>

#include "common.cuh"
#include "cuda_ops.h"
#include "kv_token.cuh"
#include "softmax.cuh"

namespace dsv2::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxPerLane = static_cast<int>(kPrefillMaxDv / 32);

__global__ void gather_kernel(KvCacheView cache, const int32_t* block_row, int64_t s_k, float* c, float* pe) {
  const KvLayout L = cache.layout;
  const int64_t t = blockIdx.x;
  if (t >= s_k) return;
  const int64_t page = block_row[t / L.page_size];
  const uint8_t* tok = cache.data + (page * L.page_size + t % L.page_size) * L.bytes_per_token();
  for (int64_t e = threadIdx.x; e < L.d_c + L.d_r; e += blockDim.x) {
    const float v = decode_element(L, tok, e);
    if (e < L.d_c) c[t * L.d_c + e] = v;
    else pe[t * L.d_r + e - L.d_c] = v;
  }
}

// One warp per (query j, head h): q rows [q0 + j], keys t ≤ s_k − n_q + j.
__global__ void __launch_bounds__(kWarps * 32)
attend_kernel(PrefillSeq s, const float* q, const float* kvx, const float* pe, float* out) {
  const int lane = threadIdx.x % 32;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t h = blockIdx.y;
  if (j >= s.n_q) return;
  const int64_t dqk = s.d_nope + s.d_r, row = s.d_nope + s.d_v;
  const float* qr = q + ((s.q0 + j) * s.h + h) * dqk;
  const int64_t last = s.s_k - s.n_q + j;
  OnlineSoftmax sm;
  float acc[kMaxPerLane];
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) acc[u] = 0.0f;
  for (int64_t t = 0; t <= last; ++t) {
    const float* e = kvx + (t * s.h + h) * row;  // [k_nope (d_nope) ; v (d_v)] of head h
    float dot = 0.0f;
    for (int64_t k = lane; k < s.d_nope; k += 32) dot = fmaf(qr[k], e[k], dot);
    for (int64_t k = lane; k < s.d_r; k += 32) dot = fmaf(qr[s.d_nope + k], pe[t * s.d_r + k], dot);
    float corr, w;
    sm.push(warp_sum(dot) * s.scale, &corr, &w);
#pragma unroll
    for (int u = 0; u < kMaxPerLane; ++u) {
      const int64_t k = lane + 32 * u;
      if (k < s.d_v) acc[u] = acc[u] * corr + w * e[s.d_nope + k];
    }
  }
  float* o = out + ((s.q0 + j) * s.h + h) * s.d_v;
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) {
    const int64_t k = lane + 32 * u;
    if (k < s.d_v) o[k] = sm.any ? acc[u] / sm.l : 0.0f;
  }
}

}  // namespace

void mla_prefill_seq(const KvCacheView& cache, const int32_t* block_row, const PrefillSeq& s, const float* q,
                     const void* kv_b, DType kv_b_dtype, const PrefillScratch& scratch, float* out, void* stream) {
  DSV2_CHECK(s.d_v <= kPrefillMaxDv, kUnsupported,
             "CUDA mla_prefill: dV = " << s.d_v << " exceeds the generic kernel's " << kPrefillMaxDv);
  if (s.n_q == 0 || s.s_k == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  gather_kernel<<<static_cast<unsigned>(s.s_k), 128, 0, st>>>(cache, block_row, s.s_k, scratch.c, scratch.pe);
  DSV2_CUDA_LAUNCH_CHECK();
  GemmParams g;
  g.m = s.s_k;
  g.n = s.h * (s.d_nope + s.d_v);
  g.k = cache.layout.d_c;
  g.x = scratch.c;
  g.w = kv_b;
  g.w_dtype = kv_b_dtype;
  g.y = scratch.kvx;
  gemm(g, stream);
  const dim3 grid(ceil_div(s.n_q, kWarps), static_cast<unsigned>(s.h));
  attend_kernel<<<grid, kWarps * 32, 0, st>>>(s, q, scratch.kvx, scratch.pe, out);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
