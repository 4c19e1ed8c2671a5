// SIMD gemm tiles y[m, n] = x[m, :] · W[n, :] for every weight dtype (f32, bf16, f16, i8,
// fp8_e4m3) on AVX-512 and AVX2: R weight rows × MR activation rows per call, each weight
// vector widened to f32 in registers once and used for the MR rows.
//   M = 1 (decode): R = 8 — eight concurrent row streams, each prefetched 1 KB ahead (one
//   stream per row reached ~65% of one core's read bandwidth on Zen 5, eight with prefetch
//   ~90%; bench/NOTES.md). M > 1: R = 4 and MR = 4, 2, 1 (AVX2: 4 × 2 / 2 × 2).
// Every (row, m) pair sees the same operations in the same order whatever R and MR are, so a
// row of a batch gets bit for bit what it gets alone (continuous batching and the prefix
// cache rely on it). 8-bit weights are decoded per element to f32 (code · block scale, one
// rounding — the value a dequantised f32 copy holds) before the multiply-add, so an 8-bit
// model computes exactly what its dequantised f32 copy does.
//
// Lane layouts (x is prepared once per call to match):
//   bf16  a 32-bit lane holds weights 2j (low half) and 2j+1 (high): `lane << 16` and
//         `lane & 0xffff0000` are both f32 — x is split into even and odd halves per step.
//   f16   F16C / AVX-512 vcvtph2ps.      i8  sign-extend to i32, convert to f32.
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

// The factor the vector path's 8-bit lanes are multiplied by with the block scale: fp8 lanes
// hold value / 256 (exact: a power of two), so (value / 256) · (scale · 256) rounds once, to
// the f32 nearest value · scale.
constexpr float lane_scale(DType t) { return t == DType::kFP8E4M3 ? 256.0f : 1.0f; }

// W[row, k] as the f32 the vector path uses (8-bit: code · block scale, rounded once).
inline float weight_value(const uint8_t* row, DType t, const float* srow, int64_t k) {
  const float v = code_value(row, t, k);
  return srow ? v * srow[k / kWeightBlock] : v;
}

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
    const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi16(0x7f));
    __m512i h = _mm512_or_si512(_mm512_slli_epi16(_mm512_and_si512(u, _mm512_set1_epi16(0x80)), 8), _mm512_slli_epi16(mag, 7));
    // e4m3's NaN (0x7f / 0xff) would land on a finite f16: all-ones exponent makes it NaN.
    h = _mm512_mask_or_epi32(h, 0xffff, h, _mm512_maskz_mov_epi16(_mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x7f)), _mm512_set1_epi16(0x7c00)));
    lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
  }
}

// Where a tile reads: x rows (in the lanes' order) and the weight rows.
struct TileArgs {
  const GemmParams* p;
  const float* xv;     // row m of x at xv + m * xs (bf16: even/odd split per step)
  int64_t xs;          // elements between x rows in xv
  int64_t kmain;       // K rounded down to the step; the rest is scalar
};

// y[m0 + i, n0 + r] for r < nr (≤ R; a short group repeats its last row), i < MR.
template <DType T, int R, int MR>
__attribute__((target("avx512f,avx512bw"))) void tile_avx512(const TileArgs& a, int64_t n0, int nr, int64_t m0) {
  const GemmParams& p = *a.p;
  const int64_t K = p.k, es = static_cast<int64_t>(dtype_size(T));
  const int64_t kb_n = (K + kWeightBlock - 1) / kWeightBlock;
  const float* srow = scaled(T) ? p.w_scale + (n0 / kWeightBlock) * kb_n : nullptr;
  const uint8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const uint8_t*>(p.w) + (n0 + std::min(r, nr - 1)) * K * es;
  __m512 acc[R][MR];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < a.kmain; k += 32) {
    __m512 xa[MR], xb[MR];
    for (int i = 0; i < MR; ++i) {
      xa[i] = _mm512_loadu_ps(a.xv + (m0 + i) * a.xs + k);
      xb[i] = _mm512_loadu_ps(a.xv + (m0 + i) * a.xs + k + 16);
    }
    __m512 sv;
    if constexpr (scaled(T)) sv = _mm512_set1_ps(srow[k / kWeightBlock] * lane_scale(T));  // 32 | 128: one block per step
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + k * es + kPrefetch), _MM_HINT_T0);
      __m512 lo, hi;
      load32_avx512<T>(w[r] + k * es, lo, hi);
      if constexpr (scaled(T)) lo = _mm512_mul_ps(lo, sv), hi = _mm512_mul_ps(hi, sv);
      for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_fmadd_ps(lo, xa[i], _mm512_fmadd_ps(hi, xb[i], acc[r][i]));
    }
  }
  for (int r = 0; r < nr; ++r)
    for (int i = 0; i < MR; ++i) {
      const float* x = p.x + (m0 + i) * K;
      float s = _mm512_reduce_add_ps(acc[r][i]);
      for (int64_t k = a.kmain; k < K; ++k) s += weight_value(w[r], T, srow, k) * x[k];
      p.y[(m0 + i) * p.n + n0 + r] = s;
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
    const __m256i mag = _mm256_and_si256(u, _mm256_set1_epi16(0x7f));
    __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(u, _mm256_set1_epi16(0x80)), 8), _mm256_slli_epi16(mag, 7));
    // e4m3's NaN (0x7f / 0xff) would land on a finite f16: all-ones exponent makes it NaN.
    h = _mm256_or_si256(h, _mm256_and_si256(_mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7f)), _mm256_set1_epi16(0x7c00)));
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

// As tile_avx512 with 16-element steps (bf16: even/odd split per 16).
template <DType T, int R, int MR>
__attribute__((target("avx2,fma,f16c"))) void tile_avx2(const TileArgs& a, int64_t n0, int nr, int64_t m0) {
  const GemmParams& p = *a.p;
  const int64_t K = p.k, es = static_cast<int64_t>(dtype_size(T));
  const int64_t kb_n = (K + kWeightBlock - 1) / kWeightBlock;
  const float* srow = scaled(T) ? p.w_scale + (n0 / kWeightBlock) * kb_n : nullptr;
  const uint8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = static_cast<const uint8_t*>(p.w) + (n0 + std::min(r, nr - 1)) * K * es;
  __m256 acc[R][MR];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < MR; ++i) acc[r][i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < a.kmain; k += 16) {
    __m256 xa[MR], xb[MR];
    for (int i = 0; i < MR; ++i) {
      xa[i] = _mm256_loadu_ps(a.xv + (m0 + i) * a.xs + k);
      xb[i] = _mm256_loadu_ps(a.xv + (m0 + i) * a.xs + k + 8);
    }
    __m256 sv;
    if constexpr (scaled(T)) sv = _mm256_set1_ps(srow[k / kWeightBlock] * lane_scale(T));
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + k * es + kPrefetch), _MM_HINT_T0);
      __m256 lo, hi;
      load16_avx2<T>(w[r] + k * es, lo, hi);
      if constexpr (scaled(T)) lo = _mm256_mul_ps(lo, sv), hi = _mm256_mul_ps(hi, sv);
      for (int i = 0; i < MR; ++i) acc[r][i] = _mm256_fmadd_ps(lo, xa[i], _mm256_fmadd_ps(hi, xb[i], acc[r][i]));
    }
  }
  for (int r = 0; r < nr; ++r)
    for (int i = 0; i < MR; ++i) {
      const float* x = p.x + (m0 + i) * K;
      float s = hsum8(acc[r][i]);
      for (int64_t k = a.kmain; k < K; ++k) s += weight_value(w[r], T, srow, k) * x[k];
      p.y[(m0 + i) * p.n + n0 + r] = s;
    }
}

// All M rows of weight rows [n0, n0 + nr): R-row tiles over MR-row slabs of x.
template <DType T, int R>
__attribute__((target("avx512f,avx512bw"))) void rows_avx512(const TileArgs& a, int64_t n0, int nr) {
  int64_t m = 0;
  const int64_t M = a.p->m;
  for (; m + 4 <= M; m += 4) tile_avx512<T, R, 4>(a, n0, nr, m);
  for (; m + 2 <= M; m += 2) tile_avx512<T, R, 2>(a, n0, nr, m);
  for (; m < M; ++m) tile_avx512<T, R, 1>(a, n0, nr, m);
}

template <DType T, int R>
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(const TileArgs& a, int64_t n0, int nr) {
  int64_t m = 0;
  const int64_t M = a.p->m;
  constexpr int R2 = R > 4 ? R : (scaled(T) ? 2 : R);  // 16 ymm: accumulators + x + scale
  for (int64_t h = 0; h < nr; h += R2) {
    const int n = static_cast<int>(std::min<int64_t>(R2, nr - h));
    m = 0;
    if constexpr (R <= 4)
      for (; m + 2 <= M; m += 2) tile_avx2<T, R2, 2>(a, n0 + h, n, m);
    for (; m < M; ++m) tile_avx2<T, R2, 1>(a, n0 + h, n, m);
  }
}

using RowsFn = void (*)(const TileArgs&, int64_t, int);

template <int R>
struct Avx512 {
  template <DType T> struct Pick { static constexpr RowsFn fn = rows_avx512<T, R>; };
};
template <int R>
struct Avx2 {
  template <DType T> struct Pick { static constexpr RowsFn fn = rows_avx2<T, R>; };
};

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

}  // namespace

void widen_8bit(const GemmParams& p, int64_t row, float* d) {
  const int64_t kb = (p.k + kWeightBlock - 1) / kWeightBlock;
  const float* s = p.w_scale + (row / kWeightBlock) * kb;
  const uint8_t* w = static_cast<const uint8_t*>(p.w) + row * p.k;
  for (int64_t k = 0; k < p.k; ++k) d[k] = weight_value(w, p.w_dtype, s, k);
}

bool gemm_tiles(const GemmParams& p, bool parallel) {
  // The ISA is fixed per process (gemm.cc); read once, not per call (this is every decode op).
  static const std::string isa = gemm_fast_isa();
  static const bool avx512 = isa == "avx512", avx2 = isa == "avx2";
  if (!(avx512 || avx2)) return false;
  const bool decode = p.m == 1;
  const int R = decode ? 8 : 4;  // rows per tile (see the top of this file)
  const RowsFn rows = avx512 ? (decode ? pick<Avx512<8>::Pick>(p.w_dtype) : pick<Avx512<4>::Pick>(p.w_dtype))
                             : (decode ? pick<Avx2<8>::Pick>(p.w_dtype) : pick<Avx2<4>::Pick>(p.w_dtype));
  if (!rows) return false;
  // x in the lanes' order: bf16 pairs even/odd elements per step (32 or 16), others as is.
  const int64_t step = avx512 ? 32 : 16;
  TileArgs a{&p, p.x, p.k, p.k / step * step};
  std::vector<float> split;
  if (p.w_dtype == DType::kBF16) {
    split.resize(static_cast<size_t>(p.m * a.kmain));
    const int64_t half = step / 2;
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.k;
      float* d = split.data() + m * a.kmain;
      for (int64_t c = 0; c < a.kmain; c += step)
        for (int64_t j = 0; j < half; ++j) {
          d[c + j] = x[c + 2 * j];
          d[c + half + j] = x[c + 2 * j + 1];
        }
    }
    a.xv = split.data();
    a.xs = a.kmain;
  }
  const int64_t groups = (p.n + R - 1) / R;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) rows(a, g * R, static_cast<int>(std::min<int64_t>(R, p.n - g * R)));
  };
  if (parallel) parallel_for(groups, std::max<int64_t>(1, kMinFlopsPerChunk / (2 * R * p.k * p.m)), body);
  else body(0, groups);
  return true;
}

}  // namespace dsv2::cpu
