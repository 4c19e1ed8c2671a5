// The native model engine (see engine.h): weights and activations in one backend's memory,
// the forward of every layer enqueued op after op, and only the requested rows' logits (or
// the sampled tokens) copied back.
#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "dsv2/ops.h"
#include "dsv2/status.h"

namespace dsv2::model {

struct Engine::Layer {
  bool moe = false;
  Weight input_norm, post_norm, q_proj, q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, w_uk_t, w_uv, o_proj;
  Weight gate_up, down;                              // dense MLP
  Weight gate, bias, experts_gate_up, experts_down;  // MoE
  Weight experts_gate_up_scale, experts_down_scale;  // FP8 experts: f32 block scales (moe.h)
  Weight shared_gate_up, shared_down;
};

namespace {

// Activation buffers (f32 unless noted), sized for Limits::max_tokens rows.
enum Buf : size_t {
  kX, kH, kDelta, kQ, kQa, kQaN, kKv, kCkv, kKpe, kQpe, kQdec, kOlat, kLse,
  kO, kGu, kAct, kRouter, kIds /* i32 */, kRw, kTpe /* i32 */, kTpg /* i32 */, kHsel, kLogits,
  kInTokens /* i32 */, kInPos /* i32 */, kInSlots /* i32 */, kInSeqlens /* i32 */, kInCuQ /* i32 */,
  kInTable /* i32 */, kInSeeds /* u64 */, kOutTokens /* i32 */, kOutBad /* i32 */, kNumBufs
};

std::string shape_of(const std::vector<int64_t>& s) { return shape_str(s); }

}  // namespace

// Elements (4 bytes each) of every activation buffer, in Buf order.
std::vector<int64_t> Engine::buffer_elems(const ModelDims& d_, const KvLayout& layout_, const Limits& limits_) {
  const int64_t T = limits_.max_tokens, H = d_.hidden, nh = d_.heads;
  const int64_t max_blocks = (limits_.max_seqlen + layout_.page_size - 1) / layout_.page_size;
  const int64_t gu = 2 * std::max({d_.inter, d_.moe_inter, d_.inter_shared, int64_t{1}});
  const int64_t logit_rows = std::min(T, std::max<int64_t>(limits_.max_seqs, 128));
  const int64_t k = std::max<int64_t>(d_.top_k, 1), E = std::max<int64_t>(d_.n_experts, 1);
  const int64_t Td = std::min(T, limits_.max_seqs * kMaxDecodeQ);  // rows of a decode step (absorbed-attention buffers)
  const std::vector<int64_t> sizes = {
      T * H, T * H, T * H, T * nh * d_.qk_dim(), T * std::max<int64_t>(d_.q_lora, 1), T * std::max<int64_t>(d_.q_lora, 1),
      T * (d_.d_c + d_.d_r), T * d_.d_c, T * d_.d_r, T * nh * d_.d_r,
      Td * nh * (d_.d_c + d_.d_r), Td * nh * d_.d_c, Td * nh,
      T * nh * d_.d_v, T * gu, T * gu / 2, T * E, T * k, T * k, E, std::max<int64_t>(d_.n_group, 1),
      logit_rows * H, logit_rows * d_.vocab,
      T, T, T, limits_.max_seqs, limits_.max_seqs + 1, limits_.max_seqs * max_blocks, 2 * limits_.max_seqs,
      limits_.max_seqs, 1};
  DSV2_CHECK(sizes.size() == kNumBufs, kInternal, "engine: " << sizes.size() << " buffer sizes for " << kNumBufs << " buffers");
  return sizes;
}

Engine::ScratchDims Engine::scratch_dims(const ModelDims& d_, const KvLayout& layout_, const Limits& limits_) {
  const int64_t T = limits_.max_tokens, nh = d_.heads;
  const int64_t max_blocks = (limits_.max_seqlen + layout_.page_size - 1) / layout_.page_size;
  ScratchDims s;
  MlaDecodeParams& dd = s.decode;
  dd.b = limits_.max_seqs;
  dd.s_q = std::min<int64_t>(kMaxDecodeQ, T);
  dd.h_q = nh;
  dd.d_c = d_.d_c;
  dd.d_r = d_.d_r;
  dd.cache.layout = layout_;
  dd.cache.device = Device::kCuda;
  dd.max_blocks = max_blocks;
  MlaPrefillParams& pd = s.prefill;
  pd.b = limits_.max_seqs;
  pd.n_tokens = T;
  pd.h = nh;
  pd.d_nope = d_.d_nope;
  pd.d_r = d_.d_r;
  pd.d_v = d_.d_v;
  pd.d_c = d_.d_c;
  pd.cache.layout = layout_;
  pd.max_blocks = max_blocks;
  MoeExpertsParams& md = s.moe;
  md.t = T;
  md.hidden = d_.hidden;
  md.top_k = d_.top_k;
  md.n_experts = d_.n_experts;
  md.inter = d_.moe_inter;
  md.inter_shared = d_.inter_shared;
  md.w_dtype = md.shared_dtype = DType::kBF16;  // the tensor-core path's buffers (the largest)
  return s;
}

size_t Engine::plan_workspace(Device device, const ModelDims& d, const KvLayout& layout, const Limits& limits) {
  size_t bytes = 0;
  for (int64_t n : buffer_elems(d, layout, limits)) bytes += static_cast<size_t>(std::max<int64_t>(n, 1)) * 4;
  if (device == Device::kCuda) {
    const ScratchDims sd = scratch_dims(d, layout, limits);
    bytes += cuda_scratch_bytes(limits.max_tokens, limits.max_seqs, limits.max_seqlen, sd.decode, sd.prefill, sd.moe);
  }
  return bytes;
}

Engine::Engine(std::unique_ptr<Backend> backend, const ModelDims& dims, KvLayout cache_layout, int64_t cache_pages,
               uint8_t* cache_data, std::shared_ptr<void> cache_owner, const Limits& limits)
    : be_(std::move(backend)), d_(dims), layout_(cache_layout), pages_(cache_pages), limits_(limits),
      cache_(cache_data), cache_owner_(std::move(cache_owner)) {
  DSV2_CHECK(d_.layers >= 1 && d_.hidden >= 1 && d_.vocab >= 1 && d_.heads >= 1, kArg,
             "engine: layers = " << d_.layers << ", hidden = " << d_.hidden << ", vocab = " << d_.vocab
                                 << ", heads = " << d_.heads << " must all be >= 1");
  DSV2_CHECK(static_cast<int64_t>(d_.moe_layer.size()) == d_.layers, kArg,
             "engine: moe_layer has " << d_.moe_layer.size() << " entries for " << d_.layers << " layers");
  DSV2_CHECK(layout_.d_c == d_.d_c && layout_.d_r == d_.d_r, kArg,
             "engine: the cache holds dC = " << layout_.d_c << ", dR = " << layout_.d_r << " but the model has dC = "
                                            << d_.d_c << ", dR = " << d_.d_r);
  DSV2_CHECK(limits_.max_tokens >= 1 && limits_.max_seqs >= 1 && limits_.max_seqlen >= 1, kRange,
             "engine limits: maxTokens = " << limits_.max_tokens << ", maxSeqs = " << limits_.max_seqs
                                          << ", maxSeqlen = " << limits_.max_seqlen << " must all be >= 1");
  for (int64_t l = 0; l < d_.layers; ++l) {
    layers_.push_back(std::make_unique<Layer>());
    layers_.back()->moe = d_.moe_layer[l] != 0;
  }
  const std::vector<int64_t> sizes = buffer_elems(d_, layout_, limits_);
  bufs_.assign(kNumBufs, nullptr);
  try {
    for (size_t i = 0; i < kNumBufs; ++i) {
      const size_t bytes = static_cast<size_t>(std::max<int64_t>(sizes[i], 1)) * 4;
      bufs_[i] = static_cast<float*>(be_->alloc(bytes));
      workspace_bytes_ += bytes;
    }
    const ScratchDims sd = scratch_dims(d_, layout_, limits_);
    workspace_bytes_ += be_->reserve_scratch(limits_.max_tokens, limits_.max_seqs, limits_.max_seqlen, sd.decode, sd.prefill, sd.moe);
  } catch (...) {
    for (float* p : bufs_) be_->release(p);
    throw;
  }
}

Engine::~Engine() {
  try {
    be_->sync();
  } catch (...) {
    // a failed device keeps its error; the memory is released below all the same
  }
  for (float* p : bufs_) be_->release(p);
  for (Weight* w : {&embed_, &norm_, &lm_head_}) be_->release(w->data), be_->release(w->scale);
  for (auto& L : layers_)
    for (Weight* w : {&L->input_norm, &L->post_norm, &L->q_proj, &L->q_a, &L->q_a_norm, &L->q_b, &L->kv_a,
                      &L->kv_a_norm, &L->kv_b, &L->w_uk_t, &L->w_uv, &L->o_proj, &L->gate_up, &L->down, &L->gate,
                      &L->bias, &L->experts_gate_up, &L->experts_down, &L->shared_gate_up, &L->shared_down,
                      &L->experts_gate_up_scale, &L->experts_down_scale})
      be_->release(w->data), be_->release(w->scale);
  be_->release(cos_);
  be_->release(sin_);
}

KvCacheView Engine::cache_layer(int64_t l) const {
  return KvCacheView{layout_, cache_ + l * pages_ * layout_.page_bytes(), pages_, be_->device()};
}

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Engine::OpScope::OpScope(Engine* e, const char* name) : e_(e->prof_ ? e : nullptr), name_(name) {
  if (!e_) return;
  e_->be_->sync();
  t0_ = now_ns();
}

Engine::OpScope::~OpScope() {
  if (!e_) return;
  try {
    e_->be_->sync();
  } catch (...) {
    return;  // the failed op reports itself
  }
  const double dt = static_cast<double>(now_ns() - t0_) * 1e-9;
  std::lock_guard<std::mutex> lock(e_->prof_mu_);
  for (OpTime& o : e_->prof_ops_)
    if (o.op == name_) {
      ++o.calls, o.seconds += dt;
      return;
    }
  e_->prof_ops_.push_back({name_, 1, dt});
}

void Engine::set_profiling(bool on) { prof_ = on; }

std::vector<Engine::OpTime> Engine::profile(bool reset) {
  std::lock_guard<std::mutex> lock(prof_mu_);
  std::vector<OpTime> out = prof_ops_;
  if (reset) prof_ops_.clear();
  return out;
}

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
  DSV2_CHECK(to == DType::kF32 || be_->device() == Device::kCpu, kUnsupported,
             "8-bit weights (" << dtype_name(to) << ") run on the CPU engine only in this version: the CUDA gemm has no 8-bit kernel yet");
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
  // 8-bit: quantise what was made (CPU only: set_weight_quantization refuses cuda, so the
  // backend's memory is host memory here).
  for (const WeightSpec& w : specs) {
    if (!quantizable(w.name)) continue;
    std::lock_guard<std::mutex> lock(mu_);
    Weight* dst = slot(w.layer, w.name);
    std::vector<uint8_t> copy(static_cast<const uint8_t*>(dst->data), static_cast<const uint8_t*>(dst->data) + dst->bytes);
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

void Engine::check_step(const StepInput& in) const {
  check_complete();
  DSV2_CHECK(in.n_tokens >= 1 && in.n_tokens <= limits_.max_tokens, kRange,
             "a step of " << in.n_tokens << " tokens: must be in [1, " << limits_.max_tokens << "] (maxTokens per step)");
  DSV2_CHECK(in.b >= 1 && in.b <= limits_.max_seqs, kRange,
             "a step of " << in.b << " sequences: must be in [1, " << limits_.max_seqs << "] (maxSeqs)");
  const int64_t page = layout_.page_size;
  const int64_t cap_blocks = (limits_.max_seqlen + page - 1) / page;
  DSV2_CHECK(in.max_blocks >= 1 && in.max_blocks <= cap_blocks, kRange,
             "block table width " << in.max_blocks << " must be in [1, " << cap_blocks << "]");
  DSV2_CHECK(in.cu_q[0] == 0 && in.cu_q[in.b] == in.n_tokens, kRange,
             "cuSeqlensQ must run from 0 to the " << in.n_tokens << " tokens (got " << in.cu_q[0] << " .. " << in.cu_q[in.b] << ")");
  for (int64_t i = 0; i < in.b; ++i) {
    const int64_t n_q = static_cast<int64_t>(in.cu_q[i + 1]) - in.cu_q[i], s_k = in.seqlens[i];
    DSV2_CHECK(n_q >= 1, kRange, "sequence " << i << " has " << n_q << " query tokens (cuSeqlensQ must increase)");
    DSV2_CHECK(s_k >= n_q && s_k <= std::min(in.max_blocks * page, limits_.max_seqlen), kRange,
               "seqlens[" << i << "] = " << s_k << " must be in [" << n_q << ", " << std::min(in.max_blocks * page, limits_.max_seqlen) << "]");
    if (in.decode) {
      DSV2_CHECK(n_q == in.n_tokens / in.b && in.n_tokens % in.b == 0, kRange,
                 "decode steps need the same number of tokens per sequence: sequence " << i << " has " << n_q);
      DSV2_CHECK(n_q <= kMaxDecodeQ, kRange,
                 "a decode step of " << n_q << " tokens per sequence: at most " << kMaxDecodeQ << " (use prefill)");
    }
    for (int64_t blk = 0; blk < (s_k + page - 1) / page; ++blk) {
      const int64_t pg = in.block_table[i * in.max_blocks + blk];
      DSV2_CHECK(pg >= 0 && pg < pages_, kRange,
                 "blockTable[" << i << ", " << blk << "] = " << pg << " is outside the cache's pages [0, " << pages_ << ")");
    }
    for (int64_t j = 0; j < n_q; ++j) {
      const int64_t r = in.cu_q[i] + j, pos = s_k - n_q + j;
      DSV2_CHECK(in.positions[r] == pos, kRange,
                 "positions[" << r << "] = " << in.positions[r] << " but token " << j << " of sequence " << i << " sits at " << pos);
      DSV2_CHECK(pos < max_pos_, kRange, "position " << pos << " is beyond the rope table's " << max_pos_ << " rows");
      const int64_t want = static_cast<int64_t>(in.block_table[i * in.max_blocks + pos / page]) * page + pos % page;
      DSV2_CHECK(in.slots[r] == want, kRange,
                 "slots[" << r << "] = " << in.slots[r] << " but the block table puts position " << pos << " at " << want);
    }
  }
  for (int64_t r = 0; r < in.n_tokens; ++r)
    DSV2_CHECK(in.tokens[r] >= 0 && in.tokens[r] < d_.vocab, kRange,
               "tokens[" << r << "] = " << in.tokens[r] << " is outside the vocabulary [0, " << d_.vocab << ")");
  if (in.sample) {
    DSV2_CHECK(std::isfinite(in.temperature) && in.temperature >= 0, kRange,
               "temperature = " << in.temperature << " must be finite and >= 0");
    DSV2_CHECK(in.top_k >= 0, kRange, "topK = " << in.top_k << " must be >= 0");
    DSV2_CHECK(in.top_p > 0 && in.top_p <= 1, kRange, "topP = " << in.top_p << " must be in (0, 1]");
  }
}

StepOutput Engine::step(const StepInput& in_) {
  std::lock_guard<std::mutex> lock(mu_);
  const OpScope whole = timed("step");
  check_step(in_);
  StepInput in = in_;
  const int64_t T = in.n_tokens, H = d_.hidden, b = in.b, V = d_.vocab;
  Backend& be = *be_;
  auto i32 = [this](size_t i) { return reinterpret_cast<int32_t*>(bufs_[i]); };
  // Decode steps pad the block table to a multiple of 16 pages so that one captured graph
  // serves 16 pages of growth (entries past a sequence's end are never read).
  std::vector<int32_t> table;
  if (in.decode) {
    const int64_t cap = (limits_.max_seqlen + layout_.page_size - 1) / layout_.page_size;
    const int64_t mb = std::min(cap, (in.max_blocks + 15) / 16 * 16);
    table.assign(static_cast<size_t>(b * mb), 0);
    for (int64_t i = 0; i < b; ++i)
      std::copy(in.block_table + i * in.max_blocks, in.block_table + (i + 1) * in.max_blocks, table.begin() + i * mb);
    in.block_table = table.data();
    in.max_blocks = mb;
  }
  // Inputs first: the computation below only reads device buffers (capturable).
  be.upload(i32(kInTokens), in.tokens, T * 4);
  be.upload(i32(kInPos), in.positions, T * 4);
  be.upload(i32(kInSlots), in.slots, T * 4);
  be.upload(i32(kInSeqlens), in.seqlens, b * 4);
  be.upload(i32(kInCuQ), in.cu_q, (b + 1) * 4);
  be.upload(i32(kInTable), in.block_table, b * in.max_blocks * 4);
  if (in.sample) be.upload(bufs_[kInSeeds], in.seeds, b * sizeof(uint64_t));
  SeqSizes sz;
  sz.seqlens = in.seqlens;
  sz.cu_q = in.cu_q;
  for (int64_t i = 0; i < b; ++i) sz.max_seqlen = std::max<int64_t>(sz.max_seqlen, in.seqlens[i]);
  GemmParams g;  // lm_head
  g.n = V;
  g.k = H;
  g.w = lm_head_.data;
  g.w_dtype = lm_head_.dtype;
  g.w_scale = static_cast<const float*>(lm_head_.scale);
  g.y = buf(kLogits);
  const bool last_rows = in.logits == LogitsRows::kLast || in.sample;

  auto compute = [&] {
    EmbeddingParams ep;
    ep.n_tokens = T;
    ep.vocab = V;
    ep.hidden = H;
    ep.ids = i32(kInTokens);
    ep.table = embed_.data;
    ep.table_dtype = embed_.dtype;
    ep.out = buf(kX);
    {
      const OpScope t = timed("embed");
      be.embedding(ep);
    }
    AddRmsNormParams an;
    an.rows = T;
    an.dim = H;
    an.x = buf(kX);
    an.eps = d_.eps;
    an.y = buf(kH);
    for (int64_t l = 0; l < d_.layers; ++l) {
      const Layer& L = *layers_[l];
      an.delta = l == 0 ? nullptr : buf(kDelta);  // the previous layer's MLP output joins the residual here
      an.w = L.input_norm.data;
      an.w_dtype = L.input_norm.dtype;
      {
        const OpScope t = timed("norm");
        be.add_rms_norm(an);
      }
      attention(l, in, sz);  // → kDelta
      an.delta = buf(kDelta);
      an.w = L.post_norm.data;
      an.w_dtype = L.post_norm.dtype;
      {
        const OpScope t = timed("norm");
        be.add_rms_norm(an);
      }
      mlp(l, T);  // → kDelta
    }
    an.delta = buf(kDelta);
    an.w = norm_.data;
    an.w_dtype = norm_.dtype;
    {
      const OpScope t = timed("norm");
      be.add_rms_norm(an);  // buf(kH): final hidden states
    }
    if (last_rows) {
      // Each sequence's last row: steps of one token per sequence already have them in order.
      if (T != b)
        for (int64_t i = 0; i < b; ++i)
          be.copy(buf(kHsel) + i * H, buf(kH) + (in.cu_q[i + 1] - 1) * H, H * sizeof(float));
      g.m = b;
      g.x = T == b ? buf(kH) : buf(kHsel);
      {
        const OpScope t = timed("lm_head");
        be.gemm(g);
      }
      if (in.sample) {
        SampleBatchParams sp;
        sp.rows = b;
        sp.vocab = V;
        sp.logits = buf(kLogits);
        sp.temperature = in.temperature;
        sp.top_k = in.top_k;
        sp.top_p = in.top_p;
        sp.seeds = reinterpret_cast<const uint64_t*>(bufs_[kInSeeds]);
        sp.out = i32(kOutTokens);
        sp.bad = i32(kOutBad);
        const OpScope t = timed("sample");
        be.sample(sp);
      }
    }
  };
  if (in.decode) {
    // A decode step's work depends only on these (and on fixed buffers and weights): one
    // captured graph per key (CUDA; the CPU backend just runs it).
    std::ostringstream key;
    key << b << '/' << T << '/' << in.max_blocks << '/' << last_rows << '/' << in.sample << '/' << std::hexfloat
        << in.temperature << '/' << in.top_k << '/' << in.top_p;
    if (prof_) compute();  // per-op syncs cannot be captured
    else be.run_captured(key.str(), compute);
  } else {
    compute();
  }

  StepOutput out;
  if (in.logits == LogitsRows::kLast) {
    out.logits.resize(static_cast<size_t>(b * V));
    be.download(out.logits.data(), buf(kLogits), out.logits.size() * sizeof(float));
  }
  if (in.sample) {
    out.tokens.resize(b);
    int32_t bad = 0;
    be.download(out.tokens.data(), i32(kOutTokens), b * sizeof(int32_t));
    be.download(&bad, i32(kOutBad), sizeof(int32_t));
    DSV2_CHECK(bad == 0, kRange,
               "sequence " << bad - 1 << ": its logits hold a NaN or +inf, or only -inf: nothing can be sampled");
  }
  if (in.logits == LogitsRows::kAll) {
    const int64_t chunk = std::min(limits_.max_tokens, std::max<int64_t>(limits_.max_seqs, 128));
    out.logits.resize(static_cast<size_t>(T * V));
    for (int64_t r0 = 0; r0 < T; r0 += chunk) {
      g.m = std::min(chunk, T - r0);
      g.x = buf(kH) + r0 * H;
      {
        const OpScope t = timed("lm_head");
        be.gemm(g);
      }
      be.download(out.logits.data() + r0 * V, buf(kLogits), static_cast<size_t>(g.m * V) * sizeof(float));
    }
  }
  be.sync();
  return out;
}

// y[m, N] = x[m, K] · Wᵀ for an nn.Linear weight W [N, K].
void Engine::linear(const float* x, int64_t m, const Weight& w, float* y) {
  GemmParams g;
  g.m = m;
  g.n = w.shape[0];
  g.k = w.shape[1];
  g.x = x;
  g.w = w.data;
  g.w_dtype = w.dtype;
  g.w_scale = static_cast<const float*>(w.scale);
  g.y = y;
  be_->gemm(g);
}

void Engine::attention(int64_t l, const StepInput& in, const SeqSizes& sz) {
  const Layer& L = *layers_[l];
  Backend& be = *be_;
  const int64_t T = in.n_tokens, H = d_.hidden, nh = d_.heads, qk = d_.qk_dim();
  const int64_t dC = d_.d_c, dR = d_.d_r, dN = d_.d_nope, dV = d_.d_v;
  auto gemm = [this](const float* x, int64_t m, const Weight& w, float* y) { linear(x, m, w, y); };
  // x_stride: elements between rows of x (0: dense) — a column slice read in place.
  auto norm = [&](const float* x, int64_t rows, const Weight& w, float* y, int64_t x_stride = 0) {
    RmsNormParams n;
    n.rows = rows;
    n.dim = w.shape[0];
    n.x = x;
    n.x_stride = x_stride;
    n.w = w.data;
    n.w_dtype = w.dtype;
    n.eps = d_.eps;
    n.y = y;
    be.rms_norm(n);
  };
  auto cols = [&](int64_t rows, int64_t width, const float* src, int64_t ss, int64_t sc, float* dst, int64_t ds, int64_t dc) {
    CopyColsParams c;
    c.rows = rows;
    c.width = width;
    c.src = src;
    c.src_stride = ss;
    c.src_col = sc;
    c.dst = dst;
    c.dst_stride = ds;
    c.dst_col = dc;
    be.copy_cols(c);
  };
  // Rotates dR columns of each (token, head) row of x (row stride xs) into out (row stride os).
  auto rope = [&](const float* x, int64_t xs, int64_t heads, float* out, int64_t os) {
    RopeParams r;
    r.n_tokens = T;
    r.n_heads = heads;
    r.dim = dR;
    r.max_pos = max_pos_;
    r.x = x;
    r.x_stride = xs;
    r.positions = bufs_[kInPos];
    r.positions_dtype = DType::kI32;
    r.cos = cos_;
    r.sin = sin_;
    r.interleaved = true;
    r.out = out;
    r.out_stride = os;
    be.rope(r);
  };
  // y[t, h, :] = x[t, h, :] · w[h]ᵀ with row strides xs / ys between (t, h) rows (0: dense).
  auto heads = [&](const float* x, int64_t xs, const Weight& w, float* y, int64_t ys) {
    HeadsGemmParams h;
    h.t = T;
    h.h = nh;
    h.n = w.shape[1];
    h.k = w.shape[2];
    h.x = x;
    h.x_stride = xs;
    h.w = w.data;
    h.w_dtype = w.dtype;
    h.y = y;
    h.y_stride = ys;
    be.heads_gemm(h);
  };

  // q [T, nh, qk]
  if (const OpScope t = timed("attn.q"); d_.q_lora) {
    gemm(buf(kH), T, L.q_a, buf(kQa));
    norm(buf(kQa), T, L.q_a_norm, buf(kQaN));
    gemm(buf(kQaN), T, L.q_b, buf(kQ));
  } else {
    gemm(buf(kH), T, L.q_proj, buf(kQ));
  }
  // Joint KV compression: c_kv normalised, k_pe rotated; both to the cache.
  // (Column slices are read in place through row strides: no copies, fewer launches.)
  {
    const OpScope t = timed("attn.kv_a");
    gemm(buf(kH), T, L.kv_a, buf(kKv));
  }
  {
    const OpScope t = timed("attn.kv_norm_rope_append");
    norm(buf(kKv), T, L.kv_a_norm, buf(kCkv), dC + dR);
    rope(buf(kKv) + dC, dC + dR, 1, buf(kKpe), dR);
    KvAppendParams ap;
    ap.cache = cache_layer(l);
    ap.n_tokens = T;
    ap.c_kv = buf(kCkv);
    ap.k_pe = buf(kKpe);
    ap.slots = bufs_[kInSlots];
    ap.slots_dtype = DType::kI32;
    be.kv_append(ap);
  }
  const int32_t* table = reinterpret_cast<const int32_t*>(bufs_[kInTable]);
  const int32_t* seqlens = reinterpret_cast<const int32_t*>(bufs_[kInSeqlens]);
  if (in.decode) {
    // Absorbed: q_dec = [q_nope · W_UK ; rope(q_pe)] per head, written straight into its two
    // column ranges; attention on the latent, then · W_UV.
    {
      const OpScope t = timed("attn.absorb_q");
      heads(buf(kQ), qk, L.w_uk_t, buf(kQdec), dC + dR);
      rope(buf(kQ) + dN, qk, nh, buf(kQdec) + dC, dC + dR);
    }
    MlaDecodeParams p;
    p.b = in.b;
    p.s_q = T / in.b;
    p.h_q = nh;
    p.d_c = dC;
    p.d_r = dR;
    p.cache = cache_layer(l);
    p.q = buf(kQdec);
    p.block_table = table;
    p.max_blocks = in.max_blocks;
    p.seqlens = seqlens;
    p.scale = d_.softmax_scale;
    p.out = buf(kOlat);
    p.lse = buf(kLse);
    {
      const OpScope t = timed("attn.mla_decode");
      be.mla_decode(p, sz);
    }
    const OpScope t = timed("attn.absorb_o");
    heads(buf(kOlat), 0, L.w_uv, buf(kO), 0);
  } else {
    // Prefill: q with its rope part rotated (through a buffer: in place would race), attention
    // over K/V expanded from the latent.
    const OpScope t = timed("attn.mla_prefill");
    rope(buf(kQ) + dN, qk, nh, buf(kQpe), dR);
    cols(T * nh, dR, buf(kQpe), dR, 0, buf(kQ), qk, dN);
    MlaPrefillParams p;
    p.b = in.b;
    p.n_tokens = T;
    p.h = nh;
    p.d_nope = dN;
    p.d_r = dR;
    p.d_v = dV;
    p.d_c = dC;
    p.cache = cache_layer(l);
    p.q = buf(kQ);
    p.block_table = table;
    p.max_blocks = in.max_blocks;
    p.seqlens = seqlens;
    p.cu_seqlens_q = reinterpret_cast<const int32_t*>(bufs_[kInCuQ]);
    p.kv_b = L.kv_b.data;
    p.kv_b_dtype = L.kv_b.dtype;
    p.scale = d_.softmax_scale;
    p.out = buf(kO);
    be.mla_prefill(p, sz);
  }
  const OpScope t = timed("attn.o_proj");
  gemm(buf(kO), T, L.o_proj, buf(kDelta));
  (void)H;
}

void Engine::mlp(int64_t l, int64_t T) {
  const Layer& L = *layers_[l];
  Backend& be = *be_;
  const int64_t H = d_.hidden;
  auto gemm = [this, T](const float* x, const Weight& w, float* y) { linear(x, T, w, y); };
  if (!L.moe) {
    const OpScope t = timed("mlp.dense");
    gemm(buf(kH), L.gate_up, buf(kGu));
    SiluMulParams s;
    s.rows = T;
    s.inter = d_.inter;
    s.gate = buf(kGu);
    s.up = buf(kGu) + d_.inter;
    s.gate_stride = s.up_stride = 2 * d_.inter;
    s.out = buf(kAct);
    be.silu_mul(s);
    gemm(buf(kAct), L.down, buf(kDelta));
    return;
  }
  {
    const OpScope t = timed("moe.gate");
    gemm(buf(kH), L.gate, buf(kRouter));
  }
  MoeRouteParams r;
  r.t = T;
  r.e = d_.n_experts;
  r.top_k = d_.top_k;
  r.n_group = d_.n_group;
  r.topk_group = d_.topk_group;
  r.method = d_.method;
  r.scoring = d_.scoring;
  r.norm_topk_prob = d_.norm_topk_prob;
  r.routed_scaling_factor = d_.routed_scaling_factor;
  r.logits = buf(kRouter);
  r.bias = L.bias.data ? static_cast<const float*>(L.bias.data) : nullptr;
  r.ids = reinterpret_cast<int32_t*>(bufs_[kIds]);
  r.weights = buf(kRw);
  r.tokens_per_expert = reinterpret_cast<int32_t*>(bufs_[kTpe]);
  r.tokens_per_group = reinterpret_cast<int32_t*>(bufs_[kTpg]);
  {
    const OpScope t = timed("moe.route");
    be.moe_route(r);
  }
  MoeExpertsParams m;
  m.t = T;
  m.hidden = H;
  m.top_k = d_.top_k;
  m.n_experts = d_.n_experts;
  m.inter = d_.moe_inter;
  m.inter_shared = d_.inter_shared;
  m.x = buf(kH);
  m.ids = r.ids;
  m.weights = r.weights;
  m.gate_up = L.experts_gate_up.data;
  m.down = L.experts_down.data;
  m.w_dtype = L.experts_gate_up.dtype;
  m.gate_up_scale = static_cast<const float*>(L.experts_gate_up_scale.data);  // null unless fp8
  m.down_scale = static_cast<const float*>(L.experts_down_scale.data);
  m.shared_gate_up = L.shared_gate_up.data;
  m.shared_down = L.shared_down.data;
  m.shared_dtype = L.shared_gate_up.data ? L.shared_gate_up.dtype : DType::kF32;
  m.shared_gate_up_scale = static_cast<const float*>(L.shared_gate_up.scale);
  m.shared_down_scale = static_cast<const float*>(L.shared_down.scale);
  m.y = buf(kDelta);
  const OpScope t = timed("moe.experts");
  be.moe_experts(m);
}

}  // namespace dsv2::model
