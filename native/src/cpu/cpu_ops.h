// CPU implementations of the dense ops. Each op is a plain reference that follows the
// published modeling code line by line (`*_ref`), and, where it pays, a fast path
// (`*_fast`) tested against it. Row-wise ops share one per-row body: the fast path is that
// body run across the thread pool.
#pragma once
#include "dsv2/dense.h"
#include "dsv2/mla.h"
#include "dsv2/moe.h"

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
// SIMD (AVX-512 / AVX2 chosen at run time); on the thread pool when `parallel`, else in the
// calling thread (for callers that already run inside a parallel_for chunk).
void gemm_fast(const GemmParams& p, bool parallel = true);
const char* gemm_fast_isa();         // "avx512", "avx2" or "scalar"
// The AVX-512 / AVX2 tiles of gemm_fast for every weight dtype (gemm_tiles.cc); false on the
// scalar ISA, where gemm_fast takes its portable path.
bool gemm_tiles(const GemmParams& p, bool parallel);
// Row `row` of 8-bit weights (i8 / fp8_e4m3 + block scales) as f32 into d[0, k) (scalar).
void widen_8bit(const GemmParams& p, int64_t row, float* d);

// ---- MLA, FP8, paged latent cache (dsv2/mla.h) -------------------------------------
void encode_token(const KvLayout& L, const float* c_kv, const float* k_pe, uint8_t* dst);
void decode_token(const KvLayout& L, const uint8_t* src, float* c_kv, float* k_pe);
void kv_append(const KvAppendParams& p, bool parallel);
// Every slot in range and none twice (E_RANGE naming them); shared with the CUDA path.
void check_append_slots(const KvCacheView& c, const void* slots, DType t, int64_t n);
void kv_read(const KvReadParams& p, bool parallel);
void kv_poison(const KvCacheView& c);
void fp8_quantize(const Fp8QuantParams& p, bool parallel);
void fp8_dequantize(const Fp8DequantParams& p, bool parallel);
void heads_gemm(const HeadsGemmParams& p, bool fast);
void mla_decode_ref(const MlaDecodeParams& p);
void mla_decode_fast(const MlaDecodeParams& p);
void mla_prefill_ref(const MlaPrefillParams& p);
void mla_prefill_fast(const MlaPrefillParams& p);

// ---- MoE (dsv2/moe.h) --------------------------------------------------------------
void moe_route(const MoeRouteParams& p, bool parallel);
void moe_experts_ref(const MoeExpertsParams& p);
void moe_experts_fast(const MoeExpertsParams& p);

// Softmax of scale · row[0, vis) in place, zeroing row[vis, n); returns the natural-log
// sum of exp of the scaled scores (the row's LSE). vis >= 1.
float softmax_prefix(float* row, int64_t vis, int64_t n, float scale);

// YaRN helpers of DeepseekV2YarnRotaryEmbedding, shared with the TS-facing softmax scale.
double yarn_get_mscale(double scale, double mscale);

}  // namespace dsv2::cpu
