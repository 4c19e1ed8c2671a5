// Kernels of the native model engine (see model_ops.h): column copies, residual add + RMSNorm,
// per-head projections and on-device sampling.
#include <cfloat>
#include <cstdint>

#include "common.cuh"
#include "model_ops.h"
#include "../core/dtype.h"

namespace dsv2::cuda {
namespace {

__global__ void copy_cols_kernel(CopyColsParams p) {
  const int64_t n = p.rows * p.width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.width, c = i % p.width;
    p.dst[r * p.dst_stride + p.dst_col + c] = p.src[r * p.src_stride + p.src_col + c];
  }
}

constexpr int kNormThreads = 256;

// One block per row: x += delta, then y = x · rsqrt(mean(x²) + eps) · w (f32 statistics).
__global__ void __launch_bounds__(kNormThreads) add_rms_norm_kernel(AddRmsNormParams p) {
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
  const int64_t xs = p.x_stride ? p.x_stride : p.k, ys = p.y_stride ? p.y_stride : p.n;
  for (int64_t t0 = 0; t0 < p.t; t0 += kHeadsRows) {
    float acc[kHeadsRows];
#pragma unroll
    for (int u = 0; u < kHeadsRows; ++u) acc[u] = 0.0f;
    for (int64_t k = lane; k < p.k; k += 32) {
      const float w = load_weight(p.w, p.w_dtype, wrow + k);
#pragma unroll
      for (int u = 0; u < kHeadsRows; ++u)
        if (t0 + u < p.t) acc[u] = fmaf(p.x[((t0 + u) * p.h + h) * xs + k], w, acc[u]);
    }
#pragma unroll
    for (int u = 0; u < kHeadsRows; ++u) {
      float v = acc[u];
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && t0 + u < p.t) p.y[((t0 + u) * p.h + h) * ys + n] = v;
    }
  }
}

__global__ void fill_random_kernel(FillRandomParams p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // random_value(seed, i, mean, std) with its final add rounded on its own: nvcc fuses
    // mean + a·b into one FMA (the host compiler does not), which changed the last bit of every
    // weight with mean != 0 (the norms). With mean 0 the fused form is the rounded product.
    const float v = __fadd_rn(p.mean, random_value(p.seed, i, 0.0f, p.std));
    if (p.dtype == DType::kF32) static_cast<float*>(p.data)[i] = v;
    else static_cast<uint16_t*>(p.data)[i] = f32_to_bf16(v);
  }
}

// ---- sampling ---------------------------------------------------------------------------
// sample_kernel: one 1024-thread block per row draws exactly the token that the CPU op's
// definition (SampleParams in dense.h, cpu/sample.cc) gives, up to the order of double sums.
// Reads of the row per sampled token (V = vocab; a pass reads the whole row from L2):
//   max + bad-value check                 1
//   top-k boundary key (radix select)     <= 4  (none for k = 1; stops once a digit's bins are exact)
//   top-k tie cut by id                   1, only when some tokens equal to the boundary are cut
//   top-p total + first digit             1     (the one pass taking exp of every kept-by-k token)
//   top-p digits 2-4                      3     (exp only for kept tokens inside the prefix so far)
//   top-p check of the boundary           1     (+ <= 32 in the rare fallback, see step 3)
//   top-p tie cut by id                   1, only when needed
//   draw                                  1     (+ one thread's chunk again)
// At most 13 (before this radix select, ~103 at V = 102 400: top-k and top-p each bisected the
// 32-bit key (32 passes), summed above it (1) and bisected the ids of the boundary key (17)).
// The radix select finds the boundary key 8 bits at a time, most significant first: a pass
// histograms the next digit of the keys that share the digits chosen so far, in 32 copies of
// the 256 bins (lane c of every warp adds into copy c, so no two lanes of one atomic
// instruction hit one address even when most keys share a digit), and one warp picks the
// largest digit whose bins plus everything above them still reach the threshold. Top-k
// counts; top-p sums fixed-point masses (step 3). All histogram sums are integers: the same
// result whatever the order of the atomics.
constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kHistStride = 257;  // copy c's bin b sits in bank (c + b) % 32
constexpr int kHistWords = 32 * kHistStride;

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
  union {
    double scan[kSampleThreads];                // the draw
    unsigned long long part[kSampleThreads];    // radix: 4 partial sums per bin
  };
  unsigned long long bins[256];                 // radix: the pass's total per bin
  unsigned hist[kHistWords];                    // radix: 32 copies of 256 bins (all zero between passes)
  unsigned long long r_above, r_eq;             // radix decision: mass/count above the digit, in it
  int64_t cut;                                  // nth_match's answer
  double total;
  uint32_t r_digit;
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

// Radix histograms. Counts: +1 in copy `lane`. Masses (64-bit fixed point): the low 32 bits in
// copies 0-15, the high bits plus the carry out of the low word in copies 16-31 (copy lane % 16),
// so the two words of a bin always add up to the exact 64-bit sum.
__device__ __forceinline__ void hist_count(SampleShared& s, uint32_t b) {
  atomicAdd(&s.hist[(threadIdx.x % 32) * kHistStride + b], 1u);
}
__device__ __forceinline__ void hist_mass(SampleShared& s, uint32_t b, unsigned long long x) {
  const int c = threadIdx.x % 16;
  const unsigned lo = static_cast<unsigned>(x), hi = static_cast<unsigned>(x >> 32);
  const unsigned old = lo ? atomicAdd(&s.hist[c * kHistStride + b], lo) : 0u;
  const unsigned h = hi + (old + lo < old ? 1u : 0u);
  if (h) atomicAdd(&s.hist[(16 + c) * kHistStride + b], h);
}

// After a radix pass (every thread calls it): the largest digit b with
// above + sum(bins[b..255]) >= thr, into s.r_digit, with s.r_above = above + sum(bins[b+1..255])
// and s.r_eq = bins[b] (digit 0 if none reaches thr). Clears the histogram for the next pass.
__device__ void radix_digit(SampleShared& s, bool mass, unsigned long long above, double thr) {
  __syncthreads();  // the pass's atomics are done
  {
    const int b = threadIdx.x % 256, g = threadIdx.x / 256;
    unsigned long long v = 0;
    if (mass)
      for (int c = 4 * g; c < 4 * g + 4; ++c)
        v += s.hist[c * kHistStride + b] + (static_cast<unsigned long long>(s.hist[(16 + c) * kHistStride + b]) << 32);
    else
      for (int c = 8 * g; c < 8 * g + 8; ++c) v += s.hist[c * kHistStride + b];
    s.part[threadIdx.x] = v;
  }
  __syncthreads();
  if (threadIdx.x < 256)
    s.bins[threadIdx.x] = s.part[threadIdx.x] + s.part[threadIdx.x + 256] + s.part[threadIdx.x + 512] + s.part[threadIdx.x + 768];
  for (int i = threadIdx.x; i < kHistWords; i += kSampleThreads) s.hist[i] = 0;
  __syncthreads();
  if (threadIdx.x < 32) {  // lane j: bins 255 - 8j down to 248 - 8j
    const int lane = threadIdx.x;
    unsigned long long own = 0;
    for (int q = 0; q < 8; ++q) own += s.bins[255 - 8 * lane - q];
    unsigned long long inc = own;  // inclusive sum from bin 255 down to this lane's last bin
    for (int off = 1; off < 32; off <<= 1) {
      const unsigned long long o = __shfl_up_sync(0xffffffffu, inc, off);
      if (lane >= off) inc += o;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, static_cast<double>(above + inc) >= thr);
    if (hit == 0 && lane == 31) {
      s.r_digit = 0;
      s.r_eq = s.bins[0];
      s.r_above = above + inc - s.bins[0];
    } else if (hit != 0 && lane == __ffs(hit) - 1) {
      unsigned long long cum = above + inc - own;
      for (int q = 0; q < 8; ++q) {
        const int b = 255 - 8 * lane - q;
        const unsigned long long h = s.bins[b];
        if (q == 7 || static_cast<double>(cum + h) >= thr) {  // q == 7: cum + h is above + inc
          s.r_digit = static_cast<uint32_t>(b);
          s.r_eq = h;
          s.r_above = cum;
          break;
        }
        cum += h;
      }
    }
  }
  __syncthreads();
}

// The id of the need-th (1 <= need <= number of matches) id, ascending, with match(key, id):
// a block-wide prefix count over contiguous chunks of ids, then one thread walks its chunk.
template <class Match>
__device__ int64_t nth_match(const float* l, int64_t V, long long need, const Match& match, SampleShared& s) {
  const int64_t chunk = (V + kSampleThreads - 1) / kSampleThreads;
  const int64_t b0 = min(V, threadIdx.x * chunk), b1 = min(V, b0 + chunk);
  long long c = 0;
  for (int64_t i = b0; i < b1; ++i) c += match(order_key(l[i]), i);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  long long inc = c;
  for (int off = 1; off < 32; off <<= 1) {
    const long long o = __shfl_up_sync(0xffffffffu, inc, off);
    if (lane >= off) inc += o;
  }
  __syncthreads();  // earlier readers of s.cnt are done
  if (lane == 31) s.cnt[warp] = inc;
  __syncthreads();
  long long before = inc - c;
  for (int w = 0; w < warp; ++w) before += s.cnt[w];
  if (before < need && need <= before + c) {
    long long left = need - before;
    for (int64_t i = b0; i < b1; ++i)
      if (match(order_key(l[i]), i) && --left == 0) {
        s.cut = i;
        break;
      }
  }
  __syncthreads();
  return s.cut;
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

__global__ void __launch_bounds__(kSampleThreads) sample_kernel(SampleBatchParams p) {
  __shared__ SampleShared s;
  const int64_t r = blockIdx.x;
  const float* l = p.logits + r * p.vocab;
  const int64_t V = p.vocab;
  for (int i = threadIdx.x; i < kHistWords; i += kSampleThreads) s.hist[i] = 0;  // published by block_count's barriers
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
  // 2. top-k: the k-th element in (key desc, id asc) order: K = the largest key with
  // count(key >= K) >= k (a radix select on exact counts), then the lowest need = k - count(key > K)
  // ids of key K.
  if (p.top_k == 1) {  // the max, lowest id first: what the select below finds, without reading the row
    kept.k_all = false;
    kept.k1 = order_key(best);
    kept.i1 = best_id;
  } else if (p.top_k > 0 && p.top_k < V) {
    uint32_t prefix = 0;  // the digits chosen so far
    unsigned long long above = 0, eq = 0;
    int shift = 24;
    for (;; shift -= 8) {
      const uint32_t hmask = shift == 24 ? 0u : 0xFFFFFFFFu << (shift + 8);
      const uint32_t hbits = shift == 24 ? 0u : prefix << (shift + 8);
      for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) {
        const uint32_t key = order_key(l[i]);
        if ((key & hmask) == hbits) hist_count(s, (key >> shift) & 255u);
      }
      radix_digit(s, false, above, static_cast<double>(p.top_k));  // exact: counts < 2^53
      prefix = (prefix << 8) | s.r_digit;
      above = s.r_above;
      eq = s.r_eq;
      // Every key of this digit is kept (or the last digit is done): key >= prefix · 2^shift.
      if (shift == 0 || above + eq == static_cast<unsigned long long>(p.top_k)) break;
    }
    kept.k_all = false;
    kept.k1 = prefix << shift;
    const long long need = p.top_k - static_cast<long long>(above);  // in [1, eq]
    kept.i1 = V - 1;
    if (need < static_cast<long long>(eq)) {  // shift == 0 here: K = prefix is a whole key
      const uint32_t K = prefix;
      kept.i1 = nth_match(l, V, need, [K](uint32_t key, int64_t) { return key == K; }, s);
    }
  }
  // 3. top-p over the top-k set: the shortest prefix whose mass reaches goal = top_p · total.
  // As with the bisection this replaces, K is the largest key with f(K) >= goal, where f(K) is
  // the block_sum-shaped sum (thread t adds ids t, t + 1024, ... in order, then block_sum) of the
  // kept-by-k weights with key >= K. f is monotone (rounding is), so K is the one key with
  // f(K) >= goal > f(K + 1) (or K = 0xFFFFFFFF with f(K) = 0 >= goal: never, as top_p > 0).
  // The radix select finds a candidate from exact integer sums of the weights rounded to 2^-S
  // (S = clz(V): weights are <= 1, so V · 2^S < 2^64 cannot overflow); one pass then checks it
  // with f itself (and yields f(K + 1) and the count of key K, which the tie step needs anyway).
  // The candidate is off only when goal lies within the fixed-point error (< V · 2^-(S+1) in
  // weight units, 4e-10 at V = 102 400, ~1e-12 typically; the total is >= 1) of f at some key —
  // then the old bisection with f, on the side the check points to, finds K. Either way K is the
  // key the bisection alone gave, bit for bit, and so is everything after it.
  if (p.top_p < 1.0) {
    const int S = __clzll(static_cast<unsigned long long>(V));
    const double scale = ldexp(1.0, S);  // weights are in [0, 1]: V · 2^S < 2^64
    double tot = 0;
    for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) {
      const uint32_t key = order_key(l[i]);
      if (!kept.in_k(key, i)) continue;
      const double w = weight(l[i]);
      tot += w;
      const unsigned long long x = __double2ull_rn(w * scale);
      if (x) hist_mass(s, key >> 24, x);
    }
    const double goal = p.top_p * block_sum(tot, s);
    const double goal_s = goal * scale;
    uint32_t K = 0;
    unsigned long long above = 0;
    for (int shift = 24;; shift -= 8) {
      radix_digit(s, true, above, goal_s);
      K = (K << 8) | s.r_digit;
      above = s.r_above;
      if (shift == 0) break;
      const uint32_t hbits = K << shift;
      const uint32_t hmask = 0xFFFFFFFFu << shift;
      for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) {
        const uint32_t key = order_key(l[i]);
        if ((key & hmask) != hbits || !kept.in_k(key, i)) continue;
        const unsigned long long x = __double2ull_rn(weight(l[i]) * scale);
        if (x) hist_mass(s, (key >> (shift - 8)) & 255u, x);
      }
    }
    // The check: f(K) and f(K + 1) = the mass above K (the sum the tie step needs anyway).
    double gt = 0, ge = 0;
    long long eq = 0;
    for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) {
      const uint32_t key = order_key(l[i]);
      if (key < K || !kept.in_k(key, i)) continue;
      const double w = weight(l[i]);
      ge += w;
      if (key > K) gt += w;
      else ++eq;
    }
    gt = block_sum(gt, s);
    ge = block_sum(ge, s);
    eq = block_count(eq, s);
    if (!(ge >= goal && (K == 0xFFFFFFFFu || gt < goal))) {  // rare (see above); uniform
      // f(0) is the total >= goal, so ge < goal means K > 0; gt >= goal means K < 0xFFFFFFFF.
      uint32_t lo = ge < goal ? 0u : K + 1, hi = ge < goal ? K - 1 : 0xFFFFFFFFu;  // f(lo) >= goal, answer <= hi
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
      K = lo;
      gt = 0;
      eq = 0;
      for (int64_t i = threadIdx.x; i < V; i += kSampleThreads) {
        const uint32_t key = order_key(l[i]);
        if (!kept.in_k(key, i)) continue;
        if (key > K) gt += weight(l[i]);
        else if (key == K) ++eq;
      }
      gt = block_sum(gt, s);
      eq = block_count(eq, s);
    }
    // Every element with key K has the same value; recover it from the key.
    const uint32_t kb = (K & 0x80000000u) ? (K & 0x7FFFFFFFu) : ~K;
    const double w = weight(__uint_as_float(kb));
    const double need_f = w > 0 ? ceil((goal - gt) / w) : static_cast<double>(eq);  // clamped before the cast
    const long long need = need_f >= static_cast<double>(eq) ? eq : max(1ll, static_cast<long long>(need_f));
    kept.p_all = false;
    kept.k2 = K;
    kept.i2 = V - 1;  // all of key K (also when there is none: goal <= 0 keeps nothing, as before)
    if (need < eq)
      kept.i2 = nth_match(l, V, need, [K, &kept](uint32_t key, int64_t i) { return key == K && kept.in_k(key, i); }, s);
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

void copy_cols(const CopyColsParams& p, void* stream) {
  const int64_t n = p.rows * p.width;
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
  DSV2_LAUNCH(copy_cols_kernel, blocks, 256, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void add_rms_norm(const AddRmsNormParams& p, void* stream) {
  if (p.rows == 0) return;
  DSV2_CHECK(p.rows <= 2147483647, kUnsupported, "CUDA add_rms_norm: " << p.rows << " rows exceed the grid");
  DSV2_LAUNCH(add_rms_norm_kernel, static_cast<unsigned>(p.rows), kNormThreads, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void heads_gemm(const HeadsGemmParams& p, void* stream) {
  if (p.t == 0 || p.h == 0 || p.n == 0) return;
  DSV2_CHECK(p.h <= 65535, kUnsupported, "CUDA heads_gemm: " << p.h << " heads exceed the grid");
  const dim3 grid(ceil_div(p.n, kHeadsWarps), static_cast<unsigned>(p.h));
  DSV2_LAUNCH(heads_gemm_kernel, grid, kHeadsWarps * 32, 0, static_cast<cudaStream_t>(stream))(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

void fill_random(const FillRandomParams& p, void* stream) {
  if (p.n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((p.n + 255) / 256, 8192));
  DSV2_LAUNCH(fill_random_kernel, blocks, 256, 0, static_cast<cudaStream_t>(stream))(p);
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
  CopyColsParams p;  // nothing to copy: only the launch configuration is wrong
  DSV2_LAUNCH(copy_cols_kernel, 1, 4096, 0, static_cast<cudaStream_t>(stream))(p);  // > 1024 threads per block
  DSV2_CUDA_LAUNCH_CHECK();
}

void sample(const SampleBatchParams& p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  DSV2_CUDA_CHECK(cudaMemsetAsync(p.bad, 0, sizeof(int32_t), s));
  if (p.rows == 0) return;
  DSV2_CHECK(p.vocab >= 1 && p.vocab <= 2147483647, kUnsupported, "CUDA sample: vocab " << p.vocab);
  DSV2_LAUNCH(sample_kernel, static_cast<unsigned>(p.rows), kSampleThreads, 0, s)(p);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda
