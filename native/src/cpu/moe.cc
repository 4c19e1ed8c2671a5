// DeepSeekMoE on the CPU: routing (see MoeRouteParams) and the SwiGLU experts.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "cpu_ops.h"
#include "dsv2/status.h"
#include "../core/dtype.h"
#include "../core/fp8.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {
namespace {

// a ranks before b: larger value first, NaN last, ties to the lower index.
inline bool better(float va, int64_t a, float vb, int64_t b) {
  const bool na = std::isnan(va), nb = std::isnan(vb);
  if (na != nb) return nb;
  if (na) return a < b;
  return va > vb || (va == vb && a < b);
}

void route_token(const MoeRouteParams& p, int64_t tok, std::vector<float>& scores, std::vector<float>& choice,
                 std::vector<int32_t>& order) {
  const float* l = p.logits + tok * p.e;
  if (p.scoring == MoeScoring::kSoftmax) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < p.e; ++i) mx = std::max(mx, l[i]);  // NaN is skipped by max
    double sum = 0;
    for (int64_t i = 0; i < p.e; ++i) sum += std::exp(static_cast<double>(l[i]) - mx);
    for (int64_t i = 0; i < p.e; ++i) scores[i] = static_cast<float>(std::exp(static_cast<double>(l[i]) - mx) / sum);
  } else {
    for (int64_t i = 0; i < p.e; ++i) scores[i] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(l[i]))));
  }
  for (int64_t i = 0; i < p.e; ++i) choice[i] = p.bias ? scores[i] + p.bias[i] : scores[i];

  // Allowed experts: all (greedy) or those of the kept groups.
  std::vector<uint8_t> allowed(p.e, 1);
  if (p.method != MoeMethod::kGreedy) {
    const int64_t per = p.e / p.n_group;
    std::vector<float> gscore(p.n_group);
    for (int64_t g = 0; g < p.n_group; ++g) {
      const float* c = choice.data() + g * per;
      if (p.method == MoeMethod::kGroupLimitedGreedy) {
        float best = NAN;
        for (int64_t i = 0; i < per; ++i)
          if (!std::isnan(c[i]) && (std::isnan(best) || c[i] > best)) best = c[i];
        gscore[g] = best;
      } else {  // noaux_tc: sum of the two best (NaN-free) choices
        float b1 = NAN, b2 = NAN;
        for (int64_t i = 0; i < per; ++i) {
          if (std::isnan(c[i])) continue;
          if (std::isnan(b1) || c[i] > b1) { b2 = b1; b1 = c[i]; }
          else if (std::isnan(b2) || c[i] > b2) b2 = c[i];
        }
        gscore[g] = std::isnan(b2) ? NAN : b1 + b2;
      }
    }
    std::vector<int32_t> gorder(p.n_group);
    std::iota(gorder.begin(), gorder.end(), 0);
    std::stable_sort(gorder.begin(), gorder.end(),
                     [&](int32_t a, int32_t b) { return better(gscore[a], a, gscore[b], b); });
    std::fill(allowed.begin(), allowed.end(), 0);
    for (int64_t k = 0; k < p.topk_group; ++k) {
      const int32_t g = gorder[k];
      if (std::isnan(gscore[g])) break;  // a group with no selectable expert is never kept
      std::fill(allowed.begin() + g * per, allowed.begin() + (g + 1) * per, 1);
    }
  }
  order.clear();
  for (int64_t i = 0; i < p.e; ++i)
    if (allowed[i] && !std::isnan(choice[i])) order.push_back(static_cast<int32_t>(i));
  const int64_t k = std::min<int64_t>(p.top_k, order.size());
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return better(choice[a], a, choice[b], b); });
  int32_t* ids = p.ids + tok * p.top_k;
  float* w = p.weights + tok * p.top_k;
  double sum = 0;
  for (int64_t s = 0; s < p.top_k; ++s) {
    ids[s] = s < k ? order[s] : -1;
    w[s] = s < k ? scores[order[s]] : 0.0f;
    sum += w[s];
  }
  const bool norm = p.norm_topk_prob && p.top_k > 1;
  const bool scale = p.method == MoeMethod::kNoauxTc || !norm;
  for (int64_t s = 0; s < k; ++s) {
    float v = w[s];
    if (norm) v = static_cast<float>(v / (sum + 1e-20));
    if (scale) v *= p.routed_scaling_factor;
    w[s] = v;
  }
}

}  // namespace

void moe_route(const MoeRouteParams& p, bool parallel) {
  auto body = [&](int64_t b, int64_t e) {
    std::vector<float> scores(p.e), choice(p.e);
    std::vector<int32_t> order;
    order.reserve(p.e);
    for (int64_t t = b; t < e; ++t) route_token(p, t, scores, choice, order);
  };
  if (parallel) parallel_for(p.t, std::max<int64_t>(1, 2048 / std::max<int64_t>(1, p.e)), body);
  else body(0, p.t);
  std::fill(p.tokens_per_expert, p.tokens_per_expert + p.e, 0);
  std::fill(p.tokens_per_group, p.tokens_per_group + p.n_group, 0);
  const int64_t per = p.e / p.n_group;
  for (int64_t i = 0; i < p.t * p.top_k; ++i) {
    const int32_t id = p.ids[i];
    if (id < 0) continue;
    ++p.tokens_per_expert[id];
    ++p.tokens_per_group[id / per];
  }
}

namespace {

enum class Run { kReference, kSerial, kParallel };  // gemm_ref, gemm_fast here, gemm_fast on the pool

// One expert's weight matrix [n, k]: f32 | bf16 | f16, or 8-bit codes (fp8 e4m3 or i8) with
// f32 block scales [ceil(n / 128), ceil(k / 128)] (MoeExpertsParams).
struct Weight {
  const void* w = nullptr;
  DType dt = DType::kF32;
  const float* scale = nullptr;  // 8-bit only
};

// y [m, n] = x [m, k] · Wᵀ; gemm decodes 8-bit codes itself (GemmParams::w_scale).
void gemm_w(const float* x, int64_t m, int64_t n, int64_t k, const Weight& wt, float* y, Run run) {
  GemmParams g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.x = x;
  g.w = wt.w;
  g.w_dtype = wt.dt;
  g.w_scale = wt.scale;
  g.y = y;
  if (run == Run::kReference) gemm_ref(g);
  else gemm_fast(g, run == Run::kParallel);
}

// SwiGLU of `rows` tokens through one expert: out [rows, hidden] = down · (silu(gate·x) ⊙ up·x).
void swiglu(const float* x, int64_t rows, int64_t hidden, int64_t inter, const Weight& gate_up, const Weight& down,
            float* out, Run run) {
  std::vector<float> gu(rows * 2 * inter), h(rows * inter);
  gemm_w(x, rows, 2 * inter, hidden, gate_up, gu.data(), run);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < inter; ++j) {
      const float a = gu[r * 2 * inter + j], u = gu[r * 2 * inter + inter + j];
      h[r * inter + j] = a / (1.0f + std::exp(-a)) * u;
    }
  gemm_w(h.data(), rows, hidden, inter, down, out, run);
}

void check_ids(const MoeExpertsParams& p) {
  for (int64_t i = 0; i < p.t * p.top_k; ++i)
    DSV2_CHECK(p.ids[i] >= -1 && p.ids[i] < p.n_experts, kRange,
               "ids[" << i / p.top_k << ", " << i % p.top_k << "] = " << p.ids[i] << " is outside [0, " << p.n_experts
                      << ") (-1 marks an empty slot)");
}

void moe_experts(const MoeExpertsParams& p, bool fast) {
  check_ids(p);
  const size_t wsz = dtype_size(p.w_dtype);
  auto blocks = [](int64_t n) { return (n + kMoeFp8Block - 1) / kMoeFp8Block; };
  // Tokens of each expert: (token, slot) pairs in token order.
  std::vector<std::vector<int64_t>> members(p.n_experts);
  for (int64_t i = 0; i < p.t * p.top_k; ++i)
    if (p.ids[i] >= 0) members[p.ids[i]].push_back(i);
  // Per (token, slot) expert outputs, summed in slot order afterwards (deterministic).
  std::vector<float> slot_out(p.t * p.top_k * p.hidden, 0.0f);
  auto run_expert = [&](int64_t ex) {
    const auto& m = members[ex];
    if (m.empty()) return;
    std::vector<float> xs(m.size() * p.hidden), ys(m.size() * p.hidden);
    for (size_t r = 0; r < m.size(); ++r) std::copy_n(p.x + (m[r] / p.top_k) * p.hidden, p.hidden, xs.data() + r * p.hidden);
    Weight gu{static_cast<const char*>(p.gate_up) + ex * 2 * p.inter * p.hidden * wsz, p.w_dtype, nullptr};
    Weight dn{static_cast<const char*>(p.down) + ex * p.hidden * p.inter * wsz, p.w_dtype, nullptr};
    if (p.w_dtype == DType::kFP8E4M3 || p.w_dtype == DType::kI8) {
      gu.scale = p.gate_up_scale + ex * blocks(2 * p.inter) * blocks(p.hidden);
      dn.scale = p.down_scale + ex * blocks(p.hidden) * blocks(p.inter);
    }
    swiglu(xs.data(), m.size(), p.hidden, p.inter, gu, dn, ys.data(), fast ? Run::kSerial : Run::kReference);
    for (size_t r = 0; r < m.size(); ++r) std::copy_n(ys.data() + r * p.hidden, p.hidden, slot_out.data() + m[r] * p.hidden);
  };
  std::vector<float> shared(p.shared_gate_up ? p.t * p.hidden : 0);
  if (fast) {
    // Only experts that got tokens, largest first, one per chunk: at decode (6 of 64 or 160
    // experts busy) adjacent idle experts must not pull the busy ones into one thread.
    std::vector<int64_t> busy;
    for (int64_t ex = 0; ex < p.n_experts; ++ex)
      if (!members[ex].empty()) busy.push_back(ex);
    std::stable_sort(busy.begin(), busy.end(),
                     [&](int64_t a, int64_t b) { return members[a].size() > members[b].size(); });
    parallel_for(static_cast<int64_t>(busy.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) run_expert(busy[i]);
    });
    if (p.shared_gate_up)
      swiglu(p.x, p.t, p.hidden, p.inter_shared, {p.shared_gate_up, p.shared_dtype, p.shared_gate_up_scale},
             {p.shared_down, p.shared_dtype, p.shared_down_scale}, shared.data(), Run::kParallel);
  } else {
    for (int64_t ex = 0; ex < p.n_experts; ++ex) run_expert(ex);
    if (p.shared_gate_up)
      swiglu(p.x, p.t, p.hidden, p.inter_shared, {p.shared_gate_up, p.shared_dtype, p.shared_gate_up_scale},
             {p.shared_down, p.shared_dtype, p.shared_down_scale}, shared.data(), Run::kReference);
  }
  for (int64_t t = 0; t < p.t; ++t) {
    float* y = p.y + t * p.hidden;
    std::fill(y, y + p.hidden, 0.0f);
    for (int64_t s = 0; s < p.top_k; ++s) {
      if (p.ids[t * p.top_k + s] < 0) continue;
      const float w = p.weights[t * p.top_k + s];
      const float* o = slot_out.data() + (t * p.top_k + s) * p.hidden;
      for (int64_t j = 0; j < p.hidden; ++j) y[j] += w * o[j];
    }
    if (p.shared_gate_up)
      for (int64_t j = 0; j < p.hidden; ++j) y[j] += shared[t * p.hidden + j];
  }
}

}  // namespace

void moe_experts_ref(const MoeExpertsParams& p) { moe_experts(p, false); }
void moe_experts_fast(const MoeExpertsParams& p) { moe_experts(p, true); }

}  // namespace dsv2::cpu
