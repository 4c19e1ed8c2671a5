// gemm y[M, N] = x[M, K] · W[N, K]^T with f32 activations and f32 / bf16 / f16 weights, or
// 8-bit weights (i8, fp8_e4m3) with 128 × 128 block scales.
//
// Reference: one dot product per output, accumulated in double.
// Fast path: the SIMD tiles of gemm_tiles.cc (AVX-512 or AVX2+FMA+F16C, chosen once at run
// time so one binary runs on any x86-64); on other CPUs a portable path (quads of weight rows
// widened to f32, then dot products). DSV2_CPU_ISA lowers the choice (tests run every variant).
#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu_ops.h"
#include "dsv2/config.h"
#include "../core/dtype.h"
#include "../core/fp8.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {

// W[j, k] as f32: the element, or for 8-bit weights code value × its block's scale.
float weight_at(const GemmParams& p, int64_t j, int64_t k) {
  const int64_t i = j * p.k + k;
  if (p.w_dtype == DType::kI8 || p.w_dtype == DType::kFP8E4M3) {
    const float s = p.w_scale[(j / kWeightBlock) * ((p.k + kWeightBlock - 1) / kWeightBlock) + k / kWeightBlock];
    return (p.w_dtype == DType::kI8 ? static_cast<float>(static_cast<const int8_t*>(p.w)[i])
                                    : e4m3_to_f32(static_cast<const uint8_t*>(p.w)[i])) * s;
  }
  return load_float(p.w, p.w_dtype, i);
}

void gemm_ref(const GemmParams& p) {
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.n; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < p.k; ++k) acc += static_cast<double>(p.x[i * p.k + k]) * weight_at(p, j, k);
      p.y[i * p.n + j] = static_cast<float>(acc);
    }
  }
}

namespace {

enum class Isa { kScalar, kAvx2, kAvx512 };

// DSV2_CPU_ISA=scalar|avx2|avx512 lowers (never raises) the ISA: tests use it to run every
// kernel variant on one machine.
Isa detect_isa() {
  Isa best = Isa::kScalar;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) best = Isa::kAvx512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    best = Isa::kAvx2;
#endif
  const char* want = std::getenv("DSV2_CPU_ISA");
  if (!want) return best;
  Isa w = std::string(want) == "avx2" ? Isa::kAvx2 : std::string(want) == "scalar" ? Isa::kScalar : Isa::kAvx512;
  return static_cast<int>(w) < static_cast<int>(best) ? w : best;
}

Isa isa() {
  static const Isa i = detect_isa();
  return i;
}

constexpr int kRows = 4;  // weight rows per micro-kernel call

// ---- the scalar ISA: each quad of weight rows widened to f32 once, then dot products ----
void gemm_quads_scalar(const GemmParams& p, int64_t q0, int64_t q1) {
  thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(kRows * p.k)) buf.resize(kRows * p.k);
  const bool eight_bit = p.w_dtype == DType::kI8 || p.w_dtype == DType::kFP8E4M3;
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t col = q * kRows;
    const int nw = static_cast<int>(std::min<int64_t>(kRows, p.n - col));
    for (int r = 0; r < nw; ++r) {
      float* dst = buf.data() + r * p.k;
      if (eight_bit) widen_8bit(p, col + r, dst);
      else for (int64_t k = 0; k < p.k; ++k) dst[k] = load_float(p.w, p.w_dtype, (col + r) * p.k + k);
    }
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.k;
      for (int r = 0; r < nw; ++r) {
        const float* w = buf.data() + r * p.k;
        float s = 0;
        for (int64_t k = 0; k < p.k; ++k) s += w[k] * x[k];
        p.y[m * p.n + col + r] = s;
      }
    }
  }
}

}  // namespace

const char* gemm_fast_isa() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

void gemm_fast(const GemmParams& p, bool parallel) {
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0) {
    std::fill(p.y, p.y + p.m * p.n, 0.0f);
    return;
  }
  if (gemm_tiles(p, parallel)) return;
  const int64_t quads = (p.n + kRows - 1) / kRows;
  if (!parallel) return gemm_quads_scalar(p, 0, quads);
  parallel_for(quads, std::max<int64_t>(1, kMinFlopsPerChunk / (2 * kRows * p.k * p.m)),
               [&](int64_t b, int64_t e) { gemm_quads_scalar(p, b, e); });
}

}  // namespace dsv2::cpu
