// Fused MoE routing in one launch (see MoeRouteParams in dsv2/moe.h): scores (softmax or
// sigmoid) → group scores (max, or sum of the top 2 for noaux_tc) → top topk_group groups →
// top-k experts inside them → weights (normalised / scaled as the published code) → counts.
// One warp per token, lanes striding over experts; selections are iterated warp arg-maxes
// with the CPU's order: larger first, NaN never, ties to the lower index. Counts are integer
// atomics (exact, order-free). Takes E ≤ kRouteMaxExperts, n_group ≤ 32; larger geometries
// are rejected in one visible check (moe_route below).
#include <cfloat>

#include "common.cuh"
#include "cuda_ops.h"

namespace dsv2::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kPerLane = static_cast<int>(kRouteMaxExperts / 32);

// (value, index) arg-max across the warp: larger value first, NaN never wins over a number,
// ties to the lower index. Invalid candidates carry index -1.
__device__ __forceinline__ void warp_argmax(float& v, int& idx) {
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, off);
    bool take;
    if (oi < 0) take = false;
    else if (idx < 0) take = true;
    else if (isnan(v) != isnan(ov)) take = isnan(v);
    else if (isnan(v)) take = oi < idx;
    else take = ov > v || (ov == v && oi < idx);
    if (take) {
      v = ov;
      idx = oi;
    }
  }
}

__global__ void __launch_bounds__(kWarps * 32) moe_route_kernel(MoeRouteParams p) {
  __shared__ float s_choice[kWarps][kRouteMaxExperts];
  __shared__ unsigned char s_allowed[kWarps][kRouteMaxExperts];
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  const int64_t tok = static_cast<int64_t>(blockIdx.x) * kWarps + w;
  if (tok >= p.t) return;  // whole warps exit together
  const int E = static_cast<int>(p.e);
  const float* l = p.logits + tok * E;
  float score[kPerLane];
  // scores
  if (p.scoring == MoeScoring::kSoftmax) {
    float mx = -INFINITY;
    for (int u = 0; u < kPerLane; ++u) {
      const int e = lane + 32 * u;
      if (e < E) mx = fmaxf(mx, l[e]);
    }
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.0f;
    for (int u = 0; u < kPerLane; ++u) {
      const int e = lane + 32 * u;
      score[u] = e < E ? expf(l[e] - mx) : 0.0f;
      sum += score[u];
    }
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    for (int u = 0; u < kPerLane; ++u) score[u] /= sum;
  } else {
    for (int u = 0; u < kPerLane; ++u) {
      const int e = lane + 32 * u;
      score[u] = e < E ? 1.0f / (1.0f + expf(-l[e])) : 0.0f;
    }
  }
  for (int u = 0; u < kPerLane; ++u) {
    const int e = lane + 32 * u;
    if (e < E) {
      s_choice[w][e] = p.bias ? score[u] + p.bias[e] : score[u];
      s_allowed[w][e] = p.method == MoeMethod::kGreedy ? 1 : 0;
    }
  }
  __syncwarp();
  if (p.method != MoeMethod::kGreedy) {
    const int per = E / static_cast<int>(p.n_group);
    // lane g scores group g
    float gs = NAN;
    int gi = -1;
    if (lane < p.n_group) {
      gi = lane;
      float b1 = NAN, b2 = NAN;
      for (int k = 0; k < per; ++k) {
        const float c = s_choice[w][lane * per + k];
        if (isnan(c)) continue;
        if (isnan(b1) || c > b1) { b2 = b1; b1 = c; }
        else if (isnan(b2) || c > b2) b2 = c;
      }
      gs = p.method == MoeMethod::kGroupLimitedGreedy ? b1 : (isnan(b2) ? NAN : b1 + b2);
    }
    for (int k = 0; k < p.topk_group; ++k) {
      float v = gs;
      int idx = gi;
      warp_argmax(v, idx);
      if (idx < 0 || isnan(v)) break;  // a group with no selectable expert is never kept
      for (int x = lane; x < per; x += 32) s_allowed[w][idx * per + x] = 1;
      if (lane == idx) gi = -1;  // taken
    }
    __syncwarp();
  }
  int32_t* ids = p.ids + tok * p.top_k;
  float* wts = p.weights + tok * p.top_k;
  float picked = 0.0f;  // sum of chosen unbiased scores (lane 0 keeps it)
  for (int k = 0; k < p.top_k; ++k) {
    float v = NAN;
    int idx = -1;
    for (int u = 0; u < kPerLane; ++u) {
      const int e = lane + 32 * u;
      if (e >= E || !s_allowed[w][e]) continue;
      const float c = s_choice[w][e];
      if (isnan(c)) continue;
      if (idx < 0 || c > v) {  // e increases with u: ties keep the lower index
        v = c;
        idx = e;
      }
    }
    warp_argmax(v, idx);
    // the winner's unbiased score, from the lane that holds it
    const int owner = idx < 0 ? 0 : idx % 32;
    float sc = 0.0f;
    for (int u = 0; u < kPerLane; ++u)
      if (idx >= 0 && lane + 32 * u == idx) sc = score[u];
    sc = __shfl_sync(0xffffffffu, sc, owner);
    if (lane == 0) {
      ids[k] = idx;
      wts[k] = idx < 0 ? 0.0f : sc;
      picked += idx < 0 ? 0.0f : sc;
    }
    if (idx >= 0 && lane == owner) s_allowed[w][idx] = 0;
    __syncwarp();
  }
  if (lane == 0) {
    const bool norm = p.norm_topk_prob && p.top_k > 1;
    const bool scale = p.method == MoeMethod::kNoauxTc || !norm;
    const int per = E / static_cast<int>(p.n_group);
    for (int k = 0; k < p.top_k; ++k) {
      if (ids[k] < 0) continue;
      float x = wts[k];
      if (norm) x = x / (picked + 1e-20f);
      if (scale) x *= p.routed_scaling_factor;
      wts[k] = x;
      atomicAdd(p.tokens_per_expert + ids[k], 1);
      atomicAdd(p.tokens_per_group + ids[k] / per, 1);
    }
  }
}

}  // namespace

void moe_route(const MoeRouteParams& p, void* stream) {
  DSV2_CHECK(p.e <= kRouteMaxExperts && p.n_group <= 32, kUnsupported,
             "CUDA moe_route: " << p.e << " experts in " << p.n_group << " groups exceeds the fused kernel's "
                                << kRouteMaxExperts << " experts / 32 groups");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DSV2_CUDA_CHECK(cudaMemsetAsync(p.tokens_per_expert, 0, p.e * sizeof(int32_t), s));
  DSV2_CUDA_CHECK(cudaMemsetAsync(p.tokens_per_group, 0, p.n_group * sizeof(int32_t), s));
  if (p.t == 0) return;
  moe_route_kernel<<<ceil_div(p.t, kWarps), kWarps * 32, 0, s>>>(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
