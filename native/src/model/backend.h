// The compute backend of the native model engine: one interface, two implementations.
//   cpu   the CPU ops of the core (host memory), so the engine's orchestration is tested on
//         every machine against the TypeScript forward;
//   cuda  the CUDA kernels on one stream (device memory), no host synchronisation until
//         download()/sync().
// Every op takes the same params struct as the core op it mirrors (pointers in the backend's
// memory); checks of user input happen before (Engine::step), not here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "dsv2/dense.h"
#include "dsv2/hd.h"
#include "dsv2/mla.h"
#include "dsv2/moe.h"

namespace dsv2::model {

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

// Host copies of the per-sequence sizes of a step (the attention plans are made from them).
struct SeqSizes {
  const int32_t* seqlens = nullptr;  // [b] keys per sequence after this step
  const int32_t* cu_q = nullptr;     // [b + 1] query rows of each sequence
  int64_t max_seqlen = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual const char* name() const = 0;

  // Zero-filled memory of the backend; E_OOM with the numbers when it does not fit.
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) noexcept = 0;
  // Host → backend and backend → host copies, ordered with the ops; download() returns when
  // the data is on the host. copy() is backend → backend.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void sync() = 0;
  // Scratch the attention and MoE ops need for steps of up to max_tokens tokens, max_seqs
  // sequences and max_seqlen keys per sequence (allocated once: graph capture needs fixed
  // addresses). Returns the bytes held.
  virtual size_t reserve_scratch(int64_t max_tokens, int64_t max_seqs, int64_t max_seqlen, const MlaDecodeParams& dims,
                                 const MlaPrefillParams& pdims, const MoeExpertsParams& mdims) = 0;

  virtual void embedding(const EmbeddingParams& p) = 0;
  virtual void rms_norm(const RmsNormParams& p) = 0;
  virtual void add_rms_norm(const AddRmsNormParams& p) = 0;
  virtual void gemm(const GemmParams& p) = 0;
  virtual void heads_gemm(const HeadsGemmParams& p) = 0;
  virtual void copy_cols(const CopyColsParams& p) = 0;
  virtual void rope(const RopeParams& p) = 0;
  virtual void silu_mul(const SiluMulParams& p) = 0;
  virtual void kv_append(const KvAppendParams& p) = 0;
  virtual void mla_decode(const MlaDecodeParams& p, const SeqSizes& s) = 0;
  virtual void mla_prefill(const MlaPrefillParams& p, const SeqSizes& s) = 0;
  virtual void moe_route(const MoeRouteParams& p) = 0;
  virtual void moe_experts(const MoeExpertsParams& p) = 0;
  virtual void sample(const SampleBatchParams& p) = 0;
  virtual void fill_random(const FillRandomParams& p) = 0;
  // Runs `enqueue` (ops on this backend only: no upload/download/sync inside). The CUDA
  // backend captures it as a CUDA graph the first time a key is seen and replays the graph
  // after (a key must determine every launch: sizes, pointers, scalar arguments); where
  // capture fails it runs the ops directly. drop_captured() forgets every graph (call it when
  // a pointer a graph holds changes).
  virtual void run_captured(const std::string& key, const std::function<void()>& enqueue) { (void)key, enqueue(); }
  virtual void drop_captured() {}
  // Graphs captured, captures that failed (run eagerly since), and graph launches so far.
  struct GraphStats {
    int64_t captured = 0, failed = 0, launches = 0;
  };
  virtual GraphStats graph_stats() const { return {}; }
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

std::unique_ptr<Backend> make_cpu_backend();
// E_UNSUPPORTED (with the reason) when CUDA cannot run here.
std::unique_ptr<Backend> make_cuda_backend();
// Bytes the CUDA backend's reserve_scratch would allocate (E_UNSUPPORTED without CUDA).
size_t cuda_scratch_bytes(int64_t max_tokens, int64_t max_seqs, int64_t max_seqlen, const MlaDecodeParams& dd,
                          const MlaPrefillParams& pd, const MoeExpertsParams& md);

}  // namespace dsv2::model
