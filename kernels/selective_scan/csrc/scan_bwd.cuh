// Backward kernels. Included once per dtype by bwd_{fp32,bf16,fp16}.cu.
//
// With g_t = dL/dh_t and q_t = exp(dt_t A) g_t (the part of g_t handed to h_{t-1}):
//   g_t = C_t dy_t + q_{t+1}                     (reverse recurrence, r -> a_t (w_t + r))
//   dC_t += dy_t h_t        dB_t += g_t dt_t u_t       (summed over the channels of a group)
//   du_t  = dt_t sum_n g B + D dy_t
//   ddt_t = u_t sum_n g B + sum_n A q_t h_{t-1}
//   dA    = sum_t q_t h_{t-1} dt_t
//   ddelta = ddt * sigmoid(delta + bias) under softplus, where sigmoid = 1 - exp(-dt).
#pragma once

#include <c10/cuda/CUDAException.h>

#include "scan_common.cuh"

namespace vss {

// Dynamic shared memory layout, in floats. The summary kernel uses only the first part.
constexpr int kSmCs = 0;                                  // [kMaxN][kChunk]
constexpr int kSmRcarry = kSmCs + kMaxN * kChunk;         // [kWarps][kMaxN]
constexpr int kSmA = kSmRcarry + kWarps * kMaxN;          // [kWarps][kMaxN]
constexpr int kSmSummaryEnd = kSmA + kWarps * kMaxN;
constexpr int kSmBs = kSmSummaryEnd;                      // [kMaxN][kChunk]
constexpr int kSmRed = kSmBs + kMaxN * kChunk;            // [2 buffers][dB, dC][kWarps][kRedStride]
constexpr int kSmDA = kSmRed + 4 * kWarps * kRedStride;   // [kWarps][kMaxN][32]
constexpr int kSmEnd = kSmDA + kWarps * kMaxN * 32;
static_assert(kSmBs % 4 == 0 && kSmRed % 4 == 0, "16-byte alignment of staged rows");

template <typename T, bool kOmni, bool kSummary>
__global__ void __launch_bounds__(kThreads)
bwd_kernel(const ScanParams p) {
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    float (*Cs)[kChunk] = reinterpret_cast<float (*)[kChunk]>(smem + kSmCs);
    float (*rcarry)[kMaxN] = reinterpret_cast<float (*)[kMaxN]>(smem + kSmRcarry);
    float (*As)[kMaxN] = reinterpret_cast<float (*)[kMaxN]>(smem + kSmA);
    float (*Bs)[kChunk] = reinterpret_cast<float (*)[kChunk]>(smem + kSmBs);
    float* red = smem + kSmRed;
    float (*dAs)[kMaxN][32] = reinterpret_cast<float (*)[kMaxN][32]>(smem + kSmDA);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int seg = blockIdx.x, bi = blockIdx.z;
    const int g = blockIdx.y / p.bpg;
    const int cl = (blockIdx.y - g * p.bpg) * kWarps + warp;
    const bool valid = cl < p.cpg;  // idle warps compute zeros and still join every barrier
    const int c = g * p.cpg + (valid ? cl : 0);
    const int N = p.N, L = p.L;
    const int64_t row = (int64_t)bi * p.dim + c;
    const int64_t xrow = kOmni ? (int64_t)bi * p.cpg + (valid ? cl : 0) : row;
    const T* __restrict__ urow = static_cast<const T*>(p.u) + xrow * L;
    const T* __restrict__ drow = static_cast<const T*>(p.delta) + row * L;
    const T* __restrict__ dyrow = static_cast<const T*>(p.dy) + xrow * L;
    const int64_t gbase = ((int64_t)bi * p.G + g) * N * L;
    const T* __restrict__ Bg = static_cast<const T*>(p.B) + gbase;
    const T* __restrict__ Cg = static_cast<const T*>(p.C) + gbase;
    const float bias = p.bias ? p.bias[c] : 0.f;
    const float Dc = p.D ? p.D[c] : 0.f;
    const int ch0 = seg * p.cps;
    const int ch1 = min(p.nchunks, ch0 + p.cps);

    if (lane < N) {
        As[warp][lane] = p.A[(int64_t)c * N + lane];
        rcarry[warp][lane] = (!kSummary && p.nseg > 1) ? p.seg_carry[(row * p.nseg + seg) * N + lane] : 0.f;
    }
    if constexpr (!kSummary) {
        for (int n = 0; n < N; ++n) dAs[warp][n][lane] = 0.f;
    }
    float dD_acc = 0.f, db_acc = 0.f, S_tot = 0.f;
    int buf = 0;

    for (int ch = ch1 - 1; ch >= ch0; --ch) {
        const int tb = ch * kChunk;
        __syncthreads();
        const int tpos = tb + tid;
        const bool tin = tpos < L;
        const int tpix = tin ? (kOmni ? omni_pixel(g, tpos, p.H, p.W, L) : tpos) : 0;
        for (int n = 0; n < N; ++n) {
            if constexpr (!kSummary) Bs[n][tid] = tin ? to_f<T>(Bg[(int64_t)n * L + tpix]) : 0.f;
            Cs[n][tid] = tin ? to_f<T>(Cg[(int64_t)n * L + tpix]) : 0.f;
        }
        __syncthreads();

        const int t0 = tb + lane * kK;
        const int nv = valid ? min(kK, L - t0) : 0;
        float dt[kK], uv[kK], dyv[kK], du[kK];
        int pix[kK];
        if constexpr (kOmni) {
#pragma unroll
            for (int i = 0; i < kK; ++i) {
                pix[i] = i < nv ? omni_pixel(g, t0 + i, p.H, p.W, L) : 0;
                dt[i] = i < nv ? to_f<T>(drow[pix[i]]) : 0.f;
                uv[i] = i < nv ? to_f<T>(urow[pix[i]]) : 0.f;
                dyv[i] = i < nv ? to_f<T>(dyrow[pix[i]]) : 0.f;
            }
        } else {
            load_row<T>(drow + t0, nv, p.vec, dt);
            load_row<T>(urow + t0, nv, p.vec, uv);
            load_row<T>(dyrow + t0, nv, p.vec, dyv);
        }
        float S = 0.f;
#pragma unroll
        for (int i = 0; i < kK; ++i) {
            const float z = dt[i] + bias;
            dt[i] = i < nv ? (p.softplus ? softplus_f(z) : z) : 0.f;
            du[i] = dt[i] * uv[i];
            S += dt[i];
        }
        float gB[kK], qhA[kK];
#pragma unroll
        for (int i = 0; i < kK; ++i) { gB[i] = 0.f; qhA[i] = 0.f; }

        for (int n = 0; n < N; ++n) {
            const float An = As[warp][n];
            const float A2 = An * kLog2e;
            float a[kK], w[kK];
            {
                float cv[kK];
                load_smem_row(&Cs[n][lane * kK], cv);
#pragma unroll
                for (int i = 0; i < kK; ++i) {
                    a[i] = exp2f(dt[i] * A2);
                    w[i] = cv[i] * dyv[i];
                }
            }
            const float P0 = exp2f(A2 * S);

            // Forward recomputation of the states inside this chunk, from the saved chunk start.
            float h[kK], bv[kK], hin = 0.f;
            if constexpr (!kSummary) {
                load_smem_row(&Bs[n][lane * kK], bv);
                float X = 0.f;
#pragma unroll
                for (int i = 0; i < kK; ++i) X = fmaf(a[i], X, du[i] * bv[i]);
                float P = P0;
                warp_scan_fwd(P, X, lane);
                float Pe = __shfl_up_sync(kFull, P, 1);
                float Xe = __shfl_up_sync(kFull, X, 1);
                if (lane == 0) { Pe = 1.f; Xe = 0.f; }
                const float h0 = p.states[(row * p.nchunks + ch) * N + n];
                hin = fmaf(Pe, h0, Xe);
                float hh = hin;
#pragma unroll
                for (int i = 0; i < kK; ++i) {
                    hh = fmaf(a[i], hh, du[i] * bv[i]);
                    h[i] = hh;
                }
            }

            // Reverse scan of r -> a_t (w_t + r) (r is q handed to the left).
            float Q = 0.f;
#pragma unroll
            for (int i = kK - 1; i >= 0; --i) Q = a[i] * (w[i] + Q);
            float P = P0;
            warp_scan_rev(P, Q, lane);
            const float rc = rcarry[warp][n];
            float Pn = __shfl_down_sync(kFull, P, 1);
            float Qn = __shfl_down_sync(kFull, Q, 1);
            if (lane == 31) { Pn = 1.f; Qn = 0.f; }
            __syncwarp();  // every lane has read rcarry[warp][n] before lane 0 replaces it
            if (lane == 0) rcarry[warp][n] = fmaf(P, rc, Q);

            if constexpr (!kSummary) {
                float r = fmaf(Pn, rc, Qn);
                float dAl = 0.f;
                float* rB = red + ((buf * 2 + 0) * kWarps + warp) * kRedStride + lane * (kK + 1);
                float* rC = red + ((buf * 2 + 1) * kWarps + warp) * kRedStride + lane * (kK + 1);
#pragma unroll
                for (int i = kK - 1; i >= 0; --i) {
                    const float gg = w[i] + r;
                    const float q = a[i] * gg;
                    r = q;
                    const float hp = i > 0 ? h[i - 1] : hin;
                    rB[i] = gg * du[i];
                    rC[i] = dyv[i] * h[i];
                    gB[i] = fmaf(gg, bv[i], gB[i]);
                    const float qh = q * hp;
                    qhA[i] = fmaf(An, qh, qhA[i]);
                    dAl = fmaf(qh, dt[i], dAl);
                }
                dAs[warp][n][lane] += dAl;
                __syncthreads();
                // Sum dB/dC over the block's channels, then one atomic per position and n.
                // (Double-buffered by n parity: one barrier per n suffices.)
                {
                    const int idx = (tid / kK) * (kK + 1) + tid % kK;
                    const float* r0 = red + (buf * 2 + 0) * kWarps * kRedStride + idx;
                    const float* r1 = red + (buf * 2 + 1) * kWarps * kRedStride + idx;
                    float sB = 0.f, sC = 0.f;
#pragma unroll
                    for (int w8 = 0; w8 < kWarps; ++w8) {
                        sB += r0[w8 * kRedStride];
                        sC += r1[w8 * kRedStride];
                    }
                    if (tin) {
                        atomicAdd(p.dB + gbase + (int64_t)n * L + tpix, sB);
                        atomicAdd(p.dC + gbase + (int64_t)n * L + tpix, sC);
                    }
                }
                buf ^= 1;
            }
        }

        if constexpr (!kSummary) {
            if (valid) {
                float duo[kK], ddo[kK];
#pragma unroll
                for (int i = 0; i < kK; ++i) {
                    duo[i] = fmaf(dt[i], gB[i], Dc * dyv[i]);
                    const float ddt = fmaf(uv[i], gB[i], qhA[i]);
                    // d softplus(z)/dz = sigmoid(z) = 1 - exp(-softplus(z)); expm1 keeps it exact for small dt.
                    ddo[i] = p.softplus ? ddt * (-expm1f(-dt[i])) : ddt;
                    if (i < nv) {
                        dD_acc = fmaf(dyv[i], uv[i], dD_acc);
                        db_acc += ddo[i];
                    }
                }
                if constexpr (kOmni) {
                    float* duacc = static_cast<float*>(p.du) + xrow * L;
                    T* ddrow = static_cast<T*>(p.ddelta) + row * L;
#pragma unroll
                    for (int i = 0; i < kK; ++i) {
                        if (i < nv) {
                            atomicAdd(duacc + pix[i], duo[i]);
                            ddrow[pix[i]] = from_f<T>(ddo[i]);
                        }
                    }
                } else {
                    store_row<T>(static_cast<T*>(p.du) + row * L + t0, nv, p.vec, duo);
                    store_row<T>(static_cast<T*>(p.ddelta) + row * L + t0, nv, p.vec, ddo);
                }
            }
        } else {
            S_tot += S;
        }
    }

    if constexpr (!kSummary) {
        for (int n = 0; n < N; ++n) {
            const float v = warp_sum(dAs[warp][n][lane]);
            if (lane == 0 && valid) atomicAdd(p.dA + (int64_t)c * N + n, v);
        }
        dD_acc = warp_sum(dD_acc);
        db_acc = warp_sum(db_acc);
        if (lane == 0 && valid) {
            if (p.dD) atomicAdd(p.dD + c, dD_acc);
            if (p.dbias) atomicAdd(p.dbias + c, db_acc);
        }
    } else {
        S_tot = warp_sum(S_tot);
        __syncwarp();
        if (valid) {
            if (lane == 0) p.seg_S[row * p.nseg + seg] = S_tot;
            if (lane < N) p.seg_H[(row * p.nseg + seg) * N + lane] = rcarry[warp][lane];
        }
    }
}

template <typename Kernel>
static void set_smem_limit(Kernel kernel, int bytes) {
    // Above 48 KB a kernel must opt in; cheap, and per device, so simply done at every launch.
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <typename T>
void launch_bwd(const ScanParams& p, bool omni, cudaStream_t stream) {
    const dim3 block(kThreads);
    const dim3 grid(p.nseg, p.G * p.bpg, p.batch);
    if (p.nseg > 1) {
        const int bytes = kSmSummaryEnd * (int)sizeof(float);
        if (omni) bwd_kernel<T, true, true><<<grid, block, bytes, stream>>>(p);
        else bwd_kernel<T, false, true><<<grid, block, bytes, stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        launch_combine(p.seg_S, p.seg_H, p.A, p.seg_carry, p.batch * p.dim, p.dim, p.N, p.nseg, true, stream);
    }
    const int bytes = kSmEnd * (int)sizeof(float);
    if (omni) {
        set_smem_limit(bwd_kernel<T, true, false>, bytes);
        bwd_kernel<T, true, false><<<grid, block, bytes, stream>>>(p);
    } else {
        set_smem_limit(bwd_kernel<T, false, false>, bytes);
        bwd_kernel<T, false, false><<<grid, block, bytes, stream>>>(p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace vss
