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
void moe_experts_cuda(const MoeExpertsParams& p);  // p: host inputs, weights and output

// Kernel-only milliseconds per gemm call with x and W resident on the device.
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
// Device-to-device cudaMemcpy bandwidth (read + write bytes per second), the decode roofline.
double copy_bandwidth_cuda(size_t bytes, int iters);
// Kernel-only microseconds per fused routing call with the logits on the device.
double moe_route_cuda_bench(const MoeRouteParams& p, int iters);

}  // namespace dsv2::ops
