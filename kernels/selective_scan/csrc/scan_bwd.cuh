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

// Dynamic shared memory layout, in floats (NS = staged rows, an upper bound of N). The summary
// kernel uses only the first part.
//   Cs[NS][kChunk], rcarry[kWarps][NS] (lane 31 only), As[kWarps][NS]  | summary end
//   Bs[NS][kChunk], red[2 buffers][dB, dC][kWarps][kChunk], dAs[kWarps][NS][32],
//   and for the fused op Xs[3][kWarps][kChunk] (column directions: delta/u/dy in, du/ddelta out; with
//   mixed columns du/ddelta out only)
template <int NS, bool kOmni>
struct BwdSmem {
    static constexpr int kCs = 0;
    static constexpr int kRcarry = kCs + NS * kChunk;
    static constexpr int kA = kRcarry + kWarps * NS;
    static constexpr int kSummaryEnd = kA + kWarps * NS;
    static constexpr int kBs = kSummaryEnd;
    static constexpr int kRed = kBs + NS * kChunk;
    static constexpr int kDA = kRed + 4 * kWarps * kChunk;
    static constexpr int kXs = kDA + kWarps * NS * 32;
    static constexpr int kEnd = kXs + (kOmni ? 3 * kWarps * kChunk : 0);
    static_assert(kBs % 4 == 0 && kRed % 4 == 0 && kXs % 4 == 0, "16-byte alignment of staged rows");
    static constexpr int bytes(bool summary) { return (summary ? kSummaryEnd : kEnd) * (int)sizeof(float); }
};

// kN > 0: state size known at compile time (= p.N); kN == 0: any p.N <= kMaxN.
// Per chunk: all global loads are issued together (this position's B/C rows for every n, in two
// halves to bound registers; this lane's delta/u/dy; the chunk's saved states, one n per lane),
// and the next chunk (ch - 1) is prefetched into L2. Per state, the forward recomputation scan
// and the reverse scan are independent, so their warp scans run interleaved (ILP); the incoming
// state / reverse carry are folded into lane 0 / lane 31 before scanning, so the scans give
// exact values directly, and lane 31 keeps the reverse carry (rcarry[warp][n], touched by lane
// 31 only, except at init and in the summary's final read, both ordered by barriers).
// kCol: a column direction of the fused op whose chunks are staged row by row (see col_staged
// below); bwd_kernel picks the body per block (separate code, separate registers).
template <typename T, bool kOmni, bool kSummary, int kN, bool kCol>
__device__ __forceinline__ void bwd_body(const ScanParams& p) {
    constexpr int NS = kN > 0 ? kN : kMaxN;
    using Sm = BwdSmem<NS, kOmni>;
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    float (*Cs)[kChunk] = reinterpret_cast<float (*)[kChunk]>(smem + Sm::kCs);
    float (*rcarry)[NS] = reinterpret_cast<float (*)[NS]>(smem + Sm::kRcarry);
    float (*As)[NS] = reinterpret_cast<float (*)[NS]>(smem + Sm::kA);
    float (*Bs)[kChunk] = reinterpret_cast<float (*)[kChunk]>(smem + Sm::kBs);
    float* red = smem + Sm::kRed;
    float (*dAs)[NS][32] = reinterpret_cast<float (*)[NS][32]>(smem + Sm::kDA);
    float (*Xs)[kWarps][kChunk] = reinterpret_cast<float (*)[kWarps][kChunk]>(smem + Sm::kXs);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // The summary pass skips segment 0, whose reverse summary no carry needs.
    const int seg = blockIdx.x + (kSummary ? 1 : 0), bi = blockIdx.z;
    const int g = blockIdx.y / p.bpg;
    const int cl = (blockIdx.y - g * p.bpg) * kWarps + warp;
    const bool valid = cl < p.cpg;  // idle warps compute zeros and still join every barrier
    const int c = g * p.cpg + (valid ? cl : 0);
    const int N = kN > 0 ? kN : p.N, L = p.L;
    const int64_t row = (int64_t)bi * p.dim + c;
    const int64_t xrow = kOmni ? (int64_t)bi * p.cpg + (valid ? cl : 0) : row;
    // Transposed columns (ScanParams::colT): see fwd_body.
    const bool tcol = kOmni && p.colT && (g & 1);
    const int gm = kOmni ? memory_direction(g, p.colT) : g;
    const T* __restrict__ urow = static_cast<const T*>(tcol ? p.uT : p.u) + xrow * L;
    const int64_t dbase = kOmni ? delta_row_offset(p, tcol, bi, g, valid ? cl : 0) : row * L;
    const T* __restrict__ drow = static_cast<const T*>(tcol ? p.deltaT : p.delta) + dbase;
    const T* __restrict__ dyrow = static_cast<const T*>(tcol ? p.dyT : p.dy) + xrow * L;
    const int64_t gbase = kOmni ? bc_offset(p, tcol, bi, g, N) : ((int64_t)bi * p.G + g) * N * L;
    const T* __restrict__ Bg = static_cast<const T*>(tcol ? p.BT : p.B) + gbase;
    const T* __restrict__ Cg = static_cast<const T*>(tcol ? p.CT : p.C) + gbase;
    float* __restrict__ dBg = (tcol ? p.dBT : p.dB) + gbase;
    float* __restrict__ dCg = (tcol ? p.dCT : p.dC) + gbase;
    const float bias = p.bias ? p.bias[c] : 0.f;
    const float Dc = p.D ? p.D[c] : 0.f;
    // Fused op, column direction, main pass: delta/u/dy come in and du/ddelta go out through Xs,
    // moved by all threads in stage_slot's row-by-row order (a lane's own positions are W apart
    // in memory, so per-lane gathers would touch 32 rows per load).
    constexpr bool col_staged = kCol;
    // Mixed columns (ScanParams::col_out_staged): a tcol block that reads the transposed copies but
    // sends du / ddelta out through Xs like a col_staged block, straight into the image layout.
    const bool out_staged = kOmni && !kSummary && tcol && p.col_out_staged;
    const int cl0 = (blockIdx.y - g * p.bpg) * kWarps;  // the block's first channel in its group
    // dB/dC leave as 8-byte reductions of 2 consecutive positions where memory has them in order.
    const bool vec_red = p.vec && !(kOmni && (gm & 1));
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
        const int t0 = tb + lane * kK;
        const int nv = valid ? min(kK, L - t0) : 0;
        const StageSlot slot = stage_slot<kOmni>(gm, tb, tid, p.H, p.W, L);
        const bool tin = slot.in;
        const int tpix = slot.pix;

        // Global loads of the chunk, issued back to back (see the comment above the kernel).
        constexpr int kHalf = NS > 8 ? 8 : NS;
        const int stid = staged_index(slot.q);
        float vb[kHalf], vc[kHalf];
        auto load_bc = [&](const int nb) {
#pragma unroll
            for (int j = 0; j < kHalf; ++j) {
                if (nb + j < N) {
                    if constexpr (!kSummary) vb[j] = tin ? to_f<T>(Bg[(int64_t)(nb + j) * L + tpix]) : 0.f;
                    vc[j] = tin ? to_f<T>(Cg[(int64_t)(nb + j) * L + tpix]) : 0.f;
                }
            }
        };
        auto store_bc = [&](const int nb) {
#pragma unroll
            for (int j = 0; j < kHalf; ++j) {
                if (nb + j < N) {
                    if constexpr (!kSummary) Bs[nb + j][stid] = vb[j];
                    Cs[nb + j][stid] = vc[j];
                }
            }
        };
        load_bc(0);
        float dt[kK], uv[kK], dyv[kK];
        if (col_staged) {
            // (read from Xs after the barriers below)
        } else if constexpr (kOmni) {
            load_lane_omni<T>(drow, gm, t0, nv, p.vec, p.H, p.W, L, dt);
            load_lane_omni<T>(urow, gm, t0, nv, p.vec, p.H, p.W, L, uv);
            load_lane_omni<T>(dyrow, gm, t0, nv, p.vec, p.H, p.W, L, dyv);
        } else {
            load_row<T>(drow + t0, nv, p.vec, dt);
            load_row<T>(urow + t0, nv, p.vec, uv);
            load_row<T>(dyrow + t0, nv, p.vec, dyv);
        }
        // Saved state at the chunk start, state n in lane n (handed out by shuffles below).
        float st = 0.f;
        if constexpr (!kSummary) {
            if (lane < N) st = p.states[(row * p.nchunks + ch) * N + lane];
        }
        if constexpr (!kOmni) {
            if (ch - 1 >= ch0) {
                prefetch_rows_l2<T>(Cg, kSummary ? nullptr : Bg, N, L, tb - kChunk, tid);
                if (valid) {
                    if constexpr (kSummary) {
                        const T* const rows[2] = {drow, dyrow};
                        prefetch_warp_rows_l2<T, 2>(rows, L, tb - kChunk, lane);
                    } else {
                        const T* const rows[3] = {drow, urow, dyrow};
                        prefetch_warp_rows_l2<T, 3>(rows, L, tb - kChunk, lane);
                    }
                }
            }
        }
        __syncthreads();  // the previous chunk is done with Bs/Cs (and Xs)
        store_bc(0);
#pragma unroll
        for (int nb = kHalf; nb < NS; nb += kHalf) {
            if (nb < N) {
                load_bc(nb);
                store_bc(nb);
            }
        }
        if (col_staged) {
            const int nrows = p.cpg - cl0;
            const T* dstaged = static_cast<const T*>(p.delta) + ((int64_t)bi * p.dim + g * p.cpg + cl0) * L;
            const int64_t xbase = ((int64_t)bi * p.cpg + cl0) * L;
            stage_rows_in<T>(dstaged, nrows, L, tin, tpix, stid, Xs[0]);
            stage_rows_in<T>(static_cast<const T*>(p.u) + xbase, nrows, L, tin, tpix, stid, Xs[1]);
            stage_rows_in<T>(static_cast<const T*>(p.dy) + xbase, nrows, L, tin, tpix, stid, Xs[2]);
        }
        __syncthreads();
        if (col_staged) {
            load_smem_row(Xs[0][warp], lane, dt);
            load_smem_row(Xs[1][warp], lane, uv);
            load_smem_row(Xs[2][warp], lane, dyv);
        }

        float S = 0.f;
        float du[kK];
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

        auto state = [&](const int n) {
            const float An = As[warp][n];
            const float A2 = An * kLog2e;
            float a[kK], w[kK];
            {
                float cv[kK];
                load_smem_row(Cs[n], lane, cv);
#pragma unroll
                for (int i = 0; i < kK; ++i) {
                    a[i] = exp2f(dt[i] * A2);
                    w[i] = cv[i] * dyv[i];
                }
            }
            const float P0 = exp2f(A2 * S);
            const float h0 = kSummary ? 0.f : __shfl_sync(kFull, st, n);  // lane 0 uses it
            const float rc = lane == 31 ? rcarry[warp][n] : 0.f;          // lane 31 uses it

            // Reverse map of this lane: r -> a_t (w_t + r) over its positions; rc folded into lane 31.
            float Pr[1] = {P0}, Qr[1];
            {
                float Q = 0.f;
#pragma unroll
                for (int i = kK - 1; i >= 0; --i) Q = a[i] * (w[i] + Q);
                Qr[0] = lane == 31 ? fmaf(P0, rc, Q) : Q;
            }
            // Forward recomputation of the states inside this chunk, from the saved chunk start
            // (folded into lane 0).
            float bv[kK];
            float Pf[1] = {P0}, Xf[1] = {0.f};
            if constexpr (!kSummary) {
                load_smem_row(Bs[n], lane, bv);
                float X = 0.f;
#pragma unroll
                for (int i = 0; i < kK; ++i) X = fmaf(a[i], X, du[i] * bv[i]);
                Xf[0] = lane == 0 ? fmaf(P0, h0, X) : X;
                warp_scan_multi<1, 1>(Pf, Xf, Pr, Qr, lane);
            } else {
                warp_scan_multi<0, 1>(Pf, Xf, Pr, Qr, lane);
            }
            // Lane l gets Q of lane l+1 (r entering its last position from the right); lane 31
            // gets Q of lane 0, the reverse carry handed to the previous chunk.
            const float Qn = __shfl_sync(kFull, Qr[0], (lane + 1) & 31);
            if (lane == 31) rcarry[warp][n] = Qn;

            if constexpr (!kSummary) {
                const float Xe = __shfl_sync(kFull, Xf[0], (lane + 31) & 31);
                const float hin = lane == 0 ? h0 : Xe;
                float h[kK];
                {
                    float hh = hin;
#pragma unroll
                    for (int i = 0; i < kK; ++i) {
                        hh = fmaf(a[i], hh, du[i] * bv[i]);
                        h[i] = hh;
                    }
                }
                float r = lane == 31 ? rc : Qn;
                float dAl = 0.f;
                float rB[kK], rC[kK];
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
                // This warp's dB/dC contributions (staged layout: 16-byte stores without bank conflicts).
                store_smem_row(red + ((buf * 2 + 0) * kWarps + warp) * kChunk, lane, rB);
                store_smem_row(red + ((buf * 2 + 1) * kWarps + warp) * kChunk, lane, rC);
                __syncthreads();
                // Sum dB/dC over the block's channels, then atomics into global memory.
                // (Double-buffered by n parity: one barrier per n suffices.)
                if (vec_red) {
                    // Threads 0..127 sum dB, 128..255 dC, each 2 consecutive positions (8-byte reads
                    // of the staged layout: conflict-free), added with one 8-byte reduction.
                    const int m = tid >> 7, k = tid & 127;
                    const float2* r = reinterpret_cast<const float2*>(red + (buf * 2 + m) * kWarps * kChunk);
                    const int fi = 2 * staged_half(k >> 2, (k >> 1) & 1) + (k & 1);  // positions 2k, 2k+1
                    float2 acc = r[fi];
#pragma unroll
                    for (int w8 = 1; w8 < kWarps; ++w8) {
                        const float2 x = r[w8 * (kChunk / 2) + fi];
                        acc.x += x.x; acc.y += x.y;
                    }
                    const int t = tb + 2 * k;
                    if (t < L) {  // L % kK == 0: both positions exist
                        float* dst = (m ? dCg : dBg) + (int64_t)n * L;
                        if (kOmni && (gm & 2)) atomic_add2(dst + (L - 2 - t), make_float2(acc.y, acc.x));
                        else atomic_add2(dst + t, acc);
                    }
                } else {
                    const float* r0 = red + (buf * 2 + 0) * kWarps * kChunk + stid;
                    const float* r1 = red + (buf * 2 + 1) * kWarps * kChunk + stid;
                    float sB = 0.f, sC = 0.f;
#pragma unroll
                    for (int w8 = 0; w8 < kWarps; ++w8) {
                        sB += r0[w8 * kChunk];
                        sC += r1[w8 * kChunk];
                    }
                    if (tin) {
                        atomicAdd(dBg + (int64_t)n * L + tpix, sB);
                        atomicAdd(dCg + (int64_t)n * L + tpix, sC);
                    }
                }
                buf ^= 1;
            }
        };
        if constexpr (kN > 0) {
            // Not unrolled: unrolling lets the scheduler mix states and raises the registers
            // past the 128 that two resident blocks allow.
#pragma unroll 1
            for (int n = 0; n < kN; ++n) state(n);
        } else {
            for (int n = 0; n < N; ++n) state(n);
        }

        if constexpr (!kSummary) {
            if (valid || col_staged || out_staged) {  // (staged: every thread joins the barrier below)
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
                if (col_staged || out_staged) {
                    store_smem_row(Xs[0][warp], lane, duo);  // this warp's own rows: read only by it so far
                    store_smem_row(Xs[1][warp], lane, ddo);
                    __syncthreads();
                    const int nrows = p.cpg - cl0;
                    with_acc<T>(p.acc16, p.du, ((int64_t)bi * p.cpg + cl0) * L, [&](auto* acc) {
                        stage_columns_out<true>(acc, nrows, g, tb, tid, p.H, p.W, L, Xs[0]);
                    });
                    stage_columns_out<false>(static_cast<T*>(p.ddelta) + ((int64_t)bi * p.dim + g * p.cpg + cl0) * L,
                                             nrows, g, tb, tid, p.H, p.W, L, Xs[1]);
                } else if constexpr (kOmni) {
                    with_acc<T>(p.acc16, tcol ? p.duT : p.du, xrow * L,
                                [&](auto* acc) { add_lane_omni(acc, gm, t0, nv, p.vec, p.H, p.W, L, duo); });
                    store_lane_omni<T>(static_cast<T*>(tcol ? p.ddeltaT : p.ddelta) + dbase, gm, t0, nv, p.vec, p.H, p.W,
                                       L, ddo);
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
        __syncwarp();  // lane 31's last rcarry writes are visible to the other lanes
        if (valid) {
            if (lane == 0) p.seg_S[row * p.nseg + seg] = S_tot;
            if (lane < N) p.seg_H[(row * p.nseg + seg) * N + lane] = rcarry[warp][lane];
        }
    }
}

template <typename T, bool kOmni, bool kSummary, int kN>
__global__ void __launch_bounds__(kThreads, 2)
bwd_kernel(const ScanParams p) {
    if constexpr (kOmni && !kSummary) {
        if (!p.colT && column_staged(blockIdx.y / p.bpg, p.H)) {
            bwd_body<T, kOmni, kSummary, kN, true>(p);
            return;
        }
    }
    bwd_body<T, kOmni, kSummary, kN, false>(p);
}

template <typename T, bool kSummary>
static void launch_bwd_pass(const ScanParams& p, bool omni, cudaStream_t stream) {
    dispatch_omni_n(omni, p.N, [&](auto omni_c, auto n_c) {
        constexpr bool kOmni = decltype(omni_c)::value;
        constexpr int kN = decltype(n_c)::value;
        launch_scan_kernel<BwdSmem<(kN > 0 ? kN : kMaxN), kOmni>::bytes(kSummary)>(
            bwd_kernel<T, kOmni, kSummary, kN>, p, kSummary, stream);
    });
}

template <typename T>
struct BwdPass {
    template <bool kOmni, int kN, bool kSummary>
    struct Of {
        static constexpr int kBytes = BwdSmem<(kN > 0 ? kN : kMaxN), kOmni>::bytes(kSummary);
        static auto kernel() { return bwd_kernel<T, kOmni, kSummary, kN>; }
    };
};

template <typename T>
PassOccupancy bwd_occupancy(bool omni, int N) {
    return pass_occupancy<BwdPass<T>::template Of>(omni, N);
}

template <typename T>
void launch_bwd(const ScanParams& p, bool omni, cudaStream_t stream) {
    if (p.nseg > 1) {
        launch_bwd_pass<T, true>(p, omni, stream);
        launch_combine(p.seg_S, p.seg_H, p.A, p.seg_carry, p.batch * p.dim, p.dim, p.N, p.nseg, true, stream);
    }
    launch_bwd_pass<T, false>(p, omni, stream);
}

}  // namespace vss
