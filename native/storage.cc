#include "storage.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef LK_WITH_CUDA
#include "../cuda/backend.h"
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define LK_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define LK_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define LK_POISON(p, n) ((void)(p), (void)(n))
#define LK_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace lk {

namespace {
std::atomic<int64_t> g_live_buffers{0}, g_live_bytes{0};

// Large host blocks (>= kHugePage) are 2 MiB-aligned and offered to transparent huge pages: K / V of
// long histories are gathered row by row at random, and huge pages cost far fewer TLB misses (as
// PyTorch's CPU allocator does for large blocks).
constexpr size_t kHugePage = size_t(2) << 20;
size_t host_block_bytes(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  return rounded >= kHugePage ? (rounded + kHugePage - 1) / kHugePage * kHugePage : (rounded ? rounded : 64);
}

// Freed large host blocks kept for the next request of the same size, like the CUDA caching
// allocator (cuda/runtime.cu). A fresh block is mapped anew by the C library, and the kernel faults
// and zeroes each of its pages on first touch (huge-page zeroing and compaction: 1-7 ms of system
// time per call for an 8 MiB attention output, 7-10 % of a memory-token mask's samples). Bounded by
// LIFELONG_CPU_CACHE_BYTES (default 256 MiB): past it the oldest blocks are freed. Small blocks are
// left to malloc, which reuses them without faults. Under AddressSanitizer a cached block is
// poisoned, so a use after dispose is still reported.
class HostBlockCache {
 public:
  HostBlockCache() {
    if (const char* env = std::getenv("LIFELONG_CPU_CACHE_BYTES"); env && *env) limit_ = (size_t)std::strtoull(env, nullptr, 10);
  }
  // A cached block of exactly `bytes` (a host_block_bytes size), or null.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = blocks_.size(); i-- > 0;) {  // newest first: its pages are the likeliest in cache
      if (blocks_[i].bytes != bytes) continue;
      void* p = blocks_[i].ptr;
      blocks_.erase(blocks_.begin() + (std::ptrdiff_t)i);
      cached_ -= bytes;
      ++hits_;
      LK_UNPOISON(p, bytes);
      return p;
    }
    ++misses_;
    return nullptr;
  }
  void give(void* p, size_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes <= limit_) {
        LK_POISON(p, bytes);
        blocks_.push_back(Block{p, bytes});
        cached_ += bytes;
        p = nullptr;
      }
      trim_locked(limit_, &evicted);
    }
    if (p) std::free(p);
    for (void* e : evicted) std::free(e);
  }
  void release_all() {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      trim_locked(0, &evicted);
    }
    for (void* e : evicted) std::free(e);
  }
  void set_limit(size_t limit) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = limit;
      trim_locked(limit_, &evicted);
    }
    for (void* e : evicted) std::free(e);
  }
  HostCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return HostCacheStats{hits_, misses_, (uint64_t)blocks_.size(), (uint64_t)cached_, (uint64_t)limit_};
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
  };
  // Frees (into *evicted, to be freed outside the lock) the oldest blocks until at most `bound` bytes stay.
  void trim_locked(size_t bound, std::vector<void*>* evicted) {
    size_t drop = 0;
    while (cached_ > bound) {  // oldest first
      cached_ -= blocks_[drop].bytes;
      LK_UNPOISON(blocks_[drop].ptr, blocks_[drop].bytes);
      evicted->push_back(blocks_[drop++].ptr);
    }
    blocks_.erase(blocks_.begin(), blocks_.begin() + (std::ptrdiff_t)drop);
  }
  std::mutex mutex_;
  std::vector<Block> blocks_;  // oldest first; at most limit_ / kHugePage entries
  size_t cached_ = 0;
  size_t limit_ = size_t(256) << 20;
  uint64_t hits_ = 0, misses_ = 0;
};

HostBlockCache& host_cache() {
  static HostBlockCache* cache = new HostBlockCache();  // never destroyed: buffers may outlive statics
  return *cache;
}
}  // namespace

HostCacheStats host_cache_stats() { return host_cache().stats(); }
void set_host_cache_limit(size_t bytes) { host_cache().set_limit(bytes); }

LiveMemory live_memory() { return LiveMemory{g_live_buffers.load(), g_live_bytes.load()}; }

const char* device_name(Device d) { return d == Device::kCuda ? "cuda" : "cpu"; }

bool parse_device(const std::string& s, Device* out) {
  if (s == "cpu") { *out = Device::kCpu; return true; }
  if (s == "cuda") { *out = Device::kCuda; return true; }
  return false;
}

Buffer::~Buffer() {
  if (!ptr || !owns()) return;  // a view: the parent / external owner is released with it
  g_live_buffers.fetch_sub(1);
  g_live_bytes.fetch_sub((int64_t)bytes);
  if (device == Device::kCpu) {
    const size_t block = host_block_bytes(bytes);
    if (block >= kHugePage) host_cache().give(ptr, block);
    else std::free(ptr);
  } else {
#ifdef LK_WITH_CUDA
    cuda::release(ptr);
#endif
  }
}

BufferRef allocate(Device device, size_t bytes, std::string* error) {
  void* ptr = nullptr;
  if (device == Device::kCpu) {
    const size_t block = host_block_bytes(bytes);
    const bool huge = block >= kHugePage;
    ptr = huge ? host_cache().take(block) : nullptr;
    if (!ptr) {
      const size_t align = huge ? kHugePage : 64;
      ptr = std::aligned_alloc(align, block);
      if (!ptr) {  // the cached blocks back to the system, then one retry
        host_cache().release_all();
        ptr = std::aligned_alloc(align, block);
      }
      if (!ptr) {
        *error = "out of host memory allocating " + std::to_string(bytes) + " bytes";
        return nullptr;
      }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      if (huge) madvise(ptr, block, MADV_HUGEPAGE);  // a hint; a kernel without THP ignores it
#endif
    }
  } else {
#ifdef LK_WITH_CUDA
    *error = cuda::alloc(bytes, &ptr);  // exact: see cuda::alloc
    if (!error->empty()) return nullptr;
#else
    *error = "CUDA support was not compiled into this build";
    return nullptr;
#endif
  }
  g_live_buffers.fetch_add(1);
  g_live_bytes.fetch_add((int64_t)bytes);
  return std::make_shared<Buffer>(device, bytes, ptr);
}

BufferRef view_of(const BufferRef& of, size_t byte_offset, size_t bytes) {
  // A view of a view points at the memory's owner, so chains of views never grow.
  const BufferRef& owner = of->parent ? of->parent : of;
  return std::make_shared<Buffer>(of->device, bytes, static_cast<char*>(of->ptr) + byte_offset, owner, of->external);
}

BufferRef wrap_external(void* ptr, size_t bytes, std::shared_ptr<ExternalOwner> owner) {
  return std::make_shared<Buffer>(Device::kCpu, bytes, ptr, nullptr, std::move(owner));
}

// Device memory is never touched here: the binding writes and reads it on the device's stream
// (cuda/backend.h, submit and the *_async copies), in order with the ops.
std::string zero_bytes(Device device, void* ptr, size_t bytes) {
  if (bytes == 0) return std::string();
  if (device != Device::kCpu) return "zero_bytes: host memory only (device memory is zeroed on the device's stream)";
  std::memset(ptr, 0, bytes);
  return std::string();
}

std::string copy_bytes(Device dst_device, void* dst, Device src_device, const void* src, size_t bytes) {
  if (bytes == 0) return std::string();
  if (dst_device != Device::kCpu || src_device != Device::kCpu)
    return "copy_bytes: host memory only (device memory is copied on the device's stream)";
  std::memcpy(dst, src, bytes);
  return std::string();
}

}  // namespace lk
