// What engine.cc, engine_weights.cc and engine_forward.cc share beyond engine.h: a layer's
// weights and the names of the activation buffers.
#pragma once
#include <cstddef>

#include "engine.h"

namespace dsv2::model {

struct Engine::Layer {
  bool moe = false;
  Weight input_norm, post_norm, q_proj, q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, w_uk_t, w_uv, o_proj;
  Weight gate_up, down;                              // dense MLP
  Weight gate, bias, experts_gate_up, experts_down;  // MoE
  Weight experts_gate_up_scale, experts_down_scale;  // FP8 experts: f32 block scales (moe.h)
  Weight shared_gate_up, shared_down;
};

namespace buf_id {

// Activation buffers (f32 unless noted), sized for Limits::max_tokens rows.
enum Buf : size_t {
  kX, kH, kDelta, kQ, kQa, kQaN, kKv, kCkv, kKpe, kQpe, kQdec, kOlat, kLse,
  kO, kGu, kAct, kRouter, kIds /* i32 */, kRw, kTpe /* i32 */, kTpg /* i32 */, kHsel, kLogits,
  kInTokens /* i32 */, kInPos /* i32 */, kInSlots /* i32 */, kInSeqlens /* i32 */, kInCuQ /* i32 */,
  kInTable /* i32 */, kInSeeds /* u64 */, kOutTokens /* i32 */, kOutBad /* i32 */, kNumBufs
};

}  // namespace buf_id

}  // namespace dsv2::model
