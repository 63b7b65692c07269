#include "thread_pool.h"

#include <cstdlib>

namespace lk {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

ThreadPool& ThreadPool::shared() {
  // LIFELONG_THREADS overrides the hardware count (benchmarks, tests of the single-thread path).
  // Never destroyed: an op may still be running when the process exits, and joining its workers
  // from a static destructor would wait for it (or tear the pool down under it).
  static ThreadPool* pool = new ThreadPool([] {
    const char* env = std::getenv("LIFELONG_THREADS");
    int n = env ? std::atoi(env) : 0;
    if (n <= 0) n = (int)std::thread::hardware_concurrency();
    return n > 0 ? n : 1;
  }());
  return *pool;
}

void ThreadPool::run_tasks(int worker) {
  for (;;) {
    const int64_t task = next_.fetch_add(1, std::memory_order_relaxed);
    if (task >= count_) return;
    try {
      (*body_)(task, worker);
    } catch (...) {
      // Keep the first failure for the caller and hand out no further tasks; the other workers
      // finish the task they hold, so the caller never unwinds while one still runs.
      std::lock_guard<std::mutex> lock(mutex_);
      if (!failure_) failure_ = std::current_exception();
      next_.store(count_, std::memory_order_relaxed);
      return;
    }
  }
}

void ThreadPool::worker_loop(int worker) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      ++busy_;
    }
    run_tasks(worker);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) done_.notify_all();
    }
  }
}

void ThreadPool::parallel_for(int64_t count, const std::function<void(int64_t, int)>& body) {
  if (count <= 0) return;
  std::lock_guard<std::mutex> call(call_mutex_);
  if (workers_.empty() || count == 1) {
    for (int64_t t = 0; t < count; ++t) body(t, 0);
    return;
  }
  {
    // A worker that woke late for the previous call may still be draining it: wait it out so
    // the fields below are not rewritten under its feet.
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return busy_ == 0; });
    body_ = &body;
    count_ = count;
    failure_ = nullptr;
    next_.store(0);
    ++generation_;
  }
  wake_.notify_all();
  run_tasks(0);
  std::exception_ptr failure;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return busy_ == 0; });
    body_ = nullptr;
    failure = failure_;
    failure_ = nullptr;
  }
  if (failure) std::rethrow_exception(failure);
}

}  // namespace lk
