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
    if (md.n_experts > 0) {
      moe_.counts = static_cast<int32_t*>(take(sz.moe[0]));
      moe_.offsets = static_cast<int32_t*>(take(sz.moe[1]));
      moe_.cursor = static_cast<int32_t*>(take(sz.moe[2]));
      moe_.rows = static_cast<int32_t*>(take(sz.moe[3]));
      moe_.h = static_cast<float*>(take(sz.moe[4]));
      moe_.slot_out = static_cast<float*>(take(sz.moe[5]));
      if (md.inter_shared > 0) {
        moe_.shared_gu = static_cast<float*>(take(sz.moe[6]));
        moe_.shared_h = static_cast<float*>(take(sz.moe[7]));
        moe_.shared_out = static_cast<float*>(take(sz.moe[8]));
      }
    }
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
    // MoE: dispatch and per-pair activations for max_tokens · top_k pairs.
    if (md.n_experts > 0) {
      const int64_t pairs = max_tokens * md.top_k;
      s.moe = {static_cast<size_t>(md.n_experts) * 4, static_cast<size_t>(md.n_experts + 1) * 4,
               static_cast<size_t>(md.n_experts) * 4, static_cast<size_t>(pairs) * 4,
               static_cast<size_t>(pairs * md.inter) * 4, static_cast<size_t>(pairs * md.hidden) * 4};
      if (md.inter_shared > 0) {
        s.moe.push_back(static_cast<size_t>(max_tokens * 2 * md.inter_shared) * 4);
        s.moe.push_back(static_cast<size_t>(max_tokens * md.inter_shared) * 4);
        s.moe.push_back(static_cast<size_t>(max_tokens * md.hidden) * 4);
      }
    }
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
  void fill_random(const FillRandomParams& p) override { cuda::fill_random(p, stream_); }

 private:
  void* stream_;
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
