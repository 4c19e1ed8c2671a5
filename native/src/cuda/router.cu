// Fused MoE routing in one launch (see MoeRouteParams in dsv2/moe.h): scores (softmax or
// sigmoid) → group scores (max, or sum of the top 2 for noaux_tc) → top topk_group groups →
// top-k experts inside them → weights (normalised / scaled as the published code) → counts.
//
// One warp per token; lane l holds the scores of experts l, l + 32, ... in registers
// (E ≤ kRouteMaxExperts = 8 per lane) and a bit mask of the ones still selectable. Every
// selection is an arg-max in two warp reductions (redux.sync, sm_80+): the maximum of an
// order-preserving 32-bit key of the value (NaN → 0, never selected; -0 → +0, so it ties with
// +0 as the CPU's comparisons do), then the minimum index among the lanes holding that key — the
// CPU's order: larger first, NaN never, ties to the lower index. Group scores are a short loop
// per group lane over the choices in shared memory, padded by one slot per group so the group
// lanes hit distinct banks. Lane k keeps slot k (top_k ≤ 32) and writes its id and weight.
//
// Two launch shapes, chosen in moe_route (moe_route_kernel_name):
//   one_block (t ≤ 64): one block of 32 warps loops over the tokens and counts in shared
//     memory, then writes the counts: a single launch, no memsets (the decode case);
//   grid (t > 64): 4 tokens per block, the counts zeroed by two memsets and summed with
//     global atomics (integers: exact and order-free).
// Larger geometries (E > 256, n_group > 32, top_k > 32) are rejected in one visible check.
#include <cfloat>
#include <climits>

#include "common.cuh"
#include "cuda_ops.h"

namespace dsv2::cuda {
namespace {

constexpr int kPerLane = static_cast<int>(kRouteMaxExperts / 32);
constexpr int kGridWarps = 4;
constexpr int kOneBlockWarps = 32;
constexpr int64_t kOneBlockMaxT = 64;
constexpr int kChoiceStride = static_cast<int>(kRouteMaxExperts) + 32;  // one padding slot per group

__device__ __forceinline__ unsigned order_key(float v) {
  if (isnan(v)) return 0u;
  const unsigned b = v == 0.0f ? 0u : __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // never 0 for a number
}

__device__ __forceinline__ float key_value(unsigned k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Index of the best key across the warp (ties to the lower index), -1 when every key is 0.
__device__ __forceinline__ int warp_argmax(unsigned key, int idx) {
  const unsigned kmax = __reduce_max_sync(0xffffffffu, key);
  if (kmax == 0u) return -1;
  return static_cast<int>(__reduce_min_sync(0xffffffffu, key == kmax ? static_cast<unsigned>(idx) : 0xffffffffu));
}

__device__ void route_token(const MoeRouteParams& p, int64_t tok, int lane, float* s_choice, int32_t* cnt_e,
                            int32_t* cnt_g) {
  const int E = static_cast<int>(p.e);
  const int per = E / static_cast<int>(p.n_group);
  const float* l = p.logits + tok * E;
  float score[kPerLane], choice[kPerLane];
  float lg[kPerLane];
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) {
    const int e = lane + 32 * u;
    lg[u] = e < E ? l[e] : 0.0f;
  }
  if (p.scoring == MoeScoring::kSoftmax) {
    unsigned km = 0;  // max ignoring NaN (as fmaxf and the CPU's std::max chain)
#pragma unroll
    for (int u = 0; u < kPerLane; ++u)
      if (lane + 32 * u < E) km = max(km, order_key(lg[u]));
    km = __reduce_max_sync(0xffffffffu, km);
    const float mx = km == 0u ? -INFINITY : key_value(km);
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) {
      score[u] = lane + 32 * u < E ? expf(lg[u] - mx) : 0.0f;
      sum += score[u];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) score[u] /= sum;
  } else {
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) score[u] = 1.0f / (1.0f + expf(-lg[u]));
  }
  unsigned avail = 0;  // bit u: expert lane + 32u is selectable
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) {
    const int e = lane + 32 * u;
    choice[u] = e < E && p.bias ? score[u] + p.bias[e] : score[u];
    if (e < E) avail |= 1u << u;
  }
  if (p.method != MoeMethod::kGreedy) {
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) {
      const int e = lane + 32 * u;
      if (e < E) s_choice[e + e / per] = choice[u];
    }
    __syncwarp();
    unsigned gkey = 0;  // lane g scores group g
    if (lane < p.n_group) {
      const float* c = s_choice + lane * (per + 1);
      float b1 = NAN, b2 = NAN;
#pragma unroll 4
      for (int k = 0; k < per; ++k) {
        const float v = c[k];
        if (isnan(v)) continue;
        if (isnan(b1) || v > b1) {
          b2 = b1;
          b1 = v;
        } else if (isnan(b2) || v > b2) {
          b2 = v;
        }
      }
      gkey = order_key(p.method == MoeMethod::kGroupLimitedGreedy ? b1 : (isnan(b2) ? NAN : b1 + b2));
    }
    __syncwarp();  // s_choice is reused by the next token of this warp
    unsigned gmask = 0;
    for (int k = 0; k < p.topk_group; ++k) {
      const int gi = warp_argmax(gkey, lane);
      if (gi < 0) break;  // a group with no selectable expert is never kept
      gmask |= 1u << gi;
      if (lane == gi) gkey = 0;
    }
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) {
      const int e = lane + 32 * u;
      if (e < E && !((gmask >> (e / per)) & 1u)) avail &= ~(1u << u);
    }
  }
  int my_id = -1;
  float my_sc = 0.0f;
  for (int k = 0; k < p.top_k; ++k) {
    unsigned bk = 0;
    int bu = 0;
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) {
      const unsigned ck = (avail >> u) & 1u ? order_key(choice[u]) : 0u;
      if (ck > bk) {  // strict: the lower index (lower u) keeps a tie
        bk = ck;
        bu = u;
      }
    }
    const int idx = warp_argmax(bk, lane + 32 * bu);
    if (idx < 0) break;  // nothing selectable is left: the remaining slots stay -1
    const int owner = idx % 32, uo = idx / 32;
    float sc = 0.0f;
#pragma unroll
    for (int u = 0; u < kPerLane; ++u)
      if (u == uo) sc = score[u];
    sc = __shfl_sync(0xffffffffu, sc, owner);
    if (lane == owner) avail &= ~(1u << uo);
    if (lane == k) {
      my_id = idx;
      my_sc = sc;
    }
  }
  float picked = my_id >= 0 ? my_sc : 0.0f;  // lanes ≥ top_k hold 0
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) picked += __shfl_xor_sync(0xffffffffu, picked, off);
  if (lane < p.top_k) {
    const bool norm = p.norm_topk_prob && p.top_k > 1;
    const bool scale = p.method == MoeMethod::kNoauxTc || !norm;
    float w = 0.0f;
    if (my_id >= 0) {
      w = my_sc;
      if (norm) w = w / (picked + 1e-20f);
      if (scale) w *= p.routed_scaling_factor;
      atomicAdd(cnt_e + my_id, 1);
      atomicAdd(cnt_g + my_id / per, 1);
    }
    p.ids[tok * p.top_k + lane] = my_id;
    p.weights[tok * p.top_k + lane] = w;
  }
}

template <bool kOneBlock>
__global__ void __launch_bounds__(kOneBlock ? kOneBlockWarps * 32 : kGridWarps * 32) route_kernel(MoeRouteParams p) {
  constexpr int kW = kOneBlock ? kOneBlockWarps : kGridWarps;
  __shared__ float s_choice[kW][kChoiceStride];
  __shared__ int32_t s_cnt[kOneBlock ? kRouteMaxExperts + 32 : 1];
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  const int E = static_cast<int>(p.e), G = static_cast<int>(p.n_group);
  if (kOneBlock) {
    for (int i = threadIdx.x; i < E + G; i += blockDim.x) s_cnt[i] = 0;
    __syncthreads();
  }
  int32_t* cnt_e = kOneBlock ? s_cnt : p.tokens_per_expert;
  int32_t* cnt_g = kOneBlock ? s_cnt + E : p.tokens_per_group;
  for (int64_t tok = static_cast<int64_t>(blockIdx.x) * kW + w; tok < p.t; tok += static_cast<int64_t>(gridDim.x) * kW)
    route_token(p, tok, lane, s_choice[w], cnt_e, cnt_g);  // whole warps take the same tokens
  if (kOneBlock) {
    __syncthreads();
    for (int i = threadIdx.x; i < E; i += blockDim.x) p.tokens_per_expert[i] = s_cnt[i];
    for (int i = threadIdx.x; i < G; i += blockDim.x) p.tokens_per_group[i] = s_cnt[E + i];
  }
}

}  // namespace

const char* moe_route_kernel_name(const MoeRouteParams& p) { return p.t <= kOneBlockMaxT ? "fused_one_block" : "fused_grid"; }

void moe_route(const MoeRouteParams& p, void* stream) {
  DSV2_CHECK(p.e <= kRouteMaxExperts && p.n_group <= 32 && p.top_k <= 32, kUnsupported,
             "CUDA moe_route: " << p.e << " experts in " << p.n_group << " groups, top " << p.top_k
                                << " exceeds the fused kernel's " << kRouteMaxExperts << " experts / 32 groups / top 32");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.t <= kOneBlockMaxT) {  // one launch: the block zeroes and writes the counts itself (also for t = 0)
    DSV2_LAUNCH((route_kernel<true>), 1, kOneBlockWarps * 32, 0, s)(p);
    DSV2_CUDA_LAUNCH_CHECK();
    return;
  }
  DSV2_CUDA_CHECK(cudaMemsetAsync(p.tokens_per_expert, 0, p.e * sizeof(int32_t), s));
  DSV2_CUDA_CHECK(cudaMemsetAsync(p.tokens_per_group, 0, p.n_group * sizeof(int32_t), s));
  DSV2_LAUNCH((route_kernel<false>), ceil_div(p.t, kGridWarps), kGridWarps * 32, 0, s)(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
