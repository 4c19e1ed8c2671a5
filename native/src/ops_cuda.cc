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
#include "ops_cuda_scope.h"
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

}  // namespace dsv2::ops
