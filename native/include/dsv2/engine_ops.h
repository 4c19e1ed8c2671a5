// Params of the glue ops the model engine runs between the core ops on either backend:
// strided column copies, the residual add fused with RMSNorm, batched sampling and the
// deterministic random fill of synthetic weights. Like the other params structs here, they
// name shapes and pointers only, so the kernels (cuda/model_kernels.cu) know no engine.
#pragma once
#include <cstdint>

#include "dsv2/hd.h"
#include "dsv2/tensor.h"

namespace dsv2 {

// dst[r, dst_col + c] = src[r, src_col + c] for r < rows, c < width (f32, row strides in elements).
struct CopyColsParams {
  int64_t rows = 0, width = 0;
  const float* src = nullptr;
  int64_t src_stride = 0, src_col = 0;
  float* dst = nullptr;
  int64_t dst_stride = 0, dst_col = 0;
};

// The residual add fused with the next RMSNorm: x += delta (when delta is not null), then
// y = rms_norm(x) · w — the statistics in f32 as DeepseekV2RMSNorm.
struct AddRmsNormParams {
  int64_t rows = 0, dim = 0;
  float* x = nullptr;            // [rows, dim], updated in place
  const float* delta = nullptr;  // [rows, dim] or null
  const void* w = nullptr;       // [dim]
  DType w_dtype = DType::kF32;
  float eps = 1e-6f;
  float* y = nullptr;            // [rows, dim]
};

// Row r of logits drawn with seed seeds[r], as a one-row SampleParams call with that seed
// (see dense.h for the definition of the draw). bad[0] is set to 1 + the first row holding a
// NaN or +inf logit or only -inf (then that row's token is -1); 0 when all rows were fine.
struct SampleBatchParams {
  int64_t rows = 0, vocab = 0;
  const float* logits = nullptr;  // [rows, vocab]
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  const uint64_t* seeds = nullptr;  // [rows]
  int32_t* out = nullptr;           // [rows]
  int32_t* bad = nullptr;           // [1]
};

// data[i] = mean + std · √3 · (2u − 1), u = (splitmix64(seed + i · golden) >> 40) · 2^-24: a
// uniform draw of the given std, the same on every backend (bf16: rounded to nearest even).
struct FillRandomParams {
  int64_t n = 0;
  void* data = nullptr;
  DType dtype = DType::kBF16;  // kBF16 or kF32
  float mean = 0.0f, std = 1.0f;
  uint64_t seed = 0;
};

// The value fill_random writes at index i (shared by the CPU and CUDA implementations).
DSV2_HD inline float random_value(uint64_t seed, int64_t i, float mean, float std) {
  uint64_t z = seed + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
  return mean + std * 1.7320508f * (2.0f * u - 1.0f);
}

}  // namespace dsv2
