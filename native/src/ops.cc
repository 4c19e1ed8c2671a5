// Argument checks and device dispatch, once, for every op.
#include "dsv2/ops.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <vector>

#include "check.h"
#include "ops_cuda.h"
#include "cpu/cpu_ops.h"
#include "core/fp8.h"
#include "core/thread_pool.h"
#include "dsv2/config.h"
#include "dsv2/status.h"

namespace dsv2::ops {

std::vector<OutSpec> check_embedding(const TensorView& ids, const TensorView& table, EmbeddingParams* p) {
  require_cpu(ids, "ids");
  require_cpu(table, "table");
  require_dtype(ids, "ids", kIndex);
  require_dtype(table, "table", kFloatWeights);
  require_rank(ids, "ids", 1, 4);
  require_rank(table, "table", 2, 2);
  p->n_tokens = ids.numel();
  p->vocab = table.dim(0);
  p->hidden = table.dim(1);
  p->ids = ids.data;
  p->ids_dtype = ids.dtype;
  p->table = table.data;
  p->table_dtype = table.dtype;
  std::vector<int64_t> out = ids.shape;
  out.push_back(p->hidden);
  return {{DType::kF32, out}};
}

void embedding(const EmbeddingParams& p, Impl impl) {
  if (p.device == Device::kCuda) return embedding_cuda(p);
  cpu::embedding(p, parallel(impl));
}

std::vector<OutSpec> check_rms_norm(const TensorView& x, const TensorView& w, double eps, RmsNormParams* p) {
  require_cpu(x, "x");
  require_cpu(w, "weight");
  require_dtype(x, "x", {DType::kF32});
  require_dtype(w, "weight", kFloatWeights);
  require_rank(x, "x", 1, kMaxRank);
  require_rank(w, "weight", 1, 1);
  DSV2_CHECK(w.dim(0) == x.dim(-1), kShape,
             "weight: shape " << shape_str(w.shape) << " does not match the last dim of x " << shape_str(x.shape));
  require_finite(eps, "eps");
  DSV2_CHECK(eps >= 0, kRange, "eps = " << eps << " must be >= 0");
  p->rows = x.rows();
  p->dim = x.dim(-1);
  p->x = static_cast<const float*>(x.data);
  p->w = w.data;
  p->w_dtype = w.dtype;
  p->eps = static_cast<float>(eps);
  return {{DType::kF32, x.shape}};
}

void rms_norm(const RmsNormParams& p, Impl impl) {
  if (p.device == Device::kCuda) return rms_norm_cuda(p);
  cpu::rms_norm(p, parallel(impl));
}

std::vector<OutSpec> check_rope_table(RopeTableParams* p) {
  DSV2_CHECK(p->dim > 0 && p->dim % 2 == 0, kRange, "dim = " << p->dim << " must be a positive even number");
  DSV2_CHECK(p->max_pos >= 0 && p->max_pos <= (int64_t{1} << 24), kRange,
             "maxPositions = " << p->max_pos << " must be in [0, 16777216]");
  require_finite(p->theta, "theta");
  DSV2_CHECK(p->theta > 1, kRange, "theta = " << p->theta << " must be > 1");
  const YarnParams& y = p->yarn;
  if (y.enabled) {
    require_finite(y.factor, "yarn.factor");
    DSV2_CHECK(y.factor > 0, kRange, "yarn.factor = " << y.factor << " must be > 0");
    require_finite(y.original_max_position_embeddings, "yarn.originalMaxPositionEmbeddings");
    DSV2_CHECK(y.original_max_position_embeddings > 0, kRange,
               "yarn.originalMaxPositionEmbeddings = " << y.original_max_position_embeddings << " must be > 0");
    require_finite(y.beta_fast, "yarn.betaFast");
    require_finite(y.beta_slow, "yarn.betaSlow");
    DSV2_CHECK(y.beta_fast > 0 && y.beta_slow > 0, kRange,
               "yarn.betaFast = " << y.beta_fast << " and yarn.betaSlow = " << y.beta_slow << " must be > 0");
    require_finite(y.mscale, "yarn.mscale");
    require_finite(y.mscale_all_dim, "yarn.mscaleAllDim");
  }
  std::vector<int64_t> s = {p->max_pos, p->dim / 2};
  return {{DType::kF32, s}, {DType::kF32, s}};
}

void rope_table(const RopeTableParams& p) { cpu::rope_table(p); }

std::vector<OutSpec> check_rope(const TensorView& x, const TensorView& positions, const TensorView& cos,
                                const TensorView& sin, bool interleaved, RopeParams* p) {
  for (auto [t, n] : {std::pair{&x, "x"}, {&positions, "positions"}, {&cos, "cos"}, {&sin, "sin"}}) require_cpu(*t, n);
  require_dtype(x, "x", {DType::kF32});
  require_dtype(positions, "positions", kIndex);
  require_dtype(cos, "cos", {DType::kF32});
  require_dtype(sin, "sin", {DType::kF32});
  require_rank(x, "x", 2, 3);
  require_rank(positions, "positions", 1, 1);
  require_rank(cos, "cos", 2, 2);
  DSV2_CHECK(sin.shape == cos.shape, kShape,
             "sin: shape " << shape_str(sin.shape) << " differs from cos " << shape_str(cos.shape));
  const int64_t d = x.dim(-1);
  DSV2_CHECK(d % 2 == 0 && cos.dim(1) * 2 == d, kShape,
             "x: last dim " << d << " must be even and twice the table width " << cos.dim(1));
  DSV2_CHECK(positions.dim(0) == x.dim(0), kShape,
             "positions: length " << positions.dim(0) << " differs from x's token count " << x.dim(0));
  p->n_tokens = x.dim(0);
  p->n_heads = x.rank() == 3 ? x.dim(1) : 1;
  p->dim = d;
  p->max_pos = cos.dim(0);
  p->x = static_cast<const float*>(x.data);
  p->positions = positions.data;
  p->positions_dtype = positions.dtype;
  p->cos = static_cast<const float*>(cos.data);
  p->sin = static_cast<const float*>(sin.data);
  p->interleaved = interleaved;
  return {{DType::kF32, x.shape}};
}

void rope(const RopeParams& p, Impl impl) {
  if (p.device == Device::kCuda) return rope_cuda(p);
  cpu::rope(p, parallel(impl));
}

std::vector<OutSpec> check_silu_mul(const TensorView& gate, const TensorView* up, SiluMulParams* p) {
  require_cpu(gate, "gate");
  require_dtype(gate, "gate", {DType::kF32});
  require_rank(gate, "gate", 1, kMaxRank);
  p->rows = gate.rows();
  p->gate = static_cast<const float*>(gate.data);
  if (up) {
    require_cpu(*up, "up");
    require_dtype(*up, "up", {DType::kF32});
    DSV2_CHECK(up->shape == gate.shape, kShape,
               "up: shape " << shape_str(up->shape) << " differs from gate " << shape_str(gate.shape));
    p->inter = gate.dim(-1);
    p->up = static_cast<const float*>(up->data);
    p->gate_stride = p->up_stride = p->inter;
  } else {
    DSV2_CHECK(gate.dim(-1) % 2 == 0, kShape,
               "gate: last dim " << gate.dim(-1) << " must be even when it holds [gate ; up]");
    p->inter = gate.dim(-1) / 2;
    p->up = p->gate + p->inter;
    p->gate_stride = p->up_stride = 2 * p->inter;
  }
  return {{DType::kF32, with_last(gate.shape, p->inter)}};
}

void silu_mul(const SiluMulParams& p, Impl impl) {
  if (p.device == Device::kCuda) return silu_mul_cuda(p);
  cpu::silu_mul(p, parallel(impl));
}

std::vector<OutSpec> check_gemm(const TensorView& x, const TensorView& w, GemmParams* p, const TensorView* scale) {
  require_cpu(x, "x");
  require_cpu(w, "weight");
  require_dtype(x, "x", {DType::kF32});
  if (scale) require_dtype(w, "weight", {DType::kI8, DType::kFP8E4M3});
  else require_dtype(w, "weight", kFloatWeights);
  require_rank(x, "x", 1, kMaxRank);
  require_rank(w, "weight", 2, 2);
  DSV2_CHECK(w.dim(1) == x.dim(-1), kShape,
             "weight: shape " << shape_str(w.shape) << " is [N, K] with K = " << w.dim(1)
                              << ", but x " << shape_str(x.shape) << " has K = " << x.dim(-1));
  if (scale) {
    require_cpu(*scale, "scale");
    require_dtype(*scale, "scale", {DType::kF32});
    const std::vector<int64_t> want = {(w.dim(0) + kWeightBlock - 1) / kWeightBlock, (w.dim(1) + kWeightBlock - 1) / kWeightBlock};
    DSV2_CHECK(scale->shape == want, kShape,
               "scale: shape " << shape_str(scale->shape) << " but a weight of shape " << shape_str(w.shape)
                               << " has " << shape_str(want) << " blocks of " << kWeightBlock << " × " << kWeightBlock);
    const float* sv = static_cast<const float*>(scale->data);
    for (int64_t i = 0; i < want[0] * want[1]; ++i)
      DSV2_CHECK(std::isfinite(sv[i]) && sv[i] > 0, kRange, "scale[" << i << "] = " << sv[i] << " must be finite and > 0");
    p->w_scale = sv;
  }
  p->m = x.rows();
  p->k = x.dim(-1);
  p->n = w.dim(0);
  p->x = static_cast<const float*>(x.data);
  p->w = w.data;
  p->w_dtype = w.dtype;
  return {{DType::kF32, with_last(x.shape, p->n)}};
}

void gemm(const GemmParams& p, Impl impl) {
  if (p.device == Device::kCuda) return gemm_cuda(p);
  if (impl == Impl::kReference) cpu::gemm_ref(p);
  else cpu::gemm_fast(p);
}

std::vector<OutSpec> check_softmax(const TensorView& x, double scale, SoftmaxParams* p) {
  require_cpu(x, "x");
  require_dtype(x, "x", {DType::kF32});
  require_rank(x, "x", 1, kMaxRank);
  require_finite(scale, "scale");
  p->rows = x.rows();
  p->n = x.dim(-1);
  p->scale = static_cast<float>(scale);
  p->x = static_cast<const float*>(x.data);
  return {{DType::kF32, x.shape}};
}

void softmax(const SoftmaxParams& p, Impl impl) {
  if (p.device == Device::kCuda) return softmax_cuda(p);
  cpu::softmax(p, parallel(impl));
}

std::vector<OutSpec> check_sample(const TensorView& logits, SampleParams* p) {
  require_cpu(logits, "logits");
  require_dtype(logits, "logits", {DType::kF32});
  require_rank(logits, "logits", 1, 2);
  DSV2_CHECK(logits.dim(-1) > 0, kShape, "logits: shape " << shape_str(logits.shape) << " has an empty vocabulary");
  require_finite(p->temperature, "temperature");
  DSV2_CHECK(p->temperature >= 0, kRange, "temperature = " << p->temperature << " must be >= 0");
  DSV2_CHECK(p->top_k >= 0, kRange, "topK = " << p->top_k << " must be >= 0 (0 keeps every token)");
  DSV2_CHECK(p->top_p > 0 && p->top_p <= 1, kRange, "topP = " << p->top_p << " must be in (0, 1]");
  p->rows = logits.rows();
  p->vocab = logits.dim(-1);
  p->logits = static_cast<const float*>(logits.data);
  std::vector<int64_t> out(logits.shape.begin(), logits.shape.end() - 1);
  return {{DType::kI32, out}};
}

void sample(const SampleParams& p, Impl impl) { cpu::sample(p, parallel(impl)); }

std::vector<OutSpec> check_cast(const TensorView& x, DType to, CastParams* p) {
  require_cpu(x, "x");
  require_dtype(x, "x", kFloatWeights);
  DSV2_CHECK(to == DType::kF32 || to == DType::kBF16 || to == DType::kF16, kDtype,
             "dtype: cast to " << dtype_name(to) << " is not supported (expected f32, bf16, f16)");
  p->n = x.numel();
  p->src = x.data;
  p->src_dtype = x.dtype;
  p->dst_dtype = to;
  return {{to, x.shape}};
}

void cast(const CastParams& p, Impl impl) { cpu::cast(p, parallel(impl)); }

double copy_bandwidth_seconds(size_t bytes, int iters) {
  DSV2_CHECK(bytes > 0 && bytes <= (size_t{1} << 34), kRange, "bytes = " << bytes << " must be in (0, 16 GiB]");
  DSV2_CHECK(iters >= 1 && iters <= 1000, kRange, "iters = " << iters << " must be in [1, 1000]");
  std::unique_ptr<char[]> src(new char[bytes]), dst(new char[bytes]);
  constexpr int64_t kChunk = 1 << 20;
  const int64_t chunks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  auto copy = [&](bool fill) {
    parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        size_t off = c * kChunk, n = std::min<size_t>(kChunk, bytes - off);
        if (fill) std::memset(src.get() + off, static_cast<int>(c), n);  // touch pages first
        std::memcpy(dst.get() + off, src.get() + off, n);
      }
    });
  };
  copy(true);
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    copy(false);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void quantize_weight(const void* w, DType w_dtype, int64_t n, int64_t k, DType to, void* codes, float* scales, bool parallel) {
  DSV2_CHECK(to == DType::kI8 || to == DType::kFP8E4M3, kDtype, "quantize_weight: to " << dtype_name(to) << " must be i8 or fp8_e4m3");
  DSV2_CHECK(w_dtype == DType::kF32 || w_dtype == DType::kBF16 || w_dtype == DType::kF16, kDtype,
             "quantize_weight: weights of dtype " << dtype_name(w_dtype) << " (f32, bf16 or f16 only)");
  const int64_t rb = (n + kWeightBlock - 1) / kWeightBlock, cb = (k + kWeightBlock - 1) / kWeightBlock;
  // One 128-row band per chunk: its scales, then its codes.
  auto band = [&](int64_t b0, int64_t b1) {
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kWeightBlock, r1 = std::min(n, r0 + kWeightBlock);
      std::vector<float> amax(static_cast<size_t>(cb), 0.0f);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < k; ++j) {
          const float a = std::fabs(load_float(w, w_dtype, r * k + j));
          if (std::isfinite(a) && a > amax[j / kWeightBlock]) amax[j / kWeightBlock] = a;
        }
      for (int64_t c = 0; c < cb; ++c) {
        const float a = amax[c];
        scales[b * cb + c] = a > 0 ? a / (to == DType::kI8 ? 127.0f : kFp8Max) : 1.0f;
      }
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t j = 0; j < k; ++j) row[j] = load_float(w, w_dtype, r * k + j);
        const float* s = scales + b * cb;
        if (to == DType::kI8) {
          int8_t* o = static_cast<int8_t*>(codes) + r * k;
          for (int64_t j = 0; j < k; ++j) {
            const float q = std::nearbyint(row[j] / s[j / kWeightBlock]);  // ties to even; NaN → 0 below
            o[j] = static_cast<int8_t>(q >= 127.0f ? 127 : q <= -127.0f ? -127 : q == q ? static_cast<int>(q) : 0);
          }
        } else {
          uint8_t* o = static_cast<uint8_t*>(codes) + r * k;
          for (int64_t j = 0; j < k; ++j) o[j] = f32_to_e4m3(row[j] / s[j / kWeightBlock]);
        }
      }
    }
  };
  if (parallel) parallel_for(rb, 1, band);
  else band(0, rb);
}

namespace {
// Sum of n bytes as 64-bit words (n % 8 == 0), four independent AVX2 accumulators: loads
// outrun the adds, so the time is the memory's.
__attribute__((target("avx2"))) uint64_t sum_words_avx2(const char* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  alignas(32) uint64_t l[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l), s);
  uint64_t r = l[0] + l[1] + l[2] + l[3];
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    r += w;
  }
  return r;
}

uint64_t sum_words(const char* p, size_t n) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return sum_words_avx2(p, n);
  uint64_t r = 0;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    r += w;
  }
  return r;
}
}  // namespace

double read_bandwidth_seconds(size_t bytes, int iters) {
  DSV2_CHECK(bytes > 0 && bytes <= (size_t{1} << 34), kRange, "bytes = " << bytes << " must be in (0, 16 GiB]");
  DSV2_CHECK(iters >= 1 && iters <= 1000, kRange, "iters = " << iters << " must be in [1, 1000]");
  std::unique_ptr<char[]> src(new char[bytes]);
  constexpr int64_t kChunk = 1 << 20;
  const int64_t chunks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  std::atomic<uint64_t> sink{0};
  auto pass = [&](bool fill) {
    parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
      uint64_t s = 0;
      for (int64_t c = b; c < e; ++c) {
        size_t off = c * kChunk, n = std::min<size_t>(kChunk, bytes - off);
        if (fill) std::memset(src.get() + off, static_cast<int>(c), n);  // touch pages first
        s += sum_words(src.get() + off, n);
      }
      sink += s;  // keeps the sums live
    });
  };
  pass(true);
  double best = 1e30;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    pass(false);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace dsv2::ops
