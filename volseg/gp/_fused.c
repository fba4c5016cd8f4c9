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

/* Returns 0, or 1 for a layout volseg_posterior_takes refuses, 2 when out of memory. */
VECTOR_CLONES
int volseg_posterior_box(int ndim, const int64_t *shape, const int64_t *origin,
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
            const int64_t fs = feature_strides[last];
            vi at;
            for (int i = 0; i < LANES; ++i) at[i] = (int32_t)((i < lanes ? i : lanes - 1) * fs);
            const char *ftile = frow + t0 * fs * esize;
#if defined(__FLT16_MAX__)
            if (half)
                for (int64_t d = 0; d < n_features; ++d)
                    for (int i = 0; i < LANES; ++i) x[d][i] = (float)((const _Float16 *)ftile)[at[i] + d];
            else
#endif
                for (int64_t d = 0; d < n_features; ++d)
                    for (int i = 0; i < LANES; ++i) x[d][i] = ((const float *)ftile)[at[i] + d];
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

/* An importable module, so the build and the package find it like any extension; the work is
 * done through ctypes (volseg/gp/fused.py), which needs no Python objects and drops the GIL. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", "Fused posterior evaluation (see fused.py).", -1,
                                    NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
