// Batched plane transposes of the fused op's column directions (see launch_transposes in scan.h).
// A tile goes through shared memory, so that both the reads of src rows and the writes
// of dst rows are coalesced (a plain strided copy makes one of the two hit a new row per thread).
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "scan_common.cuh"

namespace vss {

constexpr int kTileRows = 8;  // threads per tile column (blockDim.y); blockDim.x = 32
constexpr int kMaxGridZ = 65535;

// kT x kT tiles (kT = 32 or 64): each thread moves (kT / kTileRows) * (kT / 32) elements, all its
// loads issued before the barrier, so that enough bytes are in flight to keep HBM busy (a 32 x 32
// tile has 4 per thread; planes of 64 x 64 and up take 64 x 64 tiles, 16 per thread). Grid z runs
// over the planes of all jobs, job after job.
// kPair (16-bit types, 64 x 64 tiles, even sides, no add): each access moves two neighbouring
// elements (4 bytes) instead of one: the 16-bit copies are bound by instructions, not bytes, and
// ran at 1.2 TB/s with one element per access against 2.8 for fp32 (H100).
template <typename TS, typename TD, int kT, bool kPair>
__global__ void __launch_bounds__(32 * kTileRows)
transpose_kernel(const TransposeJobs<TS, TD> jobs, int64_t total) {
    constexpr int kRows = kT / kTileRows, kCols = kT / 32;
    __shared__ float tile[kT][kT + 1];  // +1: the column reads below are free of bank conflicts
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int R = jobs.R, S = jobs.S;
    const int r0 = blockIdx.y * kT, s0 = blockIdx.x * kT;
    const int64_t plane = (int64_t)R * S;
    for (int64_t z = blockIdx.z; z < total; z += gridDim.z) {
        // This plane's job (selected with constant indices: a dynamic index into the kernel's
        // parameters would copy them to local memory).
        int64_t p = z;
        TransposeJob<TS, TD> jb = jobs.job[0];
#pragma unroll
        for (int k = 1; k < kMaxTransposeJobs; ++k) {
            if (k < jobs.count && p >= jb.planes) {
                p -= jb.planes;
                jb = jobs.job[k];
            }
        }
        const int64_t o = p / jb.inner, i = p - o * jb.inner;
        const TS* sp_ = jb.src + jb.sp.off0 + o * jb.sp.outer + i * plane;
        TD* dp_ = jb.dst + jb.dp.off0 + o * jb.dp.outer + i * plane;
        const float* ap_ = jb.add ? jb.add + jb.ap.off0 + o * jb.ap.outer + i * plane : nullptr;
        if constexpr (kPair) {
            static_assert(kT == 64 && sizeof(TS) == 2 && sizeof(TD) == 2, "pairs: 16-bit types, 64-wide tiles");
            union Pair { uint32_t u; TS e[2]; };
            uint32_t w[kRows];
#pragma unroll
            for (int k = 0; k < kRows; ++k) {  // pair (r, s..s+1) of a src row; S is even, so s + 1 < S too
                const int r = r0 + ty + k * kTileRows, s = s0 + 2 * tx;
                w[k] = r < R && s < S ? *reinterpret_cast<const uint32_t*>(sp_ + (int64_t)r * S + s) : 0u;
            }
#pragma unroll
            for (int k = 0; k < kRows; ++k) {
                Pair x;
                x.u = w[k];
                tile[ty + k * kTileRows][2 * tx] = to_f<TS>(x.e[0]);
                tile[ty + k * kTileRows][2 * tx + 1] = to_f<TS>(x.e[1]);
            }
            __syncthreads();
#pragma unroll
            for (int k = 0; k < kRows; ++k) {  // pair (s, r..r+1) of a dst row
                const int s = s0 + ty + k * kTileRows, r = r0 + 2 * tx;
                if (r < R && s < S) {
                    union { uint32_t u; TD e[2]; } y;
                    y.e[0] = from_f<TD>(tile[2 * tx][ty + k * kTileRows]);
                    y.e[1] = from_f<TD>(tile[2 * tx + 1][ty + k * kTileRows]);
                    *reinterpret_cast<uint32_t*>(dp_ + (int64_t)s * R + r) = y.u;
                }
            }
        } else {
            float v[kRows][kCols];
#pragma unroll
            for (int k = 0; k < kRows; ++k)
#pragma unroll
                for (int j = 0; j < kCols; ++j) {
                    const int r = r0 + ty + k * kTileRows, s = s0 + tx + 32 * j;
                    v[k][j] = r < R && s < S ? to_f<TS>(sp_[(int64_t)r * S + s]) : 0.f;
                }
#pragma unroll
            for (int k = 0; k < kRows; ++k)
#pragma unroll
                for (int j = 0; j < kCols; ++j) tile[ty + k * kTileRows][tx + 32 * j] = v[k][j];
            __syncthreads();
            // dst row s = src column s; the add operand (laid out like dst) is read first, all at once.
#pragma unroll
            for (int k = 0; k < kRows; ++k)
#pragma unroll
                for (int j = 0; j < kCols; ++j) {
                    const int s = s0 + ty + k * kTileRows, r = r0 + tx + 32 * j;
                    v[k][j] = ap_ && r < R && s < S ? ap_[(int64_t)s * R + r] : 0.f;
                }
#pragma unroll
            for (int k = 0; k < kRows; ++k)
#pragma unroll
                for (int j = 0; j < kCols; ++j) {
                    const int s = s0 + ty + k * kTileRows, r = r0 + tx + 32 * j;
                    if (r < R && s < S)
                        dp_[(int64_t)s * R + r] = from_f<TD>(tile[tx + 32 * j][ty + k * kTileRows] + v[k][j]);
                }
        }
        __syncthreads();  // the tile is refilled for the next plane
    }
}

template <typename TS, typename TD>
void launch_transposes(const TransposeJobs<TS, TD>& jobs, cudaStream_t stream) {
    int64_t total = 0;
    for (int k = 0; k < jobs.count; ++k) total += jobs.job[k].planes;
    const int R = jobs.R, S = jobs.S;
    if (total <= 0 || R <= 0 || S <= 0) return;
    const int t = R >= 64 && S >= 64 ? 64 : 32;
    const dim3 grid((S + t - 1) / t, (R + t - 1) / t, (unsigned)std::min<int64_t>(total, kMaxGridZ));
    TORCH_CHECK(grid.y <= 65535, "vmambair_scan: a map of ", R, " rows is too tall to transpose");
    const dim3 block(32, kTileRows);
    bool pair = false;
    if constexpr (sizeof(TS) == 2 && sizeof(TD) == 2) {
        // Every plane must start 4-byte aligned: even sides, offsets and group strides, no add.
        auto even = [](int64_t v) { return v % 2 == 0; };
        auto aligned4 = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 3) == 0; };
        pair = t == 64 && R % 2 == 0 && S % 2 == 0;
        for (int k = 0; k < jobs.count && pair; ++k) {
            const TransposeJob<TS, TD>& j = jobs.job[k];
            pair = j.add == nullptr && aligned4(j.src) && aligned4(j.dst) && even(j.sp.off0) && even(j.sp.outer) &&
                   even(j.dp.off0) && even(j.dp.outer);
        }
        if (pair) transpose_kernel<TS, TD, 64, true><<<grid, block, 0, stream>>>(jobs, total);
    }
    if (!pair) {
        if (t == 64) transpose_kernel<TS, TD, 64, false><<<grid, block, 0, stream>>>(jobs, total);
        else transpose_kernel<TS, TD, 32, false><<<grid, block, 0, stream>>>(jobs, total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define VSS_TRANSPOSE(TS, TD) template void launch_transposes<TS, TD>(const TransposeJobs<TS, TD>&, cudaStream_t);
VSS_TRANSPOSE(float, float)
VSS_TRANSPOSE(__nv_bfloat16, __nv_bfloat16)
VSS_TRANSPOSE(__half, __half)
VSS_TRANSPOSE(float, __nv_bfloat16)
VSS_TRANSPOSE(float, __half)
#undef VSS_TRANSPOSE

}  // namespace vss
