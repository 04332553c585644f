// Batched plane transposes of the fused op's column directions (see launch_transpose in scan.h).
// A 32 x 32 tile goes through shared memory, so that both the reads of src rows and the writes
// of dst rows are coalesced (a plain strided copy makes one of the two hit a new row per thread).
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "scan_common.cuh"

namespace vss {

constexpr int kTile = 32;
constexpr int kTileRows = 8;  // threads per tile column: each thread moves kTile / kTileRows elements
constexpr int kMaxGridZ = 65535;

template <typename TS, typename TD>
__global__ void __launch_bounds__(kTile * kTileRows)
transpose_kernel(const TS* __restrict__ src, Planes sp, TD* __restrict__ dst, Planes dp, const float* __restrict__ add,
                 Planes ap, int64_t planes, int64_t inner, int R, int S) {
    __shared__ float tile[kTile][kTile + 1];  // +1: the column reads below are free of bank conflicts
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int r0 = blockIdx.y * kTile, s0 = blockIdx.x * kTile;
    const int64_t plane = (int64_t)R * S;
    for (int64_t p = blockIdx.z; p < planes; p += gridDim.z) {
        const int64_t o = p / inner, i = p - o * inner;
        const TS* sp_ = src + sp.off0 + o * sp.outer + i * plane;
        TD* dp_ = dst + dp.off0 + o * dp.outer + i * plane;
        const float* ap_ = add ? add + ap.off0 + o * ap.outer + i * plane : nullptr;
#pragma unroll
        for (int k = 0; k < kTile; k += kTileRows) {
            const int r = r0 + ty + k, s = s0 + tx;
            if (r < R && s < S) tile[ty + k][tx] = to_f<TS>(sp_[(int64_t)r * S + s]);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kTile; k += kTileRows) {
            const int s = s0 + ty + k, r = r0 + tx;
            if (r < R && s < S) {
                const int64_t at = (int64_t)s * R + r;
                const float v = tile[tx][ty + k];
                dp_[at] = from_f<TD>(ap_ ? v + ap_[at] : v);
            }
        }
        __syncthreads();  // the tile is refilled for the next plane
    }
}

template <typename TS, typename TD>
void launch_transpose(const TS* src, Planes sp, TD* dst, Planes dp, const float* add, Planes ap, int64_t planes,
                      int64_t inner, int R, int S, cudaStream_t stream) {
    if (planes <= 0 || R <= 0 || S <= 0) return;
    const dim3 grid((S + kTile - 1) / kTile, (R + kTile - 1) / kTile, (unsigned)std::min<int64_t>(planes, kMaxGridZ));
    TORCH_CHECK(grid.y <= 65535, "vmambair_scan: a map of ", R, " rows is too tall to transpose");
    transpose_kernel<TS, TD><<<grid, dim3(kTile, kTileRows), 0, stream>>>(src, sp, dst, dp, add, ap, planes, inner, R, S);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define VSS_TRANSPOSE(TS, TD)                                                                                    \
    template void launch_transpose<TS, TD>(const TS*, Planes, TD*, Planes, const float*, Planes, int64_t, int64_t, \
                                           int, int, cudaStream_t);
VSS_TRANSPOSE(float, float)
VSS_TRANSPOSE(__nv_bfloat16, __nv_bfloat16)
VSS_TRANSPOSE(__half, __half)
VSS_TRANSPOSE(float, __nv_bfloat16)
VSS_TRANSPOSE(float, __half)
#undef VSS_TRANSPOSE

}  // namespace vss
