// The unfused routing baseline of the router benchmark (never used by the model): one launch
// per step, as the published modeling code runs under eager torch —
//   scores = softmax(logits) | sigmoid(logits)            (warp per row)
//   choice = scores + bias                                  (noaux_tc; element-wise)
//   group_scores = choice.view(t, G, per).max(-1) | topk(2).sum(-1)   (thread per (row, group))
//   group_idx = topk(group_scores, topk_group)              (warp per row)
//   group_mask = zeros(t, G).scatter_(1, group_idx, 1)      (memset + scatter)
//   tmp = choice.masked_fill(~score_mask, ·)                (element-wise; masked → NaN here, so
//                                                            nothing masked is ever selected)
//   topk_idx, topk_val = topk(tmp, top_k)                   (warp per row)
//   topk_weight = scores.gather(1, topk_idx)                (noaux_tc; thread per pair)
//   topk_weight /= topk_weight.sum(-1) + 1e-20              (norm_topk_prob; thread per row)
//   topk_weight *= routed_scaling_factor                    (element-wise)
//   counts: bincount of ids (memset + atomics) and of the groups (memset + atomics)
// The top-k steps select as the fused kernel does (iterated warp arg-max with the CPU's
// order), so the ids and weights agree with it for the same logits.
#include <algorithm>
#include <climits>

#include "common.cuh"
#include "cuda_ops.h"

namespace dsv2::cuda {
namespace {

__device__ __forceinline__ unsigned okey(float v) {
  if (isnan(v)) return 0u;
  const unsigned b = v == 0.0f ? 0u : __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ int wargmax(unsigned key, int idx) {
  const unsigned kmax = __reduce_max_sync(0xffffffffu, key);
  if (kmax == 0u) return -1;
  return static_cast<int>(__reduce_min_sync(0xffffffffu, key == kmax ? static_cast<unsigned>(idx) : 0xffffffffu));
}

constexpr int kWarps = 4;

__global__ void scores_kernel(const float* logits, int64_t t, int e, bool softmax, float* scores) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= t) return;
  const float* l = logits + row * e;
  float* s = scores + row * e;
  if (!softmax) {
    for (int i = lane; i < e; i += 32) s[i] = 1.0f / (1.0f + expf(-l[i]));
    return;
  }
  float mx = -INFINITY;
  for (int i = lane; i < e; i += 32) mx = fmaxf(mx, l[i]);
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.0f;
  for (int i = lane; i < e; i += 32) sum += expf(l[i] - mx);
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  for (int i = lane; i < e; i += 32) s[i] = expf(l[i] - mx) / sum;
}

__global__ void add_bias_kernel(const float* scores, const float* bias, int64_t t, int e, float* choice) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < t * e) choice[i] = scores[i] + bias[i % e];
}

__global__ void group_score_kernel(const float* choice, int64_t t, int e, int g, bool top2, float* gs) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= t * g) return;
  const int per = e / g;
  const float* c = choice + (i / g) * e + (i % g) * per;
  float b1 = NAN, b2 = NAN;
  for (int k = 0; k < per; ++k) {
    if (isnan(c[k])) continue;
    if (isnan(b1) || c[k] > b1) {
      b2 = b1;
      b1 = c[k];
    } else if (isnan(b2) || c[k] > b2) {
      b2 = c[k];
    }
  }
  gs[i] = top2 ? (isnan(b2) ? NAN : b1 + b2) : b1;
}

// Warp per row: the k best of n values (ties to the lower index), idx -1 where none is left.
__global__ void topk_kernel(const float* v, int64_t t, int n, int k, int32_t* idx, float* val) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= t) return;
  const float* r = v + row * n;
  int last = -1;  // the previous winner, excluded with everything that ranks before it
  unsigned last_key = 0xffffffffu;
  for (int j = 0; j < k; ++j) {
    unsigned bk = 0;
    int bi = INT_MAX;
    for (int i = lane; i < n; i += 32) {
      const unsigned ck = okey(r[i]);
      // still available: ranks after the previous winner (smaller key, or equal key and larger index)
      const bool after = ck < last_key || (ck == last_key && i > last);
      if (after && ck > bk) {
        bk = ck;
        bi = i;
      }
    }
    const int w = wargmax(bk, bi);
    if (lane == 0) {
      idx[row * k + j] = w;
      if (val) val[row * k + j] = w < 0 ? 0.0f : r[w];
    }
    if (w < 0) {
      for (int jj = j + 1 + lane; jj < k; jj += 32) {
        idx[row * k + jj] = -1;
        if (val) val[row * k + jj] = 0.0f;
      }
      return;
    }
    last = w;
    last_key = okey(r[w]);
  }
}

__global__ void scatter_mask_kernel(const int32_t* gidx, int64_t t, int kg, int g, uint8_t* mask) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < t * kg && gidx[i] >= 0) mask[(i / kg) * g + gidx[i]] = 1;
}

__global__ void mask_fill_kernel(const float* choice, const uint8_t* mask, int64_t t, int e, int g, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= t * e) return;
  const int per = e / g;
  out[i] = mask[(i / e) * g + (i % e) / per] ? choice[i] : NAN;
}

__global__ void gather_kernel(const float* scores, const int32_t* ids, int64_t t, int e, int k, float* w) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < t * k) w[i] = ids[i] < 0 ? 0.0f : scores[(i / k) * e + ids[i]];
}

__global__ void norm_kernel(float* w, const int32_t* ids, int64_t t, int k) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= t) return;
  float s = 0.0f;
  for (int j = 0; j < k; ++j) s += w[row * k + j];
  for (int j = 0; j < k; ++j)
    if (ids[row * k + j] >= 0) w[row * k + j] = w[row * k + j] / (s + 1e-20f);
}

__global__ void scale_kernel(float* w, const int32_t* ids, int64_t n, float f) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n && ids[i] >= 0) w[i] *= f;
}

__global__ void bincount_kernel(const int32_t* ids, int64_t n, int div, int32_t* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n && ids[i] >= 0) atomicAdd(counts + ids[i] / div, 1);
}

size_t al(size_t b) { return (b + 255) / 256 * 256; }

}  // namespace

size_t moe_route_unfused_scratch_bytes(const MoeRouteParams& p) {
  const size_t t = static_cast<size_t>(std::max<int64_t>(p.t, 1));
  return 3 * al(t * p.e * 4) + al(t * p.n_group * 4) + al(t * p.topk_group * 4) + al(t * p.n_group);
}

void moe_route_unfused(const MoeRouteParams& p, void* scratch, void* stream) {
  DSV2_CHECK(p.e <= INT_MAX && p.n_group >= 1 && p.top_k <= INT_MAX, kUnsupported, "CUDA moe_route_unfused: sizes");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int E = static_cast<int>(p.e), G = static_cast<int>(p.n_group), K = static_cast<int>(p.top_k);
  const int KG = static_cast<int>(p.topk_group);
  char* at = static_cast<char*>(scratch);
  const size_t t = static_cast<size_t>(std::max<int64_t>(p.t, 1));
  float* scores = reinterpret_cast<float*>(at);
  at += al(t * E * 4);
  float* choice_buf = reinterpret_cast<float*>(at);
  at += al(t * E * 4);
  float* masked = reinterpret_cast<float*>(at);
  at += al(t * E * 4);
  float* gs = reinterpret_cast<float*>(at);
  at += al(t * G * 4);
  int32_t* gidx = reinterpret_cast<int32_t*>(at);
  at += al(t * KG * 4);
  uint8_t* mask = reinterpret_cast<uint8_t*>(at);

  DSV2_CUDA_CHECK(cudaMemsetAsync(p.tokens_per_expert, 0, p.e * sizeof(int32_t), s));
  DSV2_CUDA_CHECK(cudaMemsetAsync(p.tokens_per_group, 0, p.n_group * sizeof(int32_t), s));
  if (p.t == 0) return;
  const int64_t te = p.t * E;
  DSV2_LAUNCH(scores_kernel, ceil_div(p.t, kWarps), kWarps * 32, 0, s)(p.logits, p.t, E, p.scoring == MoeScoring::kSoftmax, scores);
  DSV2_CUDA_LAUNCH_CHECK();
  const float* choice = scores;
  if (p.bias) {
    DSV2_LAUNCH(add_bias_kernel, ceil_div(te, 256), 256, 0, s)(scores, p.bias, p.t, E, choice_buf);
    DSV2_CUDA_LAUNCH_CHECK();
    choice = choice_buf;
  }
  const float* sel = choice;
  if (p.method != MoeMethod::kGreedy) {
    DSV2_LAUNCH(group_score_kernel, ceil_div(p.t * G, 256), 256, 0, s)(choice, p.t, E, G, p.method == MoeMethod::kNoauxTc, gs);
    DSV2_CUDA_LAUNCH_CHECK();
    DSV2_LAUNCH(topk_kernel, ceil_div(p.t, kWarps), kWarps * 32, 0, s)(gs, p.t, G, KG, gidx, nullptr);
    DSV2_CUDA_LAUNCH_CHECK();
    DSV2_CUDA_CHECK(cudaMemsetAsync(mask, 0, p.t * G, s));
    DSV2_LAUNCH(scatter_mask_kernel, ceil_div(p.t * KG, 256), 256, 0, s)(gidx, p.t, KG, G, mask);
    DSV2_CUDA_LAUNCH_CHECK();
    DSV2_LAUNCH(mask_fill_kernel, ceil_div(te, 256), 256, 0, s)(choice, mask, p.t, E, G, masked);
    DSV2_CUDA_LAUNCH_CHECK();
    sel = masked;
  }
  // top-k values: the unbiased scores come from the gather below when a bias was added
  DSV2_LAUNCH(topk_kernel, ceil_div(p.t, kWarps), kWarps * 32, 0, s)(sel, p.t, E, K, p.ids, p.bias ? nullptr : p.weights);
  DSV2_CUDA_LAUNCH_CHECK();
  const int64_t pairs = p.t * K;
  if (p.bias) {
    DSV2_LAUNCH(gather_kernel, ceil_div(pairs, 256), 256, 0, s)(scores, p.ids, p.t, E, K, p.weights);
    DSV2_CUDA_LAUNCH_CHECK();
  }
  const bool norm = p.norm_topk_prob && p.top_k > 1;
  if (norm) {
    DSV2_LAUNCH(norm_kernel, ceil_div(p.t, 128), 128, 0, s)(p.weights, p.ids, p.t, K);
    DSV2_CUDA_LAUNCH_CHECK();
  }
  if (p.method == MoeMethod::kNoauxTc || !norm) {
    DSV2_LAUNCH(scale_kernel, ceil_div(pairs, 256), 256, 0, s)(p.weights, p.ids, pairs, p.routed_scaling_factor);
    DSV2_CUDA_LAUNCH_CHECK();
  }
  DSV2_LAUNCH(bincount_kernel, ceil_div(pairs, 256), 256, 0, s)(p.ids, pairs, 1, p.tokens_per_expert);
  DSV2_CUDA_LAUNCH_CHECK();
  DSV2_LAUNCH(bincount_kernel, ceil_div(pairs, 256), 256, 0, s)(p.ids, pairs, E / G, p.tokens_per_group);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
