// Device helpers shared by the forward and backward kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

// Read this lane's kK values of a staged chunk row (fp32 in shared memory).
__device__ __forceinline__ void load_smem_row(const float* __restrict__ s, float (&v)[kK]) {
    const float4 a = reinterpret_cast<const float4*>(s)[0];
    const float4 b = reinterpret_cast<const float4*>(s)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
    return v;
}

// Inclusive scan of affine maps h -> P*h + X over lanes in increasing order
// (lane l ends with the composition of lanes 0..l).
__device__ __forceinline__ void warp_scan_fwd(float& P, float& X, int lane) {
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const float Pu = __shfl_up_sync(kFull, P, off);
        const float Xu = __shfl_up_sync(kFull, X, off);
        if (lane >= off) {
            X = fmaf(P, Xu, X);
            P *= Pu;
        }
    }
}

// Inclusive scan of affine maps r -> P*r + Q over lanes in decreasing order
// (lane l ends with the composition of lanes 31..l, applied right to left).
__device__ __forceinline__ void warp_scan_rev(float& P, float& Q, int lane) {
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const float Pd = __shfl_down_sync(kFull, P, off);
        const float Qd = __shfl_down_sync(kFull, Q, off);
        if (lane + off < 32) {
            Q = fmaf(P, Qd, Q);
            P *= Pd;
        }
    }
}

}  // namespace vss
