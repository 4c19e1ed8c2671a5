// Kernels of the native model engine (see model_ops.h): column copies, residual add + RMSNorm,
// per-head projections and on-device sampling.
#include <cfloat>
#include <cstdint>

#include "common.cuh"
#include "model_ops.h"
#include "../core/dtype.h"

namespace dsv2::cuda {
namespace {

__global__ void copy_cols_kernel(model::CopyColsParams p) {
  const int64_t n = p.rows * p.width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.width, c = i % p.width;
    p.dst[r * p.dst_stride + p.dst_col + c] = p.src[r * p.src_stride + p.src_col + c];
  }
}

constexpr int kNormThreads = 256;

// One block per row: x += delta, then y = x · rsqrt(mean(x²) + eps) · w (f32 statistics).
__global__ void __launch_bounds__(kNormThreads) add_rms_norm_kernel(model::AddRmsNormParams p) {
  __shared__ float part[kNormThreads / 32];
  const int64_t r = blockIdx.x;
  float* x = p.x + r * p.dim;
  const float* d = p.delta ? p.delta + r * p.dim : nullptr;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) {
    float v = x[j];
    if (d) {
      v += d[j];
      x[j] = v;
    }
    ss = fmaf(v, v, ss);
  }
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  float tot = 0.0f;
  for (int i = 0; i < kNormThreads / 32; ++i) tot += part[i];
  const float inv = rsqrtf(tot / static_cast<float>(p.dim) + p.eps);
  for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) p.y[r * p.dim + j] = load_weight(p.w, p.w_dtype, j) * (x[j] * inv);
}

constexpr int kHeadsWarps = 8;
constexpr int kHeadsRows = 8;

// grid (ceil(n / kHeadsWarps), h): warp w of a block computes column n0 + w of head h for
// every row t, kHeadsRows rows per pass over the weight row (read coalesced along k).
__global__ void __launch_bounds__(kHeadsWarps * 32) heads_gemm_kernel(HeadsGemmParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t h = blockIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kHeadsWarps + threadIdx.x / 32;
  if (n >= p.n) return;
  const int64_t wrow = (h * p.n + n) * p.k;
  for (int64_t t0 = 0; t0 < p.t; t0 += kHeadsRows) {
    float acc[kHeadsRows];
#pragma unroll
    for (int u = 0; u < kHeadsRows; ++u) acc[u] = 0.0f;
    for (int64_t k = lane; k < p.k; k += 32) {
      const float w = load_weight(p.w, p.w_dtype, wrow + k);
#pragma unroll
      for (int u = 0; u < kHeadsRows; ++u)
        if (t0 + u < p.t) acc[u] = fmaf(p.x[((t0 + u) * p.h + h) * p.k + k], w, acc[u]);
    }
#pragma unroll
    for (int u = 0; u < kHeadsRows; ++u) {
      float v = acc[u];
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && t0 + u < p.t) p.y[((t0 + u) * p.h + h) * p.n + n] = v;
    }
  }
}

__global__ void fill_random_kernel(model::FillRandomParams p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // model::random_value(seed, i, mean, std) with its final add rounded on its own: nvcc fuses
    // mean + a·b into one FMA (the host compiler does not), which changed the last bit of every
    // weight with mean != 0 (the norms). With mean 0 the fused form is the rounded product.
    const float v = __fadd_rn(p.mean, model::random_value(p.seed, i, 0.0f, p.std));
    if (p.dtype == DType::kF32) static_cast<float*>(p.data)[i] = v;
    else static_cast<uint16_t*>(p.data)[i] = f32_to_bf16(v);
  }
}

// ---- sampling ---------------------------------------------------------------------------
constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Monotonic map of a float to an unsigned key (larger float, larger key; -0 and +0 are one
// key, as they compare equal: the CPU op orders them by id).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t b = f == 0.0f ? 0u : __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct SampleShared {
  double dsum[kSampleWarps];
  long long cnt[kSampleWarps];
  float best[kSampleWarps];
  int best_id[kSampleWarps];
  double scan[kSampleThreads];
  double total;
  int found;
};

__device__ double block_sum(double v, SampleShared& s) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.dsum[threadIdx.x / 32] = v;
  __syncthreads();
  double r = 0;
  for (int i = 0; i < kSampleWarps; ++i) r += s.dsum[i];
  return r;
}

__device__ long long block_count(long long v, SampleShared& s) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();
  if (threadIdx.x % 32 == 0) s.cnt[threadIdx.x / 32] = v;
  __syncthreads();
  long long r = 0;
  for (int i = 0; i < kSampleWarps; ++i) r += s.cnt[i];
  return r;
}

// Row-wise state of the kept set: key > k1 || (key == k1 && id <= i1) for top-k (all when
// k_all), and the same with (k2, i2) for top-p.
struct Kept {
  bool k_all = true, p_all = true;
  uint32_t k1 = 0, k2 = 0;
  int64_t i1 = 0, i2 = 0;
  __device__ bool in_k(uint32_t key, int64_t id) const { return k_all || key > k1 || (key == k1 && id <= i1); }
  __device__ bool in(uint32_t key, int64_t id) const {
    return in_k(key, id) && (p_all || key > k2 || (key == k2 && id <= i2));
  }
};

__global__ void __launch_bounds__(kSampleThreads) sample_kernel(model::SampleBatchParams p) {
  __shared__ SampleShared s;
  const int64_t r = blockIdx.x;
  const float* l = p.logits + r * p.vocab;
  const int64_t V = p.vocab;
  // 1. max (lowest id on ties) and the bad-value check.
  float best = -INFINITY;
  int best_id = INT32_MAX;
  long long bad = 0;
  for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) {
    const float v = l[i];
    if (v != v || v == INFINITY) bad = 1;
    if (v > best || (v == best && i < best_id)) best = v, best_id = static_cast<int>(i);
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, off);
    const int oi = __shfl_xor_sync(0xffffffffu, best_id, off);
    if (ob > best || (ob == best && oi < best_id)) best = ob, best_id = oi;
  }
  if (threadIdx.x % 32 == 0) s.best[threadIdx.x / 32] = best, s.best_id[threadIdx.x / 32] = best_id;
  bad = block_count(bad, s);  // its barriers also publish s.best
  best = s.best[0];
  best_id = s.best_id[0];
  for (int i = 1; i < kSampleWarps; ++i)
    if (s.best[i] > best || (s.best[i] == best && s.best_id[i] < best_id)) best = s.best[i], best_id = s.best_id[i];
  if (bad || best == -INFINITY || best_id == INT32_MAX) {
    if (threadIdx.x == 0) {
      p.out[r] = -1;
      // bad[0] = 1 + the LOWEST bad row (as the CPU backend; blocks run in any order).
      const int row1 = static_cast<int>(r + 1);
      int cur = 0;
      for (int prev; cur == 0 || cur > row1; cur = prev)
        if ((prev = atomicCAS(p.bad, cur, row1)) == cur) break;
    }
    return;
  }
  if (p.temperature == 0.0) {
    if (threadIdx.x == 0) p.out[r] = best_id;
    return;
  }
  const double mx = best, T = p.temperature;
  auto weight = [&](float v) { return exp((static_cast<double>(v) - mx) / T); };
  Kept kept;
  // 2. top-k: the k-th element in (key desc, id asc) order, by bisection on the key, then on the id.
  if (p.top_k > 0 && p.top_k < V) {
    uint32_t lo = 0, hi = 0xFFFFFFFFu;  // the largest key K with count(key >= K) >= k lies in [lo, hi]
    while (lo < hi) {
      const uint32_t mid = hi - (hi - lo) / 2;  // in (lo, hi]; (hi - lo + 1) would wrap to 0
      long long c = 0;
      for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) c += order_key(l[i]) >= mid;
      if (block_count(c, s) >= p.top_k) lo = mid;
      else hi = mid - 1;
    }
    const uint32_t K = lo;
    long long gt = 0;
    for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) gt += order_key(l[i]) > K;
    const long long need = p.top_k - block_count(gt, s);  // >= 1 elements with key == K, lowest ids
    int64_t ilo = 0, ihi = V - 1;  // smallest id I with count(key == K && id <= I) >= need
    while (ilo < ihi) {
      const int64_t mid = ilo + (ihi - ilo) / 2;
      long long c = 0;
      for (int64_t i = threadIdx.x; i <= mid; i += kSampleThreads) c += order_key(l[i]) == K;
      if (block_count(c, s) >= need) ihi = mid;
      else ilo = mid + 1;
    }
    kept.k_all = false;
    kept.k1 = K;
    kept.i1 = ilo;
  }
  // 3. top-p over the top-k set: the shortest prefix whose mass reaches top_p · total.
  if (p.top_p < 1.0) {
    double tot = 0;
    for (int64_t i = threadIdx.x; i < V; i += kSampleThreads)
      if (kept.in_k(order_key(l[i]), i)) tot += weight(l[i]);
    const double goal = p.top_p * block_sum(tot, s);
    uint32_t lo = 0, hi = 0xFFFFFFFFu;  // the largest key K with mass(key >= K) >= goal
    while (lo < hi) {
      const uint32_t mid = hi - (hi - lo) / 2;  // in (lo, hi]; (hi - lo + 1) would wrap to 0
      double m = 0;
      for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) {
        const uint32_t key = order_key(l[i]);
        if (key >= mid && kept.in_k(key, i)) m += weight(l[i]);
      }
      if (block_sum(m, s) >= goal) lo = mid;
      else hi = mid - 1;
    }
    const uint32_t K = lo;
    double gt = 0;
    long long eq = 0;
    for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) {
      const uint32_t key = order_key(l[i]);
      if (!kept.in_k(key, i)) continue;
      if (key > K) gt += weight(l[i]);
      else if (key == K) ++eq;
    }
    gt = block_sum(gt, s);
    eq = block_count(eq, s);
    // Every element with key K has the same value; recover it from the key.
    const uint32_t kb = (K & 0x80000000u) ? (K & 0x7FFFFFFFu) : ~K;
    const double w = weight(__uint_as_float(kb));
    const double need_f = w > 0 ? ceil((goal - gt) / w) : static_cast<double>(eq);  // clamped before the cast
    const long long need = need_f >= static_cast<double>(eq) ? eq : max(1ll, static_cast<long long>(need_f));
    int64_t ilo = 0, ihi = V - 1;
    while (ilo < ihi) {
      const int64_t mid = ilo + (ihi - ilo) / 2;
      long long c = 0;
      for (int64_t i = threadIdx.x; i <= mid; i += kSampleThreads) {
        const uint32_t key = order_key(l[i]);
        c += key == K && kept.in_k(key, i);
      }
      if (block_count(c, s) >= need) ihi = mid;
      else ilo = mid + 1;
    }
    kept.p_all = false;
    kept.k2 = K;
    kept.i2 = ilo;
  }
  // 4. The draw: the first kept id (ascending) whose cumulative weight exceeds u · total.
  // Thread t holds ids [b0, b1). The prefix sums over the threads are sequential (lane 0 of each
  // warp over its 32 threads, then thread 0 over the warps), so thread t's interval [lo, hi) of
  // the cumulative weight starts exactly where thread t - 1's ends: the intervals partition
  // [0, total) and exactly one thread holds the target (none when u · total rounds to total).
  // (A tree scan gives neighbours boundaries an ulp apart: a target in such a gap or overlap
  // fell to the last kept id or to whichever thread won a race.)
  const int64_t chunk = (V + kSampleThreads - 1) / kSampleThreads;
  const int64_t b0 = min(V, threadIdx.x * chunk), b1 = min(V, b0 + chunk);
  double mine = 0;
  long long last = -1;
  for (int64_t i = b0; i < b1; ++i)
    if (kept.in(order_key(l[i]), i)) mine += weight(l[i]), last = i;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  s.scan[threadIdx.x] = mine;
  __syncthreads();
  if (lane == 0) {  // inclusive prefix over the warp's threads, in order
    double run = 0;
    for (int j = 0; j < 32; ++j) s.scan[threadIdx.x + j] = run += s.scan[threadIdx.x + j];
    s.dsum[warp] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // exclusive prefix over the warps, in order
    double run = 0;
    for (int j = 0; j < kSampleWarps; ++j) {
      const double t = s.dsum[j];
      s.dsum[j] = run;
      run += t;
    }
    s.total = run;
    s.found = 0;
  }
  __syncthreads();
  const double base = s.dsum[warp];
  const double hi = base + s.scan[threadIdx.x];
  const double lo = lane ? base + s.scan[threadIdx.x - 1] : base;  // the previous thread's hi, bit for bit
  const uint64_t z = splitmix64(p.seeds[r] + 0x9E3779B97F4A7C15ull);  // row 0 of a one-row call
  const double target = static_cast<double>(z >> 11) * 0x1.0p-53 * s.total;
  if (lo <= target && target < hi) {  // hi > lo: this range holds a kept id (last >= 0)
    double cum = lo;
    int64_t pick = last;  // if re-adding falls just short of the target: this range's last kept id
    for (int64_t i = b0; i < b1; ++i) {
      if (!kept.in(order_key(l[i]), i)) continue;
      cum += weight(l[i]);
      if (cum > target) {
        pick = i;
        break;
      }
    }
    p.out[r] = static_cast<int32_t>(pick);
    s.found = 1;
  }
  __syncthreads();
  // u · total rounded to total (no thread holds the target): the last kept id, as the CPU op.
  long long lmax = last;
  for (int off = 16; off > 0; off >>= 1) lmax = max(lmax, __shfl_xor_sync(0xffffffffu, lmax, off));
  if (threadIdx.x % 32 == 0) s.cnt[threadIdx.x / 32] = lmax;
  __syncthreads();
  if (threadIdx.x == 0 && s.found == 0) {
    long long m = -1;
    for (int i = 0; i < kSampleWarps; ++i) m = max(m, s.cnt[i]);
    p.out[r] = static_cast<int32_t>(m >= 0 ? m : best_id);
  }
}

}  // namespace

void copy_cols(const model::CopyColsParams& p, void* stream) {
  const int64_t n = p.rows * p.width;
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
  copy_cols_kernel<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void add_rms_norm(const model::AddRmsNormParams& p, void* stream) {
  if (p.rows == 0) return;
  DSV2_CHECK(p.rows <= 2147483647, kUnsupported, "CUDA add_rms_norm: " << p.rows << " rows exceed the grid");
  add_rms_norm_kernel<<<static_cast<unsigned>(p.rows), kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void heads_gemm(const HeadsGemmParams& p, void* stream) {
  if (p.t == 0 || p.h == 0 || p.n == 0) return;
  DSV2_CHECK(p.h <= 65535, kUnsupported, "CUDA heads_gemm: " << p.h << " heads exceed the grid");
  const dim3 grid(ceil_div(p.n, kHeadsWarps), static_cast<unsigned>(p.h));
  heads_gemm_kernel<<<grid, kHeadsWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void fill_random(const model::FillRandomParams& p, void* stream) {
  if (p.n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((p.n + 255) / 256, 8192));
  fill_random_kernel<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void graph_capture_begin(void* stream) {
  DSV2_CUDA_CHECK(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeRelaxed));
}

void* graph_capture_end(void* stream) noexcept {
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph);
  if (err != cudaSuccess || graph == nullptr) {
    cudaGetLastError();  // capture errors are not sticky: clear and let the caller run eagerly
    if (graph) cudaGraphDestroy(graph);
    return nullptr;
  }
  cudaGraphExec_t exec = nullptr;
  err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return exec;
}

void graph_launch(void* exec, void* stream) {
  DSV2_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), static_cast<cudaStream_t>(stream)));
}

void graph_destroy(void* exec) noexcept {
  if (exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}

void provoke_launch_error(void* stream) {
  model::CopyColsParams p;  // nothing to copy: only the launch configuration is wrong
  copy_cols_kernel<<<1, 4096, 0, static_cast<cudaStream_t>(stream)>>>(p);  // > 1024 threads per block
  DSV2_CUDA_LAUNCH_CHECK();
}

void sample(const model::SampleBatchParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DSV2_CUDA_CHECK(cudaMemsetAsync(p.bad, 0, sizeof(int32_t), s));
  if (p.rows == 0) return;
  DSV2_CHECK(p.vocab >= 1 && p.vocab <= 2147483647, kUnsupported, "CUDA sample: vocab " << p.vocab);
  sample_kernel<<<static_cast<unsigned>(p.rows), kSampleThreads, 0, s>>>(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
