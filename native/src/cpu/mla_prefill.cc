// MLA prefill, naive form (see MlaPrefillParams in dsv2/mla.h): each sequence's latent keys
// are read from the cache (prefix included) and expanded with kv_b_proj into per-head
// k_nope and v, then causal attention over [k_nope ; k_pe].
//
// Reference: plain loops in double. Fast: the expansion is one GEMM per sequence
// [s_k, d_c] · kv_bᵀ, then per head (on the pool) S = Q·Kᵀ and O = P·V as GEMMs, over blocks
// of query rows so the score matrix stays small.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_ops.h"
#include "dsv2/status.h"
#include "../core/dtype.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {
namespace {

constexpr int64_t kQueryBlock = 128;  // query rows per score block in the fast path

void check_lengths(const MlaPrefillParams& p) {
  DSV2_CHECK(p.cu_seqlens_q[0] == 0, kRange, "cuSeqlensQ[0] = " << p.cu_seqlens_q[0] << " must be 0");
  for (int64_t i = 0; i < p.b; ++i) {
    const int64_t n_q = static_cast<int64_t>(p.cu_seqlens_q[i + 1]) - p.cu_seqlens_q[i];  // int64: no wrap
    const int64_t s_k = p.seqlens[i];
    DSV2_CHECK(n_q >= 0, kRange, "cuSeqlensQ must be non-decreasing: cuSeqlensQ[" << i + 1 << "] = "
                                     << p.cu_seqlens_q[i + 1] << " < cuSeqlensQ[" << i << "] = " << p.cu_seqlens_q[i]);
    DSV2_CHECK(s_k >= n_q, kRange, "seqlens[" << i << "] = " << s_k << " is smaller than its " << n_q
                                              << " query tokens (queries are the last keys of their sequence)");
    DSV2_CHECK(s_k <= p.max_blocks * p.cache.layout.page_size, kRange,
               "seqlens[" << i << "] = " << s_k << " exceeds block_table's capacity of "
                          << p.max_blocks * p.cache.layout.page_size << " tokens");
  }
  DSV2_CHECK(p.cu_seqlens_q[p.b] == p.n_tokens, kRange,
             "cuSeqlensQ[" << p.b << "] = " << p.cu_seqlens_q[p.b] << " must equal the number of query rows " << p.n_tokens);
}

// Reads sequence i's keys: c [s_k, d_c], pe [s_k, d_r].
void read_keys(const MlaPrefillParams& p, int64_t i, std::vector<float>& c, std::vector<float>& pe) {
  const KvLayout& L = p.cache.layout;
  const int64_t s_k = p.seqlens[i];
  c.resize(s_k * p.d_c);
  pe.resize(s_k * p.d_r);
  for (int64_t t = 0; t < s_k; ++t) {
    const int64_t blk = t / L.page_size;
    const int64_t page = p.block_table[i * p.max_blocks + blk];
    DSV2_CHECK(page >= 0 && page < p.cache.pages, kRange,
               "block_table[" << i << ", " << blk << "] = " << page << " is outside the cache's pages [0, " << p.cache.pages << ")");
    const int64_t slot = page * L.page_size + t % L.page_size;
    decode_token(L, p.cache.data + slot * L.bytes_per_token(), c.data() + t * p.d_c, pe.data() + t * p.d_r);
  }
}

}  // namespace

void mla_prefill_ref(const MlaPrefillParams& p) {
  check_lengths(p);
  const int64_t dqk = p.d_nope + p.d_r, row = p.d_nope + p.d_v;
  std::vector<float> c, pe;
  for (int64_t i = 0; i < p.b; ++i) {
    const int64_t s_k = p.seqlens[i], q0 = p.cu_seqlens_q[i], n_q = p.cu_seqlens_q[i + 1] - q0;
    if (n_q == 0) continue;
    read_keys(p, i, c, pe);
    for (int64_t h = 0; h < p.h; ++h) {
      // k_nope [s_k, d_nope] and v [s_k, d_v] of this head: kv_b rows · c_kv
      std::vector<double> k(s_k * p.d_nope), v(s_k * p.d_v);
      for (int64_t t = 0; t < s_k; ++t)
        for (int64_t r = 0; r < row; ++r) {
          double a = 0;
          for (int64_t x = 0; x < p.d_c; ++x)
            a += static_cast<double>(load_float(p.kv_b, p.kv_b_dtype, (h * row + r) * p.d_c + x)) * c[t * p.d_c + x];
          if (r < p.d_nope) k[t * p.d_nope + r] = a;
          else v[t * p.d_v + r - p.d_nope] = a;
        }
      for (int64_t j = 0; j < n_q; ++j) {
        const float* q = p.q + ((q0 + j) * p.h + h) * dqk;
        const int64_t n_keys = s_k - n_q + j + 1;
        std::vector<double> s(n_keys);
        double mx = -INFINITY;
        for (int64_t t = 0; t < n_keys; ++t) {
          double a = 0;
          for (int64_t x = 0; x < p.d_nope; ++x) a += q[x] * k[t * p.d_nope + x];
          for (int64_t x = 0; x < p.d_r; ++x) a += static_cast<double>(q[p.d_nope + x]) * pe[t * p.d_r + x];
          s[t] = a * p.scale;
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        std::vector<double> o(p.d_v, 0.0);
        for (int64_t t = 0; t < n_keys; ++t) {
          const double w = std::exp(s[t] - mx);
          sum += w;
          for (int64_t x = 0; x < p.d_v; ++x) o[x] += w * v[t * p.d_v + x];
        }
        float* out = p.out + ((q0 + j) * p.h + h) * p.d_v;
        for (int64_t x = 0; x < p.d_v; ++x) out[x] = static_cast<float>(o[x] / sum);
      }
    }
  }
}

void mla_prefill_fast(const MlaPrefillParams& p) {
  check_lengths(p);
  const int64_t dqk = p.d_nope + p.d_r, row = p.d_nope + p.d_v;
  std::vector<float> c, pe, kvx;
  for (int64_t i = 0; i < p.b; ++i) {
    const int64_t s_k = p.seqlens[i], q0 = p.cu_seqlens_q[i], n_q = p.cu_seqlens_q[i + 1] - q0;
    if (n_q == 0) continue;
    read_keys(p, i, c, pe);
    // kvx [s_k, h · (d_nope + d_v)] = c · kv_bᵀ: every head's k_nope and v at once.
    kvx.resize(s_k * p.h * row);
    GemmParams g;
    g.m = s_k;
    g.n = p.h * row;
    g.k = p.d_c;
    g.x = c.data();
    g.w = p.kv_b;
    g.w_dtype = p.kv_b_dtype;
    g.y = kvx.data();
    gemm_fast(g, true);
    parallel_for(p.h, 1, [&](int64_t h0, int64_t h1) {
      std::vector<float> k(s_k * dqk), vt(p.d_v * s_k), q, s, o;
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t t = 0; t < s_k; ++t) {
          const float* e = kvx.data() + (t * p.h + h) * row;
          std::copy_n(e, p.d_nope, k.data() + t * dqk);
          std::copy_n(pe.data() + t * p.d_r, p.d_r, k.data() + t * dqk + p.d_nope);
          for (int64_t x = 0; x < p.d_v; ++x) vt[x * s_k + t] = e[p.d_nope + x];
        }
        for (int64_t j0 = 0; j0 < n_q; j0 += kQueryBlock) {
          const int64_t nb = std::min(kQueryBlock, n_q - j0);
          q.resize(nb * dqk);
          for (int64_t j = 0; j < nb; ++j) std::copy_n(p.q + ((q0 + j0 + j) * p.h + h) * dqk, dqk, q.data() + j * dqk);
          // Keys this block can see at most: up to the last query's position.
          const int64_t n_keys = s_k - n_q + j0 + nb;
          s.resize(nb * n_keys);
          GemmParams gs;
          gs.m = nb;
          gs.n = n_keys;
          gs.k = dqk;
          gs.x = q.data();
          gs.w = k.data();
          gs.w_dtype = DType::kF32;
          gs.y = s.data();
          gemm_fast(gs, false);
          for (int64_t j = 0; j < nb; ++j) {
            float* sr = s.data() + j * n_keys;
            const int64_t vis = s_k - n_q + j0 + j + 1;
            softmax_prefix(sr, vis, n_keys, p.scale);
          }
          // O [nb, d_v] = P [nb, n_keys] · V: the kernel wants Vᵀ rows of length n_keys, a
          // prefix of each row of vt, so run it with k = n_keys over a compacted copy.
          std::vector<float> vtk(p.d_v * n_keys);
          for (int64_t x = 0; x < p.d_v; ++x) std::copy_n(vt.data() + x * s_k, n_keys, vtk.data() + x * n_keys);
          o.resize(nb * p.d_v);
          GemmParams go;
          go.m = nb;
          go.n = p.d_v;
          go.k = n_keys;
          go.x = s.data();
          go.w = vtk.data();
          go.w_dtype = DType::kF32;
          go.y = o.data();
          gemm_fast(go, false);
          for (int64_t j = 0; j < nb; ++j) std::copy_n(o.data() + j * p.d_v, p.d_v, p.out + ((q0 + j0 + j) * p.h + h) * p.d_v);
        }
      }
    });
  }
}

}  // namespace dsv2::cpu
