// lk_gpu_check: runs every CUDA kernel against the native CPU backend, times them, checks the host
// hazards, and writes one JSON report. See tools/gpu-check/README.md for the CLI and the schema.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>

#include "check.h"

namespace lk::check {
namespace {

const char* kUsage =
    "usage: lk_gpu_check [options]\n"
    "  --size small|medium|large  random layout sizes and draws per case (default small)\n"
    "  --small                    = --size small\n"
    "  --seed N                   base seed of every random case (default 1)\n"
    "  --only a,b / --skip a,b    kernels by name (see --list)\n"
    "  --no-checks --no-bench --no-faults   leave a part out\n"
    "  --bench-ms MS              least time per timed configuration (default 150)\n"
    "  --json PATH                write the report there (default: none)\n"
    "  --quiet                    no line per case\n"
    "  --list                     print the kernels and exit\n"
    "exit status: 0 every check passed, 1 a check failed, 2 no usable GPU or a setup error\n";

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ',')) if (!x.empty()) out.push_back(x);
  return out;
}

bool selected(const Options& o, const std::string& name) {
  for (const auto& s : o.skip) if (s == name) return false;
  if (o.only.empty()) return true;
  for (const auto& s : o.only) if (s == name) return true;
  return false;
}

std::string num(double x) {
  if (!std::isfinite(x)) return "null";
  char b[64];
  std::snprintf(b, sizeof b, "%.6g", x);
  return b;
}
std::string str(const std::string& s) { return "\"" + json_escape(s) + "\""; }

std::string now_iso() {
  char b[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return b;
}

void write_checks(std::ostream& o, const std::vector<CheckResult>& list) {
  o << "[";
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& c = list[i];
    o << (i ? ",\n    " : "\n    ") << "{\"kernel\": " << str(c.kernel) << ", \"case\": " << str(c.name) << ", \"dtype\": " << str(c.dtype)
      << ", \"ok\": " << (c.ok ? "true" : "false") << ", \"maxError\": " << num(c.max_error) << ", \"tolerance\": " << num(c.tol)
      << ", \"seconds\": " << num(c.seconds) << ", \"detail\": " << str(c.detail) << "}";
  }
  o << (list.empty() ? "]" : "\n  ]");
}

}  // namespace

void Context::record(CheckResult r) {
  if (!opt.quiet || !r.ok)
    std::printf("%s %-24s %-9s %-58s %8.2fs  err %.3g / tol %.3g%s%s\n", r.ok ? "ok  " : "FAIL", r.kernel.c_str(), r.dtype.c_str(), r.name.c_str(),
                r.seconds, r.max_error, r.tol, r.detail.empty() ? "" : "  ", r.ok ? "" : r.detail.c_str());
  std::fflush(stdout);
  checks.push_back(std::move(r));
}

void Context::record_fault(CheckResult r) {
  std::printf("%s host: %s (%.2fs)%s%s\n", r.ok ? "ok  " : "FAIL", r.name.c_str(), r.seconds, r.detail.empty() ? "" : " - ", r.detail.c_str());
  std::fflush(stdout);
  faults.push_back(std::move(r));
}

void Context::record_bench(BenchResult b) {
  if (!opt.quiet)
    std::printf("time %-24s %-20s %-16s %-9s kernel %9.4f ms  op %9.4f ms  %8.3f TFLOP/s  %8.1f GB/s  (%d runs)\n", b.kernel.c_str(), b.shape.c_str(),
                b.rule.c_str(), b.dtype.c_str(), b.kernel_ms, b.op_ms, b.tflops, b.gbps, b.iterations);
  std::fflush(stdout);
  bench.push_back(std::move(b));
}

int run(int argc, char** argv) {
  Options opt;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n%s", a.c_str(), kUsage); std::exit(2); }
      return argv[++i];
    };
    if (a == "--size") opt.size = size_named(value());
    else if (a == "--small") opt.size = size_named("small");
    else if (a == "--seed") opt.seed = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "--only") opt.only = split(value());
    else if (a == "--skip") opt.skip = split(value());
    else if (a == "--no-checks") opt.checks = false;
    else if (a == "--no-bench") opt.bench = false;
    else if (a == "--no-faults") opt.faults = false;
    else if (a == "--bench-ms") opt.bench_min_ms = std::atof(value().c_str());
    else if (a == "--json") json = value();
    else if (a == "--quiet") opt.quiet = true;
    else if (a == "--list") {
      for (const auto& k : kernels()) std::printf("%-24s %s%s\n", k.name, k.what, k.bench ? " (timed)" : "");
      return 0;
    } else if (a == "--help" || a == "-h") { std::printf("%s", kUsage); return 0; }
    else { std::fprintf(stderr, "unknown option %s\n%s", a.c_str(), kUsage); return 2; }
  }

  Context ctx;
  ctx.opt = opt;
  ctx.emulated = cuda::emulated();
  const double t0 = host_ms();
  std::string status = "pass", message;
  GpuInfo gpu;
  double copy_gbps = -1.0, copy_ms = -1.0;
  size_t copy_bytes = 0;

  // The driver first: without a usable device there is nothing to check.
  std::string reason;
  std::vector<cuda::DeviceInfo> devices;
  if (!cuda::available(&reason, &devices)) {
    status = "no-gpu";
    message = "CUDA unavailable: " + reason;
    std::fprintf(stderr, "lk_gpu_check: %s\n", message.c_str());
  } else {
    gpu = gpu_info();
    std::printf("lk_gpu_check: %s (%s, cc %s, %d SMs, %.1f GiB), driver %s, runtime %s, size %s, seed %llu\n", gpu.name.c_str(),
                ctx.emulated ? "emulated" : "CUDA", gpu.compute_capability.c_str(), gpu.multiprocessors, gpu.memory_bytes / (1 << 30),
                gpu.driver_version.c_str(), gpu.runtime_version.c_str(), opt.size.name, (unsigned long long)opt.seed);
    try {
      if (opt.checks)
        for (const auto& k : kernels())
          if (selected(opt, k.name)) k.check(ctx);
      if (opt.faults) run_faults(ctx);
      if (opt.bench) {
        copy_bytes = ctx.emulated ? (size_t)16 << 20 : (size_t)2 << 30;
        copy_gbps = copy_bandwidth_gbps(copy_bytes, ctx.emulated ? 2 : 20, &copy_ms);
        std::printf("ceiling: device-to-device copy %.1f GB/s (read + write, %zu MiB)\n", copy_gbps, copy_bytes >> 20);
        for (const auto& k : kernels())
          if (k.bench && selected(opt, k.name)) k.bench(ctx);
      }
    } catch (const std::exception& e) {
      status = "error";
      message = std::string("exception: ") + e.what();
      std::fprintf(stderr, "lk_gpu_check: %s\n", message.c_str());
    }
  }
  int failed = 0, faults_failed = 0;
  for (const auto& c : ctx.checks) failed += !c.ok;
  for (const auto& c : ctx.faults) faults_failed += !c.ok;
  if (status == "pass" && (failed || faults_failed)) {
    status = "fail";
    message = std::to_string(failed) + " of " + std::to_string(ctx.checks.size()) + " checks and " + std::to_string(faults_failed) + " of " +
              std::to_string(ctx.faults.size()) + " host checks failed";
  }
  const double seconds = (host_ms() - t0) / 1000.0;
  std::printf("lk_gpu_check: %s - %zu checks (%d failed), %zu host checks (%d failed), %zu timings, %.1f s\n", status.c_str(), ctx.checks.size(), failed,
              ctx.faults.size(), faults_failed, ctx.bench.size(), seconds);

  if (!json.empty()) {
    std::ofstream o(json);
    o << "{\n  \"schema\": \"lifelong-kernels/gpu-check/1\",\n  \"date\": " << str(now_iso()) << ",\n  \"mode\": " << str(ctx.emulated ? "emulated" : "cuda")
      << ",\n  \"status\": " << str(status) << ",\n  \"message\": " << str(message) << ",\n  \"seconds\": " << num(seconds)
      << ",\n  \"options\": {\"size\": " << str(opt.size.name) << ", \"seed\": " << opt.seed << ", \"checks\": " << (opt.checks ? "true" : "false")
      << ", \"bench\": " << (opt.bench ? "true" : "false") << ", \"faults\": " << (opt.faults ? "true" : "false") << "},\n  \"gpu\": {\"name\": " << str(gpu.name)
      << ", \"computeCapability\": " << str(gpu.compute_capability) << ", \"multiprocessors\": " << gpu.multiprocessors << ", \"memoryBytes\": " << num(gpu.memory_bytes)
      << ", \"l2Bytes\": " << num(gpu.l2_bytes) << ", \"driver\": " << str(gpu.driver_version) << ", \"runtime\": " << str(gpu.runtime_version)
      << "},\n  \"ceilings\": {\"copyGBps\": " << num(copy_gbps) << ", \"copyBytes\": " << copy_bytes << ", \"copyMs\": " << num(copy_ms)
      << ", \"source\": \"cudaMemcpyAsync device to device, read + write bytes\"},\n";
    o << "  \"summary\": {\"checks\": " << ctx.checks.size() << ", \"failed\": " << failed << ", \"hostChecks\": " << ctx.faults.size()
      << ", \"hostFailed\": " << faults_failed << ", \"timings\": " << ctx.bench.size() << ", \"kernels\": {";
    bool first = true;
    for (const auto& k : kernels()) {
      int n = 0, f = 0;
      for (const auto& c : ctx.checks) if (c.kernel == k.name) { ++n; f += !c.ok; }
      o << (first ? "" : ", ") << str(k.name) << ": {\"cases\": " << n << ", \"failed\": " << f << "}";
      first = false;
    }
    o << "}},\n  \"checks\": ";
    write_checks(o, ctx.checks);
    o << ",\n  \"hostChecks\": ";
    write_checks(o, ctx.faults);
    o << ",\n  \"bench\": [";
    for (size_t i = 0; i < ctx.bench.size(); ++i) {
      const auto& b = ctx.bench[i];
      o << (i ? ",\n    " : "\n    ") << "{\"kernel\": " << str(b.kernel) << ", \"shape\": " << str(b.shape) << ", \"rule\": " << str(b.rule)
        << ", \"dtype\": " << str(b.dtype) << ", \"path\": " << str(b.path) << ", \"kernelMs\": " << num(b.kernel_ms) << ", \"opMs\": " << num(b.op_ms)
        << ", \"iterations\": " << b.iterations << ", \"flop\": " << num(b.flops) << ", \"bytes\": " << num(b.bytes) << ", \"tflops\": " << num(b.tflops)
        << ", \"gbps\": " << num(b.gbps) << ", \"allowedPairs\": " << (b.allowed_pairs >= 0 ? num(b.allowed_pairs) : "null")
        << ", \"fractionOfCopy\": " << (copy_gbps > 0 && b.gbps > 0 ? num(b.gbps / copy_gbps) : "null") << ", \"note\": " << str(b.note) << "}";
    }
    o << (ctx.bench.empty() ? "]\n}\n" : "\n  ]\n}\n");
    if (!o) { std::fprintf(stderr, "lk_gpu_check: could not write %s\n", json.c_str()); return 2; }
  }
  if (status == "pass") return 0;
  return status == "fail" ? 1 : 2;
}

}  // namespace lk::check

int main(int argc, char** argv) { return lk::check::run(argc, argv); }
