// Checks and dispatch of the MoE ops.
#include <string>

#include "check.h"
#include "cpu/cpu_ops.h"
#include "dsv2/ops.h"
#include "ops_cuda.h"

namespace dsv2::ops {

std::vector<OutSpec> check_moe_route(const TensorView& logits, const TensorView* bias, MoeRouteParams* p) {
  require_cpu(logits, "logits");
  require_dtype(logits, "logits", {DType::kF32});
  require_rank(logits, "logits", 2, 2);
  const int64_t e = logits.dim(1);
  DSV2_CHECK(e >= 1, kShape, "logits: shape " << shape_str(logits.shape) << " has no experts");
  DSV2_CHECK(p->n_group >= 1 && e % p->n_group == 0, kRange,
             "nGroup = " << p->n_group << " must divide the " << e << " experts");
  DSV2_CHECK(p->topk_group >= 1 && p->topk_group <= p->n_group, kRange,
             "topkGroup = " << p->topk_group << " must be in [1, nGroup = " << p->n_group << "]");
  const int64_t reachable = p->method == MoeMethod::kGreedy ? e : p->topk_group * (e / p->n_group);
  DSV2_CHECK(p->top_k >= 1 && p->top_k <= reachable, kRange,
             "topK = " << p->top_k << " must be in [1, " << reachable << "]"
                       << (p->method == MoeMethod::kGreedy ? " (the number of experts)"
                                                           : " (topkGroup × experts per group)"));
  DSV2_CHECK(std::isfinite(p->routed_scaling_factor), kRange,
             "routedScalingFactor = " << p->routed_scaling_factor << " must be finite");
  if (p->method == MoeMethod::kNoauxTc) {
    DSV2_CHECK(bias != nullptr, kArg, "bias (e_score_correction_bias) is required for noaux_tc routing");
    DSV2_CHECK(e / p->n_group >= 2, kRange,
               "noaux_tc scores a group by its two best experts, but nGroup = " << p->n_group << " leaves "
                                                                                << e / p->n_group << " per group");
  }
  if (bias) {
    require_cpu(*bias, "bias");
    require_dtype(*bias, "bias", {DType::kF32});
    require_shape(*bias, "bias", {e}, ("[experts] = [" + std::to_string(e) + "]").c_str());
    DSV2_CHECK(p->method == MoeMethod::kNoauxTc, kArg, "bias is only used by noaux_tc routing");
    p->bias = static_cast<const float*>(bias->data);
  }
  p->t = logits.dim(0);
  p->e = e;
  p->logits = static_cast<const float*>(logits.data);
  return {{DType::kI32, {p->t, p->top_k}},
          {DType::kF32, {p->t, p->top_k}},
          {DType::kI32, {e}},
          {DType::kI32, {p->n_group}}};
}

void moe_route(const MoeRouteParams& p, Impl impl) {
  if (p.device == Device::kCuda) return moe_route_cuda(p);
  cpu::moe_route(p, parallel(impl));
}

namespace {

// 8-bit routed experts (fp8_e4m3 or i8 codes): both block-scale tensors, f32, of exactly
// [E, ceil(rows / 128), ceil(cols / 128)] for gate_up [E, 2I, H] and down [E, H, I], every
// scale finite and > 0; other weight dtypes take no scales.
void check_fp8_scales(DType w, const TensorView* gus, const TensorView* dns, int64_t e, int64_t inter, int64_t hidden,
                      MoeExpertsParams* p) {
  if (w != DType::kFP8E4M3 && w != DType::kI8) {
    DSV2_CHECK(gus == nullptr && dns == nullptr, kArg,
               (gus ? "experts.gateUpScale" : "experts.downScale")
                   << ": block scales are only used with fp8_e4m3 or i8 expert weights (experts.gateUp is " << dtype_name(w) << ")");
    return;
  }
  DSV2_CHECK(gus != nullptr && dns != nullptr, kArg,
             (gus ? "experts.downScale" : "experts.gateUpScale")
                 << " is required: " << dtype_name(w) << " expert weights need both block-scale tensors (weight_scale_inv, f32, "
                    "one per 128×128 block)");
  constexpr int64_t B = kMoeFp8Block;
  auto blocks = [](int64_t n) { return (n + B - 1) / B; };
  const struct {
    const TensorView* t;
    const char* name;
    int64_t rows, cols;
    const char* what;
  } parts[2] = {{gus, "experts.gateUpScale", 2 * inter, hidden, "[experts, ceil(2 · inter / 128), ceil(hidden / 128)] = "},
                {dns, "experts.downScale", hidden, inter, "[experts, ceil(hidden / 128), ceil(inter / 128)] = "}};
  for (const auto& s : parts) {
    require_cpu(*s.t, s.name);
    require_dtype(*s.t, s.name, {DType::kF32});
    const std::vector<int64_t> want = {e, blocks(s.rows), blocks(s.cols)};
    require_shape(*s.t, s.name, want, (std::string(s.what) + shape_str(want)).c_str());
    const float* v = static_cast<const float*>(s.t->data);
    const int64_t br = want[1], bc = want[2];
    for (int64_t i = 0; i < e * br * bc; ++i)
      DSV2_CHECK(std::isfinite(v[i]) && v[i] > 0.0f, kRange,
                 s.name << "[" << i / (br * bc) << ", " << (i / bc) % br << ", " << i % bc << "] = " << v[i]
                        << " must be finite and > 0");
  }
  p->gate_up_scale = static_cast<const float*>(gus->data);
  p->down_scale = static_cast<const float*>(dns->data);
}

}  // namespace

std::vector<OutSpec> check_moe_experts(const TensorView& x, const TensorView& ids, const TensorView& weights,
                                       const TensorView& gate_up, const TensorView& down, const TensorView* sgu,
                                       const TensorView* sd, MoeExpertsParams* p, const TensorView* gu_scale,
                                       const TensorView* dn_scale) {
  for (auto [t, n] : {std::pair{&x, "x"}, {&ids, "ids"}, {&weights, "weights"}, {&gate_up, "experts.gateUp"},
                      {&down, "experts.down"}})
    require_cpu(*t, n);
  require_dtype(x, "x", {DType::kF32});
  require_dtype(ids, "ids", {DType::kI32});
  require_dtype(weights, "weights", {DType::kF32});
  require_dtype(gate_up, "experts.gateUp", {DType::kF32, DType::kBF16, DType::kF16, DType::kFP8E4M3, DType::kI8});
  require_rank(x, "x", 2, 2);
  require_rank(ids, "ids", 2, 2);
  require_rank(gate_up, "experts.gateUp", 3, 3);
  const int64_t t = x.dim(0), hidden = x.dim(1), k = ids.dim(1);
  require_shape(ids, "ids", {t, -1}, ("[tokens, topK] with tokens = " + std::to_string(t)).c_str());
  require_shape(weights, "weights", ids.shape, ("ids' shape " + shape_str(ids.shape)).c_str());
  const int64_t e = gate_up.dim(0), two_i = gate_up.dim(1);
  DSV2_CHECK(two_i % 2 == 0 && gate_up.dim(2) == hidden, kShape,
             "experts.gateUp: shape " << shape_str(gate_up.shape) << " must be [experts, 2 · inter, hidden = " << hidden << "]");
  const int64_t inter = two_i / 2;
  DSV2_CHECK(down.dtype == gate_up.dtype, kDtype,
             "experts.down: dtype " << dtype_name(down.dtype) << " differs from experts.gateUp's " << dtype_name(gate_up.dtype));
  require_shape(down, "experts.down", {e, hidden, inter},
                ("[experts, hidden, inter] = " + shape_str({e, hidden, inter})).c_str());
  p->t = t;
  p->hidden = hidden;
  p->top_k = k;
  p->n_experts = e;
  p->inter = inter;
  p->x = static_cast<const float*>(x.data);
  p->ids = static_cast<const int32_t*>(ids.data);
  p->weights = static_cast<const float*>(weights.data);
  p->gate_up = gate_up.data;
  p->down = down.data;
  p->w_dtype = gate_up.dtype;
  check_fp8_scales(gate_up.dtype, gu_scale, dn_scale, e, inter, hidden, p);
  DSV2_CHECK((sgu == nullptr) == (sd == nullptr), kArg, "shared: needs both gateUp and down");
  if (sgu) {
    require_cpu(*sgu, "shared.gateUp");
    require_cpu(*sd, "shared.down");
    require_dtype(*sgu, "shared.gateUp", kFloatWeights);
    require_rank(*sgu, "shared.gateUp", 2, 2);
    DSV2_CHECK(sgu->dim(0) % 2 == 0 && sgu->dim(1) == hidden, kShape,
               "shared.gateUp: shape " << shape_str(sgu->shape) << " must be [2 · interShared, hidden = " << hidden << "]");
    const int64_t is = sgu->dim(0) / 2;
    DSV2_CHECK(sd->dtype == sgu->dtype, kDtype,
               "shared.down: dtype " << dtype_name(sd->dtype) << " differs from shared.gateUp's " << dtype_name(sgu->dtype));
    require_shape(*sd, "shared.down", {hidden, is}, ("[hidden, interShared] = " + shape_str({hidden, is})).c_str());
    p->inter_shared = is;
    p->shared_gate_up = sgu->data;
    p->shared_down = sd->data;
    p->shared_dtype = sgu->dtype;
  }
  return {{DType::kF32, {t, hidden}}};
}

void moe_experts(const MoeExpertsParams& p, Impl impl) {
  if (p.device == Device::kCuda) return moe_experts_cuda(p);
  if (impl == Impl::kReference) cpu::moe_experts_ref(p);
  else cpu::moe_experts_fast(p);
}

}  // namespace dsv2::ops
