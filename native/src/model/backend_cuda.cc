// The engine's CUDA backend: device memory and the CUDA kernels, all on one stream. Nothing
// here synchronises with the host except download() and sync(); uploads of step inputs are
// ordered on the stream like the kernels.
#include <algorithm>
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
  CudaBackend() : stream_(cuda::stream_create()) {}
  ~CudaBackend() override {
    cuda::stream_wait_quiet(stream_);
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
    size_t total = 0;
    auto take = [&](size_t bytes) {
      void* p = alloc(std::max<size_t>(bytes, 4));
      scratch_.push_back(p);
      total += std::max<size_t>(bytes, 4);
      return p;
    };
    // Decode: a split plan of at most max_items work items (see decode()).
    // Sequence i is cut into ceil(s_k / split) items with split >= max s_k / ceil(parts / b),
    // so a step has at most parts + 2 · b items.
    max_items_ = 2 * max_seqs + kDecodeParts;
    item_seq_ = static_cast<int32_t*>(take(max_items_ * 4));
    item_t0_ = static_cast<int32_t*>(take(max_items_ * 4));
    item_t1_ = static_cast<int32_t*>(take(max_items_ * 4));
    item_begin_ = static_cast<int32_t*>(take((max_seqs + 1) * 4));
    part_rows_ = dd.s_q * dd.h_q;  // dd.s_q: the most query tokens per sequence of a decode step
    part_out_ = static_cast<float*>(take(static_cast<size_t>(max_items_ * part_rows_ * dd.d_c) * 4));
    part_lse_ = static_cast<float*>(take(static_cast<size_t>(max_items_ * part_rows_) * 4));
    // Prefill: one sequence's latent and expanded K/V at a time.
    cuda::PrefillSeq most;
    most.n_q = std::min(max_tokens, max_seqlen);
    most.s_k = max_seqlen;
    most.h = pd.h;
    most.d_nope = pd.d_nope;
    most.d_r = pd.d_r;
    most.d_v = pd.d_v;
    most.d_c = pd.d_c;
    pf_bytes_ = cuda::mla_prefill_scratch_bytes(most);
    pf_ = take(pf_bytes_);
    // MoE: dispatch and per-pair activations for max_tokens · top_k pairs.
    if (md.n_experts > 0) {
      const int64_t pairs = max_tokens * md.top_k;
      moe_.counts = static_cast<int32_t*>(take(md.n_experts * 4));
      moe_.offsets = static_cast<int32_t*>(take((md.n_experts + 1) * 4));
      moe_.cursor = static_cast<int32_t*>(take(md.n_experts * 4));
      moe_.rows = static_cast<int32_t*>(take(pairs * 4));
      moe_.h = static_cast<float*>(take(static_cast<size_t>(pairs * md.inter) * 4));
      moe_.slot_out = static_cast<float*>(take(static_cast<size_t>(pairs * md.hidden) * 4));
      if (md.inter_shared > 0) {
        moe_.shared_gu = static_cast<float*>(take(static_cast<size_t>(max_tokens * 2 * md.inter_shared) * 4));
        moe_.shared_h = static_cast<float*>(take(static_cast<size_t>(max_tokens * md.inter_shared) * 4));
        moe_.shared_out = static_cast<float*>(take(static_cast<size_t>(max_tokens * md.hidden) * 4));
      }
    }
    return total;
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

  void mla_decode(const MlaDecodeParams& p, const SeqSizes& s) override {
    // The split plan from the host's sequence lengths, uploaded on the stream (no sync).
    const int64_t want = std::max<int64_t>(1, (kDecodeParts + p.b - 1) / p.b);
    const int64_t split = std::max<int64_t>(64, (s.max_seqlen + want - 1) / want);
    plan_seq_.clear(), plan_t0_.clear(), plan_t1_.clear(), plan_begin_.assign(p.b + 1, 0);
    for (int64_t i = 0; i < p.b; ++i) {
      plan_begin_[i] = static_cast<int32_t>(plan_seq_.size());
      for (int64_t t0 = 0; t0 < s.seqlens[i]; t0 += split) {
        plan_seq_.push_back(static_cast<int32_t>(i));
        plan_t0_.push_back(static_cast<int32_t>(t0));
        plan_t1_.push_back(static_cast<int32_t>(std::min<int64_t>(s.seqlens[i], t0 + split)));
      }
    }
    plan_begin_[p.b] = static_cast<int32_t>(plan_seq_.size());
    DSV2_CHECK(static_cast<int64_t>(plan_seq_.size()) <= max_items_ && p.s_q * p.h_q <= part_rows_, kInternal,
               "decode plan of " << plan_seq_.size() << " items × " << p.s_q * p.h_q << " rows exceeds the reserved "
                                 << max_items_ << " × " << part_rows_);
    upload(item_seq_, plan_seq_.data(), plan_seq_.size() * 4);
    upload(item_t0_, plan_t0_.data(), plan_t0_.size() * 4);
    upload(item_t1_, plan_t1_.data(), plan_t1_.size() * 4);
    upload(item_begin_, plan_begin_.data(), plan_begin_.size() * 4);
    cuda::DecodePlan plan;
    plan.item_seq = item_seq_;
    plan.item_t0 = item_t0_;
    plan.item_t1 = item_t1_;
    plan.seq_item_begin = item_begin_;
    plan.n_items = static_cast<int64_t>(plan_seq_.size());
    plan.part_out = part_out_;
    plan.part_lse = part_lse_;
    cuda::mla_decode(p, plan, stream_);
    // The plan's host vectors are reused next step: pageable copies are staged before
    // cudaMemcpyAsync returns, so reusing them is safe.
  }

  void mla_prefill(const MlaPrefillParams& p, const SeqSizes& s) override {
    for (int64_t i = 0; i < p.b; ++i) {
      cuda::PrefillSeq q;
      q.q0 = s.cu_q[i];
      q.n_q = s.cu_q[i + 1] - q.q0;
      q.s_k = s.seqlens[i];
      q.h = p.h;
      q.d_nope = p.d_nope;
      q.d_r = p.d_r;
      q.d_v = p.d_v;
      q.d_c = p.d_c;
      q.scale = p.scale;
      cuda::mla_prefill_seq(p.cache, p.block_table + i * p.max_blocks, q, p.q, p.kv_b, p.kv_b_dtype, pf_, pf_bytes_,
                            p.out, stream_);
    }
  }
  void moe_route(const MoeRouteParams& p) override { cuda::moe_route(p, stream_); }
  void moe_experts(const MoeExpertsParams& p) override { cuda::moe_experts(p, moe_, stream_); }
  void sample(const SampleBatchParams& p) override { cuda::sample(p, stream_); }

 private:
  static constexpr int64_t kDecodeParts = 264;  // ≈ 2 work items per SM of an H100 (132 SMs)
  void* stream_;
  std::vector<void*> scratch_;
  int64_t max_items_ = 0, part_rows_ = 0;
  int32_t *item_seq_ = nullptr, *item_t0_ = nullptr, *item_t1_ = nullptr, *item_begin_ = nullptr;
  float *part_out_ = nullptr, *part_lse_ = nullptr;
  std::vector<int32_t> plan_seq_, plan_t0_, plan_t1_, plan_begin_;
  void* pf_ = nullptr;  // prefill scratch, sized for the longest sequence
  size_t pf_bytes_ = 0;
  cuda::MoeScratch moe_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() {
  ops::require_cuda_usable("the CUDA model engine");
  return std::make_unique<CudaBackend>();
}

#else

std::unique_ptr<Backend> make_cuda_backend() {
  ops::require_cuda_usable("the CUDA model engine");  // throws: this build has no CUDA
  throw Error(Code::kUnsupported, "this build of dsv2 has no CUDA");
}

#endif

}  // namespace dsv2::model
