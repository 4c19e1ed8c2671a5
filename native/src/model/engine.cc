// The native model engine (see engine.h): weights and activations in one backend's memory,
// the forward of every layer enqueued op after op, and only the requested rows' logits (or
// the sampled tokens) copied back.
#include "engine_internal.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "dsv2/ops.h"
#include "dsv2/status.h"

namespace dsv2::model {

using namespace buf_id;

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


}  // namespace dsv2::model
