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
#include "dsv2/engine_ops.h"
#include "dsv2/moe.h"

namespace dsv2::model {

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

std::unique_ptr<Backend> make_cpu_backend();
// E_UNSUPPORTED (with the reason) when CUDA cannot run here.
std::unique_ptr<Backend> make_cuda_backend();
// Bytes the CUDA backend's reserve_scratch would allocate (E_UNSUPPORTED without CUDA).
size_t cuda_scratch_bytes(int64_t max_tokens, int64_t max_seqs, int64_t max_seqlen, const MlaDecodeParams& dd,
                          const MlaPrefillParams& pd, const MoeExpertsParams& md);

}  // namespace dsv2::model
