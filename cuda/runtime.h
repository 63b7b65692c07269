// The host path's side that op files (cuda/**/*.cu) use: the device's stream, device scratch from
// the caching allocator, pinned staging of small host arrays, and the end of an op's issue. All of
// it lives in cuda/runtime.cu; an op file never allocates, frees or synchronizes by itself
// (test/host-path.test.ts greps for it).
//
// Every copy and launch of the addon goes to one stream per device, in issue order. That order is
// what makes the caching allocator's frees safe: a freed block returns to the cache at once, and
// whoever gets it next issues its work on the same stream, after every earlier use.
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "common/compat.cuh"

namespace lk::cuda {

// The current device's stream (created on first use, never destroyed). Every launch and copy of
// an op goes here.
cudaStream_t stream();

// A block of device memory for one op (plans, summaries, score scratch), from the caching
// allocator; back to the cache when the object dies, which is safe as soon as the op's work using
// it has been issued (see above).
class DeviceScratch {
 public:
  DeviceScratch() = default;
  ~DeviceScratch();
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  // "" or "what: out of memory ..." (after the allocator has trimmed its cache and retried).
  std::string allocate(size_t bytes, const char* what);
  unsigned char* get() const { return ptr_; }

 private:
  unsigned char* ptr_ = nullptr;
};

// Small host arrays of one op (offsets, segments, roles, rules, plans) packed into one pinned
// staging buffer and uploaded with one cudaMemcpyAsync on stream() into one DeviceScratch block.
// The host arrays are read by commit(); the staging buffer stays with the op until the stream has
// executed it (cuda/runtime.cu), so the caller may reuse its arrays at once.
class Upload {
 public:
  // Offset (256-byte aligned) in the device block of a copy of `bytes` bytes at `host`.
  size_t add(const void* host, size_t bytes);
  // Offset of `bytes` device bytes that the op's kernels write (not uploaded). Call after every add().
  size_t room(size_t bytes);
  // Stages, allocates and enqueues the copy; "" or an error naming `what`.
  std::string commit(const char* what);
  unsigned char* device() const { return device_.get(); }
  template <typename T>
  T* at(size_t offset) const { return reinterpret_cast<T*>(device_.get() + offset); }

 private:
  struct Piece {
    const void* host;
    size_t offset, bytes;
  };
  std::vector<Piece> pieces_;
  size_t uploaded_ = 0, total_ = 0;
  bool room_taken_ = false;
  DeviceScratch device_;
};

// Runs `fn` once the stream has executed the op being issued: on the completion thread, after the
// op's downloads (backend.h, download_async) have landed and before its `done` (outside submit(),
// at finish()'s wait). How an op hands device-computed sizes to the host without waiting for them.
void after_op(std::function<void()> fn);

// The end of an op's issue: its launch error (cudaGetLastError, named `what`) or "". Inside
// submit() (backend.h: the addon) the op's work is left running and its execution error goes to
// submit's `done`; a caller outside submit() (tools/gpu-check) gets a synchronous op: this waits
// for the stream and returns the execution error too.
std::string finish(const char* what);

}  // namespace lk::cuda
