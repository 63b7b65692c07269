#include "storage.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef LK_WITH_CUDA
#include "../cuda/backend.h"
#endif

namespace lk {

namespace {
std::atomic<int64_t> g_live_buffers{0}, g_live_bytes{0};
}

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
    std::free(ptr);
  } else {
#ifdef LK_WITH_CUDA
    cuda::release(ptr);
#endif
  }
}

BufferRef allocate(Device device, size_t bytes, std::string* error) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* ptr = nullptr;
  if (device == Device::kCpu) {
    // Large tensors (K / V of long histories) are gathered row by row at random: 2 MiB-aligned and
    // offered to transparent huge pages, they cost far fewer TLB misses (as PyTorch's CPU allocator
    // does for large blocks). The advice is a hint; a kernel without THP simply ignores it.
    constexpr size_t kHugePage = size_t(2) << 20;
    const bool huge = rounded >= kHugePage;
    const size_t huge_bytes = (rounded + kHugePage - 1) / kHugePage * kHugePage;
    ptr = huge ? std::aligned_alloc(kHugePage, huge_bytes) : std::aligned_alloc(64, rounded ? rounded : 64);
    if (!ptr) {
      *error = "out of host memory allocating " + std::to_string(bytes) + " bytes";
      return nullptr;
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(ptr, huge_bytes, MADV_HUGEPAGE);
#endif
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
