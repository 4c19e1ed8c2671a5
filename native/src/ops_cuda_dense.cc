// The CUDA path of the dense and MoE ops for host inputs (see ops_cuda.cc): route, experts,
// gemm, embedding, norms, RoPE, SwiGLU, softmax and sampling, plus their benchmarks.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/device.h"
#include "cpu/cpu_ops.h"
#include "dsv2/status.h"
#include "ops_cuda.h"
#ifdef DSV2_WITH_CUDA
#include "cuda/cuda_ops.h"
#include "cuda/model_ops.h"
#include "ops_cuda_scope.h"
#endif

namespace dsv2::ops {

#ifdef DSV2_WITH_CUDA
namespace {
MoeRouteParams upload_route(Scope& sc, const MoeRouteParams& hp) {
  MoeRouteParams p = hp;
  p.logits = sc.upload(hp.logits, hp.t * hp.e);
  p.bias = hp.bias ? sc.upload(hp.bias, hp.e) : nullptr;
  p.ids = sc.alloc<int32_t>(std::max<int64_t>(1, hp.t * hp.top_k));
  p.weights = sc.alloc<float>(std::max<int64_t>(1, hp.t * hp.top_k));
  p.tokens_per_expert = sc.alloc<int32_t>(hp.e);
  p.tokens_per_group = sc.alloc<int32_t>(hp.n_group);
  return p;
}
}  // namespace
#endif

void moe_route_cuda(const MoeRouteParams& hp) {
#ifdef DSV2_WITH_CUDA
  Scope sc;
  MoeRouteParams p = upload_route(sc, hp);
  cuda::moe_route(p, sc.stream());
  cuda::copy_d2h(hp.ids, p.ids, hp.t * hp.top_k * sizeof(int32_t), sc.stream());
  cuda::copy_d2h(hp.weights, p.weights, hp.t * hp.top_k * sizeof(float), sc.stream());
  cuda::copy_d2h(hp.tokens_per_expert, p.tokens_per_expert, hp.e * sizeof(int32_t), sc.stream());
  cuda::copy_d2h(hp.tokens_per_group, p.tokens_per_group, hp.n_group * sizeof(int32_t), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("moe_route");
#endif
}

double moe_route_cuda_bench(const MoeRouteParams& hp, int iters, bool unfused) {
#ifdef DSV2_WITH_CUDA
  DSV2_CHECK(iters >= 1 && iters <= 100000, kRange, "iters = " << iters << " must be in [1, 100000]");
  Scope sc;
  MoeRouteParams p = upload_route(sc, hp);
  if (unfused) {
    void* scratch = sc.alloc<uint8_t>(cuda::moe_route_unfused_scratch_bytes(p));
    cuda::moe_route_unfused(p, scratch, sc.stream());
    return 1e3 * cuda::time_ms(sc.stream(), iters, [&] { cuda::moe_route_unfused(p, scratch, sc.stream()); });
  }
  cuda::moe_route(p, sc.stream());
  return 1e3 * cuda::time_ms(sc.stream(), iters, [&] { cuda::moe_route(p, sc.stream()); });
#else
  (void)hp, (void)iters, (void)unfused;
  require_cuda_usable("moe_route benchmark");
  return 0;
#endif
}

#ifdef DSV2_WITH_CUDA
namespace {
GemmParams upload_gemm(Scope& sc, const GemmParams& hp) {
  GemmParams p = hp;
  p.x = sc.upload(hp.x, hp.m * hp.k);
  p.w = sc.upload(static_cast<const uint8_t*>(hp.w), hp.n * hp.k * dtype_size(hp.w_dtype));
  if (hp.w_scale) {  // 8-bit codes: [ceil(n / 128), ceil(k / 128)] block scales
    const int64_t blocks = ((hp.n + kWeightBlock - 1) / kWeightBlock) * ((hp.k + kWeightBlock - 1) / kWeightBlock);
    p.w_scale = sc.upload(hp.w_scale, blocks);
  }
  p.y = sc.alloc<float>(std::max<int64_t>(1, hp.m * hp.n));
  cuda::memset(p.y, 0, hp.m * hp.n * sizeof(float), sc.stream());
  return p;
}
}  // namespace
#endif

void gemm_cuda(const GemmParams& hp) {
#ifdef DSV2_WITH_CUDA
  if (hp.m == 0 || hp.n == 0) return;
  Scope sc;
  GemmParams p = upload_gemm(sc, hp);
  cuda::gemm(p, sc.stream());
  cuda::copy_d2h(hp.y, p.y, hp.m * hp.n * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("gemm");
#endif
}

GemmBench gemm_cuda_bench(const GemmParams& hp, int iters) {
#ifdef DSV2_WITH_CUDA
  DSV2_CHECK(iters >= 1 && iters <= 10000, kRange, "iters = " << iters << " must be in [1, 10000]");
  Scope sc;
  GemmParams p = upload_gemm(sc, hp);
  // Cold-cache timing: consecutive calls cycle through copies of W totalling ≥ 256 MiB (5× an
  // H100's 50 MB L2), so every call streams its weights from DRAM as a model's layers do.
  const size_t wbytes = static_cast<size_t>(hp.n * hp.k) * dtype_size(hp.w_dtype);
  const size_t copies = wbytes == 0 ? 1 : std::min<size_t>(32, std::max<size_t>(1, ((256u << 20) + wbytes - 1) / wbytes));
  std::vector<GemmParams> ps(copies, p);
  for (size_t i = 1; i < copies; ++i) {
    uint8_t* w = sc.alloc<uint8_t>(wbytes);
    cuda::copy_d2d(w, p.w, wbytes, sc.stream());
    ps[i].w = w;
  }
  GemmBench r;
  r.ms = cuda::gemm_bench_ms(ps.data(), static_cast<int>(ps.size()), iters, sc.stream());
  r.kernel = cuda::gemm_kernel_name(p);
  return r;
#else
  (void)hp, (void)iters;
  require_cuda_usable("gemm benchmark");
  return {};
#endif
}

void embedding_cuda(const EmbeddingParams& hp) {
#ifdef DSV2_WITH_CUDA
  const size_t isz = hp.ids_dtype == DType::kI64 ? 8 : 4;
  for (int64_t t = 0; t < hp.n_tokens; ++t) {  // the CPU op's check, before the kernel indexes with it
    const int64_t id = hp.ids_dtype == DType::kI64 ? static_cast<const int64_t*>(hp.ids)[t] : static_cast<const int32_t*>(hp.ids)[t];
    DSV2_CHECK(id >= 0 && id < hp.vocab, kRange, "ids[" << t << "] = " << id << " is outside the vocabulary [0, " << hp.vocab << ")");
  }
  if (hp.n_tokens == 0) return;
  Scope sc;
  EmbeddingParams p = hp;
  p.ids = sc.upload(static_cast<const uint8_t*>(hp.ids), hp.n_tokens * isz);
  p.table = sc.upload(static_cast<const uint8_t*>(hp.table), hp.vocab * hp.hidden * dtype_size(hp.table_dtype));
  p.out = sc.alloc<float>(hp.n_tokens * hp.hidden);
  cuda::embedding(p, sc.stream());
  cuda::copy_d2h(hp.out, p.out, hp.n_tokens * hp.hidden * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("embedding");
#endif
}

void rms_norm_cuda(const RmsNormParams& hp) {
#ifdef DSV2_WITH_CUDA
  if (hp.rows == 0) return;
  Scope sc;
  RmsNormParams p = hp;
  p.x = sc.upload(hp.x, hp.rows * hp.dim);
  p.w = sc.upload(static_cast<const uint8_t*>(hp.w), hp.dim * dtype_size(hp.w_dtype));
  p.y = sc.alloc<float>(hp.rows * hp.dim);
  cuda::rms_norm(p, sc.stream());
  cuda::copy_d2h(hp.y, p.y, hp.rows * hp.dim * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("rms_norm");
#endif
}

void rope_cuda(const RopeParams& hp) {
#ifdef DSV2_WITH_CUDA
  const size_t isz = hp.positions_dtype == DType::kI64 ? 8 : 4;
  for (int64_t t = 0; t < hp.n_tokens; ++t) {
    const int64_t pos = hp.positions_dtype == DType::kI64 ? static_cast<const int64_t*>(hp.positions)[t]
                                                          : static_cast<const int32_t*>(hp.positions)[t];
    DSV2_CHECK(pos >= 0 && pos < hp.max_pos, kRange, "positions[" << t << "] = " << pos << " is outside the rope table [0, " << hp.max_pos << ")");
  }
  if (hp.n_tokens == 0) return;
  Scope sc;
  RopeParams p = hp;
  const int64_t n = hp.n_tokens * hp.n_heads * hp.dim;
  p.x = sc.upload(hp.x, n);
  p.positions = sc.upload(static_cast<const uint8_t*>(hp.positions), hp.n_tokens * isz);
  p.cos = sc.upload(hp.cos, hp.max_pos * (hp.dim / 2));
  p.sin = sc.upload(hp.sin, hp.max_pos * (hp.dim / 2));
  p.out = sc.alloc<float>(n);
  cuda::rope(p, sc.stream());
  cuda::copy_d2h(hp.out, p.out, n * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("rope");
#endif
}

void silu_mul_cuda(const SiluMulParams& hp) {
#ifdef DSV2_WITH_CUDA
  if (hp.rows * hp.inter == 0) return;
  Scope sc;
  SiluMulParams p = hp;
  if (hp.up == hp.gate + hp.inter && hp.gate_stride == 2 * hp.inter) {  // one fused [rows, 2·inter] input
    p.gate = sc.upload(hp.gate, hp.rows * 2 * hp.inter);
    p.up = p.gate + hp.inter;
  } else {
    p.gate = sc.upload(hp.gate, hp.rows * hp.gate_stride);
    p.up = sc.upload(hp.up, hp.rows * hp.up_stride);
  }
  p.out = sc.alloc<float>(hp.rows * hp.inter);
  cuda::silu_mul(p, sc.stream());
  cuda::copy_d2h(hp.out, p.out, hp.rows * hp.inter * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("silu_mul");
#endif
}

void softmax_cuda(const SoftmaxParams& hp) {
#ifdef DSV2_WITH_CUDA
  if (hp.rows * hp.n == 0) return;
  Scope sc;
  SoftmaxParams p = hp;
  p.x = sc.upload(hp.x, hp.rows * hp.n);
  p.y = sc.alloc<float>(hp.rows * hp.n);
  cuda::softmax(p, sc.stream());
  cuda::copy_d2h(hp.y, p.y, hp.rows * hp.n * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("softmax");
#endif
}

void sample_cuda(const SampleParams& hp) {
#ifdef DSV2_WITH_CUDA
  if (hp.rows == 0) return;
  Scope sc;
  // Row r of a SampleParams call draws with seed + (r + 1)·golden; the kernel draws row r with
  // seeds[r] + golden (a one-row call's formula): seeds[r] = seed + r·golden is the same draw.
  std::vector<uint64_t> seeds(hp.rows);
  for (int64_t r = 0; r < hp.rows; ++r) seeds[r] = hp.seed + static_cast<uint64_t>(r) * 0x9E3779B97F4A7C15ull;
  SampleBatchParams p;
  p.rows = hp.rows;
  p.vocab = hp.vocab;
  p.logits = sc.upload(hp.logits, hp.rows * hp.vocab);
  p.temperature = hp.temperature;
  p.top_k = hp.top_k;
  p.top_p = hp.top_p;
  p.seeds = sc.upload(seeds.data(), seeds.size());
  p.out = sc.alloc<int32_t>(hp.rows);
  p.bad = sc.alloc<int32_t>(1);
  cuda::sample(p, sc.stream());
  int32_t bad = 0;
  cuda::copy_d2h(hp.out, p.out, hp.rows * sizeof(int32_t), sc.stream());
  cuda::copy_d2h(&bad, p.bad, sizeof(int32_t), sc.stream());
  sc.finish();
  DSV2_CHECK(bad == 0, kRange, "logits row " << bad - 1 << " holds a NaN or +inf, or only -inf: nothing can be sampled");
#else
  (void)hp;
  require_cuda_usable("sample");
#endif
}

void moe_experts_cuda(const MoeExpertsParams& hp) {
#ifdef DSV2_WITH_CUDA
  for (int64_t i = 0; i < hp.t * hp.top_k; ++i)  // the CPU op's check, before anything runs
    DSV2_CHECK(hp.ids[i] >= -1 && hp.ids[i] < hp.n_experts, kRange,
               "ids[" << i / hp.top_k << ", " << i % hp.top_k << "] = " << hp.ids[i] << " is outside [0, " << hp.n_experts
                      << ") (-1 marks an empty slot)");
  if (hp.t == 0) return;
  Scope sc;
  const int64_t pairs = hp.t * hp.top_k;
  const size_t wsz = dtype_size(hp.w_dtype);
  MoeExpertsParams p = hp;
  p.x = sc.upload(hp.x, hp.t * hp.hidden);
  p.ids = sc.upload(hp.ids, pairs);
  p.weights = sc.upload(hp.weights, pairs);
  p.gate_up = sc.upload(static_cast<const uint8_t*>(hp.gate_up), hp.n_experts * 2 * hp.inter * hp.hidden * wsz);
  p.down = sc.upload(static_cast<const uint8_t*>(hp.down), hp.n_experts * hp.hidden * hp.inter * wsz);
  if (hp.w_dtype == DType::kFP8E4M3 || hp.w_dtype == DType::kI8) {  // block scales (checked by check_moe_experts)
    auto blocks = [](int64_t n) { return (n + kMoeFp8Block - 1) / kMoeFp8Block; };
    p.gate_up_scale = sc.upload(hp.gate_up_scale, hp.n_experts * blocks(2 * hp.inter) * blocks(hp.hidden));
    p.down_scale = sc.upload(hp.down_scale, hp.n_experts * blocks(hp.hidden) * blocks(hp.inter));
  }
  if (hp.shared_gate_up) {
    const size_t ssz = dtype_size(hp.shared_dtype);
    p.shared_gate_up = sc.upload(static_cast<const uint8_t*>(hp.shared_gate_up), 2 * hp.inter_shared * hp.hidden * ssz);
    p.shared_down = sc.upload(static_cast<const uint8_t*>(hp.shared_down), hp.hidden * hp.inter_shared * ssz);
  }
  p.y = sc.alloc<float>(hp.t * hp.hidden);
  const cuda::MoeScratch s = cuda::moe_scratch_carve(sc.alloc<uint8_t>(cuda::moe_scratch_bytes(hp)), hp);
  cuda::moe_experts(p, s, sc.stream());
  cuda::copy_d2h(hp.y, p.y, hp.t * hp.hidden * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("moe_experts");
#endif
}

const char* moe_route_cuda_kernel_name(const MoeRouteParams& p) {
#ifdef DSV2_WITH_CUDA
  return cuda::moe_route_kernel_name(p);
#else
  (void)p;
  return "";
#endif
}

MoeExpertsBench moe_experts_cuda_bench(const MoeExpertsBenchShape& b, int iters) {
#ifdef DSV2_WITH_CUDA
  DSV2_CHECK(iters >= 1 && iters <= 10000, kRange, "iters = " << iters << " must be in [1, 10000]");
  DSV2_CHECK(b.t >= 1 && b.t <= 65536 && b.hidden >= 1 && b.inter >= 1 && b.n_experts >= 1 && b.top_k >= 1 &&
                 b.top_k <= b.n_experts && b.inter_shared >= 0,
             kRange, "moe_experts benchmark shape t " << b.t << ", hidden " << b.hidden << ", inter " << b.inter << ", experts "
                                                      << b.n_experts << ", top_k " << b.top_k << ", inter_shared "
                                                      << b.inter_shared << " is not a valid MoE layer");
  constexpr int kSets = 8;  // routings cycled between calls, so the weights are not L2-resident from the last call
  const int64_t pairs = b.t * b.top_k;
  // Seeded random routing: top_k distinct experts per token (splitmix64), weights in (0, 1].
  std::vector<int32_t> ids(kSets * pairs);
  std::vector<float> wts(kSets * pairs);
  uint64_t st = b.seed;
  auto next = [&st] {
    uint64_t z = (st += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  double hit = 0;
  for (int r = 0; r < kSets; ++r) {
    std::vector<char> used(b.n_experts, 0);
    for (int64_t t = 0; t < b.t; ++t) {
      for (int64_t k = 0; k < b.top_k; ++k) {
        int32_t e;
        bool again;
        do {
          e = static_cast<int32_t>(next() % static_cast<uint64_t>(b.n_experts));
          again = false;
          for (int64_t j = 0; j < k; ++j) again = again || ids[r * pairs + t * b.top_k + j] == e;
        } while (again);
        ids[r * pairs + t * b.top_k + k] = e;
        wts[r * pairs + t * b.top_k + k] = static_cast<float>((next() >> 11) * 0x1.0p-53) * 0.5f + 0.5f;
        used[e] = 1;
      }
    }
    for (char u : used) hit += u;
  }
  Scope sc;
  MoeExpertsParams p;
  p.t = b.t;
  p.hidden = b.hidden;
  p.top_k = b.top_k;
  p.n_experts = b.n_experts;
  p.inter = b.inter;
  p.inter_shared = b.inter_shared;
  p.w_dtype = p.shared_dtype = DType::kBF16;
  const int64_t n_gu = b.n_experts * 2 * b.inter * b.hidden, n_dn = b.n_experts * b.hidden * b.inter;
  float* x = sc.alloc<float>(b.t * b.hidden);
  void* gu = sc.alloc<uint16_t>(n_gu);
  void* dn = sc.alloc<uint16_t>(n_dn);
  cuda::moe_bench_fill(x, DType::kF32, b.t * b.hidden, b.seed + 1, 1.0f, sc.stream());
  cuda::moe_bench_fill(gu, DType::kBF16, n_gu, b.seed + 2, 1.0f / std::sqrt(static_cast<float>(b.hidden)), sc.stream());
  cuda::moe_bench_fill(dn, DType::kBF16, n_dn, b.seed + 3, 1.0f / std::sqrt(static_cast<float>(b.inter)), sc.stream());
  p.x = x;
  p.gate_up = gu;
  p.down = dn;
  if (b.fp8 || b.i8) {
    // Routed experts as e4m3 / int8 codes (random values of the same spread, scale amax / 448
    // or / 127 per block) in their own buffers; the bf16 ones above still serve the dense
    // reference gemm.
    auto blocks = [](int64_t n) { return (n + kMoeFp8Block - 1) / kMoeFp8Block; };
    const DType code = b.i8 ? DType::kI8 : DType::kFP8E4M3;
    const float kFp8Max = b.i8 ? 127.0f : 448.0f;  // the largest code value
    const int64_t n_gus = b.n_experts * blocks(2 * b.inter) * blocks(b.hidden);
    const int64_t n_dns = b.n_experts * blocks(b.hidden) * blocks(b.inter);
    void* gu8 = sc.alloc<uint8_t>(n_gu);
    void* dn8 = sc.alloc<uint8_t>(n_dn);
    cuda::moe_bench_fill(gu8, code, n_gu, b.seed + 6, kFp8Max, sc.stream());
    cuda::moe_bench_fill(dn8, code, n_dn, b.seed + 7, kFp8Max, sc.stream());
    const std::vector<float> gus(n_gus, 1.0f / (kFp8Max * std::sqrt(static_cast<float>(b.hidden))));
    const std::vector<float> dns(n_dns, 1.0f / (kFp8Max * std::sqrt(static_cast<float>(b.inter))));
    p.w_dtype = code;
    p.gate_up = gu8;
    p.down = dn8;
    p.gate_up_scale = sc.upload(gus.data(), gus.size());
    p.down_scale = sc.upload(dns.data(), dns.size());
  }
  if (b.inter_shared > 0) {
    const int64_t n_sgu = 2 * b.inter_shared * b.hidden, n_sdn = b.hidden * b.inter_shared;
    void* sgu = sc.alloc<uint16_t>(n_sgu);
    void* sdn = sc.alloc<uint16_t>(n_sdn);
    cuda::moe_bench_fill(sgu, DType::kBF16, n_sgu, b.seed + 4, 1.0f / std::sqrt(static_cast<float>(b.hidden)), sc.stream());
    cuda::moe_bench_fill(sdn, DType::kBF16, n_sdn, b.seed + 5, 1.0f / std::sqrt(static_cast<float>(b.inter_shared)), sc.stream());
    p.shared_gate_up = sgu;
    p.shared_down = sdn;
  }
  int32_t* d_ids = sc.upload(ids.data(), ids.size());
  float* d_wts = sc.upload(wts.data(), wts.size());
  p.y = sc.alloc<float>(b.t * b.hidden);
  const cuda::MoeScratch s = cuda::moe_scratch_carve(sc.alloc<uint8_t>(cuda::moe_scratch_bytes(p)), p);
  int call = 0;
  auto enqueue = [&] {
    const int r = call++ % kSets;
    p.ids = d_ids + r * pairs;
    p.weights = d_wts + r * pairs;
    cuda::moe_experts(p, s, sc.stream());
  };
  for (int i = 0; i < kSets; ++i) enqueue();  // warm-up
  MoeExpertsBench r;
  r.ms = cuda::time_ms(sc.stream(), iters, enqueue);
  r.kernel = cuda::moe_experts_kernel_name(p, &s);
  r.experts_hit = hit / kSets;
  const double wsz = b.fp8 || b.i8 ? 1.0 : 2.0;  // routed: 8-bit (scales: 4 bytes per 16384 codes, not counted) or bf16
  r.weight_bytes = r.experts_hit * 3.0 * b.hidden * b.inter * wsz + 3.0 * b.hidden * b.inter_shared * 2.0;
  r.flops = 6.0 * pairs * b.hidden * b.inter + 6.0 * b.t * b.hidden * b.inter_shared;
  // The dense reference: one cuda::gemm of the shared gate+up's shape (m = t, n = 2·inter_shared
  // or 2·inter, k = hidden), bf16 weights, in the same run.
  GemmParams g;
  g.m = b.t;
  g.n = 2 * (b.inter_shared > 0 ? b.inter_shared : b.inter);
  g.k = b.hidden;
  g.x = x;
  g.w = gu;  // the first rows of the expert weights serve as a [n, k] matrix (n·k ≤ n_gu elements)
  g.w_dtype = DType::kBF16;
  if (g.n * g.k > n_gu) g.n = 2 * b.inter;
  g.y = sc.alloc<float>(g.m * g.n);
  cuda::gemm(g, sc.stream());
  r.gemm_ms = cuda::time_ms(sc.stream(), std::max(1, iters / 2), [&] { cuda::gemm(g, sc.stream()); });
  r.gemm_kernel = cuda::gemm_kernel_name(g);
  r.gemm_flops = 2.0 * g.m * g.n * g.k;
  return r;
#else
  (void)b, (void)iters;
  require_cuda_usable("moe_experts benchmark");
  return {};
#endif
}

double copy_bandwidth_cuda(size_t bytes, int iters) {
#ifdef DSV2_WITH_CUDA
  DSV2_CHECK(iters >= 1 && iters <= 10000, kRange, "iters = " << iters << " must be in [1, 10000]");
  Scope sc;
  uint8_t* a = sc.alloc<uint8_t>(bytes);
  uint8_t* b = sc.alloc<uint8_t>(bytes);
  cuda::memset(a, 1, bytes, sc.stream());
  const double ms = cuda::time_ms(sc.stream(), iters, [&] { cuda::copy_d2d(b, a, bytes, sc.stream()); });
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3);  // read + write, bytes/s
#else
  (void)bytes, (void)iters;
  require_cuda_usable("copy bandwidth");
  return 0;
#endif
}

}  // namespace dsv2::ops
