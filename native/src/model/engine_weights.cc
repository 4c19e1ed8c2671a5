// The native model engine's weights (see engine.h): checks of each tensor against the config,
// placement in the backend's memory (the absorbed halves of kv_b, stacked experts), 8-bit
// quantisation at load, synthetic random weights, and the memory they hold.
#include "engine_internal.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "dsv2/ops.h"
#include "dsv2/status.h"

namespace dsv2::model {

using namespace buf_id;

namespace {
std::string shape_of(const std::vector<int64_t>& s) { return shape_str(s); }
}  // namespace

void Engine::set_weight(int64_t layer, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                        const void* host, size_t bytes, int64_t first) {
  std::lock_guard<std::mutex> lock(mu_);
  if (quant_ != DType::kF32 && quantizable(name) && (dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16))
    set_quantized_locked(layer, name, dtype, shape, host, bytes, first);
  else
    set_weight_locked(layer, name, dtype, shape, host, bytes, first);
  if (layer >= 0 && name == "kv_b" && first < 0) {
    // Absorbed decode's per-head halves of kv_b, made here (on the worker thread, not the JS
    // thread): rows [h·(dNope+dV), h·(dNope+dV)+dNope) transposed → W_UKᵀ [h, dC, dNope];
    // the next dV rows → W_UV [h, dV, dC]. Same bytes as lib/model/weights.ts' splitKvB.
    const int64_t nh = d_.heads, dn = d_.d_nope, dv = d_.d_v, dc = d_.d_c, row = dn + dv;
    const size_t es = dtype_size(dtype);
    const auto* src = static_cast<const uint8_t*>(host);
    std::vector<uint8_t> uk(static_cast<size_t>(nh * dc * dn) * es), uv(static_cast<size_t>(nh * dv * dc) * es);
    for (int64_t h = 0; h < nh; ++h) {
      for (int64_t r = 0; r < dn; ++r)
        for (int64_t c = 0; c < dc; ++c)
          std::memcpy(&uk[static_cast<size_t>((h * dc + c) * dn + r) * es], &src[static_cast<size_t>((h * row + r) * dc + c) * es], es);
      std::memcpy(&uv[static_cast<size_t>(h * dv * dc) * es], &src[static_cast<size_t>((h * row + dn) * dc) * es], static_cast<size_t>(dv * dc) * es);
    }
    set_weight_locked(layer, "w_uk_t", dtype, {nh, dc, dn}, uk.data(), uk.size(), -1);
    set_weight_locked(layer, "w_uv", dtype, {nh, dv, dc}, uv.data(), uv.size(), -1);
  }
}

bool Engine::quantizable(const std::string& name) {
  static const char* const names[] = {"q_proj", "q_a", "q_b", "kv_a", "o_proj", "gate_up", "down", "experts_gate_up",
                                      "experts_down", "shared_gate_up", "shared_down", "lm_head"};
  for (const char* n : names)
    if (name == n) return true;
  return false;
}

void Engine::set_weight_quantization(DType to) {
  std::lock_guard<std::mutex> lock(mu_);
  DSV2_CHECK(to == DType::kF32 || to == DType::kI8 || to == DType::kFP8E4M3, kDtype,
             "weight quantization to " << dtype_name(to) << ": i8, fp8_e4m3 or none");
  quant_ = to;
}

void Engine::set_quantized_locked(int64_t layer, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                                  const void* host, size_t bytes, int64_t first) {
  const bool stacked = name == "experts_gate_up" || name == "experts_down";  // [E, n, k], maybe in parts of whole experts
  DSV2_CHECK(shape.size() == (stacked ? 3u : 2u), kShape,
             "weight '" << name << "' (layer " << layer << "): shape " << shape_of(shape) << " must have " << (stacked ? 3 : 2) << " dims");
  const int64_t n = shape[shape.size() - 2], k = shape.back();
  const size_t mat = static_cast<size_t>(n * k) * dtype_size(dtype);
  DSV2_CHECK(mat > 0 && bytes % mat == 0 && (stacked || bytes == mat), kShape,
             "weight '" << name << "' (layer " << layer << "): " << bytes << " bytes are not whole " << shape_of({n, k}) << " "
                        << dtype_name(dtype) << " matrices");
  const int64_t mats = static_cast<int64_t>(bytes / mat);
  const int64_t rb = (n + kWeightBlock - 1) / kWeightBlock, cb = (k + kWeightBlock - 1) / kWeightBlock;
  std::vector<uint8_t> codes(static_cast<size_t>(mats * n * k));
  std::vector<float> scales(static_cast<size_t>(mats * rb * cb));
  for (int64_t m = 0; m < mats; ++m)
    ops::quantize_weight(static_cast<const uint8_t*>(host) + m * mat, dtype, n, k, quant_, codes.data() + m * n * k,
                         scales.data() + m * rb * cb, true);
  if (stacked) {
    set_weight_locked(layer, name, quant_, shape, codes.data(), codes.size(), first);
    set_weight_locked(layer, name + "_scale", DType::kF32, {shape[0], rb, cb}, scales.data(), scales.size() * sizeof(float), first);
  } else {
    set_weight_locked(layer, name, quant_, shape, codes.data(), codes.size(), -1, scales.data());
  }
}

void Engine::set_weight_locked(int64_t layer, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                               const void* host, size_t bytes, int64_t first, const float* scales) {
  const int64_t H = d_.hidden, nh = d_.heads;
  Weight* w = nullptr;
  std::vector<int64_t> want;
  if (layer < 0) {
    if (name == "embed") w = &embed_, want = {d_.vocab, H};
    else if (name == "norm") w = &norm_, want = {H};
    else if (name == "lm_head") w = &lm_head_, want = {d_.vocab, H};
  } else {
    DSV2_CHECK(layer < d_.layers, kRange, "weight '" << name << "': layer " << layer << " is outside [0, " << d_.layers << ")");
    Layer& L = *layers_[layer];
    const std::map<std::string, std::pair<Weight*, std::vector<int64_t>>> table = {
        {"input_norm", {&L.input_norm, {H}}},
        {"post_norm", {&L.post_norm, {H}}},
        {"q_proj", {d_.q_lora ? nullptr : &L.q_proj, {nh * d_.qk_dim(), H}}},
        {"q_a", {d_.q_lora ? &L.q_a : nullptr, {d_.q_lora, H}}},
        {"q_a_norm", {d_.q_lora ? &L.q_a_norm : nullptr, {d_.q_lora}}},
        {"q_b", {d_.q_lora ? &L.q_b : nullptr, {nh * d_.qk_dim(), d_.q_lora}}},
        {"kv_a", {&L.kv_a, {d_.d_c + d_.d_r, H}}},
        {"kv_a_norm", {&L.kv_a_norm, {d_.d_c}}},
        {"kv_b", {&L.kv_b, {nh * (d_.d_nope + d_.d_v), d_.d_c}}},
        {"w_uk_t", {&L.w_uk_t, {nh, d_.d_c, d_.d_nope}}},
        {"w_uv", {&L.w_uv, {nh, d_.d_v, d_.d_c}}},
        {"o_proj", {&L.o_proj, {H, nh * d_.d_v}}},
        {"gate_up", {L.moe ? nullptr : &L.gate_up, {2 * d_.inter, H}}},
        {"down", {L.moe ? nullptr : &L.down, {H, d_.inter}}},
        {"gate", {L.moe ? &L.gate : nullptr, {d_.n_experts, H}}},
        {"bias", {L.moe && d_.method == MoeMethod::kNoauxTc ? &L.bias : nullptr, {d_.n_experts}}},
        {"experts_gate_up", {L.moe ? &L.experts_gate_up : nullptr, {d_.n_experts, 2 * d_.moe_inter, H}}},
        {"experts_down", {L.moe ? &L.experts_down : nullptr, {d_.n_experts, H, d_.moe_inter}}},
        {"experts_gate_up_scale",
         {L.moe ? &L.experts_gate_up_scale : nullptr,
          {d_.n_experts, (2 * d_.moe_inter + kMoeFp8Block - 1) / kMoeFp8Block, (H + kMoeFp8Block - 1) / kMoeFp8Block}}},
        {"experts_down_scale",
         {L.moe ? &L.experts_down_scale : nullptr,
          {d_.n_experts, (H + kMoeFp8Block - 1) / kMoeFp8Block, (d_.moe_inter + kMoeFp8Block - 1) / kMoeFp8Block}}},
        {"shared_gate_up", {L.moe && d_.inter_shared ? &L.shared_gate_up : nullptr, {2 * d_.inter_shared, H}}},
        {"shared_down", {L.moe && d_.inter_shared ? &L.shared_down : nullptr, {H, d_.inter_shared}}},
    };
    auto it = table.find(name);
    if (it != table.end()) w = it->second.first, want = it->second.second;
  }
  DSV2_CHECK(w != nullptr, kArg,
             "weight '" << name << "'" << (layer >= 0 ? " of layer " + std::to_string(layer) : std::string())
                        << " is not one this configuration uses");
  DSV2_CHECK(shape == want, kShape, "weight '" << name << "' (layer " << layer << "): shape " << shape_of(shape)
                                               << " but the config implies " << shape_of(want));
  const bool f32_only = name == "bias" || name == "experts_gate_up_scale" || name == "experts_down_scale";
  // Routed experts may be 8-bit codes + their scale weights; other linear weights 8-bit with
  // `scales` (set_quantized_locked).
  const bool fp8_ok = name == "experts_gate_up" || name == "experts_down";
  const bool eight = dtype == DType::kFP8E4M3 || dtype == DType::kI8;
  DSV2_CHECK(f32_only ? dtype == DType::kF32
                      : (dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16 ||
                         (fp8_ok && dtype == DType::kFP8E4M3) || (eight && (fp8_ok || scales) && quantizable(name))),
             kDtype, "weight '" << name << "' (layer " << layer << "): dtype " << dtype_name(dtype) << " must be "
                                << (f32_only ? "f32" : fp8_ok ? "f32, bf16, f16 or fp8_e4m3" : "f32, bf16 or f16"));
  DSV2_CHECK(!scales || (eight && shape.size() == 2), kArg, "weight '" << name << "': block scales go with 2-D 8-bit weights only");
  if (name == "experts_gate_up_scale" || name == "experts_down_scale") {
    const float* v = static_cast<const float*>(host);
    for (size_t i = 0; i < bytes / 4; ++i)
      DSV2_CHECK(std::isfinite(v[i]) && v[i] > 0, kRange,
                 "weight '" << name << "' (layer " << layer << ")[" << i << "] = " << v[i] << " must be finite and > 0");
  }
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  const size_t total = static_cast<size_t>(n) * dtype_size(dtype);
  if (first >= 0) {
    // A part: whole rows along dim 0, inside the weight, after a first part that allocated it.
    DSV2_CHECK(!shape.empty() && shape[0] > 0, kShape, "weight '" << name << "': a part needs a non-empty dim 0");
    const size_t row = total / static_cast<size_t>(shape[0]);
    DSV2_CHECK(row > 0 && bytes % row == 0 && bytes > 0, kShape,
               "weight '" << name << "' (layer " << layer << "): a part of " << bytes << " bytes is not whole rows of " << row << " bytes");
    const int64_t rows = static_cast<int64_t>(bytes / row);
    DSV2_CHECK(first + rows <= shape[0], kRange,
               "weight '" << name << "' (layer " << layer << "): rows [" << first << ", " << first + rows << ") exceed dim 0 = " << shape[0]);
    if (first > 0) {
      DSV2_CHECK(w->data != nullptr && w->dtype == dtype && w->shape == shape, kArg,
                 "weight '" << name << "' (layer " << layer << "): part at row " << first
                            << " before a first part (row 0) of the same dtype and shape");
      be_->drop_captured();
      be_->upload(static_cast<char*>(w->data) + static_cast<size_t>(first) * row, host, bytes);
      be_->sync();  // the host data may go away when this returns
      return;
    }
  } else {
    DSV2_CHECK(bytes == total, kShape,
               "weight '" << name << "': " << bytes << " bytes for " << n << " elements of " << dtype_name(dtype));
  }
  if (w->data) {
    weight_bytes_ -= w->bytes + w->scale_bytes;
    be_->release(w->data);
    be_->release(w->scale);
    w->data = w->scale = nullptr;
    w->scale_bytes = 0;
  }
  w->data = be_->alloc(total);
  w->dtype = dtype;
  w->shape = shape;
  w->bytes = total;
  weight_bytes_ += total;
  be_->drop_captured();  // captured steps hold the old weight pointers
  be_->upload(w->data, host, bytes);
  if (scales) {
    const size_t sb = static_cast<size_t>(((shape[0] + kWeightBlock - 1) / kWeightBlock) * ((shape[1] + kWeightBlock - 1) / kWeightBlock)) * sizeof(float);
    w->scale = be_->alloc(sb);
    w->scale_bytes = sb;
    weight_bytes_ += sb;
    be_->upload(w->scale, scales, sb);
  }
  be_->sync();  // the host data may go away when this returns
}

// The weights the config implies, with the std of their random init (writeRandomCheckpoint's
// choice: 1/sqrt(fan_in) for linear layers, 1 for the embedding and the router; norms near 1).
std::vector<Engine::WeightSpec> Engine::weight_specs() const {
  const int64_t H = d_.hidden, nh = d_.heads;
  std::vector<WeightSpec> v;
  auto lin = [](int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); };
  v.push_back({-1, "embed", {d_.vocab, H}, 0.0f, 1.0f});
  v.push_back({-1, "norm", {H}, 1.0f, 0.05f});
  v.push_back({-1, "lm_head", {d_.vocab, H}, 0.0f, lin(H)});
  for (int64_t l = 0; l < d_.layers; ++l) {
    v.push_back({l, "input_norm", {H}, 1.0f, 0.05f});
    v.push_back({l, "post_norm", {H}, 1.0f, 0.05f});
    if (d_.q_lora) {
      v.push_back({l, "q_a", {d_.q_lora, H}, 0.0f, lin(H)});
      v.push_back({l, "q_a_norm", {d_.q_lora}, 1.0f, 0.05f});
      v.push_back({l, "q_b", {nh * d_.qk_dim(), d_.q_lora}, 0.0f, lin(d_.q_lora)});
    } else {
      v.push_back({l, "q_proj", {nh * d_.qk_dim(), H}, 0.0f, lin(H)});
    }
    v.push_back({l, "kv_a", {d_.d_c + d_.d_r, H}, 0.0f, lin(H)});
    v.push_back({l, "kv_a_norm", {d_.d_c}, 1.0f, 0.05f});
    v.push_back({l, "kv_b", {nh * (d_.d_nope + d_.d_v), d_.d_c}, 0.0f, lin(d_.d_c)});
    v.push_back({l, "w_uk_t", {nh, d_.d_c, d_.d_nope}, 0.0f, lin(d_.d_c)});
    v.push_back({l, "w_uv", {nh, d_.d_v, d_.d_c}, 0.0f, lin(d_.d_c)});
    v.push_back({l, "o_proj", {H, nh * d_.d_v}, 0.0f, lin(nh * d_.d_v)});
    if (layers_[l]->moe) {
      v.push_back({l, "gate", {d_.n_experts, H}, 0.0f, 1.0f});
      if (d_.method == MoeMethod::kNoauxTc) v.push_back({l, "bias", {d_.n_experts}, 0.0f, 0.01f});
      v.push_back({l, "experts_gate_up", {d_.n_experts, 2 * d_.moe_inter, H}, 0.0f, lin(H)});
      v.push_back({l, "experts_down", {d_.n_experts, H, d_.moe_inter}, 0.0f, lin(d_.moe_inter)});
      if (d_.inter_shared) {
        v.push_back({l, "shared_gate_up", {2 * d_.inter_shared, H}, 0.0f, lin(H)});
        v.push_back({l, "shared_down", {H, d_.inter_shared}, 0.0f, lin(d_.inter_shared)});
      }
    } else {
      v.push_back({l, "gate_up", {2 * d_.inter, H}, 0.0f, lin(H)});
      v.push_back({l, "down", {H, d_.inter}, 0.0f, lin(d_.inter)});
    }
  }
  return v;
}

void Engine::random_weights(uint64_t seed, DType dtype) {
  DSV2_CHECK(dtype == DType::kBF16 || dtype == DType::kF32, kDtype, "random weights: dtype " << dtype_name(dtype) << " must be bf16 or f32");
  const std::vector<WeightSpec> specs = weight_specs();
  be_->drop_captured();
  for (size_t i = 0; i < specs.size(); ++i) {
    const WeightSpec& w = specs[i];
    const DType dt = w.name == "bias" ? DType::kF32 : dtype;
    int64_t n = 1;
    for (int64_t x : w.shape) n *= x;
    Weight* dst = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      dst = slot(w.layer, w.name);
      if (dst->data) {
        weight_bytes_ -= dst->bytes;
        be_->release(dst->data);
        dst->data = nullptr;
      }
      const size_t bytes = static_cast<size_t>(n) * dtype_size(dt);
      dst->data = be_->alloc(bytes);
      dst->dtype = dt;
      dst->shape = w.shape;
      dst->bytes = bytes;
      weight_bytes_ += bytes;
      FillRandomParams f;
      f.n = n;
      f.data = dst->data;
      f.dtype = dt;
      f.mean = w.mean;
      f.std = w.std;
      f.seed = seed * 0x100000001B3ull + i;
      be_->fill_random(f);
      be_->sync();
    }
  }
  if (quant_ == DType::kF32) return;
  // 8-bit: quantise what was made (a host copy of each weight, quantised, placed back).
  for (const WeightSpec& w : specs) {
    if (!quantizable(w.name)) continue;
    std::lock_guard<std::mutex> lock(mu_);
    Weight* dst = slot(w.layer, w.name);
    std::vector<uint8_t> copy(dst->bytes);
    be_->download(copy.data(), dst->data, dst->bytes);
    set_quantized_locked(w.layer, w.name, dst->dtype, w.shape, copy.data(), copy.size(), w.shape.size() == 3 ? 0 : -1);
  }
}

Weight* Engine::slot(int64_t layer, const std::string& name) {
  if (layer < 0) {
    if (name == "embed") return &embed_;
    if (name == "norm") return &norm_;
    if (name == "lm_head") return &lm_head_;
    throw Error(Code::kArg, "weight '" + name + "' is not a global engine weight");
  }
  DSV2_CHECK(layer < d_.layers, kRange, "weight '" << name << "': layer " << layer << " is outside [0, " << d_.layers << ")");
  Layer& L = *layers_[layer];
  const std::pair<const char*, Weight*> all[] = {
      {"input_norm", &L.input_norm}, {"post_norm", &L.post_norm}, {"q_proj", &L.q_proj}, {"q_a", &L.q_a},
      {"q_a_norm", &L.q_a_norm}, {"q_b", &L.q_b}, {"kv_a", &L.kv_a}, {"kv_a_norm", &L.kv_a_norm}, {"kv_b", &L.kv_b},
      {"w_uk_t", &L.w_uk_t}, {"w_uv", &L.w_uv}, {"o_proj", &L.o_proj}, {"gate_up", &L.gate_up}, {"down", &L.down},
      {"gate", &L.gate}, {"bias", &L.bias}, {"experts_gate_up", &L.experts_gate_up}, {"experts_down", &L.experts_down},
      {"shared_gate_up", &L.shared_gate_up}, {"shared_down", &L.shared_down},
      {"experts_gate_up_scale", &L.experts_gate_up_scale}, {"experts_down_scale", &L.experts_down_scale}};
  for (const auto& [n, w] : all)
    if (name == n) return w;
  throw Error(Code::kArg, "weight '" + name + "' is not an engine weight");
}

void Engine::set_rope(const float* cos, const float* sin, int64_t max_pos) {
  std::lock_guard<std::mutex> lock(mu_);
  DSV2_CHECK(max_pos >= 1, kRange, "rope table rows = " << max_pos << " must be >= 1");
  const size_t bytes = static_cast<size_t>(max_pos * (d_.d_r / 2)) * sizeof(float);
  be_->release(cos_);
  be_->release(sin_);
  cos_ = sin_ = nullptr;
  be_->drop_captured();
  cos_ = static_cast<float*>(be_->alloc(bytes));
  sin_ = static_cast<float*>(be_->alloc(bytes));
  be_->upload(cos_, cos, bytes);
  be_->upload(sin_, sin, bytes);
  be_->sync();
  max_pos_ = max_pos;
}

void Engine::check_complete() const {
  auto need = [](const Weight& w, const char* name, int64_t layer) {
    DSV2_CHECK(w.data != nullptr, kCheckpoint,
               "the engine is missing weight '" << name << "'" << (layer >= 0 ? " of layer " + std::to_string(layer) : std::string()));
  };
  need(embed_, "embed", -1);
  need(norm_, "norm", -1);
  need(lm_head_, "lm_head", -1);
  DSV2_CHECK(cos_ != nullptr, kArg, "the engine has no rope table (set_rope)");
  for (int64_t l = 0; l < d_.layers; ++l) {
    const Layer& L = *layers_[l];
    need(L.input_norm, "input_norm", l);
    need(L.post_norm, "post_norm", l);
    if (d_.q_lora) {
      need(L.q_a, "q_a", l);
      need(L.q_a_norm, "q_a_norm", l);
      need(L.q_b, "q_b", l);
    } else {
      need(L.q_proj, "q_proj", l);
    }
    need(L.kv_a, "kv_a", l);
    need(L.kv_a_norm, "kv_a_norm", l);
    need(L.kv_b, "kv_b", l);
    need(L.w_uk_t, "w_uk_t", l);
    need(L.w_uv, "w_uv", l);
    need(L.o_proj, "o_proj", l);
    if (L.moe) {
      need(L.gate, "gate", l);
      const bool fp8 = L.experts_gate_up.data && (L.experts_gate_up.dtype == DType::kFP8E4M3 || L.experts_gate_up.dtype == DType::kI8);
      if (fp8) {
        need(L.experts_gate_up_scale, "experts_gate_up_scale", l);
        need(L.experts_down_scale, "experts_down_scale", l);
      } else {
        DSV2_CHECK(!L.experts_gate_up_scale.data && !L.experts_down_scale.data, kArg,
                   "layer " << l << ": expert scales given for " << dtype_name(L.experts_gate_up.dtype) << " experts (8-bit experts only)");
      }
      DSV2_CHECK(!L.experts_down.data || !L.experts_gate_up.data || L.experts_down.dtype == L.experts_gate_up.dtype, kDtype,
                 "layer " << l << ": experts_down is " << dtype_name(L.experts_down.dtype) << " but experts_gate_up "
                          << dtype_name(L.experts_gate_up.dtype) << " (the experts take one dtype)");
      DSV2_CHECK(!L.shared_down.data || !L.shared_gate_up.data || L.shared_down.dtype == L.shared_gate_up.dtype, kDtype,
                 "layer " << l << ": shared_down is " << dtype_name(L.shared_down.dtype) << " but shared_gate_up "
                          << dtype_name(L.shared_gate_up.dtype));
      if (d_.method == MoeMethod::kNoauxTc) need(L.bias, "bias", l);
      need(L.experts_gate_up, "experts_gate_up", l);
      need(L.experts_down, "experts_down", l);
      if (d_.inter_shared) {
        need(L.shared_gate_up, "shared_gate_up", l);
        need(L.shared_down, "shared_down", l);
      }
    } else {
      need(L.gate_up, "gate_up", l);
      need(L.down, "down", l);
    }
  }
}

MemoryReport Engine::memory() const {
  MemoryReport r;
  r.weights = weight_bytes_ + (cos_ ? 2 * static_cast<size_t>(max_pos_ * (d_.d_r / 2)) * sizeof(float) : 0);
  r.cache = static_cast<size_t>(d_.layers * pages_ * layout_.page_bytes());
  r.workspace = workspace_bytes_;
  const Backend::GraphStats g = be_->graph_stats();
  r.graphs_captured = g.captured;
  r.graphs_failed = g.failed;
  r.graph_launches = g.launches;
  return r;
}

}  // namespace dsv2::model
