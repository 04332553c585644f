// Chains per-segment summaries into the exact state entering each segment (see scan.h).
#include <c10/cuda/CUDAException.h>

#include "scan_common.cuh"

namespace vss {

// One thread per (row, n): a short sequential loop over the segments of that row.
__global__ void combine_kernel(const float* __restrict__ seg_S, const float* __restrict__ seg_H,
                               const float* __restrict__ A, float* __restrict__ carry,
                               int rows, int dim, int N, int nseg, bool reverse) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)rows * N) return;
    const int64_t row = idx / N;
    const int n = (int)(idx - row * N);
    const int c = (int)(row % dim);
    const float A2 = A[(int64_t)c * N + n] * kLog2e;
    float h = 0.f;
    for (int k = 0; k < nseg; ++k) {
        const int s = reverse ? nseg - 1 - k : k;
        carry[(row * nseg + s) * N + n] = h;
        if (k == nseg - 1) break;  // the last summary in chain order is never computed (nor needed)
        h = fmaf(exp2f(A2 * seg_S[row * nseg + s]), h, seg_H[(row * nseg + s) * N + n]);
    }
}

void launch_combine(const float* seg_S, const float* seg_H, const float* A, float* carry,
                    int rows, int dim, int N, int nseg, bool reverse, cudaStream_t stream) {
    const int64_t total = (int64_t)rows * N;
    const int threads = 128;
    const int64_t blocks = (total + threads - 1) / threads;
    combine_kernel<<<(unsigned)blocks, threads, 0, stream>>>(seg_S, seg_H, A, carry, rows, dim, N, nseg, reverse);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace vss
