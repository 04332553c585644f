/*
 * Selective-scan kernels, a template over one precision: selective_scan_cpu.c includes this
 * file once with SCALAR = float, SUF = f32 and once with SCALAR = double, SUF = f64, after
 * defining exp_SUF (vectorisable exp) and step_sizes_SUF (dt, d dt / d z, dt * u).
 *
 * Work items. Channels of one group share B and C, so a work item is (batch bi, group g,
 * slice sl < K): a contiguous range of that group's channels. Within an item time is cut into
 * chunks of Tc steps, and for each chunk the item first transposes the group's B and C to
 * (Tc, Np) once, then runs every one of its channels over the chunk (each channel keeps its
 * own state between chunks). In (Tc, Np) layout the innermost loops run over the states with
 * unit stride and vectorise; the recurrence itself is sequential in t.
 *
 * The forward optionally stores each channel's state before every chunk ("checkpoints",
 * (b, d, nchunks, N)). The backward walks the chunks in reverse: it recomputes a channel's
 * states over one chunk from its checkpoint into a per-thread (Tc, Np) buffer and runs the
 * adjoint recurrence backwards over it, so its extra memory is O(Tc * N) per thread whatever
 * L is. Its dB, dC terms are summed over the item's channels in (Tc, Np) layout and written
 * out once per chunk; each item is the only writer of its slice dB_part[sl, bi, g], so no two
 * threads ever write the same element (the caller sums the K slices).
 */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, SUF)

/* Per-thread scratch.
   (Tc, Np): B, C transposed; one channel's states and decays; the item's dB, dC sums.
   (Tc): dt, d dt / d z, dt * u of one channel. (cmax, Np): per channel of the item: A row,
   state (forward) or adjoint carry (backward), dA. (Np): a chunk's starting state. */
typedef struct {
    SCALAR *base;
    SCALAR *Bt, *Ct, *Hs, *As, *dBt, *dCt;
    SCALAR *dt, *dsp, *dtu;
    SCALAR *Ap, *h, *dA;
    SCALAR *h0;
} NAME(scratch);

/* calloc so that the padding columns start (and stay) zero. Returns 0 when out of memory. */
static int NAME(scratch_alloc)(NAME(scratch) *s, int64_t Tc, int64_t Np, int64_t cmax) {
    SCALAR *p = (SCALAR *)calloc((size_t)(6 * Tc * Np + 3 * Tc + 3 * cmax * Np + Np), sizeof(SCALAR));
    if (!p) return 0;
    s->base = p;
    s->Bt = p; p += Tc * Np;
    s->Ct = p; p += Tc * Np;
    s->Hs = p; p += Tc * Np;
    s->As = p; p += Tc * Np;
    s->dBt = p; p += Tc * Np;
    s->dCt = p; p += Tc * Np;
    s->dt = p; p += Tc;
    s->dsp = p; p += Tc;
    s->dtu = p; p += Tc;
    s->Ap = p; p += cmax * Np;
    s->h = p; p += cmax * Np;
    s->dA = p; p += cmax * Np;
    s->h0 = p;
    return 1;
}

/* Steps [t0, t0 + n) of a group's B and C, (N, L) each, transposed to (n, Np). */
static void NAME(load_BC)(NAME(scratch) *s, const SCALAR *Bg, const SCALAR *Cg, int64_t t0, int64_t n,
                          int64_t L, int64_t N, int64_t Np) {
    for (int64_t k = 0; k < N; k++) {
        const SCALAR *Bk = Bg + k * L + t0, *Ck = Cg + k * L + t0;
        for (int64_t t = 0; t < n; t++) {
            s->Bt[t * Np + k] = Bk[t];
            s->Ct[t * Np + k] = Ck[t];
        }
    }
}

/* Channel range [*c0, *c1) of work item `item` = (bi * G + g) * K + sl; returns bi * G + g. */
static inline int64_t NAME(item_range)(int64_t item, int64_t K, int64_t G, int64_t dpg, int64_t *c0,
                                       int64_t *c1) {
    const int64_t sl = item % K, bg = item / K, g = bg % G;
    *c0 = g * dpg + sl * dpg / K;
    *c1 = g * dpg + (sl + 1) * dpg / K;
    return bg;
}

/* Copy the item's rows of A into the padded (cmax, Np) buffer (padding stays zero). */
static void NAME(load_A)(NAME(scratch) *s, const SCALAR *A, int64_t c0, int64_t c1, int64_t N, int64_t Np) {
    for (int64_t c = c0; c < c1; c++) memcpy(s->Ap + (c - c0) * Np, A + c * N, (size_t)N * sizeof(SCALAR));
}

/*
 * Forward: y (b, d, L) fully written. ckpt (b, d, ceil(L / Tc), N) receives each channel's
 * state before each chunk, or is NULL (no gradient needed). K: slices per group (any value in
 * [1, d / G]; only load balance depends on it). Returns 0, or 1 if scratch allocation failed.
 */
int NAME(vmambair_scan_fwd)(const SCALAR *u, const SCALAR *delta, const SCALAR *A, const SCALAR *B,
                            const SCALAR *C, const SCALAR *D, const SCALAR *bias, int softplus,
                            SCALAR *y, SCALAR *ckpt, int64_t K, int64_t b, int64_t d, int64_t L,
                            int64_t G, int64_t N, int64_t Tc, int nthreads) {
    const int64_t dpg = d / G, nch = (L + Tc - 1) / Tc, Np = (N + VW - 1) / VW * VW;
    const int64_t cmax = (dpg + K - 1) / K;
    int failed = 0;
    (void)nthreads;
    OMP_PRAGMA(omp parallel num_threads(nthreads) reduction(|:failed))
    {
        NAME(scratch) s = {0};
        const int ok = NAME(scratch_alloc)(&s, Tc, Np, cmax);
        if (!ok) failed = 1;
        OMP_PRAGMA(omp for schedule(dynamic, 1))
        for (int64_t item = 0; item < b * G * K; item++) {
            if (!ok) continue;
            int64_t c0, c1;
            const int64_t bg = NAME(item_range)(item, K, G, dpg, &c0, &c1), bi = bg / G;
            const SCALAR *Bg = B + bg * N * L, *Cg = C + bg * N * L;
            NAME(load_A)(&s, A, c0, c1, N, Np);
            memset(s.h, 0, (size_t)(cmax * Np) * sizeof(SCALAR));
            for (int64_t ch = 0; ch < nch; ch++) {
                const int64_t t0 = ch * Tc, n = (L - t0 < Tc) ? L - t0 : Tc;
                NAME(load_BC)(&s, Bg, Cg, t0, n, L, N, Np);
                for (int64_t c = c0; c < c1; c++) {
                    const int64_t row = bi * d + c;
                    const SCALAR *ur = u + row * L + t0;
                    const SCALAR Dc = D ? D[c] : (SCALAR)0, bc = bias ? bias[c] : (SCALAR)0;
                    const SCALAR *Ap = s.Ap + (c - c0) * Np;
                    SCALAR *h = s.h + (c - c0) * Np, *yr = y + row * L + t0;
                    if (ckpt) memcpy(ckpt + (row * nch + ch) * N, h, (size_t)N * sizeof(SCALAR));
                    NAME(step_sizes)(delta + row * L + t0, ur, bc, softplus, n, s.dt, s.dsp, s.dtu);
                    for (int64_t t = 0; t < n; t++) {
                        const SCALAR dt = s.dt[t], x = s.dtu[t];
                        const SCALAR *Bt = s.Bt + t * Np, *Ct = s.Ct + t * Np;
                        SCALAR acc[VW] = {0};
                        for (int64_t k0 = 0; k0 < Np; k0 += VW) {
                            SIMD
                            for (int j = 0; j < VW; j++) {
                                const SCALAR hk = NAME(exp)(dt * Ap[k0 + j]) * h[k0 + j] + x * Bt[k0 + j];
                                h[k0 + j] = hk;
                                acc[j] += Ct[k0 + j] * hk;
                            }
                        }
                        SCALAR sum = (SCALAR)0;
                        for (int j = 0; j < VW; j++) sum += acc[j];
                        yr[t] = sum + Dc * ur[t];
                    }
                }
            }
        }
        if (ok) free(s.base);
    }
    return failed;
}

/*
 * Backward. Inputs as for the forward plus its ckpt (made with the same Tc) and dy (b, d, L).
 * Outputs, all fully written:
 *   du, ddelta (b, d, L) (ddelta includes the softplus derivative);
 *   dA_part (b, d, N): each batch element's share of dA (the caller sums over b);
 *   dB_part, dC_part (K, b, G, N, L): slice sl holds the sum over that slice's channels.
 * Returns 0, or 1 if scratch allocation failed.
 *
 * Adjoint, backwards in time (gh_t = dLoss/dh_t, a_t = exp(dt_t A)):
 *   gh_t   = dy_t C_t + a_{t+1} gh_{t+1}
 *   ddt_t  = sum_n gh_t a_t h_{t-1} A + u_t sum_n gh_t B_t      ddelta_t = ddt_t * d dt / d z
 *   du_t   = dt_t sum_n gh_t B_t + D dy_t
 *   dA    += gh_t a_t h_{t-1} dt_t      dB_t += gh_t dt_t u_t      dC_t += dy_t h_t
 */
int NAME(vmambair_scan_bwd)(const SCALAR *u, const SCALAR *delta, const SCALAR *A, const SCALAR *B,
                            const SCALAR *C, const SCALAR *D, const SCALAR *bias, int softplus,
                            const SCALAR *ckpt, const SCALAR *dy, SCALAR *du, SCALAR *ddelta,
                            SCALAR *dA_part, SCALAR *dB_part, SCALAR *dC_part, int64_t K, int64_t b,
                            int64_t d, int64_t L, int64_t G, int64_t N, int64_t Tc, int nthreads) {
    const int64_t dpg = d / G, nch = (L + Tc - 1) / Tc, Np = (N + VW - 1) / VW * VW;
    const int64_t cmax = (dpg + K - 1) / K;
    int failed = 0;
    (void)nthreads;
    OMP_PRAGMA(omp parallel num_threads(nthreads) reduction(|:failed))
    {
        NAME(scratch) s = {0};
        const int ok = NAME(scratch_alloc)(&s, Tc, Np, cmax);
        if (!ok) failed = 1;
        /* Items differ in size when K does not divide d / G: hand them out dynamically. The
           result of an item does not depend on the thread that runs it: deterministic. */
        OMP_PRAGMA(omp for schedule(dynamic, 1))
        for (int64_t item = 0; item < b * G * K; item++) {
            if (!ok) continue;
            int64_t c0, c1;
            const int64_t bg = NAME(item_range)(item, K, G, dpg, &c0, &c1), bi = bg / G, sl = item % K;
            const SCALAR *Bg = B + bg * N * L, *Cg = C + bg * N * L;
            SCALAR *dBg = dB_part + (sl * b * G + bg) * N * L, *dCg = dC_part + (sl * b * G + bg) * N * L;
            NAME(load_A)(&s, A, c0, c1, N, Np);
            /* s.h holds, per channel, carry = a_{t+1} gh_{t+1}: the adjoint reaching step t
               from step t + 1 (zero after the last step). */
            memset(s.h, 0, (size_t)(cmax * Np) * sizeof(SCALAR));
            memset(s.dA, 0, (size_t)(cmax * Np) * sizeof(SCALAR));
            for (int64_t ch = nch - 1; ch >= 0; ch--) {
                const int64_t t0 = ch * Tc, n = (L - t0 < Tc) ? L - t0 : Tc;
                NAME(load_BC)(&s, Bg, Cg, t0, n, L, N, Np);
                memset(s.dBt, 0, (size_t)(n * Np) * sizeof(SCALAR));
                memset(s.dCt, 0, (size_t)(n * Np) * sizeof(SCALAR));
                for (int64_t c = c0; c < c1; c++) {
                    const int64_t row = bi * d + c;
                    const SCALAR *ur = u + row * L + t0, *dyr = dy + row * L + t0;
                    const SCALAR Dc = D ? D[c] : (SCALAR)0, bc = bias ? bias[c] : (SCALAR)0;
                    const SCALAR *Ap = s.Ap + (c - c0) * Np, *h0 = s.h0;
                    SCALAR *carry = s.h + (c - c0) * Np, *dA = s.dA + (c - c0) * Np;
                    SCALAR *dur = du + row * L + t0, *ddr = ddelta + row * L + t0;
                    memcpy(s.h0, ckpt + (row * nch + ch) * N, (size_t)N * sizeof(SCALAR));
                    NAME(step_sizes)(delta + row * L + t0, ur, bc, softplus, n, s.dt, s.dsp, s.dtu);
                    /* Recompute this chunk's decays and states from its checkpoint. */
                    for (int64_t t = 0; t < n; t++) {
                        const SCALAR dt = s.dt[t], x = s.dtu[t];
                        const SCALAR *Bt = s.Bt + t * Np, *hp = t ? s.Hs + (t - 1) * Np : h0;
                        SCALAR *Hs = s.Hs + t * Np, *As = s.As + t * Np;
                        for (int64_t k0 = 0; k0 < Np; k0 += VW) {
                            SIMD
                            for (int j = 0; j < VW; j++) {
                                const SCALAR a = NAME(exp)(dt * Ap[k0 + j]);
                                As[k0 + j] = a;
                                Hs[k0 + j] = a * hp[k0 + j] + x * Bt[k0 + j];
                            }
                        }
                    }
                    for (int64_t t = n - 1; t >= 0; t--) {
                        const SCALAR dt = s.dt[t], x = s.dtu[t], gy = dyr[t];
                        const SCALAR *Bt = s.Bt + t * Np, *Ct = s.Ct + t * Np;
                        const SCALAR *As = s.As + t * Np, *Hs = s.Hs + t * Np;
                        const SCALAR *hp = t ? s.Hs + (t - 1) * Np : h0;
                        SCALAR *dBt = s.dBt + t * Np, *dCt = s.dCt + t * Np;
                        SCALAR sA[VW] = {0}, sB[VW] = {0};
                        for (int64_t k0 = 0; k0 < Np; k0 += VW) {
                            SIMD
                            for (int j = 0; j < VW; j++) {
                                const int64_t k = k0 + j;
                                const SCALAR gh = gy * Ct[k] + carry[k];
                                const SCALAR gha = gh * As[k] * hp[k];
                                carry[k] = As[k] * gh;
                                sA[j] += gha * Ap[k];
                                dA[k] += gha * dt;
                                sB[j] += gh * Bt[k];
                                dBt[k] += gh * x;
                                dCt[k] += gy * Hs[k];
                            }
                        }
                        SCALAR ghA = (SCALAR)0, ghB = (SCALAR)0;
                        for (int j = 0; j < VW; j++) {
                            ghA += sA[j];
                            ghB += sB[j];
                        }
                        dur[t] = ghB * dt + Dc * gy;
                        ddr[t] = (ghA + ghB * ur[t]) * s.dsp[t];
                    }
                }
                /* This item's sums over its channels, back to (N, L) layout. */
                for (int64_t k = 0; k < N; k++) {
                    SCALAR *dBk = dBg + k * L + t0, *dCk = dCg + k * L + t0;
                    for (int64_t t = 0; t < n; t++) {
                        dBk[t] = s.dBt[t * Np + k];
                        dCk[t] = s.dCt[t * Np + k];
                    }
                }
            }
            for (int64_t c = c0; c < c1; c++)
                memcpy(dA_part + (bi * d + c) * N, s.dA + (c - c0) * Np, (size_t)N * sizeof(SCALAR));
        }
        if (ok) free(s.base);
    }
    return failed;
}

#undef NAME
#undef CAT
#undef CAT_
