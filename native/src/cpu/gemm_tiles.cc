// Batch-1 gemv y[n] = W[n, :] · x for every weight dtype (f32, bf16, f16, i8, fp8_e4m3):
// the decode step's kernel, where every weight byte is read once per token and the time is
// the memory's. Rows go 8 at a time (8 concurrent streams, each prefetched 1 KB ahead: one
// stream per row reached ~65% of one core's read bandwidth on Zen 5, eight with prefetch
// ~90% — bench/NOTES.md), each widened to f32 in registers and multiplied by x in f32.
// 8-bit weights carry one scale per 128 × 128 block: a group of 8 rows never crosses a
// 128-row block (n0 % 8 == 0), so each 128-column block's partial sums are scaled once.
//
// Layout tricks (x is prepared once per call to match the weights' lane order):
//   bf16  a 32-bit lane holds weights 2j (low half) and 2j+1 (high): `lane << 16` and
//         `lane & 0xffff0000` are both f32 — x is split into even and odd halves per chunk.
//   f16   F16C / AVX-512 vcvtph2ps.
//   i8    sign-extend to i32, convert to f32.
//   fp8   e4m3 → f16 bits: sign to bit 15, exponent and mantissa shifted up by 7 — the f16
//         of value/256 (subnormals included, as f16's grid is finer); ×256 folds into the scale.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's AVX-512 headers (see gemm.cc)
#include <immintrin.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cpu_ops.h"
#include "dsv2/config.h"
#include "../core/dtype.h"
#include "../core/fp8.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {
namespace {

constexpr int kR = 8;              // rows per micro-kernel call
constexpr int64_t kPrefetch = 1024;  // bytes ahead in each row

constexpr bool scaled(DType t) { return t == DType::kI8 || t == DType::kFP8E4M3; }

// W[row, k] as f32, unscaled for 8-bit (the code's value).
float code_value(const void* w, DType t, int64_t i) {
  switch (t) {
    case DType::kI8: return static_cast<float>(static_cast<const int8_t*>(w)[i]);
    case DType::kFP8E4M3: return e4m3_to_f32(static_cast<const uint8_t*>(w)[i]);
    default: return load_float(w, t, i);
  }
}

// The scale multiplying the vector path's partial sums: fp8 lanes hold value / 256.
float lane_scale(DType t) { return t == DType::kFP8E4M3 ? 256.0f : 1.0f; }

// ---- AVX-512: 32 weights per step as two f32 vectors (lo, hi) ------------------------
template <DType T>
__attribute__((target("avx512f,avx512bw"))) inline void load32_avx512(const uint8_t* w, __m512& lo, __m512& hi) {
  if constexpr (T == DType::kF32) {
    lo = _mm512_loadu_ps(w);
    hi = _mm512_loadu_ps(w + 64);
  } else if constexpr (T == DType::kBF16) {
    const __m512i v = _mm512_loadu_si512(w);
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  } else if constexpr (T == DType::kF16) {
    lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    hi = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32)));
  } else if constexpr (T == DType::kI8) {
    lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16))));
  } else {  // fp8 e4m3
    const __m512i u = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
    const __m512i h = _mm512_or_si512(_mm512_slli_epi16(_mm512_and_si512(u, _mm512_set1_epi16(0x80)), 8),
                                      _mm512_slli_epi16(_mm512_and_si512(u, _mm512_set1_epi16(0x7f)), 7));
    lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
  }
}

// y[n0 + r] for r < nr (nr ≤ 8; a short group repeats its last row). xv: x in the lanes'
// order (bf16: even/odd split per 32), length kmain = K / 32 · 32; the rest is scalar.
template <DType T>
__attribute__((target("avx512f,avx512bw"))) void rows_avx512(const GemmParams& p, const float* xv, int64_t n0, int nr) {
  const int64_t K = p.k, kmain = K / 32 * 32, es = static_cast<int64_t>(dtype_size(T));
  const int64_t blk = scaled(T) ? kWeightBlock : std::max<int64_t>(kmain, 32);
  const int64_t kb_n = (K + kWeightBlock - 1) / kWeightBlock;
  const float* srow = scaled(T) ? p.w_scale + (n0 / kWeightBlock) * kb_n : nullptr;
  const uint8_t* w[kR];
  for (int r = 0; r < kR; ++r) w[r] = static_cast<const uint8_t*>(p.w) + (n0 + std::min(r, nr - 1)) * K * es;
  __m512 tot[kR], acc[kR];
  for (int r = 0; r < kR; ++r) tot[r] = _mm512_setzero_ps();
  for (int64_t k0 = 0; k0 < kmain; k0 += blk) {
    const int64_t k1 = std::min(kmain, k0 + blk);
    for (int r = 0; r < kR; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = k0; k < k1; k += 32) {
      const __m512 xa = _mm512_loadu_ps(xv + k), xb = _mm512_loadu_ps(xv + k + 16);
      for (int r = 0; r < kR; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(w[r] + k * es + kPrefetch), _MM_HINT_T0);
        __m512 lo, hi;
        load32_avx512<T>(w[r] + k * es, lo, hi);
        acc[r] = _mm512_fmadd_ps(lo, xa, _mm512_fmadd_ps(hi, xb, acc[r]));
      }
    }
    if constexpr (scaled(T)) {
      const __m512 s = _mm512_set1_ps(srow[k0 / kWeightBlock] * lane_scale(T));
      for (int r = 0; r < kR; ++r) tot[r] = _mm512_fmadd_ps(acc[r], s, tot[r]);
    } else {
      for (int r = 0; r < kR; ++r) tot[r] = _mm512_add_ps(tot[r], acc[r]);
    }
  }
  for (int r = 0; r < nr; ++r) {
    float s = _mm512_reduce_add_ps(tot[r]);
    for (int64_t k = kmain; k < K; ++k)
      s += code_value(w[r], T, k) * (scaled(T) ? srow[k / kWeightBlock] : 1.0f) * p.x[k];
    p.y[n0 + r] = s;
  }
}

// ---- AVX2: 16 weights per step --------------------------------------------------------
template <DType T>
__attribute__((target("avx2,fma,f16c"))) inline void load16_avx2(const uint8_t* w, __m256& lo, __m256& hi) {
  if constexpr (T == DType::kF32) {
    lo = _mm256_loadu_ps(reinterpret_cast<const float*>(w));
    hi = _mm256_loadu_ps(reinterpret_cast<const float*>(w + 32));
  } else if constexpr (T == DType::kBF16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  } else if constexpr (T == DType::kF16) {
    lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
    hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16)));
  } else if constexpr (T == DType::kI8) {
    lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
    hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + 8))));
  } else {  // fp8 e4m3
    const __m256i u = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
    const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(u, _mm256_set1_epi16(0x80)), 8),
                                      _mm256_slli_epi16(_mm256_and_si256(u, _mm256_set1_epi16(0x7f)), 7));
    lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
  }
}

__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// As rows_avx512 with 16-element steps (bf16: even/odd split per 16). 16 ymm registers
// hold 8 accumulators; 8-bit weights keep 4 rows per pass so that their block totals fit too.
template <DType T, int R>
__attribute__((target("avx2,fma,f16c"))) void rows_avx2_n(const GemmParams& p, const float* xv, int64_t n0, int nr) {
  const int64_t K = p.k, kmain = K / 16 * 16, es = static_cast<int64_t>(dtype_size(T));
  const int64_t blk = scaled(T) ? kWeightBlock : std::max<int64_t>(kmain, 16);
  const int64_t kb_n = (K + kWeightBlock - 1) / kWeightBlock;
  const float* srow = scaled(T) ? p.w_scale + (n0 / kWeightBlock) * kb_n : nullptr;
  const uint8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const uint8_t*>(p.w) + (n0 + std::min(r, nr - 1)) * K * es;
  __m256 tot[R], acc[R];
  for (int r = 0; r < R; ++r) tot[r] = _mm256_setzero_ps();
  for (int64_t k0 = 0; k0 < kmain; k0 += blk) {
    const int64_t k1 = std::min(kmain, k0 + blk);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; k += 16) {
      const __m256 xa = _mm256_loadu_ps(xv + k), xb = _mm256_loadu_ps(xv + k + 8);
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(w[r] + k * es + kPrefetch), _MM_HINT_T0);
        __m256 lo, hi;
        load16_avx2<T>(w[r] + k * es, lo, hi);
        acc[r] = _mm256_fmadd_ps(lo, xa, _mm256_fmadd_ps(hi, xb, acc[r]));
      }
    }
    if constexpr (scaled(T)) {
      const __m256 s = _mm256_set1_ps(srow[k0 / kWeightBlock] * lane_scale(T));
      for (int r = 0; r < R; ++r) tot[r] = _mm256_fmadd_ps(acc[r], s, tot[r]);
    } else {
      for (int r = 0; r < R; ++r) tot[r] = _mm256_add_ps(tot[r], acc[r]);
    }
  }
  for (int r = 0; r < nr; ++r) {
    float s = hsum8(tot[r]);
    for (int64_t k = kmain; k < K; ++k)
      s += code_value(w[r], T, k) * (scaled(T) ? srow[k / kWeightBlock] : 1.0f) * p.x[k];
    p.y[n0 + r] = s;
  }
}

template <DType T>
void rows_avx2(const GemmParams& p, const float* xv, int64_t n0, int nr) {
  if constexpr (scaled(T)) {
    for (int h = 0; h < nr; h += 4) rows_avx2_n<T, 4>(p, xv, n0 + h, std::min(4, nr - h));
  } else {
    rows_avx2_n<T, kR>(p, xv, n0, nr);
  }
}

using RowsFn = void (*)(const GemmParams&, const float*, int64_t, int);

template <template <DType> class Pick>
RowsFn pick(DType t) {
  switch (t) {
    case DType::kF32: return Pick<DType::kF32>::fn;
    case DType::kBF16: return Pick<DType::kBF16>::fn;
    case DType::kF16: return Pick<DType::kF16>::fn;
    case DType::kI8: return Pick<DType::kI8>::fn;
    case DType::kFP8E4M3: return Pick<DType::kFP8E4M3>::fn;
    default: return nullptr;
  }
}
template <DType T> struct Avx512Rows { static constexpr RowsFn fn = rows_avx512<T>; };
template <DType T> struct Avx2Rows { static constexpr RowsFn fn = rows_avx2<T>; };

template <DType T>
__attribute__((target("avx512f,avx512bw"))) void widen_avx512_8(const GemmParams& p, int64_t row, float* d) {
  const int64_t K = p.k, kmain = K / 32 * 32, kb = (K + kWeightBlock - 1) / kWeightBlock;
  const float* s = p.w_scale + (row / kWeightBlock) * kb;
  const uint8_t* w = static_cast<const uint8_t*>(p.w) + row * K;
  for (int64_t k = 0; k < kmain; k += 32) {  // 32 divides 128: one scale per step
    const __m512 sv = _mm512_set1_ps(s[k / kWeightBlock] * lane_scale(T));
    __m512 lo, hi;
    load32_avx512<T>(w + k, lo, hi);
    _mm512_storeu_ps(d + k, _mm512_mul_ps(lo, sv));
    _mm512_storeu_ps(d + k + 16, _mm512_mul_ps(hi, sv));
  }
  for (int64_t k = kmain; k < K; ++k) d[k] = code_value(w, T, k) * s[k / kWeightBlock];
}

template <DType T>
__attribute__((target("avx2,fma,f16c"))) void widen_avx2_8(const GemmParams& p, int64_t row, float* d) {
  const int64_t K = p.k, kmain = K / 16 * 16, kb = (K + kWeightBlock - 1) / kWeightBlock;
  const float* s = p.w_scale + (row / kWeightBlock) * kb;
  const uint8_t* w = static_cast<const uint8_t*>(p.w) + row * K;
  for (int64_t k = 0; k < kmain; k += 16) {
    const __m256 sv = _mm256_set1_ps(s[k / kWeightBlock] * lane_scale(T));
    __m256 lo, hi;
    load16_avx2<T>(w + k, lo, hi);
    _mm256_storeu_ps(d + k, _mm256_mul_ps(lo, sv));
    _mm256_storeu_ps(d + k + 8, _mm256_mul_ps(hi, sv));
  }
  for (int64_t k = kmain; k < K; ++k) d[k] = code_value(w, T, k) * s[k / kWeightBlock];
}

}  // namespace

void widen_8bit(const GemmParams& p, int64_t row, float* d) {
  const std::string isa = gemm_fast_isa();
  const bool i8 = p.w_dtype == DType::kI8;
  if (isa == "avx512") return i8 ? widen_avx512_8<DType::kI8>(p, row, d) : widen_avx512_8<DType::kFP8E4M3>(p, row, d);
  if (isa == "avx2") return i8 ? widen_avx2_8<DType::kI8>(p, row, d) : widen_avx2_8<DType::kFP8E4M3>(p, row, d);
  const int64_t kb = (p.k + kWeightBlock - 1) / kWeightBlock;
  const float* s = p.w_scale + (row / kWeightBlock) * kb;
  const uint8_t* w = static_cast<const uint8_t*>(p.w) + row * p.k;
  for (int64_t k = 0; k < p.k; ++k) d[k] = code_value(w, p.w_dtype, k) * s[k / kWeightBlock];
}

bool gemv_fast(const GemmParams& p, bool parallel) {
  const std::string isa = gemm_fast_isa();
  const bool avx512 = isa == "avx512", avx2 = isa == "avx2";
  if (p.m != 1 || !(avx512 || avx2)) return false;
  const RowsFn rows = avx512 ? pick<Avx512Rows>(p.w_dtype) : pick<Avx2Rows>(p.w_dtype);
  if (!rows) return false;
  // x in the lanes' order: bf16 pairs even/odd elements per step (32 or 16), others as is.
  const int64_t step = avx512 ? 32 : 16, kmain = p.k / step * step;
  std::vector<float> split;
  const float* xv = p.x;
  if (p.w_dtype == DType::kBF16) {
    split.resize(static_cast<size_t>(kmain));
    const int64_t half = step / 2;
    for (int64_t c = 0; c < kmain; c += step)
      for (int64_t j = 0; j < half; ++j) {
        split[c + j] = p.x[c + 2 * j];
        split[c + half + j] = p.x[c + 2 * j + 1];
      }
    xv = split.data();
  }
  const int64_t groups = (p.n + kR - 1) / kR;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) rows(p, xv, g * kR, static_cast<int>(std::min<int64_t>(kR, p.n - g * kR)));
  };
  if (parallel) parallel_for(groups, std::max<int64_t>(1, kMinFlopsPerChunk / (2 * kR * p.k)), body);
  else body(0, groups);
  return true;
}

}  // namespace dsv2::cpu
