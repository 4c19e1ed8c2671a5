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

// Absorbed MLA decode (mla_decode.cu, mla_decode_mma.cu): split-KV attention over the paged
// latent cache + a log-sum-exp combine, with the split plan made ON THE DEVICE from the device
// seqlens: no host synchronisation, so a decode step can be captured in a CUDA graph.
//
// Usage (the whole-model runtime):
//   const int64_t parts = cuda::mla_decode_parts(p);     // host only; depends on the device
//                                                        // and on p's sizes/dtypes, not on seqlens
//   const size_t bytes = cuda::mla_decode_workspace_bytes(p.b, p.s_q, p.h_q, p.d_c, parts);
//   void* ws = cuda::alloc(bytes);                       // once, reused every step
//   cuda::mla_decode(p, parts, ws, bytes, stream);       // per step: 3 launches, no sync
// Contract:
//   - p.q, p.block_table, p.seqlens, p.out, p.lse and p.cache.data are device memory; p.out
//     [b, s_q, h_q, d_c] and p.lse [b, s_q, h_q] are fully written (no zeroing needed).
//   - seqlens[i] must be in [0, max_blocks · page_size] and the block-table entries covering
//     them in [0, cache.pages): NOT checked on the device (the op-level entry checks them on
//     the host). Entries past a sequence's end are never read; nor are cache bytes past it.
//   - p.split_tokens is ignored here (the op-level entry turns it into n_parts).
//   - The workspace (≥ mla_decode_workspace_bytes(b, s_q, h_q, d_c, n_parts), any 256-byte
//     aligned device buffer, contents irrelevant) must not be shared by two calls in flight.
//   - Which kernel runs: mla_decode_kernel_name(p). d_c = 512, d_r = 64 with a bf16 or fp8
//     cache use tensor cores (sm_80+), which round q and the softmax weights to bf16 and an fp8
//     key's dequantized values to bf16; everything else runs the exact-f32 generic kernel
//     (d_c ≤ kDecodeGenericMaxDc).
// Errors (dsv2::Error): E_RANGE for a too small workspace or n_parts outside
// [1, kDecodeMaxParts], E_UNSUPPORTED for sizes no kernel takes, E_CUDA for launch failures.
constexpr int64_t kDecodeGenericMaxDc = 1024;  // the generic kernel's per-lane accumulators
constexpr int64_t kDecodeMaxParts = 65535;
int64_t mla_decode_parts(const MlaDecodeParams& p);
size_t mla_decode_workspace_bytes(int64_t b, int64_t s_q, int64_t h_q, int64_t d_c, int64_t n_parts);
void mla_decode(const MlaDecodeParams& p, int64_t n_parts, void* workspace, size_t ws_bytes, void* stream);
// Same with n_parts = mla_decode_parts(p) (size the workspace with that value).
void mla_decode(const MlaDecodeParams& p, void* workspace, size_t ws_bytes, void* stream);
// Which kernel mla_decode runs for these sizes on the current device (benchmarks, logs):
// "tc_mma_bk64_bf16" / "tc_mma_bk64_fp8" / "tc_mma_bk32_*" (tensor cores) or "generic".
const char* mla_decode_kernel_name(const MlaDecodeParams& p);
// Benchmarks and tests: the item / split-sequence counts of the last plan written to the
// workspace (synchronises `stream`; not for the decode loop).
void mla_decode_plan_stats(const MlaDecodeParams& p, int64_t n_parts, const void* workspace, int64_t* n_items,
                           int64_t* n_split, void* stream);

// Row-wise dense kernels (norm_rope.cu); ids / positions must be checked by the caller.
void embedding(const EmbeddingParams& p, void* stream);
void rms_norm(const RmsNormParams& p, void* stream);
void rope(const RopeParams& p, void* stream);
void silu_mul(const SiluMulParams& p, void* stream);
void softmax(const SoftmaxParams& p, void* stream);

// Dense GEMM (gemm.cu), device pointers; k == 0 writes zeros. bf16 W with K % 8 == 0 and
// 16-byte aligned x, W runs on tensor cores (x split hi+lo for M ≤ 32, rounded to bf16
// above; see gemm.cu); split-K scratch is stream-ordered (cudaMallocAsync) inside the call.
void gemm(const GemmParams& p, void* stream);
const char* gemm_kernel_name(const GemmParams& p);
// Milliseconds per gemm call: `iters` calls cycling through ps[0..n) captured in one CUDA
// graph (plain launches where capture fails), timed with events after a warm-up.
double gemm_bench_ms(const GemmParams* ps, int n, int iters, void* stream);

// MLA prefill for one sequence (mla_prefill.cu); all pointers device memory. Sequence rows
// [q0, q0 + n_q) of q [T, h, d_nope + d_r] / out [T, h, d_v] are the last n_q of its s_k keys,
// read from the paged cache through block_row (its row of the block table).
// Kernels, chosen in one dispatch (mla_prefill_kernel_name says which):
//   - (d_nope, d_r, d_v) = (128, 64, 128): tensor-core flash attention (mma.sync bf16); q,
//     K, V and the probabilities are ROUNDED TO BF16 for the mma, accumulation is f32;
//   - any other dims with d_v ≤ kPrefillMaxDv: the generic SIMT kernel, all f32.
constexpr int64_t kPrefillMaxDv = 256;
struct PrefillSeq {
  int64_t q0 = 0, n_q = 0, s_k = 0;  // query rows [q0, q0 + n_q) are the last n_q of s_k keys
  int64_t h = 0, d_nope = 0, d_r = 0, d_v = 0;
  int64_t d_c = 0;  // latent dims (the cache's d_c)
  float scale = 1.0f;
};
// Bytes of device scratch one call needs (256-byte aligned base). Non-decreasing in s_k and h
// for fixed dims, so one buffer sized for the longest sequence of a batch serves every
// sequence of it, reused call after call on one stream (calls on a stream run in order).
// Sequence i of a prefill call, from host copies of its cu_seqlens_q and seqlens.
inline PrefillSeq prefill_seq_of(const MlaPrefillParams& p, int64_t i, const int32_t* cu_q, const int32_t* seqlens) {
  PrefillSeq s;
  s.q0 = cu_q[i];
  s.n_q = cu_q[i + 1] - s.q0;
  s.s_k = seqlens[i];
  s.h = p.h;
  s.d_nope = p.d_nope;
  s.d_r = p.d_r;
  s.d_v = p.d_v;
  s.d_c = p.d_c;
  s.scale = p.scale;
  return s;
}
size_t mla_prefill_scratch_bytes(const PrefillSeq& s);
const char* mla_prefill_kernel_name(const PrefillSeq& s);
// Full prefill of one sequence = expand then attend (n_q = 0 or s_k = 0: nothing is launched).
void mla_prefill_seq(const KvCacheView& cache, const int32_t* block_row, const PrefillSeq& s, const float* q,
                     const void* kv_b, DType kv_b_dtype, void* scratch, size_t scratch_bytes, float* out, void* stream);
// The two halves (benchmarks time them apart): expand gathers the sequence's latent keys
// and expands K_nope / V with kv_b (cuda::gemm) into scratch; attend runs the attention
// kernel from that scratch.
void mla_prefill_expand(const KvCacheView& cache, const int32_t* block_row, const PrefillSeq& s, const void* kv_b,
                        DType kv_b_dtype, void* scratch, size_t scratch_bytes, void* stream);
void mla_prefill_attend(const PrefillSeq& s, const float* q, void* scratch, size_t scratch_bytes, float* out, void* stream);

// MoE experts (moe.cu): device dispatch + grouped SwiGLU experts + shared + combine, no host
// synchronisation and no grid that depends on device counts (graph-capturable). p's pointers
// and the scratch are device memory, sized for t · top_k pairs (moe_scratch_bytes).
struct MoeScratch {
  int32_t* counts = nullptr;    // [E]
  int32_t* offsets = nullptr;   // [E + 1]
  int32_t* cursor = nullptr;    // [E]
  int32_t* rows = nullptr;      // [t · top_k]: pair index (t · top_k + slot) per segment position
  float* h = nullptr;           // [t · top_k, inter] (the tensor-core path keeps bf16 h in its first half)
  float* slot_out = nullptr;    // [t · top_k, hidden]
  float* shared_gu = nullptr;   // [t, 2 · inter_shared] (SIMT shared path only)
  float* shared_h = nullptr;    // [t, inter_shared] (tensor-core path: bf16 in its first half)
  float* shared_out = nullptr;  // [t, hidden]
  uint16_t* xb = nullptr;       // [t, hidden] bf16 x (tensor-core path)
  int32_t* tiles = nullptr;     // [2 · t · top_k] tile table {expert, first row} (tensor-core path)
  int32_t* n_tiles = nullptr;   // [1] live tiles in the table
};
void moe_experts(const MoeExpertsParams& p, const MoeScratch& s, void* stream);
// Which kernels moe_experts runs for p (routed and shared part), for benchmarks and logs:
// "routed=<simt|mma_skinny|mma_tiled|none> shared=<...>". The tensor-core kernels need the
// scratch's xb / tiles / n_tiles (moe_scratch_carve sets them); s == nullptr assumes they are set.
const char* moe_experts_kernel_name(const MoeExpertsParams& p, const MoeScratch* s = nullptr);
// One device allocation for every scratch buffer of calls up to max_shape.t tokens (the other
// sizes as in the calls): bytes to allocate, then the buffers carved from it (256-byte aligned).
size_t moe_scratch_bytes(const MoeExpertsParams& max_shape);
MoeScratch moe_scratch_carve(void* base, const MoeExpertsParams& max_shape);

// Fill n elements (f32, bf16, or fp8_e4m3 / i8 codes) with seeded uniform values in [-scale, scale) (benchmarks).
void moe_bench_fill(void* p, DType t, int64_t n, uint64_t seed, float scale, void* stream);

// Fused MoE routing (router.cu): E ≤ kRouteMaxExperts, n_group ≤ 32; device pointers.
constexpr int64_t kRouteMaxExperts = 256;
void moe_route(const MoeRouteParams& p, void* stream);
// Which routing kernel moe_route runs for p (for benchmarks and logs).
const char* moe_route_kernel_name(const MoeRouteParams& p);
// The unfused baseline for the router benchmark (router_unfused.cu): one launch per step as
// eager torch runs it (softmax/sigmoid, group scores, top groups, mask, top-k, weights, counts);
// the same results; scratch of moe_route_unfused_scratch_bytes(p) device bytes.
size_t moe_route_unfused_scratch_bytes(const MoeRouteParams& p);
void moe_route_unfused(const MoeRouteParams& p, void* scratch, void* stream);

}  // namespace dsv2::cuda
