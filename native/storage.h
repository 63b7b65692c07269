// Memory owned by the addon. Tensors hold it through a Storage JS object; async ops hold their own
// reference, so dispose() during an op frees the memory only once the op is done (for a CUDA op:
// once the device's stream has executed it). Device memory comes from the CUDA runtime module's
// caching allocator (cuda/runtime.cu).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lk {

enum class Device { kCpu, kCuda };

const char* device_name(Device d);
bool parse_device(const std::string& s, Device* out);

// Memory this addon did not allocate (a caller's typed array wrapped without a copy): kept alive by
// its owner object for as long as any Buffer on it lives.
struct ExternalOwner {
  virtual ~ExternalOwner() = default;
  // True once the memory can no longer be used (a JS ArrayBuffer detached by a transfer).
  virtual bool detached() const = 0;
};

struct Buffer;
using BufferRef = std::shared_ptr<Buffer>;

// A span of device memory. It either owns its allocation (freed with it, counted by live_memory),
// or is a view: bytes inside a parent Buffer (which it keeps alive) or inside external memory.
struct Buffer {
  Device device;
  size_t bytes;
  void* ptr;
  BufferRef parent;                         // views of another Buffer: the owner of the memory
  std::shared_ptr<ExternalOwner> external;  // wrapped caller memory: what keeps it alive
  Buffer(Device d, size_t n, void* p) : device(d), bytes(n), ptr(p) {}
  Buffer(Device d, size_t n, void* p, BufferRef owner, std::shared_ptr<ExternalOwner> ext)
      : device(d), bytes(n), ptr(p), parent(std::move(owner)), external(std::move(ext)) {}
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  bool owns() const { return !parent && !external; }
  // The external memory this span lies in, if any (directly or through its parent).
  const ExternalOwner* external_owner() const { return external ? external.get() : parent ? parent->external_owner() : nullptr; }
};

// `bytes` bytes at `byte_offset` inside `of` (which must hold them): no copy, keeps `of`'s memory alive.
BufferRef view_of(const BufferRef& of, size_t byte_offset, size_t bytes);
// Host memory owned by `owner` (a caller's array), used in place.
BufferRef wrap_external(void* ptr, size_t bytes, std::shared_ptr<ExternalOwner> owner);

// Buffers alive right now and their bytes (every device): what tests check for leaks exactly,
// where V8's external-memory total also moves with ordinary ArrayBuffers.
struct LiveMemory { int64_t buffers; int64_t bytes; };
LiveMemory live_memory();

// The host caching allocator (storage.cc): freed blocks of 2 MiB and more are kept, up to a limit
// (LIFELONG_CPU_CACHE_BYTES, default 256 MiB), for the next request of the same size.
struct HostCacheStats {
  uint64_t hits, misses, blocks, cached_bytes, limit;
};
HostCacheStats host_cache_stats();
// Sets the cache's bound in bytes and frees the oldest cached blocks past it (0: cache nothing).
void set_host_cache_limit(size_t bytes);

// Allocates `bytes` on `device`; on failure returns null and sets *error.
BufferRef allocate(Device device, size_t bytes, std::string* error);
// Host memory only (device kCpu); device memory is zeroed and copied on the device's stream by the
// binding (cuda/backend.h), in order with the ops.
std::string zero_bytes(Device device, void* ptr, size_t bytes);
std::string copy_bytes(Device dst_device, void* dst, Device src_device, const void* src, size_t bytes);

}  // namespace lk
