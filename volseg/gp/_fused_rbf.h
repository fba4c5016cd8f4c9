/* The RBF pass of _fused.c, once per instruction set: _fused.c includes this file inside that
 * instruction set's target pragma, with SFX (the name suffix), W (lanes), BROADCAST_TABLE,
 * SPLIT_CHAINS, V / VI / VM (float vector, int vector, lane mask) and the V_* primitives defined
 * (BLOCK, the clicks per pass, is common to both).  One body, so the two passes cannot drift apart.
 *
 * Per location and click: D + 2 FMAs for the exponent, the exp, one FMA into the mean.
 *  - exp(h) = 2^(h log2e), with log2e folded into the per-click terms so the pass makes h log2e
 *    directly; 2^x = 2^frac(x) 2^floor(x), a degree-5 minimax polynomial for 2^frac (relative
 *    error 1.6e-7 in float32).
 *  - |z - Z_j|^2 = |f - F_j|^2 + (leading axes: constant along a row, made once per row and click)
 *    + (p - P_j)^2 along the row; the squares of f and p are once per tile, not per click.  Row
 *    positions are measured from the box's middle, which keeps the expanded square's float32
 *    cancellation small.
 *  - D (<= 16) is a compile-time constant, so a tile's features stay in registers.
 *  - a tile's dependency chains, not its arithmetic, set the pace of the first block of clicks:
 *    |f|^2 is four partial sums added to the exponents only at the end, and with SPLIT_CHAINS
 *    each click's exponent is two chains (even and odd features).  AVX2's 16 registers cannot
 *    hold a tile's features and eight chains (the spills cost more than the chains save: -8%
 *    over 2-20 clicks without them), AVX-512's 32 can. */

/* B (<= BLOCK, a compile-time constant) clicks from j on against one tile: the exponents as B
 * chains or pairs of chains (SPLIT_CHAINS), so their FMAs overlap; then the exps, into the mean
 * (acc) and/or the kernel row (kbuf).  negq: minus the tile's own squares (the odd chains' start,
 * or added at the end). */
INLINE void PASTE(clicks_, SFX)(const int B, const int64_t j, const int64_t D, const V *x, const V pt, const V negq,
                                const float *FL, const V *FV, const float *PL, const float *Brow, const float *AL,
                                const V floor2, const int inline_mean, V *acc, V *kbuf) {
    V h[BLOCK], g[BLOCK];
    for (int b = 0; b < B; ++b) {
        h[b] = V_FMA(pt, V_SET1(PL[j + b]), V_SET1(Brow[j + b]));
        g[b] = negq;
    }
    for (int64_t d = 0; d < D; ++d)
        for (int b = 0; b < B; ++b) {
            const V t = BROADCAST_TABLE ? FV[(j + b) * D + d] : V_SET1(FL[(j + b) * D + d]);
            if (SPLIT_CHAINS && (d & 1)) g[b] = V_FMA(x[d], t, g[b]); else h[b] = V_FMA(x[d], t, h[b]);
        }
    for (int b = 0; b < B; ++b) {
        const V k = V_EXP2(V_MAX(SPLIT_CHAINS ? V_ADD(h[b], g[b]) : V_ADD(h[b], negq), floor2));
        if (inline_mean) acc[b & 1] = V_FMA(V_SET1(AL[j + b]), k, acc[b & 1]);
        if (kbuf) kbuf[j + b] = k;
    }
}

/* Dfix, Kfix: compile-time D and K where nonzero (K = 1 sums the mean in registers; other K keep
 * the kernel row and take each object's mean from it after the clicks' pass) */
INLINE int PASTE(rbf_box_, SFX)(const int64_t Dfix, const int64_t Kfix, const box_args *a) {
    const int64_t D = Dfix ? Dfix : a->D, K = Kfix ? Kfix : a->K;
    const int ndim = a->ndim, last = ndim - 1;
    const int64_t n = a->n, dz = D + ndim, row_len = a->shape[last];
    const int inline_mean = a->mean && K == 1;
    const int keep_row = a->var || (a->mean && !inline_mean);
    const int64_t np_ = n > 0 ? n : 1;
    float *terms = calloc((size_t)(np_ * (D + K + 3 + ndim) + n * n + 1), sizeof(float));
    V *kbuf = keep_row ? aligned_alloc(sizeof(V), sizeof(V) * (size_t)np_) : NULL;
#if BROADCAST_TABLE
    /* the clicks' feature terms kept as whole vectors: each FMA reads its operand from L1, where a
     * broadcast per FMA would cost an extra instruction (AVX-512 broadcasts inside the FMA) */
    V *FV = aligned_alloc(sizeof(V), sizeof(V) * (size_t)(np_ * D));
#else
    V *FV = NULL;
#endif
    if (!terms || (keep_row && !kbuf) || (BROADCAST_TABLE && !FV)) {
        free(terms);
        free(kbuf);
        free(FV);
        return 2;
    }
    float *FL = terms, *PL = FL + np_ * D, *B0 = PL + np_, *Brow = B0 + np_, *AL = Brow + np_, *LS = AL + np_ * K;
    float *ZL = LS + n * n;  /* the clicks' leading-axis positions, axis by axis (rows vectorise over clicks) */
    /* the last axis measured from the box's middle (a shift of both z and Z keeps distances) */
    const float sc = a->pos_scale[last];
    const float mid = (float)a->origin[last] + 0.5f * (float)(row_len - 1);
    const float zmid = (mid - a->centre[last]) * sc;
    for (int64_t j = 0; j < n; ++j) {
        const float *zj = a->Z + j * dz;
        float f2 = 0.0f;
        for (int64_t d = 0; d < D; ++d) {
            FL[j * D + d] = LOG2E * a->feature_scale * zj[d];
            f2 += zj[d] * zj[d];
        }
        for (int d = 0; d < last; ++d) ZL[d * n + j] = zj[D + d];
        const float pl = zj[D + last] - zmid;
        PL[j] = LOG2E * pl;
        B0[j] = -0.5f * LOG2E * (f2 + pl * pl);
        for (int64_t o = 0; o < K; ++o) AL[j * K + o] = a->outputscale * a->alpha[j * K + o];
    }
    if (BROADCAST_TABLE)
        for (int64_t i = 0; i < n * D; ++i) FV[i] = V_SET1(FL[i]);
    if (a->var)  /* s^2 folded into L^-1, as into alpha: the row is kept as exp's value alone */
        for (int64_t i = 0; i < n * n; ++i) LS[i] = a->outputscale * a->linv[i];
    const V lane = V_LANE();
    const float s2 = a->feature_scale * a->feature_scale;
    const V floor2 = V_SET1(LOG2E * a->floor);
    const int64_t fs = a->fstrides[last], cs = a->fstrides[ndim];
    const size_t esize = a->half ? 2 : 4;
    const VI gidx = V_GATHER_INDEX((int32_t)fs);
    const int64_t mls = a->mean ? a->mean_strides[last] : 0, vls = a->var ? a->var_strides[last] : 0;

    int64_t rows = 1;
    for (int d = 0; d < last; ++d) rows *= a->shape[d];
    int64_t idx[MAX_DIM] = {0};
    V x[Dfix ? Dfix : MAX_INPUTS];
    const char *fnext = a->features;  /* the next row's features: prefetches run on across a row's end */
    for (int64_t row = 0; row < rows; ++row) {
        const char *frow = fnext;
        int64_t moff = 0, voff = 0;
        for (int d = 0; d < last; ++d) {
            if (a->mean) moff += idx[d] * a->mean_strides[d];
            if (a->var) voff += idx[d] * a->var_strides[d];
        }
        fnext = NULL;  /* idx advanced by one row, as the odometer below will */
        if (row + 1 < rows) {
            fnext = a->features;
            int carry = 1;
            for (int d = last - 1; d >= 0; --d) {
                int64_t i = idx[d] + carry;
                carry = i >= a->shape[d];
                fnext += (carry ? 0 : i) * a->fstrides[d] * (int64_t)esize;
            }
        }
        for (int64_t j = 0; j < n; ++j) Brow[j] = B0[j];  /* the leading axes' share of each click's exponent */
        for (int d = 0; d < last; ++d) {
            const float p = ((float)(a->origin[d] + idx[d]) - a->centre[d]) * a->pos_scale[d];
            const float *zl = ZL + d * n;
            for (int64_t j = 0; j < n; ++j) {
                const float t = p - zl[j];
                Brow[j] -= 0.5f * LOG2E * t * t;
            }
        }
        for (int64_t t0 = 0; t0 < row_len; t0 += W) {
            const int64_t lanes = row_len - t0 < W ? row_len - t0 : W;
            const VM m = V_TAIL_MASK(lanes);
            V_LOAD_TILE(D, x, frow + t0 * fs * (int64_t)esize, a->half, fs, cs, m, gidx);
            const int64_t ahead = t0 + PREFETCH_TILES * W;
            if (ahead < row_len)
                V_PREFETCH(D, frow + ahead * fs * (int64_t)esize, fs, cs, esize);
            else if (fnext && ahead - row_len < row_len)
                V_PREFETCH(D, fnext + (ahead - row_len) * fs * (int64_t)esize, fs, cs, esize);
            V f2p[4] = {V_ZERO(), V_ZERO(), V_ZERO(), V_ZERO()};
            for (int64_t d = 0; d < D; ++d) f2p[d & 3] = V_FMA(x[d], x[d], f2p[d & 3]);
            const V f2 = V_ADD(V_ADD(f2p[0], f2p[1]), V_ADD(f2p[2], f2p[3]));
            const V pt = V_MUL(V_ADD(lane, V_SET1((float)(a->origin[last] + t0) - mid)), V_SET1(sc));
            const V negq = V_MUL(V_FMA(pt, pt, V_MUL(f2, V_SET1(s2))), V_SET1(-0.5f * LOG2E));
            V acc[2] = {V_ZERO(), V_ZERO()};  /* two chains: the mean's FMAs overlap, few registers */
            V *row_k = keep_row ? kbuf : NULL;
            int64_t j = 0;
            for (; j + BLOCK <= n; j += BLOCK)
                PASTE(clicks_, SFX)(BLOCK, j, D, x, pt, negq, FL, FV, PL, Brow, AL, floor2, inline_mean, acc, row_k);
            switch (n - j) {  /* the rest as a smaller block: no work on padding */
#define REST_CASE(r) case r: PASTE(clicks_, SFX)(r, j, D, x, pt, negq, FL, FV, PL, Brow, AL, floor2, inline_mean, acc, row_k); break;
                REST_CASE(1) REST_CASE(2) REST_CASE(3)
#undef REST_CASE
            }
            if (a->mean) {
                const int64_t flat = row * row_len + t0;  /* C-order index in the box, for the prior mean */
                for (int64_t o = 0; o < K; ++o) {
                    V v = V_ZERO();
                    if (inline_mean)
                        v = V_ADD(acc[0], acc[1]);
                    else
                        for (int64_t jj = 0; jj < n; ++jj) v = V_FMA(V_SET1(AL[jj * K + o]), kbuf[jj], v);
                    float *out = a->mean + moff + o * a->mean_object_stride + t0 * mls;
                    if (a->m0_stride == 0)
                        v = V_ADD(v, V_SET1(a->m0[o]));
                    else if (a->m0_stride == 1)
                        v = V_ADD(v, V_MASKLOAD(m, a->m0 + flat));
                    else
                        for (int i = 0; i < lanes; ++i) v[i] += a->m0[(flat + i) * a->m0_stride + o];
                    if (mls == 1)
                        V_MASKSTORE(out, m, v);
                    else
                        for (int i = 0; i < lanes; ++i) out[i * mls] = v[i];
                }
            }
            if (a->var) {
                V s = V_ZERO();
                for (int64_t c = 0; c < n; ++c) {  /* v = (s^2 L^-1) exp-row, L^-1 lower triangular */
                    V v = V_ZERO();
                    const float *lc = LS + c * n;
                    for (int64_t jj = 0; jj <= c; ++jj) v = V_FMA(V_SET1(lc[jj]), kbuf[jj], v);
                    s = V_FMA(v, v, s);
                }
                const V w = V_MAX(V_SUB(V_SET1(a->outputscale), s), V_ZERO());
                float *out = a->var + voff + t0 * vls;
                if (vls == 1)
                    V_MASKSTORE(out, m, w);
                else
                    for (int i = 0; i < lanes; ++i) out[i * vls] = w[i];
            }
        }
        for (int d = last - 1; d >= 0; --d) {  /* next row */
            if (++idx[d] < a->shape[d]) break;
            idx[d] = 0;
        }
    }
    free(terms);
    free(kbuf);
    free(FV);
    return 0;
}

/* one instance per D up to 16, for one object and for several; any other D at run time */
#define RBF_INSTANCE(d)                                                                                     \
    static __attribute__((noinline)) int PASTE(PASTE(rbf_box_, d), PASTE(_1_, SFX))(const box_args *a) {  \
        return PASTE(rbf_box_, SFX)(d, 1, a);                                                               \
    }                                                                                                       \
    static __attribute__((noinline)) int PASTE(PASTE(rbf_box_, d), PASTE(_k_, SFX))(const box_args *a) {  \
        return PASTE(rbf_box_, SFX)(d, 0, a);                                                               \
    }
RBF_FOR_D(RBF_INSTANCE)
#undef RBF_INSTANCE
static __attribute__((noinline)) int PASTE(rbf_box_any_, SFX)(const box_args *a) { return PASTE(rbf_box_, SFX)(0, 0, a); }

static int PASTE(rbf_pass_, SFX)(const box_args *a) {
#define RBF_CASE(d) \
    case d: return a->K == 1 ? PASTE(PASTE(rbf_box_, d), PASTE(_1_, SFX))(a) : PASTE(PASTE(rbf_box_, d), PASTE(_k_, SFX))(a);
    switch (a->D) { RBF_FOR_D(RBF_CASE) default: return PASTE(rbf_box_any_, SFX)(a); }
#undef RBF_CASE
}

#undef SFX
#undef BROADCAST_TABLE
#undef SPLIT_CHAINS
#undef W
#undef V
#undef VI
#undef VM
#undef V_ZERO
#undef V_SET1
#undef V_FMA
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_MAX
#undef V_LANE
#undef V_GATHER_INDEX
#undef V_TAIL_MASK
#undef V_MASKLOAD
#undef V_MASKSTORE
#undef V_EXP2
#undef V_LOAD_TILE
#undef V_PREFETCH
