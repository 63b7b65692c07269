// Phase profile of the tiled CPU attention kernel (issue #14), compiled in only with
// -DLK_PHASE_PROFILE (never in shipped builds): TSC cycles per kernel phase and the multiply-adds
// each GEMM phase executes, summed over all threads and calls, printed to stderr at exit. Each
// thread's cycles go to the innermost open phase, so phases never double count.
#pragma once
#ifdef LK_PHASE_PROFILE
#include <x86intrin.h>

#include <atomic>
#include <cstdint>
#include <cstdio>

namespace lk::cpu::prof {

enum Phase { kOther, kPack, kQSetup, kClassify, kMaskBits, kKGather, kSGemm, kSoftmax, kVCopy, kPVGemm, kOutput, kIdle, kPhases };
inline const char* const kPhaseNames[kPhases] = {"other",   "pack",    "q_setup", "classify", "mask_bits", "k_gather",
                                                 "s_gemm",  "softmax", "v_copy",  "pv_gemm",  "output",    "idle"};

struct Totals {
  std::atomic<uint64_t> cycles[kPhases] = {};
  std::atomic<uint64_t> macs[kPhases] = {};
  std::atomic<uint64_t> blocks{0}, calls{0};
  ~Totals() {
    const double n = calls.load() ? (double)calls.load() : 1.0;
    std::fprintf(stderr, "LK_PHASE_PROFILE calls %llu blocks/call %.1f\n", (unsigned long long)calls.load(), blocks.load() / n);
    for (int i = 0; i < kPhases; ++i)
      std::fprintf(stderr, "LK_PHASE_PROFILE %-9s cycles/call %.0f macs/call %.0f\n", kPhaseNames[i], cycles[i].load() / n,
                   macs[i].load() / n);
  }
};
inline Totals totals;

struct ThreadState {
  int phase = kOther;
  uint64_t since = 0;
};
inline thread_local ThreadState state;

// Charges the cycles since the last switch to the open phase and opens `next`; returns the old one.
inline int switch_to(int next) {
  const uint64_t now = __rdtsc();
  if (state.since) totals.cycles[state.phase].fetch_add(now - state.since, std::memory_order_relaxed);
  state.since = now;
  const int old = state.phase;
  state.phase = next;
  return old;
}
struct Scope {
  int outer;
  explicit Scope(int phase) : outer(switch_to(phase)) {}
  ~Scope() { switch_to(outer); }
};
// A task's end: its time is charged and the thread stops counting (idle time is measured apart).
inline void stop() {
  switch_to(kOther);
  state.since = 0;
}
inline void add_macs(int64_t m) { totals.macs[state.phase].fetch_add((uint64_t)m, std::memory_order_relaxed); }

}  // namespace lk::cpu::prof

#define LK_PROF_CAT2(a, b) a##b
#define LK_PROF_CAT(a, b) LK_PROF_CAT2(a, b)
#define LK_PROF_SCOPE(phase) ::lk::cpu::prof::Scope LK_PROF_CAT(lk_prof_scope_, __LINE__)(::lk::cpu::prof::phase)
#define LK_PROF_MACS(n) ::lk::cpu::prof::add_macs(n)
#define LK_PROF_STMT(...) __VA_ARGS__
#else
#define LK_PROF_SCOPE(phase) ((void)0)
#define LK_PROF_MACS(n) ((void)0)
#define LK_PROF_STMT(...)
#endif
