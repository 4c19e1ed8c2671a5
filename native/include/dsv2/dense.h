// Dense ops of the DeepSeek-V2 forward: params structs shared by the CPU reference, the
// fast CPU path and (later) the CUDA kernels. Every pointer names its shape; all tensors
// are dense row-major. Entry points live in ops.h.
#pragma once
#include <cstdint>
#include "dsv2/tensor.h"

namespace dsv2 {

// Which implementation runs an op. kAuto picks the fastest available for the device.
enum class Impl { kAuto, kReference, kFast };

struct EmbeddingParams {
  int64_t n_tokens = 0, vocab = 0, hidden = 0;
  const void* ids = nullptr;    // [n_tokens], i32 or i64 (ids_dtype)
  DType ids_dtype = DType::kI32;
  const void* table = nullptr;  // [vocab, hidden], f32 | bf16 | f16 (table_dtype)
  DType table_dtype = DType::kF32;
  float* out = nullptr;         // [n_tokens, hidden]
  Device device = Device::kCpu;  // cuda: the op-level entry copies inputs in and outputs out
};

// y = x / sqrt(mean(x^2) + eps) * w   (DeepseekV2RMSNorm: statistics in fp32)
struct RmsNormParams {
  int64_t rows = 0, dim = 0;
  const float* x = nullptr;   // [rows, dim]
  const void* w = nullptr;    // [dim], f32 | bf16 | f16 (w_dtype)
  DType w_dtype = DType::kF32;
  float eps = 1e-6f;
  float* y = nullptr;         // [rows, dim]
  Device device = Device::kCpu;  // cuda: the op-level entry copies inputs in and outputs out
  int64_t x_stride = 0;       // elements between rows of x; 0 = dim (the ops' API is dense; the engine
                              // reads a column slice of a wider matrix with it)
};

// YaRN parameters (config.json rope_scaling, type "yarn"); enabled = false is plain RoPE.
// Defaults are those of DeepseekV2YarnRotaryEmbedding.
struct YarnParams {
  bool enabled = false;
  double factor = 1.0;
  double original_max_position_embeddings = 4096;
  double beta_fast = 32, beta_slow = 1;
  double mscale = 1, mscale_all_dim = 0;
};

// cos/sin tables of DeepseekV2(Yarn)RotaryEmbedding for positions [0, max_pos):
// inv_freq blended between interpolated and extrapolated frequencies by YaRN's linear
// ramp, and both tables multiplied by mscale(factor, mscale) / mscale(factor, mscale_all_dim).
struct RopeTableParams {
  int64_t dim = 64;        // rotary dims (qk_rope_head_dim), even
  int64_t max_pos = 0;     // table rows
  double theta = 10000;    // rope_theta
  YarnParams yarn;
  float* cos = nullptr;    // [max_pos, dim/2]
  float* sin = nullptr;    // [max_pos, dim/2]
};

// Rotary embedding on the last dim of x. DeepSeek's checkpoints store the rotary pairs
// interleaved (x0,x1),(x2,x3),...; the published modeling code first de-interleaves them to
// [x0,x2,...,x1,x3,...] and then rotates halves, so the output is in half-split order:
//   out[i]       = a_i cos_i - b_i sin_i,   out[i + d/2] = b_i cos_i + a_i sin_i
// with (a_i, b_i) = (x[2i], x[2i+1]) when interleaved, (x[i], x[i+d/2]) otherwise.
struct RopeParams {
  int64_t n_tokens = 0, n_heads = 0, dim = 0, max_pos = 0;
  const float* x = nullptr;         // [n_tokens, n_heads, dim]
  const void* positions = nullptr;  // [n_tokens], i32 | i64, each in [0, max_pos)
  DType positions_dtype = DType::kI32;
  const float* cos = nullptr;       // [max_pos, dim/2]
  const float* sin = nullptr;       // [max_pos, dim/2]
  bool interleaved = true;
  float* out = nullptr;             // [n_tokens, n_heads, dim]
  Device device = Device::kCpu;  // cuda: the op-level entry copies inputs in and outputs out
  // Elements between consecutive (token, head) rows of x and of out; 0 = dim. The ops' API is
  // dense; the engine rotates the rope columns of wider rows in place of a copy. x and out must
  // not overlap unless they are the same dense buffer.
  int64_t x_stride = 0, out_stride = 0;
};

// out = silu(gate) * up, rows of width `inter`. gate and up may be the two halves of one
// [rows, 2*inter] tensor (gate first, as a fused gate_up projection writes them).
struct SiluMulParams {
  int64_t rows = 0, inter = 0;
  const float* gate = nullptr;  // [rows, gate_stride]
  const float* up = nullptr;    // [rows, up_stride]
  int64_t gate_stride = 0, up_stride = 0;  // elements between rows
  float* out = nullptr;         // [rows, inter]
  Device device = Device::kCpu;  // cuda: the op-level entry copies inputs in and outputs out
};

// Side of the square weight blocks that share one scale in 8-bit weights (DeepSeek-V3's FP8
// layout: `weight_scale_inv` [ceil(n / 128), ceil(k / 128)]).
constexpr int64_t kWeightBlock = 128;

// y[M, N] = x[M, K] · W[N, K]^T, fp32 accumulation (the layout of nn.Linear weights).
// 8-bit weights (i8, fp8_e4m3) are codes with one f32 scale per 128 × 128 block:
// W[n, k] = value(code[n, k]) · w_scale[n / 128][k / 128] (value: the integer, or the e4m3 number).
struct GemmParams {
  int64_t m = 0, n = 0, k = 0;
  const float* x = nullptr;  // [m, k]
  const void* w = nullptr;   // [n, k], f32 | bf16 | f16 | i8 | fp8_e4m3 (w_dtype)
  DType w_dtype = DType::kF32;
  const float* w_scale = nullptr;  // i8 / fp8_e4m3: [ceil(n / 128), ceil(k / 128)]
  float* y = nullptr;        // [m, n]
  Device device = Device::kCpu;  // cuda: the op-level entry copies x, W in and y out
};

// y = softmax(scale * x) over the last dim, max-subtracted. A row whose entries are all
// -inf gives NaN (as torch does); NaN inputs propagate.
struct SoftmaxParams {
  int64_t rows = 0, n = 0;
  float scale = 1.0f;
  const float* x = nullptr;  // [rows, n]
  float* y = nullptr;        // [rows, n]
  Device device = Device::kCpu;  // cuda: the op-level entry copies inputs in and outputs out
};

// Token sampling, one draw per row. temperature == 0 is greedy (argmax, lowest id wins
// ties). Otherwise, in the order of transformers' logits warpers: logits / temperature,
// keep the top_k largest (0 = all), keep the smallest prefix of the remaining tokens
// sorted by probability (descending, lower id first on ties) whose mass reaches top_p
// (1 = all; at least one token is kept), then draw from the kept set.
// The draw is reproducible: u = (splitmix64(seed + (row + 1) * 0x9E3779B97F4A7C15) >> 11)
// * 2^-53, and the token is the first kept id, walking ids in ascending order, whose
// cumulative weight exp((l - l_max) / T) exceeds u * total (double precision).
// NaN logits are an E_RANGE error; +inf is not allowed either.
struct SampleParams {
  int64_t rows = 0, vocab = 0;
  const float* logits = nullptr;  // [rows, vocab]
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  int32_t* out = nullptr;         // [rows]
};

// Element-wise dtype conversion between f32, bf16 and f16 (round to nearest even; NaN
// stays NaN; overflow to f16 gives inf).
struct CastParams {
  int64_t n = 0;
  const void* src = nullptr;  // [n], src_dtype
  DType src_dtype = DType::kF32;
  void* dst = nullptr;        // [n], dst_dtype
  DType dst_dtype = DType::kF32;
};

}  // namespace dsv2
