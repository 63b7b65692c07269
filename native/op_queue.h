// The addon's own queue of kernel calls. Ops run one after another on a dedicated thread per device
// (which then drives the CPU thread pool or the CUDA stream), never on libuv's thread pool: an op
// waiting for the one before it holds no libuv thread, so file and network I/O never stall behind
// kernels (SPEC §6).
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace lk {

class OpQueue {
 public:
  OpQueue();
  ~OpQueue();
  OpQueue(const OpQueue&) = delete;
  OpQueue& operator=(const OpQueue&) = delete;

  // Runs `job` on the queue's thread after every job pushed before it. A job must not throw.
  void push(std::function<void()> job);

 private:
  void loop();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace lk
