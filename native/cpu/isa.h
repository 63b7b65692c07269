// The CPU kernels' one instruction-set dispatch. Every ISA-specific kernel is an always-inline
// template instantiated inside entry functions carrying one of the LK_TARGET_* attributes below, and
// each kernel lists its entries in an IsaTable indexed by Isa; isa_pick() returns the entry of the
// active ISA. The active ISA is the best this CPU runs, unless LK_CPU_ISA (read once, at load) or
// set_active_isa() (test support) forces a lower one, so parity suites can run on every path.
// Shipped binaries are compiled for the baseline only: no -march=native anywhere.
#pragma once
#include <cstdint>

namespace lk::cpu {

enum class Isa : int {
  kPortable = 0,    // GCC vector extensions, baseline code generation (SSE2 on x86-64, NEON on arm64)
  kNeon = 1,        // arm64: NEON-shaped micro-kernels
  kAvx2 = 2,        // x86-64-v3: AVX2 + FMA + F16C
  kAvx512 = 3,      // x86-64-v4: AVX-512 F/BW/DQ/VL
  kAvx512Bf16 = 4,  // x86-64-v4 + AVX512-BF16 (vdpbf16ps)
};
constexpr int kIsaCount = 5;

const char* isa_name(Isa isa);
// Whether this build and this CPU can run `isa`'s entries.
bool isa_supported(Isa isa);
// The best supported ISA.
Isa best_isa();
// The ISA kernels run on now.
Isa active_isa();
// Parses a name as isa_name() spells it; false when unknown.
bool parse_isa(const char* name, Isa* out);
// Forces `isa` for calls that start from now on; false (nothing changed) when it is not supported.
bool set_active_isa(Isa isa);
// An error message when LK_CPU_ISA was set to an unknown or unsupported ISA (then the best is
// active), else nullptr. The addon refuses to load with it, so a forced test run cannot silently
// fall back to another path.
const char* isa_env_error();

// One kernel's entries, one per ISA; a null entry falls back to the nearest lower ISA of the same
// family (AVX512-BF16 -> AVX-512 -> AVX2 -> portable, NEON -> portable).
template <typename Fn>
struct IsaTable {
  Fn entry[kIsaCount];
};

Isa isa_fallback(Isa isa);

template <typename Fn>
Fn isa_pick(const IsaTable<Fn>& table, Isa isa = active_isa()) {
  for (;;) {
    if (Fn f = table.entry[(int)isa]) return f;
    isa = isa_fallback(isa);
  }
}

}  // namespace lk::cpu

// Attributes of entry functions, one per ISA. Only x86-64 has them; elsewhere the ISA-specific
// entries are not compiled at all (their table slots stay null).
#if defined(__x86_64__) || defined(_M_X64)
#define LK_ISA_X86 1
#define LK_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define LK_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define LK_TARGET_AVX512BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))
#else
#define LK_ISA_X86 0
#endif
#if defined(__aarch64__)
#define LK_ISA_NEON 1
#else
#define LK_ISA_NEON 0
#endif
// Table slots of entries that exist only on one architecture.
#if LK_ISA_X86
#define LK_IF_X86(f) f
#else
#define LK_IF_X86(f) nullptr
#endif
#if LK_ISA_NEON
#define LK_IF_NEON(f) f
#else
#define LK_IF_NEON(f) nullptr
#endif
