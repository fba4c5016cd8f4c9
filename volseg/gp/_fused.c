/* The posterior over a box of locations in one pass: inputs, kernel row, mean and variance fused.
 *
 *     h_j(x)   = z(x).Z_j - |z(x)|^2/2 - |Z_j|^2/2        (= -|z(x) - Z_j|^2 / 2)
 *     k_j(x)   = kernel(h_j)                              (RBF: s^2 exp(max(h, floor)))
 *     mean(x)  = m0(x) + sum_j alpha_j k_j(x)
 *     var(x)   = s^2 - |L^-1 k(x)|^2
 *
 * z(x) = [features(x) * feature_scale, (index - centre) * pos_scale] is built in registers, so
 * nothing per location but the mean (and variance) is ever written to memory.  The torch path in
 * posterior.py computes the same thing as separate products and passes, bound by writing and
 * re-reading those intermediates: the work per location (at most a few dozen clicks) is too
 * small for BLAS.
 *
 * Locations go 16 at a time along the box's last axis, as one vector of GCC's vector extension:
 * one AVX-512 register, two AVX2 ones or four SSE ones, chosen at load time by target_clones.
 * exp is a polynomial on those vectors (relative error < 2e-7 over the kernel's range).
 *
 * The module is loaded with ctypes, which releases the GIL for the call: Python threads share
 * the chunks of a click and each runs this single-threaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define LANES 16
#define MAX_DIM 8
#define MAX_INPUTS 256
#define MAX_OBJECTS 64

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif
/* helpers are inlined into the cloned entry point: an outlined copy would be compiled once, for
 * the baseline instruction set */
#define INLINE static inline __attribute__((always_inline))

enum { RBF = 0, MATERN12 = 1, MATERN32 = 2, MATERN52 = 3 };

INLINE vf splat(float c) { return (vf){0} + c; }
INLINE vf vmax(vf a, vf b) { vi m = a > b; return (vf)((m & (vi)a) | (~m & (vi)b)); }
INLINE vf vmin(vf a, vf b) { vi m = a < b; return (vf)((m & (vi)a) | (~m & (vi)b)); }

/* e^x for x in [-87, 0]: x = n ln2 + r, |r| <= ln2/2, e^r by its degree-6 Taylor polynomial,
 * 2^n put into the exponent bits.  n is rounded by adding and subtracting 1.5 * 2^23. */
INLINE vf vexp(vf x) {
    vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    vf r = x - n * 0.693145751953125f;
    r -= n * 1.42860682030941723212e-6f;
    vf p = splat(1.0f / 720.0f);
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)e;
}

INLINE vf vsqrt(vf x) {
    vf r;
    for (int i = 0; i < LANES; ++i) r[i] = __builtin_sqrtf(x[i]);  /* one vsqrtps with -fno-math-errno */
    return r;
}

/* k from h = -d^2/2; Matern-nu: r = sqrt(2 nu) d, capped where exp(-r) reaches the floor (as
 * kernels.py does) */
INLINE vf kernel_of(int kind, vf h, float floor, float outputscale) {
    if (kind == RBF)
        return outputscale * vexp(vmax(h, splat(floor)));
    const float nu2 = kind == MATERN12 ? 1.0f : (kind == MATERN32 ? 3.0f : 5.0f);
    vf r = vmin(vsqrt((vmax(-2.0f * h, splat(0.0f)) + 1e-12f) * nu2), splat(-floor));
    vf poly = kind == MATERN12 ? splat(1.0f) : (kind == MATERN32 ? 1.0f + r : 1.0f + r + r * r * (1.0f / 3.0f));
    return outputscale * poly * vexp(-r);
}

/* B training points j0.. against one tile: B independent chains, so the FMA latency overlaps and
 * each input vector is loaded once for all B. */
INLINE void points(int B, int64_t j0, const vf *x, vf half_sq, int64_t dz, int kind, float floor, float outputscale,
                   const float *Z, const float *zhalf, int64_t K, const float *alpha, vf *acc, vf *kbuf) {
    vf h[4];
    if (kind == MATERN12) {
        /* Matern-1/2 has a kink at d = 0, where the expanded square's float32 cancellation
         * (~1e-6 in d^2) would become ~1e-3 in k: sum the differences instead */
        for (int b = 0; b < B; ++b) h[b] = splat(0.0f);
        for (int64_t d = 0; d < dz; ++d)
            for (int b = 0; b < B; ++b) {
                vf t = x[d] - Z[(j0 + b) * dz + d];
                h[b] -= 0.5f * t * t;
            }
    } else {
        for (int b = 0; b < B; ++b) h[b] = -zhalf[j0 + b] - half_sq;
        for (int64_t d = 0; d < dz; ++d)
            for (int b = 0; b < B; ++b) h[b] += x[d] * Z[(j0 + b) * dz + d];
    }
    for (int b = 0; b < B; ++b) {
        vf k = kernel_of(kind, h[b], floor, outputscale);
        for (int64_t o = 0; o < K; ++o) acc[o] += alpha[(j0 + b) * K + o] * k;
        if (kbuf)
            kbuf[j0 + b] = k;
    }
}

/* The kernel row of one tile against all n training points, summed into the mean (acc) and kept
 * in kbuf (n vectors) when the variance is wanted.  x: the tile's dz inputs, one vector each. */
INLINE void tile(const vf *x, int64_t dz, int kind, float floor, float outputscale, int64_t n, const float *Z,
                 const float *zhalf, int64_t K, const float *alpha, vf *acc, vf *kbuf) {
    vf half_sq = {0};
    for (int64_t d = 0; d < dz; ++d) half_sq += 0.5f * x[d] * x[d];
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) points(4, j, x, half_sq, dz, kind, floor, outputscale, Z, zhalf, K, alpha, acc, kbuf);
    for (; j < n; ++j) points(1, j, x, half_sq, dz, kind, floor, outputscale, Z, zhalf, K, alpha, acc, kbuf);
}

/* Whether volseg_posterior_box takes this layout; fused.py asks before choosing this path, so
 * the limits live only here. */
int volseg_posterior_takes(int ndim, int64_t n_inputs, int64_t K, int half) {
#if !defined(__FLT16_MAX__)
    if (half)
        return 0;
#endif
    return ndim >= 1 && ndim <= MAX_DIM && n_inputs <= MAX_INPUTS && K >= 1 && K <= MAX_OBJECTS;
}

/* The portable pass (any kernel, any x86-64 or other target); returns 0, or 1 for a layout
 * volseg_posterior_takes refuses, 2 when out of memory.  feature_strides: ndim + 1, the channel's last. */
VECTOR_CLONES
int volseg_posterior_box_generic(int ndim, const int64_t *shape, const int64_t *origin,
                         const void *features, const int64_t *feature_strides, int64_t n_features, int half,
                         float feature_scale, const float *centre, const float *pos_scale,
                         int kind, float floor, float outputscale,
                         int64_t n, const float *Z, const float *zhalf,
                         int64_t K, const float *alpha, const float *m0, int64_t m0_stride,
                         float *mean, int64_t mean_object_stride, const int64_t *mean_strides,
                         const float *linv, float *var, const int64_t *var_strides) {
    const int64_t dz = n_features + ndim;
    if (!volseg_posterior_takes(ndim, dz, K, half))
        return 1;
    vf *kbuf = NULL;
    if (var && n > 0) {
        kbuf = aligned_alloc(sizeof(vf), sizeof(vf) * (size_t)n);
        if (!kbuf)
            return 2;
    }
    const int64_t last = ndim - 1, row_len = shape[last];
    int64_t rows = 1;
    for (int a = 0; a < last; ++a) rows *= shape[a];
    const size_t esize = half ? 2 : 4;
    vf lane;
    for (int i = 0; i < LANES; ++i) lane[i] = (float)i;

    vf x[MAX_INPUTS];
    vf acc[MAX_OBJECTS];
    int64_t idx[MAX_DIM] = {0};  /* odometer over the leading axes */
    for (int64_t row = 0; row < rows; ++row) {
        const char *frow = (const char *)features;
        int64_t moff = 0, voff = 0;
        for (int a = 0; a < last; ++a) {
            frow += idx[a] * feature_strides[a] * esize;
            if (mean) moff += idx[a] * mean_strides[a];
            if (var) voff += idx[a] * var_strides[a];
        }
        /* positions along the leading axes are constant over the row */
        for (int a = 0; a < last; ++a)
            x[n_features + a] = splat(((float)(origin[a] + idx[a]) - centre[a]) * pos_scale[a]);
        for (int64_t t0 = 0; t0 < row_len; t0 += LANES) {
            const int64_t lanes = row_len - t0 < LANES ? row_len - t0 : LANES;
            /* features, transposed into one vector per input (a gather per input on AVX-512);
             * unused lanes repeat the last location */
            const int64_t fs = feature_strides[last], cs = feature_strides[ndim];
            vi at;
            for (int i = 0; i < LANES; ++i) at[i] = (int32_t)((i < lanes ? i : lanes - 1) * fs);
            const char *ftile = frow + t0 * fs * esize;
#if defined(__FLT16_MAX__)
            if (half)
                for (int64_t d = 0; d < n_features; ++d)
                    for (int i = 0; i < LANES; ++i) x[d][i] = (float)((const _Float16 *)ftile)[at[i] + d * cs];
            else
#endif
                for (int64_t d = 0; d < n_features; ++d)
                    for (int i = 0; i < LANES; ++i) x[d][i] = ((const float *)ftile)[at[i] + d * cs];
            for (int64_t d = 0; d < n_features; ++d) x[d] *= feature_scale;
            x[n_features + last] = ((float)(origin[last] + t0) + lane - centre[last]) * pos_scale[last];

            const int64_t k_out = mean ? K : 0;
            for (int64_t o = 0; o < k_out; ++o) acc[o] = splat(0.0f);
            tile(x, dz, kind, floor, outputscale, n, Z, zhalf, k_out, alpha, acc, kbuf);
            if (mean) {
                const int64_t flat = row * row_len + t0;  /* C-order index in the box, for the prior mean */
                for (int64_t o = 0; o < K; ++o) {
                    float *out = mean + moff + o * mean_object_stride + t0 * mean_strides[last];
                    for (int64_t i = 0; i < lanes; ++i)
                        out[i * mean_strides[last]] = acc[o][i] + m0[(flat + i) * m0_stride + o];
                }
            }
            if (var) {
                vf s = {0};
                for (int64_t c = 0; c < n; ++c) {  /* v = L^-1 k, L^-1 lower triangular */
                    vf v = {0};
                    const float *lc = linv + c * n;
                    for (int64_t j = 0; j <= c; ++j) v += lc[j] * kbuf[j];
                    s += v * v;
                }
                vf w = vmax(outputscale - s, splat(0.0f));
                float *out = var + voff + t0 * var_strides[last];
                for (int64_t i = 0; i < lanes; ++i) out[i * var_strides[last]] = w[i];
            }
        }
        for (int a = last - 1; a >= 0; --a) {  /* next row */
            if (++idx[a] < shape[a]) break;
            idx[a] = 0;
        }
    }
    free(kbuf);
    return 0;
}

/* ---- the AVX-512 RBF pass ---------------------------------------------------------------------
 * The common case (RBF) on CPUs with AVX-512, with intrinsics for what the vector extension cannot
 * say.  Per location and click it costs D + 2 FMAs for the exponent, 8 instructions for the exp and
 * one FMA into the mean (22 for D = 10, against ~30 in the portable pass):
 *  - exp(h) = 2^(h log2e), with log2e folded into the per-click terms so the pass makes h log2e
 *    directly; 2^x = 2^frac(x) 2^floor(x): vreduceps gives the fraction in one instruction, a
 *    degree-5 minimax polynomial 2^frac (relative error 1.6e-7 in float32) and vscalefps applies
 *    2^floor(x), also one instruction.
 *  - |z - Z_j|^2 = |f - F_j|^2 + (leading axes: constant along a row, made once per row and click)
 *    + (p - P_j)^2 along the row; the squares of f and p are once per tile, not per click.  Row
 *    positions are measured from the box's middle, which keeps the expanded square's float32
 *    cancellation small.
 *  - features load as whole vectors where the row is contiguous in memory (channel-first storage,
 *    float16 through vcvtph2ps), else by one gather per channel (float16: one per channel pair).
 *  - D (<= 16) is a compile-time constant, so a tile's features stay in registers. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HAVE_AVX512_PASS 1
#include <immintrin.h>

typedef struct {
    int ndim;
    const int64_t *shape, *origin;
    const char *features;
    const int64_t *fstrides;
    int64_t D;
    int half;
    float feature_scale;
    const float *centre, *pos_scale;
    float floor, outputscale;
    int64_t n;
    const float *Z;
    int64_t K;
    const float *alpha, *m0;
    int64_t m0_stride;
    float *mean;
    int64_t mean_object_stride;
    const int64_t *mean_strides;
    const float *linv;
    float *var;
    const int64_t *var_strides;
} box_args;

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")

#define LOG2E 1.44269504088896341f
#define BLOCK 4 /* clicks per pass: independent chains that overlap their FMA latency */

/* 2^x for x >= -126: the fraction's polynomial (minimax on [0, 1)), scaled by 2^floor(x) */
INLINE __m512 exp2_512(__m512 x) {
    const __m512 r = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_set1_ps(1.8775767e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.9893406e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.5826318e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4015361e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.9315308e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.9999994e-1f));
    return _mm512_scalef_ps(p, x);
}

/* the D features of one tile (lanes outside m are 0): fs, cs the location and channel strides */
INLINE void load_tile(const int64_t D, __m512 *x, const char *ftile, int half, int64_t fs, int64_t cs, __mmask16 m,
                      __m512i gidx) {
    if (fs == 1) {  /* channel-first: each channel's row is contiguous */
        if (half)
            for (int64_t d = 0; d < D; ++d)
                x[d] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const int16_t *)ftile + d * cs));
        else
            for (int64_t d = 0; d < D; ++d) x[d] = _mm512_maskz_loadu_ps(m, (const float *)ftile + d * cs);
    } else if (!half) {
        for (int64_t d = 0; d < D; ++d)
            x[d] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, gidx, (const float *)ftile + d * cs, 4);
    } else if (cs == 1 && D >= 2) {
        /* channels-last float16: one 32-bit gather brings channels d and d + 1 (an odd last channel
         * comes as the high half of the pair before it, so no read goes past the row) */
        for (int64_t d = 0; d < D; d += 2) {
            const int64_t d0 = d + 1 < D ? d : d - 1;
            const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, gidx, (const int16_t *)ftile + d0, 2);
            if (d0 == d)
                x[d] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
            x[d0 + 1] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
        }
    } else {  /* float16, any other strides: element by element */
        for (int64_t d = 0; d < D; ++d) {
            int16_t t[16] = {0};
            for (int i = 0; i < 16; ++i)
                if (m >> i & 1) t[i] = ((const int16_t *)ftile)[i * fs + d * cs];
            x[d] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)t));
        }
    }
}

/* The features PREFETCH_TILES tiles ahead are asked for now: the pass streams them once, and a
 * click's few FMAs per byte leave the hardware prefetcher too little time to hide memory latency */
#define PREFETCH_TILES 8
INLINE void prefetch_ahead(const int64_t D, const char *ftile, int64_t fs, int64_t cs, size_t esize) {
    if (fs == 1)  /* channel-first: one line per channel covers the tile's 16 (float32) or 32 (float16) */
        for (int64_t d = 0; d < D; ++d) _mm_prefetch(ftile + d * cs * (int64_t)esize, _MM_HINT_T0);
    else if (cs == 1)  /* channels-last: the tile's contiguous run of 16 locations */
        for (int64_t b = 0; b < 16 * fs * (int64_t)esize; b += 64) _mm_prefetch(ftile + b, _MM_HINT_T0);
}

/* Dfix, Kfix: compile-time D and K where nonzero (K = 1 sums the mean in registers; other K keep
 * the kernel row and take each object's mean from it after the clicks' pass) */
INLINE int rbf_box(const int64_t Dfix, const int64_t Kfix, const box_args *a) {
    const int64_t D = Dfix ? Dfix : a->D, K = Kfix ? Kfix : a->K;
    const int ndim = a->ndim, last = ndim - 1;
    const int64_t n = a->n, dz = D + ndim, row_len = a->shape[last];
    const int inline_mean = a->mean && K == 1;
    const int keep_row = a->var || (a->mean && !inline_mean);
    /* clicks padded to whole blocks (zero weight, exponent at the floor): a lone remainder click
     * would run one latency-bound chain, as slow as a block of four */
    const int64_t np_ = (n + BLOCK - 1) / BLOCK * BLOCK;
    float *terms = calloc((size_t)(np_ * (D + K + 3) + n * n + 1), sizeof(float));
    __m512 *kbuf = keep_row ? aligned_alloc(64, 64 * (size_t)np_) : NULL;
    if (!terms || (keep_row && !kbuf)) {
        free(terms);
        free(kbuf);
        return 2;
    }
    float *FL = terms, *PL = FL + np_ * D, *B0 = PL + np_, *Brow = B0 + np_, *AL = Brow + np_, *LS = AL + np_ * K;
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
        const float pl = zj[D + last] - zmid;
        PL[j] = LOG2E * pl;
        B0[j] = -0.5f * LOG2E * (f2 + pl * pl);
        for (int64_t o = 0; o < K; ++o) AL[j * K + o] = a->outputscale * a->alpha[j * K + o];
    }
    for (int64_t j = n; j < np_; ++j) B0[j] = Brow[j] = -1e30f;  /* Brow's padding is never rewritten */
    if (a->var)  /* s^2 folded into L^-1, as into alpha: the row is kept as exp's value alone */
        for (int64_t i = 0; i < n * n; ++i) LS[i] = a->outputscale * a->linv[i];
    const __m512 lane = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const float s2 = a->feature_scale * a->feature_scale;
    const __m512 floor2 = _mm512_set1_ps(LOG2E * a->floor);
    const int64_t fs = a->fstrides[last], cs = a->fstrides[ndim];
    const size_t esize = a->half ? 2 : 4;
    const __m512i gidx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int32_t)fs));
    const int64_t mls = a->mean ? a->mean_strides[last] : 0, vls = a->var ? a->var_strides[last] : 0;

    int64_t rows = 1;
    for (int d = 0; d < last; ++d) rows *= a->shape[d];
    int64_t idx[MAX_DIM] = {0};
    __m512 x[Dfix ? Dfix : MAX_INPUTS];
    for (int64_t row = 0; row < rows; ++row) {
        const char *frow = a->features;
        int64_t moff = 0, voff = 0;
        for (int d = 0; d < last; ++d) {
            frow += idx[d] * a->fstrides[d] * (int64_t)esize;
            if (a->mean) moff += idx[d] * a->mean_strides[d];
            if (a->var) voff += idx[d] * a->var_strides[d];
        }
        for (int64_t j = 0; j < n; ++j) {  /* the leading axes' share of each click's exponent */
            float s = 0.0f;
            for (int d = 0; d < last; ++d) {
                const float t = ((float)(a->origin[d] + idx[d]) - a->centre[d]) * a->pos_scale[d] - a->Z[j * dz + D + d];
                s += t * t;
            }
            Brow[j] = B0[j] - 0.5f * LOG2E * s;
        }
        for (int64_t t0 = 0; t0 < row_len; t0 += 16) {
            const int64_t lanes = row_len - t0 < 16 ? row_len - t0 : 16;
            const __mmask16 m = (__mmask16)((1u << lanes) - 1u);
            load_tile(D, x, frow + t0 * fs * (int64_t)esize, a->half, fs, cs, m, gidx);
            prefetch_ahead(D, frow + (t0 + PREFETCH_TILES * 16) * fs * (int64_t)esize, fs, cs, esize);
            __m512 f2 = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; ++d) f2 = _mm512_fmadd_ps(x[d], x[d], f2);
            const __m512 pt = _mm512_mul_ps(_mm512_add_ps(lane, _mm512_set1_ps((float)(a->origin[last] + t0) - mid)),
                                            _mm512_set1_ps(sc));
            const __m512 q = _mm512_mul_ps(_mm512_fmadd_ps(pt, pt, _mm512_mul_ps(f2, _mm512_set1_ps(s2))),
                                           _mm512_set1_ps(0.5f * LOG2E));
            __m512 acc[BLOCK];
            for (int b = 0; b < BLOCK; ++b) acc[b] = _mm512_setzero_ps();
            int64_t j = 0;
            for (; j < np_; j += BLOCK) {
                __m512 h[BLOCK];
                for (int b = 0; b < BLOCK; ++b)
                    h[b] = _mm512_fmadd_ps(pt, _mm512_set1_ps(PL[j + b]), _mm512_sub_ps(_mm512_set1_ps(Brow[j + b]), q));
                for (int64_t d = 0; d < D; ++d)
                    for (int b = 0; b < BLOCK; ++b) h[b] = _mm512_fmadd_ps(x[d], _mm512_set1_ps(FL[(j + b) * D + d]), h[b]);
                for (int b = 0; b < BLOCK; ++b) {
                    const __m512 k = exp2_512(_mm512_max_ps(h[b], floor2));
                    if (inline_mean) acc[b] = _mm512_fmadd_ps(_mm512_set1_ps(AL[j + b]), k, acc[b]);
                    if (keep_row) kbuf[j + b] = k;
                }
            }
            if (a->mean) {
                const int64_t flat = row * row_len + t0;  /* C-order index in the box, for the prior mean */
                for (int64_t o = 0; o < K; ++o) {
                    __m512 v = _mm512_setzero_ps();
                    if (inline_mean)
                        for (int b = 0; b < BLOCK; ++b) v = _mm512_add_ps(v, acc[b]);
                    else
                        for (int64_t jj = 0; jj < n; ++jj) v = _mm512_fmadd_ps(_mm512_set1_ps(AL[jj * K + o]), kbuf[jj], v);
                    float *out = a->mean + moff + o * a->mean_object_stride + t0 * mls;
                    if (a->m0_stride == 0)
                        v = _mm512_add_ps(v, _mm512_set1_ps(a->m0[o]));
                    else if (a->m0_stride == 1)
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, a->m0 + flat));
                    else
                        for (int i = 0; i < lanes; ++i) v[i] += a->m0[(flat + i) * a->m0_stride + o];
                    if (mls == 1)
                        _mm512_mask_storeu_ps(out, m, v);
                    else
                        for (int i = 0; i < lanes; ++i) out[i * mls] = v[i];
                }
            }
            if (a->var) {
                __m512 s = _mm512_setzero_ps();
                for (int64_t c = 0; c < n; ++c) {  /* v = (s^2 L^-1) exp-row, L^-1 lower triangular */
                    __m512 v = _mm512_setzero_ps();
                    const float *lc = LS + c * n;
                    for (int64_t jj = 0; jj <= c; ++jj) v = _mm512_fmadd_ps(_mm512_set1_ps(lc[jj]), kbuf[jj], v);
                    s = _mm512_fmadd_ps(v, v, s);
                }
                const __m512 w = _mm512_max_ps(_mm512_sub_ps(_mm512_set1_ps(a->outputscale), s), _mm512_setzero_ps());
                float *out = a->var + voff + t0 * vls;
                if (vls == 1)
                    _mm512_mask_storeu_ps(out, m, w);
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
    return 0;
}

/* one instance per D up to 16, for one object and for several; any other D at run time */
#define RBF_FOR_D(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16)
#define RBF_INSTANCE(d) \
    static __attribute__((noinline)) int rbf_box_##d##_1(const box_args *a) { return rbf_box(d, 1, a); } \
    static __attribute__((noinline)) int rbf_box_##d##_k(const box_args *a) { return rbf_box(d, 0, a); }
RBF_FOR_D(RBF_INSTANCE)
static __attribute__((noinline)) int rbf_box_any(const box_args *a) { return rbf_box(0, 0, a); }

static int rbf_box_avx512(const box_args *a) {
#define RBF_CASE(d) case d: return a->K == 1 ? rbf_box_##d##_1(a) : rbf_box_##d##_k(a);
    switch (a->D) { RBF_FOR_D(RBF_CASE) default: return rbf_box_any(a); }
#undef RBF_CASE
}
#pragma GCC pop_options

static int avx512_on = -1;  /* -1: not asked yet */

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
#endif

/* Whether the AVX-512 RBF pass runs where it applies: want 0 turns it off (tests compare the two
 * passes), 1 on where the CPU has it, -1 only asks.  Returns the state now. */
int volseg_fused_avx512(int want) {
#ifdef HAVE_AVX512_PASS
    if (avx512_on < 0 || want >= 0)
        avx512_on = want != 0 && cpu_has_avx512();
    return avx512_on;
#else
    (void)want;
    return 0;
#endif
}

/* The entry point: the AVX-512 pass for RBF where it can run, else the portable one.  Returns 0,
 * 1 for a layout volseg_posterior_takes refuses, 2 when out of memory.  feature_strides: ndim + 1
 * (in elements), the channel's last. */
int volseg_posterior_box(int ndim, const int64_t *shape, const int64_t *origin,
                         const void *features, const int64_t *feature_strides, int64_t n_features, int half,
                         float feature_scale, const float *centre, const float *pos_scale,
                         int kind, float floor, float outputscale,
                         int64_t n, const float *Z, const float *zhalf,
                         int64_t K, const float *alpha, const float *m0, int64_t m0_stride,
                         float *mean, int64_t mean_object_stride, const int64_t *mean_strides,
                         const float *linv, float *var, const int64_t *var_strides) {
#ifdef HAVE_AVX512_PASS
    const int64_t fs = feature_strides[ndim - 1 < 0 ? 0 : ndim - 1];
    if (kind == RBF && n > 0 && volseg_fused_avx512(-1) && volseg_posterior_takes(ndim, n_features + ndim, K, half) &&
        fs < (1 << 26) && fs > -(1 << 26)) {  /* the gather's 32-bit offsets */
        const box_args a = {ndim, shape, origin, features, feature_strides, n_features, half, feature_scale, centre,
                            pos_scale, floor, outputscale, n, Z, K, alpha, m0, m0_stride, mean, mean_object_stride,
                            mean_strides, linv, var, var_strides};
        return rbf_box_avx512(&a);
    }
#endif
    return volseg_posterior_box_generic(ndim, shape, origin, features, feature_strides, n_features, half, feature_scale,
                                        centre, pos_scale, kind, floor, outputscale, n, Z, zhalf, K, alpha, m0,
                                        m0_stride, mean, mean_object_stride, mean_strides, linv, var, var_strides);
}

/* An importable module, so the build and the package find it like any extension; the work is
 * done through ctypes (volseg/gp/fused.py), which needs no Python objects and drops the GIL. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", "Fused posterior evaluation (see fused.py).", -1,
                                    NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
