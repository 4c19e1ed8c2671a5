// The engine's CUDA backend: device memory and the CUDA kernels, all on one stream. Nothing
// here synchronises with the host except download() and sync(); uploads of step inputs are
// ordered on the stream like the kernels.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "backend.h"
#include "dsv2/status.h"
#include "../ops_cuda.h"
#ifdef DSV2_WITH_CUDA
#include "../cuda/cuda_ops.h"
#include "../cuda/model_ops.h"
#endif

namespace dsv2::model {

#ifdef DSV2_WITH_CUDA
namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend() : stream_(cuda::stream_create()) {
    const char* g = std::getenv("DSV2_CUDA_GRAPHS");
    graphs_on_ = !(g && std::string(g) == "0");
  }
  ~CudaBackend() override {
    cuda::stream_wait_quiet(stream_);
    drop_captured();
    for (void* p : scratch_) cuda::free(p);
    cuda::stream_destroy(stream_);
  }
  Device device() const override { return Device::kCuda; }
  const char* name() const override { return "cuda"; }

  void* alloc(size_t bytes) override {
    void* p = cuda::alloc(bytes ? bytes : 1);
    try {
      cuda::memset(p, 0, bytes ? bytes : 1, stream_);
      cuda::stream_sync(stream_);
    } catch (...) {
      cuda::free(p);
      throw;
    }
    return p;
  }
  void release(void* p) noexcept override {
    if (p) cuda::free(p);
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes) cuda::copy_h2d(dst, src, bytes, stream_);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    cuda::copy_d2h(dst, src, bytes, stream_);
    cuda::stream_sync(stream_);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) cuda::copy_d2d(dst, src, bytes, stream_);
  }
  void sync() override { cuda::stream_sync(stream_); }

  size_t reserve_scratch(int64_t max_tokens, int64_t max_seqs, int64_t max_seqlen, const MlaDecodeParams& dd,
                         const MlaPrefillParams& pd, const MoeExpertsParams& md) override {
    const Scratch sz = plan_scratch(max_tokens, max_seqs, max_seqlen, dd, pd, md);
    auto take = [&](size_t bytes) {
      void* p = alloc(std::max<size_t>(bytes, 4));
      scratch_.push_back(p);
      return p;
    };
    decode_ws_bytes_ = sz.decode;
    decode_ws_ = take(sz.decode);
    pf_bytes_ = sz.prefill;
    pf_ = take(sz.prefill);
    if (md.n_experts > 0) moe_ = cuda::moe_scratch_carve(take(sz.moe[0]), md);
    return sz.total();
  }

  // Sizes of the kernels' scratch: decode workspace, prefill scratch, MoE dispatch buffers.
  struct Scratch {
    size_t decode = 0, prefill = 0;
    std::vector<size_t> moe;
    size_t total() const {
      size_t t = std::max<size_t>(decode, 4) + std::max<size_t>(prefill, 4);
      for (size_t m : moe) t += std::max<size_t>(m, 4);
      return t;
    }
  };
  static Scratch plan_scratch(int64_t max_tokens, int64_t max_seqs, int64_t max_seqlen, const MlaDecodeParams& dd,
                              const MlaPrefillParams& pd, const MoeExpertsParams& md) {
    Scratch s;
    // Decode: the part count depends on b and s_q, so take the largest need over every step size.
    MlaDecodeParams dp = dd;
    for (dp.b = 1; dp.b <= max_seqs; ++dp.b)
      for (dp.s_q = 1; dp.s_q <= dd.s_q; ++dp.s_q)
        s.decode = std::max(s.decode, cuda::mla_decode_workspace_bytes(dp.b, dp.s_q, dp.h_q, dp.d_c, cuda::mla_decode_parts(dp)));
    // Prefill: one sequence at a time, sized for the longest.
    cuda::PrefillSeq most;
    most.n_q = std::min(max_tokens, max_seqlen);
    most.s_k = max_seqlen;
    most.h = pd.h;
    most.d_nope = pd.d_nope;
    most.d_r = pd.d_r;
    most.d_v = pd.d_v;
    most.d_c = pd.d_c;
    s.prefill = cuda::mla_prefill_scratch_bytes(most);
    // MoE: dispatch, tile table and per-pair activations for max_tokens · top_k pairs, one
    // allocation carved by the MoE code itself (so the tensor-core path finds its buffers).
    if (md.n_experts > 0) s.moe = {cuda::moe_scratch_bytes(md)};
    return s;
  }

  void embedding(const EmbeddingParams& p) override { cuda::embedding(p, stream_); }
  void rms_norm(const RmsNormParams& p) override { cuda::rms_norm(p, stream_); }
  void add_rms_norm(const AddRmsNormParams& p) override { cuda::add_rms_norm(p, stream_); }
  void gemm(const GemmParams& p) override { cuda::gemm(p, stream_); }
  void heads_gemm(const HeadsGemmParams& p) override { cuda::heads_gemm(p, stream_); }
  void copy_cols(const CopyColsParams& p) override { cuda::copy_cols(p, stream_); }
  void rope(const RopeParams& p) override { cuda::rope(p, stream_); }
  void silu_mul(const SiluMulParams& p) override { cuda::silu_mul(p, stream_); }
  void kv_append(const KvAppendParams& p) override { cuda::kv_append(p, stream_); }

  void mla_decode(const MlaDecodeParams& p, const SeqSizes&) override {
    // The split plan is made on the device from the device seqlens: no host work, no sync.
    const int64_t parts = cuda::mla_decode_parts(p);
    const size_t need = cuda::mla_decode_workspace_bytes(p.b, p.s_q, p.h_q, p.d_c, parts);
    DSV2_CHECK(need <= decode_ws_bytes_, kInternal,
               "decode workspace of " << need << " bytes exceeds the reserved " << decode_ws_bytes_);
    cuda::mla_decode(p, parts, decode_ws_, decode_ws_bytes_, stream_);
  }

  void mla_prefill(const MlaPrefillParams& p, const SeqSizes& s) override {
    for (int64_t i = 0; i < p.b; ++i)
      cuda::mla_prefill_seq(p.cache, p.block_table + i * p.max_blocks, cuda::prefill_seq_of(p, i, s.cu_q, s.seqlens), p.q,
                            p.kv_b, p.kv_b_dtype, pf_, pf_bytes_, p.out, stream_);
  }
  void moe_route(const MoeRouteParams& p) override { cuda::moe_route(p, stream_); }
  void moe_experts(const MoeExpertsParams& p) override { cuda::moe_experts(p, moe_, stream_); }
  void sample(const SampleBatchParams& p) override { cuda::sample(p, stream_); }
  void fill_random(const FillRandomParams& p) override { cuda::fill_random(p, stream_); }

  void run_captured(const std::string& key, const std::function<void()>& enqueue) override {
    if (!graphs_on_) return enqueue();
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (graphs_.size() >= kMaxGraphs) drop_captured();  // decode shapes change slowly: start over
      cuda::graph_capture_begin(stream_);
      try {
        enqueue();
      } catch (...) {
        cuda::graph_destroy(cuda::graph_capture_end(stream_));
        graphs_[key] = nullptr;  // not capturable: run it directly from now on
        ++stats_.failed;
        return enqueue();
      }
      it = graphs_.emplace(key, cuda::graph_capture_end(stream_)).first;
      ++(it->second ? stats_.captured : stats_.failed);
    }
    if (it->second == nullptr) return enqueue();
    cuda::graph_launch(it->second, stream_);
    ++stats_.launches;
  }
  GraphStats graph_stats() const override { return stats_; }
  void drop_captured() override {
    for (auto& [k, g] : graphs_) cuda::graph_destroy(g);
    graphs_.clear();
  }

 private:
  static constexpr size_t kMaxGraphs = 32;
  void* stream_;
  bool graphs_on_ = true;  // DSV2_CUDA_GRAPHS=0 turns capture off
  std::map<std::string, void*> graphs_;  // key → executable graph (nullptr: capture failed)
  GraphStats stats_;
  std::vector<void*> scratch_;
  void* decode_ws_ = nullptr;
  size_t decode_ws_bytes_ = 0;
  void* pf_ = nullptr;  // prefill scratch, sized for the longest sequence
  size_t pf_bytes_ = 0;
  cuda::MoeScratch moe_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() {
  ops::require_cuda_usable("the CUDA model engine");
  return std::make_unique<CudaBackend>();
}

size_t cuda_scratch_bytes(int64_t max_tokens, int64_t max_seqs, int64_t max_seqlen, const MlaDecodeParams& dd,
                          const MlaPrefillParams& pd, const MoeExpertsParams& md) {
  ops::require_cuda_usable("CUDA memory planning");
  return CudaBackend::plan_scratch(max_tokens, max_seqs, max_seqlen, dd, pd, md).total();
}

#else

std::unique_ptr<Backend> make_cuda_backend() {
  ops::require_cuda_usable("the CUDA model engine");  // throws: this build has no CUDA
  throw Error(Code::kUnsupported, "this build of dsv2 has no CUDA");
}

size_t cuda_scratch_bytes(int64_t, int64_t, int64_t, const MlaDecodeParams&, const MlaPrefillParams&, const MoeExpertsParams&) {
  ops::require_cuda_usable("CUDA memory planning");
  throw Error(Code::kUnsupported, "this build of dsv2 has no CUDA");
}

#endif

}  // namespace dsv2::model
