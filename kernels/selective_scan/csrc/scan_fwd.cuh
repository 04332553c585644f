// Forward kernels. Included once per dtype by fwd_{fp32,bf16,fp16}.cu.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "scan_common.cuh"

namespace vss {

// One block = kWarps channels of one group, one segment of the sequence, one batch item.
// kSummary: compute only the segment's outgoing state from a zero incoming state, plus the
// sum of dt over the segment (its decay is exp(A * sum)); write nothing else.
template <typename T, bool kOmni, bool kSummary>
__global__ void __launch_bounds__(kThreads)
fwd_kernel(const ScanParams p) {
    __shared__ __align__(16) float Bs[kMaxN][kChunk];
    __shared__ __align__(16) float Cs[kSummary ? 1 : kMaxN][kChunk];
    __shared__ float carry[kWarps][kMaxN];  // state entering the next chunk, per warp and n
    __shared__ float A2s[kWarps][kMaxN];    // A * log2(e)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int seg = blockIdx.x, bi = blockIdx.z;
    const int g = blockIdx.y / p.bpg;
    const int cl = (blockIdx.y - g * p.bpg) * kWarps + warp;  // channel inside the group
    const bool valid = cl < p.cpg;                           // idle warps still join the barriers
    const int c = g * p.cpg + (valid ? cl : 0);
    const int N = p.N, L = p.L;
    const int64_t row = (int64_t)bi * p.dim + c;                               // delta / states row
    const int64_t xrow = kOmni ? (int64_t)bi * p.cpg + (valid ? cl : 0) : row; // u / y row
    const T* __restrict__ urow = static_cast<const T*>(p.u) + xrow * L;
    const T* __restrict__ drow = static_cast<const T*>(p.delta) + row * L;
    const T* __restrict__ Bg = static_cast<const T*>(p.B) + ((int64_t)bi * p.G + g) * N * L;
    const T* __restrict__ Cg = static_cast<const T*>(p.C) + ((int64_t)bi * p.G + g) * N * L;
    const float bias = p.bias ? p.bias[c] : 0.f;
    const float Dc = p.D ? p.D[c] : 0.f;
    const int ch0 = seg * p.cps;
    const int ch1 = min(p.nchunks, ch0 + p.cps);

    if (lane < N) {
        A2s[warp][lane] = p.A[(int64_t)c * N + lane] * kLog2e;
        carry[warp][lane] = (!kSummary && p.nseg > 1) ? p.seg_carry[(row * p.nseg + seg) * N + lane] : 0.f;
    }
    float S_tot = 0.f;

    for (int ch = ch0; ch < ch1; ++ch) {
        const int tb = ch * kChunk;
        __syncthreads();  // the previous chunk is done with Bs/Cs (and carry writes are visible)
        {
            // Stage this group's B (and C) chunk once for all warps, as fp32, in scan order.
            const int t = tb + tid;
            const bool in = t < L;
            const int pp = in ? (kOmni ? omni_pixel(g, t, p.H, p.W, L) : t) : 0;
            for (int n = 0; n < N; ++n) {
                Bs[n][tid] = in ? to_f<T>(Bg[(int64_t)n * L + pp]) : 0.f;
                if constexpr (!kSummary) Cs[n][tid] = in ? to_f<T>(Cg[(int64_t)n * L + pp]) : 0.f;
            }
        }
        __syncthreads();

        const int t0 = tb + lane * kK;
        const int nv = valid ? min(kK, L - t0) : 0;  // positions of this lane that exist (may be <= 0)
        float dt[kK], du[kK], yv[kK];
        int pix[kK];
        {
            float uv[kK];
            if constexpr (kOmni) {
#pragma unroll
                for (int i = 0; i < kK; ++i) {
                    pix[i] = i < nv ? omni_pixel(g, t0 + i, p.H, p.W, L) : 0;
                    dt[i] = i < nv ? to_f<T>(drow[pix[i]]) : 0.f;
                    uv[i] = i < nv ? to_f<T>(urow[pix[i]]) : 0.f;
                }
            } else {
                load_row<T>(drow + t0, nv, p.vec, dt);
                load_row<T>(urow + t0, nv, p.vec, uv);
            }
#pragma unroll
            for (int i = 0; i < kK; ++i) {
                const float z = dt[i] + bias;
                // Positions past the end get dt = 0: decay 1, input 0, so they pass the state through.
                dt[i] = i < nv ? (p.softplus ? softplus_f(z) : z) : 0.f;
                du[i] = dt[i] * uv[i];
                yv[i] = Dc * uv[i];
            }
        }
        float S = 0.f;
#pragma unroll
        for (int i = 0; i < kK; ++i) S += dt[i];

        for (int n = 0; n < N; ++n) {
            const float A2 = A2s[warp][n];
            float a[kK], x[kK], bv[kK];
            load_smem_row(&Bs[n][lane * kK], bv);
            float X = 0.f;
#pragma unroll
            for (int i = 0; i < kK; ++i) {
                a[i] = exp2f(dt[i] * A2);
                x[i] = du[i] * bv[i];
                X = fmaf(a[i], X, x[i]);
            }
            // The product of this lane's decays is exp(A * sum dt): one exp instead of kK multiplies.
            float P = exp2f(A2 * S);
            warp_scan_fwd(P, X, lane);
            const float hc = carry[warp][n];
            float Pe = __shfl_up_sync(kFull, P, 1);
            float Xe = __shfl_up_sync(kFull, X, 1);
            if (lane == 0) { Pe = 1.f; Xe = 0.f; }
            __syncwarp();  // every lane has read carry[warp][n] before lane 31 replaces it
            if (lane == 31) carry[warp][n] = fmaf(P, hc, X);
            if constexpr (!kSummary) {
                if (lane == 0 && valid) p.states[(row * p.nchunks + ch) * N + n] = hc;
                float cv[kK];
                load_smem_row(&Cs[n][lane * kK], cv);
                float h = fmaf(Pe, hc, Xe);
#pragma unroll
                for (int i = 0; i < kK; ++i) {
                    h = fmaf(a[i], h, x[i]);
                    yv[i] = fmaf(cv[i], h, yv[i]);
                }
            }
        }

        if constexpr (!kSummary) {
            if (valid) {
                if constexpr (kOmni) {
                    // Four directions add into the same pixel: fp32 atomics into a zeroed buffer.
                    float* yacc = static_cast<float*>(p.y) + xrow * L;
#pragma unroll
                    for (int i = 0; i < kK; ++i)
                        if (i < nv) atomicAdd(yacc + pix[i], yv[i]);
                } else {
                    store_row<T>(static_cast<T*>(p.y) + row * L + t0, nv, p.vec, yv);
                }
            }
        } else {
            S_tot += S;
        }
    }

    if constexpr (kSummary) {
        S_tot = warp_sum(S_tot);
        __syncwarp();
        if (valid) {
            if (lane == 0) p.seg_S[row * p.nseg + seg] = S_tot;
            if (lane < N) p.seg_H[(row * p.nseg + seg) * N + lane] = carry[warp][lane];
        }
    }
}

template <typename T>
void launch_fwd(const ScanParams& p, bool omni, cudaStream_t stream) {
    const dim3 block(kThreads);
    if (p.nseg > 1) {
        const dim3 grid(p.nseg, p.G * p.bpg, p.batch);
        if (omni) fwd_kernel<T, true, true><<<grid, block, 0, stream>>>(p);
        else fwd_kernel<T, false, true><<<grid, block, 0, stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        launch_combine(p.seg_S, p.seg_H, p.A, p.seg_carry, p.batch * p.dim, p.dim, p.N, p.nseg, false, stream);
    }
    const dim3 grid(p.nseg, p.G * p.bpg, p.batch);
    if (omni) fwd_kernel<T, true, false><<<grid, block, 0, stream>>>(p);
    else fwd_kernel<T, false, false><<<grid, block, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace vss

