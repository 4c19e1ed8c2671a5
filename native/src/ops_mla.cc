// Checks and dispatch of the MLA, FP8 and KV-cache ops.
#include <algorithm>
#include <string>

#include "check.h"
#include "cpu/cpu_ops.h"
#include "dsv2/ops.h"
#include "ops_cuda.h"

namespace dsv2::ops {
namespace {

std::string dims(std::initializer_list<int64_t> d) { return shape_str(std::vector<int64_t>(d)); }

}  // namespace

void check_kv_layout(const KvLayout& L, int64_t layers, int64_t pages) {
  DSV2_CHECK(L.dtype == DType::kF32 || L.dtype == DType::kBF16 || L.dtype == DType::kFP8E4M3, kDtype,
             "dtype: a KV cache holds f32, bf16 or fp8, not " << dtype_name(L.dtype));
  DSV2_CHECK(L.d_c >= 1 && L.d_c <= 65536, kRange, "dC = " << L.d_c << " must be in [1, 65536]");
  DSV2_CHECK(L.d_r >= 0 && L.d_r <= 65536 && L.d_r % 2 == 0, kRange, "dR = " << L.d_r << " must be even, in [0, 65536]");
  DSV2_CHECK(L.page_size >= 1 && L.page_size <= 4096, kRange, "pageSize = " << L.page_size << " must be in [1, 4096]");
  DSV2_CHECK(layers >= 1 && layers <= 4096, kRange, "layers = " << layers << " must be in [1, 4096]");
  DSV2_CHECK(pages >= 1 && pages <= (int64_t{1} << 30), kRange, "pages = " << pages << " must be in [1, 2^30]");
}

std::vector<OutSpec> check_kv_append(const KvCacheView& c, const TensorView& c_kv, const TensorView& k_pe,
                                     const TensorView& slots, KvAppendParams* p) {
  for (auto [t, n] : {std::pair{&c_kv, "cKv"}, {&k_pe, "kPe"}, {&slots, "slots"}}) require_cpu(*t, n);
  require_dtype(c_kv, "cKv", {DType::kF32});
  require_dtype(k_pe, "kPe", {DType::kF32});
  require_dtype(slots, "slots", kIndex);
  require_rank(slots, "slots", 1, 1);
  const int64_t n = slots.dim(0);
  require_shape(c_kv, "cKv", {n, c.layout.d_c}, ("[tokens, dC] = " + dims({n, c.layout.d_c})).c_str());
  require_shape(k_pe, "kPe", {n, c.layout.d_r}, ("[tokens, dR] = " + dims({n, c.layout.d_r})).c_str());
  p->cache = c;
  p->n_tokens = n;
  p->c_kv = static_cast<const float*>(c_kv.data);
  p->k_pe = static_cast<const float*>(k_pe.data);
  p->slots = slots.data;
  p->slots_dtype = slots.dtype;
  return {};
}

void kv_append(const KvAppendParams& p, Impl impl) {
  if (p.cache.device == Device::kCuda) return kv_append_cuda(p);
  cpu::kv_append(p, parallel(impl));
}

std::vector<OutSpec> check_kv_read(const KvCacheView& c, const TensorView& slots, KvReadParams* p) {
  require_cpu(slots, "slots");
  require_dtype(slots, "slots", kIndex);
  require_rank(slots, "slots", 1, 1);
  p->cache = c;
  p->n_tokens = slots.dim(0);
  p->slots = slots.data;
  p->slots_dtype = slots.dtype;
  return {{DType::kF32, {p->n_tokens, c.layout.d_c}}, {DType::kF32, {p->n_tokens, c.layout.d_r}}};
}

void kv_read(const KvReadParams& p, Impl impl) {
  if (p.cache.device == Device::kCuda) return kv_read_cuda(p);
  cpu::kv_read(p, parallel(impl));
}

std::vector<OutSpec> check_heads_gemm(const TensorView& x, const TensorView& w, HeadsGemmParams* p) {
  require_cpu(x, "x");
  require_cpu(w, "weight");
  require_dtype(x, "x", {DType::kF32});
  require_dtype(w, "weight", kFloatWeights);
  require_rank(x, "x", 3, 3);
  require_rank(w, "weight", 3, 3);
  DSV2_CHECK(w.dim(0) == x.dim(1) && w.dim(2) == x.dim(2), kShape,
             "weight: shape " << shape_str(w.shape) << " must be [heads, N, K] = [" << x.dim(1) << ", N, " << x.dim(2)
                              << "] for x " << shape_str(x.shape) << " = [tokens, heads, K]");
  p->t = x.dim(0);
  p->h = x.dim(1);
  p->k = x.dim(2);
  p->n = w.dim(1);
  p->x = static_cast<const float*>(x.data);
  p->w = w.data;
  p->w_dtype = w.dtype;
  return {{DType::kF32, {p->t, p->h, p->n}}};
}

void heads_gemm(const HeadsGemmParams& p, Impl impl) { cpu::heads_gemm(p, parallel(impl)); }

namespace {

// block_table [b, max_blocks] i32 and seqlens [b] i32, shared by decode and prefill.
void check_tables(const TensorView& block_table, const TensorView& seqlens, int64_t b) {
  require_cpu(block_table, "blockTable");
  require_cpu(seqlens, "seqlens");
  require_dtype(block_table, "blockTable", {DType::kI32});
  require_dtype(seqlens, "seqlens", {DType::kI32});
  require_shape(block_table, "blockTable", {b, -1}, ("[b, maxBlocks] with b = " + std::to_string(b)).c_str());
  require_shape(seqlens, "seqlens", {b}, ("[b] = [" + std::to_string(b) + "]").c_str());
}

}  // namespace

std::vector<OutSpec> check_mla_decode(const TensorView& q, const KvCacheView& c, const TensorView& block_table,
                                      const TensorView& seqlens, double scale, int64_t split_tokens, MlaDecodeParams* p) {
  require_cpu(q, "q");
  require_dtype(q, "q", {DType::kF32});
  require_rank(q, "q", 4, 4);
  const int64_t d = c.layout.d_c + c.layout.d_r;
  DSV2_CHECK(q.dim(3) == d, kShape,
             "q: last dim " << q.dim(3) << " must be dC + dR = " << c.layout.d_c << " + " << c.layout.d_r << " = " << d
                            << " (q_nope already absorbed into the latent space)");
  check_tables(block_table, seqlens, q.dim(0));
  require_finite(scale, "scale");
  DSV2_CHECK(split_tokens >= 0, kRange, "splitTokens = " << split_tokens << " must be >= 0 (0 = automatic)");
  p->b = q.dim(0);
  p->s_q = q.dim(1);
  p->h_q = q.dim(2);
  p->d_c = c.layout.d_c;
  p->d_r = c.layout.d_r;
  p->cache = c;
  p->q = static_cast<const float*>(q.data);
  p->block_table = static_cast<const int32_t*>(block_table.data);
  p->max_blocks = block_table.dim(1);
  p->seqlens = static_cast<const int32_t*>(seqlens.data);
  p->scale = static_cast<float>(scale);
  p->split_tokens = split_tokens;
  return {{DType::kF32, {p->b, p->s_q, p->h_q, p->d_c}}, {DType::kF32, {p->b, p->s_q, p->h_q}}};
}

void mla_decode(const MlaDecodeParams& p, Impl impl) {
  if (p.cache.device == Device::kCuda) return mla_decode_cuda(p);
  // auto: tiny problems (a small model's decode step) skip the split/GEMM machinery, whose
  // fixed costs (partials, pool wake-ups) dominate below ~10^5 multiply-adds.
  double keys = 0;
  for (int64_t i = 0; i < p.b; ++i) keys += std::max<int32_t>(0, p.seqlens[i]);
  const double work = static_cast<double>(p.s_q) * p.h_q * (p.d_c + p.d_r) * keys;
  if (impl == Impl::kReference || (impl == Impl::kAuto && work < 1e5)) cpu::mla_decode_ref(p);
  else cpu::mla_decode_fast(p);
}

std::vector<OutSpec> check_mla_prefill(const TensorView& q, const KvCacheView& c, const TensorView& block_table,
                                       const TensorView& seqlens, const TensorView& cu_seqlens_q, const TensorView& kv_b,
                                       double scale, int64_t d_nope, int64_t d_v, MlaPrefillParams* p) {
  require_cpu(q, "q");
  require_cpu(cu_seqlens_q, "cuSeqlensQ");
  require_cpu(kv_b, "kvB");
  require_dtype(q, "q", {DType::kF32});
  require_dtype(cu_seqlens_q, "cuSeqlensQ", {DType::kI32});
  require_dtype(kv_b, "kvB", kFloatWeights);
  require_rank(q, "q", 3, 3);
  require_rank(cu_seqlens_q, "cuSeqlensQ", 1, 1);
  DSV2_CHECK(d_nope >= 0 && d_nope <= 65536 && d_v >= 1 && d_v <= 65536, kRange,
             "dNope = " << d_nope << " must be in [0, 65536] and dV = " << d_v << " in [1, 65536]");
  const int64_t b = cu_seqlens_q.dim(0) - 1;
  DSV2_CHECK(b >= 0, kShape, "cuSeqlensQ: shape " << shape_str(cu_seqlens_q.shape) << " must be [b + 1]");
  check_tables(block_table, seqlens, b);
  const int64_t h = q.dim(1);
  DSV2_CHECK(q.dim(2) == d_nope + c.layout.d_r, kShape,
             "q: last dim " << q.dim(2) << " must be dNope + dR = " << d_nope << " + " << c.layout.d_r);
  DSV2_CHECK(static_cast<double>(h) * (d_nope + d_v) <= 9007199254740991.0, kShape,
             "q: " << h << " heads × (dNope + dV) = " << d_nope + d_v << " is too large");
  const std::vector<int64_t> want = {h * (d_nope + d_v), c.layout.d_c};
  require_shape(kv_b, "kvB", want,
                ("[heads · (dNope + dV), dC] = " + shape_str(want) + " (kv_b_proj.weight)").c_str());
  require_finite(scale, "scale");
  p->b = b;
  p->n_tokens = q.dim(0);
  p->h = h;
  p->d_nope = d_nope;
  p->d_r = c.layout.d_r;
  p->d_v = d_v;
  p->d_c = c.layout.d_c;
  p->cache = c;
  p->q = static_cast<const float*>(q.data);
  p->block_table = static_cast<const int32_t*>(block_table.data);
  p->max_blocks = block_table.dim(1);
  p->seqlens = static_cast<const int32_t*>(seqlens.data);
  p->cu_seqlens_q = static_cast<const int32_t*>(cu_seqlens_q.data);
  p->kv_b = kv_b.data;
  p->kv_b_dtype = kv_b.dtype;
  p->scale = static_cast<float>(scale);
  return {{DType::kF32, {p->n_tokens, h, d_v}}};
}

void mla_prefill(const MlaPrefillParams& p, Impl impl) {
  if (p.cache.device == Device::kCuda) return mla_prefill_cuda(p);
  if (impl == Impl::kReference) cpu::mla_prefill_ref(p);
  else cpu::mla_prefill_fast(p);
}

namespace {

std::vector<int64_t> scale_shape(Fp8Granularity g, int64_t rows, int64_t n, int64_t tile) {
  switch (g) {
    case Fp8Granularity::kTensor: return {1};
    case Fp8Granularity::kToken: return {rows};
    default: return {rows, (n + tile - 1) / tile};
  }
}

}  // namespace

std::vector<OutSpec> check_fp8_quantize(const TensorView& x, Fp8Granularity g, int64_t tile, bool pow2,
                                        const TensorView* given, Fp8QuantParams* p) {
  require_cpu(x, "x");
  require_dtype(x, "x", {DType::kF32});
  require_rank(x, "x", 1, 8);
  DSV2_CHECK(tile >= 1 && tile <= (int64_t{1} << 20), kRange, "tileSize = " << tile << " must be in [1, 2^20]");
  p->rows = x.rows();
  p->n = x.dim(-1);
  p->tile = tile;
  p->granularity = g;
  p->pow2 = pow2;
  p->x = static_cast<const float*>(x.data);
  const std::vector<int64_t> sshape = scale_shape(g, p->rows, p->n, tile);
  if (given) {
    require_cpu(*given, "scales");
    require_dtype(*given, "scales", {DType::kF32});
    require_shape(*given, "scales", sshape, ("the granularity's " + shape_str(sshape)).c_str());
    const float* v = static_cast<const float*>(given->data);
    for (int64_t i = 0; i < given->numel(); ++i)
      DSV2_CHECK(std::isfinite(v[i]) && v[i] > 0, kRange, "scales[" << i << "] = " << v[i] << " must be finite and > 0");
    p->given_scales = v;
  }
  return {{DType::kFP8E4M3, x.shape}, {DType::kF32, sshape}};
}

void fp8_quantize(const Fp8QuantParams& p, Impl impl) { cpu::fp8_quantize(p, parallel(impl)); }

std::vector<OutSpec> check_fp8_dequantize(const TensorView& codes, const TensorView& scales, Fp8Granularity g,
                                          int64_t tile, Fp8DequantParams* p) {
  require_cpu(codes, "codes");
  require_cpu(scales, "scales");
  require_dtype(codes, "codes", {DType::kFP8E4M3});
  require_dtype(scales, "scales", {DType::kF32});
  require_rank(codes, "codes", 1, 8);
  DSV2_CHECK(tile >= 1 && tile <= (int64_t{1} << 20), kRange, "tileSize = " << tile << " must be in [1, 2^20]");
  p->rows = codes.rows();
  p->n = codes.dim(-1);
  const std::vector<int64_t> want = scale_shape(g, p->rows, p->n, tile);
  require_shape(scales, "scales", want, ("the granularity's " + shape_str(want)).c_str());
  p->tile = tile;
  p->granularity = g;
  p->codes = static_cast<const uint8_t*>(codes.data);
  p->scales = static_cast<const float*>(scales.data);
  return {{DType::kF32, codes.shape}};
}

void fp8_dequantize(const Fp8DequantParams& p, Impl impl) { cpu::fp8_dequantize(p, parallel(impl)); }

}  // namespace dsv2::ops
