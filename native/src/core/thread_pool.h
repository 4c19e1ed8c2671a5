// A process-wide CPU thread pool for the fast op paths. Ops run on libuv worker threads
// (one per in-flight async op) and call parallel_for from there; several may do so at once.
#pragma once
#include <cstdint>
#include <functional>

namespace dsv2 {

// Threads that parallel_for uses, the calling thread included: DSV2_NUM_THREADS when set
// (>= 1), else std::thread::hardware_concurrency().
int num_threads();

// Runs fn(begin, end) over [0, n) in chunks of at least `grain` items, on the pool and the
// calling thread; returns when every chunk is done. The first exception thrown by a chunk
// is rethrown here after all chunks have finished.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace dsv2
