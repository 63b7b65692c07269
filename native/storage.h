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

struct Buffer {
  Device device;
  size_t bytes;
  void* ptr;
  Buffer(Device d, size_t n, void* p) : device(d), bytes(n), ptr(p) {}
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};
using BufferRef = std::shared_ptr<Buffer>;

// Buffers alive right now and their bytes (every device): what tests check for leaks exactly,
// where V8's external-memory total also moves with ordinary ArrayBuffers.
struct LiveMemory { int64_t buffers; int64_t bytes; };
LiveMemory live_memory();

// Allocates `bytes` on `device`; on failure returns null and sets *error.
BufferRef allocate(Device device, size_t bytes, std::string* error);
// Host memory only (device kCpu); device memory is zeroed and copied on the device's stream by the
// binding (cuda/backend.h), in order with the ops.
std::string zero_bytes(Device device, void* ptr, size_t bytes);
std::string copy_bytes(Device dst_device, void* dst, Device src_device, const void* src, size_t bytes);

}  // namespace lk
