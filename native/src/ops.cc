// Argument checks and device dispatch, once, for every op.
#include "dsv2/ops.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <memory>

#include "check.h"
#include "ops_cuda.h"
#include "cpu/cpu_ops.h"
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

std::vector<OutSpec> check_gemm(const TensorView& x, const TensorView& w, GemmParams* p) {
  require_cpu(x, "x");
  require_cpu(w, "weight");
  require_dtype(x, "x", {DType::kF32});
  require_dtype(w, "weight", kFloatWeights);
  require_rank(x, "x", 1, kMaxRank);
  require_rank(w, "weight", 2, 2);
  DSV2_CHECK(w.dim(1) == x.dim(-1), kShape,
             "weight: shape " << shape_str(w.shape) << " is [N, K] with K = " << w.dim(1)
                              << ", but x " << shape_str(x.shape) << " has K = " << x.dim(-1));
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

}  // namespace dsv2::ops
