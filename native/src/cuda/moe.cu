// DeepSeekMoE experts on the GPU (see MoeExpertsParams in dsv2/moe.h), with no host
// synchronisation, so a decode step can be captured in a CUDA graph:
//   dispatch: counts per expert (atomics) → exclusive scan → scatter (token, slot) pairs into
//             per-expert segments (order inside a segment is free: every pair's result is
//             computed independently, so it cannot change the output);
//   grouped gate+up with SwiGLU fused, grouped down: a warp per (pair, output column), lanes
//             splitting the reduction dim (coalesced weight rows), each pair's expert found
//             by binary search in the segment offsets;
//   shared experts: the dense gemm kernel + SwiGLU;
//   combine: y[t] = Σ_slots w · out[t, slot] in slot order + shared[t] (deterministic).
// Generic SIMT kernels: the tensor-core grouped GEMM (and FP8 block-scaled weights) are the
// fast path still to come; weights are f32 / bf16 / f16 like the CPU op.
#include "common.cuh"
#include "cuda_ops.h"
#include "../core/dtype.h"

namespace dsv2::cuda {
namespace {

constexpr int kWarps = 8;

__global__ void count_kernel(const int32_t* ids, int64_t pairs, int32_t* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < pairs && ids[i] >= 0) atomicAdd(counts + ids[i], 1);
}

// Single block: offsets[e] = Σ_{e' < e} counts[e'] (sequential over E ≤ a few hundred).
__global__ void scan_kernel(const int32_t* counts, int64_t e, int32_t* offsets, int32_t* cursor) {
  if (threadIdx.x != 0) return;
  int32_t run = 0;
  for (int64_t i = 0; i < e; ++i) {
    offsets[i] = run;
    cursor[i] = run;
    run += counts[i];
  }
  offsets[e] = run;
}

__global__ void scatter_kernel(const int32_t* ids, int64_t pairs, int32_t* cursor, int32_t* rows) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < pairs && ids[i] >= 0) rows[atomicAdd(cursor + ids[i], 1)] = static_cast<int32_t>(i);
}

__device__ int expert_of(const int32_t* offsets, int64_t e, int64_t pos) {
  int64_t lo = 0, hi = e;  // offsets[lo] <= pos < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= pos) lo = mid;
    else hi = mid;
  }
  return static_cast<int>(lo);
}

// h[pos, j] = silu(x·gate_e[j]) · (x·up_e[j]) for the pair at segment position pos.
__global__ void __launch_bounds__(kWarps * 32) gate_up_kernel(MoeExpertsParams p, const int32_t* offsets,
                                                              const int32_t* rows, float* h) {
  const int lane = threadIdx.x % 32;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kWarps + threadIdx.x / 32;
  const int64_t pos = blockIdx.x;  // pairs on x: gridDim.y is limited to 65535
  if (j >= p.inter || pos >= offsets[p.n_experts]) return;
  const int ex = expert_of(offsets, p.n_experts, pos);
  const float* x = p.x + (rows[pos] / p.top_k) * p.hidden;
  const int64_t base = static_cast<int64_t>(ex) * 2 * p.inter * p.hidden;
  float g = 0.0f, u = 0.0f;
  for (int64_t k = lane; k < p.hidden; k += 32) {
    g = fmaf(x[k], load_weight(p.gate_up, p.w_dtype, base + j * p.hidden + k), g);
    u = fmaf(x[k], load_weight(p.gate_up, p.w_dtype, base + (p.inter + j) * p.hidden + k), u);
  }
  for (int off = 16; off > 0; off >>= 1) {
    g += __shfl_xor_sync(0xffffffffu, g, off);
    u += __shfl_xor_sync(0xffffffffu, u, off);
  }
  if (lane == 0) h[pos * p.inter + j] = g / (1.0f + expf(-g)) * u;
}

// slot_out[pair, n] = h[pos] · down_e[n]
__global__ void __launch_bounds__(kWarps * 32) down_kernel(MoeExpertsParams p, const int32_t* offsets,
                                                           const int32_t* rows, const float* h, float* slot_out) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.y) * kWarps + threadIdx.x / 32;
  const int64_t pos = blockIdx.x;
  if (n >= p.hidden || pos >= offsets[p.n_experts]) return;
  const int ex = expert_of(offsets, p.n_experts, pos);
  const int64_t base = static_cast<int64_t>(ex) * p.hidden * p.inter + n * p.inter;
  float acc = 0.0f;
  for (int64_t j = lane; j < p.inter; j += 32) acc = fmaf(h[pos * p.inter + j], load_weight(p.down, p.w_dtype, base + j), acc);
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) slot_out[static_cast<int64_t>(rows[pos]) * p.hidden + n] = acc;
}

__global__ void silu_mul_kernel(const float* gu, int64_t rows, int64_t inter, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * inter) return;
  const int64_t r = i / inter, j = i % inter;
  const float g = gu[r * 2 * inter + j], u = gu[r * 2 * inter + inter + j];
  out[i] = g / (1.0f + expf(-g)) * u;
}

__global__ void combine_kernel(MoeExpertsParams p, const float* slot_out, const float* shared) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.t * p.hidden) return;
  const int64_t t = i / p.hidden, n = i % p.hidden;
  float y = 0.0f;
  for (int64_t s = 0; s < p.top_k; ++s) {
    if (p.ids[t * p.top_k + s] < 0) continue;
    y += p.weights[t * p.top_k + s] * slot_out[(t * p.top_k + s) * p.hidden + n];
  }
  if (shared) y += shared[i];
  p.y[i] = y;
}

}  // namespace

void moe_experts(const MoeExpertsParams& p, const MoeScratch& s, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t pairs = p.t * p.top_k;
  if (p.t == 0) return;
  DSV2_CUDA_CHECK(cudaMemsetAsync(s.counts, 0, p.n_experts * sizeof(int32_t), st));
  DSV2_CUDA_CHECK(cudaMemsetAsync(s.slot_out, 0, pairs * p.hidden * sizeof(float), st));
  if (pairs > 0 && p.inter > 0 && p.hidden > 0) {  // zero-size grids are launch errors: skip empty work
    count_kernel<<<ceil_div(pairs, 256), 256, 0, st>>>(p.ids, pairs, s.counts);
    DSV2_CUDA_LAUNCH_CHECK();
    scan_kernel<<<1, 32, 0, st>>>(s.counts, p.n_experts, s.offsets, s.cursor);
    DSV2_CUDA_LAUNCH_CHECK();
    scatter_kernel<<<ceil_div(pairs, 256), 256, 0, st>>>(p.ids, pairs, s.cursor, s.rows);
    DSV2_CUDA_LAUNCH_CHECK();
    // Sized for the worst case (every pair routed): positions past offsets[E] exit at once.
    gate_up_kernel<<<dim3(static_cast<unsigned>(pairs), ceil_div(p.inter, kWarps)), kWarps * 32, 0, st>>>(p, s.offsets, s.rows, s.h);
    DSV2_CUDA_LAUNCH_CHECK();
    down_kernel<<<dim3(static_cast<unsigned>(pairs), ceil_div(p.hidden, kWarps)), kWarps * 32, 0, st>>>(p, s.offsets, s.rows, s.h, s.slot_out);
    DSV2_CUDA_LAUNCH_CHECK();
  }
  const float* shared = nullptr;
  if (p.shared_gate_up && p.inter_shared > 0 && p.hidden > 0) {
    GemmParams g;
    g.m = p.t;
    g.n = 2 * p.inter_shared;
    g.k = p.hidden;
    g.x = p.x;
    g.w = p.shared_gate_up;
    g.w_dtype = p.shared_dtype;
    g.y = s.shared_gu;
    gemm(g, stream);
    silu_mul_kernel<<<ceil_div(p.t * p.inter_shared, 256), 256, 0, st>>>(s.shared_gu, p.t, p.inter_shared, s.shared_h);
    DSV2_CUDA_LAUNCH_CHECK();
    g.n = p.hidden;
    g.k = p.inter_shared;
    g.x = s.shared_h;
    g.w = p.shared_down;
    g.y = s.shared_out;
    gemm(g, stream);
    shared = s.shared_out;
  }
  if (p.t * p.hidden == 0) return;
  combine_kernel<<<ceil_div(p.t * p.hidden, 256), 256, 0, st>>>(p, s.slot_out, shared);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
