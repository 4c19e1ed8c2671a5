// The engine's CPU backend: host memory and the core's CPU ops (their fast paths).
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backend.h"
#include "dsv2/ops.h"
#include "dsv2/status.h"
#include "../core/dtype.h"
#include "../core/thread_pool.h"

namespace dsv2::model {
namespace {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::kCpu; }
  const char* name() const override { return "cpu"; }

  void* alloc(size_t bytes) override {
    void* p = std::calloc(1, bytes ? bytes : 1);
    DSV2_CHECK(p != nullptr, kOom, "could not allocate " << bytes << " bytes of host memory for the model engine");
    return p;
  }
  void release(void* p) noexcept override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void sync() override {}
  size_t reserve_scratch(int64_t, int64_t, int64_t, const MlaDecodeParams&, const MlaPrefillParams&,
                         const MoeExpertsParams&) override {
    return 0;  // the CPU ops allocate their own scratch
  }

  void embedding(const EmbeddingParams& p) override { ops::embedding(p, Impl::kAuto); }
  void rms_norm(const RmsNormParams& p) override { ops::rms_norm(p, Impl::kAuto); }
  void add_rms_norm(const AddRmsNormParams& p) override {
    parallel_for(p.rows, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float* x = p.x + r * p.dim;
        if (p.delta) {
          const float* d = p.delta + r * p.dim;
          for (int64_t k = 0; k < p.dim; ++k) x[k] += d[k];
        }
      }
    });
    RmsNormParams n;
    n.rows = p.rows;
    n.dim = p.dim;
    n.x = p.x;
    n.w = p.w;
    n.w_dtype = p.w_dtype;
    n.eps = p.eps;
    n.y = p.y;
    ops::rms_norm(n, Impl::kAuto);
  }
  void gemm(const GemmParams& p) override { ops::gemm(p, Impl::kAuto); }
  void heads_gemm(const HeadsGemmParams& p) override { ops::heads_gemm(p, Impl::kAuto); }
  void copy_cols(const CopyColsParams& p) override {
    for (int64_t r = 0; r < p.rows; ++r)
      std::memmove(p.dst + r * p.dst_stride + p.dst_col, p.src + r * p.src_stride + p.src_col, p.width * sizeof(float));
  }
  void rope(const RopeParams& p) override { ops::rope(p, Impl::kAuto); }
  void silu_mul(const SiluMulParams& p) override { ops::silu_mul(p, Impl::kAuto); }
  void kv_append(const KvAppendParams& p) override { ops::kv_append(p, Impl::kAuto); }
  void mla_decode(const MlaDecodeParams& p, const SeqSizes&) override { ops::mla_decode(p, Impl::kAuto); }
  void mla_prefill(const MlaPrefillParams& p, const SeqSizes&) override { ops::mla_prefill(p, Impl::kAuto); }
  void moe_route(const MoeRouteParams& p) override { ops::moe_route(p, Impl::kAuto); }
  void moe_experts(const MoeExpertsParams& p) override { ops::moe_experts(p, Impl::kAuto); }
  void fill_random(const FillRandomParams& p) override {
    parallel_for(p.n, 1 << 16, [&](int64_t b, int64_t e) {
      if (p.dtype == DType::kF32) {
        float* d = static_cast<float*>(p.data);
        for (int64_t i = b; i < e; ++i) d[i] = random_value(p.seed, i, p.mean, p.std);
      } else {
        uint16_t* d = static_cast<uint16_t*>(p.data);
        for (int64_t i = b; i < e; ++i) d[i] = f32_to_bf16(random_value(p.seed, i, p.mean, p.std));
      }
    });
  }
  void sample(const SampleBatchParams& p) override {
    p.bad[0] = 0;
    for (int64_t r = 0; r < p.rows; ++r) {
      SampleParams s;
      s.rows = 1;
      s.vocab = p.vocab;
      s.logits = p.logits + r * p.vocab;
      s.temperature = p.temperature;
      s.top_k = p.top_k;
      s.top_p = p.top_p;
      s.seed = p.seeds[r];
      s.out = p.out + r;
      try {
        ops::sample(s, Impl::kAuto);
      } catch (const Error& e) {
        if (e.code() != Code::kRange) throw;
        p.out[r] = -1;
        if (p.bad[0] == 0) p.bad[0] = static_cast<int32_t>(r + 1);
      }
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace dsv2::model
