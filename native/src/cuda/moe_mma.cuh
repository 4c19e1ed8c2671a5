// Tensor-core grouped GEMMs of the MoE experts (moe_mma.cu), internal to moe.cu.
//
// A "problem" is one grouped GEMM over row segments: either the routed experts (segments of
// the dispatch, one per expert, walked through a device tile table so the grid never depends on
// host-known counts) or the shared experts (one segment of all t tokens). Two problems can run
// in one launch (routed + shared): the grid's x covers both problems' tile ranges, y the column
// tiles of the wider one; blocks with no work exit at once.
//
// Operands are bf16 (uint16_t bit patterns), accumulation f32 (mma.sync m16n8k16):
//   SwiGLU: h[pos, j] = bf16(silu(a_pos · gate_e[j]) · (a_pos · up_e[j])),  W_e = [gate; up] [2n, k]
//   down:   out[dest(pos), c] = scale(dest) · (a_pos · down_e[c]),            W_e = [n, k]
// k and n must be multiples of 8 (16-byte loads); pointers 16-byte aligned.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

#include "dsv2/tensor.h"

namespace dsv2::cuda::moe_mma {

struct Problem {
  const uint16_t* w = nullptr;  // bf16 [n_experts][n_w][k], n_w = 2n (SwiGLU: gate rows, then up rows) or n
  int64_t w_stride = 0;         // elements between experts
  int64_t n = 0, k = 0;         // output columns, reduction length
  // Segments: the tile table of the dispatch ({expert, first row in the segment} per tile, the
  // live count in *n_tiles, segment bounds in offsets[E + 1]); or, with tiles == nullptr, one
  // segment of m rows.
  const int32_t* tiles = nullptr;
  const int32_t* n_tiles = nullptr;
  const int32_t* offsets = nullptr;
  int64_t m = 0;
  int64_t grid_tiles = 0;  // tiles on the grid's x for this problem (≥ the live count)
  // A row of segment position pos: a[(a_rows ? a_rows[pos] / a_div : pos) · k + ...]
  const uint16_t* a = nullptr;
  const int32_t* a_rows = nullptr;
  int32_t a_div = 1;
  // Outputs: SwiGLU writes h (bf16 [pos, n]); down writes out (f32 [dest, n]) with
  // dest = o_rows ? o_rows[pos] : pos, multiplied by o_scale[dest] when o_scale is set.
  uint16_t* h = nullptr;
  float* out = nullptr;
  const int32_t* o_rows = nullptr;
  const float* o_scale = nullptr;
  // 8-bit block-scaled weights (grouped_skinny_w8 only; w unused): w8 holds i8 / e4m3 codes laid out
  // as w ([n_experts][n_w][k], w_stride bytes apart), w_scale the f32 scales of its 128×128
  // blocks, [n_experts][ceil(n_w / 128)][ceil(k / 128)] (scale_stride floats apart); the blocks
  // tile the stacked [n_w, k] matrix (SwiGLU: gate row j is row j, up row j is row n + j).
  const uint8_t* w8 = nullptr;
  const float* w_scale = nullptr;
  int64_t scale_stride = 0;
};

struct Launch {
  Problem prob[2];
  int n_prob = 1;
};

// Rows per tile of each kernel (the dispatch builds the tile table for one of them).
constexpr int kSkinnyRows = 16;
constexpr int kTiledRows = 128;

// Decode-shaped: swap-AB (weight rows on the mma's M side, 16 tokens on N), weights streamed
// with 16-byte loads straight into the fragments, 4 warps splitting k.
void grouped_skinny(const Launch& l, bool swiglu, cudaStream_t s);
// The same with FP8 block-scaled weights (Problem::w8 / w_scale; k and the per-expert stride
// multiples of 8, w8 16-byte aligned): each lane decodes its e4m3 codes exactly to bf16 (every
// e4m3 value is a bf16 value) and the mma accumulates one 128-wide k block at a time; the f32
// block partial is multiplied by its row's scale and added (the scale is never folded into a
// bf16 weight: e4m3 · scale is not always representable in bf16).
// The skinny kernel on 8-bit codes (code: kI8 or kFP8E4M3) with block scales (Problem::w8).
void grouped_skinny_w8(const Launch& l, DType code, bool swiglu, cudaStream_t s);
// Prefill-shaped: 128×128 tiles, k in steps of 32, 4-stage cp.async pipeline, ldmatrix.
void grouped_tiled(const Launch& l, bool swiglu, cudaStream_t s);

}  // namespace dsv2::cuda::moe_mma
