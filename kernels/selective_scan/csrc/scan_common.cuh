// Device helpers shared by the forward and backward kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <set>
#include <type_traits>
#include <utility>

#include "scan.h"

namespace vss {

constexpr unsigned kFull = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// softplus with the usual linear tail (exact to fp32 for z > 20).
__device__ __forceinline__ float softplus_f(float z) { return z <= 20.f ? log1pf(__expf(z)) : z; }

// Scan position t of direction k -> row-major pixel index (planar omni scan, L = H*W).
//   k=0 row-major, k=1 column-major, k=2 row-major reversed, k=3 column-major reversed.
__device__ __forceinline__ int omni_pixel(int k, int t, int H, int W, int L) {
    if (k & 2) t = L - 1 - t;
    if (k & 1) {
        const int w = t / H;
        const int h = t - w * H;
        return h * W + w;
    }
    return t;
}

// The chunk position that thread tid stages (B/C loads; dB/dC reduction and atomics in the
// backward), its pixel, and whether it exists. Plain scans and the row directions use position
// tid: consecutive threads read consecutive memory. In a column direction (odd g) consecutive
// positions are W apart in memory, so when a chunk is whole columns (H divides kChunk) the
// threads take its positions row by row instead, consecutive threads on consecutive pixels of
// one row: a warp then touches 32 / (kChunk / H) rows instead of 32. Other H keep position tid.
struct StageSlot {
    int q;     // position in the chunk, 0 .. kChunk-1
    bool in;   // tb + q < L
    int pix;   // plain: tb + q; omni: the pixel of scan position tb + q in direction g
};

// The direction whose memory order a block of direction g walks: g itself, or with transposed
// columns (ScanParams::colT) the row direction of the same sense, since the column directions
// then read the transposed map (tensors in which their scan order is row-major).
__host__ __device__ inline int memory_direction(int g, bool colT) { return colT && (g & 1) ? (g & 2) : g; }

// Element offsets of a block's delta row (channel cl of direction / group g, batch item bi) and
// of its group's first B/C row: in delta (b, dim, L) and B / C (b, G, N, L), or for a column
// direction under colT (tcol) in the column-only deltaT (b, 2, cpg, L) and BT / CT (b, 2, N, L),
// where direction g sits in slot g >> 1. The same offsets address ddelta / dB / dC (their T twins).
__device__ __forceinline__ int64_t delta_row_offset(const ScanParams& p, bool tcol, int bi, int g, int cl) {
    return (tcol ? ((int64_t)bi * 2 + (g >> 1)) * p.cpg : (int64_t)bi * p.dim + (int64_t)g * p.cpg) * p.L + (int64_t)cl * p.L;
}
__device__ __forceinline__ int64_t bc_offset(const ScanParams& p, bool tcol, int bi, int g, int N) {
    return (tcol ? (int64_t)bi * 2 + (g >> 1) : (int64_t)bi * p.G + g) * N * p.L;
}

template <bool kOmni>
__device__ __forceinline__ StageSlot stage_slot(int g, int tb, int tid, int H, int W, int L) {
    int q = tid;
    if constexpr (kOmni) {
        if (column_staged(g, H)) {
            // The chunk's column-major indices are s0 + s' for s' in [0, kChunk) with s0 a multiple
            // of H (tb is a multiple of kChunk, L = H * W): s' = column * H + row, column fastest.
            const int ncol = kChunk / H;
            const int row = tid / ncol;
            const int sp = (tid - row * ncol) * H + row;
            q = (g & 2) ? (kChunk - 1) - sp : sp;  // reversed direction: scan position = L-1-index
        }
    }
    const int t = tb + q;
    const bool in = t < L;
    return {q, in, in ? (kOmni ? omni_pixel(g, t, H, W, L) : t) : 0};
}

// dst[0..1] += v / dst[0..3] += v (dst 8- / 16-byte aligned): one vector reduction where the GPU
// has them (sm_90+). Written as PTX `red`: atomicAdd(float2* / float4*) returns the old values,
// which compiles to a returning `atom` that ties up registers until the reply.
__device__ __forceinline__ void atomic_add2(float* dst, float2 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(dst), "f"(v.x), "f"(v.y) : "memory");
#else
    atomicAdd(dst, v.x); atomicAdd(dst + 1, v.y);
#endif
}

__device__ __forceinline__ void atomic_add4(float* dst, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
#else
    atomicAdd(dst, v.x); atomicAdd(dst + 1, v.y); atomicAdd(dst + 2, v.z); atomicAdd(dst + 3, v.w);
#endif
}

// The fused op's y / du accumulators are fp32, or (ScanParams::acc16) the op's 16-bit dtype TA.
// red_add1: *dst += v; red_add4: dst[0..3] += v (dst 16-byte aligned for fp32, 8-byte for 16-bit);
// red_add8: dst[0..7] += v (16-byte aligned). 16-bit adds are hardware `red ... .noftz.bf16x2 /
// .f16x2` (vector forms on sm_90+; other GPUs compile pairwise atomics, and the host enables
// acc16 on sm_90+ only: bf16 atomics are a compare-and-swap loop before sm_90).
template <typename TA>
__device__ __forceinline__ void red_add1(TA* dst, float v) {
    if constexpr (sizeof(TA) == 4) atomicAdd(dst, v);
    else atomicAdd(dst, from_f<TA>(v));
}

template <typename TA>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
    union { uint32_t u; TA e[2]; } x;
    x.e[0] = from_f<TA>(a);
    x.e[1] = from_f<TA>(b);
    return x.u;
}

template <typename TA>
__device__ __forceinline__ void red_add_pairs(TA* dst, const uint32_t* w, int npairs) {
    static_assert(sizeof(TA) == 2, "pairs of 16-bit values");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr bool kBf = std::is_same<TA, __nv_bfloat16>::value;
    if (npairs == 4) {
        if constexpr (kBf) asm volatile("red.global.add.noftz.v4.bf16x2 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(w[0]),
                                        "r"(w[1]), "r"(w[2]), "r"(w[3]) : "memory");
        else asm volatile("red.global.add.noftz.v4.f16x2 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(w[0]), "r"(w[1]),
                          "r"(w[2]), "r"(w[3]) : "memory");
    } else {
        if constexpr (kBf) asm volatile("red.global.add.noftz.v2.bf16x2 [%0], {%1, %2};" ::"l"(dst), "r"(w[0]),
                                        "r"(w[1]) : "memory");
        else asm volatile("red.global.add.noftz.v2.f16x2 [%0], {%1, %2};" ::"l"(dst), "r"(w[0]), "r"(w[1]) : "memory");
    }
#else
    using T2 = typename std::conditional<std::is_same<TA, __nv_bfloat16>::value, __nv_bfloat162, __half2>::type;
    for (int i = 0; i < npairs; ++i) {
        union { uint32_t u; T2 v; } x;
        x.u = w[i];
        atomicAdd(reinterpret_cast<T2*>(dst) + i, x.v);
    }
#endif
}

template <typename TA>
__device__ __forceinline__ void red_add4(TA* dst, float a, float b, float c, float d) {
    if constexpr (sizeof(TA) == 4) {
        atomic_add4(dst, make_float4(a, b, c, d));
    } else {
        const uint32_t w[2] = {pack2<TA>(a, b), pack2<TA>(c, d)};
        red_add_pairs(dst, w, 2);
    }
}

template <typename TA>
__device__ __forceinline__ void red_add8(TA* dst, const float (&v)[kK]) {
    if constexpr (sizeof(TA) == 4) {
        atomic_add4(dst, make_float4(v[0], v[1], v[2], v[3]));
        atomic_add4(dst + 4, make_float4(v[4], v[5], v[6], v[7]));
    } else {
        const uint32_t w[4] = {pack2<TA>(v[0], v[1]), pack2<TA>(v[2], v[3]), pack2<TA>(v[4], v[5]),
                               pack2<TA>(v[6], v[7])};
        red_add_pairs(dst, w, 4);
    }
}

// Calls f(acc + off) with the fused op's y / du accumulator as it is typed: T (16-bit) with
// ScanParams::acc16, else float.
template <typename T, typename F>
__device__ __forceinline__ void with_acc(bool acc16, void* acc, int64_t off, F&& f) {
    if constexpr (sizeof(T) == 2) {
        if (acc16) {
            f(static_cast<T*>(acc) + off);
            return;
        }
    }
    f(static_cast<float*>(acc) + off);
}

// Column-staged blocks of the fused op move their kWarps channel rows (row k at base + k*L; rows
// from nrows on are absent) through shared memory, each thread at its stage_slot position
// (pixel pix, staged index sidx, in = it exists). In: rows -> staged[k][sidx] (absent: 0).
template <typename T>
__device__ __forceinline__ void stage_rows_in(const T* __restrict__ base, int nrows, int L, bool in, int pix,
                                              int sidx, float (*staged)[kChunk]) {
    float v[kWarps];
#pragma unroll
    for (int k = 0; k < kWarps; ++k) v[k] = in && k < nrows ? to_f<T>(base[(int64_t)k * L + pix]) : 0.f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) staged[k][sidx] = v[k];
}

// Out: staged[k][sidx] -> rows, added atomically (kAdd: accumulators, fp32 or 16-bit) or stored.
template <bool kAdd, typename T>
__device__ __forceinline__ void stage_rows_out(T* __restrict__ base, int nrows, int L, bool in, int pix, int sidx,
                                               const float (*staged)[kChunk]) {
    if (!in) return;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) {
        if (k < nrows) {
            if constexpr (kAdd) red_add1(base + (int64_t)k * L + pix, staged[k][sidx]);
            else base[(int64_t)k * L + pix] = from_f<T>(staged[k][sidx]);
        }
    }
}

// Load kK consecutive elements of a row starting at p (nvalid of them exist; the rest read as 0).
// vec: p is 16-byte aligned, so full groups can be read with 16-byte loads.
template <typename T>
__device__ __forceinline__ void load_row(const T* __restrict__ p, int nvalid, bool vec, float (&v)[kK]) {
    static_assert(kK == 8, "vector path assumes 8 elements per lane");
    if (vec && nvalid >= kK) {
        if constexpr (sizeof(T) == 4) {
            const float4 a = __ldg(reinterpret_cast<const float4*>(p));
            const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        } else {
            union { uint4 r; T e[8]; } x;
            x.r = __ldg(reinterpret_cast<const uint4*>(p));
#pragma unroll
            for (int i = 0; i < kK; ++i) v[i] = to_f<T>(x.e[i]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < kK; ++i) v[i] = i < nvalid ? to_f<T>(p[i]) : 0.f;
    }
}

template <typename T>
__device__ __forceinline__ void store_row(T* __restrict__ p, int nvalid, bool vec, const float (&v)[kK]) {
    if (vec && nvalid >= kK) {
        if constexpr (sizeof(T) == 4) {
            reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
            reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
        } else {
            union { uint4 r; T e[8]; } x;
#pragma unroll
            for (int i = 0; i < kK; ++i) x.e[i] = from_f<T>(v[i]);
            *reinterpret_cast<uint4*>(p) = x.r;
        }
    } else {
#pragma unroll
        for (int i = 0; i < kK; ++i)
            if (i < nvalid) p[i] = from_f<T>(v[i]);
    }
}

// Omni: this lane's kK scan positions t0 .. t0+kK-1 (nv of them exist) of direction g, in a
// row of length L = H*W laid out as the image. The row directions hold them in kK consecutive
// elements (reversed for g = 2), read with vector loads when vec (L % kK == 0, 16-byte aligned
// rows); the column directions gather them W apart.
template <typename T>
__device__ __forceinline__ void load_lane_omni(const T* __restrict__ row, int g, int t0, int nv, bool vec, int H,
                                               int W, int L, float (&v)[kK]) {
    if (!(g & 1) && vec && nv == kK) {
        if (g & 2) {
            float r[kK];
            load_row<T>(row + (L - kK - t0), kK, true, r);
#pragma unroll
            for (int i = 0; i < kK; ++i) v[i] = r[kK - 1 - i];
        } else {
            load_row<T>(row + t0, kK, true, v);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < kK; ++i) v[i] = i < nv ? to_f<T>(row[omni_pixel(g, t0 + i, H, W, L)]) : 0.f;
}

// Omni: add this lane's kK values into an accumulator row (fp32, or 16-bit with acc16; the four
// directions meet there), the layout of load_lane_omni. Row directions use one or two 16-byte
// reductions (red_add8).
template <typename TA>
__device__ __forceinline__ void add_lane_omni(TA* __restrict__ row, int g, int t0, int nv, bool vec, int H, int W,
                                              int L, const float (&v)[kK]) {
    if (!(g & 1) && vec && nv == kK) {
        if (g & 2) {
            float r[kK];
#pragma unroll
            for (int i = 0; i < kK; ++i) r[i] = v[kK - 1 - i];
            red_add8(row + (L - kK - t0), r);
        } else {
            red_add8(row + t0, v);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < kK; ++i)
        if (i < nv) red_add1(row + omni_pixel(g, t0 + i, H, W, L), v[i]);
}

// Omni: store this lane's kK values into a row of type T (the layout of load_lane_omni).
template <typename T>
__device__ __forceinline__ void store_lane_omni(T* __restrict__ row, int g, int t0, int nv, bool vec, int H, int W,
                                                int L, const float (&v)[kK]) {
    if (!(g & 1) && vec && nv == kK) {
        if (g & 2) {
            float r[kK];
#pragma unroll
            for (int i = 0; i < kK; ++i) r[i] = v[kK - 1 - i];
            store_row<T>(row + (L - kK - t0), kK, true, r);
        } else {
            store_row<T>(row + t0, kK, true, v);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < kK; ++i)
        if (i < nv) row[omni_pixel(g, t0 + i, H, W, L)] = from_f<T>(v[i]);
}

// Staged chunk rows (fp32 in shared memory, kChunk positions) are swizzled so that the lanes'
// 16-byte reads are free of bank conflicts. Lane l reads its kK = 8 positions [8l, 8l+8) as two
// float4; an 8-lane phase of one 16-byte load would hit every bank twice if all lanes read
// their first half (lanes 32 bytes apart), so lanes 4..7 of each phase (bit 2 of l, i.e. bit 5
// of the position) keep their halves swapped: position p lives at index p ^ ((p >> 3) & 4).
// The swizzle only permutes within a lane's own 8 values, so a warp's 32 scalar stores of
// consecutive positions stay conflict-free too.
__device__ __forceinline__ int staged_index(int p) { return p ^ ((p >> 3) & 4); }

// Index (in float4 units) of half q (positions 4q..4q+3) of lane l's kK values in a staged row.
__device__ __forceinline__ int staged_half(int lane, int q) { return 2 * lane + (q ^ ((lane >> 2) & 1)); }

// Read lane l's kK values (positions [8l, 8l+8)) of a staged chunk row.
__device__ __forceinline__ void load_smem_row(const float* __restrict__ row, int lane, float (&v)[kK]) {
    const float4 a = reinterpret_cast<const float4*>(row)[staged_half(lane, 0)];
    const float4 b = reinterpret_cast<const float4*>(row)[staged_half(lane, 1)];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

// Write lane l's kK values into a staged chunk row (the layout load_smem_row reads).
__device__ __forceinline__ void store_smem_row(float* __restrict__ row, int lane, const float (&v)[kK]) {
    reinterpret_cast<float4*>(row)[staged_half(lane, 0)] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(row)[staged_half(lane, 1)] = make_float4(v[4], v[5], v[6], v[7]);
}

// Four values into p[0..3] (p 16-byte aligned for float, 8-byte for 16-bit types).
template <typename T>
__device__ __forceinline__ void store4(T* __restrict__ p, float a, float b, float c, float d) {
    if constexpr (sizeof(T) == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
    } else {
        union { uint2 r; T e[4]; } x;
        x.e[0] = from_f<T>(a); x.e[1] = from_f<T>(b); x.e[2] = from_f<T>(c); x.e[3] = from_f<T>(d);
        *reinterpret_cast<uint2*>(p) = x.r;
    }
}

// A column direction's chunk (kChunk scan positions from tb of direction g, odd, H dividing kChunk:
// whole columns) goes out of shared memory into the image layout: staged[k][staged_index(q)] holds
// channel row k's value at scan position tb + q; row k is at base + k * L, rows from nrows on are
// absent. Added atomically (kAdd: accumulators, fp32 or 16-bit) or stored.
// The chunk is kChunk / H whole columns. Where those come in groups of 4 (H <= 64) and W % 4 == 0,
// each access moves 4 consecutive pixels of one image row (16-byte reductions / 4-element stores);
// otherwise each thread moves one pixel of every row (stage_slot's row-by-row order).
template <bool kAdd, typename T>
__device__ __forceinline__ void stage_columns_out(T* __restrict__ base, int nrows, int g, int tb, int tid, int H, int W,
                                                  int L, const float (*staged)[kChunk]) {
    if (column_quads(H, W)) {
        // m: the chunk's positions in column-major image order (m = q, or reversed for g & 2), so
        // that pixel column wbase + m / H, row m % H. wbase and W are multiples of 4, so each group
        // of 4 columns lies wholly inside or wholly outside the image (the last chunk may be short).
        const int wbase = (g & 2) ? (L - kChunk - tb) / H : tb / H;
        constexpr int kUnits = kWarps * kChunk / 4;  // (row k, image row h, group of 4 columns)
        for (int u = tid; u < kUnits; u += kThreads) {
            const int k = u / (kChunk / 4), rest = u - k * (kChunk / 4);
            const int h = rest % H, w0 = wbase + 4 * (rest / H);  // consecutive threads: consecutive h
            if (k >= nrows || w0 < 0 || w0 >= W) continue;
            float v[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int m = (w0 - wbase + j) * H + h;
                v[j] = staged[k][staged_index((g & 2) ? kChunk - 1 - m : m)];
            }
            T* dst = base + (int64_t)k * L + (int64_t)h * W + w0;
            if constexpr (kAdd) red_add4(dst, v[0], v[1], v[2], v[3]);
            else store4<T>(dst, v[0], v[1], v[2], v[3]);
        }
        return;
    }
    const StageSlot os = stage_slot<true>(g, tb, tid, H, W, L);
    stage_rows_out<kAdd>(base, nrows, L, os.in, os.pix, staged_index(os.q), staged);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
    return v;
}

// Warp-wide inclusive (Kogge-Stone) scans of affine maps, several at once for instruction-level
// parallelism: NF forward scans of h -> Pf[j]*h + Xf[j] over lanes in increasing order (lane l
// ends with the composition of lanes 0..l) and NR reverse scans of r -> Pr[j]*r + Qr[j] over lanes
// in decreasing order (lane l ends with lanes 31..l, applied right to left). The shuffles of one
// step of all of them are issued together, so their latencies overlap instead of adding up. Only the X / Q results are meaningful afterwards: the callers
// fold the incoming carry into the first lane before scanning, so they never need the scanned
// products, and the last step skips updating them (one shuffle fewer per scan).
template <int NF, int NR>
__device__ __forceinline__ void warp_scan_multi(float (&Pf)[NF > 0 ? NF : 1], float (&Xf)[NF > 0 ? NF : 1],
                                                float (&Pr)[NR > 0 ? NR : 1], float (&Qr)[NR > 0 ? NR : 1],
                                                int lane) {
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const bool last = off == 16;
        float Pu[NF > 0 ? NF : 1], Xu[NF > 0 ? NF : 1], Pd[NR > 0 ? NR : 1], Qd[NR > 0 ? NR : 1];
#pragma unroll
        for (int j = 0; j < NF; ++j) {
            Xu[j] = __shfl_up_sync(kFull, Xf[j], off);
            if (!last) Pu[j] = __shfl_up_sync(kFull, Pf[j], off);
        }
#pragma unroll
        for (int j = 0; j < NR; ++j) {
            Qd[j] = __shfl_down_sync(kFull, Qr[j], off);
            if (!last) Pd[j] = __shfl_down_sync(kFull, Pr[j], off);
        }
        if (lane >= off) {
#pragma unroll
            for (int j = 0; j < NF; ++j) {
                Xf[j] = fmaf(Pf[j], Xu[j], Xf[j]);
                if (!last) Pf[j] *= Pu[j];
            }
        }
        if (lane + off < 32) {
#pragma unroll
            for (int j = 0; j < NR; ++j) {
                Qr[j] = fmaf(Pr[j], Qd[j], Qr[j]);
                if (!last) Pr[j] *= Pd[j];
            }
        }
    }
}

// Hint: bring the 128-byte line holding p into L2 (no register, no wait). Used to fetch the
// next chunk's rows while the current one is computed; a hint only, never needed for correctness.
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(p)));
}

// Plain mode: prefetch into L2 the chunk of positions [tb, tb + kChunk) of the rows that this
// block stages: nrows rows of length L at base0 + r*L and, unless base1 is null, nrows more at
// base1 + r*L (B and C of its group). Each thread takes one 128-byte line: thread i -> row
// i / LPR, line i % LPR (2 * kMaxN rows fit the block). Positions past L are skipped.
template <typename T>
__device__ __forceinline__ void prefetch_rows_l2(const T* base0, const T* base1, int nrows, int L, int tb,
                                                 int tid) {
    constexpr int kPerLine = 128 / (int)sizeof(T);
    constexpr int kLPR = kChunk / kPerLine;  // lines per chunk row (8 fp32, 4 bf16/fp16)
    static_assert(2 * kMaxN * kLPR <= kThreads, "one line per thread");
    const int r = tid / kLPR;
    const int t = tb + (tid % kLPR) * kPerLine;
    if (r < (base1 ? 2 * nrows : nrows) && t < L) {
        const T* base = r < nrows ? base0 : base1;
        prefetch_l2(base + (int64_t)(r < nrows ? r : r - nrows) * L + t);
    }
}

// Plain mode: prefetch into L2 this warp's part [t0, t0 + kChunk) of nrows rows (row k at rows[k]),
// one line per lane: lane -> row lane / LPR, line lane % LPR.
template <typename T, int NR>
__device__ __forceinline__ void prefetch_warp_rows_l2(const T* const (&rows)[NR], int L, int tb, int lane) {
    constexpr int kPerLine = 128 / (int)sizeof(T);
    constexpr int kLPR = kChunk / kPerLine;
    static_assert(NR * kLPR <= 32, "one line per lane");
    const int r = lane / kLPR;
    const int t = tb + (lane % kLPR) * kPerLine;
    if (r < NR && t < L) {
#pragma unroll
        for (int k = 0; k < NR; ++k)
            if (k == r) prefetch_l2(rows[k] + t);
    }
}

// ---------------------------------------------------------------- host-side launch helpers

// Above 48 KB of dynamic shared memory a kernel must opt in, once per device (the call costs
// several microseconds, so it is not repeated at every launch).
inline void allow_dynamic_smem(const void* kernel, int bytes) {
    static std::mutex mu;
    static std::set<std::pair<const void*, int>> done;  // (kernel, device)
    int dev = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lock(mu);
    if (done.insert({kernel, dev}).second) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
        if (err != cudaSuccess) done.erase({kernel, dev});
        C10_CUDA_CHECK(err);
    }
}

// Resident blocks per SM of kernel with kBytes of dynamic shared memory on the current device
// (cached per kernel and device: the occupancy query is not free, and the answer never changes).
template <int kBytes>
int blocks_per_sm(void (*kernel)(const ScanParams)) {
    static std::mutex mu;
    static std::map<std::pair<const void*, int>, int> cache;  // (kernel, device) -> blocks
    const void* key = reinterpret_cast<const void*>(kernel);
    int dev = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    {
        std::lock_guard<std::mutex> lock(mu);
        auto it = cache.find({key, dev});
        if (it != cache.end()) return it->second;
    }
    if constexpr (kBytes > 48 * 1024) {
        allow_dynamic_smem(key, kBytes);  // the occupancy API counts only opted-in shared memory
    }
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, kBytes));
    blocks = blocks > 0 ? blocks : 1;
    std::lock_guard<std::mutex> lock(mu);
    cache[{key, dev}] = blocks;
    return blocks;
}

// Runs kernel<<<(segments, G * bpg, batch), kThreads, kBytes>>>(p): p.nseg segments for a main
// pass, nseg - 1 for a summary pass, which skips the segment whose summary no carry needs (the
// last one forward, the first one backward).
template <int kBytes>
void launch_scan_kernel(void (*kernel)(const ScanParams), const ScanParams& p, bool summary, cudaStream_t stream) {
    const dim3 grid(summary ? p.nseg - 1 : p.nseg, p.G * p.bpg, p.batch);
    if constexpr (kBytes > 48 * 1024) {
        allow_dynamic_smem(reinterpret_cast<const void*>(kernel), kBytes);
    }
    kernel<<<grid, dim3(kThreads), kBytes, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls launch(omni, n) with compile-time constants: omni as std::bool_constant, n as
// std::integral_constant<int, 16> (VmambaIR always uses N = 16: a specialised kernel) or <int, 0>
// (any other N: the generic kernel).
template <typename Launch>
void dispatch_omni_n(bool omni, int N, Launch&& launch) {
    using Omni = std::true_type;
    using Plain = std::false_type;
    using N16 = std::integral_constant<int, 16>;
    using AnyN = std::integral_constant<int, 0>;
    if (N == 16) {
        if (omni) launch(Omni{}, N16{});
        else launch(Plain{}, N16{});
    } else {
        if (omni) launch(Omni{}, AnyN{});
        else launch(Plain{}, AnyN{});
    }
}

// PassOccupancy of a pass (forward or backward) for one dtype: Pass<kOmni, kN, kSummary> names its
// kernel (::kernel()) and dynamic shared memory (::kBytes).
template <template <bool, int, bool> class Pass>
PassOccupancy pass_occupancy(bool omni, int N) {
    PassOccupancy o;
    dispatch_omni_n(omni, N, [&](auto omni_c, auto n_c) {
        constexpr bool kOmni = decltype(omni_c)::value;
        constexpr int kN = decltype(n_c)::value;
        using Main = Pass<kOmni, kN, false>;
        using Summary = Pass<kOmni, kN, true>;
        o.main = blocks_per_sm<Main::kBytes>(Main::kernel());
        o.summary = blocks_per_sm<Summary::kBytes>(Summary::kernel());
    });
    return o;
}

}  // namespace vss
