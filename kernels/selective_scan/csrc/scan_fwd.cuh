// Forward kernels. Included once per dtype by fwd_{fp32,bf16,fp16}.cu.
#pragma once

#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "scan_common.cuh"

namespace vss {

// States processed together in the kN-specialised kernels: their scans' shuffle chains are
// independent and are interleaved (ILP). 2 keeps the kernel within the 80 registers that let
// 3 blocks (24 warps) share an SM.
constexpr int kFwdNP = 2;

// Shared memory of the forward, in floats (dynamic: the double-buffered staging exceeds 48 KB).
//   Bs[2][NS][kChunk], Cs[2][NS][kChunk] (not in the summary kernel), carry[kWarps][NS], A2s[kWarps][NS],
//   and in the fused op's main pass Ys[kWarps][kChunk] (column directions' y, staged or mixed columns)
template <int NS, bool kSummary, bool kOmni>
struct FwdSmem {
    static constexpr int kBs = 0;
    static constexpr int kCs = kBs + 2 * NS * kChunk;
    static constexpr int kCarry = kCs + (kSummary ? 0 : 2 * NS * kChunk);
    static constexpr int kA2 = kCarry + kWarps * NS;
    static constexpr int kYs = kA2 + kWarps * NS;
    static constexpr int kEnd = kYs + (kOmni && !kSummary ? kWarps * kChunk : 0);
    static constexpr int kBytes = kEnd * (int)sizeof(float);
    static_assert(kYs % 4 == 0, "16-byte alignment of staged rows");
};

// One block = kWarps channels of one group, one segment of the sequence, one batch item.
// kSummary: compute only the segment's outgoing state from a zero incoming state, plus the
// sum of dt over the segment (its decay is exp(A * sum)); write nothing else. (Launched for
// segments 0 .. nseg-2 only: no carry depends on the last segment's summary.)
// kN > 0: the state size is kN (= p.N) at compile time, so every n-loop is unrolled and the
// states are processed kFwdNP at a time; kN == 0: any p.N <= kMaxN, one state at a time.
//
// Per chunk: (1) every thread issues all its global loads (its position of the group's B/C
// rows for every n, its lane's delta/u) and an L2 prefetch of the next chunk; (2) the B/C
// values go to this chunk's half of the double-buffered staging area and ONE barrier publishes
// them (the other half may still be read by slower warps finishing the previous chunk; the
// barrier of the previous chunk guarantees nobody still reads the half being written, since
// every warp passed it only after finishing the chunk before); (3) per state, the lane scans its
// kK positions, the warp scans the lanes' maps with the chunk's incoming state folded into
// lane 0, and lane 0 keeps the outgoing state (read back from lane 31) in carry[warp][n]. The
// summary pass replaces (3) by a sum (see there) and never touches carry.
// kCol: a column direction of the fused op whose chunks are staged row by row (see col_staged
// below). fwd_kernel picks the body per block; the two bodies are separate code, so neither
// carries the other's registers through its loop.
template <typename T, bool kOmni, bool kSummary, int kN, bool kCol>
__device__ __forceinline__ void fwd_body(const ScanParams& p) {
    constexpr int NS = kN > 0 ? kN : kMaxN;  // staged rows (upper bound of N)
    using Sm = FwdSmem<NS, kSummary, kOmni>;
    extern __shared__ float4 fwd_smem4[];
    float* smem = reinterpret_cast<float*>(fwd_smem4);
    float (*carry)[NS] = reinterpret_cast<float (*)[NS]>(smem + Sm::kCarry);  // touched by lane 0 only
    float (*A2s)[NS] = reinterpret_cast<float (*)[NS]>(smem + Sm::kA2);      // A * log2(e)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int seg = blockIdx.x, bi = blockIdx.z;
    const int g = blockIdx.y / p.bpg;
    const int cl = (blockIdx.y - g * p.bpg) * kWarps + warp;  // channel inside the group
    const bool valid = cl < p.cpg;                           // idle warps still join the barriers
    const int c = g * p.cpg + (valid ? cl : 0);
    const int N = kN > 0 ? kN : p.N, L = p.L;
    const int64_t row = (int64_t)bi * p.dim + c;                               // delta / states row
    const int64_t xrow = kOmni ? (int64_t)bi * p.cpg + (valid ? cl : 0) : row; // u / y row
    // Transposed columns (ScanParams::colT): this column-direction block reads the transposed
    // map, walking memory like the row direction gm; delta/B/C already hold that order.
    const bool tcol = kOmni && p.colT && (g & 1);
    const int gm = kOmni ? memory_direction(g, p.colT) : g;
    const T* __restrict__ urow = static_cast<const T*>(tcol ? p.uT : p.u) + xrow * L;
    const int64_t dbase = kOmni ? delta_row_offset(p, tcol, bi, g, valid ? cl : 0) : row * L;
    const int64_t gbase = kOmni ? bc_offset(p, tcol, bi, g, N) : ((int64_t)bi * p.G + g) * N * L;
    const T* __restrict__ drow = static_cast<const T*>(tcol ? p.deltaT : p.delta) + dbase;
    const T* __restrict__ Bg = static_cast<const T*>(tcol ? p.BT : p.B) + gbase;
    const T* __restrict__ Cg = static_cast<const T*>(tcol ? p.CT : p.C) + gbase;
    const float bias = p.bias ? p.bias[c] : 0.f;
    const float Dc = p.D ? p.D[c] : 0.f;
    // Fused op, column direction, main pass: delta/u come in and y goes out through shared
    // memory, moved by all threads in stage_slot's row-by-row order (a lane's own positions are W
    // apart in memory). Such blocks keep B/C in half 0 of the staging area and use half 1 for
    // delta and u (Xs, in B's half 1); y goes out through Ys, with a second barrier per chunk
    // before the staged y is read.
    constexpr bool col_staged = kCol;
    // Mixed columns (ScanParams::col_out_staged): this column-direction block reads the transposed
    // copies like any tcol block but adds its y straight into the image layout through Ys
    // (stage_columns_out; one more barrier per chunk), so no yT accumulator needs merging afterwards.
    const bool out_staged = kOmni && !kSummary && tcol && p.col_out_staged;
    const int cl0 = (blockIdx.y - g * p.bpg) * kWarps;  // the block's first channel in its group
    auto Xs = [&](int a) { return reinterpret_cast<float (*)[kChunk]>(smem + Sm::kBs + NS * kChunk + a * kWarps * kChunk); };
    const int ch0 = seg * p.cps;
    const int ch1 = min(p.nchunks, ch0 + p.cps);

    if (lane < N) {
        A2s[warp][lane] = p.A[(int64_t)c * N + lane] * kLog2e;
        // The main pass's incoming state (read by lane 0 only after the first chunk's barrier).
        if constexpr (!kSummary) carry[warp][lane] = p.nseg > 1 ? p.seg_carry[(row * p.nseg + seg) * N + lane] : 0.f;
    }
    // Summary pass: the segment's chunks are taken from its end backwards. D is the dt summed over
    // the chunks already taken (those after the current one), the same in every lane.
    float D = 0.f;
    // The summary pass stops early once A * D is below p.summary_cutoff (log2 units) for every
    // state of every channel of the block: each term left (exp2(A * dt after it) * dt B u, dt
    // after it >= D) is then exactly 0 in fp32, so the summary is unchanged, and so is the
    // combine's exp(A * S) with the partial S = D (0 either way). A2max: this channel's largest
    // (least negative) A * log2(e); idle warps count as done from the start.
    float A2max = 0.f;
    if constexpr (kSummary) {
        float a2 = lane < N ? p.A[(int64_t)c * N + lane] * kLog2e : -INFINITY;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) a2 = fmaxf(a2, __shfl_xor_sync(kFull, a2, o));
        A2max = a2;
    }
    // Summary pass: this lane's share of the segment's outgoing state, per state (see below).
    float acc[NS];
#pragma unroll
    for (int n = 0; n < NS; ++n) acc[n] = 0.f;

    bool summary_done = !valid;
    for (int it = 0; it < ch1 - ch0; ++it) {
        const int ch = kSummary ? ch1 - 1 - it : ch0 + it;
        const int tb = ch * kChunk;
        const int buf = col_staged ? 0 : it & 1;
        float (*Bs)[kChunk] = reinterpret_cast<float (*)[kChunk]>(smem + Sm::kBs + buf * NS * kChunk);
        float (*Cs)[kChunk] = reinterpret_cast<float (*)[kChunk]>(smem + Sm::kCs + buf * NS * kChunk);
        const int t0 = tb + lane * kK;
        // positions of this lane that exist (may be <= 0); a done summary warp reads none
        const int nv = valid && !(kSummary && summary_done) ? min(kK, L - t0) : 0;

        // (1)+(2) Global loads of the chunk, issued back to back so that they are in flight
        // together, and the staged B/C stores. The rows go in two halves (kHalf states of B and
        // C each) to bound the registers that hold loaded values; this lane's delta/u loads are
        // issued between the first half's loads and its stores. No barrier is needed before the
        // stores (double buffering, see above) and ONE barrier publishes them.
        const StageSlot slot = stage_slot<kOmni>(gm, tb, tid, p.H, p.W, L);
        const bool tin = slot.in;
        const int tpix = slot.pix;
        constexpr int kHalf = NS > 8 ? 8 : NS;
        const int stid = staged_index(slot.q);
        float vb[kHalf], vc[kHalf];
        auto load_bc = [&](const int nb) {
#pragma unroll
            for (int j = 0; j < kHalf; ++j) {
                if (nb + j < N) {
                    vb[j] = tin ? to_f<T>(Bg[(int64_t)(nb + j) * L + tpix]) : 0.f;
                    if constexpr (!kSummary) vc[j] = tin ? to_f<T>(Cg[(int64_t)(nb + j) * L + tpix]) : 0.f;
                }
            }
        };
        auto store_bc = [&](const int nb) {
#pragma unroll
            for (int j = 0; j < kHalf; ++j) {
                if (nb + j < N) {
                    Bs[nb + j][stid] = vb[j];
                    if constexpr (!kSummary) Cs[nb + j][stid] = vc[j];
                }
            }
        };
        load_bc(0);
        float dt[kK], uv[kK];
        if (col_staged) {
            // (read from Xs after the barrier below)
        } else if constexpr (kOmni) {
            load_lane_omni<T>(drow, gm, t0, nv, p.vec, p.H, p.W, L, dt);
            load_lane_omni<T>(urow, gm, t0, nv, p.vec, p.H, p.W, L, uv);
        } else {
            load_row<T>(drow + t0, nv, p.vec, dt);
            load_row<T>(urow + t0, nv, p.vec, uv);
        }
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
            stage_rows_in<T>(static_cast<const T*>(p.delta) + ((int64_t)bi * p.dim + g * p.cpg + cl0) * L, nrows, L,
                             tin, tpix, stid, Xs(0));
            stage_rows_in<T>(static_cast<const T*>(p.u) + ((int64_t)bi * p.cpg + cl0) * L, nrows, L, tin, tpix,
                             stid, Xs(1));
        }
        if constexpr (!kOmni) {
            if (it + 1 < ch1 - ch0) {
                // The next chunk's rows into L2 while this one is computed (B/C are shared by the
                // group's blocks and often hit L2 already; delta/u are read exactly once).
                const int tn = kSummary ? tb - kChunk : tb + kChunk;
                prefetch_rows_l2<T>(Bg, kSummary ? nullptr : Cg, N, L, tn, tid);
                if (valid) {
                    const T* const rows[2] = {drow, urow};
                    prefetch_warp_rows_l2<T, 2>(rows, L, tn, lane);
                }
            }
        }
        if constexpr (kSummary) {
            // The barrier that publishes the staged rows also takes the vote of the chunk before.
            if (__syncthreads_and(summary_done)) break;
        } else {
            __syncthreads();
        }
        if (col_staged) {
            load_smem_row(Xs(0)[warp], lane, dt);
            load_smem_row(Xs(1)[warp], lane, uv);
        }

        float du[kK], yv[kK];
#pragma unroll
        for (int i = 0; i < kK; ++i) {
            const float z = dt[i] + bias;
            // Positions past the end get dt = 0: decay 1, input 0, so they pass the state through.
            dt[i] = i < nv ? (p.softplus ? softplus_f(z) : z) : 0.f;
            du[i] = dt[i] * uv[i];
            yv[i] = Dc * uv[i];
        }
        float S = 0.f;
#pragma unroll
        for (int i = 0; i < kK; ++i) S += dt[i];

        // (3) Main pass: states n0 .. n0 + NP - 1 (the summary pass sums instead, below).
        auto states = [&](auto np_tag, const int n0) {
            constexpr int NP = decltype(np_tag)::value;
            float a[NP][kK], P[NP], X[NP], hc[NP];
#pragma unroll
            for (int j = 0; j < NP; ++j) {
                const float A2 = A2s[warp][n0 + j];
                hc[j] = lane == 0 ? carry[warp][n0 + j] : 0.f;  // state entering the chunk (lane 0 only)
                float bv[kK];
                load_smem_row(Bs[n0 + j], lane, bv);
                float x = 0.f;
#pragma unroll
                for (int i = 0; i < kK; ++i) {
                    a[j][i] = exp2f(dt[i] * A2);
                    x = fmaf(a[j][i], x, du[i] * bv[i]);
                }
                // The product of this lane's decays is exp(A * sum dt): one exp instead of kK multiplies.
                P[j] = exp2f(A2 * S);
                // Fold the incoming state into lane 0, so the scan yields exact states directly.
                X[j] = lane == 0 ? fmaf(P[j], hc[j], x) : x;
            }
            {
                float Pr_unused[1], Qr_unused[1];
                warp_scan_multi<NP, 0>(P, X, Pr_unused, Qr_unused, lane);
            }
#pragma unroll
            for (int j = 0; j < NP; ++j) {
                // Lane l gets X of lane l-1 (the state entering its positions); lane 0 gets X of
                // lane 31, the state leaving the chunk, which it keeps for the next chunk.
                const float Xe = __shfl_sync(kFull, X[j], (lane + 31) & 31);
                if (lane == 0) carry[warp][n0 + j] = Xe;
                if (lane == 0 && valid) p.states[(row * p.nchunks + ch) * N + n0 + j] = hc[j];
                // B and C re-read from shared memory 4 positions at a time (registers).
                const float4* b4 = reinterpret_cast<const float4*>(Bs[n0 + j]);
                const float4* c4 = reinterpret_cast<const float4*>(Cs[n0 + j]);
                float h = lane == 0 ? hc[j] : Xe;
#pragma unroll
                for (int q = 0; q < kK / 4; ++q) {
                    const float4 bq = b4[staged_half(lane, q)], cq = c4[staged_half(lane, q)];
                    const float bv[4] = {bq.x, bq.y, bq.z, bq.w}, cv[4] = {cq.x, cq.y, cq.z, cq.w};
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const int i = 4 * q + k;
                        h = fmaf(a[j][i], h, du[i] * bv[k]);
                        yv[i] = fmaf(cv[k], h, yv[i]);
                    }
                }
            }
        };
        if constexpr (kSummary) {
            // A warp whose terms are all 0 from here on (summary_done) skips the rest; the block
            // goes on while any of its warps is not done (the vote at the barrier above).
            if (summary_done) continue;
            // The summary needs only the state leaving the segment from a zero start, which is a
            // sum, not a scan: h_end = sum_t exp(A * (dt summed after t)) * dt_t * B_t * u_t. Each
            // lane adds its positions' terms into acc[n], the dt after a position being the rest of
            // its chunk plus D (the later chunks, taken first); the lanes are summed once at the
            // end. Same exps as the scan, but no shuffle chain per state and chunk.
            float after = S;  // (inclusive suffix sum over lanes, then shifted: lanes > lane only)
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const float v = __shfl_down_sync(kFull, after, o);
                if (lane + o < 32) after += v;
            }
            const float chunk_dt = __shfl_sync(kFull, after, 0);
            after = __shfl_down_sync(kFull, after, 1);
            if (lane == 31) after = 0.f;
            after += D;
            float off[kK];  // dt summed after each of this lane's positions, to the segment's end
#pragma unroll
            for (int i = kK - 1; i >= 0; --i) {
                off[i] = after;
                after += dt[i];
            }
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                if (n < N) {
                    const float A2 = A2s[warp][n];
                    float bv[kK];
                    load_smem_row(Bs[n], lane, bv);
                    float w = 0.f;
#pragma unroll
                    for (int i = 0; i < kK; ++i) w = fmaf(exp2f(A2 * off[i]), du[i] * bv[i], w);
                    acc[n] += w;
                }
            }
            D += chunk_dt;
            summary_done = summary_done || A2max * D < p.summary_cutoff;
        } else if constexpr (kN > 0) {
            static_assert(kN % kFwdNP == 0, "kN must be a multiple of kFwdNP");
            // Not unrolled further: a fully unrolled n-loop lets the scheduler hoist work of later
            // states and balloons the registers (255 and spills); one pair at a time fits in 80.
#pragma unroll 1
            for (int n0 = 0; n0 < kN; n0 += kFwdNP) states(std::integral_constant<int, kFwdNP>{}, n0);
        } else {
            for (int n0 = 0; n0 < N; ++n0) states(std::integral_constant<int, 1>{}, n0);
        }

        if constexpr (!kSummary) {
            if (col_staged || out_staged) {
                // Every warp has read its inputs and has finished with B/C; each writes its own Ys
                // row, one barrier, then all threads add y into the image layout (the next chunk's
                // barrier orders these reads before Ys is written again).
                float (*Ys)[kChunk] = reinterpret_cast<float (*)[kChunk]>(smem + Sm::kYs);
                store_smem_row(Ys[warp], lane, yv);
                __syncthreads();
                with_acc<T>(p.acc16, p.y, ((int64_t)bi * p.cpg + cl0) * L, [&](auto* acc) {
                    stage_columns_out<true>(acc, p.cpg - cl0, g, tb, tid, p.H, p.W, L, Ys);
                });
            } else if (valid) {
                if constexpr (kOmni) {
                    // Four directions add into the same pixel: atomics into a zeroed buffer.
                    with_acc<T>(p.acc16, tcol ? p.yT : p.y, xrow * L,
                                [&](auto* acc) { add_lane_omni(acc, gm, t0, nv, p.vec, p.H, p.W, L, yv); });
                } else {
                    store_row<T>(static_cast<T*>(p.y) + row * L + t0, nv, p.vec, yv);
                }
            }
        }
    }

    if constexpr (kSummary) {
        float h_mine = 0.f;  // lane n: the segment's outgoing state n
#pragma unroll
        for (int n = 0; n < NS; ++n) {
            if (n < N) {
                const float h = warp_sum(acc[n]);
                if (lane == n) h_mine = h;
            }
        }
        if (valid) {
            if (lane == 0) p.seg_S[row * p.nseg + seg] = D;
            if (lane < N) p.seg_H[(row * p.nseg + seg) * N + lane] = h_mine;
        }
    }
}

template <typename T, bool kOmni, bool kSummary, int kN>
__global__ void __launch_bounds__(kThreads, kN > 0 ? 3 : 2)
fwd_kernel(const ScanParams p) {
    constexpr int NS = kN > 0 ? kN : kMaxN;
    if constexpr (kOmni && !kSummary && NS >= 2 * kWarps) {
        if (!p.colT && column_staged(blockIdx.y / p.bpg, p.H)) {
            fwd_body<T, kOmni, kSummary, kN, true>(p);
            return;
        }
    }
    fwd_body<T, kOmni, kSummary, kN, false>(p);
}

template <typename T, bool kSummary>
static void launch_fwd_pass(const ScanParams& p, bool omni, cudaStream_t stream) {
    dispatch_omni_n(omni, p.N, [&](auto omni_c, auto n_c) {
        constexpr bool kOmni = decltype(omni_c)::value;
        constexpr int kN = decltype(n_c)::value;
        launch_scan_kernel<FwdSmem<(kN > 0 ? kN : kMaxN), kSummary, kOmni>::kBytes>(
            fwd_kernel<T, kOmni, kSummary, kN>, p, kSummary, stream);
    });
}

template <typename T>
struct FwdPass {
    template <bool kOmni, int kN, bool kSummary>
    struct Of {
        static constexpr int kBytes = FwdSmem<(kN > 0 ? kN : kMaxN), kSummary, kOmni>::kBytes;
        static auto kernel() { return fwd_kernel<T, kOmni, kSummary, kN>; }
    };
};

template <typename T>
PassOccupancy fwd_occupancy(bool omni, int N) {
    return pass_occupancy<FwdPass<T>::template Of>(omni, N);
}

template <typename T>
void launch_fwd(const ScanParams& p, bool omni, cudaStream_t stream) {
    if (p.nseg > 1) {
        launch_fwd_pass<T, true>(p, omni, stream);
        launch_combine(p.seg_S, p.seg_H, p.A, p.seg_carry, p.batch * p.dim, p.dim, p.N, p.nseg, false, stream);
    }
    launch_fwd_pass<T, false>(p, omni, stream);
}

}  // namespace vss
