// The CUDA path of the ops that take a device-resident KV cache, for host inputs: validate on
// the host, copy inputs to the device, run the kernel on a stream, copy the outputs back.
// (The model runtime's device path keeps activations on the device; this is the op-level
// entry the tests compare with the CPU ops.) Without CUDA in the build every entry throws
// E_UNSUPPORTED.
#include "ops_cuda.h"

#include <algorithm>
#include <vector>

#include "core/device.h"
#include "cpu/cpu_ops.h"
#include "dsv2/status.h"
#ifdef DSV2_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace dsv2::ops {

void require_cuda_usable(const char* what) {
#ifdef DSV2_WITH_CUDA
  const CudaInfo& info = cuda_info();
  DSV2_CHECK(info.unavailable.empty(), kUnsupported, what << " needs CUDA, which is not usable here: " << info.unavailable);
#else
  DSV2_FAIL(kUnsupported, what << " needs CUDA, but this addon was built without it (npm run build:native with nvcc on PATH)");
#endif
}

#ifdef DSV2_WITH_CUDA
namespace {

// Device scratch and a stream for one call, released on every path.
class Scope {
 public:
  // Every op-level CUDA entry starts here: say why when CUDA cannot run (no driver, no
  // device) instead of surfacing the first failing runtime call.
  Scope() : stream_((require_cuda_usable("this CUDA op"), cuda::stream_create())) {}
  ~Scope() {
    // Never throw from here (it would terminate the process): wait for queued work so the
    // buffers are not freed under a running kernel, ignoring errors — finish() or the failing
    // call has already reported them.
    cuda::stream_wait_quiet(stream_);
    for (void* p : bufs_) cuda::free(p);
    cuda::stream_destroy(stream_);
  }
  void* stream() const { return stream_; }
  template <class T>
  T* alloc(size_t n) {
    bufs_.push_back(cuda::alloc(n * sizeof(T)));
    return static_cast<T*>(bufs_.back());
  }
  template <class T>
  T* upload(const T* host, size_t n) {
    T* d = alloc<T>(n);
    cuda::copy_h2d(d, host, n * sizeof(T), stream_);
    return d;
  }
  void finish() { cuda::stream_sync(stream_); }

 private:
  void* stream_ = nullptr;
  std::vector<void*> bufs_;
};

size_t index_bytes(DType t) { return t == DType::kI64 ? 8 : 4; }

void check_slots(const KvCacheView& c, const void* slots, DType t, int64_t n) {
  const int64_t cap = c.pages * c.layout.page_size;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = t == DType::kI64 ? static_cast<const int64_t*>(slots)[i] : static_cast<const int32_t*>(slots)[i];
    DSV2_CHECK(s >= 0 && s < cap, kRange, "slots[" << i << "] = " << s << " is outside the cache [0, " << cap << ")");
  }
}

}  // namespace
#endif

void* device_alloc_zeroed(size_t bytes) {
  require_cuda_usable("a cuda KV cache");
#ifdef DSV2_WITH_CUDA
  void* p = cuda::alloc(bytes);
  // The ops run on their own non-blocking streams, which do not order with the legacy default
  // stream: finish the zero fill before anyone can use the memory.
  try {
    cuda::memset(p, 0, bytes, nullptr);
    cuda::stream_sync(nullptr);
  } catch (...) {
    cuda::free(p);
    throw;
  }
  return p;
#else
  (void)bytes;
  return nullptr;
#endif
}

void device_free(void* p) noexcept {
#ifdef DSV2_WITH_CUDA
  cuda::free(p);
#else
  (void)p;
#endif
}

void kv_append_cuda(const KvAppendParams& hp) {
#ifdef DSV2_WITH_CUDA
  const KvLayout& L = hp.cache.layout;
  cpu::check_append_slots(hp.cache, hp.slots, hp.slots_dtype, hp.n_tokens);  // before any write, as the CPU op
  if (hp.n_tokens == 0) return;
  Scope sc;
  KvAppendParams p = hp;
  p.c_kv = sc.upload(hp.c_kv, hp.n_tokens * L.d_c);
  p.k_pe = sc.upload(hp.k_pe, hp.n_tokens * L.d_r);
  p.slots = sc.upload(static_cast<const uint8_t*>(hp.slots), hp.n_tokens * index_bytes(hp.slots_dtype));
  cuda::kv_append(p, sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("kv_append");
#endif
}

void kv_read_cuda(const KvReadParams& hp) {
#ifdef DSV2_WITH_CUDA
  const KvLayout& L = hp.cache.layout;
  check_slots(hp.cache, hp.slots, hp.slots_dtype, hp.n_tokens);
  if (hp.n_tokens == 0) return;
  Scope sc;
  KvReadParams p = hp;
  p.slots = sc.upload(static_cast<const uint8_t*>(hp.slots), hp.n_tokens * index_bytes(hp.slots_dtype));
  p.c_kv = sc.alloc<float>(hp.n_tokens * L.d_c);
  p.k_pe = sc.alloc<float>(hp.n_tokens * L.d_r);
  cuda::kv_read(p, sc.stream());
  cuda::copy_d2h(hp.c_kv, p.c_kv, hp.n_tokens * L.d_c * sizeof(float), sc.stream());
  cuda::copy_d2h(hp.k_pe, p.k_pe, hp.n_tokens * L.d_r * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("kv_read");
#endif
}

void kv_poison_cuda(const KvCacheView& c) {
#ifdef DSV2_WITH_CUDA
  Scope sc;
  cuda::kv_poison(c, sc.stream());
  sc.finish();
#else
  (void)c;
  require_cuda_usable("kv_poison");
#endif
}

void kv_read_raw_cuda(const KvCacheView& c, int64_t page, uint8_t* dst) {
#ifdef DSV2_WITH_CUDA
  Scope sc;
  cuda::copy_d2h(dst, c.data + page * c.layout.page_bytes(), c.layout.page_bytes(), sc.stream());
  sc.finish();
#else
  (void)c, (void)page, (void)dst;
  require_cuda_usable("readRawPage");
#endif
}

#ifdef DSV2_WITH_CUDA
namespace {

// Checks the tables the kernel indexes with (the CPU op makes the same checks) and builds
// the split plan on the host; returns the longest sequence.
struct HostPlan {
  std::vector<int32_t> item_seq, item_t0, item_t1, begin;
};

HostPlan plan_decode(const MlaDecodeParams& hp) {
  const int64_t page = hp.cache.layout.page_size;
  int64_t max_sk = 0;
  for (int64_t i = 0; i < hp.b; ++i) {
    const int64_t s_k = hp.seqlens[i];
    DSV2_CHECK(s_k >= 0 && s_k <= hp.max_blocks * page, kRange,
               "seqlens[" << i << "] = " << s_k << " must be in [0, " << hp.max_blocks * page << "]");
    for (int64_t blk = 0; blk < (s_k + page - 1) / page; ++blk) {
      const int64_t pg = hp.block_table[i * hp.max_blocks + blk];
      DSV2_CHECK(pg >= 0 && pg < hp.cache.pages, kRange,
                 "block_table[" << i << ", " << blk << "] = " << pg << " is outside the cache's pages [0, " << hp.cache.pages << ")");
    }
    max_sk = std::max(max_sk, s_k);
  }
  // Enough items to fill the device (≈ 2 per SM), splits of at least 64 keys.
  const CudaInfo& info = cuda_info();
  const int64_t sms = info.devices.empty() ? 108 : std::max(1, info.devices[0].multiprocessors);
  int64_t split = hp.split_tokens;
  if (split <= 0) {
    const int64_t want = std::max<int64_t>(1, (2 * sms + hp.b - 1) / std::max<int64_t>(1, hp.b));
    split = std::max<int64_t>(64, (max_sk + want - 1) / want);
  }
  HostPlan h;
  h.begin.assign(hp.b + 1, 0);
  for (int64_t i = 0; i < hp.b; ++i) {
    h.begin[i] = static_cast<int32_t>(h.item_seq.size());
    for (int64_t t0 = 0; t0 < hp.seqlens[i]; t0 += split) {
      h.item_seq.push_back(static_cast<int32_t>(i));
      h.item_t0.push_back(static_cast<int32_t>(t0));
      h.item_t1.push_back(static_cast<int32_t>(std::min<int64_t>(hp.seqlens[i], t0 + split)));
    }
  }
  h.begin[hp.b] = static_cast<int32_t>(h.item_seq.size());
  return h;
}

// Uploads the inputs and plan; returns device params (outputs allocated on the device).
MlaDecodeParams upload_decode(Scope& sc, const MlaDecodeParams& hp, const HostPlan& h, cuda::DecodePlan* plan) {
  const int64_t rows = hp.s_q * hp.h_q, d = hp.d_c + hp.d_r;
  plan->n_items = static_cast<int64_t>(h.item_seq.size());
  plan->item_seq = sc.upload(h.item_seq.data(), h.item_seq.size());
  plan->item_t0 = sc.upload(h.item_t0.data(), h.item_t0.size());
  plan->item_t1 = sc.upload(h.item_t1.data(), h.item_t1.size());
  plan->seq_item_begin = sc.upload(h.begin.data(), h.begin.size());
  plan->part_out = sc.alloc<float>(std::max<int64_t>(1, plan->n_items * rows * hp.d_c));
  plan->part_lse = sc.alloc<float>(std::max<int64_t>(1, plan->n_items * rows));
  MlaDecodeParams p = hp;
  p.q = sc.upload(hp.q, hp.b * rows * d);
  p.block_table = sc.upload(hp.block_table, hp.b * hp.max_blocks);
  p.seqlens = sc.upload(hp.seqlens, hp.b);
  p.out = sc.alloc<float>(std::max<int64_t>(1, hp.b * rows * hp.d_c));
  p.lse = sc.alloc<float>(std::max<int64_t>(1, hp.b * rows));
  return p;
}

}  // namespace
#endif

void mla_decode_cuda(const MlaDecodeParams& hp) {
#ifdef DSV2_WITH_CUDA
  const HostPlan h = plan_decode(hp);
  const int64_t rows = hp.s_q * hp.h_q;
  Scope sc;
  cuda::DecodePlan plan;
  MlaDecodeParams p = upload_decode(sc, hp, h, &plan);
  cuda::mla_decode(p, plan, sc.stream());
  cuda::copy_d2h(hp.out, p.out, hp.b * rows * hp.d_c * sizeof(float), sc.stream());
  cuda::copy_d2h(hp.lse, p.lse, hp.b * rows * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("mla_decode");
#endif
}

void mla_prefill_cuda(const MlaPrefillParams& hp) {
#ifdef DSV2_WITH_CUDA
  // The checks the CPU op makes, on the host, before anything runs.
  DSV2_CHECK(hp.cu_seqlens_q[0] == 0, kRange, "cuSeqlensQ[0] = " << hp.cu_seqlens_q[0] << " must be 0");
  DSV2_CHECK(hp.cu_seqlens_q[hp.b] == hp.n_tokens, kRange,
             "cuSeqlensQ[" << hp.b << "] = " << hp.cu_seqlens_q[hp.b] << " must equal the number of query rows " << hp.n_tokens);
  const int64_t page = hp.cache.layout.page_size;
  int64_t max_sk = 0;
  for (int64_t i = 0; i < hp.b; ++i) {
    const int64_t n_q = static_cast<int64_t>(hp.cu_seqlens_q[i + 1]) - hp.cu_seqlens_q[i], s_k = hp.seqlens[i];
    DSV2_CHECK(n_q >= 0, kRange, "cuSeqlensQ must be non-decreasing at " << i + 1);
    DSV2_CHECK(s_k >= n_q && s_k <= hp.max_blocks * page, kRange,
               "seqlens[" << i << "] = " << s_k << " must be in [" << n_q << ", " << hp.max_blocks * page << "]");
    for (int64_t blk = 0; blk < (s_k + page - 1) / page; ++blk) {
      const int64_t pg = hp.block_table[i * hp.max_blocks + blk];
      DSV2_CHECK(pg >= 0 && pg < hp.cache.pages, kRange,
                 "block_table[" << i << ", " << blk << "] = " << pg << " is outside the cache's pages [0, " << hp.cache.pages << ")");
    }
    max_sk = std::max(max_sk, s_k);
  }
  if (hp.n_tokens == 0) return;
  const int64_t dqk = hp.d_nope + hp.d_r, row = hp.d_nope + hp.d_v;
  Scope sc;
  const float* q = sc.upload(hp.q, hp.n_tokens * hp.h * dqk);
  const void* kv_b = sc.upload(static_cast<const uint8_t*>(hp.kv_b), hp.h * row * hp.d_c * dtype_size(hp.kv_b_dtype));
  const int32_t* bt = sc.upload(hp.block_table, hp.b * hp.max_blocks);
  float* out = sc.alloc<float>(hp.n_tokens * hp.h * hp.d_v);
  cuda::PrefillScratch scratch;
  scratch.c = sc.alloc<float>(std::max<int64_t>(1, max_sk * hp.d_c));
  scratch.pe = sc.alloc<float>(std::max<int64_t>(1, max_sk * hp.d_r));
  scratch.kvx = sc.alloc<float>(std::max<int64_t>(1, max_sk * hp.h * row));
  for (int64_t i = 0; i < hp.b; ++i) {
    cuda::PrefillSeq s;
    s.q0 = hp.cu_seqlens_q[i];
    s.n_q = hp.cu_seqlens_q[i + 1] - s.q0;
    s.s_k = hp.seqlens[i];
    s.h = hp.h;
    s.d_nope = hp.d_nope;
    s.d_r = hp.d_r;
    s.d_v = hp.d_v;
    s.scale = hp.scale;
    // kernels of one stream run in order, so the scratch is reused safely across sequences
    cuda::mla_prefill_seq(hp.cache, bt + i * hp.max_blocks, s, q, kv_b, hp.kv_b_dtype, scratch, out, sc.stream());
  }
  cuda::copy_d2h(hp.out, out, hp.n_tokens * hp.h * hp.d_v * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("mla_prefill");
#endif
}

DecodeBench mla_decode_cuda_bench(const MlaDecodeParams& hp, int iters) {
#ifdef DSV2_WITH_CUDA
  DSV2_CHECK(iters >= 1 && iters <= 10000, kRange, "iters = " << iters << " must be in [1, 10000]");
  const HostPlan h = plan_decode(hp);
  Scope sc;
  cuda::DecodePlan plan;
  MlaDecodeParams p = upload_decode(sc, hp, h, &plan);
  cuda::mla_decode(p, plan, sc.stream());  // warm-up
  DecodeBench r;
  r.ms = cuda::time_ms(sc.stream(), iters, [&] { cuda::mla_decode(p, plan, sc.stream()); });
  r.n_items = plan.n_items;
  r.kernel = cuda::mla_decode_kernel_name(p);
  return r;
#else
  (void)hp, (void)iters;
  require_cuda_usable("mla_decode benchmark");
  return {};
#endif
}

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

double moe_route_cuda_bench(const MoeRouteParams& hp, int iters) {
#ifdef DSV2_WITH_CUDA
  DSV2_CHECK(iters >= 1 && iters <= 100000, kRange, "iters = " << iters << " must be in [1, 100000]");
  Scope sc;
  MoeRouteParams p = upload_route(sc, hp);
  cuda::moe_route(p, sc.stream());
  return 1e3 * cuda::time_ms(sc.stream(), iters, [&] { cuda::moe_route(p, sc.stream()); });
#else
  (void)hp, (void)iters;
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
  cuda::gemm(p, sc.stream());
  GemmBench r;
  r.ms = cuda::time_ms(sc.stream(), iters, [&] { cuda::gemm(p, sc.stream()); });
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
  cuda::MoeScratch s;
  if (hp.shared_gate_up) {
    const size_t ssz = dtype_size(hp.shared_dtype);
    p.shared_gate_up = sc.upload(static_cast<const uint8_t*>(hp.shared_gate_up), 2 * hp.inter_shared * hp.hidden * ssz);
    p.shared_down = sc.upload(static_cast<const uint8_t*>(hp.shared_down), hp.hidden * hp.inter_shared * ssz);
    s.shared_gu = sc.alloc<float>(hp.t * 2 * hp.inter_shared);
    s.shared_h = sc.alloc<float>(hp.t * hp.inter_shared);
    s.shared_out = sc.alloc<float>(hp.t * hp.hidden);
  }
  p.y = sc.alloc<float>(hp.t * hp.hidden);
  s.counts = sc.alloc<int32_t>(hp.n_experts);
  s.offsets = sc.alloc<int32_t>(hp.n_experts + 1);
  s.cursor = sc.alloc<int32_t>(hp.n_experts);
  s.rows = sc.alloc<int32_t>(std::max<int64_t>(1, pairs));
  s.h = sc.alloc<float>(std::max<int64_t>(1, pairs * hp.inter));
  s.slot_out = sc.alloc<float>(std::max<int64_t>(1, pairs * hp.hidden));
  cuda::moe_experts(p, s, sc.stream());
  cuda::copy_d2h(hp.y, p.y, hp.t * hp.hidden * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("moe_experts");
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
