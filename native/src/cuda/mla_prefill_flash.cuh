// The tensor-core (mma.sync m16n8k16 bf16 → f32) causal flash-attention kernel of MLA
// prefill, internal to mla_prefill.cu (which chooses it in its one dispatch). Inputs are the
// expanded keys and values of ONE sequence in bf16 scratch, head-major:
//   kn  [h, s_k, d_nope]   k_nope per head (kv_b_proj · c_kv)
//   kpe [s_k, d_r]         k_pe, shared by all heads
//   v   [h, s_k, d_v]      values per head
// and its queries q [n_q, h, d_nope + d_r] f32 (rounded to bf16 when staged), which are the
// last n_q of the s_k keys: query row i sees keys t ≤ s_k − n_q + i. Output f32 [n_q, h, d_v].
//
// Numerics: q, K, V and the probabilities P are rounded to bf16 (round to nearest even)
// before each mma; scores, the running max / sum and the output accumulate in f32.
#pragma once
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace dsv2::cuda::prefill {

struct FlashArgs {
  const float* q = nullptr;           // [n_q, h, d_nope + d_r]: this sequence's first query row
  const __nv_bfloat16* kn = nullptr;  // [h, s_k, d_nope]
  const __nv_bfloat16* kpe = nullptr; // [s_k, d_r]
  const __nv_bfloat16* v = nullptr;   // [h, s_k, d_v]
  float* out = nullptr;               // [n_q, h, d_v]
  int n_q = 0, s_k = 0, h = 0;        // n_q ≤ s_k; h ≤ 65535 (grid y)
  float scale_log2 = 0;               // softmax scale · log2(e): scores go through exp2
};

// Whether a compiled specialisation exists for these head dims.
bool flash_supported(int64_t d_nope, int64_t d_r, int64_t d_v);
// Its name (for benchmarks and logs); "" when unsupported.
const char* flash_kernel_name(int64_t d_nope, int64_t d_r, int64_t d_v);
// Launches it on `stream` (n_q ≥ 1); the dims must be flash_supported.
void flash_attend(const FlashArgs& a, int64_t d_nope, int64_t d_r, int64_t d_v, cudaStream_t stream);

}  // namespace dsv2::cuda::prefill
