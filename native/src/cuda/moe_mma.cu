// Tensor-core grouped GEMMs of the MoE experts (see moe_mma.cuh for the problem layout).
//
// mma.sync.m16n8k16 (bf16 in, f32 accumulate) fragment layout, lane = 4·g + q:
//   A (16×16, row-major): reg0 = A[g][2q..2q+1], reg1 = A[g+8][2q..], reg2 = A[g][2q+8..], reg3 = A[g+8][2q+8..]
//   B (16×8, "col": k contiguous per column n): reg0 = B[2q..2q+1][g], reg1 = B[2q+8..2q+9][g]
//   C (16×8): c0, c1 = C[g][2q], C[g][2q+1]; c2, c3 = C[g+8][2q], C[g+8][2q+1]
//
// Skinny kernel (decode): swap-AB. The weight rows are the mma's M side, the tokens its N side,
// so a segment of 1..16 tokens wastes no weight bytes. No shared memory on the way in: lane
// (g, q) loads 16 bytes = 8 consecutive k of weight rows g and g + 8 and of token g, covering
// a 32-wide k chunk as two k16 steps. The mma's logical k order is a permutation of the
// physical one (logical 2q + 8·hi + lo of step s ↔ physical 8q + 4s + 2·hi + lo, a bijection of
// [0, 32)), identical for A and B, so the dot products are unchanged. 4 warps split the chunks
// and reduce through shared memory in a fixed order (deterministic).
//
// Tiled kernel (prefill): 128×128 output tiles (SwiGLU: 64 h columns = 64 gate + 64 up weight
// rows, so each warp holds the gate and up accumulators of the same columns), 8 warps of
// 32×64, k in steps of 32 through a 4-stage cp.async ring (rows padded to 40 halves: 80-byte
// rows make the ldmatrix phases conflict-free), zero-filled past the segment, n and k.
#include "moe_mma.cuh"

#include <algorithm>
#include <atomic>

#include "common.cuh"
#include "ptx.cuh"
#include "w8.cuh"
#include "../core/dtype.h"

namespace dsv2::cuda::moe_mma {
namespace {

// 16 bytes from global memory that is read once (weights): no L1 allocation.
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  return ptx::ld_nc_na_v4(p);
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// The problem of grid column x and the tile inside it; false when the block has no work.
struct Seg {
  int64_t begin = 0, end = 0;  // segment positions [begin, end) of this tile
  int64_t expert = 0;
};

__device__ __forceinline__ bool tile_segment(const Problem& P, int64_t tile, int rows, Seg* s) {
  if (P.tiles) {
    if (tile >= *P.n_tiles) return false;
    s->expert = P.tiles[2 * tile];
    const int64_t seg_begin = P.offsets[s->expert], seg_end = P.offsets[s->expert + 1];
    s->begin = seg_begin + P.tiles[2 * tile + 1];
    s->end = s->begin + rows < seg_end ? s->begin + rows : seg_end;
  } else {
    s->expert = 0;
    s->begin = tile * rows;
    s->end = s->begin + rows < P.m ? s->begin + rows : P.m;
  }
  return s->begin < s->end;
}

__device__ __forceinline__ Problem pick(const Launch& l, int64_t* tile) {
  if (*tile < l.prob[0].grid_tiles) return l.prob[0];
  *tile -= l.prob[0].grid_tiles;
  return l.prob[1];
}

__device__ __forceinline__ int64_t a_row(const Problem& P, int64_t pos) {
  return P.a_rows ? P.a_rows[pos] / P.a_div : pos;
}

// ---------------------------------------------------------------------------------------------
// Skinny (decode) kernel.

constexpr int kSkWarps = 4;
constexpr int kSkUnroll = 4;  // 32-wide k chunks in flight per warp

// Cross-warp reduction of the skinny kernels in a fixed order (warp 0 + 1 + 2 + 3), then warp 0
// applies the epilogue (SwiGLU → h, or the scaled store of the down GEMM). Every thread of the
// block calls it (it synchronises).
template <bool kSwiGLU>
__device__ __forceinline__ void skinny_finish(const Problem& P, const Seg& sg, int64_t c0, float (&acc)[2][2][4]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, q = lane % 4;
  __shared__ float red[kSkWarps][16][32];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) red[warp][(mt * 2 + nt) * 4 + i][lane] = acc[mt][nt][i];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float v = red[0][(mt * 2 + nt) * 4 + i][lane];
#pragma unroll
        for (int w = 1; w < kSkWarps; ++w) v += red[w][(mt * 2 + nt) * 4 + i][lane];
        acc[mt][nt][i] = v;
      }
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t pos = sg.begin + nt * 8 + 2 * q + (i & 1);
      if (pos >= sg.end) continue;
      if (kSwiGLU) {
        const int64_t col = c0 + g + (i >= 2 ? 8 : 0);
        if (col < P.n) P.h[pos * P.n + col] = f32_to_bf16(silu(acc[0][nt][i]) * acc[1][nt][i]);
      } else {
        const int64_t dest = P.o_rows ? P.o_rows[pos] : pos;
        const float scale = P.o_scale ? P.o_scale[dest] : 1.0f;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const int64_t col = c0 + mt * 16 + g + (i >= 2 ? 8 : 0);
          if (col < P.n) P.out[dest * P.n + col] = scale * acc[mt][nt][i];
        }
      }
    }
}

template <bool kSwiGLU>
__global__ void __launch_bounds__(kSkWarps * 32) skinny_kernel(Launch l) {
  int64_t tile = blockIdx.x;
  const Problem P = pick(l, &tile);
  Seg sg;
  if (!tile_segment(P, tile, kSkinnyRows, &sg)) return;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * (kSwiGLU ? 16 : 32);  // first output column
  if (c0 >= P.n) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, q = lane % 4;
  const int64_t K = P.k;

  // Weight rows of this lane: [m-tile][half] (m-tile 0/1 = gate/up for SwiGLU, else columns
  // c0..c0+15 / c0+16..c0+31; half = row g or g + 8).
  const uint16_t* wp[2][2];
  bool wv[2][2];
  const uint16_t* we = P.w + sg.expert * P.w_stride;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int64_t col = kSwiGLU ? c0 + hf * 8 + g : c0 + mt * 16 + hf * 8 + g;
      const int64_t row = kSwiGLU && mt == 1 ? P.n + col : col;
      wv[mt][hf] = col < P.n;
      wp[mt][hf] = we + (wv[mt][hf] ? row : 0) * K;
    }
  // Token rows of this lane: n-tile nt holds tokens nt·8 .. nt·8 + 7 of the tile.
  const uint16_t* xp[2];
  bool xv[2];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const int64_t pos = sg.begin + nt * 8 + g;
    xv[nt] = pos < sg.end;
    xp[nt] = P.a + (xv[nt] ? a_row(P, pos) : 0) * K;
  }

  float acc[2][2][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

  const int64_t n_chunks = (K + 31) / 32;
  for (int64_t c = static_cast<int64_t>(warp) * kSkUnroll; c < n_chunks; c += kSkWarps * kSkUnroll) {
    uint4 wr[kSkUnroll][2][2], xr[kSkUnroll][2];
    // all loads first (kSkUnroll · 4 weight loads of 16 bytes in flight per lane)
#pragma unroll
    for (int u = 0; u < kSkUnroll; ++u) {
      const int64_t kk = (c + u) * 32 + q * 8;
      const bool kin = kk < K;  // K % 8 == 0: a lane's 8 elements are all in or all out
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
          wr[u][mt][hf] = kin && wv[mt][hf] ? ld_stream16(wp[mt][hf] + kk) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
        xr[u][nt] = kin && xv[nt] ? *reinterpret_cast<const uint4*>(xp[nt] + kk) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kSkUnroll; ++u)
#pragma unroll
      for (int s = 0; s < 2; ++s)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
            ptx::mma_bf16(acc[mt][nt],
                          {word(wr[u][mt][0], 2 * s), word(wr[u][mt][1], 2 * s), word(wr[u][mt][0], 2 * s + 1),
                           word(wr[u][mt][1], 2 * s + 1)},
                          word(xr[u][nt], 2 * s), word(xr[u][nt], 2 * s + 1));
  }

  skinny_finish<kSwiGLU>(P, sg, c0, acc);
}

// ---------------------------------------------------------------------------------------------
// Skinny kernel with 8-bit block-scaled weights (DeepSeek-V3 e4m3 + 128×128 weight_scale_inv,
// or the engine's int8 codes in the same layout).

// 8 bytes read once (weight codes): no L1 allocation.
__device__ __forceinline__ uint2 ld_stream8(const void* p) {
  return ptx::ld_nc_na_v2(p);
}

// Bytes 2j, 2j + 1 of a lane's 8 codes (k offsets 2j, 2j + 1) as bf16x2: word j of the bf16
// layout the bf16 kernel loads, so the fragment mapping below is the bf16 kernel's.
template <DType kCode>
__device__ __forceinline__ uint32_t code_word(const uint2& v, int j) {
  const uint32_t w = j < 2 ? v.x : v.y;
  return w8::codes_to_bf16x2<kCode>(j % 2 == 0 ? w : w >> 16);
}

// As skinny_kernel, with each lane loading 8 codes (8 bytes) per row and 32-wide k chunk. A
// warp's kSkUnroll = 4 chunks of one iteration are the 128 k of one scale block (c is a
// multiple of 4), so the iteration accumulates an exact-bf16-weight partial in f32 and adds it
// times the scale of each row: acc += scale[row / 128, c / 4] · partial.
template <bool kSwiGLU, DType kCode>
__global__ void __launch_bounds__(kSkWarps * 32) skinny_w8_kernel(Launch l) {
  static_assert(kSkUnroll * 32 == 128, "one iteration = one 128-wide scale block of k");
  int64_t tile = blockIdx.x;
  const Problem P = pick(l, &tile);
  Seg sg;
  if (!tile_segment(P, tile, kSkinnyRows, &sg)) return;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * (kSwiGLU ? 16 : 32);  // first output column
  if (c0 >= P.n) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, q = lane % 4;
  const int64_t K = P.k;
  const int64_t k_blocks = (K + 127) / 128;

  // Weight rows of this lane (as skinny_kernel) and their scale rows.
  const uint8_t* wp[2][2];
  const float* sp[2][2];
  bool wv[2][2];
  const uint8_t* we = P.w8 + sg.expert * P.w_stride;
  const float* se = P.w_scale + sg.expert * P.scale_stride;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int64_t col = kSwiGLU ? c0 + hf * 8 + g : c0 + mt * 16 + hf * 8 + g;
      const int64_t row = kSwiGLU && mt == 1 ? P.n + col : col;  // row of the stacked matrix
      wv[mt][hf] = col < P.n;
      wp[mt][hf] = we + (wv[mt][hf] ? row : 0) * K;
      sp[mt][hf] = se + (wv[mt][hf] ? row / 128 : 0) * k_blocks;
    }
  const uint16_t* xp[2];
  bool xv[2];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
    const int64_t pos = sg.begin + nt * 8 + g;
    xv[nt] = pos < sg.end;
    xp[nt] = P.a + (xv[nt] ? a_row(P, pos) : 0) * K;
  }

  float acc[2][2][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

  const int64_t n_chunks = (K + 31) / 32;
  for (int64_t c = static_cast<int64_t>(warp) * kSkUnroll; c < n_chunks; c += kSkWarps * kSkUnroll) {
    uint2 wr[kSkUnroll][2][2];
    uint4 xr[kSkUnroll][2];
#pragma unroll
    for (int u = 0; u < kSkUnroll; ++u) {
      const int64_t kk = (c + u) * 32 + q * 8;
      const bool kin = kk < K;  // K % 8 == 0: a lane's 8 codes are all in or all out
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
          wr[u][mt][hf] = kin && wv[mt][hf] ? ld_stream8(wp[mt][hf] + kk) : make_uint2(0, 0);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
        xr[u][nt] = kin && xv[nt] ? *reinterpret_cast<const uint4*>(xp[nt] + kk) : make_uint4(0, 0, 0, 0);
    }
    float scl[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) scl[mt][hf] = wv[mt][hf] ? __ldg(sp[mt][hf] + c / kSkUnroll) : 0.0f;
    float part[2][2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[mt][nt][i] = 0.0f;
#pragma unroll
    for (int u = 0; u < kSkUnroll; ++u)
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        uint32_t a[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          a[mt][0] = code_word<kCode>(wr[u][mt][0], 2 * s);
          a[mt][1] = code_word<kCode>(wr[u][mt][1], 2 * s);
          a[mt][2] = code_word<kCode>(wr[u][mt][0], 2 * s + 1);
          a[mt][3] = code_word<kCode>(wr[u][mt][1], 2 * s + 1);
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
            ptx::mma_bf16(part[mt][nt], a[mt], word(xr[u][nt], 2 * s), word(xr[u][nt], 2 * s + 1));
      }
    // C fragment: elements 0, 1 are weight row g of the m-tile, 2, 3 row g + 8.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = fmaf(scl[mt][i / 2], part[mt][nt][i], acc[mt][nt][i]);
  }

  skinny_finish<kSwiGLU>(P, sg, c0, acc);
}

// ---------------------------------------------------------------------------------------------
// Tiled (prefill) kernel.

constexpr int kBM = kTiledRows, kBN = 128, kBK = 32, kStages = 4, kLd = kBK + 8;
constexpr int kTiledThreads = 256;
constexpr size_t kTiledSmem = static_cast<size_t>(kStages) * (kBM + kBN) * kLd * sizeof(uint16_t);  // 81920

// First local B row (of the 128 in the tile) of this warp's n-tile pair jp (n-tiles 2jp, 2jp+1).
template <bool kSwiGLU>
__device__ __forceinline__ int pair_row(int warp_n, int jp) {
  if (kSwiGLU) return (jp < 2 ? 0 : 64) + warp_n * 32 + (jp % 2) * 16;
  return warp_n * 64 + jp * 16;
}

template <bool kSwiGLU>
__global__ void __launch_bounds__(kTiledThreads, 2) tiled_kernel(Launch l) {
  int64_t tile = blockIdx.x;
  const Problem P = pick(l, &tile);
  Seg sg;
  if (!tile_segment(P, tile, kBM, &sg)) return;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * (kSwiGLU ? kBN / 2 : kBN);  // first output column
  if (c0 >= P.n) return;
  DSV2_DYNAMIC_SMEM(uint16_t, smem, 16);
  uint16_t* As = smem;                          // [kStages][kBM][kLd]
  uint16_t* Bs = smem + kStages * kBM * kLd;    // [kStages][kBN][kLd]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % 4, warp_n = warp / 4;
  const int64_t K = P.k;

  // Loader: thread tid copies 16-byte chunk (tid % 4) of rows tid / 4 and 64 + tid / 4, of A and of B.
  const int lk = (tid % 4) * 8;
  const uint16_t* a_src[2];
  const uint16_t* b_src[2];
  bool a_ok[2], b_ok[2];
  const uint16_t* we = P.w + sg.expert * P.w_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = tid / 4 + 64 * r;
    const int64_t pos = sg.begin + row;
    a_ok[r] = pos < sg.end;
    a_src[r] = P.a + (a_ok[r] ? a_row(P, pos) : 0) * K + lk;
    int64_t wrow, col;
    if (kSwiGLU) {
      col = c0 + (row % 64);
      wrow = row < 64 ? col : P.n + col;
    } else {
      col = c0 + row;
      wrow = col;
    }
    b_ok[r] = col < P.n;
    b_src[r] = we + (b_ok[r] ? wrow : 0) * K + lk;
  }
  const uint32_t as_base = ptx::smem_addr(As);
  const uint32_t bs_base = ptx::smem_addr(Bs);
  const int64_t k_tiles = (K + kBK - 1) / kBK;
  auto load_stage = [&](int stage, int64_t kt) {
    const int64_t k = kt * kBK;
    const bool kin = k + lk < K;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = tid / 4 + 64 * r;
      const uint32_t off = static_cast<uint32_t>(((stage * kBM + row) * kLd + lk) * sizeof(uint16_t));
      ptx::cp_async16(as_base + off, kin && a_ok[r] ? a_src[r] + k : P.a, kin && a_ok[r] ? 16 : 0);
      ptx::cp_async16(bs_base + off, kin && b_ok[r] ? b_src[r] + k : P.w, kin && b_ok[r] ? 16 : 0);
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][j][i] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    ptx::cp_async_commit();  // empty groups keep the wait count uniform
  }
  // ldmatrix lane addresses inside a stage (bytes): A rows warp_m·32 + mi·16 + lane % 16,
  // column (lane / 16)·8; B rows pair_row + lane % 8 + (lane / 16)·8, column ((lane / 8) % 2)·8.
  const int a_ld_row = warp_m * 32 + lane % 16, a_ld_col = (lane / 16) * 8;
  const int b_ld_row = lane % 8 + (lane / 16) * 8, b_ld_col = ((lane / 8) % 2) * 8;
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    ptx::cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt is in; every warp is done with stage kt - 1, which the next load reuses
    {
      const int64_t nk = kt + kStages - 1;
      if (nk < k_tiles) load_stage(static_cast<int>(nk % kStages), nk);
      ptx::cp_async_commit();
    }
    const int stage = static_cast<int>(kt % kStages);
    const uint32_t a_st = as_base + static_cast<uint32_t>(stage * kBM * kLd * sizeof(uint16_t));
    const uint32_t b_st = bs_base + static_cast<uint32_t>(stage * kBN * kLd * sizeof(uint16_t));
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t af[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        ptx::ldmatrix_x4(af[mi][0], af[mi][1], af[mi][2], af[mi][3],
                         a_st + static_cast<uint32_t>(((a_ld_row + mi * 16) * kLd + ks * 16 + a_ld_col) * sizeof(uint16_t)));
#pragma unroll
      for (int jp = 0; jp < 4; ++jp) {
        uint32_t bf[4];
        ptx::ldmatrix_x4(
            bf[0], bf[1], bf[2], bf[3],
            b_st + static_cast<uint32_t>(((pair_row<kSwiGLU>(warp_n, jp) + b_ld_row) * kLd + ks * 16 + b_ld_col) *
                                         sizeof(uint16_t)));
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          ptx::mma_bf16(acc[mi][2 * jp], af[mi], bf[0], bf[1]);
          ptx::mma_bf16(acc[mi][2 * jp + 1], af[mi], bf[2], bf[3]);
        }
      }
    }
  }
  ptx::cp_async_wait<0>();  // nothing may be in flight into shared memory when the block exits

  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int64_t pos = sg.begin + warp_m * 32 + mi * 16 + hf * 8 + g;
      if (pos >= sg.end) continue;
      if (kSwiGLU) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t col = c0 + warp_n * 32 + j * 8 + 2 * q;  // even; n % 8 == 0, so col + 1 < n too
          if (col >= P.n) continue;
          const float h0 = silu(acc[mi][j][2 * hf]) * acc[mi][j + 4][2 * hf];
          const float h1 = silu(acc[mi][j][2 * hf + 1]) * acc[mi][j + 4][2 * hf + 1];
          *reinterpret_cast<uint32_t*>(P.h + pos * P.n + col) = ptx::pack_bf16(h0, h1);
        }
      } else {
        const int64_t dest = P.o_rows ? P.o_rows[pos] : pos;
        const float scale = P.o_scale ? P.o_scale[dest] : 1.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int64_t col = c0 + warp_n * 64 + j * 8 + 2 * q;
          if (col >= P.n) continue;
          *reinterpret_cast<float2*>(P.out + dest * P.n + col) =
              make_float2(scale * acc[mi][j][2 * hf], scale * acc[mi][j][2 * hf + 1]);
        }
      }
    }
}

// Grid: x over both problems' tiles, y over the wider problem's column tiles.
dim3 grid_of(const Launch& l, int64_t cols_per_block) {
  int64_t x = 0, y = 0;
  for (int i = 0; i < l.n_prob; ++i) {
    x += l.prob[i].grid_tiles;
    y = std::max<int64_t>(y, (l.prob[i].n + cols_per_block - 1) / cols_per_block);
  }
  DSV2_CHECK(x >= 1 && x <= 0x7fffffff && y >= 1 && y <= 65535, kUnsupported,
             "CUDA moe_experts: grouped GEMM grid " << x << " × " << y << " is outside the launch limits");
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y));
}

Launch normalized(const Launch& l) {
  Launch r = l;
  if (r.n_prob < 2) r.prob[1] = Problem{};  // grid_tiles 0: never picked
  return r;
}

}  // namespace

void grouped_skinny(const Launch& l, bool swiglu, cudaStream_t s) {
  const Launch ln = normalized(l);
  const dim3 grid = grid_of(ln, swiglu ? 16 : 32);
  if (swiglu) DSV2_LAUNCH((skinny_kernel<true>), grid, kSkWarps * 32, 0, s)(ln);
  else DSV2_LAUNCH((skinny_kernel<false>), grid, kSkWarps * 32, 0, s)(ln);
  DSV2_CUDA_LAUNCH_CHECK();
}

void grouped_skinny_w8(const Launch& l, DType code, bool swiglu, cudaStream_t s) {
  DSV2_CHECK(code == DType::kI8 || code == DType::kFP8E4M3, kInternal, "grouped_skinny_w8: codes must be i8 or fp8_e4m3");
  const Launch ln = normalized(l);
  const dim3 grid = grid_of(ln, swiglu ? 16 : 32);
  const bool fp8 = code == DType::kFP8E4M3;
  if (swiglu && fp8) DSV2_LAUNCH((skinny_w8_kernel<true, DType::kFP8E4M3>), grid, kSkWarps * 32, 0, s)(ln);
  else if (fp8) DSV2_LAUNCH((skinny_w8_kernel<false, DType::kFP8E4M3>), grid, kSkWarps * 32, 0, s)(ln);
  else if (swiglu) DSV2_LAUNCH((skinny_w8_kernel<true, DType::kI8>), grid, kSkWarps * 32, 0, s)(ln);
  else DSV2_LAUNCH((skinny_w8_kernel<false, DType::kI8>), grid, kSkWarps * 32, 0, s)(ln);
  DSV2_CUDA_LAUNCH_CHECK();
}

void grouped_tiled(const Launch& l, bool swiglu, cudaStream_t s) {
  static_assert(kTiledSmem > 48 * 1024, "the attribute below is needed only above 48 KiB");
  // Above 48 KiB of dynamic shared memory needs the opt-in, once per device (not a stream
  // operation: also fine while a graph is being captured).
  static std::atomic<uint64_t> opted_in{0};
  int dev = 0;
  DSV2_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = 1ull << (dev & 63);
  if (!(opted_in.load() & bit)) {
    DSV2_CUDA_CHECK(cudaFuncSetAttribute(tiled_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kTiledSmem)));
    DSV2_CUDA_CHECK(cudaFuncSetAttribute(tiled_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kTiledSmem)));
    opted_in.fetch_or(bit);
  }
  const Launch ln = normalized(l);
  const dim3 grid = grid_of(ln, swiglu ? kBN / 2 : kBN);
  if (swiglu) DSV2_LAUNCH((tiled_kernel<true>), grid, kTiledThreads, kTiledSmem, s)(ln);
  else DSV2_LAUNCH((tiled_kernel<false>), grid, kTiledThreads, kTiledSmem, s)(ln);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace dsv2::cuda::moe_mma
