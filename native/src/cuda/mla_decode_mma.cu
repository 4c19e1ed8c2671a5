// Tensor-core absorbed MLA decode for d_c = 512, d_r = 64 (DeepSeek-V2/V3's latent dims),
// bf16 or fp8 latent cache: mma.sync m16n8k16 bf16 × bf16 → f32, which sm_80 and sm_90 both
// run. FlashMLA's structure, written for mma.sync:
//   - a CTA (8 warps) owns 64 query rows of one sequence (rows = s_q · h_q; a CTA pads and
//     masks when fewer, e.g. h_q = 16) and walks the work items of one plan part
//     (mla_decode_internal.cuh); per item it streams BK-key blocks of the paged cache through
//     shared memory with cp.async (double buffering);
//   - q is converted f32 → bf16 once per item into shared memory ([64][576]). THE FAST PATH
//     ROUNDS q AND THE SOFTMAX WEIGHTS P TO BF16, like FlashMLA (whose q and P are bf16);
//     scores and the output accumulate in f32, the row sums use the f32 weights;
//   - S = Q·Kᵀ over the 576 dims, online softmax in registers (log2 domain), then
//     O += P·V with V = the first 512 dims of the same shared-memory K tile (no second load);
//   - bf16 cache: the raw bf16 tokens are copied as they are. fp8 cache: the raw 656-byte
//     tokens are copied (double-buffered) and dequantized, e4m3 code × tile scale rounded to
//     bf16, into a single bf16 tile (Hopper has no bf16 × fp8 MMA; the rounding adds a ≤ 2^-8
//     relative error per element on top of fp8's own, see test/gpu/mla.test.ts).
//
// Work split over the 8 warps (warp w: row group rg = w / 4 of 32 rows, kg = w % 4):
//   - S cooperatively: warp (rg, kg) computes S[its 32 rows, keys kg·BK/4 .. +BK/4) over all
//     576 dims. Computing S redundantly per output-column warp would repeat the 576-dim
//     product 4× (S is the larger half of the FLOPs: 576 vs 512 per key); splitting it by
//     key costs one exchange of row maxima through shared memory (1 KiB) and one of P.
//   - O: warp (rg, kg) owns O[its 32 rows, columns kg·128 .. +128) = 2 m16 tiles × 16 n8
//     tiles = 128 f32 registers per thread. P (bf16) goes to the k_pe columns of the current K
//     tile, which S no longer needs: the 64 rows × BK keys of P take exactly the BK × 64
//     k_pe slots, so P costs no extra shared memory.
//   The 4 warps of a row group compute the same running max (same inputs, same order), so
//   each keeps only its own partial row sums, added at the end.
// Shared memory per CTA: q 72 KiB + 2 bf16 K tiles (bf16 cache) or 1 bf16 K tile + 2 raw fp8
// tiles (fp8 cache) + 1 KiB: BK = 64 needs 217 / 227 KiB (H100's opt-in limit is 227 KiB),
// BK = 32 needs 145 / 150 KiB (A100: 163 KiB). Rows of a tile are 1152 bytes; 16-byte
// chunks are XOR-swizzled by (row mod 8) so that ldmatrix and cp.async hit 8 distinct bank
// groups. Keys at or past the item's end are zero-filled (cp.async with src-size 0), never
// read: their block-table entries may be junk and their bytes NaN, and 0 × NaN in P·V would
// poison the output.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>

#include "common.cuh"
#include "cuda_ops.h"
#include "mla_decode_internal.cuh"
#include "ptx.cuh"

namespace dsv2::cuda::mla {

namespace {

constexpr int kThreads = 256;
constexpr int kRows = 64;             // query rows per CTA
constexpr int kD = 576, kDc = 512;    // key dims, value dims
constexpr int kRowBytes = kD * 2;     // one bf16 row of q or K
constexpr int kKSteps = kD / 16;      // k16 steps of Q·Kᵀ
constexpr int kRawBytes = 656;        // fp8 token: 512 codes, 4 f32 scales, 64 bf16
constexpr int kRawScaleOff = 512, kRawRopeOff = 528;

template <int BK, bool FP8>
struct Cfg {
  static constexpr int kQBytes = kRows * kRowBytes;
  static constexpr int kTileBytes = BK * kRowBytes;
  static constexpr int kRawTileBytes = BK * kRawBytes;
  static constexpr int kTiles = FP8 ? 1 : 2;
  static constexpr int kTileOff = kQBytes;
  static constexpr int kRawOff = kTileOff + kTiles * kTileBytes;
  static constexpr int kMxOff = kRawOff + (FP8 ? 2 * kRawTileBytes : 0);
  static constexpr int kSmem = kMxOff + kRows * 4 * 4;  // + [64 rows][4 key groups] f32
  static constexpr int kNT = BK / 32;                  // n8 tiles of S per warp
  static_assert(BK == 32 || BK == 64, "block keys");
};

// Byte offset of 16-byte chunk `chunk` (0..71) of row `row` in a swizzled [rows][576] bf16 tile.
__device__ __forceinline__ uint32_t tile_off(int row, int chunk) {
  return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
}

// P[row][key chunk kc] (query row 0..63, 8 keys per chunk) in the k_pe columns of a BK-key tile.
template <int BK>
__device__ __forceinline__ uint32_t p_off(int row, int kc) {
  constexpr int kRowsPerTileRow = kRows / BK, kChunksPerRow = BK / 8;
  return tile_off(row / kRowsPerTileRow, 64 + (row % kRowsPerTileRow) * kChunksPerRow + kc);
}

// Four e4m3 codes (a little-endian word) times `scale`, rounded to bf16: two bf16x2 words.
// sm_89+: the hardware conversion. Before: the code's bits placed in an f16 (sign, 4 exponent
// and 3 mantissa bits → f16 bits 15, 13..10 and 9..7) read as the e4m3 value · 2^-8 for every
// code, subnormals included (an e4m3 subnormal lands on an f16 subnormal), hence scale · 2^8
// (finite: scale = amax / 448 ≤ FLT_MAX / 448). Code 0x7F (NaN; only in poisoned or NaN-input
// tokens) decodes to 480 there instead of NaN.
__device__ __forceinline__ void e4m3x4_to_bf16(uint32_t w, float scale, uint32_t& lo, uint32_t& hi) {
  uint32_t h01, h23;
#if defined(DSV2_CUDA_EMU) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890)  // the emulated device is sm_90
  h01 = ptx::cvt_f16x2_e4m3x2(static_cast<uint16_t>(w));
  h23 = ptx::cvt_f16x2_e4m3x2(static_cast<uint16_t>(w >> 16));
#else
  const uint32_t x01 = __byte_perm(w, 0, 0x4140), x23 = __byte_perm(w, 0, 0x4342);  // [c0, 0, c1, 0]
  h01 = ((x01 & 0x007F007Fu) << 7) | ((x01 & 0x00800080u) << 8);
  h23 = ((x23 & 0x007F007Fu) << 7) | ((x23 & 0x00800080u) << 8);
  scale *= 256.0f;
#endif
  __half2 a, b;
  memcpy(&a, &h01, 4);
  memcpy(&b, &h23, 4);
  const float2 fa = __half22float2(a), fb = __half22float2(b);
  lo = ptx::pack_bf16(fa.x * scale, fa.y * scale);
  hi = ptx::pack_bf16(fb.x * scale, fb.y * scale);
}

// Cache addressing of one item: keys t < t1 of a sequence whose block-table row is bt.
struct Keys {
  const uint8_t* cache;
  const int32_t* bt;
  int page_size, t1;

  // Source of key t (`ok` false: past the item's end, zero-filled; the pointer is unread).
  __device__ __forceinline__ const uint8_t* token(int t, int bytes, bool* ok) const {
    *ok = t < t1;
    if (!*ok) return cache;
    const int64_t page = bt[t / page_size];
    return cache + (page * page_size + t % page_size) * bytes;
  }
};

// bf16 cache: keys tb .. tb + BK - 1 into a swizzled tile; 8 threads per row, 9 chunks each.
template <int BK>
__device__ __forceinline__ void load_tile_bf16(uint32_t dst, const Keys& k, int tb, int tid) {
#pragma unroll
  for (int pass = 0; pass < BK / 32; ++pass) {
    const int row = pass * 32 + (tid >> 3);
    bool ok;
    const uint8_t* src = k.token(tb + row, kRowBytes, &ok);
#pragma unroll
    for (int i = 0; i < kD / 64; ++i) {
      const int chunk = (tid & 7) + 8 * i;
      ptx::cp_async16(dst + tile_off(row, chunk), src + chunk * 16, ok ? 16 : 0);
    }
  }
}

// fp8 cache: the raw 656-byte tokens, [BK][656] unswizzled (41 chunks per row).
template <int BK>
__device__ __forceinline__ void load_tile_raw(uint32_t dst, const Keys& k, int tb, int tid) {
#pragma unroll
  for (int pass = 0; pass < BK / 32; ++pass) {
    const int row = pass * 32 + (tid >> 3);
    bool ok;
    const uint8_t* src = k.token(tb + row, kRawBytes, &ok);
#pragma unroll
    for (int i = 0; i < 6; ++i) {
      const int chunk = (tid & 7) + 8 * i;
      if (chunk < kRawBytes / 16) ptx::cp_async16(dst + row * kRawBytes + chunk * 16, src + chunk * 16, ok ? 16 : 0);
    }
  }
}

// Raw fp8 tile → bf16 tile. Thread (row = tid % BK, part = tid / BK) converts 512 / (256 / BK)
// codes of its row (inside one 128-code scale tile) and copies its share of the k_pe chunks.
// Consecutive lanes take consecutive rows: the 656-byte row stride spreads them over the banks.
template <int BK>
__device__ __forceinline__ void dequant_tile(uint8_t* tile, const uint8_t* raw, int tid) {
  constexpr int kPerRow = kThreads / BK, kCodes = kDc / kPerRow, kRope = 8 / kPerRow;
  const int row = tid % BK, part = tid / BK;
  const uint8_t* rr = raw + row * kRawBytes;
  const int c0 = part * kCodes;
  const float scale = *reinterpret_cast<const float*>(rr + kRawScaleOff + 4 * (c0 / 128));
#pragma unroll 2
  for (int i = 0; i < kCodes / 16; ++i) {
    const uint4 w = *reinterpret_cast<const uint4*>(rr + c0 + 16 * i);
    uint4 a, b;
    e4m3x4_to_bf16(w.x, scale, a.x, a.y);
    e4m3x4_to_bf16(w.y, scale, a.z, a.w);
    e4m3x4_to_bf16(w.z, scale, b.x, b.y);
    e4m3x4_to_bf16(w.w, scale, b.z, b.w);
    const int chunk = (c0 + 16 * i) / 8;
    *reinterpret_cast<uint4*>(tile + tile_off(row, chunk)) = a;
    *reinterpret_cast<uint4*>(tile + tile_off(row, chunk + 1)) = b;
  }
#pragma unroll
  for (int k = 0; k < kRope; ++k) {
    const int chunk = part * kRope + k;
    *reinterpret_cast<uint4*>(tile + tile_off(row, 64 + chunk)) =
        *reinterpret_cast<const uint4*>(rr + kRawRopeOff + 16 * chunk);
  }
}

// S[MT m16 tiles of this warp's 32 rows][NT n8 tiles of its keys] = Q·Kᵀ over 576 dims.
template <int MT, int NT>
__device__ __forceinline__ void qk_block(float (&s)[2][2][4], uint32_t q_s, uint32_t k_s, int rg, int kg, int lane) {
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
  // ldmatrix lane roles: A (q) matrices (rows 0-7 | 8-15) × (dims 0-7 | 8-15) → a0..a3;
  // B (K rows = keys): x4 = (keys 0-7, dims 0-7 | 8-15), (keys 8-15, ...) → two n8 tiles.
  const int a_row = rg * 32 + (lane & 7) + ((lane >> 3) & 1) * 8, a_c = lane >> 4;
  const int b_row = kg * (NT * 8) + (lane & 7) + (NT == 2 ? (lane >> 4) * 8 : 0), b_c = (lane >> 3) & 1;
#pragma unroll 4
  for (int kk = 0; kk < kKSteps; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      ptx::ldmatrix_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3], q_s + tile_off(a_row + mt * 16, 2 * kk + a_c));
    uint32_t b[2][2];
    if constexpr (NT == 2) {
      uint32_t t[4];
      ptx::ldmatrix_x4(t[0], t[1], t[2], t[3], k_s + tile_off(b_row, 2 * kk + b_c));
      b[0][0] = t[0], b[0][1] = t[1], b[1][0] = t[2], b[1][1] = t[3];
    } else {
      ptx::ldmatrix_x2(b[0][0], b[0][1], k_s + tile_off(b_row, 2 * kk + b_c));
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) ptx::mma_bf16(s[mt][nt], a[mt], b[nt][0], b[nt][1]);
  }
}

// O[MT m16 tiles][16 n8 tiles of this warp's 128 columns] += P·V over the tile's BK keys.
template <int MT, int BK>
__device__ __forceinline__ void pv_block(float (&o)[2][16][4], uint32_t t_s, int rg, int kg, int lane) {
#pragma unroll
  for (int ks = 0; ks < BK / 16; ++ks) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      ptx::ldmatrix_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3],
                       t_s + p_off<BK>(rg * 32 + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * ks + (lane >> 4)));
    // V = K rows (keys) × columns; .trans gives B fragments: (keys 0-7 | 8-15) × (cols 0-7 | 8-15).
    const int v_row = ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int np = 0; np < 8; ++np) {
      uint32_t t[4];
      ptx::ldmatrix_x4_trans(t[0], t[1], t[2], t[3], t_s + tile_off(v_row, kg * 16 + 2 * np + (lane >> 4)));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        ptx::mma_bf16(o[mt][2 * np], a[mt], t[0], t[1]);
        ptx::mma_bf16(o[mt][2 * np + 1], a[mt], t[2], t[3]);
      }
    }
  }
}

// Online softmax of one block for this warp's MT m-tiles; writes P (bf16) to the tile and
// rescales O. Rows of a lane: r(mt, h) = rg·32 + mt·16 + g + 8h; S element e of n-tile nt is
// row h = e / 2, key kg·BK/4 + nt·8 + 2·tig + e % 2.
template <int MT, int BK>
struct Softmax {
  static constexpr int kNT = BK / 32;

  __device__ __forceinline__ static void max_phase(float (&s)[2][2][4], const int (&lim)[2][2], int tb, float sl2,
                                                   float* mx, int rg, int kg, int lane) {
    const int g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float m = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int t = tb + kg * (BK / 4) + nt * 8 + 2 * tig + e;
            const float x = t < lim[mt][h] ? s[mt][nt][2 * h + e] * sl2 : -INFINITY;
            s[mt][nt][2 * h + e] = x;
            m = fmaxf(m, x);
          }
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        if (tig == 0) mx[(rg * 32 + mt * 16 + g + 8 * h) * 4 + kg] = m;
      }
  }

  __device__ __forceinline__ static void exp_phase(float (&s)[2][2][4], float (&m)[2][2], float (&l)[2][2],
                                                   float (&o)[2][16][4], const float* mx, uint8_t* tile, int rg,
                                                   int kg, int lane) {
    const int g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = rg * 32 + mt * 16 + g + 8 * h;
        const float4 v = *reinterpret_cast<const float4*>(mx + r * 4);
        const float m_new = fmaxf(m[mt][h], fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no key seen yet: weights 0
        const float corr = exp2f(m[mt][h] - m_use);
        m[mt][h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const float p0 = exp2f(s[mt][nt][2 * h] - m_use), p1 = exp2f(s[mt][nt][2 * h + 1] - m_use);
          sum += p0 + p1;
          *reinterpret_cast<uint32_t*>(tile + p_off<BK>(r, kg * kNT + nt) + 4 * tig) = ptx::pack_bf16(p0, p1);
        }
        l[mt][h] = l[mt][h] * corr + sum;
#pragma unroll
        for (int n = 0; n < 16; ++n) {
          o[mt][n][2 * h] *= corr;
          o[mt][n][2 * h + 1] *= corr;
        }
      }
  }
};

// One block of keys for this warp: MT active m-tiles (uniform per warp), phases separated by
// the CTA barriers the caller places around max_phase/exp_phase.
template <int BK, bool FP8>
__global__ void __launch_bounds__(kThreads, 1)
mla_decode_mma_kernel(MlaDecodeParams p, Plan plan, int row_blocks) {
  using C = Cfg<BK, FP8>;
  DSV2_DYNAMIC_SMEM(uint8_t, smem, 128);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rg = warp >> 2, kg = warp & 3;
  const int g = lane >> 2, tig = lane & 3;
  const int part = static_cast<int>(blockIdx.x / row_blocks), rb = static_cast<int>(blockIdx.x % row_blocks);
  const int rows = static_cast<int>(p.s_q * p.h_q), h_q = static_cast<int>(p.h_q), s_q = static_cast<int>(p.s_q);
  const int row0 = rb * kRows, nrows = min(kRows, rows - row0);
  // Active m16 tiles of this warp's 32 rows (warp-uniform): fully padded tiles are skipped.
  const int mts = nrows > rg * 32 + 16 ? 2 : (nrows > rg * 32 ? 1 : 0);
  const uint32_t base = ptx::smem_addr(smem);
  const uint32_t q_s = base;
  float* mx = reinterpret_cast<float*>(smem + C::kMxOff);
  const float sl2 = p.scale * 1.4426950408889634f;  // scores in log2 units

  const int it_begin = plan.part_item_begin[part], it_end = plan.part_item_begin[part + 1];
  for (int it = it_begin; it < it_end; ++it) {
    const int seq = plan.item_seq[it], t0 = plan.item_t0[it], t1 = plan.item_t1[it];
    const int s_k = p.seqlens[seq];
    const bool direct = plan.seq_item_begin[seq + 1] - plan.seq_item_begin[seq] == 1;
    const int nblk = t1 > t0 ? (t1 - t0 + BK - 1) / BK : 0;
    const Keys keys{p.cache.data, p.block_table + static_cast<int64_t>(seq) * p.max_blocks,
                    static_cast<int>(p.cache.layout.page_size), t1};
    __syncthreads();  // the previous item is done with every buffer
    if constexpr (FP8) {
      if (nblk > 0) load_tile_raw<BK>(base + C::kRawOff, keys, t0, tid);
      ptx::cp_async_commit();
      if (nblk > 1) load_tile_raw<BK>(base + C::kRawOff + C::kRawTileBytes, keys, t0 + BK, tid);
      ptx::cp_async_commit();
    } else {
      if (nblk > 0) load_tile_bf16<BK>(base + C::kTileOff, keys, t0, tid);
      ptx::cp_async_commit();
    }
    // q rows → bf16 (zeros for padding rows), overlapping the first loads.
    {
      const float4* qg = reinterpret_cast<const float4*>(p.q + (static_cast<int64_t>(seq) * rows + row0) * kD);
      for (int x = tid; x < kRows * (kD / 4); x += kThreads) {
        const int r = x / (kD / 4), c4 = x % (kD / 4);
        const float4 v = r < nrows ? __ldg(qg + static_cast<int64_t>(r) * (kD / 4) + c4) : make_float4(0.f, 0.f, 0.f, 0.f);
        uint2 u;
        u.x = ptx::pack_bf16(v.x, v.y);
        u.y = ptx::pack_bf16(v.z, v.w);
        *reinterpret_cast<uint2*>(smem + tile_off(r, c4 >> 1) + (c4 & 1) * 8) = u;
      }
    }
    // Keys t < lim[mt][h] are visible to the lane's row (query j sees t ≤ s_k - s_q + j).
    int lim[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int rl = rg * 32 + mt * 16 + g + 8 * h;
        lim[mt][h] = rl < nrows ? min(t1, s_k - s_q + (row0 + rl) / h_q + 1) : 0;
      }
    float o[2][16][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int n = 0; n < 16; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mt][n][e] = 0.0f;
    float m[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};
    float l[2][2] = {{0.f, 0.f}, {0.f, 0.f}};

    for (int j = 0; j < nblk; ++j) {
      const int tb = t0 + j * BK;
      uint32_t t_s;
      uint8_t* tile;
      if constexpr (FP8) {
        ptx::cp_async_wait<1>();
        __syncthreads();  // raw block j landed; everyone is done with the tile (P·V of j - 1)
        const int raw_off = C::kRawOff + (j & 1) * C::kRawTileBytes;
        dequant_tile<BK>(smem + C::kTileOff, smem + raw_off, tid);
        __syncthreads();  // tile ready; raw buffer j & 1 free
        if (j + 2 < nblk) load_tile_raw<BK>(base + raw_off, keys, tb + 2 * BK, tid);
        ptx::cp_async_commit();
        t_s = base + C::kTileOff;
        tile = smem + C::kTileOff;
      } else {
        ptx::cp_async_wait<0>();
        __syncthreads();  // block j landed; everyone is done with buffer (j + 1) & 1
        if (j + 1 < nblk) load_tile_bf16<BK>(base + C::kTileOff + ((j + 1) & 1) * C::kTileBytes, keys, tb + BK, tid);
        ptx::cp_async_commit();
        t_s = base + C::kTileOff + (j & 1) * C::kTileBytes;
        tile = smem + C::kTileOff + (j & 1) * C::kTileBytes;
      }
      float s[2][2][4];
      if (mts == 2) {
        qk_block<2, C::kNT>(s, q_s, t_s, rg, kg, lane);
        Softmax<2, BK>::max_phase(s, lim, tb, sl2, mx, rg, kg, lane);
      } else if (mts == 1) {
        qk_block<1, C::kNT>(s, q_s, t_s, rg, kg, lane);
        Softmax<1, BK>::max_phase(s, lim, tb, sl2, mx, rg, kg, lane);
      }
      __syncthreads();  // row maxima posted; every warp is done reading k_pe (P goes there)
      if (mts == 2) Softmax<2, BK>::exp_phase(s, m, l, o, mx, tile, rg, kg, lane);
      else if (mts == 1) Softmax<1, BK>::exp_phase(s, m, l, o, mx, tile, rg, kg, lane);
      __syncthreads();  // P complete
      if (mts == 2) pv_block<2, BK>(o, t_s, rg, kg, lane);
      else if (mts == 1) pv_block<1, BK>(o, t_s, rg, kg, lane);
    }

    // Row sums: quad, then the 4 warps of the row group (the max exchange buffer is free:
    // every warp has passed the last block's second barrier).
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        l[mt][h] += __shfl_xor_sync(0xffffffffu, l[mt][h], 1);
        l[mt][h] += __shfl_xor_sync(0xffffffffu, l[mt][h], 2);
        if (mt < mts && tig == 0) mx[(rg * 32 + mt * 16 + g + 8 * h) * 4 + kg] = l[mt][h];
      }
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      if (mt >= mts) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int rl = rg * 32 + mt * 16 + g + 8 * h;
        if (rl >= nrows) continue;
        const float4 v = *reinterpret_cast<const float4*>(mx + rl * 4);
        const float lt = (v.x + v.y) + (v.z + v.w);
        const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
        const int64_t r = row0 + rl;
        float* dst = direct ? p.out + (static_cast<int64_t>(seq) * rows + r) * kDc
                            : plan.part_out + (static_cast<int64_t>(it) * rows + r) * kDc;
#pragma unroll
        for (int n = 0; n < 16; ++n)
          *reinterpret_cast<float2*>(dst + kg * 128 + n * 8 + 2 * tig) =
              make_float2(o[mt][n][2 * h] * inv, o[mt][n][2 * h + 1] * inv);
        if (kg == 0 && tig == 0) {
          const float lse = lt > 0.0f ? (m[mt][h] + log2f(lt)) * 0.6931471805599453f : (direct ? INFINITY : -INFINITY);
          if (direct) p.lse[static_cast<int64_t>(seq) * rows + r] = lse;
          else plan.part_lse[static_cast<int64_t>(it) * rows + r] = lse;
        }
      }
    }
  }
}

template <int BK, bool FP8>
void launch(const MlaDecodeParams& p, const Plan& plan, cudaStream_t s) {
  using C = Cfg<BK, FP8>;
  const auto kernel = mla_decode_mma_kernel<BK, FP8>;
  DSV2_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem));
  const int64_t rb = (p.s_q * p.h_q + kRows - 1) / kRows;
  const int64_t grid = plan.n_parts * rb;
  DSV2_CHECK(grid <= 0x7fffffff, kUnsupported, "CUDA mla_decode: " << plan.n_parts << " parts × " << rb << " row blocks exceed the grid");
  DSV2_LAUNCH(kernel, static_cast<unsigned>(grid), kThreads, C::kSmem, s)(p, plan, static_cast<int>(rb));
  DSV2_CUDA_LAUNCH_CHECK();
}

}  // namespace

size_t mma_smem_bytes(int block_keys, bool fp8) {
  if (block_keys == 64) return fp8 ? Cfg<64, true>::kSmem : Cfg<64, false>::kSmem;
  if (block_keys == 32) return fp8 ? Cfg<32, true>::kSmem : Cfg<32, false>::kSmem;
  return 0;
}

void launch_mma(const MlaDecodeParams& p, const Plan& plan, int block_keys, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const bool fp8 = p.cache.layout.dtype == DType::kFP8E4M3;
  if (block_keys == 64) fp8 ? launch<64, true>(p, plan, s) : launch<64, false>(p, plan, s);
  else fp8 ? launch<32, true>(p, plan, s) : launch<32, false>(p, plan, s);
}

}  // namespace dsv2::cuda::mla
