// Helpers of the emulator's verifier tests (cuda/emu/tests/*.cu, run by scripts/emu-verify.cjs).
// Each test is a program written as for a GPU; argv[1] names a case: a "bad-..." case holds a bug
// the emulator must catch (exit status != 0 and a message), a "good-..." case its correct
// counterpart, which must pass (exit status 0, no emulator message).
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/compat.cuh"

// Exits with status 1 when a CUDA call fails, printing the call and the error.
#define VERIFY_CUDA(call)                                                                        \
  do {                                                                                           \
    const cudaError_t verify_err = (call);                                                       \
    if (verify_err != cudaSuccess) {                                                             \
      std::printf("%s: %s (%s)\n", #call, cudaGetErrorName(verify_err), cudaGetErrorString(verify_err)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

// Exits with status 2 when a result is wrong.
#define VERIFY(cond, ...)                         \
  do {                                            \
    if (!(cond)) {                                \
      std::printf("wrong result: " __VA_ARGS__); \
      std::printf("\n");                          \
      std::exit(2);                               \
    }                                             \
  } while (0)

inline std::string verify_case(int argc, char** argv, const char* usage) {
  if (argc < 2) {
    std::printf("usage: %s CASE (%s)\n", argv[0], usage);
    std::exit(64);
  }
  return argv[1];
}

[[noreturn]] inline void verify_unknown(const std::string& c) {
  std::printf("unknown case %s\n", c.c_str());
  std::exit(64);
}
