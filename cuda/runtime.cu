// The CUDA runtime module: device discovery, and the host path every op goes through (backend.h,
// runtime.h) — one stream per device, a caching device allocator, pinned staging, and completion
// by events. cudart is linked statically, so this loads on machines without a driver and reports
// why CUDA is unusable instead of failing to load.
//
// Threads. Work is issued (copies, launches) by whoever calls submit(): the addon's CUDA queue
// thread for ops, the JS thread for tensor uploads. Issuers hold `issue_mutex` shared; emptying
// the cache holds it exclusively, with nothing in flight, so cudaFree / cudaFreeHost (which wait
// for the device) never run under an op in flight: no issuer ever waits for the device, and on the
// emulator, whose frees execute queued work and collect its errors, no op's error is taken away
// from it. One completion thread per device waits for the ops' events in issue order, then runs the
// host copies out of staging and the op's `done`, and returns its staging to the pool.
//
// Every failure here clears the thread's last error (common/host_check.cuh): a failed allocation
// is that call's error, never the next op's.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "backend.h"
#include "common/compat.cuh"
#include "common/host_check.cuh"
#include "common/once_cache.h"
#include "kernel_timing.h"
#include "runtime.h"

namespace lk::cuda {
namespace {

struct Probe {
  bool ok = false;
  std::string reason;
  std::vector<DeviceInfo> devices;
};

const Probe& probe() {
  static Probe result;
  static std::once_flag once;
  std::call_once(once, [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorInsufficientDriver) {
      result.reason = "no NVIDIA driver found (cudaGetDeviceCount: insufficient driver)";
    } else if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) {
      result.reason = "no CUDA device found";
    } else if (err != cudaSuccess) {
      result.reason = std::string("CUDA runtime unusable: ") + cudaGetErrorString(err);
    } else {
      for (int i = 0; i < count; ++i) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
        DeviceInfo info;
        info.name = prop.name;
        info.compute_capability = std::to_string(prop.major) + "." + std::to_string(prop.minor);
        info.total_memory = prop.totalGlobalMem;
        result.devices.push_back(info);
      }
      result.ok = !result.devices.empty();
      if (!result.ok) result.reason = "no usable CUDA device";
    }
    cudaGetLastError();  // clear the sticky-less error so later calls start clean
  });
  return result;
}

// ---------------------------------------------------------------- sizes

constexpr size_t kUploadAlign = 256;
constexpr size_t kPinnedPiece = size_t(16) << 20;  // tensor copies are staged in pieces of this size
constexpr size_t kPinnedLimit = size_t(256) << 20;  // pinned bytes kept cached when idle

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// The size class a device request is served from (and cached under).
size_t device_class(size_t bytes) {
  if (bytes == 0) bytes = 1;  // never a null pointer, even for an empty tensor
#ifdef LK_CUDA_EMULATE
  return bytes;  // exact on the emulator: AddressSanitizer sees a one-byte overrun of any request
#else
  if (bytes <= (size_t(1) << 20)) return align_up(bytes, 512);
  // An eighth of the power of two below: at most 12.5 % slack, few classes to reuse across.
  const size_t step = size_t(1) << (63 - __builtin_clzll((unsigned long long)bytes) - 3);
  return align_up(bytes, step);
#endif
}

size_t pinned_class(size_t bytes) {
  size_t c = 4096;
  while (c < bytes) c <<= 1;
  return c;
}

// ---------------------------------------------------------------- per-device state

struct PinnedBlock {
  void* ptr = nullptr;
  size_t cls = 0;
};

// What an op took from the runtime while it was issued; given back once the stream executed it.
struct OpState {
  std::vector<PinnedBlock> pinned;
  std::vector<std::function<void()>> after;  // host copies out of staging
};

struct Pending {
  cudaEvent_t event = nullptr;
  const char* what = "";
  std::string launch_error;
  Done done;
  OpState state;
};

struct Counters {
  std::atomic<unsigned long long> submitted{0}, completed{0}, issuer_waits{0}, completion_waits{0}, device_mallocs{0},
      device_frees{0}, cache_hits{0}, trims{0}, alloc_retries{0}, pinned_mallocs{0}, pinned_hits{0};
};

thread_local OpState* t_op = nullptr;  // the op this thread is issuing inside submit()
thread_local OpState t_standalone;     // ops issued outside submit(): released at this thread's next wait

class DeviceContext {
 public:
  explicit DeviceContext(int device) : device_(device) {
    const Probe& p = probe();
    if (!p.ok) {
      init_error_ = p.reason;
      return;
    }
    // A blocking stream: ordered with the legacy default stream that other code may use.
    init_error_ = check(cudaStreamCreateWithFlags(&stream_, cudaStreamDefault), "cudaStreamCreate");
    if (!init_error_.empty()) return;
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) cudaGetLastError();
    cache_limit_ = total_bytes / 4;
    if (const char* env = std::getenv("LIFELONG_CUDA_CACHE_BYTES"); env && *env) cache_limit_ = (size_t)std::strtoull(env, nullptr, 10);
    std::thread(&DeviceContext::complete_loop, this).detach();  // never destroyed, as the op queues
  }

  const std::string& init_error() const { return init_error_; }
  cudaStream_t stream() const { return stream_; }

  // ---- caching allocator
  std::string device_alloc(size_t bytes, void** out, const char* what) {
    *out = nullptr;
    const size_t cls = device_class(bytes);
    if ((*out = take_cached(free_blocks_, cls, &cached_bytes_, counters_.cache_hits))) return std::string();
    void* p = nullptr;
    if (cudaMalloc(&p, cls) != cudaSuccess) {
      cudaGetLastError();
      p = nullptr;
      counters_.alloc_retries++;
      empty_cache();
      const cudaError_t e = cudaMalloc(&p, cls);
      if (e != cudaSuccess) return check(e, what) + " (" + std::to_string(bytes) + " bytes, after emptying the cache)";
    }
    counters_.device_mallocs++;
    std::lock_guard<std::mutex> lock(cache_mutex_);
    block_class_[p] = cls;
    reserved_bytes_ += cls;
    *out = p;
    return std::string();
  }

  void device_free(void* p) {
    if (!p) return;
    bool over = false;
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = block_class_.find(p);
      if (it == block_class_.end()) return;  // not ours
      free_blocks_[it->second].push_back(p);
      cached_bytes_ += it->second;
      over = cached_bytes_ > cache_limit_;
    }
    if (over) want_trim();
  }

  // ---- pinned staging pool
  std::string pinned_alloc(size_t bytes, PinnedBlock* out) {
    const size_t cls = pinned_class(bytes);
    if (void* cached = take_cached(free_pinned_, cls, &pinned_cached_, counters_.pinned_hits)) {
      *out = PinnedBlock{cached, cls};
      return std::string();
    }
    void* p = nullptr;
    if (cudaMallocHost(&p, cls) != cudaSuccess) {
      cudaGetLastError();
      counters_.alloc_retries++;
      empty_cache();
      const cudaError_t e = cudaMallocHost(&p, cls);
      if (e != cudaSuccess) return check(e, "cudaMallocHost(staging)") + " (" + std::to_string(cls) + " bytes)";
    }
    counters_.pinned_mallocs++;
    *out = PinnedBlock{p, cls};
    return std::string();
  }

  void pinned_free(const PinnedBlock& b) {
    if (!b.ptr) return;
    bool over = false;
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      free_pinned_[b.cls].push_back(b.ptr);
      pinned_cached_ += b.cls;
      over = pinned_cached_ > kPinnedLimit;
    }
    if (over) want_trim();
  }

  // ---- completion
  // Records the end of the op just issued and hands it to the completion thread; without an event
  // (none could be made), waits for the stream here and completes the op at once.
  void enqueue_completion(const char* what, std::string launch_error, Done done, OpState&& state) {
    cudaEvent_t event = take_event();
    if (event && cudaEventRecord(event, stream_) != cudaSuccess) {
      cudaGetLastError();
      cudaEventDestroy(event);
      event = nullptr;
    }
    counters_.submitted++;
    if (event) {
      std::lock_guard<std::mutex> lock(done_mutex_);
      pending_.push_back(Pending{event, what, std::move(launch_error), std::move(done), std::move(state)});
      ++in_flight_;
      trim_blocked_ = false;
      done_cv_.notify_all();
      return;
    }
    counters_.issuer_waits++;
    const std::string exec = check(cudaStreamSynchronize(stream_), what);
    finish_op(launch_error.empty() ? exec : launch_error, done, state);
  }

  // Waits for the stream on the calling thread (callers outside submit()), then gives back what
  // this thread's standalone ops took.
  std::string wait_stream(const char* what) {
    counters_.issuer_waits++;
    const std::string err = check(cudaStreamSynchronize(stream_), what);
    OpState state = std::move(t_standalone);
    t_standalone = OpState();
    for (auto& f : state.after) f();
    for (const PinnedBlock& b : state.pinned) pinned_free(b);
    return err;
  }

  void hold(bool on) {
    std::lock_guard<std::mutex> lock(done_mutex_);
    held_ = on;
    done_cv_.notify_all();
  }

  HostPathStats stats() {
    HostPathStats s;
    s.submitted = counters_.submitted;
    s.completed = counters_.completed;
    s.issuer_waits = counters_.issuer_waits;
    s.completion_waits = counters_.completion_waits;
    s.device_mallocs = counters_.device_mallocs;
    s.device_frees = counters_.device_frees;
    s.cache_hits = counters_.cache_hits;
    s.trims = counters_.trims;
    s.alloc_retries = counters_.alloc_retries;
    s.pinned_mallocs = counters_.pinned_mallocs;
    s.pinned_hits = counters_.pinned_hits;
    {
      std::lock_guard<std::mutex> lock(done_mutex_);
      s.in_flight = (unsigned long long)in_flight_;
    }
    std::lock_guard<std::mutex> lock(cache_mutex_);
    s.cached_bytes = cached_bytes_;
    s.reserved_bytes = reserved_bytes_;
    s.cache_limit = cache_limit_;
    s.pinned_cached_bytes = pinned_cached_;
    return s;
  }

  std::shared_mutex& issue_mutex() { return issue_mutex_; }

  void set_cache_limit(size_t bytes) {
    bool over;
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      cache_limit_ = bytes;
      over = cached_bytes_ > cache_limit_;
    }
    if (over) want_trim();
  }

 private:
  cudaEvent_t take_event() {
    {
      std::lock_guard<std::mutex> lock(done_mutex_);
      if (!spare_events_.empty()) {
        cudaEvent_t e = spare_events_.back();
        spare_events_.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    // Blocking sync: the completion thread sleeps in the driver instead of spinning on a core.
    if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventBlockingSync) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return e;
  }

  void finish_op(const std::string& error, const Done& done, OpState& state) {
    for (auto& f : state.after) f();
    try {
      if (done) done(error);
    } catch (...) {  // a completion callback has nowhere to report to
    }
    for (const PinnedBlock& b : state.pinned) pinned_free(b);
    state = OpState();
    counters_.completed++;
  }

  void complete_loop() {
    if (cudaSetDevice(device_) != cudaSuccess) cudaGetLastError();  // the idle trim frees this device's blocks
    std::unique_lock<std::mutex> lock(done_mutex_);
    for (;;) {
      done_cv_.wait(lock, [&] { return (!pending_.empty() && !held_) || (trim_wanted_ && in_flight_ == 0 && !trim_blocked_); });
      if (!pending_.empty() && !held_) {
        Pending op = std::move(pending_.front());
        pending_.pop_front();
        lock.unlock();
        // The only wait for the device in the addon: here, on this thread, in issue order. (On the
        // emulator this is what executes the queued work, as a GPU would meanwhile.)
        counters_.completion_waits++;
        const cudaError_t e = cudaEventSynchronize(op.event);
        const std::string exec = check(e, op.what);
        finish_op(op.launch_error.empty() ? exec : op.launch_error, op.done, op.state);
        op.done = nullptr;  // the op's captures (buffers it keeps alive) go before it counts as done
        lock.lock();
        spare_events_.push_back(op.event);
        if (--in_flight_ == 0) idle_cv_.notify_all();
        continue;
      }
      // Idle with more cached than the bound: trim, unless an issuer holds the device (then the
      // next submit or free asks again).
      lock.unlock();
      if (issue_mutex_.try_lock()) {
        bool idle;
        {
          std::lock_guard<std::mutex> l(done_mutex_);
          idle = in_flight_ == 0;
        }
        if (idle) release_cached(cache_limit_, kPinnedLimit);
        issue_mutex_.unlock();
        lock.lock();
        if (!idle) trim_blocked_ = true;
      } else {
        lock.lock();
        trim_blocked_ = true;
      }
    }
  }

  // A cached block of class `cls` from `pool`, or null.
  void* take_cached(std::map<size_t, std::vector<void*>>& pool, size_t cls, size_t* cached, std::atomic<unsigned long long>& hits) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = pool.find(cls);
    if (it == pool.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    *cached -= cls;
    hits++;
    return p;
  }

  void want_trim() {
    std::lock_guard<std::mutex> lock(done_mutex_);
    trim_wanted_ = true;
    trim_blocked_ = false;
    done_cv_.notify_all();
  }

  // Empties both caches, on an allocation failure: with nothing in flight and nobody issuing (or,
  // when the caller is itself issuing an op, once everything submitted before has completed).
  void empty_cache() {
    if (t_op) {
      wait_idle();
      release_cached(0, 0);
      return;
    }
    std::unique_lock<std::shared_mutex> exclusive(issue_mutex_);
    wait_idle();
    release_cached(0, 0);
  }

  void wait_idle() {
    std::unique_lock<std::mutex> lock(done_mutex_);
    if (in_flight_ > 0) counters_.issuer_waits++;
    idle_cv_.wait(lock, [&] { return in_flight_ == 0 || held_; });
  }

  // Frees cached blocks until at most `keep_device` / `keep_pinned` bytes stay cached. Callers make
  // sure nothing is in flight (cudaFree and cudaFreeHost wait for the device).
  void release_cached(size_t keep_device, size_t keep_pinned) {
    std::vector<void*> device, pinned;
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      for (auto it = free_blocks_.begin(); it != free_blocks_.end() && cached_bytes_ > keep_device; ++it)
        while (!it->second.empty() && cached_bytes_ > keep_device) {
          device.push_back(it->second.back());
          it->second.pop_back();
          cached_bytes_ -= it->first;
          reserved_bytes_ -= it->first;
          block_class_.erase(device.back());
        }
      for (auto it = free_pinned_.begin(); it != free_pinned_.end() && pinned_cached_ > keep_pinned; ++it)
        while (!it->second.empty() && pinned_cached_ > keep_pinned) {
          pinned.push_back(it->second.back());
          it->second.pop_back();
          pinned_cached_ -= it->first;
        }
    }
    for (void* p : device)
      if (cudaFree(p) != cudaSuccess) cudaGetLastError();
    for (void* p : pinned)
      if (cudaFreeHost(p) != cudaSuccess) cudaGetLastError();
    counters_.device_frees += device.size();
    counters_.trims++;
    std::lock_guard<std::mutex> lock(done_mutex_);
    trim_wanted_ = false;
  }

  int device_;
  std::string init_error_;
  cudaStream_t stream_ = nullptr;
  Counters counters_;
  std::shared_mutex issue_mutex_;

  std::mutex cache_mutex_;
  std::unordered_map<void*, size_t> block_class_;  // every device block owned, in use or cached
  std::map<size_t, std::vector<void*>> free_blocks_, free_pinned_;
  size_t cached_bytes_ = 0, reserved_bytes_ = 0, cache_limit_ = 0, pinned_cached_ = 0;

  std::mutex done_mutex_;
  std::condition_variable done_cv_, idle_cv_;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> spare_events_;
  int64_t in_flight_ = 0;
  bool held_ = false, trim_wanted_ = false, trim_blocked_ = false;
};

// The current device's context, or null with *error set.
DeviceContext* context(std::string* error) {
  static auto* all = new OnceCache<int, DeviceContext*>();  // never destroyed: threads may still use them at exit
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    device = 0;
  }
  DeviceContext* c = nullptr;
  all->get(device, &c, [device](DeviceContext** made) {
    *made = new DeviceContext(device);
    return true;
  });
  if (!c->init_error().empty()) {
    if (error) *error = "CUDA: " + c->init_error();
    return nullptr;
  }
  return c;
}

OpState& op_state() { return t_op ? *t_op : t_standalone; }

// Copies `bytes` between `dev` and host memory through pinned pieces of at most kPinnedPiece bytes.
std::string staged_copy(DeviceContext& c, void* dev, void* host, size_t bytes, bool to_device) {
  OpState& st = op_state();
  for (size_t at = 0; at < bytes; at += kPinnedPiece) {
    const size_t n = std::min(kPinnedPiece, bytes - at);
    PinnedBlock b;
    std::string err = c.pinned_alloc(n, &b);
    if (!err.empty()) return err;
    st.pinned.push_back(b);
    unsigned char* d = static_cast<unsigned char*>(dev) + at;
    unsigned char* h = static_cast<unsigned char*>(host) + at;
    if (to_device) {
      std::memcpy(b.ptr, h, n);
      err = check(cudaMemcpyAsync(d, b.ptr, n, cudaMemcpyHostToDevice, c.stream()), "cudaMemcpyAsync(host to device)");
    } else {
      err = check(cudaMemcpyAsync(b.ptr, d, n, cudaMemcpyDeviceToHost, c.stream()), "cudaMemcpyAsync(device to host)");
      if (err.empty()) st.after.push_back([h, p = b.ptr, n] { std::memcpy(h, p, n); });
    }
    if (!err.empty()) return err;
  }
  return std::string();
}

// Runs `issue` as a synchronous operation of a caller outside submit().
template <typename F>
std::string run_and_wait(const char* what, F issue) {
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) return err;
  err = issue(*c);
  const std::string waited = c->wait_stream(what);
  return err.empty() ? waited : err;
}

}  // namespace

bool available(std::string* reason, std::vector<DeviceInfo>* devices) {
  const Probe& p = probe();
  if (reason) *reason = p.reason;
  if (devices) *devices = p.devices;
  return p.ok;
}

bool emulated() {
#ifdef LK_CUDA_EMULATE
  return true;
#else
  return false;
#endif
}

// ---------------------------------------------------------------- memory (backend.h)

std::string alloc(size_t bytes, void** ptr) {
  *ptr = nullptr;
  std::string err;
  DeviceContext* c = context(&err);
  return c ? c->device_alloc(bytes, ptr, "cudaMalloc") : err;
}

void release(void* ptr) {
  if (!ptr) return;
  if (DeviceContext* c = context(nullptr)) c->device_free(ptr);
}

// ---------------------------------------------------------------- submission and copies

std::string submit(const char* what, const std::function<std::string()>& issue, Done done) {
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) {
    if (done) done(err);
    return err;
  }
  OpState state;
  {
    std::shared_lock<std::shared_mutex> issuing(c->issue_mutex());
    OpState* outer = t_op;
    t_op = &state;
    try {
      err = issue();
    } catch (const std::bad_alloc&) {
      err = std::string(what) + ": out of host memory";
    } catch (const std::exception& e) {
      err = e.what();
    }
    t_op = outer;
    c->enqueue_completion(what, err, std::move(done), std::move(state));
  }
  return err;
}

std::string upload_async(void* dst, const void* host, size_t bytes) {
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) return err;
  return bytes ? staged_copy(*c, dst, const_cast<void*>(host), bytes, true) : std::string();
}

std::string download_async(void* host, const void* src, size_t bytes) {
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) return err;
  return bytes ? staged_copy(*c, const_cast<void*>(src), host, bytes, false) : std::string();
}

std::string copy_on_device_async(void* dst, const void* src, size_t bytes) {
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) return err;
  return bytes ? check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream()), "cudaMemcpyAsync(device to device)") : "";
}

std::string zero_async(void* ptr, size_t bytes) {
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) return err;
  return bytes ? check(cudaMemsetAsync(ptr, 0, bytes, c->stream()), "cudaMemsetAsync") : "";
}

std::string copy_to_device(void* dst, const void* src, size_t bytes) {
  return run_and_wait("cudaMemcpyAsync(host to device)", [&](DeviceContext&) { return upload_async(dst, src, bytes); });
}

std::string copy_to_host(void* dst, const void* src, size_t bytes) {
  return run_and_wait("cudaMemcpyAsync(device to host)", [&](DeviceContext&) { return download_async(dst, src, bytes); });
}

std::string copy_on_device(void* dst, const void* src, size_t bytes) {
  return run_and_wait("cudaMemcpyAsync(device to device)", [&](DeviceContext&) { return copy_on_device_async(dst, src, bytes); });
}

std::string zero(void* ptr, size_t bytes) {
  return run_and_wait("cudaMemsetAsync", [&](DeviceContext&) { return zero_async(ptr, bytes); });
}

std::string synchronize() {
  return run_and_wait("cudaStreamSynchronize", [](DeviceContext&) { return std::string(); });
}

// ---------------------------------------------------------------- for op files (runtime.h)

cudaStream_t stream() {
  DeviceContext* c = context(nullptr);
  return c ? c->stream() : cudaStreamLegacy;  // no context: the op's allocation reports why first
}

DeviceScratch::~DeviceScratch() { release(ptr_); }

std::string DeviceScratch::allocate(size_t bytes, const char* what) {
  release(ptr_);
  ptr_ = nullptr;
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) return err;
  void* p = nullptr;
  err = c->device_alloc(bytes, &p, what);
  ptr_ = static_cast<unsigned char*>(p);
  return err;
}

size_t Upload::add(const void* host, size_t bytes) {
  const size_t at = align_up(uploaded_, kUploadAlign);
  if (bytes) pieces_.push_back(Piece{host, at, bytes});
  uploaded_ = at + bytes;
  total_ = std::max(total_, uploaded_);
  return at;
}

size_t Upload::room(size_t bytes) {
  const size_t at = align_up(std::max(total_, uploaded_), kUploadAlign);
  total_ = at + bytes;
  room_taken_ = true;
  return at;
}

std::string Upload::commit(const char* what) {
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) return err;
  err = device_.allocate(total_, what);
  if (!err.empty() || uploaded_ == 0) return err;
  PinnedBlock b;
  err = c->pinned_alloc(uploaded_, &b);
  if (!err.empty()) return std::string(what) + ": " + err;
  op_state().pinned.push_back(b);
  unsigned char* staging = static_cast<unsigned char*>(b.ptr);
  size_t end = 0;
  for (const Piece& piece : pieces_) {
    std::memset(staging + end, 0, piece.offset - end);  // alignment gaps: defined bytes, not stale staging
    std::memcpy(staging + piece.offset, piece.host, piece.bytes);
    end = piece.offset + piece.bytes;
  }
  std::memset(staging + end, 0, uploaded_ - end);
  return check(cudaMemcpyAsync(device_.get(), staging, uploaded_, cudaMemcpyHostToDevice, c->stream()), what);
}

void after_op(std::function<void()> fn) { op_state().after.push_back(std::move(fn)); }

std::string finish(const char* what) {
  const std::string launch = check(cudaGetLastError(), what);
  if (t_op) return launch;  // inside submit(): the completion thread reports the execution
  std::string err;
  DeviceContext* c = context(&err);
  if (!c) return launch.empty() ? err : launch;
  const std::string waited = c->wait_stream(what);
  return launch.empty() ? waited : launch;
}

// ---------------------------------------------------------------- test support (backend.h)

HostPathStats host_path_stats() {
  DeviceContext* c = context(nullptr);
  return c ? c->stats() : HostPathStats();
}

void set_cache_limit(size_t bytes) {
  if (DeviceContext* c = context(nullptr)) c->set_cache_limit(bytes);
}

void hold_completions(bool hold) {
  if (DeviceContext* c = context(nullptr)) c->hold(hold);
}

namespace {
__global__ void lk_trap_kernel() { __trap(); }
}  // namespace

std::string fault_op(int mode) {
  discard_stale_error();
  if (mode == 0) {
    LK_LAUNCH(lk_trap_kernel, dim3(1), dim3(1), 0, stream())();
  } else {
    LK_LAUNCH(lk_trap_kernel, dim3(1), dim3(4096), 0, stream())();  // above 1,024 threads: refused
  }
  return finish("fault op");
}

// ---------------------------------------------------------------- kernel timing (kernel_timing.h)

namespace {
std::atomic<bool> g_kernel_timing{false};
thread_local double t_last_kernel_ms = -1.0;
}  // namespace

void set_kernel_timing(bool on) { g_kernel_timing.store(on); }
double last_kernel_ms() { return t_last_kernel_ms; }

KernelSpan::KernelSpan() : on_(g_kernel_timing.load(std::memory_order_relaxed)) {
  if (on_) t_last_kernel_ms = -1.0;
}

KernelSpan::~KernelSpan() {
  if (start_) cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  if (stop_) cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}

// CUDA events on the op's stream, on a GPU and on the emulator alike (its events time the queued
// work when it runs). Timing waits for the stop event: a tools/gpu-check measurement, never the addon.
void KernelSpan::begin() {
  if (!on_ || begun_) return;
  begun_ = true;
  cudaEvent_t a = nullptr, b = nullptr;
  if (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess || cudaEventRecord(a, stream()) != cudaSuccess) {
    cudaGetLastError();
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    on_ = false;
    return;
  }
  start_ = a;
  stop_ = b;
}

void KernelSpan::end() {
  if (!on_ || !begun_) return;
  on_ = false;
  cudaEvent_t a = static_cast<cudaEvent_t>(start_), b = static_cast<cudaEvent_t>(stop_);
  float ms = -1.0f;
  // An error here is left for the op's own check (a failed launch fails the events too).
  if (cudaEventRecord(b, stream()) != cudaSuccess || cudaEventSynchronize(b) != cudaSuccess || cudaEventElapsedTime(&ms, a, b) != cudaSuccess)
    ms = -1.0f;
  t_last_kernel_ms = ms;
}

}  // namespace lk::cuda
