// The native model engine's layers (see engine.h): one decoder layer's attention (MLA, absorbed
// decode or prefill) and MLP (dense or DeepSeekMoE), enqueued on the backend op after op.
#include "engine_internal.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "dsv2/ops.h"
#include "dsv2/status.h"

namespace dsv2::model {

using namespace buf_id;

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
