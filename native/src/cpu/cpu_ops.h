// CPU implementations of the dense ops. Each op is a plain reference that follows the
// published modeling code line by line (`*_ref`), and, where it pays, a fast path
// (`*_fast`) tested against it. Row-wise ops share one per-row body: the fast path is that
// body run across the thread pool.
#pragma once
#include "dsv2/dense.h"

namespace dsv2::cpu {

void embedding(const EmbeddingParams& p, bool parallel);
void rms_norm(const RmsNormParams& p, bool parallel);
void rope_table(const RopeTableParams& p);
void rope(const RopeParams& p, bool parallel);
void silu_mul(const SiluMulParams& p, bool parallel);
void softmax(const SoftmaxParams& p, bool parallel);
void sample(const SampleParams& p, bool parallel);
void cast(const CastParams& p, bool parallel);

void gemm_ref(const GemmParams& p);
void gemm_fast(const GemmParams& p);  // SIMD (AVX-512 / AVX2 chosen at run time) + threads
const char* gemm_fast_isa();         // "avx512", "avx2" or "scalar"

// YaRN helpers of DeepseekV2YarnRotaryEmbedding, shared with the TS-facing softmax scale.
double yarn_get_mscale(double scale, double mscale);

}  // namespace dsv2::cpu
