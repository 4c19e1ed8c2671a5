// MLA (multi-head latent attention) ops and the paged latent KV cache they read.
//
// Cache layout. Memory is [layer][page][token in page][bytes_per_token]; a token holds
// [c_kv (d_c) ; k_pe (d_r)] after kv_a_layernorm and RoPE:
//   f32   d_c f32 of c_kv, then d_r f32 of k_pe                      (4·(d_c + d_r) bytes)
//   bf16  the same in bf16, rounded to nearest even                   (2·(d_c + d_r) bytes)
//   fp8   d_c bytes of e4m3 codes of c_kv; then ceil(d_c / 128) little-endian f32 scales,
//         one per 128-element tile of c_kv (the last tile may be shorter); then d_r bf16 of
//         k_pe, not quantized. At d_c = 512, d_r = 64 this is FlashMLA's 656-byte token:
//         512 fp8 bytes, 4 f32 scales (16 bytes), 64 bf16 (128 bytes).
//         Tile scale = amax / 448 over the tile's finite |values| (rounded up to a power of two
//         when pow2_scales), or 1 for an all-zero tile; code = e4m3_satfinite_rne(x / scale);
//         the stored value reads back as decode(code) · scale.
// A sequence's token t sits in page block_table[t / page_size], slot t % page_size.
#pragma once
#include <cstdint>

#include "dsv2/hd.h"
#include "dsv2/tensor.h"


namespace dsv2 {

constexpr int64_t kFp8Tile = 128;  // c_kv elements per fp8 scale

struct KvLayout {
  int64_t d_c = 512, d_r = 64, page_size = 64;
  DType dtype = DType::kBF16;  // kF32, kBF16 or kFP8E4M3
  bool pow2_scales = false;

  DSV2_HD int64_t n_tiles() const { return (d_c + kFp8Tile - 1) / kFp8Tile; }
  DSV2_HD int64_t bytes_per_token() const {
    switch (dtype) {
      case DType::kF32: return 4 * (d_c + d_r);
      case DType::kFP8E4M3: return d_c + 4 * n_tiles() + 2 * d_r;
      default: return 2 * (d_c + d_r);
    }
  }
  DSV2_HD int64_t page_bytes() const { return page_size * bytes_per_token(); }
};

// One layer of a cache: `pages` pages starting at data, in host or device memory.
struct KvCacheView {
  KvLayout layout;
  uint8_t* data = nullptr;  // [pages, page_size, bytes_per_token]
  int64_t pages = 0;
  Device device = Device::kCpu;
};

// Writes tokens to their slots (slot = page · page_size + offset), quantizing when fp8.
struct KvAppendParams {
  KvCacheView cache;
  int64_t n_tokens = 0;
  const float* c_kv = nullptr;  // [n_tokens, d_c]
  const float* k_pe = nullptr;  // [n_tokens, d_r]
  const void* slots = nullptr;  // [n_tokens], i32 | i64, each in [0, pages · page_size)
  DType slots_dtype = DType::kI32;
};

// Reads tokens back as f32 (dequantized).
struct KvReadParams {
  KvCacheView cache;
  int64_t n_tokens = 0;
  const void* slots = nullptr;  // [n_tokens], i32 | i64
  DType slots_dtype = DType::kI32;
  float* c_kv = nullptr;        // [n_tokens, d_c]
  float* k_pe = nullptr;        // [n_tokens, d_r]
};

// y[t, h, :] = x[t, h, :] · w[h]ᵀ: the per-head projections around absorbed decode
// (q_nope · W_UK, out_latent · W_UVᵀ).
struct HeadsGemmParams {
  int64_t t = 0, h = 0, n = 0, k = 0;
  const float* x = nullptr;  // [t, h, k]
  const void* w = nullptr;   // [h, n, k], f32 | bf16 | f16
  DType w_dtype = DType::kF32;
  float* y = nullptr;        // [t, h, n]
  // Elements between consecutive (t, h) rows of x and of y; 0 = k and n (dense, the ops' API).
  int64_t x_stride = 0, y_stride = 0;
};

// Absorbed MLA decode over the paged latent cache (one KV head of d_c + d_r dims, values
// are the d_c latent dims). Sequence i has s_k = seqlens[i] cached tokens, the last s_q of
// which are its queries: query j attends keys t <= s_k - s_q + j.
//   score_t = scale · (q[:d_c] · c_kv_t + q[d_c:] · k_pe_t)
//   out = Σ_t softmax(score)_t · c_kv_t,   lse = ln Σ_t exp(score_t)
// A query that sees no key gets out = 0 and lse = +inf. Keys are processed in chunks of
// split_tokens, each giving a partial (out, lse), merged by log-sum-exp: the same
// decomposition as the split-KV GPU kernel.
struct MlaDecodeParams {
  int64_t b = 0, s_q = 0, h_q = 0, d_c = 0, d_r = 0;
  KvCacheView cache;
  const float* q = nullptr;            // [b, s_q, h_q, d_c + d_r]
  const int32_t* block_table = nullptr;  // [b, max_blocks]; entries past the sequence end unread
  int64_t max_blocks = 0;
  const int32_t* seqlens = nullptr;    // [b]
  float scale = 1.0f;
  int64_t split_tokens = 0;            // keys per split; 0 = one split per sequence
  float* out = nullptr;                // [b, s_q, h_q, d_c]
  float* lse = nullptr;                // [b, s_q, h_q], natural log
};

// MLA prefill (naive form): K and V expanded from the cached latent with kv_b_proj, causal
// attention over qk dims d_nope + d_r and value dims d_v. Sequence i's queries are q rows
// [cu_seqlens_q[i], cu_seqlens_q[i+1]), the last n_i of its seqlens[i] keys (a prefix may be
// cached already: chunked prefill).
struct MlaPrefillParams {
  int64_t b = 0, n_tokens = 0, h = 0, d_nope = 0, d_r = 0, d_v = 0, d_c = 0;
  KvCacheView cache;
  const float* q = nullptr;              // [n_tokens, h, d_nope + d_r]
  const int32_t* block_table = nullptr;  // [b, max_blocks]
  int64_t max_blocks = 0;
  const int32_t* seqlens = nullptr;      // [b], keys per sequence (prefix + new)
  const int32_t* cu_seqlens_q = nullptr; // [b + 1]
  const void* kv_b = nullptr;            // [h · (d_nope + d_v), d_c]: per head W_UK rows then W_UV rows
  DType kv_b_dtype = DType::kF32;
  float scale = 1.0f;
  float* out = nullptr;                  // [n_tokens, h, d_v]
};

// FP8 quantization with explicit scale groups. Rows are all dims but the last.
enum class Fp8Granularity { kTensor, kToken, kTile };

struct Fp8QuantParams {
  int64_t rows = 0, n = 0, tile = kFp8Tile;
  Fp8Granularity granularity = Fp8Granularity::kTile;
  bool pow2 = false;
  const float* x = nullptr;  // [rows, n]
  uint8_t* codes = nullptr;  // [rows, n]
  float* scales = nullptr;   // tensor [1]; token [rows]; tile [rows, ceil(n / tile)]
  // Static quantization: scales given by the caller (same shape as `scales`, each finite and
  // > 0) instead of computed from the amax; copied to `scales`. May be null.
  const float* given_scales = nullptr;
};

struct Fp8DequantParams {
  int64_t rows = 0, n = 0, tile = kFp8Tile;
  Fp8Granularity granularity = Fp8Granularity::kTile;
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  float* y = nullptr;  // [rows, n]
};

}  // namespace dsv2
