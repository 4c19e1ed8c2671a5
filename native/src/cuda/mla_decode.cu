// Absorbed MLA decode on the GPU: split-KV partials + a log-sum-exp combine, the same
// decomposition as the CPU op (see MlaDecodeParams in dsv2/mla.h).
//
// Generic kernel (any d_c ≤ kDecodeGenericMaxDc, any d_r, any cache dtype): a block per
// (work item, group of 8 query rows); the block decodes TK keys at a time into shared memory
// as f32 (dequantizing fp8 there: Hopper has no bf16×fp8 MMA), then each warp walks them for
// its query row with an online softmax, lanes splitting the head dims. Correct for every
// shape the CPU op takes; it reads each key once per 8 rows, so it is not the fast path —
// the tensor-core kernel for d_c = 512, d_r = 64 is chosen in mla_decode() when present.
#include <cfloat>

#include "common.cuh"
#include "cuda_ops.h"
#include "../core/dtype.h"
#include "../core/fp8.h"
#include "kv_token.cuh"
#include "softmax.cuh"

namespace dsv2::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // one warp per query row
constexpr int kTileKeys = 16;     // keys decoded into shared memory at a time
constexpr int kMaxPerLane = static_cast<int>(kDecodeGenericMaxDc / 32);

__global__ void __launch_bounds__(kRowsPerBlock * 32)
mla_decode_generic_kernel(MlaDecodeParams p, DecodePlan plan) {
  extern __shared__ float smem[];
  const int64_t d = p.d_c + p.d_r;
  float* keys = smem;                          // [kTileKeys, d]
  float* qs = smem + kTileKeys * d;            // [kRowsPerBlock, d]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t item = blockIdx.x;
  const int64_t rows = p.s_q * p.h_q;
  const int64_t r = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock + warp;
  const int64_t i = plan.item_seq[item];
  const int64_t t0 = plan.item_t0[item], t1 = plan.item_t1[item];
  const int64_t s_k = p.seqlens[i];
  const bool active = r < rows;
  const int64_t last = active ? s_k - p.s_q + r / p.h_q : -1;  // last key this row sees
  if (active)
    for (int64_t k = lane; k < d; k += 32) qs[warp * d + k] = p.q[(i * rows + r) * d + k];
  const KvLayout L = p.cache.layout;
  const int64_t bpt = L.bytes_per_token();
  OnlineSoftmax sm;
  float acc[kMaxPerLane];
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) acc[u] = 0.0f;
  for (int64_t tile = t0; tile < t1; tile += kTileKeys) {
    const int64_t n = min(static_cast<int64_t>(kTileKeys), t1 - tile);
    __syncthreads();  // the previous tile is no longer read
    for (int64_t x = threadIdx.x; x < n * d; x += blockDim.x) {
      const int64_t kk = x / d, e = x % d, t = tile + kk;
      const int64_t page = p.block_table[i * p.max_blocks + t / L.page_size];
      const uint8_t* tok = p.cache.data + (page * L.page_size + t % L.page_size) * bpt;
      keys[x] = decode_element(L, tok, e);
    }
    __syncthreads();
    if (!active) continue;
    for (int64_t kk = 0; kk < n && tile + kk <= last; ++kk) {
      const float* key = keys + kk * d;
      const float* q = qs + warp * d;
      float dot = 0.0f;
      for (int64_t k = lane; k < d; k += 32) dot = fmaf(q[k], key[k], dot);
      float corr, w;
      sm.push(warp_sum(dot) * p.scale, &corr, &w);
#pragma unroll
      for (int u = 0; u < kMaxPerLane; ++u) {
        const int64_t k = lane + 32 * u;
        if (k < p.d_c) acc[u] = acc[u] * corr + w * key[k];
      }
    }
  }
  if (!active) return;
  float* out = plan.part_out + (item * rows + r) * p.d_c;
  const float inv = sm.any ? 1.0f / sm.l : 0.0f;
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) {
    const int64_t k = lane + 32 * u;
    if (k < p.d_c) out[k] = acc[u] * inv;
  }
  if (lane == 0) plan.part_lse[item * rows + r] = sm.any ? sm.m + logf(sm.l) : -INFINITY;
}

// One block per (sequence, query row): merges the sequence's split partials.
__global__ void mla_decode_combine_kernel(MlaDecodeParams p, DecodePlan plan) {
  const int64_t rows = p.s_q * p.h_q;
  const int64_t x = blockIdx.x;  // i * rows + r
  const int64_t i = x / rows, r = x % rows;
  const int64_t b0 = plan.seq_item_begin[i], b1 = plan.seq_item_begin[i + 1];
  float mx = -INFINITY;
  for (int64_t it = b0; it < b1; ++it) mx = fmaxf(mx, plan.part_lse[it * rows + r]);
  float* out = p.out + x * p.d_c;
  if (mx == -INFINITY) {  // no key at all: out 0, lse +inf
    for (int64_t k = threadIdx.x; k < p.d_c; k += blockDim.x) out[k] = 0.0f;
    if (threadIdx.x == 0) p.lse[x] = INFINITY;
    return;
  }
  float sum = 0.0f;
  for (int64_t it = b0; it < b1; ++it) sum += expf(plan.part_lse[it * rows + r] - mx);
  const float lse = mx + logf(sum);
  for (int64_t k = threadIdx.x; k < p.d_c; k += blockDim.x) {
    float o = 0.0f;
    for (int64_t it = b0; it < b1; ++it) {
      const float li = plan.part_lse[it * rows + r];
      if (li != -INFINITY) o += expf(li - lse) * plan.part_out[(it * rows + r) * p.d_c + k];
    }
    out[k] = o;
  }
  if (threadIdx.x == 0) p.lse[x] = lse;
}

}  // namespace

const char* mla_decode_kernel_name(const MlaDecodeParams& p) {
  (void)p;
  return "generic";  // the d_c = 512, d_r = 64 tensor-core kernel is not written yet
}

void mla_decode(const MlaDecodeParams& p, const DecodePlan& plan, void* stream) {
  DSV2_CHECK(p.d_c <= kDecodeGenericMaxDc, kUnsupported,
             "CUDA mla_decode: dC = " << p.d_c << " exceeds the generic kernel's " << kDecodeGenericMaxDc);
  const int64_t rows = p.s_q * p.h_q;
  if (p.b == 0 || rows == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (plan.n_items > 0) {
    const size_t smem = sizeof(float) * (kTileKeys + kRowsPerBlock) * (p.d_c + p.d_r);
    if (smem > 48 * 1024)
      DSV2_CUDA_CHECK(cudaFuncSetAttribute(mla_decode_generic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
    DSV2_CHECK(ceil_div(rows, kRowsPerBlock) <= 65535, kUnsupported, "CUDA mla_decode: s_q · h_q = " << rows << " query rows per sequence exceed the kernel's grid");
    const dim3 grid(static_cast<unsigned>(plan.n_items), ceil_div(rows, kRowsPerBlock));
    mla_decode_generic_kernel<<<grid, kRowsPerBlock * 32, smem, s>>>(p, plan);
    DSV2_CUDA_LAUNCH_CHECK();
  }
  mla_decode_combine_kernel<<<static_cast<unsigned>(p.b * rows), 128, 0, s>>>(p, plan);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
