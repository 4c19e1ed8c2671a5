// Compile-time constants of the core. Model sizes never live here: they come from
// config.json through each op's params.
#pragma once

namespace dsv2 {
// CPU kernels split work into chunks no smaller than this many scalar FLOPs so that the
// thread-pool overhead (~1-2 us per chunk) stays below a few percent.
constexpr long kMinFlopsPerChunk = 1L << 15;
// Maximum rank accepted by any op.
constexpr int kMaxRank = 8;
}  // namespace dsv2
