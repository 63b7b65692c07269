// CHECK for the emulator's selftests (selftest.cc, selftest_mma.cu): counts passes, prints each
// failure with its location, and selftest_summary() prints "N passed, M failed" and gives the exit
// status. Plain host code, so the same header serves the emulated and the nvcc builds.
#pragma once
#include <cstdio>

namespace lk_selftest {
inline int passed = 0, failed = 0;
inline int summary(const char* name) {
  std::printf("%s: %d passed, %d failed\n", name, passed, failed);
  return failed ? 1 : 0;
}
}  // namespace lk_selftest

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (cond) {                                          \
      ++lk_selftest::passed;                             \
    } else {                                             \
      ++lk_selftest::failed;                             \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);   \
      std::printf(__VA_ARGS__);                          \
      std::printf("\n");                                 \
    }                                                    \
  } while (0)
