// Op-level CUDA entries for host inputs and a device-resident KV cache (ops_cuda.cc).
#pragma once
#include <cstddef>
#include <cstdint>

#include "dsv2/dense.h"
#include "dsv2/mla.h"
#include "dsv2/moe.h"

namespace dsv2::ops {

// Throws E_UNSUPPORTED naming `what` and the reason when CUDA cannot run here.
void require_cuda_usable(const char* what);
void* device_alloc_zeroed(size_t bytes);
void device_free(void* p) noexcept;

void kv_append_cuda(const KvAppendParams& p);  // p: host inputs, device cache
void kv_read_cuda(const KvReadParams& p);      // p: host slots and outputs, device cache
void kv_poison_cuda(const KvCacheView& c);
void kv_read_raw_cuda(const KvCacheView& c, int64_t page, uint8_t* dst);
void mla_decode_cuda(const MlaDecodeParams& p);  // p: host q, tables, outputs; device cache
void mla_prefill_cuda(const MlaPrefillParams& p);  // p: host q, tables, kv_b, output; device cache

void moe_route_cuda(const MoeRouteParams& p);   // p: host logits, bias and outputs
void gemm_cuda(const GemmParams& p);            // p: host x, w and y
void embedding_cuda(const EmbeddingParams& p);  // p: host tensors (likewise below)
void rms_norm_cuda(const RmsNormParams& p);
void rope_cuda(const RopeParams& p);
void silu_mul_cuda(const SiluMulParams& p);
void softmax_cuda(const SoftmaxParams& p);
void sample_cuda(const SampleParams& p);  // p: host logits and output; the GPU sampler (model_kernels.cu)
void moe_experts_cuda(const MoeExpertsParams& p);  // p: host inputs, weights and output

// Kernel-only milliseconds per gemm call with x and W resident on the device: calls cycle
// through copies of W (≥ 256 MiB together, so L2 is cold) inside one CUDA graph.
struct GemmBench {
  double ms = 0;
  const char* kernel = "";
};
GemmBench gemm_cuda_bench(const GemmParams& p, int iters);

// Kernel-only timing of mla_decode with every input already on the device (CUDA events).
struct DecodeBench {
  double ms = 0;          // per call (split kernel + combine)
  int64_t n_items = 0;    // split work items
  const char* kernel = "";
};
DecodeBench mla_decode_cuda_bench(const MlaDecodeParams& p, int iters);
// Kernel-only timing of mla_prefill with every input already on the device (CUDA events):
// ms = the whole op per call (gather + expand + attention, every sequence), attend_ms = the
// attention kernels alone (summed over sequences); gemm_ms = one [n, n]·[n, n]ᵀ cuda::gemm
// with bf16 weights (n = gemm_size; 0: not run), the run's dense GEMM rate.
struct PrefillBench {
  double ms = 0, attend_ms = 0, gemm_ms = 0;
  const char* kernel = "";
  const char* gemm_kernel = "";
};
PrefillBench mla_prefill_cuda_bench(const MlaPrefillParams& p, int iters, int64_t gemm_size);
// Device-to-device cudaMemcpy bandwidth (read + write bytes per second), the decode roofline.
double copy_bandwidth_cuda(size_t bytes, int iters);
// Kernel-only microseconds per routing call with the logits on the device: the fused kernel,
// or (unfused) the baseline of one launch per step as eager torch runs it.
double moe_route_cuda_bench(const MoeRouteParams& p, int iters, bool unfused = false);
// Which routing kernel the fused path runs for p ("" without CUDA in the build).
const char* moe_route_cuda_kernel_name(const MoeRouteParams& p);
// Kernel-only timing of moe_experts (bf16 weights, random and resident; seeded random routing,
// 8 routings cycled between calls), beside one dense cuda::gemm for the rate it is compared with.
struct MoeExpertsBenchShape {
  int64_t t = 0, hidden = 0, inter = 0, n_experts = 0, top_k = 0, inter_shared = 0;
  uint64_t seed = 0;
  bool fp8 = false;  // routed experts as e4m3 codes + 128×128 block scales (shared stay bf16)
  bool i8 = false;   // routed experts as int8 codes + block scales (fp8 false)
};
struct MoeExpertsBench {
  double ms = 0;            // per moe_experts call (prep, GEMMs, combine)
  const char* kernel = "";  // moe_experts_kernel_name
  double experts_hit = 0;   // distinct routed experts per call (mean over the routings)
  double weight_bytes = 0;  // weight bytes touched per call: experts hit + shared
  double flops = 0;         // 6·pairs·H·I + 6·t·H·I_shared
  double gemm_ms = 0;       // the dense reference gemm
  const char* gemm_kernel = "";
  double gemm_flops = 0;
};
MoeExpertsBench moe_experts_cuda_bench(const MoeExpertsBenchShape& b, int iters);

}  // namespace dsv2::ops
