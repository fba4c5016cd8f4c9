/* The posterior over a box of locations in one pass: inputs, kernel row, mean and variance fused.
 *
 *     h_j(x)   = z(x).Z_j - |z(x)|^2/2 - |Z_j|^2/2        (= -|z(x) - Z_j|^2 / 2)
 *     k_j(x)   = kernel(h_j)                              (RBF: s^2 exp(max(h, floor)))
 *     mean(x)  = m0(x) + sum_j alpha_j k_j(x)
 *     var(x)   = s^2 - |L^-1 k(x)|^2
 *
 * z(x) = [features(x) * feature_scale, (index - centre) * pos_scale] is built in registers, so
 * nothing per location but the mean (and variance) is ever written to memory.  The torch path in
 * posterior.py computes the same thing as separate products and passes; this is ~5-10x faster on
 * a CPU because the work per location (at most a few dozen clicks) is too small for BLAS.
 *
 * Locations go 16 at a time along the box's last axis (one AVX-512 register, or two AVX2 ones);
 * every inner loop runs over those 16 lanes, and gcc vectorises it for the CPU it runs on
 * (target_clones picks the widest instruction set at load time).  exp is a polynomial that
 * vectorises, accurate to 2 ulp over the kernel's range [floor, 0].
 *
 * The module is loaded with ctypes, which releases the GIL for the call: Python threads share
 * the chunks of a click and each runs this single-threaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define MAX_DIM 8
#define MAX_INPUTS 256

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

enum { RBF = 0, MATERN12 = 1, MATERN32 = 2, MATERN52 = 3 };

/* e^x for x in [-87, 88]: x = n ln2 + r, |r| <= ln2/2, e^r by its degree-6 Taylor polynomial
 * (relative error < 2e-7), 2^n put into the exponent bits. */
static inline float max_f(float a, float b) { return a > b ? a : b; }  /* fmaxf's NaN rules keep it scalar */
static inline float min_f(float a, float b) { return a < b ? a : b; }

static inline float exp_poly(float x) {
    /* round to nearest by the 1.5 * 2^23 trick: roundevenf has no vector form in gcc 12 */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f;
    r -= n * 1.42860682030941723212e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};  /* a union, not memcpy: it vectorises */
    return p * scale.f;
}

/* k from h = -d^2/2 over the lanes; one loop per kernel, so each vectorises without branches. */
static inline void kernel_row(int kind, const float *h, float floor, float outputscale, float *k) {
    if (kind == RBF) {
        for (int i = 0; i < LANES; ++i) k[i] = outputscale * exp_poly(max_f(h[i], floor));
        return;
    }
    /* Matern-nu: r = sqrt(2 nu) d, capped where exp(-r) reaches the floor (as kernels.py does) */
    const float nu2 = kind == MATERN12 ? 1.0f : (kind == MATERN32 ? 3.0f : 5.0f);
    const float c1 = kind == MATERN12 ? 0.0f : 1.0f, c2 = kind == MATERN52 ? 1.0f / 3.0f : 0.0f;
    for (int i = 0; i < LANES; ++i) {
        float r = min_f(sqrtf((max_f(-2.0f * h[i], 0.0f) + 1e-12f) * nu2), -floor);
        k[i] = outputscale * (1.0f + c1 * r + c2 * r * r) * exp_poly(-r);
    }
}

/* One tile of up to LANES locations along the last axis.  x: (dz, LANES) transposed inputs;
 * kbuf: (n, LANES) scratch for the kernel row when the variance is wanted. */
static inline void tile(int64_t lanes, int64_t dz, const float x[][LANES], int kind, float floor, float outputscale,
                        int64_t n, const float *Z, const float *zhalf, int64_t K, const float *alpha,
                        float acc[][LANES], float (*kbuf)[LANES]) {
    float half_sq[LANES] = {0};
    for (int64_t d = 0; d < dz; ++d)
        for (int i = 0; i < LANES; ++i) half_sq[i] += 0.5f * x[d][i] * x[d][i];
    for (int64_t j = 0; j < n; ++j) {
        const float *zj = Z + j * dz;
        float h[LANES];
        if (kind == MATERN12) {
            /* Matern-1/2 has a kink at d = 0, where the expanded square's float32 cancellation
             * (~1e-6 in d^2) would become ~1e-3 in k: sum the differences instead */
            for (int i = 0; i < LANES; ++i) h[i] = 0.0f;
            for (int64_t d = 0; d < dz; ++d) {
                float c = zj[d];
                for (int i = 0; i < LANES; ++i) h[i] -= 0.5f * (x[d][i] - c) * (x[d][i] - c);
            }
        } else {
            for (int i = 0; i < LANES; ++i) h[i] = -zhalf[j] - half_sq[i];
            for (int64_t d = 0; d < dz; ++d) {
                float c = zj[d];
                for (int i = 0; i < LANES; ++i) h[i] += x[d][i] * c;
            }
        }
        float k[LANES];
        kernel_row(kind, h, floor, outputscale, k);
        for (int64_t o = 0; o < K; ++o) {
            float a = alpha[j * K + o];
            for (int i = 0; i < LANES; ++i) acc[o][i] += a * k[i];
        }
        if (kbuf)
            memcpy(kbuf[j], k, sizeof k);
    }
    (void)lanes;
}

/* Returns 0, or 1 for a shape this kernel does not take (the caller then uses the torch path),
 * 2 when out of memory. */
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
    if (ndim < 1 || ndim > MAX_DIM || dz > MAX_INPUTS || K > 64 || (mean && K < 1))
        return 1;
#if !defined(__FLT16_MAX__)
    if (half)
        return 1;
#endif
    float (*kbuf)[LANES] = NULL;
    if (var && n > 0) {
        kbuf = malloc(sizeof(float[LANES]) * (size_t)n);
        if (!kbuf)
            return 2;
    }
    const int64_t last = ndim - 1, row_len = shape[last];
    int64_t rows = 1;
    for (int a = 0; a < last; ++a) rows *= shape[a];

    float x[MAX_INPUTS][LANES];
    float acc[64][LANES];
    int64_t idx[MAX_DIM] = {0};  /* odometer over the leading axes */
    for (int64_t row = 0; row < rows; ++row) {
        const char *frow = (const char *)features;
        int64_t moff = 0, voff = 0;
        for (int a = 0; a < last; ++a) {
            frow += idx[a] * feature_strides[a] * (half ? 2 : 4);
            if (mean) moff += idx[a] * mean_strides[a];
            if (var) voff += idx[a] * var_strides[a];
        }
        for (int64_t t0 = 0; t0 < row_len; t0 += LANES) {
            const int64_t lanes = row_len - t0 < LANES ? row_len - t0 : LANES;
            /* inputs, transposed: features then positions; unused lanes repeat the last location */
            for (int i = 0; i < LANES; ++i) {
                int64_t t = t0 + (i < lanes ? i : lanes - 1);
                const char *f = frow + t * feature_strides[last] * (half ? 2 : 4);
#if defined(__FLT16_MAX__)
                if (half)
                    for (int64_t d = 0; d < n_features; ++d) x[d][i] = (float)((const _Float16 *)f)[d] * feature_scale;
                else
#endif
                    for (int64_t d = 0; d < n_features; ++d) x[d][i] = ((const float *)f)[d] * feature_scale;
                for (int a = 0; a < last; ++a)
                    x[n_features + a][i] = ((float)(origin[a] + idx[a]) - centre[a]) * pos_scale[a];
                x[n_features + last][i] = ((float)(origin[last] + t) - centre[last]) * pos_scale[last];
            }
            const int64_t k_out = mean ? K : 0;
            for (int64_t o = 0; o < k_out; ++o)
                for (int i = 0; i < LANES; ++i) acc[o][i] = 0.0f;
            tile(lanes, dz, (const float(*)[LANES])x, kind, floor, outputscale, n, Z, zhalf, k_out, alpha, acc, kbuf);
            if (mean) {
                const int64_t flat = row * row_len + t0;  /* C-order index in the box, for the prior mean */
                for (int64_t o = 0; o < K; ++o) {
                    float *out = mean + moff + o * mean_object_stride + t0 * mean_strides[last];
                    for (int64_t i = 0; i < lanes; ++i)
                        out[i * mean_strides[last]] = acc[o][i] + m0[(flat + i) * m0_stride + o];
                }
            }
            if (var) {
                float s[LANES] = {0};
                for (int64_t c = 0; c < n; ++c) {  /* v = L^-1 k, L^-1 lower triangular */
                    float v[LANES] = {0};
                    const float *lc = linv + c * n;
                    for (int64_t j = 0; j <= c; ++j) {
                        float l = lc[j];
                        for (int i = 0; i < LANES; ++i) v[i] += l * kbuf[j][i];
                    }
                    for (int i = 0; i < LANES; ++i) s[i] += v[i] * v[i];
                }
                float *out = var + voff + t0 * var_strides[last];
                for (int64_t i = 0; i < lanes; ++i) {
                    float w = outputscale - s[i];
                    out[i * var_strides[last]] = w > 0.0f ? w : 0.0f;
                }
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
