// Host arrays packed into one buffer, each at a 256-byte boundary, for one upload into one device
// allocation per op (host side of the CUDA launch code).
#pragma once
#include <cstddef>
#include <cstring>
#include <vector>

namespace lk::cuda {

struct HostStaging {
  std::vector<unsigned char> bytes;
  // Appends n bytes of src (room only when src is null); returns their offset in the buffer.
  size_t add(const void* src, size_t n) {
    const size_t at = (bytes.size() + 255) / 256 * 256;
    bytes.resize(at + n);
    if (src && n) std::memcpy(bytes.data() + at, src, n);
    return at;
  }
};

}  // namespace lk::cuda
