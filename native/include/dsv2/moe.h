// DeepSeekMoE ops: gate routing (greedy, V2's device-limited group routing, V3's noaux_tc)
// and the SwiGLU experts, routed and shared.
#pragma once
#include <cstdint>

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
struct MoeExpertsParams {
  int64_t t = 0, hidden = 0, top_k = 0, n_experts = 0, inter = 0, inter_shared = 0;
  const float* x = nullptr;        // [t, hidden]
  const int32_t* ids = nullptr;    // [t, top_k]
  const float* weights = nullptr;  // [t, top_k]
  const void* gate_up = nullptr;   // [n_experts, 2 · inter, hidden]: gate rows, then up rows
  const void* down = nullptr;      // [n_experts, hidden, inter]
  DType w_dtype = DType::kF32;     // of gate_up and down
  const void* shared_gate_up = nullptr;  // [2 · inter_shared, hidden], may be null
  const void* shared_down = nullptr;     // [hidden, inter_shared]
  DType shared_dtype = DType::kF32;
  float* y = nullptr;              // [t, hidden]
  Device device = Device::kCpu;    // where to run (the op-level entry copies host data)
};

}  // namespace dsv2
