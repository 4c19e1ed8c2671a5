// Causal flash attention (FlashAttention-2 structure) on tensor cores for MLA prefill; see
// mla_prefill_flash.cuh for the data layout and numerics.
//
// One CTA = 64 query rows of one head, 4 warps × 16 rows. Grid (query tiles, heads): CUDA
// starts blocks x-fastest, so the CTAs resident at one time are the tiles of a few heads and
// those heads' K/V stay in L2; within a head the longest (latest) tiles start first.
//
// Per CTA:
//   - q rows go straight from global f32 into mma A fragments (bf16), kept in registers for
//     the whole key loop (d_qk / 16 k-steps × 4 registers);
//   - keys in tiles of 64: K tile [64, d_nope + d_r] (k_nope of the head, then the shared
//     k_pe) and V tile [64, d_v] are copied with cp.async into one of two shared buffers
//     while the other is being computed on (double buffering, one __syncthreads per tile);
//     keys ≥ s_k are zero-filled (so 0 · V never meets garbage);
//   - S = Q·Kᵀ (ldmatrix B fragments), scaled to log2 units, causal mask only on the tiles
//     that cross the diagonal, online softmax with the row statistics in registers (a row is
//     spread over the 4 lanes of a quad), P rounded to bf16 and reused in registers as the A
//     operand of O += P·V (ldmatrix.trans B fragments);
//   - tiles past the last row's diagonal are never visited (a tile of a causal block).
// Shared rows are padded by 8 bf16 (16 bytes) so the 8 row addresses of an ldmatrix fall in
// 8 distinct 16-byte bank groups (row pitch ≡ 16 mod 128 bytes).
#include "mla_prefill_flash.cuh"

#include <cfloat>

#include "common.cuh"
#include "ptx.cuh"

namespace dsv2::cuda::prefill {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kM = 64;        // query rows per CTA
constexpr int kN = 64;        // keys per tile
constexpr int kWarps = 4;     // 16 rows each
constexpr int kThreads = kWarps * 32;

template <int D_NOPE, int D_R, int D_V>
struct Cfg {
  static constexpr int kQk = D_NOPE + D_R;
  static constexpr int kKPitch = kQk + 8;  // bf16 per shared K row
  static constexpr int kVPitch = D_V + 8;  // bf16 per shared V row
  static constexpr int kKTile = kN * kKPitch;
  static constexpr int kVTile = kN * kVPitch;
  static constexpr size_t kSmem = 2 * static_cast<size_t>(kKTile + kVTile) * sizeof(bf16);
  static_assert(D_NOPE % 8 == 0 && D_R % 8 == 0, "16-byte cp.async chunks of k_nope / k_pe rows");
  static_assert(kQk % 16 == 0 && D_V % 16 == 0, "whole mma k-steps over d_qk, pairs of n-tiles over d_v");
  static_assert((kKPitch * 2) % 128 == 16 && (kVPitch * 2) % 128 == 16, "conflict-free ldmatrix rows");
};

template <int D_NOPE, int D_R, int D_V>
__global__ void __launch_bounds__(kThreads, 2) flash_kernel(FlashArgs a) {
  using C = Cfg<D_NOPE, D_R, D_V>;
  constexpr int kQk = C::kQk;
  constexpr int kKSteps = kQk / 16;  // mma k-steps of S = Q·Kᵀ
  constexpr int kVTiles = D_V / 8;   // n-tiles of O
  DSV2_DYNAMIC_SMEM(unsigned char, smem_raw, 16);
  bf16* const s_k_buf = reinterpret_cast<bf16*>(smem_raw);  // [2][kN][kKPitch]
  bf16* const s_v_buf = s_k_buf + 2 * C::kKTile;             // [2][kN][kVPitch]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t4 = lane % 4;  // mma fragment coordinates: row group, column pair
  const int n_tiles = (a.n_q + kM - 1) / kM;
  const int m0 = (n_tiles - 1 - static_cast<int>(blockIdx.x)) * kM;  // latest tiles first
  const int head = blockIdx.y;
  const int off = a.s_k - a.n_q;  // query row i sees keys t ≤ off + i
  const int m_end = min(m0 + kM, a.n_q);
  const int n_blocks = (off + m_end + kN - 1) / kN;  // ≥ 1: key 0 is seen by every row

  const bf16* const kn_head = a.kn + static_cast<int64_t>(head) * a.s_k * D_NOPE;
  const bf16* const v_head = a.v + static_cast<int64_t>(head) * a.s_k * D_V;

  // Key tile kb → buffer buf: every thread issues its share of 16-byte chunks, one group.
  auto load_tile = [&](int kb, int buf) {
    const int k0 = kb * kN;
    bf16* const dk = s_k_buf + buf * C::kKTile;
    bf16* const dv = s_v_buf + buf * C::kVTile;
    constexpr int kNopeChunks = D_NOPE / 8, kPeChunks = D_R / 8, kVChunks = D_V / 8;
#pragma unroll
    for (int i = 0; i < (kN * kNopeChunks + kThreads - 1) / kThreads; ++i) {
      const int c = tid + i * kThreads;
      if (c < kN * kNopeChunks) {
        const int r = c / kNopeChunks, col = c % kNopeChunks, key = k0 + r;
        const bool ok = key < a.s_k;
        ptx::cp_async16(ptx::smem_addr(dk + r * C::kKPitch + col * 8),
                        kn_head + static_cast<int64_t>(ok ? key : 0) * D_NOPE + col * 8, ok ? 16 : 0);
      }
    }
#pragma unroll
    for (int i = 0; i < (kN * kPeChunks + kThreads - 1) / kThreads; ++i) {
      const int c = tid + i * kThreads;
      if (c < kN * kPeChunks) {
        const int r = c / kPeChunks, col = c % kPeChunks, key = k0 + r;
        const bool ok = key < a.s_k;
        ptx::cp_async16(ptx::smem_addr(dk + r * C::kKPitch + D_NOPE + col * 8),
                        a.kpe + static_cast<int64_t>(ok ? key : 0) * D_R + col * 8, ok ? 16 : 0);
      }
    }
#pragma unroll
    for (int i = 0; i < (kN * kVChunks + kThreads - 1) / kThreads; ++i) {
      const int c = tid + i * kThreads;
      if (c < kN * kVChunks) {
        const int r = c / kVChunks, col = c % kVChunks, key = k0 + r;
        const bool ok = key < a.s_k;
        ptx::cp_async16(ptx::smem_addr(dv + r * C::kVPitch + col * 8),
                        v_head + static_cast<int64_t>(ok ? key : 0) * D_V + col * 8, ok ? 16 : 0);
      }
    }
    ptx::cp_async_commit();
  };

  load_tile(0, 0);  // in flight while q is loaded

  // Q fragments of this warp's 16 rows: rows (g, g + 8), columns 16·kk + 2·t4 (+1, +8, +9).
  const int row_a = m0 + warp * 16 + g, row_b = row_a + 8;
  uint32_t qf[kKSteps][4];
  {
    const float* qa = a.q + (static_cast<int64_t>(row_a) * a.h + head) * kQk;
    const float* qb = a.q + (static_cast<int64_t>(row_b) * a.h + head) * kQk;
    const bool va = row_a < a.n_q, vb = row_b < a.n_q;
    const float2 zero = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      const int c = kk * 16 + 2 * t4;
      const float2 x0 = va ? __ldg(reinterpret_cast<const float2*>(qa + c)) : zero;
      const float2 x1 = vb ? __ldg(reinterpret_cast<const float2*>(qb + c)) : zero;
      const float2 x2 = va ? __ldg(reinterpret_cast<const float2*>(qa + c + 8)) : zero;
      const float2 x3 = vb ? __ldg(reinterpret_cast<const float2*>(qb + c + 8)) : zero;
      qf[kk][0] = ptx::pack_bf16(x0.x, x0.y);
      qf[kk][1] = ptx::pack_bf16(x1.x, x1.y);
      qf[kk][2] = ptx::pack_bf16(x2.x, x2.y);
      qf[kk][3] = ptx::pack_bf16(x3.x, x3.y);
    }
  }

  float o[kVTiles][4];
#pragma unroll
  for (int j = 0; j < kVTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};  // running max (log2 units) of rows g, g + 8
  float l_run[2] = {0.0f, 0.0f};            // this lane's share of the running sums

  // ldmatrix lane offsets (elements) inside a tile; see the fragment maps at the mma calls.
  const int lr = lane % 8, lm = lane / 8;
  const int k_off = (lr + (lm / 2) * 8) * C::kKPitch + (lm % 2) * 8;  // S: keys +lr (+8), dims +0/+8
  const int v_off = (lr + (lm % 2) * 8) * C::kVPitch + (lm / 2) * 8;  // PV: keys +lr (+8), dims +0/+8

  for (int kb = 0; kb < n_blocks; ++kb) {
    const int buf = kb & 1;
    ptx::cp_async_wait<0>();  // this thread's chunks of tile kb have landed
    __syncthreads();      // everyone's have, and everyone is done with tile kb − 1's buffer
    if (kb + 1 < n_blocks) load_tile(kb + 1, buf ^ 1);
    const bf16* const ck = s_k_buf + buf * C::kKTile;
    const bf16* const cv = s_v_buf + buf * C::kVTile;

    // S[16 rows, 64 keys] of this warp. One ldmatrix.x4 gives the B fragments of two key
    // n-tiles: matrices (keys +0..7, dims lo), (keys +0..7, dims hi), (keys +8..15, lo), (hi).
    float s[kN / 8][4];
#pragma unroll
    for (int j = 0; j < kN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int np = 0; np < kN / 16; ++np) {
        uint32_t b0, b1, b2, b3;
        ptx::ldmatrix_x4(b0, b1, b2, b3, ptx::smem_addr(ck + np * 16 * C::kKPitch + kk * 16 + k_off));
        ptx::mma_bf16(s[2 * np], qf[kk], b0, b1);
        ptx::mma_bf16(s[2 * np + 1], qf[kk], b2, b3);
      }
    }

    // Scale to log2 units; mask keys past a row's diagonal where the tile crosses it.
    // Element e of n-tile j: row g + 8·(e / 2), key 8·j + 2·t4 + e % 2.
    const bool masked = (kb + 1) * kN - 1 > off + m0;
#pragma unroll
    for (int j = 0; j < kN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * a.scale_log2;
        if (masked) {
          const int key = kb * kN + 8 * j + 2 * t4 + (e & 1);
          const int row = m0 + warp * 16 + g + 8 * (e >> 1);
          if (key > off + row) x = -INFINITY;
        }
        s[j][e] = x;
      }

    // Online softmax, rows g (r = 0) and g + 8 (r = 1); a row's 64 scores sit in the 4 lanes
    // of a quad, so the max is reduced over lanes xor 1, 2.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[r], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing seen yet stays at 0
      const float corr = exp2f(m_run[r] - m_use);              // exp2(−inf) = 0 on the first tile
      m_run[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kN / 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - m_use);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - m_use);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      l_run[r] = l_run[r] * corr + sum;
#pragma unroll
      for (int j = 0; j < kVTiles; ++j) {
        o[j][2 * r] *= corr;
        o[j][2 * r + 1] *= corr;
      }
    }

    // O += P·V. P's A fragment for keys 16·kk..+15 is made of S n-tiles 2·kk and 2·kk + 1
    // (the accumulator layout of m16n8 is the A layout of m16k16 split in two halves).
    // ldmatrix.trans on V rows gives the B fragments of two d_v n-tiles: matrices
    // (keys +0..7, dims lo), (keys +8..15, lo), (keys +0..7, hi), (keys +8..15, hi).
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      const uint32_t pa[4] = {ptx::pack_bf16(s[2 * kk][0], s[2 * kk][1]), ptx::pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              ptx::pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              ptx::pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D_V / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        ptx::ldmatrix_x4_trans(b0, b1, b2, b3, ptx::smem_addr(cv + kk * 16 * C::kVPitch + dp * 16 + v_off));
        ptx::mma_bf16(o[2 * dp], pa, b0, b1);
        ptx::mma_bf16(o[2 * dp + 1], pa, b2, b3);
      }
    }
  }

  // out = O / l, rows g and g + 8 of the warp; the 4 lanes of a quad hold 2 columns per n-tile.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int row = r == 0 ? row_a : row_b;
    if (row < a.n_q) {
      float* dst = a.out + (static_cast<int64_t>(row) * a.h + head) * D_V + 2 * t4;
#pragma unroll
      for (int j = 0; j < kVTiles; ++j)
        *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
  }
}

template <int D_NOPE, int D_R, int D_V>
void launch(const FlashArgs& a, cudaStream_t stream) {
  using C = Cfg<D_NOPE, D_R, D_V>;
  auto* kernel = flash_kernel<D_NOPE, D_R, D_V>;
  // Above the 48 KiB default: opt in (cheap; per device, so done on every launch).
  DSV2_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(C::kSmem)));
  const dim3 grid(ceil_div(a.n_q, kM), static_cast<unsigned>(a.h));
  DSV2_LAUNCH(kernel, grid, kThreads, C::kSmem, stream)(a);
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace

// The compiled specialisations: (d_nope, d_r, d_v) = (128, 64, 128) — DeepSeek-V2, V2-Lite
// (and V3): d_qk 192, d_v 128. Others take the generic kernel.
bool flash_supported(int64_t d_nope, int64_t d_r, int64_t d_v) { return d_nope == 128 && d_r == 64 && d_v == 128; }

const char* flash_kernel_name(int64_t d_nope, int64_t d_r, int64_t d_v) {
  return flash_supported(d_nope, d_r, d_v) ? "flash_mma_bf16_qk192_v128" : "";
}

void flash_attend(const FlashArgs& a, int64_t d_nope, int64_t d_r, int64_t d_v, cudaStream_t stream) {
  DSV2_CHECK(flash_supported(d_nope, d_r, d_v), kInternal,
             "flash prefill kernel: no specialisation for dNope " << d_nope << ", dR " << d_r << ", dV " << d_v);
  DSV2_CHECK(a.h >= 1 && a.h <= 65535, kUnsupported, "CUDA mla_prefill: " << a.h << " heads exceed the grid's 65535");
  if (a.n_q == 0) return;
  launch<128, 64, 128>(a, stream);
}

}  // namespace dsv2::cuda::prefill
