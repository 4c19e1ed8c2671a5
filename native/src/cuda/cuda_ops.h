// Entry points of the CUDA side, callable from plain C++ (no CUDA headers here). All
// pointers in the params structs are device pointers; `stream` is a cudaStream_t. In a build
// without CUDA these are not compiled; callers check DSV2_WITH_CUDA (see device_memory.h).
#pragma once
#include <cstddef>
#include <functional>

#include "dsv2/dense.h"
#include "dsv2/mla.h"
#include "dsv2/moe.h"

namespace dsv2::cuda {

// Device memory and copies; errors become dsv2::Error E_CUDA / E_OOM with the CUDA error name.
void* alloc(size_t bytes);
void free(void* p) noexcept;
void memset(void* p, int value, size_t bytes, void* stream);
void copy_h2d(void* dst, const void* src, size_t bytes, void* stream);
void copy_d2h(void* dst, const void* src, size_t bytes, void* stream);
void copy_d2d(void* dst, const void* src, size_t bytes, void* stream);
// Milliseconds per call of `enqueue` (which launches work on `stream`), timed with CUDA events
// over `iters` calls.
double time_ms(void* stream, int iters, const std::function<void()>& enqueue);
void* stream_create();
void stream_destroy(void* s) noexcept;
void stream_sync(void* s);
void stream_wait_quiet(void* s) noexcept;  // synchronise, ignoring (and clearing) errors

// Paged latent cache (kv_cache.cu): bit-identical to the CPU ops.
void kv_append(const KvAppendParams& p, void* stream);  // slots: device i64 or i32
void kv_read(const KvReadParams& p, void* stream);
void kv_poison(const KvCacheView& c, void* stream);

// Split plan of a decode call, made on the host from the (host) seqlens: work item k covers
// keys [item_t0[k], item_t1[k]) of sequence item_seq[k]; sequence i owns items
// [seq_item_begin[i], seq_item_begin[i + 1]).
struct DecodePlan {
  const int32_t* item_seq = nullptr;        // [n_items], device
  const int32_t* item_t0 = nullptr;         // [n_items], device
  const int32_t* item_t1 = nullptr;         // [n_items], device
  const int32_t* seq_item_begin = nullptr;  // [b + 1], device
  int64_t n_items = 0;
  float* part_out = nullptr;                // [n_items, s_q · h_q, d_c], device scratch
  float* part_lse = nullptr;                // [n_items, s_q · h_q], device scratch
};

// Largest d_c the generic decode kernel takes (its per-lane accumulators are sized for it).
constexpr int64_t kDecodeGenericMaxDc = 1024;
// Absorbed MLA decode, split-KV + log-sum-exp combine (mla_decode.cu). p's pointers and the
// plan's arrays are device memory.
void mla_decode(const MlaDecodeParams& p, const DecodePlan& plan, void* stream);
// Which kernel mla_decode runs for these sizes (for benchmarks and logs).
const char* mla_decode_kernel_name(const MlaDecodeParams& p);

// Row-wise dense kernels (norm_rope.cu); ids / positions must be checked by the caller.
void embedding(const EmbeddingParams& p, void* stream);
void rms_norm(const RmsNormParams& p, void* stream);
void rope(const RopeParams& p, void* stream);
void silu_mul(const SiluMulParams& p, void* stream);
void softmax(const SoftmaxParams& p, void* stream);

// Dense GEMM (gemm.cu), device pointers; k == 0 leaves y untouched (callers zero it).
void gemm(const GemmParams& p, void* stream);
const char* gemm_kernel_name(const GemmParams& p);

// MLA prefill for one sequence (mla_prefill.cu); all pointers device memory.
constexpr int64_t kPrefillMaxDv = 256;
struct PrefillSeq {
  int64_t q0 = 0, n_q = 0, s_k = 0;  // query rows [q0, q0 + n_q) are the last n_q of s_k keys
  int64_t h = 0, d_nope = 0, d_r = 0, d_v = 0;
  float scale = 1.0f;
};
struct PrefillScratch {
  float* c = nullptr;    // [s_k, d_c]
  float* pe = nullptr;   // [s_k, d_r]
  float* kvx = nullptr;  // [s_k, h · (d_nope + d_v)]
};
void mla_prefill_seq(const KvCacheView& cache, const int32_t* block_row, const PrefillSeq& s, const float* q,
                     const void* kv_b, DType kv_b_dtype, const PrefillScratch& scratch, float* out, void* stream);

// MoE experts (moe.cu): device dispatch + grouped SwiGLU experts + shared + combine, no host
// synchronisation. p's pointers and the scratch are device memory, sized for t · top_k pairs.
struct MoeScratch {
  int32_t* counts = nullptr;    // [E]
  int32_t* offsets = nullptr;   // [E + 1]
  int32_t* cursor = nullptr;    // [E]
  int32_t* rows = nullptr;      // [t · top_k]: pair index (t · top_k + slot) per segment position
  float* h = nullptr;           // [t · top_k, inter]
  float* slot_out = nullptr;    // [t · top_k, hidden]
  float* shared_gu = nullptr;   // [t, 2 · inter_shared]
  float* shared_h = nullptr;    // [t, inter_shared]
  float* shared_out = nullptr;  // [t, hidden]
};
void moe_experts(const MoeExpertsParams& p, const MoeScratch& s, void* stream);

// Fused MoE routing (router.cu): E ≤ kRouteMaxExperts, n_group ≤ 32; device pointers.
constexpr int64_t kRouteMaxExperts = 256;
void moe_route(const MoeRouteParams& p, void* stream);

}  // namespace dsv2::cuda
