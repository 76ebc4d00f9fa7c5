/*
 * marginflow.core._ccore -- the hot loops, compiled once per instruction set.
 *
 * Included by _ccore.c three times, with
 *   ISA_SFX(name)  name##_generic / name##_avx2 / name##_avx512
 *   ISA_TARGET     the function attribute (nothing, target("avx2,fma,..."), target("avx512f,..."))
 *   ISA_LEVEL      0 portable C, 1 AVX2 + FMA, 2 AVX-512 (F, VL, DQ, BW)
 * The model picks one table of these functions when it is built (cpu check at run time),
 * so the default build stays portable. Every level computes the same values, bit for bit:
 * the build has -ffp-contract=off and no fused multiply-add intrinsics, so each level multiplies,
 * then adds, in position order, with the roundings of the numpy twin.
 */

/* --------------------------------------------------------------- small primitives */

/* bit i set when x[i] >= t, for the 32 values x[0:32] (64-byte aligned) */
ISA_TARGET static inline uint32_t ISA_SFX(ge32)(const double *x, double t)
{
#if ISA_LEVEL == 2
    __m512d tv = _mm512_set1_pd(t);
    uint32_t m0 = _mm512_cmp_pd_mask(_mm512_load_pd(x), tv, _CMP_GE_OQ);
    uint32_t m1 = _mm512_cmp_pd_mask(_mm512_load_pd(x + 8), tv, _CMP_GE_OQ);
    uint32_t m2 = _mm512_cmp_pd_mask(_mm512_load_pd(x + 16), tv, _CMP_GE_OQ);
    uint32_t m3 = _mm512_cmp_pd_mask(_mm512_load_pd(x + 24), tv, _CMP_GE_OQ);
    return m0 | m1 << 8 | m2 << 16 | m3 << 24;
#elif ISA_LEVEL == 1
    __m256d tv = _mm256_set1_pd(t);
    uint32_t m = 0;
    for (int i = 0; i < 8; i++)
        m |= (uint32_t)_mm256_movemask_pd(_mm256_cmp_pd(_mm256_load_pd(x + 4 * i), tv, _CMP_GE_OQ)) << (4 * i);
    return m;
#else
    uint32_t m = 0;
    for (int i = 0; i < 32; i++) m |= (uint32_t)(x[i] >= t) << i;
    return m;
#endif
}

/* any of x[0:4] >= t (NaN never) */
ISA_TARGET static inline int ISA_SFX(any_ge4)(const double *x, double t)
{
#if ISA_LEVEL >= 1
    return _mm256_movemask_pd(_mm256_cmp_pd(_mm256_load_pd(x), _mm256_set1_pd(t), _CMP_GE_OQ));
#else
    return (x[0] >= t) | (x[1] >= t) | (x[2] >= t) | (x[3] >= t);
#endif
}

/* number of x[0:n] >= t, n a multiple of 4, x 32-byte aligned (NaN never counted) */
ISA_TARGET static inline Py_ssize_t ISA_SFX(count_ge)(const double *x, Py_ssize_t n, double t)
{
#if ISA_LEVEL == 2
    const __m512d tv = _mm512_set1_pd(t);
    Py_ssize_t c0 = 0, c1 = 0, i = 0;
    for (; i + 16 <= n; i += 16) {
        c0 += __builtin_popcount((unsigned)_mm512_cmp_pd_mask(_mm512_loadu_pd(x + i), tv, _CMP_GE_OQ));
        c1 += __builtin_popcount((unsigned)_mm512_cmp_pd_mask(_mm512_loadu_pd(x + i + 8), tv, _CMP_GE_OQ));
    }
    for (; i < n; i += 4)
        c0 += __builtin_popcount((unsigned)_mm256_movemask_pd(_mm256_cmp_pd(_mm256_load_pd(x + i), _mm256_set1_pd(t),
                                                                            _CMP_GE_OQ)));
    return c0 + c1;
#elif ISA_LEVEL >= 1
    __m256d tv = _mm256_set1_pd(t);
    __m256i c0 = _mm256_setzero_si256(), c1 = _mm256_setzero_si256();
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        c0 = _mm256_sub_epi64(c0, _mm256_castpd_si256(_mm256_cmp_pd(_mm256_load_pd(x + i), tv, _CMP_GE_OQ)));
        c1 = _mm256_sub_epi64(c1, _mm256_castpd_si256(_mm256_cmp_pd(_mm256_load_pd(x + i + 4), tv, _CMP_GE_OQ)));
    }
    if (i < n) c0 = _mm256_sub_epi64(c0, _mm256_castpd_si256(_mm256_cmp_pd(_mm256_load_pd(x + i), tv, _CMP_GE_OQ)));
    c0 = _mm256_add_epi64(c0, c1);
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(c0), _mm256_extracti128_si256(c0, 1));
    return (Py_ssize_t)(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1));
#else
    Py_ssize_t c = 0;
    for (Py_ssize_t i = 0; i < n; i++) c += x[i] >= t;
    return c;
#endif
}

/* min and max of x[0:n] (n a multiple of 4), NaN skipped */
ISA_TARGET static inline void ISA_SFX(minmax)(const double *x, Py_ssize_t n, double *lo, double *hi)
{
#if ISA_LEVEL >= 1
    __m256d l = _mm256_set1_pd(INFINITY), h = _mm256_set1_pd(-INFINITY);
    Py_ssize_t i = 0;
#if ISA_LEVEL == 2
    /* two accumulators per extreme: the chains of dependent min/max are the cost here */
    __m512d l0 = _mm512_set1_pd(INFINITY), l1 = l0, h0 = _mm512_set1_pd(-INFINITY), h1 = h0;
    for (; i + 16 <= n; i += 16) {
        __m512d v0 = _mm512_loadu_pd(x + i), v1 = _mm512_loadu_pd(x + i + 8);
        l0 = _mm512_min_pd(v0, l0); /* NaN in v: keeps l */
        l1 = _mm512_min_pd(v1, l1);
        h0 = _mm512_max_pd(v0, h0);
        h1 = _mm512_max_pd(v1, h1);
    }
    for (; i + 8 <= n; i += 8) {
        __m512d v0 = _mm512_loadu_pd(x + i);
        l0 = _mm512_min_pd(v0, l0);
        h0 = _mm512_max_pd(v0, h0);
    }
    l0 = _mm512_min_pd(l0, l1);
    h0 = _mm512_max_pd(h0, h1);
    l = _mm256_min_pd(_mm512_castpd512_pd256(l0), _mm512_extractf64x4_pd(l0, 1));
    h = _mm256_max_pd(_mm512_castpd512_pd256(h0), _mm512_extractf64x4_pd(h0, 1));
#endif
    for (; i < n; i += 4) {
        __m256d v = _mm256_load_pd(x + i);
        l = _mm256_min_pd(v, l); /* NaN in v: keeps l */
        h = _mm256_max_pd(v, h);
    }
    double lb[4], hb[4];
    _mm256_storeu_pd(lb, l);
    _mm256_storeu_pd(hb, h);
    *lo = MIND(MIND(lb[0], lb[1]), MIND(lb[2], lb[3]));
    *hi = MAXD(MAXD(hb[0], hb[1]), MAXD(hb[2], hb[3]));
#else
    double l = INFINITY, h = -INFINITY;
    for (Py_ssize_t i = 0; i < n; i++) {
        l = x[i] < l ? x[i] : l;
        h = x[i] > h ? x[i] : h;
    }
    *lo = l;
    *hi = h;
#endif
}

/* --------------------------------------------------------------- the FHS kernel */

/* loss[c] = sum_j cq[j] * rh[ck[j], c] for the columns c in [c0, c1) (multiples of CW), and
 * the 4 lane maxima of each block of CW columns (lane l: the max of scenarios c + l + 4i,
 * i < 8) into bmax[c / 8 + l]. Each row's 4 lines two blocks ahead are prefetched into L1:
 * the rows of an account are visited in turn, a pattern the hardware prefetchers do not
 * follow (about 10 % of the recalculation on a Sapphire Rapids VM; a prefetch past a row's
 * end lands in the next row or is dropped, it never faults). */
#ifndef KERNEL_PREFETCH
#define KERNEL_PREFETCH(r)                              \
    do {                                                \
        __builtin_prefetch((r) + 2 * CW, 0, 3);         \
        __builtin_prefetch((r) + 2 * CW + 8, 0, 3);     \
        __builtin_prefetch((r) + 2 * CW + 16, 0, 3);    \
        __builtin_prefetch((r) + 2 * CW + 24, 0, 3);    \
    } while (0)
#endif
ISA_TARGET static void ISA_SFX(fhs_kernel)(const double *rh, Py_ssize_t Hp, Py_ssize_t c0, Py_ssize_t c1,
                                           const int32_t *ck, const double *cq, Py_ssize_t nc, double *loss,
                                           double *bmax)
{
#if ISA_LEVEL == 2
    for (Py_ssize_t c = c0; c < c1; c += CW) {
        __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
        for (Py_ssize_t j = 0; j < nc; j++) {
            const double *r = rh + (Py_ssize_t)ck[j] * Hp + c;
            __m512d q = _mm512_set1_pd(cq[j]);
            KERNEL_PREFETCH(r);
            a0 = _mm512_add_pd(a0, _mm512_mul_pd(q, _mm512_load_pd(r)));
            a1 = _mm512_add_pd(a1, _mm512_mul_pd(q, _mm512_load_pd(r + 8)));
            a2 = _mm512_add_pd(a2, _mm512_mul_pd(q, _mm512_load_pd(r + 16)));
            a3 = _mm512_add_pd(a3, _mm512_mul_pd(q, _mm512_load_pd(r + 24)));
        }
        _mm512_store_pd(loss + c, a0);
        _mm512_store_pd(loss + c + 8, a1);
        _mm512_store_pd(loss + c + 16, a2);
        _mm512_store_pd(loss + c + 24, a3);
        /* lane l of m: max of scenarios c + l + 8i; then fold the two halves */
        __m512d m = _mm512_max_pd(_mm512_max_pd(a0, a1), _mm512_max_pd(a2, a3));
        _mm256_store_pd(bmax + c / 8, _mm256_max_pd(_mm512_castpd512_pd256(m), _mm512_extractf64x4_pd(m, 1)));
    }
#else
    for (Py_ssize_t c = c0; c < c1; c += CW) {
        v4d a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
        for (Py_ssize_t j = 0; j < nc; j++) {
            const v4d *r = (const v4d *)(rh + (Py_ssize_t)ck[j] * Hp + c);
            double qj = cq[j];
            v4d q = {qj, qj, qj, qj};
            KERNEL_PREFETCH((const double *)r);
            a0 += q * r[0];
            a1 += q * r[1];
            a2 += q * r[2];
            a3 += q * r[3];
            a4 += q * r[4];
            a5 += q * r[5];
            a6 += q * r[6];
            a7 += q * r[7];
        }
        v4d *o = (v4d *)(loss + c);
        o[0] = a0; o[1] = a1; o[2] = a2; o[3] = a3; o[4] = a4; o[5] = a5; o[6] = a6; o[7] = a7;
#define VMAX(x, y) ((v4d)(((v4i)(x) & ((x) > (y))) | ((v4i)(y) & ~((x) > (y)))))
        v4d m0 = VMAX(a0, a1), m1 = VMAX(a2, a3), m2 = VMAX(a4, a5), m3 = VMAX(a6, a7);
        m0 = VMAX(m0, m1);
        m2 = VMAX(m2, m3);
        *(v4d *)(bmax + c / 8) = VMAX(m0, m2);
#undef VMAX
    }
#endif
}

/* --------------------------------------------------------------- grid margin */

/* g[0:n] += q * r[0:n], n a multiple of 4, both 32-byte aligned (multiply, then add: the
 * rounding of the twin's sparse product) */
ISA_TARGET static inline void ISA_SFX(axpy_row)(double *g, const double *r, double q, Py_ssize_t n)
{
    Py_ssize_t i = 0;
#if ISA_LEVEL == 2
    const __m512d qv = _mm512_set1_pd(q);
    for (; i + 8 <= n; i += 8)
        _mm512_storeu_pd(g + i, _mm512_add_pd(_mm512_loadu_pd(g + i), _mm512_mul_pd(qv, _mm512_loadu_pd(r + i))));
#endif
    const v4d q4 = {q, q, q, q};
    for (; i < n; i += 4) *(v4d *)(g + i) += q4 * *(const v4d *)(r + i);
}

/* max(0, max_i g[i] * wt[i]) over n (a multiple of 4) rows, NaN never wins; clear: g = 0
 * after it is read (in the same loop: no memset call per row) */
ISA_TARGET static inline double ISA_SFX(weighted_max)(double *g, const double *wt, Py_ssize_t n, int clear)
{
    Py_ssize_t i = 0;
    v4d mx = {0.0, 0.0, 0.0, 0.0};
#if ISA_LEVEL == 2
    __m512d m8 = _mm512_setzero_pd();
    const __mmask8 keep8 = clear ? 0 : 0xff;
    for (; i + 8 <= n; i += 8) {
        __m512d x = _mm512_loadu_pd(g + i);
        m8 = _mm512_max_pd(_mm512_mul_pd(x, _mm512_loadu_pd(wt + i)), m8);
        _mm512_storeu_pd(g + i, _mm512_maskz_mov_pd(keep8, x));
    }
    mx = (v4d)_mm256_max_pd(_mm512_castpd512_pd256(m8), _mm512_extractf64x4_pd(m8, 1));
#endif
    const v4i keep4 = {-!clear, -!clear, -!clear, -!clear};
    for (; i < n; i += 4) {
        v4d gx = *(const v4d *)(g + i), x = gx * *(const v4d *)(wt + i);
        mx = (v4d)(((v4i)x & (x > mx)) | ((v4i)mx & ~(x > mx)));
        *(v4d *)(g + i) = (v4d)((v4i)gx & keep4);
    }
    return MAXD(MAXD(mx[0], mx[1]), MAXD(mx[2], mx[3]));
}

/* Grid margin of the cross positions ck/cq; fills the gacc rows of the touched underlyings
 * (sorted ascending in w->touched, count in *nt_out). keep: leave w->flag set and the gacc rows
 * filled (explain); else the rows are zeroed again for the next account. The gacc rows are all
 * zero on entry, so every position is one branch-free multiply-add into its underlying's row
 * (0 + x == x). */
ISA_TARGET static double ISA_SFX(grid_margin)(const Model *M, Scratch *w, const int32_t *ck, const double *cq,
                                              Py_ssize_t nc, Py_ssize_t *nt_out, int *finite, int keep)
{
    const Py_ssize_t GTp = M->GTp, GT = M->GT;
    int32_t *touched = w->touched;
    uint8_t *flag = w->flag;
    Py_ssize_t nt = 0;
    double bound = 0.0;
    for (Py_ssize_t j = 0; j < nc; j++) {
        int32_t k = ck[j], u = M->und[k];
        touched[nt] = u;
        nt += !flag[u];
        flag[u] = 1;
        ISA_SFX(axpy_row)(w->gacc + (Py_ssize_t)u * GTp, M->rg + (Py_ssize_t)k * GTp, cq[j], GTp);
        bound += fabs(cq[j]) * M->bound_g[k];
    }
    /* ascending underlyings: the twin's order of the sum over them */
    for (Py_ssize_t t = 1; t < nt; t++) {
        int32_t u = touched[t];
        Py_ssize_t i = t;
        while (i > 0 && touched[i - 1] > u) {
            touched[i] = touched[i - 1];
            i--;
        }
        touched[i] = u;
    }
    double grid = 0.0;
    for (Py_ssize_t t = 0; t < nt; t++) {
        Py_ssize_t u = touched[t];
        double *g = w->gacc + u * GTp;
        if (!(bound < 1e300))
            for (Py_ssize_t i = 0; i < GT; i++)
                if (!isfinite(g[i])) *finite = 0;
        /* padding rows have weight 0: their 0 * g never exceeds the 0 the max starts from */
        grid += ISA_SFX(weighted_max)(g, M->w, GTp, !keep);
        flag[u] = (uint8_t)keep;
    }
    *nt_out = nt;
    return grid;
}

/* --------------------------------------------------------------- ES, VaR, worst */

/* The m largest of the n candidates c[0:n] (m <= n <= 4 nq, c 32-byte aligned with room for
 * 4 nq): their sum, added in candidate order, and the smallest of them (*var). nq is a constant
 * (8 or 16) at each call. Branch-free ranks: g_j = number of candidates strictly larger than
 * c_j; the m largest are those with g_j < m, more than m of them only on ties at the m-th
 * largest, whose lowest-index copies are then left out (as when the smallest are removed one
 * at a time, lowest index first). */
ISA_TARGET static inline __attribute__((always_inline)) double ISA_SFX(top_m_ranked)(double *c, Py_ssize_t n,
                                                                                     Py_ssize_t m, double *var,
                                                                                     const int nq)
{
    for (Py_ssize_t i = n; i < 4 * nq; i++) c[i] = -INFINITY; /* never larger than a candidate */
    v4d cv[RANK_MAX / 4];
    v4i g[RANK_MAX / 4];
    for (int q = 0; q < nq; q++) {
        cv[q] = *(const v4d *)(c + 4 * q);
        g[q] = (v4i){0, 0, 0, 0};
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const v4d b = {c[i], c[i], c[i], c[i]};
        for (int q = 0; q < nq; q++) g[q] -= (v4i)(cv[q] < b);
    }
    const v4i mv = {m, m, m, m};
    const v4d inf = {INFINITY, INFINITY, INFINITY, INFINITY};
    v4d lo = inf;
    v4i cnt = {0, 0, 0, 0};
    for (int q = 0; q < nq; q++) {
        v4i in = g[q] < mv;
        cnt -= in;
        v4d x = (v4d)(((v4i)cv[q] & in) | ((v4i)inf & ~in));
        lo = (v4d)(((v4i)x & (x < lo)) | ((v4i)lo & ~(x < lo)));
        *(v4d *)(c + 4 * q) = (v4d)((v4i)cv[q] & in); /* 0.0 for the others: added as 0 */
    }
    const double v = MIND(MIND(lo[0], lo[1]), MIND(lo[2], lo[3]));
    Py_ssize_t kept = cnt[0] + cnt[1] + cnt[2] + cnt[3];
    if (kept > m) { /* ties at the m-th largest (rare): leave out their lowest-index copies */
        int64_t gs[RANK_MAX];
        memcpy(gs, g, (size_t)nq * sizeof(v4i));
        for (Py_ssize_t j = 0; j < n && kept > m; j++)
            if (gs[j] < m && c[j] == v) {
                c[j] = 0.0;
                kept--;
            }
    }
    double sum = 0.0;
    for (Py_ssize_t j = 0; j < n; j++) sum += c[j];
    *var = v;
    return sum;
}

/* ES, VaR and worst scenario from the historical losses loss[0:Hp] (and their block maxima)
 * of the cross positions ck/cq (nc > 0); loss[H:Hp] and bmax are used as scratch.
 *
 * Any thr with at least m block maxima >= thr bounds the m-th largest loss from below (m
 * distinct blocks each hold a loss >= thr), so the m worst losses are among the losses >= thr,
 * and those lie in the 32-scenario chunks with a block maximum >= thr. thr: bisection on
 * the block maxima (branch-free steps) until m..m+2 of them reach it. The candidates (values
 * only) are collected in ascending scenario order and ranked branch-free (top_m_ranked); a heap
 * when there are more than RANK_MAX. worst: the first scenario whose loss equals the largest
 * block maximum. */
ISA_TARGET static void ISA_SFX(fhs_select)(const Model *M, Scratch *w, const int32_t *ck, const double *cq,
                                           Py_ssize_t nc, double *loss, double *bmax, AcctOut *o)
{
    const Py_ssize_t H = M->H, Hp = M->Hp, m = M->m, nb = M->nb;
    /* bound on |loss| from the per-instrument max |R|: when finite (with a wide margin),
     * every loss is; else scan them all */
    double bound = 0.0;
    for (Py_ssize_t j = 0; j < nc; j++) bound += fabs(cq[j]) * M->bound_h[ck[j]];
    if (!(bound < 1e300)) {
        for (Py_ssize_t s = 0; s < H; s++)
            if (!isfinite(loss[s])) o->finite = 0;
    }
    if (!o->finite) {
        o->es = o->var = NAN;
        o->worst = 0;
        return;
    }
    /* padding scenarios must never be picked: their losses become -inf, and the block
     * maxima of the last block are redone (NaN for a block of padding only: never counted) */
    if (Hp > H) {
        Py_ssize_t c = Hp - CW;
        for (Py_ssize_t s = H; s < Hp; s++) loss[s] = -INFINITY;
        const v4d *L = (const v4d *)(loss + c);
        v4d mx = L[0];
        for (int i = 1; i < 8; i++) mx = (v4d)(((v4i)L[i] & (L[i] > mx)) | ((v4i)mx & ~(L[i] > mx)));
        const v4d ninf = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, nan = {NAN, NAN, NAN, NAN};
        *(v4d *)(bmax + c / 8) = (v4d)(((v4i)nan & (mx == ninf)) | ((v4i)mx & ~(mx == ninf)));
    }
    double lo = INFINITY, hi = -INFINITY;
    ISA_SFX(minmax)(bmax, nb, &lo, &hi); /* hi: the largest loss */
    {
        Py_ssize_t c = 0;
        while (!ISA_SFX(any_ge4)(bmax + c / 8, hi)) c += CW;
        o->worst = c + __builtin_ctz(ISA_SFX(ge32)(loss + c, hi)); /* first of the largest */
    }
    Py_ssize_t n = 0;
    double *cand = w->cand;
    if (m * 4 <= nb) {
        if (ISA_SFX(count_ge)(bmax, nb, hi) < m)
            for (int it = 0; it < 12 && lo < hi; it++) {
                double mid = lo + 0.5 * (hi - lo);
                Py_ssize_t cnt = ISA_SFX(count_ge)(bmax, nb, mid);
                int ge = cnt >= m;
                lo = pick_d(ge, mid, lo);
                hi = pick_d(ge, hi, mid);
                if (ge & (cnt <= m + 2)) break;
            }
        else lo = hi;
        const double thr = lo;
        /* the chunks holding a block maximum >= thr, listed branch-free, then their losses
         * >= thr appended in scenario order */
        int32_t *sel = w->sel;
        Py_ssize_t ns = 0;
        for (Py_ssize_t c = 0; c < Hp; c += CW) {
            sel[ns] = (int32_t)c;
            ns += ISA_SFX(any_ge4)(bmax + c / 8, thr) != 0;
        }
#if ISA_LEVEL == 2
        const __m512d tv = _mm512_set1_pd(thr);
        for (Py_ssize_t j = 0; j < ns; j++) {
            const double *l = loss + sel[j];
            for (int q = 0; q < 4; q++) {
                __m512d v = _mm512_load_pd(l + 8 * q);
                __mmask8 k = _mm512_cmp_pd_mask(v, tv, _CMP_GE_OQ);
                /* register compress + plain store (cand has 16 slots of slack) */
                _mm512_storeu_pd(cand + n, _mm512_maskz_compress_pd(k, v));
                n += __builtin_popcount((unsigned)k);
            }
        }
#else
        for (Py_ssize_t j = 0; j < ns; j++) {
            Py_ssize_t c = sel[j];
            uint32_t mk = ISA_SFX(ge32)(loss + c, thr);
            while (mk) {
                cand[n++] = loss[c + __builtin_ctz(mk)];
                mk &= mk - 1;
            }
        }
#endif
    }
    else {
        memcpy(cand, loss, (size_t)H * sizeof(double));
        n = H;
    }
    if (n <= RANK_MAX) {
        double var;
        double sum = n <= 32 ? ISA_SFX(top_m_ranked)(cand, n, m, &var, 8) : ISA_SFX(top_m_ranked)(cand, n, m, &var, 16);
        o->es = sum / (double)m;
        o->var = var;
    }
    else {
        o->es = top_m(cand, n, m, w->heap) / (double)m;
        o->var = w->heap[0];
    }
}
