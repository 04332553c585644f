/*
 * Selective scan for CPU tensors: forward and hand-written backward, in float and double.
 *
 * Plain C99 + OpenMP, no torch headers, so that it compiles in about a second on first use;
 * vmambair/ops/scan_cpu.py compiles it, loads it with ctypes and passes data pointers.
 *
 * Semantics (mamba-ssm's selective_scan_fn without z), per batch b and channel c, diagonal A:
 *     z_t = delta_t + bias                 dt_t = softplus(z_t) or z_t
 *     a_t = exp(dt_t * A_n)                h_t  = a_t * h_{t-1} + dt_t * u_t * B_t     (N states)
 *     y_t = sum_n C_t,n h_t,n + D * u_t
 * Layouts (all contiguous): u, delta, y (b, d, L); A (d, N); B, C (b, G, N, L) where channel c
 * reads group c / (d / G); D, bias (d) or NULL.
 *
 * The kernels themselves are in scan_cpu_kernel.h, included once per precision: that file is
 * a template over SCALAR (float or double) and SUF (f32 or f64). This file holds what differs
 * between the precisions: exp and the step-size transform.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRAGMA(x) _Pragma(#x)
#ifdef _OPENMP
#include <omp.h>
#define OMP_PRAGMA(x) PRAGMA(x)
#else
#define OMP_PRAGMA(x)
#endif
/* "#pragma omp simd" is honoured with -fopenmp or -fopenmp-simd and ignored otherwise. */
#define SIMD PRAGMA(omp simd)

/*
 * The state dimension is processed in blocks of VW lanes, and every per-thread (., N) buffer
 * is padded to Np = ceil(N / VW) * VW columns whose padding stays zero (A = B = C = 0 there,
 * so the padded states stay 0 and contribute nothing). The innermost loops then have a
 * constant trip count of VW, which the compiler turns into straight vector code: with a
 * run-time trip count of N it kept choosing a scalar path for N = 16.
 * 8 floats = one AVX register; 8 doubles = two.
 */
#define VW 8

/*
 * exp for float that the compiler can vectorise (libm's expf is a scalar call unless
 * -ffast-math, which we avoid: linked into a shared library it can switch the whole process
 * to flush-to-zero). exp(x) = 2^k * exp(r), k = round(x / ln2), |r| <= ln2 / 2, exp(r) by its
 * Taylor series to degree 7 (truncation below 2e-9 relative; float's epsilon is 6e-8).
 * x is clamped to [-87.3, 88.3] so that 2^k stays a normal float: results that would be below
 * ~1e-38 come out as ~1e-38 instead of smaller (harmless as a decay factor), and overflow
 * saturates near 2e38 instead of giving inf.
 */
static inline float exp_f32(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    /* Round to nearest by adding and subtracting 1.5 * 2^23 (exact in float arithmetic;
       we never compile with -ffast-math, so the compiler may not fold it away). */
    const float shifter = 12582912.0f;
    float kf = (x * 1.44269504088896341f + shifter) - shifter;
    /* ln2 split in two: kf * ln2_hi is exact (ln2_hi has 16 significant bits, |kf| <= 128). */
    float r = x - kf * 0.693145751953125f;
    r = r - kf * 1.42860682030941723e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)kf + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Natural log of w in [1, 2] for float, vectorisable: log(w) = e*ln2 + log(m), m in
   [sqrt(1/2), sqrt(2)), and log(m) = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172, by its odd
   series to s^9 (next term < 4e-10). */
static inline float log_1to2_f32(float w) {
    const int big = w > 1.41421356f;
    const float m = big ? 0.5f * w : w;
    const float e = big ? 1.0f : 0.0f;
    const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return e * 0.693147180559945f + 2.0f * s * p;
}

/*
 * Step sizes for n steps: dt = softplus(z) (torch's, beta 1, threshold 20: dt = z for z > 20),
 * ddt_dz its derivative, and dtu = dt * u. Without softplus dt = z, ddt_dz = 1.
 * softplus(z) = max(z, 0) + log1p(exp(-|z|)); log1p(y) as log(w) * y / (w - 1), w = 1 + y,
 * which cancels the rounding of 1 + y (and is y itself when w rounds to 1).
 */
static void step_sizes_f32(const float *delta, const float *u, float bias, int softplus, int64_t n,
                           float *dt, float *ddt_dz, float *dtu) {
    if (!softplus) {
        SIMD
        for (int64_t t = 0; t < n; t++) {
            dt[t] = delta[t] + bias;
            ddt_dz[t] = 1.0f;
            dtu[t] = dt[t] * u[t];
        }
        return;
    }
    SIMD
    for (int64_t t = 0; t < n; t++) {
        const float z = delta[t] + bias;
        const float az = z < 0.0f ? -z : z;
        const float e = exp_f32(-az);                /* in (0, 1] */
        const float w = 1.0f + e;
        const float lw = log_1to2_f32(w);
        const float l1p = (w == 1.0f) ? e : lw * (e / (w - 1.0f));
        const float sp = (z > 0.0f ? z : 0.0f) + l1p;
        const float sig = (z >= 0.0f ? 1.0f : e) / w;  /* sigmoid(z) */
        dt[t] = z > 20.0f ? z : sp;
        ddt_dz[t] = z > 20.0f ? 1.0f : sig;
        dtu[t] = dt[t] * u[t];
    }
}

/* Double precision serves checks (gradcheck) more than speed: libm throughout. */
static inline double exp_f64(double x) { return exp(x); }

static void step_sizes_f64(const double *delta, const double *u, double bias, int softplus, int64_t n,
                           double *dt, double *ddt_dz, double *dtu) {
    for (int64_t t = 0; t < n; t++) {
        const double z = delta[t] + bias;
        if (!softplus || z > 20.0) {
            dt[t] = z;
            ddt_dz[t] = 1.0;
        } else {
            const double e = exp(z);
            dt[t] = log1p(e);
            ddt_dz[t] = e / (1.0 + e);
        }
        dtu[t] = dt[t] * u[t];
    }
}

#define SCALAR float
#define SUF f32
#include "scan_cpu_kernel.h"
#undef SCALAR
#undef SUF

#define SCALAR double
#define SUF f64
#include "scan_cpu_kernel.h"
#undef SCALAR
#undef SUF

/* Lets the loader check it has the library it expects, and report whether OpenMP is in. */
int vmambair_scan_abi_version(void) { return 3; }

int vmambair_scan_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
