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
 * The module is loaded with ctypes, which releases the GIL for the call; the chunks of a click
 * are shared by threads of the extension's own (volseg_posterior_region).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define MAX_DIM 8
#define MAX_INPUTS 256
#define MAX_OBJECTS 64
#define MAX_THREADS 256

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

/* One box's arguments.  shape, origin: the box (origin indexes the whole map, for positions);
 * features, mean, var: the box's first location in its map; fstrides: ndim + 1 (in elements, the
 * channel's last); m0: one row of K (m0_stride 0) or the box's locations in C order (K). */
typedef struct {
    int ndim;
    const int64_t *shape, *origin;
    const char *features;
    const int64_t *fstrides;
    int64_t D;
    int half;
    float feature_scale;
    const float *centre, *pos_scale;
    int kind;
    float floor, outputscale;
    int64_t n;
    const float *Z, *zhalf;
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

/* Whether volseg_posterior_region takes this layout; fused.py asks before choosing this path, so
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

/* ---- the intrinsics RBF passes -----------------------------------------------------------------
 * The common case (RBF) with intrinsics for what the vector extension cannot say, one body
 * (_fused_rbf.h, which says what a location and click cost) compiled for AVX-512 and for AVX2 +
 * FMA, chosen at run time; the portable pass's run-time D keeps the features in memory instead.
 * Features load as whole vectors where a channel's row is contiguous (channel-first storage,
 * float16 through vcvtph2ps), else by one gather per channel. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HAVE_SIMD_PASSES 1
#include <immintrin.h>

#define LOG2E 1.44269504088896341f
/* The features PREFETCH_TILES tiles ahead are asked for now: the pass streams them once, and a
 * click's few FMAs per byte leave the hardware prefetcher too little time to hide memory latency */
#define PREFETCH_TILES 8
#define PASTE_(a, b) a##b
#define PASTE(a, b) PASTE_(a, b)
#define RBF_FOR_D(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16)
#define BLOCK 4 /* clicks per pass: independent chains that overlap the FMA latency (the RBF pass's
                 * remainder cases, 1-3, assume 4) */
/* 2^r for r in [0, 1): degree-5 minimax polynomial (relative error 1.6e-7), Horner's rule in the
 * FMA and broadcast of the instruction set at hand */
#define EXP2_FRACTION(FMA, SET1, r)                                                                      \
    FMA(FMA(FMA(FMA(FMA(SET1(1.8775767e-3f), r, SET1(8.9893406e-3f)), r, SET1(5.5826318e-2f)), r,       \
                SET1(2.4015361e-1f)), r, SET1(6.9315308e-1f)), r, SET1(9.9999994e-1f))

/* a prefetch per cache line of one tile (lanes locations): a line per channel (channel-first),
 * or the tile's contiguous run of locations (channels-last) */
INLINE void prefetch_tile(const int64_t D, const char *ftile, int64_t fs, int64_t cs, size_t esize, int lanes) {
    if (fs == 1)
        for (int64_t d = 0; d < D; ++d) _mm_prefetch(ftile + d * cs * (int64_t)esize, _MM_HINT_T0);
    else if (cs == 1)
        for (int64_t b = 0; b < lanes * fs * (int64_t)esize; b += 64) _mm_prefetch(ftile + b, _MM_HINT_T0);
}

/* ---- AVX-512: 16 lanes; exp's fraction and scaling are one instruction each (vreduceps, vscalefps) */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")

/* 2^x for x >= -126: the fraction's polynomial, scaled by 2^floor(x) */
INLINE __m512 exp2_512(__m512 x) {
    const __m512 r = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    return _mm512_scalef_ps(EXP2_FRACTION(_mm512_fmadd_ps, _mm512_set1_ps, r), x);
}

/* the D features of one tile (lanes outside m are 0): fs, cs the location and channel strides */
INLINE void load_tile_512(const int64_t D, __m512 *x, const char *ftile, int half, int64_t fs, int64_t cs,
                          __mmask16 m, __m512i gidx) {
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

#define SFX avx512
#define SPLIT_CHAINS 1
#define BROADCAST_TABLE 0
#define W 16
#define V __m512
#define VI __m512i
#define VM __mmask16
#define V_ZERO() _mm512_setzero_ps()
#define V_SET1 _mm512_set1_ps
#define V_FMA _mm512_fmadd_ps
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MUL _mm512_mul_ps
#define V_MAX _mm512_max_ps
#define V_LANE() _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define V_GATHER_INDEX(fs) \
    _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(fs))
#define V_TAIL_MASK(lanes) ((__mmask16)((1u << (lanes)) - 1u))
#define V_MASKLOAD(m, p) _mm512_maskz_loadu_ps(m, p)
#define V_MASKSTORE(p, m, v) _mm512_mask_storeu_ps(p, m, v)
#define V_EXP2 exp2_512
#define V_LOAD_TILE load_tile_512
#define V_PREFETCH(D, f, fs, cs, es) prefetch_tile(D, f, fs, cs, es, 16)
#include "_fused_rbf.h"
#pragma GCC pop_options

/* ---- AVX2 + FMA: 8 lanes; 2^floor(x) goes into the exponent bits as an integer add */
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

INLINE __m256 exp2_256(__m256 x) {
    const __m256 fl = _mm256_floor_ps(x);
    const __m256 r = _mm256_sub_ps(x, fl);
    const __m256 p = EXP2_FRACTION(_mm256_fmadd_ps, _mm256_set1_ps, r);
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(fl), 23);  /* x >= -126: a normal result */
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

INLINE __m256i tail_mask_256(int64_t lanes) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

INLINE void load_tile_256(const int64_t D, __m256 *x, const char *ftile, int half, int64_t fs, int64_t cs,
                          __m256i m, __m256i gidx) {
    const int mask = _mm256_movemask_ps(_mm256_castsi256_ps(m)), full = mask == 0xff;
    if (fs == 1 && !half) {  /* channel-first float32: each channel's row is contiguous */
        for (int64_t d = 0; d < D; ++d)
            x[d] = full ? _mm256_loadu_ps((const float *)ftile + d * cs) : _mm256_maskload_ps((const float *)ftile + d * cs, m);
    } else if (fs == 1 && full) {  /* channel-first float16, a whole tile */
        for (int64_t d = 0; d < D; ++d)
            x[d] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const int16_t *)ftile + d * cs)));
    } else if (!half) {
        for (int64_t d = 0; d < D; ++d)
            x[d] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), (const float *)ftile + d * cs, gidx,
                                            _mm256_castsi256_ps(m), 4);
    } else {  /* float16 channels-last, or a partial tile: element by element */
        for (int64_t d = 0; d < D; ++d) {
            int16_t t[8] = {0};
            for (int i = 0; i < 8; ++i)
                if (mask >> i & 1) t[i] = ((const int16_t *)ftile)[i * fs + d * cs];
            x[d] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
        }
    }
}

#define SFX avx2
#define SPLIT_CHAINS 0
#define BROADCAST_TABLE 1
#define W 8
#define V __m256
#define VI __m256i
#define VM __m256i
#define V_ZERO() _mm256_setzero_ps()
#define V_SET1 _mm256_set1_ps
#define V_FMA _mm256_fmadd_ps
#define V_ADD _mm256_add_ps
#define V_SUB _mm256_sub_ps
#define V_MUL _mm256_mul_ps
#define V_MAX _mm256_max_ps
#define V_LANE() _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)
#define V_GATHER_INDEX(fs) _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(fs))
#define V_TAIL_MASK(lanes) tail_mask_256(lanes)
#define V_MASKLOAD(m, p) _mm256_maskload_ps(p, m)
#define V_MASKSTORE(p, m, v) _mm256_maskstore_ps(p, m, v)
#define V_EXP2 exp2_256
#define V_LOAD_TILE load_tile_256
#define V_PREFETCH(D, f, fs, cs, es) prefetch_tile(D, f, fs, cs, es, 8)
#include "_fused_rbf.h"
#pragma GCC pop_options

/* the widest pass this CPU runs: 512, 256 or 0 (the portable pass only) */
static int cpu_simd_width(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return 512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return 256;
    return 0;
}
#endif

static int simd_width = -1;  /* -1: not asked yet */

/* Which intrinsics RBF pass runs where it applies: want 512 or 256 asks for that width (or the
 * widest below it the CPU has), 0 for the portable pass only (tests compare the passes), -1 only
 * asks.  Returns the width now in use. */
int volseg_fused_simd(int want) {
#ifdef HAVE_SIMD_PASSES
    /* the CPU is asked once, not on every box: this runs for each chunk of a click */
    static int cpu = -1;
    if (simd_width >= 0 && want < 0)
        return simd_width;
    if (cpu < 0)
        cpu = cpu_simd_width();
    simd_width = want < 0 || want >= 512 ? cpu : (want >= 256 && cpu >= 256 ? 256 : 0);
    return simd_width;
#else
    (void)want;
    return 0;
#endif
}

/* One box: an intrinsics pass for RBF where one can run, else the portable one.  Returns 0, 1 for
 * a layout volseg_posterior_takes refuses, 2 when out of memory. */
static int posterior_box(const box_args *a) {
#ifdef HAVE_SIMD_PASSES
    const int64_t fs = a->fstrides[a->ndim - 1 < 0 ? 0 : a->ndim - 1];
    const int width = a->kind == RBF && a->n > 0 ? volseg_fused_simd(-1) : 0;
    if (width && volseg_posterior_takes(a->ndim, a->D + a->ndim, a->K, a->half) &&
        fs < (1 << 26) && fs > -(1 << 26))  /* the gather's 32-bit offsets */
        return width == 512 ? rbf_pass_avx512(a) : rbf_pass_avx2(a);
#endif
    return volseg_posterior_box_generic(a->ndim, a->shape, a->origin, a->features, a->fstrides, a->D, a->half,
                                        a->feature_scale, a->centre, a->pos_scale, a->kind, a->floor, a->outputscale,
                                        a->n, a->Z, a->zhalf, a->K, a->alpha, a->m0, a->m0_stride, a->mean,
                                        a->mean_object_stride, a->mean_strides, a->linv, a->var, a->var_strides);
}

/* ---- a click's region in one call ----------------------------------------------------------------
 * A click re-evaluates a few boxes, cut into chunks so that threads can share them.  Calling the
 * box pass once per chunk from Python threads paid a GIL hand-over per chunk and a thread-pool
 * start per click, a large share of a small click's time.  Here POSIX threads share the chunks:
 * each takes the next one (the caller sorts them largest first) until none is left. */
typedef struct {
    int64_t n_boxes, next;                 /* next: the first chunk no thread has taken */
    const int64_t *starts, *stops;         /* n_boxes x ndim, in the maps' index space */
    const int64_t *m0_rows;                /* each chunk's first row in m0; NULL: m0 is one row */
    box_args map;                          /* the whole maps: each chunk's box_args is made from it */
    int rc;                                /* the return codes of all chunks, or-ed */
} region_args;

static void *region_worker(void *arg) {
    region_args *r = arg;
    const box_args *map = &r->map;
    const int ndim = map->ndim;
    const int64_t esize = map->half ? 2 : 4;
    int64_t shape[MAX_DIM];
    for (;;) {
        const int64_t b = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
        if (b >= r->n_boxes)
            return NULL;
        const int64_t *lo = r->starts + b * ndim, *hi = r->stops + b * ndim;
        int64_t foff = 0, moff = 0, voff = 0;
        for (int a = 0; a < ndim; ++a) {
            shape[a] = hi[a] - lo[a];
            foff += lo[a] * map->fstrides[a];
            if (map->mean) moff += lo[a] * map->mean_strides[a];
            if (map->var) voff += lo[a] * map->var_strides[a];
        }
        box_args box = *map;
        box.shape = shape;
        box.origin = lo;
        box.features += foff * esize;
        if (map->mean) box.mean += moff;
        if (map->var) box.var += voff;
        if (map->m0 && r->m0_rows) {
            box.m0 += r->m0_rows[b] * map->K;
            box.m0_stride = map->K;
        }
        const int rc = posterior_box(&box);
        if (rc)
            __atomic_fetch_or(&r->rc, rc, __ATOMIC_RELAXED);
    }
}

/* The chunks [starts, stops) of one region on `threads` threads (the caller's among them); the
 * maps' pointers are their origins, not the chunk's.  m0_rows NULL: m0 is one row (K values) for
 * every location; else chunk b's prior mean is the m0 rows from m0_rows[b] on, in C order.
 * Returns 0, or the return codes of the chunks or-ed together (1: a layout volseg_posterior_takes
 * refuses, 2: out of memory). */
int volseg_posterior_region(int64_t n_boxes, const int64_t *starts, const int64_t *stops, const int64_t *m0_rows,
                            int threads, int ndim, const void *features, const int64_t *feature_strides,
                            int64_t n_features, int half, float feature_scale, const float *centre,
                            const float *pos_scale, int kind, float floor, float outputscale,
                            int64_t n, const float *Z, const float *zhalf, int64_t K, const float *alpha,
                            const float *m0, float *mean, int64_t mean_object_stride, const int64_t *mean_strides,
                            const float *linv, float *var, const int64_t *var_strides) {
    if (!volseg_posterior_takes(ndim, n_features + ndim, K, half))
        return 1;
    const int64_t origin[MAX_DIM] = {0};
    region_args r = {n_boxes, 0, starts, stops, m0_rows,
                     {ndim, NULL, origin, features, feature_strides, n_features, half, feature_scale, centre,
                      pos_scale, kind, floor, outputscale, n, Z, zhalf, K, alpha, m0, 0, mean, mean_object_stride,
                      mean_strides, linv, var, var_strides},
                     0};
    volseg_fused_simd(-1);  /* asks the CPU now, before threads would race to */
    pthread_t pool[MAX_THREADS];
    int started = 0;
    threads = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);
    if (threads > n_boxes)
        threads = (int)n_boxes;
    while (started < threads - 1 && pthread_create(&pool[started], NULL, region_worker, &r) == 0)
        ++started;  /* a thread that cannot be started leaves its share to the others */
    region_worker(&r);
    for (int t = 0; t < started; ++t)
        pthread_join(pool[t], NULL);
    return r.rc;
}

/* The video GP's kernel values from their exponents, in place (volseg/video/gp.py): k holds h = -d^2/2 for
 * an (n, N) block; each becomes exp(h clipped to [floor, 0]), multiplied, where e_row is given, by the
 * separable spatial factor wg + e_row[rows[i]] * e_col[cols[i]].  As numpy ops this is a clip, an exp,
 * two gathers of (n, N) copies and three passes over them; here it is one pass over k. */
VECTOR_CLONES
void volseg_video_kernel(float *restrict k, int64_t n, int64_t N, const float *restrict e_row,
                         const float *restrict e_col, const int64_t *rows, const int64_t *cols, float wg,
                         float floor) {
    const int64_t body = N - N % LANES;
    for (int64_t i = 0; i < n; ++i) {
        float *restrict ki = k + i * N;
        const float *er = e_row ? e_row + rows[i] * N : NULL;
        const float *ec = e_row ? e_col + cols[i] * N : NULL;
        for (int64_t j = 0; j < N; j += LANES) {
            const int64_t m = j < body ? LANES : N - j;  /* the row's tail: a partly filled vector */
            vf h = splat(0.0f), a = splat(0.0f), b = splat(0.0f);
            memcpy(&h, ki + j, m * sizeof(float));
            vf v = vexp(vmax(vmin(h, splat(0.0f)), splat(floor)));
            if (er) {
                memcpy(&a, er + j, m * sizeof(float));
                memcpy(&b, ec + j, m * sizeof(float));
                v *= wg + a * b;
            }
            memcpy(ki + j, &v, m * sizeof(float));
        }
    }
}

/* An importable module, so the build and the package find it like any extension; the work is
 * done through ctypes (volseg/gp/fused.py), which needs no Python objects and drops the GIL. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", "Fused posterior evaluation (see fused.py).", -1,
                                    NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
