#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace lk::cpu {
namespace {

constexpr const char* kNames[kIsaCount] = {"portable", "neon", "avx2", "avx512", "avx512bf16"};

bool cpu_runs(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return true;
    case Isa::kNeon: return LK_ISA_NEON;  // part of the arm64 baseline
#if LK_ISA_X86
    case Isa::kAvx2: __builtin_cpu_init(); return __builtin_cpu_supports("x86-64-v3");
    case Isa::kAvx512: __builtin_cpu_init(); return __builtin_cpu_supports("x86-64-v4");
    case Isa::kAvx512Bf16:
      __builtin_cpu_init();
      return __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512bf16");
#endif
    default: return false;
  }
}

struct ActiveIsa {
  std::atomic<int> isa;
  std::string env_error;
  ActiveIsa() {
    const Isa best = best_isa();
    isa.store((int)best);
    const char* forced = std::getenv("LK_CPU_ISA");
    if (!forced || !*forced) return;
    Isa want;
    if (!parse_isa(forced, &want)) {
      env_error = std::string("LK_CPU_ISA: unknown instruction set '") + forced +
                  "' (expected portable, neon, avx2, avx512 or avx512bf16)";
    } else if (!cpu_runs(want)) {
      env_error = std::string("LK_CPU_ISA: this CPU or build cannot run '") + forced + "' (best here: " + kNames[(int)best] + ")";
    } else {
      isa.store((int)want);
    }
  }
};

ActiveIsa& state() {
  static ActiveIsa s;
  return s;
}

}  // namespace

const char* isa_name(Isa isa) { return kNames[(int)isa]; }
bool isa_supported(Isa isa) { return cpu_runs(isa); }

Isa best_isa() {
  Isa best = Isa::kPortable;
  for (int i = 0; i < kIsaCount; ++i)
    if (cpu_runs((Isa)i)) best = (Isa)i;  // Isa lists each architecture's sets in increasing preference
  return best;
}

Isa active_isa() { return (Isa)state().isa.load(std::memory_order_relaxed); }

bool parse_isa(const char* name, Isa* out) {
  for (int i = 0; i < kIsaCount; ++i)
    if (std::strcmp(name, kNames[i]) == 0) {
      *out = (Isa)i;
      return true;
    }
  return false;
}

bool set_active_isa(Isa isa) {
  if (!cpu_runs(isa)) return false;
  state().isa.store((int)isa);
  return true;
}

const char* isa_env_error() {
  const std::string& e = state().env_error;
  return e.empty() ? nullptr : e.c_str();
}

Isa isa_fallback(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16: return Isa::kAvx512;
    case Isa::kAvx512: return Isa::kAvx2;
    default: return Isa::kPortable;
  }
}

}  // namespace lk::cpu
