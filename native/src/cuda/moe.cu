// DeepSeekMoE experts on the GPU (see MoeExpertsParams in dsv2/moe.h), with no host
// synchronisation and no grid that depends on device-side counts, so a decode step can be
// captured in a CUDA graph. One visible dispatch (moe_experts_kernel_name / moe_experts below)
// picks, for the routed experts and for the shared experts separately:
//   mma_skinny  bf16 weights, at most 8 pairs per expert on average (decode): tensor-core swap-AB
//               grouped GEMM, 16 tokens per tile, weights streamed with 16-byte loads (moe_mma.cu);
//   mma_tiled   bf16 weights, larger batches (prefill): 128×128 tiles, cp.async pipeline (moe_mma.cu);
//   simt        f32 / f16 weights, or shapes the tensor-core kernels do not take (hidden or inter
//               not a multiple of 8, unaligned pointers, more than 1024 experts): the generic
//               kernels below, warp per (pair, output column);
//   mma_skinny_fp8, mma_skinny_i8  routed 8-bit block-scaled weights (w_dtype fp8_e4m3 or i8 +
//               128×128 scales, see MoeExpertsParams) at any batch size, shapes and pointers as
//               mma_skinny: the skinny kernel decoding codes exactly to bf16 in registers,
//               scaling the f32 partial of each 128-wide k block (moe_mma.cu);
//   simt_fp8, simt_i8  8-bit weights the skinny kernel does not take: the generic kernels
//               decoding each weight as code · scale (the CPU op's f32 value).
// (8-bit prefill runs the skinny kernel, re-reading each expert's codes once per 16-row tile;
// a tiled 8-bit kernel would dequantise in its shared-memory stage: not implemented.)
// 8-bit shared experts (the engine's int8 / fp8 weights) run as two gemm calls (gemm.cu's
// 8-bit tensor-core kernels) and the SIMT SwiGLU: the "simt" shared path.
// Tensor-core path:
//   prep (one launch): block 0 dispatches — counts per expert (shared-memory atomics), exclusive
//             scan, per-expert segment offsets, a tile table {expert, first row} for the chosen
//             kernel's tile height, and the scatter of (token, slot) pairs into the segments (order
//             inside a segment is free: every row's result is computed independently, with the
//             same k order, so it cannot change the output); the other blocks convert x to bf16
//             (round to nearest even, as the CPU cast: the first of the two bf16 roundings of
//             this path, the other is h below);
//   gate+up:  SwiGLU fused in the epilogue, h = bf16(silu(x·gate) · (x·up)) per segment row;
//   down:     the routing weight fused, slot_out[pair] = w · (h · down);
//   shared:   the same two kernels over one segment of all t tokens (in the same launches when
//             both parts pick the same kernel);
//   combine:  y[t] = Σ_slots slot_out[t, slot] in slot order + shared[t] (deterministic).
// SIMT path: dispatch count → scan → scatter, grouped gate/up and down SIMT kernels, the
// shared experts through cuda::gemm + SwiGLU, combine with the weights.
#include <algorithm>
#include <string>

#include "common.cuh"
#include "cuda_ops.h"
#include "moe_mma.cuh"
#include "ptx.cuh"
#include "w8.cuh"
#include "../core/dtype.h"
#include "../core/fp8.h"

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

// Weight [r, c] of expert ex's [rows, cols] matrix: load_weight, or for 8-bit codes (i8,
// e4m3) code · the scale of its 128×128 block (one f32 rounding, as the CPU op's dequantisation).
template <bool k8>
__device__ __forceinline__ float routed_weight(const void* w, DType dt, const float* scale, int64_t ex, int64_t rows,
                                               int64_t cols, int64_t r, int64_t c) {
  const int64_t i = (ex * rows + r) * cols + c;
  if constexpr (k8) {
    const int64_t rb = (rows + kMoeFp8Block - 1) / kMoeFp8Block;
    (void)i;
    return w8::scaled_weight(static_cast<const uint8_t*>(w) + ex * rows * cols, dt, scale + ex * rb * ((cols + kMoeFp8Block - 1) / kMoeFp8Block),
                             rows, cols, r, c);
  } else {
    return load_weight(w, dt, i);
  }
}

// h[pos, j] = silu(x·gate_e[j]) · (x·up_e[j]) for the pair at segment position pos.
template <bool k8>
__global__ void __launch_bounds__(kWarps * 32) gate_up_kernel(MoeExpertsParams p, const int32_t* offsets,
                                                              const int32_t* rows, float* h) {
  const int lane = threadIdx.x % 32;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kWarps + threadIdx.x / 32;
  const int64_t pos = blockIdx.x;  // pairs on x: gridDim.y is limited to 65535
  if (j >= p.inter || pos >= offsets[p.n_experts]) return;
  const int ex = expert_of(offsets, p.n_experts, pos);
  const float* x = p.x + (rows[pos] / p.top_k) * p.hidden;
  float g = 0.0f, u = 0.0f;
  for (int64_t k = lane; k < p.hidden; k += 32) {
    g = fmaf(x[k], routed_weight<k8>(p.gate_up, p.w_dtype, p.gate_up_scale, ex, 2 * p.inter, p.hidden, j, k), g);
    u = fmaf(x[k], routed_weight<k8>(p.gate_up, p.w_dtype, p.gate_up_scale, ex, 2 * p.inter, p.hidden, p.inter + j, k), u);
  }
  for (int off = 16; off > 0; off >>= 1) {
    g += __shfl_xor_sync(0xffffffffu, g, off);
    u += __shfl_xor_sync(0xffffffffu, u, off);
  }
  if (lane == 0) h[pos * p.inter + j] = g / (1.0f + expf(-g)) * u;
}

// slot_out[pair, n] = h[pos] · down_e[n]
template <bool k8>
__global__ void __launch_bounds__(kWarps * 32) down_kernel(MoeExpertsParams p, const int32_t* offsets,
                                                           const int32_t* rows, const float* h, float* slot_out) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.y) * kWarps + threadIdx.x / 32;
  const int64_t pos = blockIdx.x;
  if (n >= p.hidden || pos >= offsets[p.n_experts]) return;
  const int ex = expert_of(offsets, p.n_experts, pos);
  float acc = 0.0f;
  for (int64_t j = lane; j < p.inter; j += 32)
    acc = fmaf(h[pos * p.inter + j], routed_weight<k8>(p.down, p.w_dtype, p.down_scale, ex, p.hidden, p.inter, n, j), acc);
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

// weighted: the SIMT path applies the routing weights here; the tensor-core path fused them
// into the down GEMM's epilogue (the same f32 product w · out).
__global__ void combine_kernel(MoeExpertsParams p, const float* slot_out, const float* shared, bool weighted) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.t * p.hidden) return;
  const int64_t t = i / p.hidden, n = i % p.hidden;
  float y = 0.0f;
  for (int64_t s = 0; s < p.top_k; ++s) {
    if (p.ids[t * p.top_k + s] < 0) continue;
    const float o = slot_out[(t * p.top_k + s) * p.hidden + n];
    y += weighted ? p.weights[t * p.top_k + s] * o : o;
  }
  if (shared) y += shared[i];
  p.y[i] = y;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path: prep = dispatch (block 0) + x → bf16 (the other blocks).

constexpr int kPrepThreads = 1024;
constexpr int64_t kPrepMaxExperts = kPrepThreads;  // one scan lane per expert

struct PrepArgs {
  const int32_t* ids = nullptr;
  int64_t pairs = 0, e = 0;
  int tile_rows = 16;
  bool dispatch = false;
  int32_t *counts = nullptr, *offsets = nullptr, *rows = nullptr, *tiles = nullptr, *n_tiles = nullptr;
  const float* x = nullptr;  // [n_x], n_x % 4 == 0, 16-byte aligned
  uint16_t* xb = nullptr;
  int64_t n_x = 0;
};

__device__ void dispatch_block(const PrepArgs& a) {
  __shared__ int32_t s_cnt[kPrepMaxExperts];
  __shared__ int32_t s_cur[kPrepMaxExperts];
  __shared__ int32_t s_warp[2][32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int E = static_cast<int>(a.e);
  for (int e = tid; e < E; e += kPrepThreads) s_cnt[e] = 0;
  __syncthreads();
#pragma unroll 4
  for (int64_t i = tid; i < a.pairs; i += kPrepThreads) {
    const int id = a.ids[i];
    if (id >= 0 && id < E) atomicAdd(&s_cnt[id], 1);
  }
  __syncthreads();
  // Exclusive scans of the counts and of the tiles per expert (thread e owns expert e).
  const int c = tid < E ? s_cnt[tid] : 0;
  const int tc = (c + a.tile_rows - 1) / a.tile_rows;
  int ic = c, it = tc;  // inclusive within the warp
  for (int off = 1; off < 32; off <<= 1) {
    const int vc = __shfl_up_sync(0xffffffffu, ic, off), vt = __shfl_up_sync(0xffffffffu, it, off);
    if (lane >= off) {
      ic += vc;
      it += vt;
    }
  }
  if (lane == 31) {
    s_warp[0][warp] = ic;
    s_warp[1][warp] = it;
  }
  __syncthreads();
  if (warp == 0) {
    const int w0 = s_warp[0][lane], w1 = s_warp[1][lane];
    int v0 = w0, v1 = w1;
    for (int off = 1; off < 32; off <<= 1) {
      const int u0 = __shfl_up_sync(0xffffffffu, v0, off), u1 = __shfl_up_sync(0xffffffffu, v1, off);
      if (lane >= off) {
        v0 += u0;
        v1 += u1;
      }
    }
    s_warp[0][lane] = v0 - w0;  // exclusive warp prefix
    s_warp[1][lane] = v1 - w1;
  }
  __syncthreads();
  if (tid < E) {
    const int off = ic - c + s_warp[0][warp], toff = it - tc + s_warp[1][warp];
    a.counts[tid] = c;
    a.offsets[tid] = off;
    s_cur[tid] = off;
    for (int j = 0; j < tc; ++j) {
      a.tiles[2 * (toff + j)] = tid;
      a.tiles[2 * (toff + j) + 1] = j * a.tile_rows;
    }
    if (tid == E - 1) {
      a.offsets[E] = off + c;
      *a.n_tiles = toff + tc;
    }
  }
  __syncthreads();
#pragma unroll 4
  for (int64_t i = tid; i < a.pairs; i += kPrepThreads) {
    const int id = a.ids[i];
    if (id >= 0 && id < E) a.rows[atomicAdd(&s_cur[id], 1)] = static_cast<int32_t>(i);
  }
}

__global__ void __launch_bounds__(kPrepThreads) prep_kernel(PrepArgs a) {
  if (a.dispatch && blockIdx.x == 0) {
    dispatch_block(a);
    return;
  }
  const int64_t b0 = a.dispatch ? 1 : 0, nb = gridDim.x - b0;
  const int64_t n4 = a.n_x / 4;
  for (int64_t i = (blockIdx.x - b0) * kPrepThreads + threadIdx.x; i < n4; i += nb * kPrepThreads) {
    const float4 v = reinterpret_cast<const float4*>(a.x)[i];
    reinterpret_cast<uint2*>(a.xb)[i] = make_uint2(ptx::pack_bf16(v.x, v.y), ptx::pack_bf16(v.z, v.w));
  }
}

enum class Path { kNone, kSimt, kSkinny, kTiled, kSimtFp8, kSkinnyFp8, kSimtI8, kSkinnyI8 };
constexpr int kPaths = 8;
const char* const kPathNames[kPaths] = {"none", "simt", "mma_skinny", "mma_tiled", "simt_fp8", "mma_skinny_fp8", "simt_i8", "mma_skinny_i8"};

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Routed experts: tensor cores for bf16 weights whose shapes and pointers the kernels take, when
// the scratch has the tensor-core buffers (a caller that carves MoeScratch by hand without xb /
// tiles / n_tiles gets the SIMT kernels; moe_scratch_carve provides them all).
Path routed_path(const MoeExpertsParams& p, const MoeScratch* s) {
  if (p.t * p.top_k == 0 || p.inter == 0 || p.hidden == 0 || p.n_experts == 0) return Path::kNone;
  if (w8::is_8bit(p.w_dtype)) {  // the skinny kernel at every batch size (no tiled 8-bit kernel)
    const bool mma = p.hidden % 8 == 0 && p.inter % 8 == 0 && p.n_experts <= kPrepMaxExperts && aligned16(p.x) &&
                     aligned16(p.gate_up) && aligned16(p.down) && (!s || (s->xb && s->tiles && s->n_tiles));
    const bool fp8 = p.w_dtype == DType::kFP8E4M3;
    return mma ? (fp8 ? Path::kSkinnyFp8 : Path::kSkinnyI8) : (fp8 ? Path::kSimtFp8 : Path::kSimtI8);
  }
  const bool mma = p.w_dtype == DType::kBF16 && p.hidden % 8 == 0 && p.inter % 8 == 0 &&
                   p.n_experts <= kPrepMaxExperts && aligned16(p.x) && aligned16(p.gate_up) && aligned16(p.down) &&
                   (!s || (s->xb && s->tiles && s->n_tiles));
  if (!mma) return Path::kSimt;
  // At most 8 (token, slot) pairs per expert on average: segments are short, the weights are
  // the traffic, and 16-row swap-AB tiles waste none of them.
  return p.t * p.top_k <= 8 * p.n_experts ? Path::kSkinny : Path::kTiled;
}

// Shared experts: one segment of t rows; swap-AB while t ≤ 64 (≤ 4 tiles re-reading the weights
// from L2), 128-row tiles above.
Path shared_path(const MoeExpertsParams& p, const MoeScratch* s) {
  if (!p.shared_gate_up || p.inter_shared == 0 || p.hidden == 0) return Path::kNone;
  const bool mma = p.shared_dtype == DType::kBF16 && p.hidden % 8 == 0 && p.inter_shared % 8 == 0 && aligned16(p.x) &&
                   aligned16(p.shared_gate_up) && aligned16(p.shared_down) && (!s || s->xb);
  if (!mma) return Path::kSimt;
  return p.t <= 64 ? Path::kSkinny : Path::kTiled;
}

bool skinny8(Path x) { return x == Path::kSkinnyFp8 || x == Path::kSkinnyI8; }
bool tensor_core(Path x) { return x == Path::kSkinny || x == Path::kTiled || skinny8(x); }
bool simt(Path x) { return x == Path::kSimt || x == Path::kSimtFp8 || x == Path::kSimtI8; }
int tile_rows(Path x) { return x == Path::kTiled ? moe_mma::kTiledRows : moe_mma::kSkinnyRows; }

// Tiles the grid reserves for the routed segments: each live tile holds ≥ 1 pair, and
// Σ_e ceil(c_e / R) ≤ pairs / R + (experts hit).
int64_t routed_grid_tiles(int64_t pairs, int64_t e, int rows) {
  return std::min<int64_t>(pairs, (pairs + rows - 1) / rows + std::min<int64_t>(e, pairs));
}

void run_grouped(Path path, const moe_mma::Problem* probs, int n, bool swiglu, cudaStream_t st) {
  moe_mma::Launch l;
  l.n_prob = n;
  for (int i = 0; i < n; ++i) l.prob[i] = probs[i];
  if (path == Path::kSkinny) moe_mma::grouped_skinny(l, swiglu, st);
  else if (path == Path::kSkinnyFp8) moe_mma::grouped_skinny_w8(l, DType::kFP8E4M3, swiglu, st);
  else if (path == Path::kSkinnyI8) moe_mma::grouped_skinny_w8(l, DType::kI8, swiglu, st);
  else moe_mma::grouped_tiled(l, swiglu, st);
}

void simt_routed(const MoeExpertsParams& p, const MoeScratch& s, bool w8, cudaStream_t st) {
  const int64_t pairs = p.t * p.top_k;
  DSV2_CUDA_CHECK(cudaMemsetAsync(s.counts, 0, p.n_experts * sizeof(int32_t), st));
  DSV2_CUDA_CHECK(cudaMemsetAsync(s.slot_out, 0, pairs * p.hidden * sizeof(float), st));
  DSV2_LAUNCH(count_kernel, ceil_div(pairs, 256), 256, 0, st)(p.ids, pairs, s.counts);
  DSV2_CUDA_LAUNCH_CHECK();
  DSV2_LAUNCH(scan_kernel, 1, 32, 0, st)(s.counts, p.n_experts, s.offsets, s.cursor);
  DSV2_CUDA_LAUNCH_CHECK();
  DSV2_LAUNCH(scatter_kernel, ceil_div(pairs, 256), 256, 0, st)(p.ids, pairs, s.cursor, s.rows);
  DSV2_CUDA_LAUNCH_CHECK();
  // Sized for the worst case (every pair routed): positions past offsets[E] exit at once.
  const dim3 gu_grid(static_cast<unsigned>(pairs), ceil_div(p.inter, kWarps));
  const dim3 dn_grid(static_cast<unsigned>(pairs), ceil_div(p.hidden, kWarps));
  if (w8) DSV2_LAUNCH((gate_up_kernel<true>), gu_grid, kWarps * 32, 0, st)(p, s.offsets, s.rows, s.h);
  else DSV2_LAUNCH((gate_up_kernel<false>), gu_grid, kWarps * 32, 0, st)(p, s.offsets, s.rows, s.h);
  DSV2_CUDA_LAUNCH_CHECK();
  if (w8) DSV2_LAUNCH((down_kernel<true>), dn_grid, kWarps * 32, 0, st)(p, s.offsets, s.rows, s.h, s.slot_out);
  else DSV2_LAUNCH((down_kernel<false>), dn_grid, kWarps * 32, 0, st)(p, s.offsets, s.rows, s.h, s.slot_out);
  DSV2_CUDA_LAUNCH_CHECK();
}

void simt_shared(const MoeExpertsParams& p, const MoeScratch& s, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  GemmParams g;
  g.m = p.t;
  g.n = 2 * p.inter_shared;
  g.k = p.hidden;
  g.x = p.x;
  g.w = p.shared_gate_up;
  g.w_dtype = p.shared_dtype;
  g.w_scale = p.shared_gate_up_scale;
  g.y = s.shared_gu;
  gemm(g, stream);
  DSV2_LAUNCH(silu_mul_kernel, ceil_div(p.t * p.inter_shared, 256), 256, 0, st)(s.shared_gu, p.t, p.inter_shared, s.shared_h);
  DSV2_CUDA_LAUNCH_CHECK();
  g.n = p.hidden;
  g.k = p.inter_shared;
  g.x = s.shared_h;
  g.w = p.shared_down;
  g.w_scale = p.shared_down_scale;
  g.y = s.shared_out;
  gemm(g, stream);
}

}  // namespace

const char* moe_experts_kernel_name(const MoeExpertsParams& p, const MoeScratch* s) {
  // "routed=<path> shared=<path>" for every pair (the shared experts never take an fp8 path).
  static const struct Names {
    std::string v[kPaths][kPaths];
    Names() {
      for (int r = 0; r < kPaths; ++r)
        for (int c = 0; c < kPaths; ++c) v[r][c] = std::string("routed=") + kPathNames[r] + " shared=" + kPathNames[c];
    }
  } names;
  return names.v[static_cast<int>(routed_path(p, s))][static_cast<int>(shared_path(p, s))].c_str();
}

void moe_experts(const MoeExpertsParams& p, const MoeScratch& s, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (p.t == 0) return;
  const int64_t pairs = p.t * p.top_k;
  const Path rp = routed_path(p, &s), sp = shared_path(p, &s);
  const bool rtc = tensor_core(rp), stc = tensor_core(sp);

  if (rtc || stc) {
    PrepArgs a;
    a.ids = p.ids;
    a.pairs = pairs;
    a.e = p.n_experts;
    a.tile_rows = tile_rows(rp);
    a.dispatch = rtc;
    a.counts = s.counts;
    a.offsets = s.offsets;
    a.rows = s.rows;
    a.tiles = s.tiles;
    a.n_tiles = s.n_tiles;
    a.x = p.x;
    a.xb = s.xb;
    a.n_x = p.t * p.hidden;  // hidden % 8 == 0 on this path
    const int64_t conv_blocks = std::min<int64_t>(ceil_div(a.n_x / 4, kPrepThreads), 1024);
    DSV2_LAUNCH(prep_kernel, static_cast<unsigned>((rtc ? 1 : 0) + std::max<int64_t>(conv_blocks, 1)), kPrepThreads, 0, st)(a);
    DSV2_CUDA_LAUNCH_CHECK();
  }
  if (simt(rp)) simt_routed(p, s, rp != Path::kSimt, st);

  // Tensor-core problems: routed gate+up / down over the tile table, shared over all t rows.
  uint16_t* hb = reinterpret_cast<uint16_t*>(s.h);          // bf16 [pairs, inter] in the f32 buffer
  uint16_t* shb = reinterpret_cast<uint16_t*>(s.shared_h);  // bf16 [t, inter_shared]
  moe_mma::Problem gu[2], dn[2];
  if (rtc) {
    moe_mma::Problem g;
    g.w = static_cast<const uint16_t*>(p.gate_up);
    g.w_stride = 2 * p.inter * p.hidden;
    g.n = p.inter;
    g.k = p.hidden;
    g.tiles = s.tiles;
    g.n_tiles = s.n_tiles;
    g.offsets = s.offsets;
    g.grid_tiles = routed_grid_tiles(pairs, p.n_experts, tile_rows(rp));
    g.a = s.xb;
    g.a_rows = s.rows;
    g.a_div = static_cast<int32_t>(p.top_k);
    g.h = hb;
    moe_mma::Problem d = g;
    d.w = static_cast<const uint16_t*>(p.down);
    d.w_stride = p.hidden * p.inter;
    d.n = p.hidden;
    d.k = p.inter;
    d.a = hb;
    d.a_rows = nullptr;
    d.a_div = 1;
    d.h = nullptr;
    d.out = s.slot_out;
    d.o_rows = s.rows;
    d.o_scale = p.weights;
    if (skinny8(rp)) {  // 8-bit codes (w_stride counts codes) + block scales
      auto blocks = [](int64_t n) { return (n + kMoeFp8Block - 1) / kMoeFp8Block; };
      g.w8 = static_cast<const uint8_t*>(p.gate_up);
      g.w_scale = p.gate_up_scale;
      g.scale_stride = blocks(2 * p.inter) * blocks(p.hidden);
      d.w8 = static_cast<const uint8_t*>(p.down);
      d.w_scale = p.down_scale;
      d.scale_stride = blocks(p.hidden) * blocks(p.inter);
    }
    gu[0] = g;
    dn[0] = d;
  }
  moe_mma::Problem sg, sd;
  if (stc) {
    sg.w = static_cast<const uint16_t*>(p.shared_gate_up);
    sg.n = p.inter_shared;
    sg.k = p.hidden;
    sg.m = p.t;
    sg.grid_tiles = ceil_div(p.t, tile_rows(sp));
    sg.a = s.xb;
    sg.h = shb;
    sd = sg;
    sd.w = static_cast<const uint16_t*>(p.shared_down);
    sd.n = p.hidden;
    sd.k = p.inter_shared;
    sd.a = shb;
    sd.h = nullptr;
    sd.out = s.shared_out;
  }
  if (rtc && stc && rp == sp) {  // one launch per GEMM for both parts
    gu[1] = sg;
    dn[1] = sd;
    run_grouped(rp, gu, 2, true, st);
    run_grouped(rp, dn, 2, false, st);
  } else {
    if (rtc) {
      run_grouped(rp, gu, 1, true, st);
      run_grouped(rp, dn, 1, false, st);
    }
    if (stc) {
      run_grouped(sp, &sg, 1, true, st);
      run_grouped(sp, &sd, 1, false, st);
    }
  }
  if (sp == Path::kSimt) simt_shared(p, s, stream);

  if (p.t * p.hidden == 0) return;
  const bool routed = rp != Path::kNone;
  if (!routed && pairs > 0) {  // nothing computed per slot (inter or hidden 0, or no experts): zeros
    DSV2_CUDA_CHECK(cudaMemsetAsync(s.slot_out, 0, pairs * p.hidden * sizeof(float), st));
  }
  DSV2_LAUNCH(combine_kernel, ceil_div(p.t * p.hidden, 256), 256, 0, st)(p, s.slot_out, sp == Path::kNone ? nullptr : s.shared_out,
                                                                simt(rp) || !routed);
  DSV2_CUDA_LAUNCH_CHECK();
}

namespace {
__global__ void fill_kernel(void* p, DType t, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + static_cast<uint64_t>(i + 1) * 0x9E3779B97F4A7C15ull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float v = scale * (static_cast<float>(z >> 40) * 0x1.0p-23f - 1.0f);  // [-scale, scale)
    if (t == DType::kF32) static_cast<float*>(p)[i] = v;
    else if (t == DType::kFP8E4M3) static_cast<uint8_t*>(p)[i] = f32_to_e4m3(v);
    else if (t == DType::kI8) static_cast<int8_t*>(p)[i] = static_cast<int8_t>(fmaxf(-127.0f, fminf(127.0f, rintf(v))));
    else static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
  }
}
}  // namespace

void moe_bench_fill(void* p, DType t, int64_t n, uint64_t seed, float scale, void* stream) {
  DSV2_CHECK(t == DType::kF32 || t == DType::kBF16 || t == DType::kFP8E4M3 || t == DType::kI8, kUnsupported,
             "moe_bench_fill: f32, bf16, fp8_e4m3 or i8 only");
  if (n == 0) return;
  DSV2_LAUNCH(fill_kernel, std::min<unsigned>(ceil_div(n, 256), 8192), 256, 0, static_cast<cudaStream_t>(stream))(p, t, n, seed, scale);
  DSV2_CUDA_LAUNCH_CHECK();
}

namespace {
size_t align256(size_t b) { return (b + 255) / 256 * 256; }
template <class F>
void scratch_layout(const MoeExpertsParams& m, F&& take) {
  const int64_t pairs = std::max<int64_t>(1, m.t * m.top_k), t = std::max<int64_t>(1, m.t);
  const int64_t e = std::max<int64_t>(1, m.n_experts), is = std::max<int64_t>(1, m.inter_shared);
  take(0, e * 4);
  take(1, (e + 1) * 4);
  take(2, e * 4);
  take(3, pairs * 4);
  take(4, std::max<int64_t>(1, pairs * m.inter) * 4);
  take(5, std::max<int64_t>(1, pairs * m.hidden) * 4);
  take(6, t * 2 * is * 4);
  take(7, t * is * 4);
  take(8, std::max<int64_t>(1, t * m.hidden) * 4);
  take(9, std::max<int64_t>(1, t * m.hidden) * 2);
  take(10, 2 * pairs * 4);
  take(11, 4);
}
}  // namespace

size_t moe_scratch_bytes(const MoeExpertsParams& max_shape) {
  size_t total = 0;
  scratch_layout(max_shape, [&](int, int64_t bytes) { total += align256(static_cast<size_t>(bytes)); });
  return total;
}

MoeScratch moe_scratch_carve(void* base, const MoeExpertsParams& max_shape) {
  MoeScratch s;
  char* at = static_cast<char*>(base);
  void* parts[12];
  scratch_layout(max_shape, [&](int i, int64_t bytes) {
    parts[i] = at;
    at += align256(static_cast<size_t>(bytes));
  });
  s.counts = static_cast<int32_t*>(parts[0]);
  s.offsets = static_cast<int32_t*>(parts[1]);
  s.cursor = static_cast<int32_t*>(parts[2]);
  s.rows = static_cast<int32_t*>(parts[3]);
  s.h = static_cast<float*>(parts[4]);
  s.slot_out = static_cast<float*>(parts[5]);
  s.shared_gu = static_cast<float*>(parts[6]);
  s.shared_h = static_cast<float*>(parts[7]);
  s.shared_out = static_cast<float*>(parts[8]);
  s.xb = static_cast<uint16_t*>(parts[9]);
  s.tiles = static_cast<int32_t*>(parts[10]);
  s.n_tiles = static_cast<int32_t*>(parts[11]);
  return s;
}

}  // namespace dsv2::cuda
