// gemm y[M, N] = x[M, K] · W[N, K]^T with f32 activations and f32/bf16/f16 weights.
//
// Reference: one dot product per output, accumulated in double.
// Fast path: the thread pool splits N into quads of weight rows; each quad is widened to
// f32 once (if stored in 16 bits) into a thread-local buffer, then a 4×2 register-blocked
// micro-kernel (4 weight rows × 2 activation rows, 8 vector accumulators) walks K. At
// decode sizes (M small) this streams each weight byte from memory exactly once; at large
// M the kernel is compute-bound (see bench/NOTES.md). The ISA (AVX-512F, AVX2+FMA+F16C or
// scalar) is chosen once at run time so one binary runs on any x86-64.
// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_* "may be used
// uninitialized"): a known false positive of the intrinsics, not of this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

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

// ---- widening of 16-bit weight rows to f32 ------------------------------------------
__attribute__((target("avx512f"))) void widen_avx512(const uint16_t* s, DType t, int64_t n, float* d) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    __m512 v = t == DType::kBF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                 : _mm512_cvtph_ps(h);
    _mm512_storeu_ps(d + i, v);
  }
  for (; i < n; ++i) d[i] = t == DType::kBF16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
}

__attribute__((target("avx2,f16c"))) void widen_avx2(const uint16_t* s, DType t, int64_t n, float* d) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    __m256 v = t == DType::kBF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                                 : _mm256_cvtph_ps(h);
    _mm256_storeu_ps(d + i, v);
  }
  for (; i < n; ++i) d[i] = t == DType::kBF16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
}

// ---- micro-kernels: y[m, col + r] = x[m, :] · w[r][:] for r < nw ---------------------
__attribute__((target("avx512f"))) void kernel_avx512(const GemmParams& p, const float* const* w, int nw, int64_t col) {
  const int64_t K = p.k;
  const __mmask16 tail = static_cast<__mmask16>((1u << (K % 16)) - 1u);
  const int64_t kmain = K - K % 16;
  for (int64_t m = 0; m < p.m; m += 2) {
    const bool two = m + 1 < p.m;
    const float* x0 = p.x + m * K;
    const float* x1 = two ? x0 + K : x0;
    __m512 acc[kRows][2];
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kmain; k += 16) {
      __m512 a = _mm512_loadu_ps(x0 + k), b = _mm512_loadu_ps(x1 + k);
      for (int r = 0; r < kRows; ++r) {
        __m512 wv = _mm512_loadu_ps(w[r] + k);
        acc[r][0] = _mm512_fmadd_ps(wv, a, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(wv, b, acc[r][1]);
      }
    }
    if (tail) {
      __m512 a = _mm512_maskz_loadu_ps(tail, x0 + kmain), b = _mm512_maskz_loadu_ps(tail, x1 + kmain);
      for (int r = 0; r < kRows; ++r) {
        __m512 wv = _mm512_maskz_loadu_ps(tail, w[r] + kmain);
        acc[r][0] = _mm512_fmadd_ps(wv, a, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(wv, b, acc[r][1]);
      }
    }
    for (int r = 0; r < nw; ++r) {
      p.y[m * p.n + col + r] = _mm512_reduce_add_ps(acc[r][0]);
      if (two) p.y[(m + 1) * p.n + col + r] = _mm512_reduce_add_ps(acc[r][1]);
    }
  }
}

__attribute__((target("avx2,fma"))) float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) void kernel_avx2(const GemmParams& p, const float* const* w, int nw, int64_t col) {
  const int64_t K = p.k, kmain = K - K % 8;
  for (int64_t m = 0; m < p.m; m += 2) {
    const bool two = m + 1 < p.m;
    const float* x0 = p.x + m * K;
    const float* x1 = two ? x0 + K : x0;
    __m256 acc[kRows][2];
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kmain; k += 8) {
      __m256 a = _mm256_loadu_ps(x0 + k), b = _mm256_loadu_ps(x1 + k);
      for (int r = 0; r < kRows; ++r) {
        __m256 wv = _mm256_loadu_ps(w[r] + k);
        acc[r][0] = _mm256_fmadd_ps(wv, a, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(wv, b, acc[r][1]);
      }
    }
    for (int r = 0; r < nw; ++r) {
      float s0 = hsum_avx2(acc[r][0]), s1 = hsum_avx2(acc[r][1]);
      for (int64_t k = kmain; k < K; ++k) {
        s0 += w[r][k] * x0[k];
        s1 += w[r][k] * x1[k];
      }
      p.y[m * p.n + col + r] = s0;
      if (two) p.y[(m + 1) * p.n + col + r] = s1;
    }
  }
}

void kernel_scalar(const GemmParams& p, const float* const* w, int nw, int64_t col) {
  for (int64_t m = 0; m < p.m; ++m) {
    const float* x = p.x + m * p.k;
    for (int r = 0; r < nw; ++r) {
      float s = 0;
      for (int64_t k = 0; k < p.k; ++k) s += w[r][k] * x[k];
      p.y[m * p.n + col + r] = s;
    }
  }
}

// ---- bf16 weights, AVX-512: widening in registers ------------------------------------
// A 512-bit load holds 32 bf16 weights as 16 32-bit lanes, each (w[2j] low, w[2j+1] high).
// `lane << 16` is w[2j] as f32 and `lane & 0xffff0000` is w[2j+1]: two ops widen 32
// weights. x is pre-split to match (xs: per 32-chunk, 16 even then 16 odd elements), so
// the products pair up; K % 32 leftovers are added in scalar code.
void split_even_odd(const GemmParams& p, float* xs) {
  const int64_t kc = p.k / 32 * 32;
  for (int64_t m = 0; m < p.m; ++m) {
    const float* x = p.x + m * p.k;
    float* d = xs + m * kc;
    for (int64_t c = 0; c < kc; c += 32)
      for (int j = 0; j < 16; ++j) {
        d[c + j] = x[c + 2 * j];
        d[c + 16 + j] = x[c + 2 * j + 1];
      }
  }
}

// One pass of MR activation rows (m0..m0+MR) against kRows weight rows: MR·kRows
// accumulators; each widened weight vector feeds MR FMAs so wider MR amortises the widening.
template <int MR>
__attribute__((target("avx512f"))) void bf16_rows_avx512(const GemmParams& p, const float* xs, const uint16_t* const* w,
                                                        int nw, int64_t col, int64_t m0) {
  const int64_t K = p.k, kc = K / 32 * 32;
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  __m512 acc[kRows][MR];
  for (int r = 0; r < kRows; ++r)
    for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; k += 32) {
    __m512 xe[MR], xo[MR];
    for (int i = 0; i < MR; ++i) {
      xe[i] = _mm512_loadu_ps(xs + (m0 + i) * kc + k);
      xo[i] = _mm512_loadu_ps(xs + (m0 + i) * kc + k + 16);
    }
    for (int r = 0; r < kRows; ++r) {
      __m512i v = _mm512_loadu_si512(w[r] + k);
      __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));
      for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_fmadd_ps(we, xe[i], _mm512_fmadd_ps(wo, xo[i], acc[r][i]));
    }
  }
  for (int r = 0; r < nw; ++r) {
    for (int i = 0; i < MR; ++i) {
      const float* x = p.x + (m0 + i) * K;
      float s = _mm512_reduce_add_ps(acc[r][i]);
      for (int64_t k = kc; k < K; ++k) s += bf16_to_f32(w[r][k]) * x[k];
      p.y[(m0 + i) * p.n + col + r] = s;
    }
  }
}

// 4 weight rows × all M rows, 4 activation rows at a time (16 accumulators + 8 activation
// vectors + 2 weight vectors fit AVX-512's 32 registers), then 2, then 1.
__attribute__((target("avx512f"))) void kernel_bf16_avx512(const GemmParams& p, const float* xs, int64_t col, int nw) {
  const uint16_t* w[kRows];
  for (int r = 0; r < kRows; ++r) w[r] = static_cast<const uint16_t*>(p.w) + (col + std::min(r, nw - 1)) * p.k;
  int64_t m = 0;
  for (; m + 4 <= p.m; m += 4) bf16_rows_avx512<4>(p, xs, w, nw, col, m);
  for (; m + 2 <= p.m; m += 2) bf16_rows_avx512<2>(p, xs, w, nw, col, m);
  for (; m < p.m; ++m) bf16_rows_avx512<1>(p, xs, w, nw, col, m);
}

// Computes output columns [4*q0, 4*q1) of every row.
void gemm_quads(const GemmParams& p, const float* xs, int64_t q0, int64_t q1) {
  const Isa which = isa();
  if (xs) {  // bf16 weights on AVX-512
    for (int64_t q = q0; q < q1; ++q)
      kernel_bf16_avx512(p, xs, q * kRows, static_cast<int>(std::min<int64_t>(kRows, p.n - q * kRows)));
    return;
  }
  thread_local std::vector<float> buf;
  const bool wide = p.w_dtype == DType::kF32;
  const bool eight_bit = p.w_dtype == DType::kI8 || p.w_dtype == DType::kFP8E4M3;
  if (!wide && buf.size() < static_cast<size_t>(kRows * p.k)) buf.resize(kRows * p.k);
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t col = q * kRows;
    const int nw = static_cast<int>(std::min<int64_t>(kRows, p.n - col));
    const float* w[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t row = col + std::min(r, nw - 1);  // pad a short quad with its last row
      if (wide) {
        w[r] = static_cast<const float*>(p.w) + row * p.k;
        continue;
      }
      float* dst = buf.data() + r * p.k;
      if (r < nw && eight_bit) {
        widen_8bit(p, row, dst);
      } else if (r < nw) {
        const uint16_t* src = static_cast<const uint16_t*>(p.w) + row * p.k;
        if (which == Isa::kAvx512) widen_avx512(src, p.w_dtype, p.k, dst);
        else if (which == Isa::kAvx2) widen_avx2(src, p.w_dtype, p.k, dst);
        else for (int64_t k = 0; k < p.k; ++k) dst[k] = load_float(src, p.w_dtype, k);
      }
      w[r] = buf.data() + std::min(r, nw - 1) * p.k;
    }
    if (which == Isa::kAvx512) kernel_avx512(p, w, nw, col);
    else if (which == Isa::kAvx2) kernel_avx2(p, w, nw, col);
    else kernel_scalar(p, w, nw, col);
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
  if (p.m == 1 && gemv_fast(p, parallel)) return;
  const int64_t quads = (p.n + kRows - 1) / kRows;
  const int64_t flops_per_quad = 2 * kRows * p.k * p.m;
  std::vector<float> xs;
  if (p.w_dtype == DType::kBF16 && isa() == Isa::kAvx512) {
    xs.resize(p.m * (p.k / 32 * 32));
    split_even_odd(p, xs.data());
  }
  const float* xsp = p.w_dtype == DType::kBF16 && isa() == Isa::kAvx512 ? xs.data() : nullptr;
  if (!parallel) return gemm_quads(p, xsp, 0, quads);
  parallel_for(quads, std::max<int64_t>(1, kMinFlopsPerChunk / flops_per_quad),
               [&](int64_t b, int64_t e) { gemm_quads(p, xsp, b, e); });
}

}  // namespace dsv2::cpu
