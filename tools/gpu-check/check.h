// The standalone GPU check (tools/gpu-check, run by scripts/gpu-check.sh): every CUDA kernel of the
// backend (cuda/backend.h) against the native CPU backend linked into the same binary, on randomized
// jagged layouts, plus timings at the benchmark shapes and the host-hazard checks. No Node.js, no
// N-API. The same sources build with nvcc against a GPU or with g++ against the CUDA emulator
// (LK_CUDA_EMULATE), so the harness runs everywhere, also under sanitizers.
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../../cuda/backend.h"

namespace lk::check {

// ---------------------------------------------------------------- random numbers (splitmix64)
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (double)(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  int range(int lo, int hi) { return lo + (int)(next() % (uint64_t)(hi - lo + 1)); }  // [lo, hi]
  bool chance(double p) { return uniform() < p; }
  template <typename T> T pick(const std::vector<T>& xs) { return xs[next() % xs.size()]; }

 private:
  uint64_t s_;
};

// ---------------------------------------------------------------- sizes (the one knob)
struct Size {
  const char* name;  // small | medium | large
  int max_len;       // longest random sequence
  int max_batch;     // most sequences per random batch
  int repeat;        // random draws per case
};
Size size_named(const std::string& name);  // unknown -> small

// ---------------------------------------------------------------- host tensors in any dtype
size_t dtype_size(DType d);
const char* dtype_name(DType d);
// Elements of `dtype` converted from float (rounded to nearest even), as raw bytes.
std::vector<unsigned char> encode(const std::vector<float>& x, DType dtype);
std::vector<float> decode(const void* bytes, size_t count, DType dtype);
std::vector<float> random_floats(Rng& rng, size_t n, float amp = 1.0f);

// Device memory from the backend (cuda::alloc), freed on scope exit.
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t bytes);
  DevBuf(const void* host, size_t bytes);  // allocate + upload
  ~DevBuf();
  DevBuf(DevBuf&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  DevBuf& operator=(DevBuf&& o) noexcept;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  void poison();  // 0xff bytes: NaN in every float dtype, so an unwritten element shows
  void upload(const void* host);
  std::vector<unsigned char> download() const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---------------------------------------------------------------- comparison (SPEC §7)
float tolerance(DType d);  // 1e-5, 2e-3, 1.6e-2
struct Agreement {
  bool ok = true;
  double max_error = 0.0, max_ref = 0.0, tol = 0.0;
  std::string detail;  // first disagreement, in words
};
// max |got - ref| <= tol * (1 + max |ref|); NaN and +-Inf must sit at the same places.
Agreement agree(const std::vector<float>& got, const std::vector<float>& ref, float tol, const char* what);

// ---------------------------------------------------------------- results
struct CheckResult {
  std::string kernel, name, dtype;
  bool ok = true;
  double max_error = 0.0, tol = 0.0;
  std::string detail;
  double seconds = 0.0;
};
struct BenchResult {
  std::string kernel, shape, rule, dtype, path;
  double kernel_ms = -1.0, op_ms = -1.0;  // medians: device time of the kernels; host time of the whole op
  int iterations = 0;
  double flops = 0.0, bytes = 0.0;        // useful FLOP (allowed pairs only), fewest bytes moved
  double tflops = 0.0, gbps = 0.0;        // from kernel_ms
  double allowed_pairs = -1.0;
  std::string note;
};

struct Options {
  Size size = size_named("small");
  uint64_t seed = 1;
  bool checks = true, bench = true, faults = true, quiet = false;
  int bench_min_iters = 10, bench_max_iters = 200;
  double bench_min_ms = 150.0;
  std::vector<std::string> only, skip;
};

struct Context {
  Options opt;
  bool emulated = false;
  std::vector<CheckResult> checks;
  std::vector<BenchResult> bench;
  std::vector<CheckResult> faults;
  // Records one check (and prints a line unless quiet).
  void record(CheckResult r);
  void record_bench(BenchResult b);
  void record_fault(CheckResult r);
};

// ---------------------------------------------------------------- the kernel list (kernels.cc)
struct Kernel {
  const char* name;
  const char* what;
  std::function<void(Context&)> check;  // randomized cases against the CPU backend
  std::function<void(Context&)> bench;  // timings at the benchmark shapes (null: none)
};
const std::vector<Kernel>& kernels();
void run_faults(Context& ctx);  // host hazards: failed allocations, stale errors, grid limits, races

// ---------------------------------------------------------------- device facts and timing (device.cc)
struct GpuInfo {
  std::string name, compute_capability, driver_version, runtime_version;
  int multiprocessors = 0;
  double memory_bytes = 0.0, l2_bytes = 0.0;
};
GpuInfo gpu_info();
double host_ms();                         // steady clock
double copy_bandwidth_gbps(size_t bytes, int iters, double* ms_out);  // device-to-device, read + write
// A failing runtime call made directly (not through the backend) that leaves the thread's last
// error set, as a caller's own CUDA code might; returns whether the error is pending afterwards.
bool inject_stale_error();
bool last_error_pending();               // cudaPeekAtLastError() != cudaSuccess

std::string json_escape(const std::string& s);

}  // namespace lk::check
