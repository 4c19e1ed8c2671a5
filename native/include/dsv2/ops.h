// Entry points of the core: validate once, then dispatch to an implementation.
//
// Each op has two halves so the addon can allocate outputs in between:
//   check_<op>(inputs..., params*)  validates shapes, dtypes, devices and attributes, throws
//                                   dsv2::Error naming the offending argument, fills the
//                                   params (all but output pointers), returns the outputs;
//   <op>(params, impl)              does the work; throws only for data-dependent problems
//                                   (an out-of-range token id, a NaN logit).
#pragma once
#include <string>
#include <vector>

#include "dsv2/dense.h"
#include "dsv2/mla.h"
#include "dsv2/moe.h"
#include "dsv2/tensor.h"

namespace dsv2::ops {

std::vector<OutSpec> check_embedding(const TensorView& ids, const TensorView& table, EmbeddingParams* p);
void embedding(const EmbeddingParams& p, Impl impl);

std::vector<OutSpec> check_rms_norm(const TensorView& x, const TensorView& w, double eps, RmsNormParams* p);
void rms_norm(const RmsNormParams& p, Impl impl);

std::vector<OutSpec> check_rope_table(RopeTableParams* p);  // p: dim, max_pos, theta, yarn set
void rope_table(const RopeTableParams& p);

std::vector<OutSpec> check_rope(const TensorView& x, const TensorView& positions, const TensorView& cos,
                                const TensorView& sin, bool interleaved, RopeParams* p);
void rope(const RopeParams& p, Impl impl);

// up may be null: then gate is [..., 2 * inter] holding gate then up.
std::vector<OutSpec> check_silu_mul(const TensorView& gate, const TensorView* up, SiluMulParams* p);
void silu_mul(const SiluMulParams& p, Impl impl);

// scale: for i8 / fp8_e4m3 weights (and only then), f32 [ceil(N / 128), ceil(K / 128)].
std::vector<OutSpec> check_gemm(const TensorView& x, const TensorView& w, GemmParams* p, const TensorView* scale = nullptr);
// 8-bit weights from a float matrix [n, k] (f32 | bf16 | f16), one scale per 128 × 128 block:
// scale = amax / 127 (i8) or amax / 448 (fp8_e4m3) over the block's finite values (1 when
// the block is all zero), code = round-to-nearest-even(w / scale), i8 clamped to ±127,
// e4m3 saturating. `codes` [n, k] of `to`, `scales` [ceil(n/128), ceil(k/128)].
void quantize_weight(const void* w, DType w_dtype, int64_t n, int64_t k, DType to, void* codes, float* scales, bool parallel);
void gemm(const GemmParams& p, Impl impl);

std::vector<OutSpec> check_softmax(const TensorView& x, double scale, SoftmaxParams* p);
void softmax(const SoftmaxParams& p, Impl impl);

std::vector<OutSpec> check_sample(const TensorView& logits, SampleParams* p);  // p: options set
void sample(const SampleParams& p, Impl impl);

std::vector<OutSpec> check_cast(const TensorView& x, DType to, CastParams* p);
void cast(const CastParams& p, Impl impl);

// ---- MLA, FP8 and the paged latent cache (ops_mla.cc) ---------------------------------
// Checks a cache layout and size (dtype f32 | bf16 | fp8_e4m3, positive sizes).
void check_kv_layout(const KvLayout& layout, int64_t layers, int64_t pages);

std::vector<OutSpec> check_kv_append(const KvCacheView& cache, const TensorView& c_kv, const TensorView& k_pe,
                                     const TensorView& slots, KvAppendParams* p);
void kv_append(const KvAppendParams& p, Impl impl);

std::vector<OutSpec> check_kv_read(const KvCacheView& cache, const TensorView& slots, KvReadParams* p);
void kv_read(const KvReadParams& p, Impl impl);

std::vector<OutSpec> check_heads_gemm(const TensorView& x, const TensorView& w, HeadsGemmParams* p);
void heads_gemm(const HeadsGemmParams& p, Impl impl);

std::vector<OutSpec> check_mla_decode(const TensorView& q, const KvCacheView& cache, const TensorView& block_table,
                                      const TensorView& seqlens, double scale, int64_t split_tokens, MlaDecodeParams* p);
void mla_decode(const MlaDecodeParams& p, Impl impl);

std::vector<OutSpec> check_mla_prefill(const TensorView& q, const KvCacheView& cache, const TensorView& block_table,
                                       const TensorView& seqlens, const TensorView& cu_seqlens_q, const TensorView& kv_b,
                                       double scale, int64_t d_nope, int64_t d_v, MlaPrefillParams* p);
void mla_prefill(const MlaPrefillParams& p, Impl impl);

// given: static scales (shape of the scales output), or null to compute them from the amax.
std::vector<OutSpec> check_fp8_quantize(const TensorView& x, Fp8Granularity g, int64_t tile, bool pow2,
                                        const TensorView* given, Fp8QuantParams* p);
void fp8_quantize(const Fp8QuantParams& p, Impl impl);

std::vector<OutSpec> check_fp8_dequantize(const TensorView& codes, const TensorView& scales, Fp8Granularity g,
                                          int64_t tile, Fp8DequantParams* p);
void fp8_dequantize(const Fp8DequantParams& p, Impl impl);

// ---- MoE (ops_moe.cc) ---------------------------------------------------------------
// p: method, scoring, top_k, n_group, topk_group, norm, factor set by the caller.
std::vector<OutSpec> check_moe_route(const TensorView& logits, const TensorView* bias, MoeRouteParams* p);
void moe_route(const MoeRouteParams& p, Impl impl);

std::vector<OutSpec> check_moe_experts(const TensorView& x, const TensorView& ids, const TensorView& weights,
                                       const TensorView& gate_up, const TensorView& down, const TensorView* shared_gate_up,
                                       const TensorView* shared_down, MoeExpertsParams* p,
                                       const TensorView* gate_up_scale = nullptr, const TensorView* down_scale = nullptr);
void moe_experts(const MoeExpertsParams& p, Impl impl);

// Multi-threaded memcpy of `bytes` bytes, `iters` times: the machine's copy bandwidth, the
// roofline the benchmarks report against. Returns seconds per copy (best of iters).
double copy_bandwidth_seconds(size_t bytes, int iters);
// Multi-threaded read (a sum) of `bytes` bytes, `iters` times: the read bandwidth, the
// roofline of decode steps that stream weights. Seconds per pass (best of iters).
double read_bandwidth_seconds(size_t bytes, int iters);

}  // namespace dsv2::ops
