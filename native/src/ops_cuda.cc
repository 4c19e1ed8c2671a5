// The CUDA path of the ops that take a device-resident KV cache, for host inputs: validate on
// the host, copy inputs to the device, run the kernel on a stream, copy the outputs back.
// (The model runtime's device path keeps activations on the device; this is the op-level
// entry the tests compare with the CPU ops.) Without CUDA in the build every entry throws
// E_UNSUPPORTED.
#include "ops_cuda.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/device.h"
#include "cpu/cpu_ops.h"
#include "dsv2/status.h"
#ifdef DSV2_WITH_CUDA
#include "cuda/cuda_ops.h"
#include "cuda/model_ops.h"
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

// Checks the tables the kernels index with (the CPU op makes the same checks; the device
// plan trusts them); returns the batch's total keys.
int64_t check_decode_tables(const MlaDecodeParams& hp) {
  const int64_t page = hp.cache.layout.page_size;
  int64_t total = 0;
  for (int64_t i = 0; i < hp.b; ++i) {
    const int64_t s_k = hp.seqlens[i];
    DSV2_CHECK(s_k >= 0 && s_k <= hp.max_blocks * page, kRange,
               "seqlens[" << i << "] = " << s_k << " must be in [0, " << hp.max_blocks * page << "]");
    for (int64_t blk = 0; blk < (s_k + page - 1) / page; ++blk) {
      const int64_t pg = hp.block_table[i * hp.max_blocks + blk];
      DSV2_CHECK(pg >= 0 && pg < hp.cache.pages, kRange,
                 "block_table[" << i << ", " << blk << "] = " << pg << " is outside the cache's pages [0, " << hp.cache.pages << ")");
    }
    total += s_k;
  }
  return total;
}

// A decode call with its inputs on the device: params (device pointers, outputs allocated),
// the number of split parts and the workspace of cuda::mla_decode.
struct DecodeCall {
  MlaDecodeParams p;
  int64_t n_parts = 1;
  void* ws = nullptr;
  size_t ws_bytes = 0;
};

// Uploads the inputs. n_parts: the caller's split_tokens read as ≈ keys per part (the device
// plan cuts the batch's key line into equal parts rather than each sequence into chunks; the
// results agree up to rounding), else the device default (cuda::mla_decode_parts).
DecodeCall upload_decode(Scope& sc, const MlaDecodeParams& hp) {
  const int64_t total = check_decode_tables(hp);
  const int64_t rows = hp.s_q * hp.h_q, d = hp.d_c + hp.d_r;
  DecodeCall c;
  c.p = hp;
  c.p.q = sc.upload(hp.q, hp.b * rows * d);
  c.p.block_table = sc.upload(hp.block_table, hp.b * hp.max_blocks);
  c.p.seqlens = sc.upload(hp.seqlens, hp.b);
  c.p.out = sc.alloc<float>(std::max<int64_t>(1, hp.b * rows * hp.d_c));
  c.p.lse = sc.alloc<float>(std::max<int64_t>(1, hp.b * rows));
  c.n_parts = hp.split_tokens > 0
                  ? std::clamp<int64_t>((total + hp.split_tokens - 1) / hp.split_tokens, 1, cuda::kDecodeMaxParts)
                  : cuda::mla_decode_parts(c.p);
  c.ws_bytes = cuda::mla_decode_workspace_bytes(hp.b, hp.s_q, hp.h_q, hp.d_c, c.n_parts);
  c.ws = sc.alloc<uint8_t>(std::max<size_t>(1, c.ws_bytes));
  return c;
}

}  // namespace
#endif

void mla_decode_cuda(const MlaDecodeParams& hp) {
#ifdef DSV2_WITH_CUDA
  const int64_t rows = hp.s_q * hp.h_q;
  Scope sc;
  const DecodeCall c = upload_decode(sc, hp);
  cuda::mla_decode(c.p, c.n_parts, c.ws, c.ws_bytes, sc.stream());
  if (hp.b * rows > 0) {
    cuda::copy_d2h(hp.out, c.p.out, hp.b * rows * hp.d_c * sizeof(float), sc.stream());
    cuda::copy_d2h(hp.lse, c.p.lse, hp.b * rows * sizeof(float), sc.stream());
  }
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("mla_decode");
#endif
}

#ifdef DSV2_WITH_CUDA
namespace {

// The checks the CPU op makes, on the host, before anything runs.
void check_prefill(const MlaPrefillParams& hp) {
  DSV2_CHECK(hp.cu_seqlens_q[0] == 0, kRange, "cuSeqlensQ[0] = " << hp.cu_seqlens_q[0] << " must be 0");
  DSV2_CHECK(hp.cu_seqlens_q[hp.b] == hp.n_tokens, kRange,
             "cuSeqlensQ[" << hp.b << "] = " << hp.cu_seqlens_q[hp.b] << " must equal the number of query rows " << hp.n_tokens);
  const int64_t page = hp.cache.layout.page_size;
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
  }
}

cuda::PrefillSeq prefill_seq(const MlaPrefillParams& hp, int64_t i) {
  return cuda::prefill_seq_of(hp, i, hp.cu_seqlens_q, hp.seqlens);
}

// Device copies of the inputs, the output and one scratch buffer for the batch's largest need.
struct PrefillDev {
  const float* q = nullptr;
  const void* kv_b = nullptr;
  const int32_t* bt = nullptr;
  float* out = nullptr;
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};

PrefillDev upload_prefill(Scope& sc, const MlaPrefillParams& hp) {
  const int64_t dqk = hp.d_nope + hp.d_r, row = hp.d_nope + hp.d_v;
  PrefillDev d;
  d.q = sc.upload(hp.q, hp.n_tokens * hp.h * dqk);
  d.kv_b = sc.upload(static_cast<const uint8_t*>(hp.kv_b), hp.h * row * hp.d_c * dtype_size(hp.kv_b_dtype));
  d.bt = sc.upload(hp.block_table, hp.b * hp.max_blocks);  // ≥ 1 entry: some sequence has queries, hence keys
  d.out = sc.alloc<float>(std::max<int64_t>(1, hp.n_tokens * hp.h * hp.d_v));
  for (int64_t i = 0; i < hp.b; ++i) d.scratch_bytes = std::max(d.scratch_bytes, cuda::mla_prefill_scratch_bytes(prefill_seq(hp, i)));
  d.scratch = sc.alloc<uint8_t>(std::max<size_t>(1, d.scratch_bytes));
  return d;
}

// Every sequence in turn; kernels of one stream run in order, so the scratch is reused safely.
void run_prefill(const MlaPrefillParams& hp, const PrefillDev& d, void* stream) {
  for (int64_t i = 0; i < hp.b; ++i)
    cuda::mla_prefill_seq(hp.cache, d.bt + i * hp.max_blocks, prefill_seq(hp, i), d.q, d.kv_b, hp.kv_b_dtype, d.scratch,
                          d.scratch_bytes, d.out, stream);
}

}  // namespace
#endif

void mla_prefill_cuda(const MlaPrefillParams& hp) {
#ifdef DSV2_WITH_CUDA
  check_prefill(hp);
  if (hp.n_tokens == 0 || hp.h == 0) return;  // nothing to compute (an empty output)
  Scope sc;
  const PrefillDev d = upload_prefill(sc, hp);
  run_prefill(hp, d, sc.stream());
  cuda::copy_d2h(hp.out, d.out, hp.n_tokens * hp.h * hp.d_v * sizeof(float), sc.stream());
  sc.finish();
#else
  (void)hp;
  require_cuda_usable("mla_prefill");
#endif
}

PrefillBench mla_prefill_cuda_bench(const MlaPrefillParams& hp, int iters, int64_t gemm_size) {
#ifdef DSV2_WITH_CUDA
  DSV2_CHECK(iters >= 1 && iters <= 10000, kRange, "iters = " << iters << " must be in [1, 10000]");
  DSV2_CHECK(gemm_size >= 0 && gemm_size <= 16384, kRange, "gemmSize = " << gemm_size << " must be in [0, 16384]");
  check_prefill(hp);
  PrefillBench r;
  Scope sc;
  if (hp.b > 0) r.kernel = cuda::mla_prefill_kernel_name(prefill_seq(hp, 0));
  if (hp.n_tokens > 0 && hp.h > 0) {
    const PrefillDev d = upload_prefill(sc, hp);
    run_prefill(hp, d, sc.stream());  // warm-up
    r.ms = cuda::time_ms(sc.stream(), iters, [&] { run_prefill(hp, d, sc.stream()); });
    for (int64_t i = 0; i < hp.b; ++i) {  // attention alone: each sequence's expansion, then its attend timed
      const cuda::PrefillSeq s = prefill_seq(hp, i);
      if (s.n_q == 0) continue;
      cuda::mla_prefill_expand(hp.cache, d.bt + i * hp.max_blocks, s, d.kv_b, hp.kv_b_dtype, d.scratch, d.scratch_bytes, sc.stream());
      r.attend_ms += cuda::time_ms(sc.stream(), iters, [&] {
        cuda::mla_prefill_attend(s, d.q, d.scratch, d.scratch_bytes, d.out, sc.stream());
      });
    }
  }
  if (gemm_size > 0) {  // the dense bf16-weight GEMM rate of this run: [n, n] · [n, n]ᵀ
    GemmParams g;
    g.m = g.n = g.k = gemm_size;
    g.w_dtype = DType::kBF16;
    float* x = sc.alloc<float>(gemm_size * gemm_size);
    uint16_t* w = sc.alloc<uint16_t>(gemm_size * gemm_size);
    g.y = sc.alloc<float>(gemm_size * gemm_size);
    cuda::memset(x, 0x3c, gemm_size * gemm_size * sizeof(float), sc.stream());     // ≈ 0.0115 (f32 and bf16 alike)
    cuda::memset(w, 0x3c, gemm_size * gemm_size * sizeof(uint16_t), sc.stream());  // finite, nonzero operands
    g.x = x;
    g.w = w;
    cuda::gemm(g, sc.stream());
    r.gemm_ms = cuda::time_ms(sc.stream(), std::min(iters, 20), [&] { cuda::gemm(g, sc.stream()); });
    r.gemm_kernel = cuda::gemm_kernel_name(g);
  }
  sc.finish();
  return r;
#else
  (void)hp, (void)iters, (void)gemm_size;
  require_cuda_usable("mla_prefill benchmark");
  return {};
#endif
}

DecodeBench mla_decode_cuda_bench(const MlaDecodeParams& hp, int iters) {
#ifdef DSV2_WITH_CUDA
  DSV2_CHECK(iters >= 1 && iters <= 10000, kRange, "iters = " << iters << " must be in [1, 10000]");
  Scope sc;
  const DecodeCall c = upload_decode(sc, hp);
  cuda::mla_decode(c.p, c.n_parts, c.ws, c.ws_bytes, sc.stream());  // warm-up
  DecodeBench r;
  r.ms = cuda::time_ms(sc.stream(), iters, [&] { cuda::mla_decode(c.p, c.n_parts, c.ws, c.ws_bytes, sc.stream()); });
  int64_t n_split = 0;
  cuda::mla_decode_plan_stats(c.p, c.n_parts, c.ws, &r.n_items, &n_split, sc.stream());
  r.kernel = cuda::mla_decode_kernel_name(c.p);
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
  model::SampleBatchParams p;
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
  if (hp.w_dtype == DType::kFP8E4M3) {  // block scales (checked by check_moe_experts)
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
  if (b.fp8) {
    // Routed experts as e4m3 codes (random values of the same spread, scale amax / 448 per
    // block) in their own buffers; the bf16 ones above still serve the dense reference gemm.
    auto blocks = [](int64_t n) { return (n + kMoeFp8Block - 1) / kMoeFp8Block; };
    constexpr float kFp8Max = 448.0f;  // the largest e4m3 value
    const int64_t n_gus = b.n_experts * blocks(2 * b.inter) * blocks(b.hidden);
    const int64_t n_dns = b.n_experts * blocks(b.hidden) * blocks(b.inter);
    void* gu8 = sc.alloc<uint8_t>(n_gu);
    void* dn8 = sc.alloc<uint8_t>(n_dn);
    cuda::moe_bench_fill(gu8, DType::kFP8E4M3, n_gu, b.seed + 6, kFp8Max, sc.stream());
    cuda::moe_bench_fill(dn8, DType::kFP8E4M3, n_dn, b.seed + 7, kFp8Max, sc.stream());
    const std::vector<float> gus(n_gus, 1.0f / (kFp8Max * std::sqrt(static_cast<float>(b.hidden))));
    const std::vector<float> dns(n_dns, 1.0f / (kFp8Max * std::sqrt(static_cast<float>(b.inter))));
    p.w_dtype = DType::kFP8E4M3;
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
  const double wsz = b.fp8 ? 1.0 : 2.0;  // routed: e4m3 (scales: 4 bytes per 16384 codes, not counted) or bf16
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
