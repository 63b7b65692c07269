// Streams run their work in issue order, and only when the host synchronizes: a host that reads a
// result before synchronizing sees stale data, as it may on a GPU that is still busy.
//   bad-no-sync      a kernel and a cudaMemcpyAsync into pinned memory, read without synchronizing
//   bad-query-once   cudaEventQuery answered cudaErrorNotReady, the host reads anyway
//   bad-wrong-stream the host synchronizes stream A but reads what stream B computed
//   bad-host-fn      a cudaLaunchHostFunc callback calls CUDA (not permitted)
//   good             cudaStreamSynchronize, cudaEventSynchronize, a polling cudaEventQuery loop,
//                    cudaStreamWaitEvent between streams, a host function's place in its stream,
//                    the legacy default stream's ordering with a blocking stream, event timing
#include <vector>

#include "verify.h"

__global__ void iota_kernel(int* out, int n, int base) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = base + i;
}

__global__ void add_kernel(int* out, const int* in, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] += in[i];
}

struct Seen {
  const int* pinned;
  int first = -1;
  int calls = 0;
};
void note_first(void* p) {
  auto* s = static_cast<Seen*>(p);
  s->first = s->pinned[0];
  ++s->calls;
}
void calls_cuda(void* p) {
  *static_cast<cudaError_t*>(p) = cudaDeviceSynchronize();  // not permitted in a host function
}

int main(int argc, char** argv) {
  const std::string c = verify_case(argc, argv, "bad-no-sync | bad-query-once | bad-wrong-stream | bad-host-fn | good");
  const int n = 1000;
  int *dev, *dev2, *pinned;
  VERIFY_CUDA(cudaMalloc(&dev, n * sizeof(int)));
  VERIFY_CUDA(cudaMalloc(&dev2, n * sizeof(int)));
  VERIFY_CUDA(cudaMallocHost(&pinned, n * sizeof(int)));
  for (int i = 0; i < n; ++i) pinned[i] = -1;
  cudaStream_t a, b;
  VERIFY_CUDA(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
  VERIFY_CUDA(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
  cudaEvent_t done, start;
  VERIFY_CUDA(cudaEventCreate(&done));
  VERIFY_CUDA(cudaEventCreate(&start));
  auto expect_iota = [&](int base) {
    for (int i = 0; i < n; ++i) VERIFY(pinned[i] == base + i, "pinned[%d] = %d, expected %d: read before the stream finished", i, pinned[i], base + i);
  };
  const int blocks = (n + 255) / 256;
  if (c == "bad-no-sync") {
    LK_LAUNCH(iota_kernel, blocks, 256, 0, a)(dev, n, 100);
    VERIFY_CUDA(cudaMemcpyAsync(pinned, dev, n * sizeof(int), cudaMemcpyDeviceToHost, a));
    expect_iota(100);  // bug: no cudaStreamSynchronize(a) before reading
  } else if (c == "bad-query-once") {
    LK_LAUNCH(iota_kernel, blocks, 256, 0, a)(dev, n, 100);
    VERIFY_CUDA(cudaMemcpyAsync(pinned, dev, n * sizeof(int), cudaMemcpyDeviceToHost, a));
    VERIFY_CUDA(cudaEventRecord(done, a));
    const cudaError_t q = cudaEventQuery(done);  // bug: cudaErrorNotReady is ignored
    (void)q;
    expect_iota(100);
  } else if (c == "bad-wrong-stream") {
    LK_LAUNCH(iota_kernel, blocks, 256, 0, a)(dev, n, 1);
    LK_LAUNCH(iota_kernel, blocks, 256, 0, b)(dev2, n, 100);
    VERIFY_CUDA(cudaMemcpyAsync(pinned, dev2, n * sizeof(int), cudaMemcpyDeviceToHost, b));
    VERIFY_CUDA(cudaStreamSynchronize(a));  // bug: the copy was on stream b
    expect_iota(100);
  } else if (c == "bad-host-fn") {
    cudaError_t inner = cudaSuccess;
    VERIFY_CUDA(cudaLaunchHostFunc(a, calls_cuda, &inner));
    VERIFY_CUDA(cudaStreamSynchronize(a));
    VERIFY_CUDA(inner);
  } else if (c == "good") {
    // A kernel, a copy into pinned memory, a host function reading it, all in stream a's order.
    Seen seen{pinned};
    VERIFY_CUDA(cudaEventRecord(start, a));
    LK_LAUNCH(iota_kernel, blocks, 256, 0, a)(dev, n, 100);
    VERIFY_CUDA(cudaMemcpyAsync(pinned, dev, n * sizeof(int), cudaMemcpyDeviceToHost, a));
    VERIFY_CUDA(cudaLaunchHostFunc(a, note_first, &seen));
    VERIFY_CUDA(cudaEventRecord(done, a));
    VERIFY_CUDA(cudaEventSynchronize(done));
    expect_iota(100);
    VERIFY(seen.calls == 1 && seen.first == 100, "host function ran %d times and saw %d", seen.calls, seen.first);
    float ms = -1;
    VERIFY_CUDA(cudaEventElapsedTime(&ms, start, done));
    VERIFY(ms >= 0, "elapsed %g ms", ms);
    // Stream b waits for stream a's event: a's kernel, then b's add, then b's copy.
    LK_LAUNCH(iota_kernel, blocks, 256, 0, a)(dev, n, 7);
    VERIFY_CUDA(cudaEventRecord(done, a));
    VERIFY_CUDA(cudaMemcpyAsync(dev2, dev, n * sizeof(int), cudaMemcpyDeviceToDevice, a));
    VERIFY_CUDA(cudaStreamWaitEvent(b, done, 0));
    LK_LAUNCH(add_kernel, blocks, 256, 0, b)(dev, dev, n);
    VERIFY_CUDA(cudaMemcpyAsync(pinned, dev, n * sizeof(int), cudaMemcpyDeviceToHost, b));
    cudaError_t q;
    int polls = 0;
    VERIFY_CUDA(cudaEventRecord(done, b));
    while ((q = cudaEventQuery(done)) == cudaErrorNotReady) ++polls;
    VERIFY_CUDA(q);
    VERIFY(polls >= 1, "the first query of unfinished work says cudaErrorNotReady");
    for (int i = 0; i < n; ++i) VERIFY(pinned[i] == 2 * (7 + i), "pinned[%d] = %d", i, pinned[i]);
    // The legacy default stream orders with blocking streams: a synchronous copy sees their work.
    cudaStream_t blocking;
    VERIFY_CUDA(cudaStreamCreate(&blocking));
    LK_LAUNCH(iota_kernel, blocks, 256, 0, blocking)(dev, n, 5);
    std::vector<int> host(n);
    VERIFY_CUDA(cudaMemcpy(host.data(), dev, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) VERIFY(host[i] == 5 + i, "host[%d] = %d", i, host[i]);
    // A pageable source is read at the call: changing it afterwards does not change the copy.
    std::vector<int> source(n, 42);
    VERIFY_CUDA(cudaMemcpyAsync(dev2, source.data(), n * sizeof(int), cudaMemcpyHostToDevice, a));
    source.assign(n, 0);
    VERIFY_CUDA(cudaMemcpyAsync(host.data(), dev2, n * sizeof(int), cudaMemcpyDeviceToHost, a));  // pageable: synchronous
    for (int i = 0; i < n; ++i) VERIFY(host[i] == 42, "host[%d] = %d", i, host[i]);
    VERIFY_CUDA(cudaStreamQuery(a));
    VERIFY_CUDA(cudaStreamDestroy(blocking));
  } else {
    verify_unknown(c);
  }
  VERIFY_CUDA(cudaDeviceSynchronize());
  VERIFY_CUDA(cudaEventDestroy(done));
  VERIFY_CUDA(cudaEventDestroy(start));
  VERIFY_CUDA(cudaStreamDestroy(a));
  VERIFY_CUDA(cudaStreamDestroy(b));
  VERIFY_CUDA(cudaFreeHost(pinned));
  VERIFY_CUDA(cudaFree(dev));
  VERIFY_CUDA(cudaFree(dev2));
  std::printf("ok\n");
  return 0;
}
