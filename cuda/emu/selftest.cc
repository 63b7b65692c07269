// The emulator's own checks: kernels written as for a GPU exercise every emulated feature and the
// results are compared with values computed on the host. Prints "N passed, M failed".
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/compat.cuh"
#include "emu/selftest_check.h"

// Block sum with shared memory and __syncthreads tree; one atomicAdd per block into a global total.
__global__ void block_sum_kernel(const int* in, int n, int* block_sums, int* total) {
  __shared__ int buf[256];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  buf[threadIdx.x] = i < n ? in[i] : 0;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    block_sums[blockIdx.x] = buf[0];
    atomicAdd(total, buf[0]);
  }
}

// Every shuffle flavour, with sub-warp widths; each lane writes what it received.
__global__ void shuffle_kernel(int* out_xor, int* out_down, int* out_up, int* out_idx, float* out_sum, int width) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int v = t * 10;
  out_xor[t] = __shfl_xor_sync(0xffffffffu, v, 5, width);
  out_down[t] = __shfl_down_sync(0xffffffffu, v, 3, width);
  out_up[t] = __shfl_up_sync(0xffffffffu, v, 2, width);
  out_idx[t] = __shfl_sync(0xffffffffu, v, 7, width);
  float x = (float)lane;
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  out_sum[t] = x;
}

__global__ void vote_kernel(unsigned* ballots, int* anys, int* alls) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const unsigned b = __ballot_sync(0xffffffffu, lane % 3 == 0);
  const int any = __any_sync(0xffffffffu, w == 1 && lane == 31);
  const int all = __all_sync(0xffffffffu, w == 0 || lane < 40);
  if (lane == 0) { ballots[w] = b; anys[w] = any; alls[w] = all; }
}

// Block-wide votes at a barrier, several in a row (each barrier's own count), one after early exits.
__global__ void block_vote_kernel(int* out) {
  const int t = threadIdx.x;
  const int c1 = __syncthreads_count(t % 5 == 0);
  const int o1 = __syncthreads_or(t == 77);
  const int o2 = __syncthreads_or(0);
  const int a1 = __syncthreads_and(t < 1000);
  const int a2 = __syncthreads_and(t != 3);
  if (t >= 96) return;
  const int c2 = __syncthreads_count(1);
  if (t == 0) { out[0] = c1; out[1] = o1; out[2] = o2; out[3] = a1; out[4] = a2; out[5] = c2; }
}

// 2D block, 3D grid indices, and threads leaving before a barrier (they count as arrived).
__global__ void index_kernel(int* out, int* after_barrier) {
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  const int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  out[b * blockDim.x * blockDim.y + t] = b * 1000 + t;
  if (t % 4 == 3) return;
  __syncthreads();
  atomicAdd(after_barrier, 1);
}

__global__ void atomics_kernel(float* fsum, int* imax, unsigned* umin, int* cas_winner, unsigned* orbits) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(fsum, 0.5f);
  atomicMax(imax, (t * 37) % 101);
  atomicMin(umin, (unsigned)(1000 - t));
  atomicCAS(cas_winner, -1, t);
  atomicOr(orbits, 1u << (t % 32));
}

template <typename T, int N>
__global__ void template_kernel(T* out, T add) {
  __shared__ T tile[N];
  tile[threadIdx.x] = (T)threadIdx.x + add;
  __syncthreads();
  out[threadIdx.x] = tile[N - 1 - threadIdx.x];
}

// Dynamic shared memory sized by the launch: each block writes its slice then reads it reversed;
// `garbage` reports whether the memory arrived filled with NaNs (never-written shared memory).
__global__ void dynamic_shared_kernel(float* out, int n, int* garbage) {
  LK_DYNAMIC_SHARED(float, buf);
  if (threadIdx.x == 0 && !(buf[n - 1] != buf[n - 1])) atomicAdd(garbage, 1);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = (float)(blockIdx.x * n + i);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = buf[n - 1 - i];
}

__global__ void deadlock_kernel(int* out) {
  // Half a warp waits at a full-warp shuffle for lanes that wait at the barrier for it.
  if (threadIdx.x < 16) __shfl_xor_sync(0xffffffffu, 1, 1);
  else __syncthreads();
  out[threadIdx.x] = 1;
}

static float half_reference(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 31) return m ? NAN : (float)(s * INFINITY);
  return (float)(s * (e ? std::ldexp(1024.0 + m, e - 25) : std::ldexp((double)m, -24)));
}

int main() {
  {  // reduction + atomics on global memory, many blocks
    const int n = 10000;
    std::vector<int> host(n);
    long expect = 0;
    for (int i = 0; i < n; ++i) { host[i] = (i * 7) % 13 - 6; expect += host[i]; }
    int *in, *sums, *total;
    cudaMalloc(&in, n * sizeof(int));
    cudaMalloc(&sums, 40 * sizeof(int));
    cudaMalloc(&total, sizeof(int));
    cudaMemcpy(in, host.data(), n * sizeof(int), cudaMemcpyHostToDevice);
    cudaMemset(total, 0, sizeof(int));
    LK_LAUNCH(block_sum_kernel, dim3(40), dim3(256), 0, 0)(in, n, sums, total);
    CHECK(cudaGetLastError() == cudaSuccess, "launch");
    int got = 0;
    cudaMemcpy(&got, total, sizeof(int), cudaMemcpyDeviceToHost);
    CHECK(got == expect, "sum %d vs %ld", got, expect);
    std::vector<int> bs(40);
    cudaMemcpy(bs.data(), sums, 40 * sizeof(int), cudaMemcpyDeviceToHost);
    long s = 0;
    for (int b = 0; b < 40; ++b) s += bs[b];
    CHECK(s == expect, "block sums");
    cudaFree(in); cudaFree(sums); cudaFree(total);
  }
  for (int width : {32, 16, 8}) {  // shuffles
    const int n = 64;
    std::vector<int> x(n), d(n), u(n), id(n);
    std::vector<float> sum(n);
    int *px, *pd, *pu, *pi;
    float* ps;
    cudaMalloc(&px, n * 4); cudaMalloc(&pd, n * 4); cudaMalloc(&pu, n * 4); cudaMalloc(&pi, n * 4); cudaMalloc(&ps, n * 4);
    LK_LAUNCH(shuffle_kernel, dim3(1), dim3(n), 0, 0)(px, pd, pu, pi, ps, width);
    cudaMemcpy(x.data(), px, n * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(d.data(), pd, n * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(u.data(), pu, n * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(id.data(), pi, n * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(sum.data(), ps, n * 4, cudaMemcpyDeviceToHost);
    bool ok = true;
    for (int t = 0; t < n; ++t) {
      const int lane = t % 32, base = t - lane, sub = lane & ~(width - 1), in_sub = lane & (width - 1);
      const int ex = ((lane ^ 5) & ~(width - 1)) == sub ? (base + (lane ^ 5)) * 10 : t * 10;
      const int ed = in_sub + 3 < width ? (t + 3) * 10 : t * 10;
      const int eu = in_sub - 2 >= 0 ? (t - 2) * 10 : t * 10;
      const int ei = (base + sub + (7 & (width - 1))) * 10;
      ok = ok && x[t] == ex && d[t] == ed && u[t] == eu && id[t] == ei && sum[t] == 496.0f;
    }
    CHECK(ok, "shuffles with width %d", width);
    cudaFree(px); cudaFree(pd); cudaFree(pu); cudaFree(pi); cudaFree(ps);
  }
  {  // votes
    unsigned* b; int *a, *l;
    cudaMalloc(&b, 8); cudaMalloc(&a, 8); cudaMalloc(&l, 8);
    LK_LAUNCH(vote_kernel, dim3(1), dim3(64), 0, 0)(b, a, l);
    unsigned hb[2]; int ha[2], hl[2];
    cudaMemcpy(hb, b, 8, cudaMemcpyDeviceToHost); cudaMemcpy(ha, a, 8, cudaMemcpyDeviceToHost); cudaMemcpy(hl, l, 8, cudaMemcpyDeviceToHost);
    unsigned eb = 0;
    for (int lane = 0; lane < 32; lane += 3) eb |= 1u << lane;
    CHECK(hb[0] == eb && hb[1] == eb, "ballot %08x %08x", hb[0], hb[1]);
    CHECK(ha[0] == 0 && ha[1] == 1, "any");
    CHECK(hl[0] == 1 && hl[1] == 1, "all");
    cudaFree(b); cudaFree(a); cudaFree(l);
  }
  {  // __syncthreads_count / _or / _and
    int* out;
    cudaMalloc(&out, 6 * 4);
    LK_LAUNCH(block_vote_kernel, dim3(2), dim3(128), 0, 0)(out);
    CHECK(cudaGetLastError() == cudaSuccess, "launch");
    int h[6];
    cudaMemcpy(h, out, sizeof h, cudaMemcpyDeviceToHost);
    CHECK(h[0] == 26 && h[1] == 1 && h[2] == 0 && h[3] == 1 && h[4] == 0 && h[5] == 96,
          "block votes %d %d %d %d %d %d", h[0], h[1], h[2], h[3], h[4], h[5]);
    cudaFree(out);
  }
  {  // indices in 2D blocks / 3D grids, early exits at a barrier
    const dim3 grid(3, 2, 2), block(8, 4);
    const int total = 12 * 32;
    int *out, *after;
    cudaMalloc(&out, total * 4); cudaMalloc(&after, 4);
    cudaMemset(after, 0, 4);
    LK_LAUNCH(index_kernel, grid, block, 0, 0)(out, after);
    std::vector<int> h(total);
    int ha = 0;
    cudaMemcpy(h.data(), out, total * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(&ha, after, 4, cudaMemcpyDeviceToHost);
    bool ok = true;
    for (int i = 0; i < total; ++i) ok = ok && h[i] == (i / 32) * 1000 + i % 32;
    CHECK(ok, "thread / block indices");
    CHECK(ha == 12 * 24, "threads after the barrier: %d", ha);
    cudaFree(out); cudaFree(after);
  }
  {  // atomics
    float* f; int *m, *c; unsigned *u, *o;
    cudaMalloc(&f, 4); cudaMalloc(&m, 4); cudaMalloc(&c, 4); cudaMalloc(&u, 4); cudaMalloc(&o, 4);
    const float zero = 0; const int neg = -1, low = -5; const unsigned big = 1u << 30, none = 0;
    cudaMemcpy(f, &zero, 4, cudaMemcpyHostToDevice); cudaMemcpy(m, &low, 4, cudaMemcpyHostToDevice);
    cudaMemcpy(c, &neg, 4, cudaMemcpyHostToDevice); cudaMemcpy(u, &big, 4, cudaMemcpyHostToDevice); cudaMemcpy(o, &none, 4, cudaMemcpyHostToDevice);
    LK_LAUNCH(atomics_kernel, dim3(4), dim3(100), 0, 0)(f, m, u, c, o);
    float hf; int hm, hc; unsigned hu, ho;
    cudaMemcpy(&hf, f, 4, cudaMemcpyDeviceToHost); cudaMemcpy(&hm, m, 4, cudaMemcpyDeviceToHost); cudaMemcpy(&hc, c, 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(&hu, u, 4, cudaMemcpyDeviceToHost); cudaMemcpy(&ho, o, 4, cudaMemcpyDeviceToHost);
    CHECK(hf == 200.0f, "float atomicAdd %f", hf);
    CHECK(hm == 100, "atomicMax %d", hm);
    CHECK(hu == 1000 - 399, "atomicMin %u", hu);
    CHECK(hc == 0, "atomicCAS winner %d", hc);
    CHECK(ho == 0xffffffffu, "atomicOr %08x", ho);
    cudaFree(f); cudaFree(m); cudaFree(c); cudaFree(u); cudaFree(o);
  }
  {  // template kernels through a parenthesized name and through a pointer
    float* out;
    cudaMalloc(&out, 64 * 4);
    LK_LAUNCH((template_kernel<float, 64>), dim3(1), dim3(64), 0, 0)(out, 0.5f);
    std::vector<float> h(64);
    cudaMemcpy(h.data(), out, 64 * 4, cudaMemcpyDeviceToHost);
    CHECK(h[0] == 63.5f && h[63] == 0.5f, "template kernel");
    auto* fn = template_kernel<float, 64>;
    LK_LAUNCH(fn, 1, 64, 0, 0)(out, 1.0f);
    cudaMemcpy(h.data(), out, 64 * 4, cudaMemcpyDeviceToHost);
    CHECK(h[10] == 54.0f, "kernel through a pointer");
    cudaFree(out);
  }
  {  // launch configuration errors, as CUDA reports them
    float* out = nullptr;
    LK_LAUNCH((template_kernel<float, 64>), dim3(1), dim3(2048), 0, 0)(out, 0.0f);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "block too large");
    LK_LAUNCH((template_kernel<float, 64>), dim3(0), dim3(64), 0, 0)(out, 0.0f);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "empty grid");
    CHECK(cudaGetLastError() == cudaSuccess, "error cleared after reading");
  }
  {  // half / bfloat16 conversions: every bit pattern, and rounding of many floats
    bool ok = true;
    for (uint32_t b = 0; b < 65536; ++b) {
      const float f = __half2float(__ushort_as_half((unsigned short)b)), r = half_reference((uint16_t)b);
      if (std::isnan(r) ? !std::isnan(f) : f != r) { ok = false; std::printf("half 0x%04x: %g vs %g\n", b, f, r); break; }
      if (!std::isnan(r) && __half_as_ushort(__float2half_rn(f)) != b) { ok = false; std::printf("half round trip 0x%04x\n", b); break; }
      const float bf = __bfloat162float(__ushort_as_bfloat16((unsigned short)b));
      if (!std::isnan(bf) && __bfloat16_as_ushort(__float2bfloat16_rn(bf)) != b) { ok = false; std::printf("bf16 round trip 0x%04x\n", b); break; }
    }
    CHECK(ok, "16-bit round trips");
    // Rounding: nearest half value by exhaustive search over the candidates around the input.
    uint32_t state = 12345;
    for (int i = 0; i < 200000 && ok; ++i) {
      state = state * 1664525u + 1013904223u;
      const float f = std::ldexp((float)(state >> 8) / 16777216.0f, (int)(state % 40) - 28) * ((state & 1) ? -1 : 1);
      const uint16_t h = __half_as_ushort(__float2half_rn(f));
      const double got = half_reference(h);
      if (std::fabs(f) >= 65520.0) { ok = std::isinf(got); continue; }
      const double err = std::fabs(got - f);
      const double below = half_reference(h - 1 >= 0 ? (uint16_t)(h - 1) : h), above = half_reference((uint16_t)(h + 1));
      if ((h & 0x7fff) != 0 && (h & 0x7c00) != 0x7c00 && (std::fabs(below - f) < err || std::fabs(above - f) < err)) {
        ok = false;
        std::printf("half rounding of %.9g gave %.9g\n", f, got);
      }
    }
    CHECK(ok, "float -> half rounds to nearest");
  }
  {  // dynamic shared memory: 64 KiB needs the kernel's attribute raised first, as on a GPU
    const int n = 16384, blocks = 3;
    float* out;
    int* garbage;
    cudaMalloc(&out, (size_t)n * blocks * 4);
    cudaMalloc(&garbage, 4);
    cudaMemset(garbage, 0, 4);
    cudaGetLastError();
    LK_LAUNCH(dynamic_shared_kernel, dim3(blocks), dim3(128), (size_t)n * 4, 0)(out, n, garbage);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "64 KiB of dynamic shared memory refused without the attribute");
    CHECK(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 400 * 1024) == cudaErrorInvalidValue,
          "attribute above the opt-in limit refused");
    cudaGetLastError();
    CHECK(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * 4) == cudaSuccess, "attribute set");
    LK_LAUNCH(dynamic_shared_kernel, dim3(blocks), dim3(128), (size_t)n * 4, 0)(out, n, garbage);
    CHECK(cudaGetLastError() == cudaSuccess, "launch with 64 KiB of dynamic shared memory");
    std::vector<float> host((size_t)n * blocks);
    cudaMemcpy(host.data(), out, host.size() * 4, cudaMemcpyDeviceToHost);
    bool ok = true;
    for (int b = 0; b < blocks; ++b)
      for (int i = 0; i < n; ++i) ok = ok && host[(size_t)b * n + i] == (float)(b * n + n - 1 - i);
    CHECK(ok, "dynamic shared memory reversed per block");
    int not_nan = -1;
    cudaMemcpy(&not_nan, garbage, 4, cudaMemcpyDeviceToHost);
    CHECK(not_nan == 0, "every block starts from NaN-filled dynamic shared memory (%d did not)", not_nan);
    int optin = 0;
    CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) == cudaSuccess && optin >= n * 4, "opt-in limit %d", optin);
    cudaFree(out); cudaFree(garbage);
  }
  {  // a deadlocked kernel aborts with a message instead of hanging
    const pid_t pid = fork();
    if (pid == 0) {
      int* out;
      cudaMalloc(&out, 64 * 4);
      std::freopen("/dev/null", "w", stderr);
      LK_LAUNCH(deadlock_kernel, 1, 64, 0, 0)(out);
      cudaDeviceSynchronize();  // launches run at synchronization
      _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "deadlock detected (status %d)", status);
  }
  return lk_selftest::summary("emu selftest");
}
