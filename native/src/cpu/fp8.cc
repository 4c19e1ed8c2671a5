// FP8 E4M3 quantize / dequantize with explicit scale groups (tensor, token, 128-tile).
#include <algorithm>
#include <cmath>

#include "cpu_ops.h"
#include "../core/fp8.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {
namespace {

// Scale groups as (row range, column range): tensor = one group over everything; token = a
// row; tile = [row, tile·t, tile·(t+1)).
struct Groups {
  int64_t count, per_row;
  int64_t tile;
};

Groups groups_of(Fp8Granularity g, int64_t rows, int64_t n, int64_t tile) {
  switch (g) {
    case Fp8Granularity::kTensor: return {1, 1, n};
    case Fp8Granularity::kToken: return {rows, 1, n};
    default: {
      int64_t per_row = n == 0 ? 0 : (n + tile - 1) / tile;
      return {rows * per_row, per_row, tile};
    }
  }
}

}  // namespace

void fp8_quantize(const Fp8QuantParams& p, bool parallel) {
  if (p.granularity == Fp8Granularity::kTensor) {
    float amax = 0.0f;
    for (int64_t i = 0; i < p.rows * p.n; ++i) {
      float a = std::fabs(p.x[i]);
      if (std::isfinite(a) && a > amax) amax = a;
    }
    const float s = p.given_scales ? p.given_scales[0] : fp8_scale(amax, p.pow2);
    p.scales[0] = s;
    auto body = [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p.codes[i] = f32_to_e4m3(p.x[i] / s);
    };
    if (parallel) parallel_for(p.rows * p.n, 4096, body);
    else body(0, p.rows * p.n);
    return;
  }
  const Groups g = groups_of(p.granularity, p.rows, p.n, p.tile);
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t gi = b; gi < e; ++gi) {
      const int64_t row = gi / g.per_row, t = gi % g.per_row;
      const int64_t c0 = t * g.tile, c1 = std::min(p.n, c0 + g.tile);
      const float* x = p.x + row * p.n;
      float amax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) {
        float a = std::fabs(x[c]);
        if (std::isfinite(a) && a > amax) amax = a;
      }
      const float s = p.given_scales ? p.given_scales[gi] : fp8_scale(amax, p.pow2);
      p.scales[gi] = s;
      for (int64_t c = c0; c < c1; ++c) p.codes[row * p.n + c] = f32_to_e4m3(x[c] / s);
    }
  };
  if (parallel) parallel_for(g.count, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, g.tile)), body);
  else body(0, g.count);
}

void fp8_dequantize(const Fp8DequantParams& p, bool parallel) {
  const Groups g = groups_of(p.granularity, p.rows, p.n, p.tile);
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t row = i / std::max<int64_t>(1, p.n), col = i - row * p.n;
      int64_t gi = p.granularity == Fp8Granularity::kTensor ? 0
                   : p.granularity == Fp8Granularity::kToken ? row
                                                              : row * g.per_row + col / g.tile;
      p.y[i] = e4m3_to_f32(p.codes[i]) * p.scales[gi];
    }
  };
  if (parallel) parallel_for(p.rows * p.n, 4096, body);
  else body(0, p.rows * p.n);
}

}  // namespace dsv2::cpu
