// Thread pool: a queue of jobs, each split into chunks claimed with an atomic counter.
// The caller works on its own job too, so a job always finishes even if every worker is
// busy with other callers' jobs (no deadlock when parallel_for calls nest or overlap).
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace dsv2 {
namespace {

struct Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n, chunk, n_chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
  std::exception_ptr error;

  // Claims and runs chunks until none is left. Returns after the last claim.
  void work() {
    for (;;) {
      int64_t c = next.fetch_add(1);
      if (c >= n_chunks) return;
      int64_t b = c * chunk, e = std::min(n, b + chunk);
      try {
        (*fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu);
        if (!error) error = std::current_exception();
      }
      if (done.fetch_add(1) + 1 == n_chunks) {
        std::lock_guard<std::mutex> lk(mu);
        cv.notify_all();
      }
    }
  }
};

class Pool {
 public:
  explicit Pool(int n_workers) {
    for (int i = 0; i < n_workers; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void submit(const std::shared_ptr<Job>& job) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      queue_.push_back(job);
    }
    cv_.notify_all();
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [this] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        job = queue_.front();
        // A job whose chunks are all claimed leaves the queue; its owner waits for it.
        if (job->next.load() >= job->n_chunks) {
          queue_.pop_front();
          continue;
        }
      }
      job->work();
      std::lock_guard<std::mutex> lk(mu_);
      if (!queue_.empty() && queue_.front() == job) queue_.pop_front();
    }
  }

  std::vector<std::thread> threads_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

int read_num_threads() {
  if (const char* s = std::getenv("DSV2_NUM_THREADS")) {
    int v = std::atoi(s);
    if (v >= 1) return v;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

Pool& pool() {
  // Leaked on purpose: joining threads during static destruction at process exit can
  // race with Node's own teardown.
  static Pool* p = new Pool(num_threads() - 1);
  return *p;
}

}  // namespace

int num_threads() {
  static const int n = read_num_threads();
  return n;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int nt = num_threads();
  // Aim for a few chunks per thread so uneven chunks even out, never below the grain.
  int64_t chunk = std::max<int64_t>(grain, (n + 4 * nt - 1) / (4 * nt));
  int64_t n_chunks = (n + chunk - 1) / chunk;
  if (nt == 1 || n_chunks == 1) {
    fn(0, n);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  job->chunk = chunk;
  job->n_chunks = n_chunks;
  pool().submit(job);
  job->work();
  {
    std::unique_lock<std::mutex> lk(job->mu);
    job->cv.wait(lk, [&] { return job->done.load() == job->n_chunks; });
  }
  if (job->error) std::rethrow_exception(job->error);
}

}  // namespace dsv2
