// A fixed pool of worker threads for the CPU kernels. parallel_for hands out task indices through
// one atomic counter (dynamic scheduling: causal and segment masks make tasks very uneven).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lk {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  int size() const { return (int)workers_.size() + 1; }  // the calling thread works too

  // Runs body(task, worker) for task in [0, count) and returns when all are done. worker is in
  // [0, size()) and lets a task use per-worker scratch. Calls from several threads are serialized.
  // An exception thrown by a task stops the remaining tasks and is rethrown here once every worker
  // has left the body; the pool stays usable.
  void parallel_for(int64_t count, const std::function<void(int64_t task, int worker)>& body);

  static ThreadPool& shared();

 private:
  void worker_loop(int worker);
  void run_tasks(int worker);

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int)>* body_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr failure_;  // the first exception of the current call
};

}  // namespace lk
