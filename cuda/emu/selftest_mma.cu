// Checks of cuda/common/mma.cuh: every lane's fragment of every primitive against tables written
// out here by hand from the PTX ISA (9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating
// point type", 9.7.14.5.15 "ldmatrix"), cp.async ordering, and a 64x64x64 GEMM staged with
// cp.async, loaded with ldmatrix and multiplied with mma, against a float64 product.
//
// The same file builds for the emulator (g++ -x c++ -DLK_CUDA_EMULATE, target lk_emu_selftest_mma)
// and for a GPU (nvcc -x cu); checks that only the emulator can make (destinations of copies in
// flight read 0xff bytes; a missing cp_async_wait fails the launch; the counters) are compiled for
// the emulator only. Prints "N passed, M failed"; exits nonzero on failure.
//
// The expected values are computed on the host from the tables below; nothing here calls the
// emulator's own fragment helpers.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/compat.cuh"
#include "emu/selftest_check.h"
#include "common/mma.cuh"

using lk::cuda::cp_async_16;
using lk::cuda::cp_async_commit;
using lk::cuda::cp_async_wait;

#define CUDA_OK(call)                                                                   \
  do {                                                                                  \
    const cudaError_t e_ = (call);                                                      \
    if (e_ != cudaSuccess) {                                                            \
      std::printf("FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

// ---------------------------------------------------------------- host-side 16-bit values
// Exact conversions for the small integers and dyadic values used here (the test keeps its own,
// independent of lk::half_to_float & co.).
static uint16_t bf16_of(float f) {  // f must be exactly representable in bfloat16
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (u & 0xffffu) { std::printf("test bug: %g is not a bfloat16\n", f); std::exit(2); }
  return (uint16_t)(u >> 16);
}
static uint16_t f16_of(float f) {  // f must be exactly representable in float16, normal or zero
  if (f == 0.0f) return std::signbit(f) ? 0x8000 : 0;
  int e;
  const float m = std::frexp(std::fabs(f), &e);  // f = m * 2^e, m in [0.5, 1)
  const float mant = m * 2048.0f;                // 11 significant bits
  if (mant != std::floor(mant) || e - 1 < -14 || e - 1 > 15) { std::printf("test bug: %g is not a normal half\n", f); std::exit(2); }
  return (uint16_t)((f < 0 ? 0x8000 : 0) | ((e - 1 + 15) << 10) | ((uint32_t)mant & 0x3ff));
}
static uint16_t bits16(float f, bool bf16) { return bf16 ? bf16_of(f) : f16_of(f); }
static uint32_t pack(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }

// ---------------------------------------------------------------- the PTX ISA tables, by hand
// mma.m16n8k16 .f16/.bf16, lane l, groupID = l >> 2, threadID_in_group = l % 4:
//   A elements a0..a7 (register j holds a_{2j} low, a_{2j+1} high):
//     row = groupID for a_i with 0 <= i < 2 || 4 <= i < 6, groupID + 8 otherwise
//     col = threadID_in_group * 2 + (i & 1) for i < 4, threadID_in_group * 2 + (i & 1) + 8 for i >= 4
//   B elements b0..b3 (register j holds b_{2j} low, b_{2j+1} high):
//     row = threadID_in_group * 2 + (i & 1) for i < 2, threadID_in_group * 2 + (i & 1) + 8 for i >= 2
//     col = groupID
//   C / D elements c0..c3 (one float each):
//     row = groupID for i < 2, groupID + 8 otherwise; col = threadID_in_group * 2 + (i & 1)
static void a_coord(int lane, int i, int* row, int* col) {
  const int groupID = lane >> 2, tig = lane % 4;
  *row = ((i >= 0 && i < 2) || (i >= 4 && i < 6)) ? groupID : groupID + 8;
  *col = i < 4 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
}
static void b_coord(int lane, int i, int* row, int* col) {
  const int groupID = lane >> 2, tig = lane % 4;
  *row = i < 2 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
  *col = groupID;
}
static void c_coord(int lane, int i, int* row, int* col) {
  const int groupID = lane >> 2, tig = lane % 4;
  *row = i < 2 ? groupID : groupID + 8;
  *col = tig * 2 + (i & 1);
}

// ---------------------------------------------------------------- mma: one warp, fragments given
// regs: per lane a[4], b[2] (6 words); c: per lane 4 floats; d: per lane 4 floats out.
enum Kind { kMmaBf16, kMmaF16, kMmaBf16Shuffles };
__global__ void mma_kernel(const uint32_t* regs, const float* c_in, float* d_out, int kind) {
  const int lane = threadIdx.x;
  const uint32_t a[4] = {regs[lane * 6 + 0], regs[lane * 6 + 1], regs[lane * 6 + 2], regs[lane * 6 + 3]};
  const uint32_t b[2] = {regs[lane * 6 + 4], regs[lane * 6 + 5]};
  const float c[4] = {c_in[lane * 4 + 0], c_in[lane * 4 + 1], c_in[lane * 4 + 2], c_in[lane * 4 + 3]};
  float d[4];
  if (kind == kMmaBf16) lk::cuda::mma_m16n8k16_bf16(d, a, b, c);
  else if (kind == kMmaF16) lk::cuda::mma_m16n8k16_f16(d, a, b, c);
  else lk::cuda::mma_m16n8k16_bf16_by_shuffles(d, a, b, c);
  for (int i = 0; i < 4; ++i) d_out[lane * 4 + i] = d[i];
}

// A: 16x16, B: 16x8, C: 16x8 (row-major float matrices, exactly representable). Builds every
// lane's registers from the tables, runs one warp, and checks every lane's d[i] against
// C + A B at the table's (row, col). Returns the number of mismatching (lane, i).
static int run_mma(Kind kind, const float* A, const float* B, const float* C, const char* what) {
  const bool bf16 = kind != kMmaF16;
  std::vector<uint32_t> regs(32 * 6);
  std::vector<float> c(32 * 4), d(32 * 4, -12345.0f);
  for (int lane = 0; lane < 32; ++lane) {
    for (int j = 0; j < 4; ++j) {  // a register j = elements a_{2j}, a_{2j+1}
      int r0, k0, r1, k1;
      a_coord(lane, 2 * j, &r0, &k0);
      a_coord(lane, 2 * j + 1, &r1, &k1);
      regs[lane * 6 + j] = pack(bits16(A[r0 * 16 + k0], bf16), bits16(A[r1 * 16 + k1], bf16));
    }
    for (int j = 0; j < 2; ++j) {  // b register j = elements b_{2j}, b_{2j+1}
      int k0, n0, k1, n1;
      b_coord(lane, 2 * j, &k0, &n0);
      b_coord(lane, 2 * j + 1, &k1, &n1);
      regs[lane * 6 + 4 + j] = pack(bits16(B[k0 * 8 + n0], bf16), bits16(B[k1 * 8 + n1], bf16));
    }
    for (int i = 0; i < 4; ++i) {
      int r, n;
      c_coord(lane, i, &r, &n);
      c[lane * 4 + i] = C[r * 8 + n];
    }
  }
  uint32_t* dregs;
  float *dc, *dd;
  CUDA_OK(cudaMalloc(&dregs, regs.size() * 4));
  CUDA_OK(cudaMalloc(&dc, c.size() * 4));
  CUDA_OK(cudaMalloc(&dd, d.size() * 4));
  CUDA_OK(cudaMemcpy(dregs, regs.data(), regs.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dc, c.data(), c.size() * 4, cudaMemcpyHostToDevice));
  LK_LAUNCH(mma_kernel, dim3(1), dim3(32), 0, 0)(dregs, dc, dd, (int)kind);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaMemcpy(d.data(), dd, d.size() * 4, cudaMemcpyDeviceToHost));
  cudaFree(dregs);
  cudaFree(dc);
  cudaFree(dd);
  int bad = 0;
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      int r, n;
      c_coord(lane, i, &r, &n);
      double want = C[r * 8 + n];
      for (int k = 0; k < 16; ++k) want += (double)A[r * 16 + k] * (double)B[k * 8 + n];
      const float got = d[lane * 4 + i];
      if ((double)got != want) {  // every value here is an exact small integer
        if (bad < 4) std::printf("  %s: lane %d d[%d] (row %d, col %d) = %.1f, expected %.1f\n", what, lane, i, r, n, got, want);
        ++bad;
      }
    }
  return bad;
}

static void mma_checks(Kind kind, const char* name) {
  // 1. Source identification: for each k0, only k0 and k1 = (k0 + 5) % 16 contribute, with
  //    A[r][k0] = r + 1, B[k0][n] = 1 and A[r][k1] = 1, B[k1][n] = 32 (n + 1), plus
  //    C[r][n] = 1024 (8 r + n + 1), so D[r][n] = 1024 (8 r + n + 1) + 32 (n + 1) + (r + 1) names
  //    its row and column, and is wrong unless each lane's A / B elements sit at their k.
  int bad = 0;
  for (int k0 = 0; k0 < 16; ++k0) {
    const int k1 = (k0 + 5) % 16;
    float A[16 * 16] = {}, B[16 * 8] = {}, C[16 * 8];
    for (int r = 0; r < 16; ++r) { A[r * 16 + k0] = (float)(r + 1); A[r * 16 + k1] = 1.0f; }
    for (int n = 0; n < 8; ++n) { B[k0 * 8 + n] = 1.0f; B[k1 * 8 + n] = (float)(32 * (n + 1)); }
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) C[r * 8 + n] = (float)(1024 * (8 * r + n + 1));
    char what[64];
    std::snprintf(what, sizeof what, "%s k0=%d", name, k0);
    bad += run_mma(kind, A, B, C, what);
  }
  CHECK(bad == 0, "%s: every lane's d[0..3] names its (row, col) for every k: %d mismatches", name, bad);
  // 2. Every element distinct and nonzero at once (negative values too): small integers whose
  //    products and sums stay exact in float32.
  {
    float A[16 * 16], B[16 * 8], C[16 * 8];
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < 16; ++k) A[r * 16 + k] = (float)(((r * 16 + k) * 37) % 61 - 30);
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 8; ++n) B[k * 8 + n] = (float)(((k * 8 + n) * 23) % 53 - 26);
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) C[r * 8 + n] = (float)(r * 100 - n * 7);
    const int bad2 = run_mma(kind, A, B, C, name);
    CHECK(bad2 == 0, "%s: dense integer matrices, every lane: %d mismatches", name, bad2);
  }
}

// ---------------------------------------------------------------- ldmatrix
// Shared memory holds 40 rows of 8 16-bit elements (slot s at byte 16 s). Matrix m's row j is put
// in slot perm(8 m + j) = (8 m + j) * 7 % 37 + 1, holding ids 1000 + 100 m + 10 j + col; slot 0
// holds 0xBEEF everywhere (the address given to lanes whose address the instruction ignores).
__device__ __host__ inline int slot_of(int row) { return row * 7 % 37 + 1; }
enum LdKind { kX4, kX4Trans, kX2, kX2Trans };
__global__ void ldmatrix_kernel(uint32_t* out, int kind) {
  alignas(16) __shared__ uint16_t rows[40 * 8];
  const int lane = threadIdx.x;
  for (int i = lane; i < 40 * 8; i += 32) {
    const int slot = i / 8, col = i % 8;
    uint16_t v = 0xBEEF;
    for (int r = 0; r < 32; ++r)
      if (slot_of(r) == slot) v = (uint16_t)(1000 + 100 * (r / 8) + 10 * (r % 8) + col);
    rows[i] = v;
  }
  __syncwarp();
  const int matrices = kind == kX4 || kind == kX4Trans ? 4 : 2;
  const void* row = lane < 8 * matrices ? &rows[slot_of(lane) * 8] : &rows[0];
  uint32_t r[4] = {0, 0, 0, 0};
  if (kind == kX4) lk::cuda::ldmatrix_x4(r, row);
  else if (kind == kX4Trans) lk::cuda::ldmatrix_x4_trans(r, row);
  else if (kind == kX2) { uint32_t r2[2]; lk::cuda::ldmatrix_x2(r2, row); r[0] = r2[0]; r[1] = r2[1]; }
  else { uint32_t r2[2]; lk::cuda::ldmatrix_x2_trans(r2, row); r[0] = r2[0]; r[1] = r2[1]; }
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

static void ldmatrix_checks() {
  const char* names[] = {"ldmatrix_x4", "ldmatrix_x4_trans", "ldmatrix_x2", "ldmatrix_x2_trans"};
  for (int kind = kX4; kind <= kX2Trans; ++kind) {
    uint32_t* dout;
    CUDA_OK(cudaMalloc(&dout, 32 * 4 * 4));
    LK_LAUNCH(ldmatrix_kernel, dim3(1), dim3(32), 0, 0)(dout, kind);
    CUDA_OK(cudaGetLastError());
    uint32_t out[32 * 4];
    CUDA_OK(cudaMemcpy(out, dout, sizeof out, cudaMemcpyDeviceToHost));
    cudaFree(dout);
    const bool trans = kind == kX4Trans || kind == kX2Trans;
    const int matrices = kind == kX4 || kind == kX4Trans ? 4 : 2;
    int bad = 0;
    // PTX ldmatrix: lane l receives, in register m, the elements of matrix m at
    //   row l / 4, cols 2 (l % 4) and 2 (l % 4) + 1 (low, high);   with .trans:
    //   rows 2 (l % 4) and 2 (l % 4) + 1, col l / 4 (low, high).
    for (int lane = 0; lane < 32; ++lane)
      for (int m = 0; m < matrices; ++m) {
        int lo_row, lo_col, hi_row, hi_col;
        if (!trans) { lo_row = hi_row = lane / 4; lo_col = 2 * (lane % 4); hi_col = lo_col + 1; }
        else { lo_col = hi_col = lane / 4; lo_row = 2 * (lane % 4); hi_row = lo_row + 1; }
        const uint32_t want = (uint32_t)(1000 + 100 * m + 10 * lo_row + lo_col) | ((uint32_t)(1000 + 100 * m + 10 * hi_row + hi_col) << 16);
        if (out[lane * 4 + m] != want) {
          if (bad < 4) std::printf("  %s lane %d r[%d] = %08x, expected %08x\n", names[kind], lane, m, out[lane * 4 + m], want);
          ++bad;
        }
      }
    CHECK(bad == 0, "%s: every lane's registers hold the PTX table's element ids: %d mismatches", names[kind], bad);
  }
}

// ---------------------------------------------------------------- cp.async ordering
// 64 threads each copy two 16-byte chunks (group 0: chunk t, group 1: chunk 64 + t) and record
// what their destinations read at each step; `wait` = 0 omits every cp_async_wait.
struct alignas(16) Chunk {
  unsigned x, y, z, w;
};
// flags[t * 6 + 2 s + h]: step s's reading of (group-0 chunk, group-1 chunk): 1 = source data, 2 = all
// 0xff bytes, 0 = anything else. Steps: 0 after issue, 1 after wait<1>, 2 after wait<0>.
__device__ inline int classify(const Chunk* dst, const Chunk* src) {
  const Chunk d = *dst, s = *src;
  if (d.x == s.x && d.y == s.y && d.z == s.z && d.w == s.w) return 1;
  if (d.x == 0xffffffffu && d.y == 0xffffffffu && d.z == 0xffffffffu && d.w == 0xffffffffu) return 2;
  return 0;
}
__global__ void cp_async_kernel(const Chunk* src, int* flags, int wait, Chunk* out) {
  alignas(16) __shared__ Chunk buf[128];
  const int t = threadIdx.x;
  cp_async_16(&buf[t], &src[t]);
  cp_async_commit();
  cp_async_16(&buf[64 + t], &src[64 + t]);
  cp_async_commit();
  flags[t * 6 + 0] = classify(&buf[t], &src[t]);
  flags[t * 6 + 1] = classify(&buf[64 + t], &src[64 + t]);
  if (wait) cp_async_wait<1>();
  flags[t * 6 + 2] = classify(&buf[t], &src[t]);
  flags[t * 6 + 3] = classify(&buf[64 + t], &src[64 + t]);
  if (wait) cp_async_wait<0>();
  flags[t * 6 + 4] = classify(&buf[t], &src[t]);
  flags[t * 6 + 5] = classify(&buf[64 + t], &src[64 + t]);
  __syncthreads();
  out[t] = buf[(t + 1) % 64];  // another thread's group-0 chunk, after the barrier
}

static void cp_async_checks() {
  std::vector<Chunk> host(128);
  for (int i = 0; i < 128; ++i) host[i] = Chunk{(unsigned)(4 * i), (unsigned)(4 * i + 1), 0x12345678u, (unsigned)~i};
  Chunk *src, *out;
  int* flags;
  CUDA_OK(cudaMalloc(&src, 128 * sizeof(Chunk)));
  CUDA_OK(cudaMalloc(&out, 64 * sizeof(Chunk)));
  CUDA_OK(cudaMalloc(&flags, 64 * 6 * sizeof(int)));
  CUDA_OK(cudaMemcpy(src, host.data(), 128 * sizeof(Chunk), cudaMemcpyHostToDevice));
  std::vector<int> f(64 * 6);
  std::vector<Chunk> o(64);
  {  // with the waits: data visible after the matching wait, and to other threads after a barrier
    LK_LAUNCH(cp_async_kernel, dim3(1), dim3(64), 0, 0)(src, flags, 1, out);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaMemcpy(f.data(), flags, f.size() * sizeof(int), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(o.data(), out, o.size() * sizeof(Chunk), cudaMemcpyDeviceToHost));
    bool after_wait1 = true, after_wait0 = true, shared_ok = true;
    for (int t = 0; t < 64; ++t) {
      after_wait1 = after_wait1 && f[t * 6 + 2] == 1;
      after_wait0 = after_wait0 && f[t * 6 + 4] == 1 && f[t * 6 + 5] == 1;
      const Chunk& w = host[(t + 1) % 64];
      shared_ok = shared_ok && o[t].x == w.x && o[t].y == w.y && o[t].z == w.z && o[t].w == w.w;
    }
    CHECK(after_wait1, "cp_async_wait<1>: the older group has landed");
    CHECK(after_wait0, "cp_async_wait<0>: both groups have landed");
    CHECK(shared_ok, "after wait + __syncthreads, other threads read the copied data");
#ifdef LK_CUDA_EMULATE
    bool before = true, newest_pending = true;
    for (int t = 0; t < 64; ++t) {
      before = before && f[t * 6 + 0] == 2 && f[t * 6 + 1] == 2;
      newest_pending = newest_pending && f[t * 6 + 3] == 2;
    }
    CHECK(before, "emulator: destinations read 0xff bytes before any wait");
    CHECK(newest_pending, "emulator: cp_async_wait<1> leaves the newest group in flight (0xff)");
#endif
  }
#ifdef LK_CUDA_EMULATE
  {  // the missing cp_async_wait is caught: the data never arrives and the launch fails
    std::printf("  (the emulator's next message on stderr, about cp.async copies never waited for, is expected)\n");
    std::fflush(stdout);
    LK_LAUNCH(cp_async_kernel, dim3(2), dim3(64), 0, 0)(src, flags, 0, out);
    const cudaError_t e = cudaGetLastError();
    CUDA_OK(cudaMemcpy(f.data(), flags, f.size() * sizeof(int), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(o.data(), out, o.size() * sizeof(Chunk), cudaMemcpyDeviceToHost));
    bool poisoned = true;
    for (int t = 0; t < 64; ++t) {
      for (int s = 0; s < 6; ++s) poisoned = poisoned && f[t * 6 + s] == 2;
      poisoned = poisoned && o[t].x == 0xffffffffu && o[t].y == 0xffffffffu && o[t].z == 0xffffffffu && o[t].w == 0xffffffffu;
    }
    CHECK(poisoned, "emulator: without cp_async_wait every destination reads 0xff bytes, also after __syncthreads");
    CHECK(e == cudaErrorLaunchFailure, "emulator: copies never waited for fail the launch (got %s)", cudaGetErrorName(e));
    LK_LAUNCH(cp_async_kernel, dim3(1), dim3(64), 0, 0)(src, flags, 1, out);
    CHECK(cudaGetLastError() == cudaSuccess, "emulator: the next correct launch succeeds (no copies left over)");
  }
#endif
  cudaFree(src);
  cudaFree(out);
  cudaFree(flags);
}

// ---------------------------------------------------------------- GEMM 64x64x64
// C (float, 64x64) = A (64x64, row-major) x B, with B in global memory either K x N row-major
// (kBKN: B fragments by ldmatrix .trans) or N x K row-major (B^T: ldmatrix without .trans). One
// block of 4 warps; warp w computes rows 16 w .. 16 w + 15 and all 64 columns (8 n-tiles). A and B
// are staged into padded shared tiles with cp.async in two groups (k 0-31, then k 32-63), the first
// consumed while the second is in flight. B tiles are loaded with x4 for n-tile pairs 0-1 and 2-3
// and with x2 for n-tiles 4-7, so both widths feed the product.
constexpr int kN = 64, kPad = 8, kLd = kN + kPad;  // 144-byte shared rows: 16-byte aligned
template <bool kBf16, bool kBKN>
__global__ void __launch_bounds__(128) gemm_kernel(const uint16_t* A, const uint16_t* B, float* C) {
  alignas(16) __shared__ uint16_t As[kN * kLd];
  alignas(16) __shared__ uint16_t Bs[kN * kLd];  // kBKN: [k][n]; else [n][k]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Stage: group h copies k columns 32 h .. 32 h + 31 of A (64 rows x 4 chunks of 8 elements),
  // and the matching half of B (k rows 32 h.. for [k][n]; k columns 32 h.. for [n][k]).
  for (int h = 0; h < 2; ++h) {
    for (int c = tid; c < 64 * 4; c += 128) {
      const int r = c / 4, k = 32 * h + 8 * (c % 4);
      cp_async_16(&As[r * kLd + k], &A[r * kN + k]);
    }
    for (int c = tid; c < 64 * 4; c += 128) {
      if (kBKN) {
        const int k = 32 * h + c / 8, n = 8 * (c % 8);
        cp_async_16(&Bs[k * kLd + n], &B[k * kN + n]);
      } else {
        const int n = c / 4, k = 32 * h + 8 * (c % 4);
        cp_async_16(&Bs[n * kLd + k], &B[n * kN + k]);
      }
    }
    cp_async_commit();
  }
  float acc[8][4];
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
  const int row0 = 16 * warp, mi = lane / 8, ri = lane % 8;  // ldmatrix: lane gives row ri of matrix mi
  for (int h = 0; h < 2; ++h) {
    if (h == 0) cp_async_wait<1>();
    else cp_async_wait<0>();
    __syncthreads();
    for (int ks = 0; ks < 2; ++ks) {
      const int k0 = 32 * h + 16 * ks;
      uint32_t a[4];  // matrices: rows 0-7 / 8-15 of k 0-7, then of k 8-15
      lk::cuda::ldmatrix_x4(a, &As[(row0 + ri + 8 * (mi % 2)) * kLd + k0 + 8 * (mi / 2)]);
      for (int np = 0; np < 2; ++np) {  // n-tiles 2 np, 2 np + 1 with one x4
        const int n0 = 16 * np;
        uint32_t b4[4];
        if (kBKN)  // matrices: k 0-7 / 8-15 of n 0-7, then of n 8-15 (rows of Bs are k)
          lk::cuda::ldmatrix_x4_trans(b4, &Bs[(k0 + ri + 8 * (mi % 2)) * kLd + n0 + 8 * (mi / 2)]);
        else  // matrices: n 0-7 of k 0-7 / 8-15, then n 8-15 (rows of Bs are n)
          lk::cuda::ldmatrix_x4(b4, &Bs[(n0 + ri + 8 * (mi / 2)) * kLd + k0 + 8 * (mi % 2)]);
        const uint32_t b_lo[2] = {b4[0], b4[1]}, b_hi[2] = {b4[2], b4[3]};
        if (kBf16) {
          lk::cuda::mma_m16n8k16_bf16(acc[2 * np], a, b_lo, acc[2 * np]);
          lk::cuda::mma_m16n8k16_bf16(acc[2 * np + 1], a, b_hi, acc[2 * np + 1]);
        } else {
          lk::cuda::mma_m16n8k16_f16(acc[2 * np], a, b_lo, acc[2 * np]);
          lk::cuda::mma_m16n8k16_f16(acc[2 * np + 1], a, b_hi, acc[2 * np + 1]);
        }
      }
      for (int j = 4; j < 8; ++j) {  // n-tiles 4-7 with x2 (lanes 16-31 repeat lanes 0-15's rows)
        const int n0 = 8 * j, m2 = (lane % 16) / 8;
        uint32_t b[2];
        if (kBKN) lk::cuda::ldmatrix_x2_trans(b, &Bs[(k0 + ri + 8 * m2) * kLd + n0]);
        else lk::cuda::ldmatrix_x2(b, &Bs[(n0 + ri) * kLd + k0 + 8 * m2]);
        if (kBf16) lk::cuda::mma_m16n8k16_bf16(acc[j], a, b, acc[j]);
        else lk::cuda::mma_m16n8k16_f16(acc[j], a, b, acc[j]);
      }
    }
  }
  // D fragment: d[0], d[1] at row g, cols 2t, 2t+1; d[2], d[3] at row g+8.
  const int g = lane >> 2, t = lane & 3;
  for (int j = 0; j < 8; ++j) {
    C[(row0 + g) * kN + 8 * j + 2 * t] = acc[j][0];
    C[(row0 + g) * kN + 8 * j + 2 * t + 1] = acc[j][1];
    C[(row0 + g + 8) * kN + 8 * j + 2 * t] = acc[j][2];
    C[(row0 + g + 8) * kN + 8 * j + 2 * t + 1] = acc[j][3];
  }
}

// Host rounding to bf16 / f16 (round to nearest even) for the GEMM inputs.
static float round16(float x, bool bf16) {
  if (bf16) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    float r;
    std::memcpy(&r, &u, 4);
    return r;
  }
  if (std::fabs(x) < 0x1p-14f) return 0.0f;  // keep the inputs normal halves
  int e;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e): 11 significant bits
  const float q = std::ldexp(1.0f, e - 11);
  return std::nearbyint(x / q) * q;  // nearbyint: ties to even
}

template <bool kBf16, bool kBKN>
static void gemm_check(const char* name) {
  std::vector<float> A(kN * kN), B(kN * kN);  // B as K x N
  uint32_t state = kBf16 ? 7u : 11u;
  auto next = [&state] { state = state * 1664525u + 1013904223u; return (float)(state >> 8) / 16777216.0f * 2.0f - 1.0f; };
  for (float& x : A) x = round16(next(), kBf16);
  for (float& x : B) x = round16(next(), kBf16);
  std::vector<uint16_t> hA(kN * kN), hB(kN * kN);
  for (int i = 0; i < kN * kN; ++i) hA[i] = bits16(A[i], kBf16);
  for (int k = 0; k < kN; ++k)
    for (int n = 0; n < kN; ++n) hB[kBKN ? k * kN + n : n * kN + k] = bits16(B[k * kN + n], kBf16);
  uint16_t *dA, *dB;
  float* dC;
  CUDA_OK(cudaMalloc(&dA, kN * kN * 2));
  CUDA_OK(cudaMalloc(&dB, kN * kN * 2));
  CUDA_OK(cudaMalloc(&dC, kN * kN * 4));
  CUDA_OK(cudaMemcpy(dA, hA.data(), kN * kN * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dB, hB.data(), kN * kN * 2, cudaMemcpyHostToDevice));
  LK_LAUNCH((gemm_kernel<kBf16, kBKN>), dim3(1), dim3(128), 0, 0)(dA, dB, dC);
  CUDA_OK(cudaGetLastError());
  std::vector<float> C(kN * kN);
  CUDA_OK(cudaMemcpy(C.data(), dC, kN * kN * 4, cudaMemcpyDeviceToHost));
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dC);
  // The inputs are exact 16-bit values, so the float64 product of the same values differs from
  // the float32 accumulation only by accumulation rounding: |err| <= 64 * 2^-23 * sum |a b| here;
  // the bound checked leaves room for a GPU's tensor-core accumulation (1e-5 relative of sum |a b|).
  double worst = 0;
  int bad = 0;
  for (int r = 0; r < kN; ++r)
    for (int n = 0; n < kN; ++n) {
      double want = 0, mag = 0;
      for (int k = 0; k < kN; ++k) {
        want += (double)A[r * kN + k] * (double)B[k * kN + n];
        mag += std::fabs((double)A[r * kN + k] * (double)B[k * kN + n]);
      }
      const double err = std::fabs((double)C[r * kN + n] - want), tol = 1e-5 * mag + 1e-6;
      if (!(err <= tol)) {
        if (bad < 4) std::printf("  %s C[%d][%d] = %.7g, expected %.7g\n", name, r, n, C[r * kN + n], want);
        ++bad;
      }
      if (err / (mag + 1e-30) > worst) worst = err / (mag + 1e-30);
    }
  CHECK(bad == 0, "%s: 64x64x64 GEMM (cp.async + ldmatrix + mma) vs float64: %d outside tolerance, worst relative error %.3g", name, bad, worst);
}

int main() {
#ifdef LK_CUDA_EMULATE
  const lk_emu::Counters before = lk_emu::counters();
#endif
  mma_checks(kMmaBf16, "mma_m16n8k16_bf16");
  mma_checks(kMmaF16, "mma_m16n8k16_f16");
  mma_checks(kMmaBf16Shuffles, "mma_m16n8k16_bf16_by_shuffles (the sm_75 path)");
  ldmatrix_checks();
  cp_async_checks();
  gemm_check<true, true>("bf16, B as K x N (ldmatrix .trans)");
  gemm_check<true, false>("bf16, B as N x K (ldmatrix)");
  gemm_check<false, true>("f16, B as K x N (ldmatrix .trans)");
  gemm_check<false, false>("f16, B as N x K (ldmatrix)");
#ifdef LK_CUDA_EMULATE
  {  // counters: launches, warp-wide mma / ldmatrix, per-thread cp_async_16
    const lk_emu::Counters after = lk_emu::counters();
    // mma_checks: 17 one-warp launches of 1 mma each, for the two hardware kinds (the shuffle
    // path issues none); ldmatrix_checks: 4 launches of 1 ldmatrix each; cp_async_checks: 3
    // launches of 64, 2 x 64 and 64 threads, 2 copies per thread; GEMMs: 4 launches, each
    // 4 warps x 2 halves x 2 k-steps x (1 A + 2 B x4 + 4 B x2) ldmatrix and x 8 mma, and 128 threads
    // x 2 halves x 4 copies.
    const uint64_t launches = 3 * 17 + 4 + 3 + 4;
    const uint64_t mma = 2 * 17 + 4 * (4 * 2 * 2 * 8);
    const uint64_t ldm = 4 + 4 * (4 * 2 * 2 * (1 + 2 + 4));
    const uint64_t cp = 2 * (64 + 128 + 64) + 4 * (128 * 2 * 4);
    CHECK(after.launches - before.launches == launches, "launch counter: %llu, expected %llu",
          (unsigned long long)(after.launches - before.launches), (unsigned long long)launches);
    CHECK(after.mma - before.mma == mma, "mma counter: %llu, expected %llu", (unsigned long long)(after.mma - before.mma), (unsigned long long)mma);
    CHECK(after.ldmatrix - before.ldmatrix == ldm, "ldmatrix counter: %llu, expected %llu",
          (unsigned long long)(after.ldmatrix - before.ldmatrix), (unsigned long long)ldm);
    CHECK(after.cp_async - before.cp_async == cp, "cp.async counter: %llu, expected %llu",
          (unsigned long long)(after.cp_async - before.cp_async), (unsigned long long)cp);
  }
#endif
  return lk_selftest::summary("emu mma selftest");
}
