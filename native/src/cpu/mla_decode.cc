// Absorbed MLA decode over the paged latent cache (see MlaDecodeParams in dsv2/mla.h), and
// the per-head projections around it.
//
// Reference: per sequence, decode its keys once, then per (query, head) plain loops in double.
// Fast: work items = (sequence, key split). Each item decodes its keys once into f32 (shared
// by all heads and query tokens, which is where an fp8 cache pays its dequantisation), then
// runs two small GEMMs on the SIMD kernel: S = Q·Kᵀ over d_c + d_r dims and O = P·V over the
// d_c latent dims, giving a partial (O, LSE) per item; a combine step merges the splits by
// log-sum-exp — the decomposition the split-KV CUDA kernel uses.
// GCC 12 warns inside its own AVX-512 headers (see gemm.cc).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu_ops.h"
#include "dsv2/config.h"
#include "dsv2/status.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
// Keys per sub-chunk inside a split: 256 keys × 576 dims × 4 bytes = 590 KB of decoded keys.
constexpr int64_t kSubChunk = 256;

// Slot of token t of sequence i, checking the block-table entry it needs.
int64_t slot_of(const KvCacheView& c, const int32_t* block_table, int64_t max_blocks, int64_t i, int64_t t) {
  const int64_t blk = t / c.layout.page_size;
  DSV2_CHECK(blk < max_blocks, kRange,
             "seqlens: sequence " << i << " needs block " << blk << " but block_table has " << max_blocks << " columns");
  const int64_t page = block_table[i * max_blocks + blk];
  DSV2_CHECK(page >= 0 && page < c.pages, kRange,
             "block_table[" << i << ", " << blk << "] = " << page << " is outside the cache's pages [0, " << c.pages << ")");
  return page * c.layout.page_size + t % c.layout.page_size;
}

// Decodes keys [t0, t1) of sequence i into rows of kv: [t1 - t0, d_c + d_r] f32.
void gather_keys(const MlaDecodeParams& p, int64_t i, int64_t t0, int64_t t1, float* kv) {
  const KvLayout& L = p.cache.layout;
  const int64_t d = p.d_c + p.d_r;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t s = slot_of(p.cache, p.block_table, p.max_blocks, i, t);
    decode_token(L, p.cache.data + s * L.bytes_per_token(), kv + (t - t0) * d, kv + (t - t0) * d + p.d_c);
  }
}

void check_seqlens(const MlaDecodeParams& p) {
  for (int64_t i = 0; i < p.b; ++i) {
    const int64_t s_k = p.seqlens[i];
    DSV2_CHECK(s_k >= 0 && s_k <= p.max_blocks * p.cache.layout.page_size, kRange,
               "seqlens[" << i << "] = " << s_k << " must be in [0, " << p.max_blocks * p.cache.layout.page_size
                          << "] (block_table has " << p.max_blocks << " columns of " << p.cache.layout.page_size << " tokens)");
  }
}

// O[rows, d_c] = P[rows, c] · V where V row t is kv[t · d, t · d + d_c), read in place (no
// transpose). AVX-512: blocks of 4 query rows × 64 latent dims keep 16 accumulators in
// registers; each V vector loaded feeds 4 FMAs. Elsewhere a plain axpy loop.
__attribute__((target("avx512f"))) void accumulate_pv_avx512(const float* P, int64_t rows, int64_t c, const float* kv,
                                                           int64_t d, int64_t d_c, float* O) {
  const int64_t kmain = d_c / 64 * 64;
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const int nr = static_cast<int>(std::min<int64_t>(4, rows - r0));
    const float* pr[4];
    for (int i = 0; i < 4; ++i) pr[i] = P + (r0 + std::min(i, nr - 1)) * c;
    for (int64_t k0 = 0; k0 < kmain; k0 += 64) {
      __m512 acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
      for (int64_t t = 0; t < c; ++t) {
        const float* v = kv + t * d + k0;
        const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16), v2 = _mm512_loadu_ps(v + 32),
                     v3 = _mm512_loadu_ps(v + 48);
        for (int i = 0; i < 4; ++i) {
          const __m512 w = _mm512_set1_ps(pr[i][t]);
          acc[i][0] = _mm512_fmadd_ps(w, v0, acc[i][0]);
          acc[i][1] = _mm512_fmadd_ps(w, v1, acc[i][1]);
          acc[i][2] = _mm512_fmadd_ps(w, v2, acc[i][2]);
          acc[i][3] = _mm512_fmadd_ps(w, v3, acc[i][3]);
        }
      }
      for (int i = 0; i < nr; ++i)
        for (int j = 0; j < 4; ++j) _mm512_storeu_ps(O + (r0 + i) * d_c + k0 + 16 * j, acc[i][j]);
    }
    for (int i = 0; i < nr; ++i)  // latent dims past the last multiple of 64
      for (int64_t k = kmain; k < d_c; ++k) {
        float a = 0.0f;
        for (int64_t t = 0; t < c; ++t) a += pr[i][t] * kv[t * d + k];
        O[(r0 + i) * d_c + k] = a;
      }
  }
}

void accumulate_pv(const float* P, int64_t rows, int64_t c, const float* kv, int64_t d, int64_t d_c, float* O) {
  if (std::string(gemm_fast_isa()) == "avx512") return accumulate_pv_avx512(P, rows, c, kv, d, d_c, O);
  for (int64_t r = 0; r < rows; ++r) {
    float* o = O + r * d_c;
    std::fill(o, o + d_c, 0.0f);
    const float* pr = P + r * c;
    for (int64_t t = 0; t < c; ++t) {
      const float w = pr[t];
      const float* v = kv + t * d;
      for (int64_t k = 0; k < d_c; ++k) o[k] += w * v[k];
    }
  }
}

}  // namespace

void heads_gemm(const HeadsGemmParams& p, bool fast) {
  // One gemm per head over a strided view: copy the head's rows to a contiguous block so the
  // SIMD kernel sees dense [t, k] input (t is small at decode: cheap).
  auto head = [&](int64_t h) {
    std::vector<float> x(p.t * p.k), y(p.t * p.n);
    const int64_t xs = p.x_stride ? p.x_stride : p.k, ys = p.y_stride ? p.y_stride : p.n;
    for (int64_t t = 0; t < p.t; ++t) std::copy_n(p.x + (t * p.h + h) * xs, p.k, x.data() + t * p.k);
    GemmParams g;
    g.m = p.t;
    g.n = p.n;
    g.k = p.k;
    g.x = x.data();
    g.w = static_cast<const char*>(p.w) + h * p.n * p.k * dtype_size(p.w_dtype);
    g.w_dtype = p.w_dtype;
    g.y = y.data();
    if (fast) gemm_fast(g, false);
    else gemm_ref(g);
    for (int64_t t = 0; t < p.t; ++t) std::copy_n(y.data() + t * p.n, p.n, p.y + (t * p.h + h) * ys);
  };
  if (!fast) {
    for (int64_t h = 0; h < p.h; ++h) head(h);
    return;
  }
  const int64_t flops_per_head = std::max<int64_t>(1, 2 * p.t * p.n * p.k);
  parallel_for(p.h, std::max<int64_t>(1, kMinFlopsPerChunk / flops_per_head), [&](int64_t b, int64_t e) {
    for (int64_t h = b; h < e; ++h) head(h);
  });
}

void mla_decode_ref(const MlaDecodeParams& p) {
  check_seqlens(p);
  const int64_t d = p.d_c + p.d_r;
  std::vector<float> kv;
  std::vector<double> score, acc(p.d_c);
  for (int64_t i = 0; i < p.b; ++i) {
    const int64_t s_k = p.seqlens[i];
    kv.resize(s_k * d);
    gather_keys(p, i, 0, s_k, kv.data());
    for (int64_t j = 0; j < p.s_q; ++j) {
      const int64_t n_keys = std::max<int64_t>(0, std::min(s_k, s_k - p.s_q + j + 1));
      for (int64_t h = 0; h < p.h_q; ++h) {
        const int64_t row = (i * p.s_q + j) * p.h_q + h;
        const float* q = p.q + row * d;
        float* out = p.out + row * p.d_c;
        if (n_keys == 0) {
          std::fill(out, out + p.d_c, 0.0f);
          p.lse[row] = kInf;
          continue;
        }
        score.assign(n_keys, 0.0);
        double mx = -INFINITY;
        for (int64_t t = 0; t < n_keys; ++t) {
          double s = 0;
          for (int64_t c = 0; c < d; ++c) s += static_cast<double>(q[c]) * kv[t * d + c];
          score[t] = s * p.scale;
          mx = std::max(mx, score[t]);
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t t = 0; t < n_keys; ++t) {
          const double w = std::exp(score[t] - mx);
          sum += w;
          for (int64_t c = 0; c < p.d_c; ++c) acc[c] += w * kv[t * d + c];
        }
        for (int64_t c = 0; c < p.d_c; ++c) out[c] = static_cast<float>(acc[c] / sum);
        p.lse[row] = static_cast<float>(mx + std::log(sum));
      }
    }
  }
}

void mla_decode_fast(const MlaDecodeParams& p) {
  check_seqlens(p);
  const int64_t d = p.d_c + p.d_r;
  const int64_t rows = p.s_q * p.h_q;  // query rows per sequence
  // Splits: the caller's size, or enough splits to give every thread work (≥ 64 keys each).
  int64_t max_sk = 0;
  for (int64_t i = 0; i < p.b; ++i) max_sk = std::max<int64_t>(max_sk, p.seqlens[i]);
  int64_t split = p.split_tokens;
  if (split <= 0) {
    const int64_t want = std::max<int64_t>(1, (2 * num_threads() + p.b - 1) / std::max<int64_t>(1, p.b));
    split = std::max<int64_t>(64, (max_sk + want - 1) / want);
  }
  const int64_t n_splits = std::max<int64_t>(1, (max_sk + split - 1) / split);
  // Partials: [b, n_splits, rows] LSE and [b, n_splits, rows, d_c] normalised outputs.
  std::vector<float> part_lse(p.b * n_splits * rows, -kInf);
  std::vector<float> part_out(p.b * n_splits * rows * p.d_c, 0.0f);

  parallel_for(p.b * n_splits, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> kv, s, o_sub(rows * p.d_c), lse_sub(rows);
    // Normalised output and LSE of sequence i's keys [t0, t1) for every query row.
    auto partial = [&](int64_t i, int64_t t0, int64_t t1, float* o, float* lse) {
      const int64_t s_k = p.seqlens[i], c = t1 - t0;
      kv.resize(c * d);
      gather_keys(p, i, t0, t1, kv.data());
      // S[rows, c] = Q_i · K_chunkᵀ
      s.resize(rows * c);
      GemmParams g;
      g.m = rows;
      g.n = c;
      g.k = d;
      g.x = p.q + i * rows * d;
      g.w = kv.data();
      g.w_dtype = DType::kF32;
      g.y = s.data();
      gemm_fast(g, false);
      // Causal softmax per row, keeping the partial LSE.
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t j = r / p.h_q;
        const int64_t n_vis = std::min(t1, s_k - p.s_q + j + 1) - t0;  // keys of this chunk row r sees
        float* sr = s.data() + r * c;
        lse[r] = -kInf;  // stays -inf when the row sees none of these keys: no contribution
        if (n_vis <= 0) {
          std::fill(sr, sr + c, 0.0f);
          continue;
        }
        lse[r] = softmax_prefix(sr, n_vis, c, p.scale);
      }
      accumulate_pv(s.data(), rows, c, kv.data(), d, p.d_c, o);
    };
    for (int64_t item = b0; item < b1; ++item) {
      const int64_t i = item / n_splits, sp = item % n_splits;
      const int64_t t0 = sp * split, t1 = std::min<int64_t>(p.seqlens[i], t0 + split);
      float* o = part_out.data() + item * rows * p.d_c;
      float* lse = part_lse.data() + item * rows;
      // A split is walked in sub-chunks small enough for the decoded keys and the score
      // block to stay in L2; each sub-chunk's partial is merged by log-sum-exp.
      for (int64_t u0 = t0; u0 < t1; u0 += kSubChunk) {
        const int64_t u1 = std::min(t1, u0 + kSubChunk);
        if (u0 == t0) {
          partial(i, u0, u1, o, lse);
          continue;
        }
        partial(i, u0, u1, o_sub.data(), lse_sub.data());
        for (int64_t r = 0; r < rows; ++r) {
          const float la = lse[r], lb = lse_sub[r];
          if (lb == -kInf) continue;
          const float m = std::max(la, lb);
          const float l = m + std::log(std::exp(la - m) + std::exp(lb - m));
          const float wa = std::exp(la - l), wb = std::exp(lb - l);
          float* oa = o + r * p.d_c;
          const float* ob = o_sub.data() + r * p.d_c;
          for (int64_t k = 0; k < p.d_c; ++k) oa[k] = wa * oa[k] + wb * ob[k];
          lse[r] = l;
        }
      }
    }
  });

  // Combine the splits of each (sequence, row) by log-sum-exp.
  parallel_for(p.b * rows, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t x = b0; x < b1; ++x) {
      const int64_t i = x / rows, r = x % rows;
      float* out = p.out + x * p.d_c;
      float mx = -kInf;
      for (int64_t sp = 0; sp < n_splits; ++sp) mx = std::max(mx, part_lse[(i * n_splits + sp) * rows + r]);
      if (mx == -kInf) {
        std::fill(out, out + p.d_c, 0.0f);
        p.lse[x] = kInf;
        continue;
      }
      double sum = 0;
      for (int64_t sp = 0; sp < n_splits; ++sp) sum += std::exp(part_lse[(i * n_splits + sp) * rows + r] - mx);
      const float lse = static_cast<float>(mx + std::log(sum));
      std::fill(out, out + p.d_c, 0.0f);
      for (int64_t sp = 0; sp < n_splits; ++sp) {
        const int64_t item = i * n_splits + sp;
        const float l = part_lse[item * rows + r];
        if (l == -kInf) continue;
        const float w = std::exp(l - lse);
        const float* o = part_out.data() + (item * rows + r) * p.d_c;
        for (int64_t k = 0; k < p.d_c; ++k) out[k] += w * o[k];
      }
      p.lse[x] = lse;
    }
  });
}

}  // namespace dsv2::cpu
