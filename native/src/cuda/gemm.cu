// y[M, N] = x[M, K] · W[N, K]ᵀ on the GPU, f32 activations, f32/bf16/f16 weights or 8-bit
// codes (i8, fp8_e4m3) with 128 × 128 block scales, fp32 accumulation (GemmParams, as the CPU op).
//
// Kernels, chosen in ONE place (make_plan below; gemm_kernel_name reports the choice):
//
// - "tc_m16x", "tc_m32x", "tc_m64", "tc_m128": tensor cores (mma.sync m16n8k16 bf16 → f32)
//   for bf16 W when K % 8 == 0 and x, W are 16-byte aligned. Block tile BM × 128 × BK, 8 warps,
//   a 4-stage cp.async pipeline for both operands: W tiles as bf16 (read by ldmatrix), x tiles
//   as f32, rounded to bf16 while the A fragments are built (BK = 64 for BM ≤ 32, else 32). Edges in M, N and K are
//   predicated (zero-filled tiles, guarded stores). BM by M:
//     M ≤ 16 → BM = 16, M ≤ 32 → BM = 32  ("x" suffix: x split into bf16 hi + lo, two mma per
//               step: |x − hi − lo| ≤ 2^-16·|x|, against 2^-8 for one bf16 rounding). These
//               are the decode shapes: W is streamed once for all M rows and the kernel is
//               bound by W's bytes, so the doubled tensor work is free);
//     M ≤ 64 → BM = 64, else BM = 128 (x rounded to bf16, round-to-nearest-even: relative
//               error ≤ 2^-8 per x element; W is bf16 already, products are exact, sums f32).
//   A device whose per-block shared-memory opt-in is below a tile's 4 stages (sm_86 / sm_89:
//   99 KiB < BM 32's 108 KiB and BM 128's 120 KiB) runs BM = 16 resp. 64 instead (same x
//   treatment, more row blocks).
//   When the tile grid is smaller than one wave of resident blocks (decode, N·M small against
//   the GPU), or, for M ≤ 64, when a block would stream more than 256 KiB of W (a long tail
//   of the last wave), K is split over gridDim.z: each split writes its own f32 partial
//   [M, N] into a stream-ordered scratch buffer and a second kernel sums the partials in
//   split order — deterministic, no atomics. Splits ≤ 16, ≥ 4 K-tiles each, and ≤ K / (32·M)
//   so that the partials' traffic (8·M·N bytes per split) stays within 1/8 of W's bytes.
//   8-bit W ("tc_*_i8", "tc_*_fp8", K % 16 == 0): the same tiles with the codes copied as bytes
//   (half the W traffic) and converted exactly to bf16 fragments; the block scale multiplies the
//   x tile (see tc_kernel), so x gets one more f32 rounding (2^-24) before its bf16 treatment.
// - "gemv" (M ≤ 8) and "tiled" (SIMT, 64×64 tiles): every other case (f32 and f16 W, bf16 W
//   with K % 8 != 0 or unaligned pointers, 8-bit W with K % 16 != 0); x stays f32 and an
//   8-bit weight is code · scale in f32 (the CPU op's value, bit for bit).
//
// Results are bit-identical run to run on one device (fixed reduction orders everywhere);
// the split count depends on the device's SM count, so two GPU models may differ in the
// last bits.
#include <algorithm>
#include <map>
#include <mutex>

#include "common.cuh"
#include "cuda_ops.h"
#include "gemm_mma.cuh"
#include "w8.cuh"
#include "../core/dtype.h"

namespace dsv2::cuda {
namespace {

// ---------------------------------------------------------------------------------------
// Generic SIMT kernels (any weight dtype, any alignment).

// W[n, k] as the CPU op reads it: the stored value, or for 8-bit codes code · block scale.
__device__ __forceinline__ float gemm_weight(const GemmParams& p, int64_t n, int64_t k) {
  if (w8::is_8bit(p.w_dtype))
    return w8::scaled_weight(static_cast<const uint8_t*>(p.w), p.w_dtype, p.w_scale, p.n, p.k, n, k);
  return load_weight(p.w, p.w_dtype, n * p.k + k);
}

constexpr int kGemvMaxM = 8;
constexpr int kGemvWarps = 8;

__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(GemmParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (n >= p.n) return;
  float acc[kGemvMaxM];
#pragma unroll
  for (int m = 0; m < kGemvMaxM; ++m) acc[m] = 0.0f;
  for (int64_t k = lane; k < p.k; k += 32) {
    const float w = gemm_weight(p, n, k);
#pragma unroll
    for (int m = 0; m < kGemvMaxM; ++m)
      if (m < p.m) acc[m] = fmaf(w, p.x[m * p.k + k], acc[m]);
  }
#pragma unroll
  for (int m = 0; m < kGemvMaxM; ++m) {
    float v = acc[m];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && m < p.m) p.y[m * p.n + n] = v;
  }
}

constexpr int kTile = 64, kTileK = 16;

__global__ void __launch_bounds__(256) gemm_tiled_kernel(GemmParams p) {
  __shared__ float xs[kTileK][kTile + 1];  // [k][m], padded against bank conflicts
  __shared__ float ws[kTileK][kTile + 1];  // [k][n]
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTile, n0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 × 16 threads, 4 × 4 outputs each
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
    for (int i = threadIdx.x; i < kTile * kTileK; i += 256) {
      const int r = i / kTileK, kk = i % kTileK;
      const int64_t m = m0 + r, n = n0 + r, k = k0 + kk;
      xs[kk][r] = (m < p.m && k < p.k) ? p.x[m * p.k + k] : 0.0f;
      ws[kk][r] = (n < p.n && k < p.k) ? gemm_weight(p, n, k) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = xs[kk][ty * 4 + i];
        b[i] = ws[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < p.m && n < p.n) p.y[m * p.n + n] = acc[i][j];
    }
}

// ---------------------------------------------------------------------------------------
// Tensor-core kernel (bf16 W, or 8-bit codes with 128 × 128 block scales).

constexpr int kBN = 128, kStages = 4, kTcThreads = 256;

// K-tile 64 for the decode tiles (128 contiguous bytes per W row per tile, fewer barriers),
// 32 for the large ones (shared memory). Rows are padded: the x row stride (BK + 8 f32) is
// ≡ 8 words mod 32 banks, so the float2 fragment loads of a half-warp hit 32 distinct banks;
// the bf16 W row stride (BK + 8 bf16 = 80 or 144 B) puts ldmatrix's 8 rows in 8 distinct
// 16-byte bank groups; the 8-bit W row stride (BK + 16 codes = 48 or 80 B = 12 or 20 words)
// gives the 8 rows g of a B-fragment load words 12g resp. 20g mod 32, pairwise ≥ 4 apart, so
// the two words (2q bytes in) each row's 4 lanes read never collide.
template <int BM, DType kW>
struct TcCfg {
  static constexpr bool k8 = kW != DType::kBF16;
  static constexpr int kBK = BM <= 32 ? 64 : 32;
  static constexpr int kXStride = kBK + 8;
  static constexpr int kWRowBytes = k8 ? kBK + 16 : (kBK + 8) * 2;
  static constexpr int kWChunk = k8 ? 16 : 8;  // W elements per 16-byte cp.async
  static constexpr int kWarpsM = BM >= 64 ? 2 : 1, kWarpsN = 8 / kWarpsM;
  static constexpr int kWarpM = BM / kWarpsM, kWarpN = kBN / kWarpsN;  // warp tile
  static constexpr int kMT = kWarpM / 16, kNT = kWarpN / 8;           // m16 / n8 tiles per warp
  static constexpr int kXBytes = BM * kXStride * 4;
  static constexpr int kStageBytes = kXBytes + kBN * kWRowBytes;
  static constexpr int kSmem = kStages * kStageBytes;
  static_assert(kNT % 2 == 0, "ldmatrix.x4 loads two n8 tiles");
  static_assert(kXBytes % 16 == 0 && kStageBytes % 16 == 0 && kWRowBytes % 16 == 0, "16-byte aligned stages and rows");
  static_assert(kWeightBlock % kBK == 0, "a K-tile lies inside one 128-wide scale block");
  static_assert(kBN == kWeightBlock, "a block's columns share one row of scales");
};

// Issues the cp.async copies of K-tile [k0, k0 + BK) ∩ [.., k_end) into one stage. Chunks
// outside M, N or k_end are zero-filled (a NaN-free zero on both operands, so padding
// never contaminates valid outputs).
template <int BM, DType kW>
__device__ __forceinline__ void tc_load_tile(const GemmParams& p, int64_t m0, int64_t n0, int64_t k0, int64_t k_end,
                                             uint32_t stage) {
  using C = TcCfg<BM, kW>;
  constexpr int kBK = C::kBK, kXStride = C::kXStride, kWc = C::kWChunk;
  constexpr int es = C::k8 ? 1 : 2;  // bytes per W element
  const uint8_t* w = static_cast<const uint8_t*>(p.w);
  for (int c = threadIdx.x; c < BM * (kBK / 4); c += kTcThreads) {  // x: chunks of 4 f32
    const int r = c / (kBK / 4), q = c % (kBK / 4);
    const int64_t m = m0 + r, k = k0 + q * 4;
    const bool ok = m < p.m && k < k_end;  // K % 8 == 0, k % 4 == 0: the chunk is whole
    mma::cp_async16(stage + (r * kXStride + q * 4) * 4, ok ? p.x + m * p.k + k : p.x, ok ? 16 : 0);
  }
  for (int c = threadIdx.x; c < kBN * (kBK / kWc); c += kTcThreads) {  // W: 16-byte chunks
    const int r = c / (kBK / kWc), q = c % (kBK / kWc);
    const int64_t n = n0 + r, k = k0 + q * kWc;
    const bool ok = n < p.n && k < k_end;  // K % kWc == 0 (make_plan): the chunk is whole
    mma::cp_async16(stage + C::kXBytes + r * C::kWRowBytes + q * kWc * es, ok ? w + (n * p.k + k) * es : w, ok ? 16 : 0);
  }
}

// grid (⌈N/128⌉, ⌈M/BM⌉, splits); split z covers K in [z·k_split, min(K, (z+1)·k_split)) and,
// with splits > 1, writes part[z][M][N] instead of y.
//
// 8-bit W: a block's 128 columns n0.. share one scale row and a K-tile one scale block, so
// x · (code · s) = (x · s) · code: the tile's x values are multiplied by s (one f32 rounding,
// 2^-24 relative, far below the bf16 treatment of x that follows) and the codes enter the mma
// as exact bf16 values. No second set of accumulators, no per-block epilogue.
template <int BM, bool kSplitX, DType kW>
__global__ void __launch_bounds__(kTcThreads, BM >= 128 ? 1 : 2) tc_kernel(GemmParams p, int64_t k_split, float* part) {
  using C = TcCfg<BM, kW>;
  constexpr int kBK = C::kBK, kXStride = C::kXStride;
  DSV2_DYNAMIC_SMEM(unsigned char, smem, 16);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = warp / C::kWarpsN, wn = warp % C::kWarpsN;
  const int g = lane / 4, t = lane % 4;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN, m0 = static_cast<int64_t>(blockIdx.y) * BM;
  const int64_t kb = static_cast<int64_t>(blockIdx.z) * k_split;
  const int64_t ke = min(p.k, kb + k_split);
  const int ktiles = static_cast<int>((ke - kb + kBK - 1) / kBK);
  const uint32_t base = mma::smem_addr(smem);
  // 8-bit: this block's row of scales (kBN == kWeightBlock: one row).
  const float* srow = C::k8 ? p.w_scale + (n0 / kWeightBlock) * ((p.k + kWeightBlock - 1) / kWeightBlock) : nullptr;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) tc_load_tile<BM, kW>(p, m0, n0, kb + s * kBK, ke, base + s * C::kStageBytes);
    mma::cp_async_commit();
  }

  float acc[C::kMT][C::kNT][4];
#pragma unroll
  for (int i = 0; i < C::kMT; ++i)
#pragma unroll
    for (int j = 0; j < C::kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  for (int kt = 0; kt < ktiles; ++kt) {
    // Groups committed so far: kStages − 1 + kt; ≤ kStages − 2 pending means tile kt landed.
    mma::cp_async_wait<kStages - 2>();
    __syncthreads();  // tile kt visible to all; everyone is done with tile kt − 1's stage
    {
      const int nk = kt + kStages - 1;  // refill the stage tile kt − 1 used
      if (nk < ktiles)
        tc_load_tile<BM, kW>(p, m0, n0, kb + static_cast<int64_t>(nk) * kBK, ke, base + (nk % kStages) * C::kStageBytes);
      mma::cp_async_commit();
    }
    const int st = kt % kStages;
    const float* xs = reinterpret_cast<const float*>(smem + st * C::kStageBytes);
    const uint32_t ws = base + st * C::kStageBytes + C::kXBytes;
    const unsigned char* ws8 = smem + st * C::kStageBytes + C::kXBytes;
    const float sc = C::k8 ? __ldg(srow + (kb + static_cast<int64_t>(kt) * kBK) / kWeightBlock) : 1.0f;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t a[C::kMT][4], al[C::kMT][4];
#pragma unroll
      for (int i = 0; i < C::kMT; ++i) {
        const float* r0 = xs + (wm * C::kWarpM + i * 16 + g) * kXStride + kk + 2 * t;
        const float* r1 = r0 + 8 * kXStride;
        float2 v0 = *reinterpret_cast<const float2*>(r0);      // A[g][2t..]
        float2 v1 = *reinterpret_cast<const float2*>(r1);      // A[g+8][2t..]
        float2 v2 = *reinterpret_cast<const float2*>(r0 + 8);  // A[g][2t+8..]
        float2 v3 = *reinterpret_cast<const float2*>(r1 + 8);  // A[g+8][2t+8..]
        if constexpr (C::k8) {
          v0 = make_float2(w8::mul_keep_subnormal(v0.x, sc), w8::mul_keep_subnormal(v0.y, sc));
          v1 = make_float2(w8::mul_keep_subnormal(v1.x, sc), w8::mul_keep_subnormal(v1.y, sc));
          v2 = make_float2(w8::mul_keep_subnormal(v2.x, sc), w8::mul_keep_subnormal(v2.y, sc));
          v3 = make_float2(w8::mul_keep_subnormal(v3.x, sc), w8::mul_keep_subnormal(v3.y, sc));
        }
        if constexpr (kSplitX) {
          mma::split_bf16(v0.x, v0.y, a[i][0], al[i][0]);
          mma::split_bf16(v1.x, v1.y, a[i][1], al[i][1]);
          mma::split_bf16(v2.x, v2.y, a[i][2], al[i][2]);
          mma::split_bf16(v3.x, v3.y, a[i][3], al[i][3]);
        } else {
          a[i][0] = mma::pack_bf16(v0.x, v0.y);
          a[i][1] = mma::pack_bf16(v1.x, v1.y);
          a[i][2] = mma::pack_bf16(v2.x, v2.y);
          a[i][3] = mma::pack_bf16(v3.x, v3.y);
        }
      }
      uint32_t b[C::kNT][2];
      if constexpr (C::k8) {
        // B fragment of n8 tile j: W row n = …+ j·8 + g, codes k = kk + 2t, +1 (reg 0) and
        // kk + 8 + 2t, +1 (reg 1), each pair one 16-bit shared load converted exactly.
#pragma unroll
        for (int j = 0; j < C::kNT; ++j) {
          const unsigned char* row = ws8 + (wn * C::kWarpN + j * 8 + g) * C::kWRowBytes + kk + 2 * t;
          b[j][0] = w8::codes_to_bf16x2<kW>(*reinterpret_cast<const uint16_t*>(row));
          b[j][1] = w8::codes_to_bf16x2<kW>(*reinterpret_cast<const uint16_t*>(row + 8));
        }
      } else {
#pragma unroll
        for (int jp = 0; jp < C::kNT / 2; ++jp) {
          // Matrix q = lane / 8: n8 tile 2·jp + q / 2, k half q % 2; this lane's row is lane % 8.
          const int row = wn * C::kWarpN + (2 * jp + lane / 16) * 8 + lane % 8;
          const int col = kk + ((lane / 8) % 2) * 8;
          mma::ldmatrix_x4(b[2 * jp][0], b[2 * jp][1], b[2 * jp + 1][0], b[2 * jp + 1][1], ws + row * C::kWRowBytes + col * 2);
        }
      }
#pragma unroll
      for (int i = 0; i < C::kMT; ++i)
#pragma unroll
        for (int j = 0; j < C::kNT; ++j) {
          mma::mma_bf16(acc[i][j], a[i], b[j][0], b[j][1]);
          if constexpr (kSplitX) mma::mma_bf16(acc[i][j], al[i], b[j][0], b[j][1]);
        }
    }
  }
  mma::cp_async_wait<0>();  // only empty groups can be pending here; leave none behind

  float* out = gridDim.z > 1 ? part + static_cast<int64_t>(blockIdx.z) * p.m * p.n : p.y;
#pragma unroll
  for (int i = 0; i < C::kMT; ++i)
#pragma unroll
    for (int j = 0; j < C::kNT; ++j) {
      const int64_t m = m0 + wm * C::kWarpM + i * 16 + g;
      const int64_t n = n0 + wn * C::kWarpN + j * 8 + 2 * t;
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // rows g and g + 8
        const int64_t mm = m + 8 * h;
        if (mm >= p.m) continue;
        if (n < p.n) out[mm * p.n + n] = acc[i][j][2 * h];
        if (n + 1 < p.n) out[mm * p.n + n + 1] = acc[i][j][2 * h + 1];
      }
    }
}

// y[i] = Σ_z part[z][i], z in order: the deterministic second pass of split-K.
__global__ void __launch_bounds__(256) splitk_reduce_kernel(const float* part, int splits, int64_t mn, float* y) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < mn;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = part[i];
    for (int z = 1; z < splits; ++z) s += part[z * mn + i];
    y[i] = s;
  }
}

// ---------------------------------------------------------------------------------------
// The plan: which kernel, how many K splits.

enum class Kind { kGemv, kTiled, kTc16x, kTc32x, kTc64, kTc128 };
constexpr int kTcKinds = 4;  // kTc16x.. kTc128, indexed from kTc16x

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kGemv: return "gemv";
    case Kind::kTiled: return "tiled";
    case Kind::kTc16x: return "tc_m16x";
    case Kind::kTc32x: return "tc_m32x";
    case Kind::kTc64: return "tc_m64";
    case Kind::kTc128: return "tc_m128";
  }
  return "?";
}

// The tensor-core weight types: bf16, i8, fp8_e4m3 (index into DeviceInfo's tables).
constexpr int kTcWeights = 3;
int weight_index(DType t) { return t == DType::kBF16 ? 0 : t == DType::kI8 ? 1 : 2; }

template <int BM, bool kSplitX, DType kW>
void tc_func_setup(int smem_optin, int* slots, bool* fits) {
  auto* f = tc_kernel<BM, kSplitX, kW>;
  constexpr int smem = TcCfg<BM, kW>::kSmem;
  *fits = smem <= smem_optin;
  if (!*fits) return;  // e.g. bf16 BM = 32 and 128 on sm_86 / sm_89 (99 KiB per block)
  DSV2_CUDA_CHECK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int n = 0;
  DSV2_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, f, kTcThreads, smem));
  *slots = std::max(1, n);
}

template <DType kW>
void tc_setup_all(int optin, int* slots, bool* fits) {
  tc_func_setup<16, true, kW>(optin, &slots[0], &fits[0]);
  tc_func_setup<32, true, kW>(optin, &slots[1], &fits[1]);
  tc_func_setup<64, false, kW>(optin, &slots[2], &fits[2]);
  tc_func_setup<128, false, kW>(optin, &slots[3], &fits[3]);
}

struct DeviceInfo {
  int sms = 1;
  int slots[kTcWeights][kTcKinds] = {};  // resident tc blocks per SM, per weight type and kind
  bool fits[kTcWeights][kTcKinds] = {};  // the kind's stages fit the per-block shared-memory opt-in
  bool pools = false;                    // stream-ordered allocation (split-K scratch) works
};

// Per device, once: SM count, the tc kernels' shared-memory opt-in and occupancy, and a
// memory-pool release threshold so the per-call split-K scratch is recycled, not remapped.
const DeviceInfo& device_info() {
  int dev = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<int, DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dev);
  if (it != cache.end()) return it->second;
  DeviceInfo d;
  DSV2_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  int optin = 0;
  DSV2_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  tc_setup_all<DType::kBF16>(optin, d.slots[0], d.fits[0]);
  tc_setup_all<DType::kI8>(optin, d.slots[1], d.fits[1]);
  tc_setup_all<DType::kFP8E4M3>(optin, d.slots[2], d.fits[2]);
  int pools = 0;
  if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev) == cudaSuccess && pools) {
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
      d.pools = true;
      uint64_t cur = 0, want = 64ull << 20;  // only ever raised, never lowered
      if (cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &cur) == cudaSuccess && cur < want)
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &want);
    }
  }
  cudaGetLastError();  // the optional pool queries must not leave an error behind
  return cache.emplace(dev, d).first->second;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

struct Plan {
  Kind kind = Kind::kTiled;
  int bm = 0;  // tc kinds: rows per block
  int splits = 1;
  int64_t k_split = 0;  // K per split (a multiple of kBK)
};

Plan make_plan(const GemmParams& p) {
  Plan pl;
  // gemm returns before empty outputs, but gemm_kernel_name may be asked about them (m or n = 0).
  // bf16: K % 8 == 0 (whole 16-byte chunks of W and x); 8-bit: K % 16 == 0 (16 codes).
  const bool w8 = w8::is_8bit(p.w_dtype);
  const bool tc = (p.w_dtype == DType::kBF16 || (w8 && p.w_scale)) && p.m > 0 && p.n > 0 && p.k > 0 &&
                  p.k % (w8 ? 16 : 8) == 0 && aligned16(p.x) && aligned16(p.w);
  const DeviceInfo* d = tc ? &device_info() : nullptr;
  const bool* fits = tc ? d->fits[weight_index(p.w_dtype)] : nullptr;
  pl.kind = !tc ? Kind::kTiled : p.m <= 16 ? Kind::kTc16x : p.m <= 32 ? Kind::kTc32x : p.m <= 64 ? Kind::kTc64 : Kind::kTc128;
  // Where a tile's stages exceed the device's shared-memory opt-in, the next smaller tile with
  // the same x treatment (its grid covers any M), else the SIMT kernels.
  if (pl.kind == Kind::kTc32x && !fits[1]) pl.kind = Kind::kTc16x;
  if (pl.kind == Kind::kTc128 && !fits[3]) pl.kind = Kind::kTc64;
  if (tc && !fits[static_cast<int>(pl.kind) - static_cast<int>(Kind::kTc16x)]) pl.kind = Kind::kTiled;
  if (pl.kind == Kind::kTiled) {
    pl.kind = p.m <= kGemvMaxM ? Kind::kGemv : Kind::kTiled;
    return pl;
  }
  const int bm = pl.kind == Kind::kTc16x ? 16 : pl.kind == Kind::kTc32x ? 32 : pl.kind == Kind::kTc64 ? 64 : 128;
  pl.bm = bm;
  const int bk = bm <= 32 ? TcCfg<16, DType::kBF16>::kBK : TcCfg<64, DType::kBF16>::kBK;  // the same for 8-bit W
  const int64_t ktiles = (p.k + bk - 1) / bk;
  pl.k_split = ktiles * bk;
  const int64_t blocks = ((p.n + kBN - 1) / kBN) * ((p.m + bm - 1) / bm);
  const int64_t slots = static_cast<int64_t>(d->sms) *
                        d->slots[weight_index(p.w_dtype)][static_cast<int>(pl.kind) - static_cast<int>(Kind::kTc16x)];
  // Splits wanted: enough blocks for one wave of resident blocks; and, for the weight-
  // streaming shapes (M ≤ 64), blocks of ≤ 256 KiB of W each, so the last, partial wave (a
  // few blocks streaming at one SM's rate) stays short against the whole call.
  int64_t want = blocks < slots ? (slots + blocks - 1) / blocks : 1;
  const int64_t w_bytes = kBN * p.k * (w8 ? 1 : 2);  // W bytes one block streams
  if (p.m <= 64) want = std::max<int64_t>(want, (w_bytes + (256 << 10) - 1) / (256 << 10));
  if (d->pools && want > 1) {
    const int64_t cap = std::min<int64_t>({16, ktiles / 4, p.k / (32 * p.m)});
    const int64_t s = std::max<int64_t>(1, std::min(want, cap));
    const int64_t per = (ktiles + s - 1) / s;  // K-tiles per split; every split non-empty
    pl.splits = static_cast<int>((ktiles + per - 1) / per);
    pl.k_split = per * bk;
  }
  return pl;
}

template <int BM, bool kSplitX, DType kW>
void launch_tc(const GemmParams& p, const Plan& pl, float* part, cudaStream_t s) {
  const dim3 grid(ceil_div(p.n, kBN), ceil_div(p.m, BM), static_cast<unsigned>(pl.splits));
  constexpr int smem = TcCfg<BM, kW>::kSmem;
  DSV2_LAUNCH((tc_kernel<BM, kSplitX, kW>), grid, kTcThreads, smem, s)(p, pl.k_split, part);
  DSV2_CUDA_LAUNCH_CHECK();
}

template <DType kW>
void launch_tc_kind(const GemmParams& p, const Plan& pl, float* part, cudaStream_t s) {
  switch (pl.kind) {
    case Kind::kTc16x: launch_tc<16, true, kW>(p, pl, part, s); break;
    case Kind::kTc32x: launch_tc<32, true, kW>(p, pl, part, s); break;
    case Kind::kTc64: launch_tc<64, false, kW>(p, pl, part, s); break;
    default: launch_tc<128, false, kW>(p, pl, part, s); break;
  }
}

}  // namespace

// The kind, with "_i8" / "_fp8" for the 8-bit tensor-core kernels.
const char* gemm_kernel_name(const GemmParams& p) {
  const Kind k = make_plan(p).kind;
  if (k == Kind::kGemv || k == Kind::kTiled || !w8::is_8bit(p.w_dtype)) return kind_name(k);
  static const char* const names[2][kTcKinds] = {{"tc_m16x_i8", "tc_m32x_i8", "tc_m64_i8", "tc_m128_i8"},
                                                  {"tc_m16x_fp8", "tc_m32x_fp8", "tc_m64_fp8", "tc_m128_fp8"}};
  return names[p.w_dtype == DType::kI8 ? 0 : 1][static_cast<int>(k) - static_cast<int>(Kind::kTc16x)];
}

void gemm(const GemmParams& p, void* stream) {
  if (p.m == 0 || p.n == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.k == 0) {  // an empty sum
    DSV2_CUDA_CHECK(cudaMemsetAsync(p.y, 0, static_cast<size_t>(p.m * p.n) * sizeof(float), s));
    return;
  }
  Plan pl = make_plan(p);
  if (pl.kind == Kind::kGemv) {
    DSV2_LAUNCH(gemv_kernel, ceil_div(p.n, kGemvWarps), kGemvWarps * 32, 0, s)(p);
    DSV2_CUDA_LAUNCH_CHECK();
    return;
  }
  if (pl.kind == Kind::kTiled) {
    DSV2_CHECK(ceil_div(p.m, kTile) <= 65535, kUnsupported, "CUDA gemm: m = " << p.m << " rows exceed the tiled kernel's grid");
    const dim3 grid(ceil_div(p.n, kTile), ceil_div(p.m, kTile));
    DSV2_LAUNCH(gemm_tiled_kernel, grid, 256, 0, s)(p);
    DSV2_CUDA_LAUNCH_CHECK();
    return;
  }
  DSV2_CHECK(ceil_div(p.m, pl.bm) <= 65535, kUnsupported, "CUDA gemm: m = " << p.m << " rows exceed the tensor-core kernel's grid");
  float* part = nullptr;
  const int64_t mn = p.m * p.n;
  if (pl.splits > 1) {
    // Stream-ordered scratch: no race with other streams, recycled by the pool.
    if (cudaMallocAsync(reinterpret_cast<void**>(&part), static_cast<size_t>(pl.splits * mn) * sizeof(float), s) != cudaSuccess) {
      cudaGetLastError();  // no scratch: run unsplit (slower, same sums up to the split order)
      part = nullptr;
      pl.splits = 1;
      pl.k_split = p.k;  // one split: all of K
    }
  }
  try {
    if (p.w_dtype == DType::kI8) launch_tc_kind<DType::kI8>(p, pl, part, s);
    else if (p.w_dtype == DType::kFP8E4M3) launch_tc_kind<DType::kFP8E4M3>(p, pl, part, s);
    else launch_tc_kind<DType::kBF16>(p, pl, part, s);
    if (part) {
      const int64_t blocks = std::min<int64_t>((mn + 255) / 256, 8 * static_cast<int64_t>(device_info().sms));
      DSV2_LAUNCH(splitk_reduce_kernel, static_cast<unsigned>(blocks), 256, 0, s)(part, pl.splits, mn, p.y);
      DSV2_CUDA_LAUNCH_CHECK();
    }
  } catch (...) {
    if (part) cudaFreeAsync(part, s);  // the launch error is the one to report
    throw;
  }
  if (part) DSV2_CUDA_CHECK(cudaFreeAsync(part, s));
}

double gemm_bench_ms(const GemmParams* ps, int n, int iters, void* stream) {
  DSV2_CHECK(n >= 1 && iters >= 1, kRange, "gemm_bench_ms: n = " << n << ", iters = " << iters << " must be ≥ 1");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  for (int i = 0; i < n; ++i) gemm(ps[i], stream);  // warm-up: device setup, pool growth
  DSV2_CUDA_CHECK(cudaStreamSynchronize(s));
  // One CUDA graph of `iters` calls, so that host launch overhead (two launches and the
  // scratch allocation per call) does not hide microsecond kernels.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    bool ok = true;
    try {
      for (int i = 0; i < iters; ++i) gemm(ps[i % n], stream);
    } catch (const Error&) {
      ok = false;
    }
    if (cudaStreamEndCapture(s, &graph) != cudaSuccess) ok = false;
    if (ok && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) ok = false;
    if (!ok) {
      if (graph) cudaGraphDestroy(graph);
      graph = nullptr;
      exec = nullptr;
    }
  }
  cudaGetLastError();
  if (!exec) {  // no graphs here: plain launches
    int i = 0;
    return time_ms(stream, iters, [&] { gemm(ps[i++ % n], stream); });
  }
  DSV2_CUDA_CHECK(cudaGraphLaunch(exec, s));  // warm-up of the graph itself
  const double ms = time_ms(stream, 1, [&] { DSV2_CUDA_CHECK(cudaGraphLaunch(exec, s)); });
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return ms / iters;
}

}  // namespace dsv2::cuda
