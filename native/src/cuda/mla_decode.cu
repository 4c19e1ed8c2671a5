// Absorbed MLA decode on the GPU: split-KV attention + a log-sum-exp combine, the same
// decomposition as the CPU op (see MlaDecodeParams in dsv2/mla.h), with the split plan made on
// the device (no host synchronisation: a decode step can be captured in a CUDA graph).
//
// One call = three launches on the stream:
//   1. mla_decode_plan_kernel (1 CTA): seqlens → work items in the workspace
//      (mla_decode_internal.cuh says what a plan guarantees);
//   2. the attention kernel, chosen in choose() — the ONE dispatch point, whose name
//      mla_decode_kernel_name() reports:
//        tc_mma_bk64_{bf16,fp8} / tc_mma_bk32_{bf16,fp8}: tensor cores, d_c = 512, d_r = 64,
//          bf16 or fp8 cache (mla_decode_mma.cu), 64 or 32 keys per block as shared memory
//          allows (H100: 64, A100: 32); a CTA per (part, 64 query rows);
//        generic: any d_c ≤ kDecodeGenericMaxDc, any d_r, any cache dtype; a block per (work
//          item, 8 query rows) decodes 16 keys at a time into shared memory as f32 and each
//          warp walks them for its row with an online softmax. Exact f32 arithmetic, slow;
//   3. mla_decode_combine_kernel: merges the partials of the sequences that were split.
#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "common.cuh"
#include "cuda_ops.h"
#include "mla_decode_internal.cuh"
#include "../core/dtype.h"
#include "../core/fp8.h"
#include "kv_token.cuh"
#include "softmax.cuh"

namespace dsv2::cuda {

namespace {

using mla::Plan;

// ---- plan ------------------------------------------------------------------------------

constexpr int kPlanThreads = 1024;

// Inclusive sum over the block of three counters (all threads must call it).
struct Triple {
  long long a, b, c;
};

__device__ Triple block_inclusive_scan(Triple v, Triple* warp_sums) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const long long a = __shfl_up_sync(0xffffffffu, v.a, off), b = __shfl_up_sync(0xffffffffu, v.b, off),
                    c = __shfl_up_sync(0xffffffffu, v.c, off);
    if (lane >= off) v.a += a, v.b += b, v.c += c;
  }
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    Triple w = lane < kPlanThreads / 32 ? warp_sums[lane] : Triple{0, 0, 0};
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const long long a = __shfl_up_sync(0xffffffffu, w.a, off), b = __shfl_up_sync(0xffffffffu, w.b, off),
                      c = __shfl_up_sync(0xffffffffu, w.c, off);
      if (lane >= off) w.a += a, w.b += b, w.c += c;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  if (warp > 0) {
    const Triple w = warp_sums[warp - 1];
    v.a += w.a, v.b += w.b, v.c += w.c;
  }
  __syncthreads();  // warp_sums reusable
  return v;
}

__device__ __forceinline__ long long seq_blocks(const int32_t* seqlens, int i) {
  const int len = max(0, seqlens[i]);
  return (len + mla::kPlanBlockKeys - 1) / mla::kPlanBlockKeys;
}

// One CTA. Pass 1: the work line's length (cost) → capacity per part. Pass 2: per sequence,
// its cuts, items and split flag, by block scans with a running carry. Pass 3: part → items.
__global__ void __launch_bounds__(kPlanThreads) mla_decode_plan_kernel(const int32_t* seqlens, int b, int n_parts, Plan plan) {
  __shared__ Triple warp_sums[kPlanThreads / 32];
  __shared__ long long s_cap;
  constexpr int kO = mla::kPlanSeqOverhead, kB = mla::kPlanBlockKeys;
  long long mine = 0;
  for (int i = threadIdx.x; i < b; i += kPlanThreads) mine += kO + seq_blocks(seqlens, i);
  const Triple tot = block_inclusive_scan(Triple{mine, 0, 0}, warp_sums);
  if (threadIdx.x == kPlanThreads - 1) s_cap = (tot.a + n_parts - 1) / n_parts;  // ≥ 1: b ≥ 1, kO ≥ 1
  __syncthreads();
  const long long cap = s_cap;
  Triple carry{0, 0, 0};
  for (int base = 0; base < b; base += kPlanThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    long long nblk = 0, cuts = 0;
    if (i < b) nblk = seq_blocks(seqlens, i);
    Triple v{kO + nblk, 0, 0};
    // Work position of the sequence's first key block: A = C_i + kO (C_i: exclusive cost sum).
    // Cuts: multiples of cap strictly inside the key blocks [A, A + nblk).
    const Triple inc_cost = block_inclusive_scan(Triple{i < b ? v.a : 0, 0, 0}, warp_sums);
    const long long A = carry.a + inc_cost.a - (i < b ? v.a : 0) + kO;
    if (i < b && nblk > 0) cuts = (A + nblk - 1) / cap - A / cap;
    const Triple inc = block_inclusive_scan(Triple{0, i < b ? 1 + cuts : 0, i < b && cuts > 0 ? 1 : 0}, warp_sums);
    if (i < b) {
      const long long item0 = carry.b + inc.b - (1 + cuts);
      const int len = max(0, seqlens[i]);
      plan.seq_item_begin[i] = static_cast<int32_t>(item0);
      if (cuts > 0) plan.split_seq[carry.c + inc.c - 1] = i;
      for (long long j = 0; j <= cuts; ++j) {
        const long long blk0 = j == 0 ? 0 : (A / cap + j) * cap - A;
        const long long blk1 = j == cuts ? nblk : (A / cap + j + 1) * cap - A;
        const long long k = item0 + j;
        plan.item_seq[k] = i;
        plan.item_t0[k] = static_cast<int32_t>(blk0 * kB);
        plan.item_t1[k] = static_cast<int32_t>(min(static_cast<long long>(len), blk1 * kB));
        // the part holding the item's first key block (an empty sequence: its last overhead unit)
        const long long pos = nblk > 0 ? A + blk0 : A - 1;
        plan.item_part[k] = static_cast<int32_t>(min(static_cast<long long>(n_parts - 1), pos / cap));
      }
    }
    // carry += the chunk's totals (the last thread's inclusive values)
    __shared__ Triple s_tot;
    if (threadIdx.x == kPlanThreads - 1) s_tot = Triple{inc_cost.a, inc.b, inc.c};
    __syncthreads();
    carry.a += s_tot.a, carry.b += s_tot.b, carry.c += s_tot.c;
    __syncthreads();
  }
  const int n_items = static_cast<int>(carry.b);
  if (threadIdx.x == 0) {
    plan.seq_item_begin[b] = n_items;
    plan.counts[0] = n_items;
    plan.counts[1] = static_cast<int32_t>(carry.c);
  }
  __syncthreads();  // items visible to the whole block
  // part_item_begin[p] = first item whose part ≥ p (parts are non-decreasing in item order).
  for (int k = threadIdx.x; k < n_items; k += kPlanThreads) {
    const int prev = k == 0 ? -1 : plan.item_part[k - 1];
    for (int q = prev + 1; q <= plan.item_part[k]; ++q) plan.part_item_begin[q] = k;
  }
  if (threadIdx.x == 0)
    for (int q = n_items > 0 ? plan.item_part[n_items - 1] + 1 : 0; q <= n_parts; ++q) plan.part_item_begin[q] = n_items;
}

// ---- generic kernel ----------------------------------------------------------------------

constexpr int kRowsPerBlock = 8;  // one warp per query row
constexpr int kTileKeys = 16;     // keys decoded into shared memory at a time
constexpr int kMaxPerLane = static_cast<int>(kDecodeGenericMaxDc / 32);

__global__ void __launch_bounds__(kRowsPerBlock * 32)
mla_decode_generic_kernel(MlaDecodeParams p, Plan plan) {
  DSV2_DYNAMIC_SMEM(float, smem, 16);
  const int64_t item = blockIdx.x;
  if (item >= plan.counts[0]) return;  // grid = capacity ≥ n_items
  const int64_t d = p.d_c + p.d_r;
  float* keys = smem;                          // [kTileKeys, d]
  float* qs = smem + kTileKeys * d;            // [kRowsPerBlock, d]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t rows = p.s_q * p.h_q;
  const int64_t r = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock + warp;
  const int64_t i = plan.item_seq[item];
  const int64_t t0 = plan.item_t0[item], t1 = plan.item_t1[item];
  const int64_t s_k = p.seqlens[i];
  const bool direct = plan.seq_item_begin[i + 1] - plan.seq_item_begin[i] == 1;
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
  float* out = direct ? p.out + (i * rows + r) * p.d_c : plan.part_out + (item * rows + r) * p.d_c;
  const float inv = sm.any ? 1.0f / sm.l : 0.0f;
#pragma unroll
  for (int u = 0; u < kMaxPerLane; ++u) {
    const int64_t k = lane + 32 * u;
    if (k < p.d_c) out[k] = acc[u] * inv;
  }
  if (lane == 0) {
    const float lse = sm.any ? sm.m + logf(sm.l) : (direct ? INFINITY : -INFINITY);
    if (direct) p.lse[i * rows + r] = lse;
    else plan.part_lse[item * rows + r] = lse;
  }
}

// ---- combine -----------------------------------------------------------------------------

constexpr int kCombineRows = 8;  // one warp per query row

// Grid (n_parts, ceil(rows / 8)): block x merges split sequence split_seq[x], if any.
__global__ void __launch_bounds__(kCombineRows * 32) mla_decode_combine_kernel(MlaDecodeParams p, Plan plan) {
  if (static_cast<int>(blockIdx.x) >= plan.counts[1]) return;
  const int lane = threadIdx.x % 32;
  const int64_t rows = p.s_q * p.h_q;
  const int64_t r = static_cast<int64_t>(blockIdx.y) * kCombineRows + threadIdx.x / 32;
  if (r >= rows) return;
  const int64_t i = plan.split_seq[blockIdx.x];
  const int64_t b0 = plan.seq_item_begin[i], b1 = plan.seq_item_begin[i + 1];
  float mx = -INFINITY;
  for (int64_t it = b0; it < b1; ++it) mx = fmaxf(mx, plan.part_lse[it * rows + r]);
  const int64_t x = i * rows + r;
  float* out = p.out + x * p.d_c;
  if (mx == -INFINITY) {  // no key at all: out 0, lse +inf
    for (int64_t k = lane; k < p.d_c; k += 32) out[k] = 0.0f;
    if (lane == 0) p.lse[x] = INFINITY;
    return;
  }
  float sum = 0.0f;
  for (int64_t it = b0; it < b1; ++it) sum += expf(plan.part_lse[it * rows + r] - mx);
  const float lse = mx + logf(sum);
  for (int64_t k = lane; k < p.d_c; k += 32) {
    float o = 0.0f;
    for (int64_t it = b0; it < b1; ++it) {
      const float li = plan.part_lse[it * rows + r];
      if (li != -INFINITY) o += expf(li - lse) * plan.part_out[(it * rows + r) * p.d_c + k];
    }
    out[k] = o;
  }
  if (lane == 0) p.lse[x] = lse;
}

// ---- host --------------------------------------------------------------------------------

enum class Kernel { kGeneric, kMma64, kMma32 };

int device_attr(cudaDeviceAttr a) {
  int dev = 0, v = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&dev));
  DSV2_CUDA_CHECK(cudaDeviceGetAttribute(&v, a, dev));
  return v;
}

bool aligned(const void* ptr, size_t n) { return reinterpret_cast<uintptr_t>(ptr) % n == 0; }

// THE dispatch: which kernel runs for p on the current device.
Kernel choose(const MlaDecodeParams& p) {
  const DType t = p.cache.layout.dtype;
  const bool fp8 = t == DType::kFP8E4M3;
  if (p.d_c == 512 && p.d_r == 64 && (t == DType::kBF16 || fp8) && aligned(p.cache.data, 16) && aligned(p.q, 16) &&
      aligned(p.out, 8) && device_attr(cudaDevAttrComputeCapabilityMajor) >= 8) {
    const size_t optin = static_cast<size_t>(device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin));
    if (optin >= mla::mma_smem_bytes(64, fp8)) return Kernel::kMma64;
    if (optin >= mla::mma_smem_bytes(32, fp8)) return Kernel::kMma32;
  }
  return Kernel::kGeneric;
}

int64_t rows_per_cta(Kernel k) { return k == Kernel::kGeneric ? kRowsPerBlock : 64; }

struct WsLayout {
  size_t item_seq, item_t0, item_t1, item_part, seq_begin, part_begin, split_seq, counts, part_lse, part_out, total;
};

WsLayout ws_layout(int64_t b, int64_t rows, int64_t d_c, int64_t n_parts) {
  const size_t cap = static_cast<size_t>(b + n_parts);
  WsLayout w{};
  size_t at = 0;
  const auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += (bytes + 255) / 256 * 256;
    return here;
  };
  w.item_seq = take(4 * cap);
  w.item_t0 = take(4 * cap);
  w.item_t1 = take(4 * cap);
  w.item_part = take(4 * cap);
  w.seq_begin = take(4 * static_cast<size_t>(b + 1));
  w.part_begin = take(4 * static_cast<size_t>(n_parts + 1));
  w.split_seq = take(4 * static_cast<size_t>(n_parts));
  w.counts = take(4 * 4);
  w.part_lse = take(4 * cap * static_cast<size_t>(rows));
  w.part_out = take(4 * cap * static_cast<size_t>(rows) * static_cast<size_t>(d_c));
  w.total = at;
  return w;
}

void check_sizes(int64_t b, int64_t s_q, int64_t h_q, int64_t d_c, int64_t n_parts) {
  DSV2_CHECK(b >= 0 && s_q >= 0 && h_q >= 0 && d_c >= 0, kRange,
             "CUDA mla_decode: b = " << b << ", s_q = " << s_q << ", h_q = " << h_q << ", d_c = " << d_c << " must be >= 0");
  DSV2_CHECK(n_parts >= 1 && n_parts <= kDecodeMaxParts, kRange,
             "CUDA mla_decode: n_parts = " << n_parts << " must be in [1, " << kDecodeMaxParts << "]");
  DSV2_CHECK(b + n_parts < (int64_t{1} << 30), kUnsupported, "CUDA mla_decode: b = " << b << " sequences are too many");
}

Plan plan_view(void* ws, int64_t b, int64_t rows, int64_t d_c, int64_t n_parts) {
  const WsLayout w = ws_layout(b, rows, d_c, n_parts);
  uint8_t* base = static_cast<uint8_t*>(ws);
  Plan plan;
  plan.item_seq = reinterpret_cast<int32_t*>(base + w.item_seq);
  plan.item_t0 = reinterpret_cast<int32_t*>(base + w.item_t0);
  plan.item_t1 = reinterpret_cast<int32_t*>(base + w.item_t1);
  plan.item_part = reinterpret_cast<int32_t*>(base + w.item_part);
  plan.seq_item_begin = reinterpret_cast<int32_t*>(base + w.seq_begin);
  plan.part_item_begin = reinterpret_cast<int32_t*>(base + w.part_begin);
  plan.split_seq = reinterpret_cast<int32_t*>(base + w.split_seq);
  plan.counts = reinterpret_cast<int32_t*>(base + w.counts);
  plan.part_lse = reinterpret_cast<float*>(base + w.part_lse);
  plan.part_out = reinterpret_cast<float*>(base + w.part_out);
  plan.capacity = b + n_parts;
  plan.n_parts = n_parts;
  return plan;
}

const char* kernel_name(Kernel k, bool fp8) {
  switch (k) {
    case Kernel::kMma64: return fp8 ? "tc_mma_bk64_fp8" : "tc_mma_bk64_bf16";
    case Kernel::kMma32: return fp8 ? "tc_mma_bk32_fp8" : "tc_mma_bk32_bf16";
    default: return "generic";
  }
}

}  // namespace

const char* mla_decode_kernel_name(const MlaDecodeParams& p) {
  return kernel_name(choose(p), p.cache.layout.dtype == DType::kFP8E4M3);
}

int64_t mla_decode_parts(const MlaDecodeParams& p) {
  const int64_t sms = std::max(1, device_attr(cudaDevAttrMultiProcessorCount));
  const Kernel k = choose(p);
  const int64_t row_blocks = std::max<int64_t>(1, (p.s_q * p.h_q + rows_per_cta(k) - 1) / rows_per_cta(k));
  // Tensor-core kernel: one CTA per SM (its shared memory), so one wave of n_parts · row_blocks
  // CTAs, each walking one part (FlashMLA's split). Generic: light blocks, several per SM.
  const int64_t per_sm = k == Kernel::kGeneric ? 4 : 1;
  return std::min<int64_t>(kDecodeMaxParts, std::max<int64_t>(1, sms * per_sm / row_blocks));
}

size_t mla_decode_workspace_bytes(int64_t b, int64_t s_q, int64_t h_q, int64_t d_c, int64_t n_parts) {
  check_sizes(b, s_q, h_q, d_c, n_parts);
  return ws_layout(b, s_q * h_q, d_c, n_parts).total;
}

void mla_decode(const MlaDecodeParams& p, int64_t n_parts, void* workspace, size_t ws_bytes, void* stream) {
  check_sizes(p.b, p.s_q, p.h_q, p.d_c, n_parts);
  const int64_t rows = p.s_q * p.h_q;
  if (p.b == 0 || rows == 0) return;
  const size_t need = ws_layout(p.b, rows, p.d_c, n_parts).total;
  DSV2_CHECK(workspace != nullptr && ws_bytes >= need, kRange,
             "CUDA mla_decode: the workspace has " << ws_bytes << " bytes, " << need
                                                   << " needed (mla_decode_workspace_bytes)");
  const Kernel k = choose(p);
  DSV2_CHECK(k != Kernel::kGeneric || p.d_c <= kDecodeGenericMaxDc, kUnsupported,
             "CUDA mla_decode: dC = " << p.d_c << " exceeds the generic kernel's " << kDecodeGenericMaxDc);
  DSV2_CHECK((rows + kCombineRows - 1) / kCombineRows <= 65535 && (rows + kRowsPerBlock - 1) / kRowsPerBlock <= 65535,
             kUnsupported, "CUDA mla_decode: s_q · h_q = " << rows << " query rows per sequence exceed the kernels' grid");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const Plan plan = plan_view(workspace, p.b, rows, p.d_c, n_parts);
  DSV2_LAUNCH(mla_decode_plan_kernel, 1, kPlanThreads, 0, s)(p.seqlens, static_cast<int>(p.b), static_cast<int>(n_parts), plan);
  DSV2_CUDA_LAUNCH_CHECK();
  if (k == Kernel::kGeneric) {
    const size_t smem = sizeof(float) * (kTileKeys + kRowsPerBlock) * (p.d_c + p.d_r);
    DSV2_CHECK(smem <= static_cast<size_t>(device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin)), kUnsupported,
               "CUDA mla_decode: dC + dR = " << p.d_c + p.d_r << " needs " << smem << " bytes of shared memory");
    if (smem > 48 * 1024)
      DSV2_CUDA_CHECK(cudaFuncSetAttribute(mla_decode_generic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
    const dim3 grid(static_cast<unsigned>(plan.capacity), ceil_div(rows, kRowsPerBlock));
    DSV2_LAUNCH(mla_decode_generic_kernel, grid, kRowsPerBlock * 32, smem, s)(p, plan);
    DSV2_CUDA_LAUNCH_CHECK();
  } else {
    mla::launch_mma(p, plan, k == Kernel::kMma64 ? 64 : 32, stream);
  }
  const dim3 cgrid(static_cast<unsigned>(n_parts), ceil_div(rows, kCombineRows));
  DSV2_LAUNCH(mla_decode_combine_kernel, cgrid, kCombineRows * 32, 0, s)(p, plan);
  DSV2_CUDA_LAUNCH_CHECK();
}

void mla_decode(const MlaDecodeParams& p, void* workspace, size_t ws_bytes, void* stream) {
  mla_decode(p, mla_decode_parts(p), workspace, ws_bytes, stream);
}

void mla_decode_plan_stats(const MlaDecodeParams& p, int64_t n_parts, const void* workspace, int64_t* n_items,
                           int64_t* n_split, void* stream) {
  check_sizes(p.b, p.s_q, p.h_q, p.d_c, n_parts);
  *n_items = *n_split = 0;
  if (p.b == 0 || p.s_q * p.h_q == 0) return;
  const WsLayout w = ws_layout(p.b, p.s_q * p.h_q, p.d_c, n_parts);
  int32_t c[2] = {0, 0};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  DSV2_CUDA_CHECK(cudaMemcpyAsync(c, static_cast<const uint8_t*>(workspace) + w.counts, sizeof(c), cudaMemcpyDeviceToHost, s));
  DSV2_CUDA_CHECK(cudaStreamSynchronize(s));
  *n_items = c[0];
  *n_split = c[1];
}

}  // namespace dsv2::cuda
