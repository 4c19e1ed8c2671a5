// Row-wise dense ops: embedding, rms_norm, silu_mul, softmax, cast.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_ops.h"
#include "dsv2/config.h"
#include "dsv2/status.h"
#include "../core/dtype.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {
namespace {

// Runs body(begin, end) over rows, on the pool when `parallel`, with chunks sized so that
// each holds at least kMinFlopsPerChunk of work (`row_cost` scalar operations per row).
template <class F>
void for_rows(int64_t rows, int64_t row_cost, bool parallel, F&& body) {
  if (!parallel) return body(int64_t{0}, rows);
  int64_t grain = std::max<int64_t>(1, kMinFlopsPerChunk / std::max<int64_t>(1, row_cost));
  parallel_for(rows, grain, body);
}

}  // namespace

void embedding(const EmbeddingParams& p, bool parallel) {
  for_rows(p.n_tokens, p.hidden, parallel, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      int64_t id = load_index(p.ids, p.ids_dtype, t);
      DSV2_CHECK(id >= 0 && id < p.vocab, kRange,
                 "ids[" << t << "] = " << id << " is outside the vocabulary [0, " << p.vocab << ")");
      float* out = p.out + t * p.hidden;
      for (int64_t j = 0; j < p.hidden; ++j) out[j] = load_float(p.table, p.table_dtype, id * p.hidden + j);
    }
  });
}

void rms_norm(const RmsNormParams& p, bool parallel) {
  for_rows(p.rows, 3 * p.dim, parallel, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* x = p.x + r * (p.x_stride ? p.x_stride : p.dim);
      float* y = p.y + r * p.dim;
      double ss = 0;  // double: a 5120-wide sum of squares stays exact to fp32 rounding
      for (int64_t j = 0; j < p.dim; ++j) ss += static_cast<double>(x[j]) * x[j];
      float inv = static_cast<float>(1.0 / std::sqrt(ss / p.dim + p.eps));
      for (int64_t j = 0; j < p.dim; ++j) y[j] = load_float(p.w, p.w_dtype, j) * (x[j] * inv);
    }
  });
}

void silu_mul(const SiluMulParams& p, bool parallel) {
  for_rows(p.rows, 8 * p.inter, parallel, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* g = p.gate + r * p.gate_stride;
      const float* u = p.up + r * p.up_stride;
      float* o = p.out + r * p.inter;
      for (int64_t j = 0; j < p.inter; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
    }
  });
}

void softmax(const SoftmaxParams& p, bool parallel) {
  for_rows(p.rows, 8 * p.n, parallel, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* x = p.x + r * p.n;
      float* y = p.y + r * p.n;
      float mx = -std::numeric_limits<float>::infinity();
      bool nan = false;
      for (int64_t j = 0; j < p.n; ++j) {
        float v = p.scale * x[j];
        nan = nan || std::isnan(v);
        mx = v > mx ? v : mx;
      }
      if (nan || mx == -std::numeric_limits<float>::infinity()) {
        for (int64_t j = 0; j < p.n; ++j) y[j] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      double sum = 0;
      for (int64_t j = 0; j < p.n; ++j) {
        y[j] = std::exp(p.scale * x[j] - mx);
        sum += y[j];
      }
      float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < p.n; ++j) y[j] *= inv;
    }
  });
}

float softmax_prefix(float* row, int64_t vis, int64_t n, float scale) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < vis; ++t) mx = std::max(mx, row[t] *= scale);
  double sum = 0;
  for (int64_t t = 0; t < vis; ++t) sum += (row[t] = std::exp(row[t] - mx));
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t t = 0; t < vis; ++t) row[t] *= inv;
  std::fill(row + vis, row + n, 0.0f);
  return static_cast<float>(mx + std::log(sum));
}

void cast(const CastParams& p, bool parallel) {
  constexpr int64_t kRow = 4096;  // elements per scheduling unit
  int64_t units = (p.n + kRow - 1) / kRow;
  for_rows(units, kRow, parallel, [&](int64_t b, int64_t e) {
    for (int64_t i = b * kRow, end = std::min(p.n, e * kRow); i < end; ++i) {
      float v = load_float(p.src, p.src_dtype, i);
      switch (p.dst_dtype) {
        case DType::kF32: static_cast<float*>(p.dst)[i] = v; break;
        case DType::kBF16: static_cast<uint16_t*>(p.dst)[i] = f32_to_bf16(v); break;
        case DType::kF16: static_cast<uint16_t*>(p.dst)[i] = f32_to_f16(v); break;
        default: DSV2_FAIL(kInternal, "cast: unchecked dtype " << dtype_name(p.dst_dtype));
      }
    }
  });
}

}  // namespace dsv2::cpu
