// DeepSeekMoE ops: gate routing (greedy, V2's device-limited group routing, V3's noaux_tc)
// and the SwiGLU experts, routed and shared.
#pragma once
#include <cstdint>

#include "dsv2/dense.h"
#include "dsv2/tensor.h"

namespace dsv2 {

enum class MoeMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };
enum class MoeScoring { kSoftmax, kSigmoid };

// Per token: scores = softmax(logits) or sigmoid(logits); choice = scores (+ bias for
// noaux_tc). greedy: the top_k best choices. group_limited_greedy (DeepSeek-V2's
// device-limited routing): groups of E / n_group experts scored by their best choice, the
// topk_group best groups kept, then the top_k best experts inside them. noaux_tc
// (DeepSeek-V3): the same with group score = sum of the group's two best choices.
// Each row's ids are ordered by descending choice, ties to the lower index; NaN choices are
// never selected, and slots nothing can fill get id -1 and weight 0.
// weights = scores[id] (no bias); with norm_topk_prob (top_k > 1) divided by their sum
// + 1e-20. routed_scaling_factor follows the published modeling code: noaux_tc always
// multiplies by it; greedy / group_limited_greedy (the V2 code) only when not normalising.
// tokens_per_expert and tokens_per_group count (token, slot) pairs. A token whose logits hold a
// NaN (or, with softmax scoring, a +inf) has NaN scores everywhere and is routed nowhere: all
// its ids are -1 — as the published modeling code would produce NaN weights.
struct MoeRouteParams {
  int64_t t = 0, e = 0, top_k = 0, n_group = 1, topk_group = 1;
  MoeMethod method = MoeMethod::kGreedy;
  MoeScoring scoring = MoeScoring::kSoftmax;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  const float* logits = nullptr;  // [t, e]
  const float* bias = nullptr;    // [e], noaux_tc only (e_score_correction_bias)
  int32_t* ids = nullptr;         // [t, top_k]
  float* weights = nullptr;       // [t, top_k]
  int32_t* tokens_per_expert = nullptr;  // [e]
  int32_t* tokens_per_group = nullptr;   // [n_group]
  Device device = Device::kCpu;          // where to run (the op-level entry copies host data)
};

// y[t] = Σ_slots weights[t, s] · down_e(silu(gate_e · x_t) ⊙ up_e · x_t)  (e = ids[t, s],
// slots with id -1 skipped) + the shared experts as one SwiGLU of width inter_shared.
// Tokens are grouped by expert so each expert runs one GEMM over its tokens; each token's
// slot results are summed in slot order, so the output does not depend on threading.
//
// FP8 block-scaled routed experts (DeepSeek-V3's F8_E4M3 weights with weight_scale_inv):
// with w_dtype == kFP8E4M3, gate_up and down hold e4m3 codes (uint8) and
//   w[e, r, c] = e4m3(code[e, r, c]) · scale[e, r / 128, c / 128]   (f32 product)
// with gate_up_scale [n_experts, ceil(2·inter / 128), ceil(hidden / 128)] and down_scale
// [n_experts, ceil(hidden / 128), ceil(inter / 128)], row-major, every scale finite and > 0.
// Convention: the blocks tile the STACKED [2·inter, hidden] gate_up matrix (scale row r / 128
// for stacked row r, gate rows 0..inter-1 then up rows inter..2·inter-1), i.e. the matrix is
// treated exactly like any other block-quantised [rows, cols] checkpoint tensor (the rule
// weights.ts applies at load). Why: it is the only layout with the [.., ceil(2I/128), ..]
// shape, one indexing rule serves gate_up and down, and for V3 (inter = 2048, a multiple of
// 128) it is exactly the concatenation of the checkpoint's gate_proj and up_proj scale
// tensors. When inter % 128 != 0 one 128-row block holds the last gate rows and the first up
// rows; a loader of separate gate/up checkpoint tensors must then requantise (or keep bf16):
// their scales do not fit this layout. The shared experts never use FP8 (shared_dtype is
// f32 | bf16 | f16); the scales are null for other weight dtypes.
constexpr int64_t kMoeFp8Block = kWeightBlock;

struct MoeExpertsParams {
  int64_t t = 0, hidden = 0, top_k = 0, n_experts = 0, inter = 0, inter_shared = 0;
  const float* x = nullptr;        // [t, hidden]
  const int32_t* ids = nullptr;    // [t, top_k]
  const float* weights = nullptr;  // [t, top_k]
  const void* gate_up = nullptr;   // [n_experts, 2 · inter, hidden]: gate rows, then up rows
  const void* down = nullptr;      // [n_experts, hidden, inter]
  DType w_dtype = DType::kF32;     // of gate_up and down: f32 | bf16 | f16 | fp8_e4m3 (| i8: CPU engine)
  const float* gate_up_scale = nullptr;  // 8-bit only: [n_experts, ceil(2 · inter / 128), ceil(hidden / 128)]
  const float* down_scale = nullptr;     // 8-bit only: [n_experts, ceil(hidden / 128), ceil(inter / 128)]
  const void* shared_gate_up = nullptr;  // [2 · inter_shared, hidden], may be null
  const void* shared_down = nullptr;     // [hidden, inter_shared]
  DType shared_dtype = DType::kF32;      // f32 | bf16 | f16, or (CPU only) i8 / fp8_e4m3 with:
  const float* shared_gate_up_scale = nullptr;  // [ceil(2 · inter_shared / 128), ceil(hidden / 128)]
  const float* shared_down_scale = nullptr;     // [ceil(hidden / 128), ceil(inter_shared / 128)]
  float* y = nullptr;              // [t, hidden]
  Device device = Device::kCpu;    // where to run (the op-level entry copies host data)
};

}  // namespace dsv2
