// Token sampling: greedy, temperature, top-k, top-p, seeded. The definition of the draw
// (see SampleParams in dense.h) is part of the API: the same seed gives the same tokens on
// every machine and every implementation.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu_ops.h"
#include "dsv2/status.h"
#include "../core/thread_pool.h"

namespace dsv2::cpu {
namespace {

uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int32_t sample_row(const SampleParams& p, int64_t row) {
  const float* l = p.logits + row * p.vocab;
  int64_t best = 0;
  for (int64_t i = 0; i < p.vocab; ++i) {
    DSV2_CHECK(std::isfinite(l[i]) || l[i] == -INFINITY, kRange,
               "logits[" << row << ", " << i << "] = " << l[i] << " (NaN and +inf cannot be sampled)");
    if (l[i] > l[best]) best = i;
  }
  DSV2_CHECK(l[best] != -INFINITY, kRange, "logits row " << row << " is all -inf: nothing can be sampled");
  if (p.temperature == 0.0) return static_cast<int32_t>(best);

  const double mx = l[best];
  // kept[i] != 0 for tokens that survive top-k and top-p.
  std::vector<uint8_t> kept(p.vocab, 1);
  const bool filter_k = p.top_k > 0 && p.top_k < p.vocab;
  const bool filter_p = p.top_p < 1.0;
  if (filter_k || filter_p) {
    // Candidates in descending logit order, lower id first on ties.
    std::vector<int32_t> order(p.vocab);
    std::iota(order.begin(), order.end(), 0);
    auto by_logit = [l](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
    int64_t n = filter_k ? p.top_k : p.vocab;
    if (n < p.vocab) {
      std::nth_element(order.begin(), order.begin() + n, order.end(), by_logit);
      order.resize(n);
    }
    std::sort(order.begin(), order.end(), by_logit);
    if (filter_p) {
      double total = 0;
      for (int32_t id : order) total += std::exp((l[id] - mx)  / p.temperature);
      double cum = 0;
      int64_t keep = 0;
      while (keep < n) {
        cum += std::exp((l[order[keep]] - mx)  / p.temperature);
        ++keep;
        if (cum >= p.top_p * total) break;
      }
      order.resize(keep);
    }
    std::fill(kept.begin(), kept.end(), 0);
    for (int32_t id : order) kept[id] = 1;
  }
  double total = 0;
  for (int64_t i = 0; i < p.vocab; ++i)
    if (kept[i]) total += std::exp((l[i] - mx)  / p.temperature);
  uint64_t z = splitmix64(p.seed + static_cast<uint64_t>(row + 1) * 0x9E3779B97F4A7C15ull);
  const double target = static_cast<double>(z >> 11) * 0x1.0p-53 * total;
  double cum = 0;
  int64_t last = best;
  for (int64_t i = 0; i < p.vocab; ++i) {
    if (!kept[i]) continue;
    cum += std::exp((l[i] - mx)  / p.temperature);
    last = i;
    if (cum > target) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(last);  // rounding left target just past the sum
}

}  // namespace

void sample(const SampleParams& p, bool parallel) {
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) p.out[r] = sample_row(p, r);
  };
  if (!parallel) return body(0, p.rows);
  parallel_for(p.rows, 1, body);
}

}  // namespace dsv2::cpu
