// Rotary position embedding with YaRN, after DeepseekV2YarnRotaryEmbedding and
// apply_rotary_pos_emb of the published modeling_deepseek.py. Tables are computed in double
// and stored in f32 (the modeling code computes them in f32; at positions near 160k its
// angles carry ~1e-2 rad of rounding, ours ~1e-11).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "dsv2/status.h"
#include "../core/dtype.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Inverse dim of the rotation that completes num_rotations turns over max_pos positions.
double yarn_find_correction_dim(double num_rotations, double dim, double base, double max_pos) {
  return (dim * std::log(max_pos / (num_rotations * 2 * kPi))) / (2 * std::log(base));
}

}  // namespace

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

void rope_table(const RopeTableParams& p) {
  const int64_t half = p.dim / 2;
  std::vector<double> inv_freq(half);
  double mscale = 1.0;
  const YarnParams& y = p.yarn;
  double low = 0, high = 0;
  if (y.enabled) {
    low = std::floor(yarn_find_correction_dim(y.beta_fast, p.dim, p.theta, y.original_max_position_embeddings));
    high = std::ceil(yarn_find_correction_dim(y.beta_slow, p.dim, p.theta, y.original_max_position_embeddings));
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(p.dim - 1));
    if (low == high) high += 0.001;  // avoid a zero-width ramp
    mscale = yarn_get_mscale(y.factor, y.mscale) / yarn_get_mscale(y.factor, y.mscale_all_dim);
  }
  for (int64_t i = 0; i < half; ++i) {
    double extra = 1.0 / std::pow(p.theta, static_cast<double>(2 * i) / p.dim);
    if (!y.enabled) {
      inv_freq[i] = extra;
      continue;
    }
    double inter = extra / y.factor;
    double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    double extra_mask = 1.0 - ramp;  // 1 = keep the original (extrapolated) frequency
    inv_freq[i] = inter * (1.0 - extra_mask) + extra * extra_mask;
  }
  for (int64_t pos = 0; pos < p.max_pos; ++pos) {
    for (int64_t i = 0; i < half; ++i) {
      double a = static_cast<double>(pos) * inv_freq[i];
      p.cos[pos * half + i] = static_cast<float>(std::cos(a) * mscale);
      p.sin[pos * half + i] = static_cast<float>(std::sin(a) * mscale);
    }
  }
}

void rope(const RopeParams& p, bool parallel) {
  const int64_t half = p.dim / 2;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      int64_t pos = load_index(p.positions, p.positions_dtype, t);
      DSV2_CHECK(pos >= 0 && pos < p.max_pos, kRange,
                 "positions[" << t << "] = " << pos << " is outside the rope table [0, " << p.max_pos << ")");
      const float* c = p.cos + pos * half;
      const float* s = p.sin + pos * half;
      for (int64_t h = 0; h < p.n_heads; ++h) {
        const float* x = p.x + (t * p.n_heads + h) * (p.x_stride ? p.x_stride : p.dim);
        float* o = p.out + (t * p.n_heads + h) * (p.out_stride ? p.out_stride : p.dim);
        for (int64_t i = 0; i < half; ++i) {
          float a = p.interleaved ? x[2 * i] : x[i];
          float bb = p.interleaved ? x[2 * i + 1] : x[i + half];
          o[i] = a * c[i] - bb * s[i];
          o[i + half] = bb * c[i] + a * s[i];
        }
      }
    }
  };
  if (!parallel) return body(0, p.n_tokens);
  parallel_for(p.n_tokens, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, p.n_heads * p.dim)), body);
}

}  // namespace dsv2::cpu
