// Host side of maskedAttention on CUDA: uploads the layouts, summarizes tiles on the device and
// launches the kernel instantiated for the dtype and head capacity.
#include <cstring>
#include <string>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "masked_attention_kernel.cuh"

namespace lk::cuda {
namespace {

std::string check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return std::string();
  return std::string(what) + ": " + cudaGetErrorString(err);
}

// Packs host arrays into one staging buffer (one upload, one device allocation per call).
struct Staging {
  std::vector<unsigned char> bytes;
  size_t add(const void* src, size_t n) {
    const size_t at = (bytes.size() + 255) / 256 * 256;
    bytes.resize(at + n);
    if (src && n) std::memcpy(bytes.data() + at, src, n);
    return at;
  }
};

template <typename T, int kCap>
void launch(const AttentionParams& p, const TileSummary* q_tiles, const TileSummary* k_tiles,
            int q_tiles_per_seq, int k_tiles_per_seq) {
  using Tr = AttentionTraits<kCap>;
  const dim3 grid((unsigned)(p.batch * q_tiles_per_seq), (unsigned)p.heads, 1);
  auto* kernel = masked_attention_kernel<T, kCap>;
  LK_LAUNCH(kernel, grid, dim3(Tr::kThreads), 0, 0)(p, q_tiles, k_tiles, q_tiles_per_seq, k_tiles_per_seq);
}

template <typename T>
void launch_for_capacity(int cap, const AttentionParams& p, const TileSummary* q_tiles,
                         const TileSummary* k_tiles, int k_tiles_per_seq) {
  auto q_tiles_per_seq = [&](int bm) { return (p.max_q_len + bm - 1) / bm; };
  switch (cap) {
    case 32: launch<T, 32>(p, q_tiles, k_tiles, q_tiles_per_seq(AttentionTraits<32>::kBlockM), k_tiles_per_seq); break;
    case 64: launch<T, 64>(p, q_tiles, k_tiles, q_tiles_per_seq(AttentionTraits<64>::kBlockM), k_tiles_per_seq); break;
    case 128: launch<T, 128>(p, q_tiles, k_tiles, q_tiles_per_seq(AttentionTraits<128>::kBlockM), k_tiles_per_seq); break;
    default: launch<T, 256>(p, q_tiles, k_tiles, q_tiles_per_seq(AttentionTraits<256>::kBlockM), k_tiles_per_seq); break;
  }
}

int block_m(int cap) {
  switch (cap) {
    case 32: return AttentionTraits<32>::kBlockM;
    case 64: return AttentionTraits<64>::kBlockM;
    case 128: return AttentionTraits<128>::kBlockM;
    default: return AttentionTraits<256>::kBlockM;
  }
}

int block_n(int cap) {
  switch (cap) {
    case 32: return AttentionTraits<32>::kBlockN;
    case 64: return AttentionTraits<64>::kBlockN;
    case 128: return AttentionTraits<128>::kBlockN;
    default: return AttentionTraits<256>::kBlockN;
  }
}

}  // namespace

bool head_dim_supported(int dim) {
  return dim == 8 || dim == 16 || dim == 32 || dim == 64 || dim == 128 || dim == 256;
}

std::string masked_attention(const AttentionParams& host) {
  if (host.tq == 0 || host.batch == 0) return std::string();
  const int cap = head_capacity(host.head_dim, host.value_dim);
  const int bm = block_m(cap), bn = block_n(cap);
  const int q_tiles_per_seq = (host.max_q_len + bm - 1) / bm;
  const int k_tiles_per_seq = (host.max_k_len + bn - 1) / bn;
  const bool shared_layout = host.kv_layout.offsets == host.q_layout.offsets &&
                             host.kv_layout.segments == host.q_layout.segments &&
                             host.kv_layout.roles == host.q_layout.roles;

  Staging st;
  const size_t n_off = (size_t)host.batch + 1;
  const size_t q_off = st.add(host.q_layout.offsets, n_off * 4);
  const size_t q_seg = host.q_layout.segments ? st.add(host.q_layout.segments, (size_t)host.tq * 4) : 0;
  const size_t q_role = host.q_layout.roles ? st.add(host.q_layout.roles, (size_t)host.tq) : 0;
  size_t k_off = q_off, k_seg = q_seg, k_role = q_role;
  if (!shared_layout) {
    k_off = st.add(host.kv_layout.offsets, n_off * 4);
    k_seg = host.kv_layout.segments ? st.add(host.kv_layout.segments, (size_t)host.tk * 4) : 0;
    k_role = host.kv_layout.roles ? st.add(host.kv_layout.roles, (size_t)host.tk) : 0;
  }
  const size_t q_sum = st.add(nullptr, (size_t)host.batch * q_tiles_per_seq * sizeof(TileSummary));
  const size_t k_sum = st.add(nullptr, (size_t)host.batch * k_tiles_per_seq * sizeof(TileSummary));

  unsigned char* dev = nullptr;
  std::string err = check(cudaMalloc(reinterpret_cast<void**>(&dev), st.bytes.size()), "cudaMalloc(layout)");
  if (!err.empty()) return err;
  err = check(cudaMemcpy(dev, st.bytes.data(), q_sum, cudaMemcpyHostToDevice), "cudaMemcpy(layout)");

  AttentionParams p = host;
  p.q_layout.offsets = reinterpret_cast<const int32_t*>(dev + q_off);
  p.q_layout.segments = host.q_layout.segments ? reinterpret_cast<const int32_t*>(dev + q_seg) : nullptr;
  p.q_layout.roles = host.q_layout.roles ? reinterpret_cast<const uint8_t*>(dev + q_role) : nullptr;
  p.kv_layout.offsets = reinterpret_cast<const int32_t*>(dev + k_off);
  p.kv_layout.segments = host.kv_layout.segments ? reinterpret_cast<const int32_t*>(dev + k_seg) : nullptr;
  p.kv_layout.roles = host.kv_layout.roles ? reinterpret_cast<const uint8_t*>(dev + k_role) : nullptr;
  TileSummary* q_tiles = reinterpret_cast<TileSummary*>(dev + q_sum);
  TileSummary* k_tiles = reinterpret_cast<TileSummary*>(dev + k_sum);

  if (err.empty()) {
    const int threads = 128;
    const int64_t nq = (int64_t)host.batch * q_tiles_per_seq, nk = (int64_t)host.batch * k_tiles_per_seq;
    auto* summary = tile_summary_kernel;
    LK_LAUNCH(summary, dim3((unsigned)((nq + threads - 1) / threads)), dim3(threads), 0, 0)(
        p.q_layout, host.batch, bm, q_tiles_per_seq, q_tiles);
    if (nk > 0)
      LK_LAUNCH(summary, dim3((unsigned)((nk + threads - 1) / threads)), dim3(threads), 0, 0)(
          p.kv_layout, host.batch, bn, k_tiles_per_seq, k_tiles);
    switch (host.dtype) {
      case kFloat16: launch_for_capacity<__half>(cap, p, q_tiles, k_tiles, k_tiles_per_seq); break;
      case kBFloat16: launch_for_capacity<__nv_bfloat16>(cap, p, q_tiles, k_tiles, k_tiles_per_seq); break;
      default: launch_for_capacity<float>(cap, p, q_tiles, k_tiles, k_tiles_per_seq); break;
    }
    err = check(cudaGetLastError(), "maskedAttention launch");
    if (err.empty()) err = check(cudaDeviceSynchronize(), "maskedAttention");
  }
  cudaFree(dev);
  return err;
}

}  // namespace lk::cuda
