// Paged latent KV cache on the CPU: token encode/decode in each cache dtype (the layout is
// documented in dsv2/mla.h), append, read back, poison.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_ops.h"
#include "dsv2/status.h"
#include "../core/dtype.h"
#include "../core/fp8.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {

void encode_token(const KvLayout& L, const float* c_kv, const float* k_pe, uint8_t* dst) {
  switch (L.dtype) {
    case DType::kF32:
      std::memcpy(dst, c_kv, 4 * L.d_c);
      std::memcpy(dst + 4 * L.d_c, k_pe, 4 * L.d_r);
      return;
    case DType::kBF16: {
      for (int64_t i = 0; i < L.d_c; ++i) {
        uint16_t h = f32_to_bf16(c_kv[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      for (int64_t i = 0; i < L.d_r; ++i) {
        uint16_t h = f32_to_bf16(k_pe[i]);
        std::memcpy(dst + 2 * (L.d_c + i), &h, 2);
      }
      return;
    }
    case DType::kFP8E4M3: {
      uint8_t* scales = dst + L.d_c;
      for (int64_t t = 0; t < L.n_tiles(); ++t) {
        const int64_t b = t * kFp8Tile, e = std::min(L.d_c, b + kFp8Tile);
        float amax = 0.0f;
        for (int64_t i = b; i < e; ++i) {
          float a = std::fabs(c_kv[i]);
          if (std::isfinite(a) && a > amax) amax = a;
        }
        const float s = fp8_scale(amax, L.pow2_scales);
        for (int64_t i = b; i < e; ++i) dst[i] = f32_to_e4m3(c_kv[i] / s);
        std::memcpy(scales + 4 * t, &s, 4);
      }
      uint8_t* pe = scales + 4 * L.n_tiles();
      for (int64_t i = 0; i < L.d_r; ++i) {
        uint16_t h = f32_to_bf16(k_pe[i]);
        std::memcpy(pe + 2 * i, &h, 2);
      }
      return;
    }
    default: DSV2_FAIL(kInternal, "kv cache: unchecked dtype " << dtype_name(L.dtype));
  }
}

void decode_token(const KvLayout& L, const uint8_t* src, float* c_kv, float* k_pe) {
  switch (L.dtype) {
    case DType::kF32:
      std::memcpy(c_kv, src, 4 * L.d_c);
      std::memcpy(k_pe, src + 4 * L.d_c, 4 * L.d_r);
      return;
    case DType::kBF16: {
      uint16_t h;
      for (int64_t i = 0; i < L.d_c; ++i) { std::memcpy(&h, src + 2 * i, 2); c_kv[i] = bf16_to_f32(h); }
      for (int64_t i = 0; i < L.d_r; ++i) { std::memcpy(&h, src + 2 * (L.d_c + i), 2); k_pe[i] = bf16_to_f32(h); }
      return;
    }
    case DType::kFP8E4M3: {
      const uint8_t* scales = src + L.d_c;
      const float* lut = e4m3_table();
      for (int64_t t = 0; t < L.n_tiles(); ++t) {
        float s;
        std::memcpy(&s, scales + 4 * t, 4);
        for (int64_t i = t * kFp8Tile, e = std::min(L.d_c, i + kFp8Tile); i < e; ++i) c_kv[i] = lut[src[i]] * s;
      }
      const uint8_t* pe = scales + 4 * L.n_tiles();
      uint16_t h;
      for (int64_t i = 0; i < L.d_r; ++i) { std::memcpy(&h, pe + 2 * i, 2); k_pe[i] = bf16_to_f32(h); }
      return;
    }
    default: DSV2_FAIL(kInternal, "kv cache: unchecked dtype " << dtype_name(L.dtype));
  }
}

namespace {

int64_t checked_slot(const KvCacheView& c, const void* slots, DType t, int64_t i) {
  int64_t s = load_index(slots, t, i);
  DSV2_CHECK(s >= 0 && s < c.pages * c.layout.page_size, kRange,
             "slots[" << i << "] = " << s << " is outside the cache [0, " << c.pages * c.layout.page_size
                      << ") (" << c.pages << " pages of " << c.layout.page_size << " tokens)");
  return s;
}

}  // namespace

void check_append_slots(const KvCacheView& c, const void* slots, DType t, int64_t n) {
  std::vector<std::pair<int64_t, int64_t>> seen(n);
  for (int64_t i = 0; i < n; ++i) seen[i] = {checked_slot(c, slots, t, i), i};
  std::sort(seen.begin(), seen.end());
  for (int64_t i = 1; i < n; ++i)
    DSV2_CHECK(seen[i].first != seen[i - 1].first, kRange,
               "slots[" << seen[i - 1].second << "] and slots[" << seen[i].second << "] are both " << seen[i].first
                        << ": each token of an append needs its own slot");
}

namespace {

template <class F>
void for_tokens(int64_t n, bool parallel, F&& body) {
  if (!parallel) return body(int64_t{0}, n);
  parallel_for(n, 16, body);
}

}  // namespace

void kv_append(const KvAppendParams& p, bool parallel) {
  const KvLayout& L = p.cache.layout;
  // Check every slot before writing any: a bad slot leaves the cache untouched. A slot given
  // twice would be written by two threads at once: refused too.
  check_append_slots(p.cache, p.slots, p.slots_dtype, p.n_tokens);
  for_tokens(p.n_tokens, parallel, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t s = load_index(p.slots, p.slots_dtype, i);
      encode_token(L, p.c_kv + i * L.d_c, p.k_pe + i * L.d_r, p.cache.data + s * L.bytes_per_token());
    }
  });
}

void kv_read(const KvReadParams& p, bool parallel) {
  const KvLayout& L = p.cache.layout;
  for_tokens(p.n_tokens, parallel, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t s = checked_slot(p.cache, p.slots, p.slots_dtype, i);
      decode_token(L, p.cache.data + s * L.bytes_per_token(), p.c_kv + i * L.d_c, p.k_pe + i * L.d_r);
    }
  });
}

void kv_poison(const KvCacheView& c) {
  const KvLayout& L = c.layout;
  std::vector<uint8_t> token(L.bytes_per_token());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const uint16_t bf16_nan = 0x7fc0;
  switch (L.dtype) {
    case DType::kF32:
      for (size_t i = 0; i < token.size(); i += 4) std::memcpy(token.data() + i, &nan, 4);
      break;
    case DType::kBF16:
      for (size_t i = 0; i < token.size(); i += 2) std::memcpy(token.data() + i, &bf16_nan, 2);
      break;
    default:  // fp8: NaN codes, NaN scales, NaN k_pe
      std::memset(token.data(), 0x7f, L.d_c);
      for (int64_t t = 0; t < L.n_tiles(); ++t) std::memcpy(token.data() + L.d_c + 4 * t, &nan, 4);
      for (int64_t i = 0; i < L.d_r; ++i) std::memcpy(token.data() + L.d_c + 4 * L.n_tiles() + 2 * i, &bf16_nan, 2);
  }
  const int64_t tokens = c.pages * L.page_size;
  parallel_for(tokens, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(c.data + i * token.size(), token.data(), token.size());
  });
}

}  // namespace dsv2::cpu
