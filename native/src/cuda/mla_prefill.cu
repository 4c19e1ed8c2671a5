// MLA prefill on the GPU (see MlaPrefillParams in dsv2/mla.h), one sequence per call (the
// op-level entry loops over the batch). Two kernels, chosen in ONE place (choose() below,
// whose name mla_prefill_kernel_name reports):
//
// flash (d_nope, d_r, d_v) = (128, 64, 128), DeepSeek-V2 / V2-Lite — tensor cores:
//   1. gather: the sequence's cached latent → c f32 [s_k, d_c], k_pe bf16 [s_k, d_r];
//   2. expand, in key chunks: kvx f32 [chunk, h·(d_nope + d_v)] = c · kv_bᵀ with cuda::gemm,
//      then a repack into bf16 head-major K_nope [h, s_k, d_nope] and V [h, s_k, d_v] (the
//      chunk is sized to stay in L2 between the gemm and the repack);
//   3. attend: mla_prefill_flash.cu, causal flash attention with mma.sync.
//   Numerics: q, K_nope, K_pe, V and the probabilities P are rounded to bf16 (nearest even)
//   for the mma; everything else is f32.
//
// generic (any d_v ≤ kPrefillMaxDv), SIMT, f32:
//   1. gather c f32 and k_pe f32; 2. expand kvx f32 [s_k, h·(d_nope + d_v)] with cuda::gemm;
//   3. a warp per (query, head) walks its visible keys with an online softmax.
//   Numerics: f32, except what cuda::gemm does to c (gemm.cu): with a bf16 kv_b and d_c a
//   multiple of 8 it rounds c to bf16 when s_k > 32 (exact for a bf16 cache's latent, not for
//   an fp8 cache's dequantized one) and splits it into bf16 hi + lo (2^-16) up to 32 keys.
#include <algorithm>
#include <cfloat>

#include "common.cuh"
#include "cuda_ops.h"
#include "kv_token.cuh"
#include "mla_prefill_flash.cuh"
#include "softmax.cuh"

namespace dsv2::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 8;
constexpr int kMaxPerLane = static_cast<int>(kPrefillMaxDv / 32);
constexpr int64_t kAlign = 256;                     // scratch sub-buffer alignment (bytes)
constexpr int64_t kChunkBytes = int64_t{32} << 20;  // f32 expansion chunk target: fits L2 (40–50 MB)

enum class Path { kFlash, kGeneric };

// The one dispatch: which kernel runs these sizes.
Path choose(const PrefillSeq& s) {
  return prefill::flash_supported(s.d_nope, s.d_r, s.d_v) ? Path::kFlash : Path::kGeneric;
}

int64_t align_up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Keys per expansion chunk of the flash path: a multiple of 64, ~kChunkBytes of f32 output.
int64_t chunk_keys(const PrefillSeq& s) {
  const int64_t row_bytes = s.h * (s.d_nope + s.d_v) * 4;
  int64_t kc = std::max<int64_t>(64, kChunkBytes / std::max<int64_t>(1, row_bytes) / 64 * 64);
  kc = std::min<int64_t>(kc, 8192);                      // the repack grid's y limit, with margin
  return std::min<int64_t>(kc, (s.s_k + 63) / 64 * 64);  // no more than the sequence
}

// Where each scratch buffer starts (byte offsets) and the total; one layout for both
// directions (sizing and carving), so they cannot disagree.
struct Layout {
  int64_t c = 0, pe = 0, kvx = 0, kn = 0, v = 0, total = 0, chunk = 0;
};

Layout layout(const PrefillSeq& s) {
  Layout l;
  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    const int64_t o = at;
    at += align_up(std::max<int64_t>(bytes, 1));
    return o;
  };
  const int64_t row = s.d_nope + s.d_v;
  l.c = take(s.s_k * s.d_c * 4);
  if (choose(s) == Path::kFlash) {
    l.chunk = chunk_keys(s);
    l.pe = take(s.s_k * s.d_r * 2);
    l.kvx = take(l.chunk * s.h * row * 4);
    l.kn = take(s.h * s.s_k * s.d_nope * 2);
    l.v = take(s.h * s.s_k * s.d_v * 2);
  } else {
    l.chunk = s.s_k;
    l.pe = take(s.s_k * s.d_r * 4);
    l.kvx = take(s.s_k * s.h * row * 4);
  }
  l.total = at;
  return l;
}

template <class T>
T* at(void* base, int64_t offset) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(base) + offset);
}

// Cached token t → c [t, :] f32 and k_pe [t, :] (f32, or bf16 when pe_bf16).
__global__ void gather_kernel(KvCacheView cache, const int32_t* block_row, int64_t s_k, float* c, void* pe, bool pe_bf16) {
  const KvLayout L = cache.layout;
  const int64_t t = blockIdx.x;
  if (t >= s_k) return;
  const int64_t page = block_row[t / L.page_size];
  const uint8_t* tok = cache.data + (page * L.page_size + t % L.page_size) * L.bytes_per_token();
  for (int64_t e = threadIdx.x; e < L.d_c + L.d_r; e += blockDim.x) {
    const float v = decode_element(L, tok, e);
    if (e < L.d_c) c[t * L.d_c + e] = v;
    else if (pe_bf16) static_cast<bf16*>(pe)[t * L.d_r + e - L.d_c] = __float2bfloat16_rn(v);
    else static_cast<float*>(pe)[t * L.d_r + e - L.d_c] = v;
  }
}

// kvx f32 [kc, h, d_nope + d_v] (keys t0..t0+kc) → bf16 K_nope [h, s_k, d_nope], V [h, s_k, d_v].
// Grid (ceil(h·row / 4 / 256), kc): 4 elements per thread (d_nope, d_v multiples of 4, so a
// quad never straddles k_nope and v).
__global__ void repack_kernel(const float* kvx, int h, int d_nope, int d_v, int64_t t0, int64_t s_k, bf16* kn, bf16* v) {
  const int row = d_nope + d_v;
  const int quad = blockIdx.x * blockDim.x + threadIdx.x;
  if (quad >= h * row / 4) return;
  const int64_t i = blockIdx.y, t = t0 + i;
  const int e = quad * 4, hh = e / row, r = e % row;
  const float4 x = *reinterpret_cast<const float4*>(kvx + (i * h) * row + e);
  bf16* dst = r < d_nope ? kn + (hh * s_k + t) * d_nope + r : v + (hh * s_k + t) * d_v + (r - d_nope);
  const __nv_bfloat162 lo = __floats2bfloat162_rn(x.x, x.y), hi = __floats2bfloat162_rn(x.z, x.w);
  uint2 u;
  memcpy(&u.x, &lo, 4);
  memcpy(&u.y, &hi, 4);
  *reinterpret_cast<uint2*>(dst) = u;  // 8-byte aligned: r, d_nope, d_v are multiples of 4
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

void check_seq(const PrefillSeq& s, size_t scratch_bytes) {
  DSV2_CHECK(s.n_q >= 0 && s.s_k >= s.n_q && s.q0 >= 0, kRange,
             "CUDA mla_prefill: n_q = " << s.n_q << ", s_k = " << s.s_k << ", q0 = " << s.q0 << " (need 0 ≤ n_q ≤ s_k, q0 ≥ 0)");
  DSV2_CHECK(s.s_k <= INT32_MAX, kRange, "CUDA mla_prefill: s_k = " << s.s_k << " exceeds int32");
  DSV2_CHECK(s.h >= 1 && s.h <= 65535, kUnsupported, "CUDA mla_prefill: h = " << s.h << " must be in [1, 65535] (grid limit)");
  const int64_t need = layout(s).total;
  DSV2_CHECK(scratch_bytes >= static_cast<size_t>(need), kRange,
             "CUDA mla_prefill: scratch of " << scratch_bytes << " bytes is smaller than the " << need
                                             << " this sequence needs (mla_prefill_scratch_bytes)");
  if (choose(s) == Path::kGeneric)
    DSV2_CHECK(s.d_v <= kPrefillMaxDv, kUnsupported,
               "CUDA mla_prefill: dV = " << s.d_v << " exceeds the generic kernel's " << kPrefillMaxDv);
}

}  // namespace

size_t mla_prefill_scratch_bytes(const PrefillSeq& s) { return static_cast<size_t>(layout(s).total); }

const char* mla_prefill_kernel_name(const PrefillSeq& s) {
  return choose(s) == Path::kFlash ? prefill::flash_kernel_name(s.d_nope, s.d_r, s.d_v) : "generic_simt_f32";
}

void mla_prefill_expand(const KvCacheView& cache, const int32_t* block_row, const PrefillSeq& s, const void* kv_b,
                        DType kv_b_dtype, void* scratch, size_t scratch_bytes, void* stream) {
  check_seq(s, scratch_bytes);
  DSV2_CHECK(cache.layout.d_c == s.d_c && cache.layout.d_r == s.d_r, kShape,
             "CUDA mla_prefill: cache dims (dC " << cache.layout.d_c << ", dR " << cache.layout.d_r << ") differ from the call's ("
                                                << s.d_c << ", " << s.d_r << ")");
  if (s.n_q == 0 || s.s_k == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const Layout l = layout(s);
  const bool flash = choose(s) == Path::kFlash;
  float* c = at<float>(scratch, l.c);
  float* kvx = at<float>(scratch, l.kvx);
  DSV2_LAUNCH(gather_kernel, static_cast<unsigned>(s.s_k), 128, 0, st)(cache, block_row, s.s_k, c, at<void>(scratch, l.pe), flash);
  DSV2_CUDA_LAUNCH_CHECK();
  const int64_t row = s.d_nope + s.d_v;
  for (int64_t t0 = 0; t0 < s.s_k; t0 += l.chunk) {
    const int64_t kc = std::min(l.chunk, s.s_k - t0);
    GemmParams g;
    g.m = kc;
    g.n = s.h * row;
    g.k = s.d_c;
    g.x = c + t0 * s.d_c;
    g.w = kv_b;
    g.w_dtype = kv_b_dtype;
    g.y = kvx;
    if (s.d_c == 0) cuda::memset(kvx, 0, static_cast<size_t>(kc * g.n) * 4, stream);  // gemm leaves y as is when k = 0
    else gemm(g, stream);
    if (flash) {
      const dim3 grid(ceil_div(s.h * row / 4, 256), static_cast<unsigned>(kc));
      DSV2_LAUNCH(repack_kernel, grid, 256, 0, st)(kvx, static_cast<int>(s.h), static_cast<int>(s.d_nope), static_cast<int>(s.d_v), t0,
                                          s.s_k, at<bf16>(scratch, l.kn), at<bf16>(scratch, l.v));
      DSV2_CUDA_LAUNCH_CHECK();
    }
  }
}

void mla_prefill_attend(const PrefillSeq& s, const float* q, void* scratch, size_t scratch_bytes, float* out, void* stream) {
  check_seq(s, scratch_bytes);
  if (s.n_q == 0 || s.s_k == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const Layout l = layout(s);
  if (choose(s) == Path::kFlash) {
    // The kernel's vector accesses: float2 q loads and out stores, 16-byte cp.async of scratch.
    DSV2_CHECK(reinterpret_cast<uintptr_t>(q) % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0 &&
                   reinterpret_cast<uintptr_t>(scratch) % 16 == 0,
               kInternal, "CUDA mla_prefill: q, out must be 8-byte and scratch 16-byte aligned");
    prefill::FlashArgs a;
    a.q = q + s.q0 * s.h * (s.d_nope + s.d_r);
    a.kn = at<const bf16>(scratch, l.kn);
    a.kpe = at<const bf16>(scratch, l.pe);
    a.v = at<const bf16>(scratch, l.v);
    a.out = out + s.q0 * s.h * s.d_v;
    a.n_q = static_cast<int>(s.n_q);
    a.s_k = static_cast<int>(s.s_k);
    a.h = static_cast<int>(s.h);
    a.scale_log2 = s.scale * 1.4426950408889634f;  // log2(e): the kernel uses exp2
    prefill::flash_attend(a, s.d_nope, s.d_r, s.d_v, st);
  } else {
    const dim3 grid(ceil_div(s.n_q, kWarps), static_cast<unsigned>(s.h));
    DSV2_LAUNCH(attend_kernel, grid, kWarps * 32, 0, st)(s, q, at<const float>(scratch, l.kvx), at<const float>(scratch, l.pe), out);
    DSV2_CUDA_LAUNCH_CHECK();
  }
}

void mla_prefill_seq(const KvCacheView& cache, const int32_t* block_row, const PrefillSeq& s, const float* q,
                     const void* kv_b, DType kv_b_dtype, void* scratch, size_t scratch_bytes, float* out, void* stream) {
  mla_prefill_expand(cache, block_row, s, kv_b, kv_b_dtype, scratch, scratch_bytes, stream);
  mla_prefill_attend(s, q, scratch, scratch_bytes, out, stream);
}

}  // namespace dsv2::cuda
