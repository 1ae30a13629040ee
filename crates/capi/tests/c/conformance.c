/*
 * The C conformance suite of fastattn: cblas_sgemm, fa_sgemm, fa_softmax, fa_sdpa (f32 and
 * 16-bit tensors, sinks, an ABI 3 options struct) and its backward pass fa_sdpa_backward,
 * the attention layer with its KV cache (f32 and bf16 weights and caches), the serving
 * calls fa_sdpa_varlen (paged caches, int32/int64 offsets) and fa_paged_kv_write, checked
 * against naive C loops, and every error code. `cargo test -p fastattn-capi --test c_example` builds and runs it; the short
 * example for users is examples/c/demo.c.
 *
 * Build and run by hand (from the repository root):
 *   cargo build --release -p fastattn-capi
 *   cc -O2 -std=c99 crates/capi/tests/c/conformance.c -I crates/capi/include \
 *      target/release/libfastattn_capi.a -lpthread -ldl -lm -o fastattn_conformance
 *   ./fastattn_conformance
 *
 * Exits 0 when every check passes, 1 otherwise (each failure is printed).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastattn.h"

static int checks = 0;
static int failures = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        checks++;                                                          \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, " (last error: %s)\n", fa_last_error());       \
        }                                                                  \
    } while (0)

/* Deterministic data: xorshift32 mapped to [-1, 1). */
static uint32_t rng_state = 0x2545F491u;
static float rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return (float)((rng_state >> 8) * (2.0 / 16777216.0) - 1.0);
}
static float *rnd_buf(size_t n) {
    float *p = malloc(n * sizeof *p);
    if (!p) {
        perror("malloc");
        exit(2);
    }
    for (size_t i = 0; i < n; i++) p[i] = rnd();
    return p;
}
/* ------------------------------------------------ 16-bit element types */

/* float <-> bfloat16 bits. bf16 is the upper half of an IEEE binary32; rounding is to
 * nearest, ties to even (a NaN stays a quiet NaN). */
static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float <-> IEEE binary16 bits, rounding to nearest, ties to even: magnitudes from 65520
 * up become infinity, those below 2^-14 subnormals. */
static uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520: infinity */
    if (a < 0x38800000u) {
        /* Below 2^-14: a count of 2^-24 units (the product is exact), rounded by rintf in
         * the default to-nearest-even mode; 1024 units is the smallest normal, 0x0400. */
        return (uint16_t)(sign | (uint16_t)rintf(fabsf(f) * 16777216.0f));
    }
    a += 0x0fffu + ((a >> 13) & 1u); /* round away the 13 low bits, ties to even */
    return (uint16_t)(sign | ((a - 0x38000000u) >> 13)); /* exponent bias 127 -> 15 */
}
static float f16_to_f32(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v;
    if (e == 0x1f)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexpf((float)m, -24); /* zero or subnormal: m * 2^-24 */
    else
        v = ldexpf((float)(m | 0x400), e - 25); /* (1024 + m) * 2^(e - 15 - 10) */
    return (h & 0x8000u) ? -v : v;
}

/* x rounded to the type `dtype` (an fa_dtype), as a double. */
static double round_to(double x, int32_t dtype) {
    float f = (float)x;
    if (dtype == FA_DTYPE_F16) return f16_to_f32(f32_to_f16(f));
    if (dtype == FA_DTYPE_BF16) return bf16_to_f32(f32_to_bf16(f));
    return f;
}

/* n floats as a new buffer of 16-bit values of `dtype` (their bits). */
static uint16_t *to_16bit(const float *src, size_t n, int32_t dtype) {
    uint16_t *p = malloc(n * sizeof *p);
    if (!p) {
        perror("malloc");
        exit(2);
    }
    for (size_t i = 0; i < n; i++)
        p[i] = dtype == FA_DTYPE_F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
    return p;
}

static void test_conversions(void) {
    CHECK(f32_to_bf16(1.0f) == 0x3f80 && bf16_to_f32(0xbf80) == -1.0f, "bf16 of +-1");
    /* 1 + 2^-8 is halfway between two bf16 values: ties go to the even one. */
    CHECK(f32_to_bf16(1.00390625f) == 0x3f80 && f32_to_bf16(1.01171875f) == 0x3f82,
          "bf16 ties to even");
    CHECK(f32_to_f16(1.0f) == 0x3c00 && f16_to_f32(0xc000) == -2.0f, "f16 of 1 and -2");
    CHECK(f32_to_f16(65504.0f) == 0x7bff && f32_to_f16(65520.0f) == 0x7c00, "f16 range");
    CHECK(f32_to_f16(1.00048828125f) == 0x3c00 && f32_to_f16(1.00146484375f) == 0x3c02,
          "f16 ties to even");
    CHECK(f32_to_f16(5.9604645e-8f) == 0x0001 && f16_to_f32(0x0001) == 5.9604645e-8f,
          "f16 subnormal");
    CHECK(isnan(f16_to_f32(f32_to_f16(NAN))) && isnan(bf16_to_f32(f32_to_bf16(NAN))), "NaN");
}

static double max_abs_diff(const float *a, const double *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* The largest |got - want| in units of the tolerance 1e-5 + u*|want| of an output of
 * `dtype`, u = 2^-11 (f16) or 2^-8 (bf16) bounding half an ulp relative to the value: a
 * result <= 1 passes. */
static double err_16bit(const float *got, const double *want, size_t n, int32_t dtype) {
    double u = dtype == FA_DTYPE_F16 ? 1.0 / 2048 : 1.0 / 256, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)got[i] - want[i]) / (1e-5 + u * fabs(want[i]));
        if (!(r <= m)) m = r; /* NaN propagates */
    }
    return m;
}

/* ---------------------------------------------------------------- GEMM */

/* Element (i, j) of a stored matrix with leading dimension ld. */
static double at(const float *x, int row_major, int ld, int i, int j) {
    return row_major ? x[(size_t)i * ld + j] : x[i + (size_t)j * ld];
}

static void test_cblas_sgemm(void) {
    const int M = 7, N = 5, K = 13;
    const float alpha = 1.5f, beta = 0.5f;
    for (int order = 0; order < 2; order++) {
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                int rm = order == 0;
                /* Stored shapes: A is M x K or (ta) K x M; padded leading dimensions. */
                int a_rows = ta ? K : M, a_cols = ta ? M : K;
                int b_rows = tb ? N : K, b_cols = tb ? K : N;
                int lda = (rm ? a_cols : a_rows) + 3;
                int ldb = (rm ? b_cols : b_rows) + 1;
                int ldc = (rm ? N : M) + 2;
                size_t na = (size_t)lda * (rm ? a_rows : a_cols);
                size_t nb = (size_t)ldb * (rm ? b_rows : b_cols);
                size_t nc = (size_t)ldc * (rm ? M : N);
                float *a = rnd_buf(na), *b = rnd_buf(nb), *c = rnd_buf(nc);
                double *want = malloc(nc * sizeof *want);
                for (size_t i = 0; i < nc; i++) want[i] = c[i]; /* padding must survive */
                for (int i = 0; i < M; i++) {
                    for (int j = 0; j < N; j++) {
                        double s = 0.0;
                        for (int p = 0; p < K; p++) {
                            double x = ta ? at(a, rm, lda, p, i) : at(a, rm, lda, i, p);
                            double y = tb ? at(b, rm, ldb, j, p) : at(b, rm, ldb, p, j);
                            s += x * y;
                        }
                        size_t o = rm ? (size_t)i * ldc + j : i + (size_t)j * ldc;
                        want[o] = alpha * s + beta * (double)c[o];
                    }
                }
                cblas_sgemm(rm ? CblasRowMajor : CblasColMajor, ta ? CblasTrans : CblasNoTrans,
                            tb ? CblasConjTrans : CblasNoTrans, M, N, K, alpha, a, lda, b, ldb,
                            beta, c, ldc);
                double err = max_abs_diff(c, want, nc);
                CHECK(err < 1e-4, "cblas_sgemm order=%s ta=%d tb=%d: max error %g",
                      rm ? "row" : "col", ta, tb, err);
                free(a);
                free(b);
                free(c);
                free(want);
            }
        }
    }

    /* A larger square product that takes the blocked, multi-threaded path. */
    const int n = 160;
    float *a = rnd_buf((size_t)n * n), *b = rnd_buf((size_t)n * n);
    float *c = calloc((size_t)n * n, sizeof *c);
    double *want = malloc((size_t)n * n * sizeof *want);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0.0;
            for (int p = 0; p < n; p++) s += (double)a[i * n + p] * b[p * n + j];
            want[i * n + j] = s;
        }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                n);
    double err = max_abs_diff(c, want, (size_t)n * n);
    CHECK(err < 1e-3, "cblas_sgemm %dx%dx%d: max error %g", n, n, n, err);

    /* Invalid argument: lda < K. C is left alone and the last error names parameter 9. */
    c[0] = 42.0f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n - 1, b, n, 0.0f,
                c, n);
    CHECK(c[0] == 42.0f, "cblas_sgemm with a bad lda wrote C");
    CHECK(strstr(fa_last_error(), "parameter 9") != NULL, "cblas_sgemm bad lda message");
    cblas_sgemm(99, CblasNoTrans, CblasNoTrans, 1, 1, 1, 1.0f, a, 1, b, 1, 0.0f, c, 1);
    CHECK(c[0] == 42.0f && strstr(fa_last_error(), "parameter 1") != NULL,
          "cblas_sgemm with a bad order");
    free(a);
    free(b);
    free(c);
    free(want);
}

static void test_fa_sgemm(void) {
    /* C (5 x 4, column stride 7, row stride 1) = A^T B with A stored 3 x 5 row-major
     * (so A^T has rs = 1, cs = 5) and B 3 x 4 row-major. beta = 0: NaN in C is ignored. */
    const size_t m = 5, k = 3, n = 4;
    float *a = rnd_buf(k * m), *b = rnd_buf(k * n), *c = malloc(7 * n * sizeof(float));
    for (size_t i = 0; i < 7 * n; i++) c[i] = NAN;
    int rc = fa_sgemm(m, k, n, 2.0f, a, 1, 5, b, 4, 1, 0.0f, c, 1, 7);
    CHECK(rc == FA_OK, "fa_sgemm returned %d", rc);
    double worst = 0.0;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double s = 0.0;
            for (size_t p = 0; p < k; p++) s += (double)a[p * m + i] * b[p * n + j];
            double d = fabs(c[i + j * 7] - 2.0 * s);
            if (!(d <= worst)) worst = d;
        }
    CHECK(worst < 1e-5, "fa_sgemm max error %g", worst);
    CHECK(isnan(c[5]) && isnan(c[6]), "fa_sgemm wrote outside the view");

    CHECK(fa_sgemm(m, k, n, 1.0f, NULL, 1, 5, b, 4, 1, 0.0f, c, 1, 7) == FA_ERR_NULL_POINTER,
          "fa_sgemm NULL A");
    /* C whose rows and columns collide (rs = cs = 1) aliases itself. */
    CHECK(fa_sgemm(m, k, n, 1.0f, a, 1, 5, b, 4, 1, 0.0f, c, 1, 1) == FA_ERR_BAD_STRIDE,
          "fa_sgemm self-aliasing C");
    /* C overlapping B. */
    CHECK(fa_sgemm(2, 2, 2, 1.0f, a, 2, 1, b, 2, 1, 0.0f, b, 2, 1) == FA_ERR_BAD_STRIDE,
          "fa_sgemm C overlapping B");
    free(a);
    free(b);
    free(c);
}

/* ------------------------------------------------------------- softmax */

static void test_softmax(void) {
    const size_t rows = 3, len = 37;
    float *x = rnd_buf(rows * len);
    double *want = malloc(rows * len * sizeof *want);
    for (size_t i = 0; i < rows * len; i++) x[i] *= 20.0f;
    for (size_t r = 0; r < rows; r++) {
        double mx = -INFINITY, sum = 0.0;
        for (size_t j = 0; j < len; j++) mx = fmax(mx, x[r * len + j]);
        for (size_t j = 0; j < len; j++) sum += exp(x[r * len + j] - mx);
        for (size_t j = 0; j < len; j++) want[r * len + j] = exp(x[r * len + j] - mx) / sum;
    }
    int rc = fa_softmax(x, rows, len);
    CHECK(rc == FA_OK, "fa_softmax returned %d", rc);
    double err = max_abs_diff(x, want, rows * len);
    CHECK(err < 1e-6, "fa_softmax max error %g", err);
    CHECK(fa_softmax(NULL, 2, 3) == FA_ERR_NULL_POINTER, "fa_softmax NULL");
    CHECK(fa_softmax(NULL, 0, 3) == FA_OK, "fa_softmax of no rows");
    CHECK(fa_softmax(x, SIZE_MAX, 2) == FA_ERR_BAD_SHAPE, "fa_softmax overflowing size");
    free(x);
    free(want);
}

/* ----------------------------------------------------------- attention */

enum { B = 2, HQ = 4, HKV = 2, LQ = 5, LK = 9, D = 16, DV = 8 };

/* A dense [B, H, L, D] view of values of `dtype` (an fa_dtype). */
static fa_tensor tensor_of(void *data, int32_t dtype, size_t b, size_t h, size_t l, size_t d) {
    fa_tensor t = {data,
                   {b, h, l, d},
                   {(ptrdiff_t)(h * l * d), (ptrdiff_t)(l * d), (ptrdiff_t)d, 1},
                   dtype};
    return t;
}
static fa_tensor tensor(float *data, size_t b, size_t h, size_t l, size_t d) {
    return tensor_of(data, FA_DTYPE_F32, b, h, l, d);
}

/* Element [i0, i1, i2, i3] of a tensor of any type, widened. */
static double elem(const fa_tensor *t, size_t i0, size_t i1, size_t i2, size_t i3) {
    ptrdiff_t off = (ptrdiff_t)i0 * t->strides[0] + (ptrdiff_t)i1 * t->strides[1] +
                    (ptrdiff_t)i2 * t->strides[2] + (ptrdiff_t)i3 * t->strides[3];
    switch (t->dtype) {
    case FA_DTYPE_F16:
        return f16_to_f32(((const uint16_t *)t->data)[off]);
    case FA_DTYPE_BF16:
        return bf16_to_f32(((const uint16_t *)t->data)[off]);
    default:
        return ((const float *)t->data)[off];
    }
}

/* The elements of a dense [B, H, L, D] tensor of any type, widened into dst. */
static void widen(const fa_tensor *t, float *dst) {
    size_t n = 0;
    for (size_t a = 0; a < t->dims[0]; a++)
        for (size_t b = 0; b < t->dims[1]; b++)
            for (size_t c = 0; c < t->dims[2]; c++)
                for (size_t d = 0; d < t->dims[3]; d++) dst[n++] = (float)elem(t, a, b, c, d);
}

/* Naive attention with the library's semantics (bottom-right causal, key lengths, additive
 * mask indexed [b|0][h|0][i][j] through strides, GQA), on the widened values of tensors of
 * any type. */
static void sdpa_naive(const fa_tensor *q, const fa_tensor *k, const fa_tensor *v, int causal,
                       const fa_tensor *mask, const int64_t *kv_len, double *out, double *w,
                       double *lse) {
    double scale = 1.0 / sqrt((double)D);
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < HQ; h++)
            for (size_t i = 0; i < LQ; i++) {
                size_t hk = h / (HQ / HKV);
                long n = kv_len ? (long)kv_len[b] : LK;
                long pos = (long)i + n - LQ;
                double s[LK], mx = -INFINITY, sum = 0.0;
                for (size_t j = 0; j < LK; j++) {
                    int visible = (long)j < n && (!causal || (long)j <= pos);
                    double dot = 0.0;
                    for (size_t d = 0; d < D; d++)
                        dot += elem(q, b, h, i, d) * elem(k, b, hk, j, d);
                    s[j] = dot * scale;
                    if (mask) s[j] += elem(mask, b, h, i, j);
                    if (!visible) s[j] = -INFINITY;
                    if (s[j] > mx) mx = s[j];
                }
                size_t row = (b * HQ + h) * LQ + i;
                for (size_t j = 0; j < LK; j++) {
                    s[j] = mx == -INFINITY ? 0.0 : exp(s[j] - mx);
                    sum += s[j];
                }
                if (lse) lse[row] = sum > 0 ? mx + log(sum) : -INFINITY;
                for (size_t j = 0; j < LK; j++) {
                    s[j] = sum > 0 ? s[j] / sum : 0.0;
                    if (w) w[row * LK + j] = s[j];
                }
                for (size_t e = 0; e < DV; e++) {
                    double acc = 0.0;
                    for (size_t j = 0; j < LK; j++) acc += s[j] * elem(v, b, hk, j, e);
                    out[row * DV + e] = acc;
                }
            }
}

static void test_sdpa(void) {
    /* Q in the [B, L, H, D] layout of model code; K, V dense [B, H, L, D]. */
    float *qd = rnd_buf(B * LQ * HQ * D), *kd = rnd_buf(B * HKV * LK * D),
          *vd = rnd_buf(B * HKV * LK * DV);
    fa_tensor q = {qd, {B, HQ, LQ, D}, {LQ * HQ * D, D, HQ * D, 1}, FA_DTYPE_F32};
    fa_tensor k = tensor(kd, B, HKV, LK, D), v = tensor(vd, B, HKV, LK, DV);
    float *od = malloc(B * HQ * LQ * DV * sizeof(float));
    float *wd = malloc(B * HQ * LQ * LK * sizeof(float));
    float lse[B * HQ * LQ];
    fa_tensor out = tensor(od, B, HQ, LQ, DV), w = tensor(wd, B, HQ, LQ, LK);
    double want[B * HQ * LQ * DV], want_w[B * HQ * LQ * LK], want_lse[B * HQ * LQ];

    /* 1. Defaults (opts = NULL). */
    sdpa_naive(&q, &k, &v, 0, NULL, NULL, want, NULL, NULL);
    int rc = fa_sdpa(&q, &k, &v, &out, NULL);
    CHECK(rc == FA_OK, "fa_sdpa(defaults) returned %d", rc);
    double err = max_abs_diff(od, want, B * HQ * LQ * DV);
    CHECK(err < 1e-5, "fa_sdpa(defaults) max error %g", err);

    /* 2. Causal with weights and log-sum-exp. */
    fa_sdpa_options o;
    fa_sdpa_options_init(&o, sizeof o);
    o.causal = 1;
    o.weights = &w;
    o.lse = lse;
    sdpa_naive(&q, &k, &v, 1, NULL, NULL, want, want_w, want_lse);
    rc = fa_sdpa(&q, &k, &v, &out, &o);
    CHECK(rc == FA_OK, "fa_sdpa(causal) returned %d", rc);
    err = max_abs_diff(od, want, B * HQ * LQ * DV);
    CHECK(err < 1e-5, "fa_sdpa(causal) max error %g", err);
    err = max_abs_diff(wd, want_w, B * HQ * LQ * LK);
    CHECK(err < 1e-5, "fa_sdpa(causal) weights max error %g", err);
    err = max_abs_diff(lse, want_lse, B * HQ * LQ);
    CHECK(err < 1e-4, "fa_sdpa(causal) lse max error %g", err);

    /* 3. An additive mask [1, 1, Lq, Lk] broadcast with stride 0, and key lengths. */
    float *md = rnd_buf(LQ * LK);
    md[3] = -INFINITY;
    fa_tensor mask = {md, {1, 1, LQ, LK}, {0, 0, LK, 1}, FA_DTYPE_F32};
    int64_t kv_len[B] = {LK, 6};
    fa_sdpa_options o2;
    fa_sdpa_options_init(&o2, sizeof o2);
    o2.mask = &mask;
    o2.kv_lengths = kv_len;
    sdpa_naive(&q, &k, &v, 0, &mask, kv_len, want, NULL, NULL);
    rc = fa_sdpa(&q, &k, &v, &out, &o2);
    CHECK(rc == FA_OK, "fa_sdpa(mask, kv_lengths) returned %d", rc);
    err = max_abs_diff(od, want, B * HQ * LQ * DV);
    CHECK(err < 1e-5, "fa_sdpa(mask, kv_lengths) max error %g", err);

    /* 4. The same results on 2 threads, and with the scalar kernels. */
    float *again = malloc(B * HQ * LQ * DV * sizeof(float));
    fa_tensor out2 = tensor(again, B, HQ, LQ, DV);
    CHECK(fa_set_num_threads(2) == FA_OK && fa_num_threads() == 2, "fa_set_num_threads(2)");
    rc = fa_sdpa(&q, &k, &v, &out2, &o2);
    err = max_abs_diff(again, want, B * HQ * LQ * DV);
    CHECK(rc == FA_OK && err < 1e-5, "fa_sdpa on 2 threads: max error %g", err);
    /* Helpers that sleep at once, and helpers that never sleep: the same results. */
    int64_t blocktime = fa_blocktime_us();
    CHECK(blocktime >= -1, "fa_blocktime_us() = %lld", (long long)blocktime);
    CHECK(fa_set_blocktime_us(0) == FA_OK && fa_blocktime_us() == 0, "fa_set_blocktime_us(0)");
    rc = fa_sdpa(&q, &k, &v, &out2, &o2);
    err = max_abs_diff(again, want, B * HQ * LQ * DV);
    CHECK(rc == FA_OK && err < 1e-5, "fa_sdpa with sleeping helpers: max error %g", err);
    CHECK(fa_set_blocktime_us(-5) == FA_OK && fa_blocktime_us() == -1, "infinite blocktime");
    CHECK(fa_set_blocktime_us(blocktime) == FA_OK, "blocktime restored");
    CHECK(fa_set_num_threads(0) == FA_OK, "fa_set_num_threads(0)");
    CHECK(fa_set_variant("scalar") == FA_OK, "fa_set_variant(scalar)");
    CHECK(strcmp(fa_variant_name(), "scalar") == 0, "fa_variant_name after forcing scalar");
    rc = fa_sdpa(&q, &k, &v, &out2, &o2);
    err = max_abs_diff(again, want, B * HQ * LQ * DV);
    CHECK(rc == FA_OK && err < 1e-5, "fa_sdpa(scalar) max error %g", err);
    CHECK(fa_set_variant(NULL) == FA_OK, "fa_set_variant(NULL)");

    /* 5. Error codes; nothing is written on failure. */
    od[0] = 42.0f;
    CHECK(fa_sdpa(NULL, &k, &v, &out, NULL) == FA_ERR_NULL_POINTER, "NULL q");
    fa_tensor no_data = q;
    no_data.data = NULL;
    CHECK(fa_sdpa(&no_data, &k, &v, &out, NULL) == FA_ERR_NULL_POINTER, "NULL q->data");
    fa_tensor bad_k = tensor(kd, B, HKV, LK, D / 2);
    CHECK(fa_sdpa(&q, &bad_k, &v, &out, NULL) == FA_ERR_BAD_SHAPE, "head dims differ");
    CHECK(strstr(fa_last_error(), "fa_sdpa") != NULL, "last error names the function");
    fa_tensor neg = q;
    neg.strides[2] = -(ptrdiff_t)(HQ * D);
    CHECK(fa_sdpa(&neg, &k, &v, &out, NULL) == FA_ERR_BAD_STRIDE, "negative stride");
    fa_tensor alias = tensor(qd, B, HQ, LQ, DV);
    CHECK(fa_sdpa(&q, &k, &v, &alias, NULL) == FA_ERR_BAD_STRIDE, "output overlapping q");
    fa_sdpa_options bad;
    fa_sdpa_options_init(&bad, sizeof bad);
    bad.causal = 2;
    CHECK(fa_sdpa(&q, &k, &v, &out, &bad) == FA_ERR_INVALID_ARGUMENT, "causal = 2");
    CHECK(od[0] == 42.0f, "a failed fa_sdpa wrote its output");
    CHECK(fa_set_variant("sse9") == FA_ERR_UNSUPPORTED_VARIANT, "unknown variant");
    CHECK(fa_test_panic_boundary() == FA_ERR_INTERNAL, "panic boundary");
    CHECK(strstr(fa_last_error(), "panic") != NULL, "panic message");

    free(qd);
    free(kd);
    free(vd);
    free(od);
    free(wd);
    free(md);
    free(again);
}

/* Attention on 16-bit tensors: any mix of f32, f16 and bf16 for Q, K, V and the output,
 * checked against the naive loop on the widened values. Masks and weights stay f32. */
static void test_sdpa_16bit(void) {
    enum { NQ = B * LQ * HQ * D, NK = B * HKV * LK * D, NV = B * HKV * LK * DV,
           NO = B * HQ * LQ * DV, NL = B * HQ * LQ };
    float *qf = rnd_buf(NQ), *kf = rnd_buf(NK), *vf = rnd_buf(NV);
    float got[NO], lse[NL];
    double want[NO], want_lse[NL];

    /* 1. f32 Q (a [B, L, H, D] view), bf16 K and V, an f16 output; causal with the
     * log-sum-exp. */
    uint16_t *kb = to_16bit(kf, NK, FA_DTYPE_BF16), *vb = to_16bit(vf, NV, FA_DTYPE_BF16);
    uint16_t *oh = malloc(NO * sizeof *oh);
    fa_tensor q = {qf, {B, HQ, LQ, D}, {LQ * HQ * D, D, HQ * D, 1}, FA_DTYPE_F32};
    fa_tensor k = tensor_of(kb, FA_DTYPE_BF16, B, HKV, LK, D);
    fa_tensor v = tensor_of(vb, FA_DTYPE_BF16, B, HKV, LK, DV);
    fa_tensor out = tensor_of(oh, FA_DTYPE_F16, B, HQ, LQ, DV);
    fa_sdpa_options o;
    fa_sdpa_options_init(&o, sizeof o);
    o.causal = 1;
    o.lse = lse;
    sdpa_naive(&q, &k, &v, 1, NULL, NULL, want, NULL, want_lse);
    int rc = fa_sdpa(&q, &k, &v, &out, &o);
    widen(&out, got);
    double err = err_16bit(got, want, NO, FA_DTYPE_F16);
    CHECK(rc == FA_OK && err <= 1.0, "fa_sdpa(f32 q, bf16 k/v, f16 out): rc %d, error %g of the "
          "tolerance", rc, err);
    err = max_abs_diff(lse, want_lse, NL);
    CHECK(err < 1e-4, "fa_sdpa(f32 q, bf16 k/v, f16 out) lse max error %g", err);

    /* 2. f16 Q, K and V, a bf16 output, an f32 mask broadcast over batch and heads, and key
     * lengths. */
    uint16_t *qh = to_16bit(qf, NQ, FA_DTYPE_F16), *kh = to_16bit(kf, NK, FA_DTYPE_F16),
             *vh = to_16bit(vf, NV, FA_DTYPE_F16), *ob = malloc(NO * sizeof *ob);
    float *md = rnd_buf(LQ * LK);
    fa_tensor q16 = tensor_of(qh, FA_DTYPE_F16, B, HQ, LQ, D);
    fa_tensor k16 = tensor_of(kh, FA_DTYPE_F16, B, HKV, LK, D);
    fa_tensor v16 = tensor_of(vh, FA_DTYPE_F16, B, HKV, LK, DV);
    fa_tensor outb = tensor_of(ob, FA_DTYPE_BF16, B, HQ, LQ, DV);
    fa_tensor mask = {md, {1, 1, LQ, LK}, {0, 0, LK, 1}, FA_DTYPE_F32};
    int64_t kv_len[B] = {LK, 4};
    fa_sdpa_options o2;
    fa_sdpa_options_init(&o2, sizeof o2);
    o2.mask = &mask;
    o2.kv_lengths = kv_len;
    sdpa_naive(&q16, &k16, &v16, 0, &mask, kv_len, want, NULL, NULL);
    rc = fa_sdpa(&q16, &k16, &v16, &outb, &o2);
    widen(&outb, got);
    err = err_16bit(got, want, NO, FA_DTYPE_BF16);
    CHECK(rc == FA_OK && err <= 1.0, "fa_sdpa(f16 q/k/v, bf16 out, mask): rc %d, error %g of "
          "the tolerance", rc, err);

    /* 3. Refusals, with nothing written: a 16-bit mask or weights output, a dtype that is
     * not an fa_dtype, 16-bit data that is not 2-byte aligned. */
    ob[0] = 0x1234;
    fa_tensor mask16 = tensor_of(kb, FA_DTYPE_BF16, 1, 1, LQ, LK);
    mask16.strides[0] = mask16.strides[1] = 0;
    fa_sdpa_options bad;
    fa_sdpa_options_init(&bad, sizeof bad);
    bad.mask = &mask16;
    CHECK(fa_sdpa(&q16, &k16, &v16, &outb, &bad) == FA_ERR_INVALID_ARGUMENT, "bf16 mask");
    CHECK(strstr(fa_last_error(), "f32") != NULL, "bf16 mask message");
    fa_tensor w16 = tensor_of(kb, FA_DTYPE_F16, B, HQ, LQ, LK);
    fa_sdpa_options_init(&bad, sizeof bad);
    bad.weights = &w16;
    CHECK(fa_sdpa(&q16, &k16, &v16, &outb, &bad) == FA_ERR_INVALID_ARGUMENT, "f16 weights");
    fa_tensor unknown = k16;
    unknown.dtype = 6;
    CHECK(fa_sdpa(&q16, &unknown, &v16, &outb, NULL) == FA_ERR_INVALID_ARGUMENT, "dtype 6");
    CHECK(strstr(fa_last_error(), "k->dtype is 6") != NULL, "dtype 6 message");
    /* 8-bit K needs its scales (opts->k_scale); an 8-bit Q is refused. */
    fa_tensor k8 = k16;
    k8.dtype = FA_DTYPE_I8;
    CHECK(fa_sdpa(&q16, &k8, &v16, &outb, NULL) == FA_ERR_INVALID_ARGUMENT, "i8 k, no scales");
    CHECK(strstr(fa_last_error(), "opts->k_scale") != NULL, "i8 k message");
    fa_tensor q8 = q16;
    q8.dtype = FA_DTYPE_F8_E4M3;
    CHECK(fa_sdpa(&q8, &k16, &v16, &outb, NULL) == FA_ERR_INVALID_ARGUMENT, "fp8 q");
    CHECK(strstr(fa_last_error(), "8-bit") != NULL, "fp8 q message");
    fa_tensor odd = k16;
    odd.data = (char *)kh + 1;
    CHECK(fa_sdpa(&q16, &odd, &v16, &outb, NULL) == FA_ERR_INVALID_ARGUMENT, "misaligned f16");
    CHECK(ob[0] == 0x1234, "a refused fa_sdpa wrote its 16-bit output");

    free(qf);
    free(kf);
    free(vf);
    free(kb);
    free(vb);
    free(oh);
    free(qh);
    free(kh);
    free(vh);
    free(ob);
    free(md);
}

/* The backward pass: the gradients of sum(out * dO) with respect to Q, K and V, from the
 * forward's output and log-sum-exp, against the formulas on the naive weights P:
 * dV = P^T dO, dS = P * (dO V^T - rowsum(dO * out)), dQ = scale dS K, dK = scale dS^T Q
 * (dK and dV summed over the query heads of a group). Causal, GQA. */
static void test_sdpa_backward(void) {
    enum { NQ = B * HQ * LQ * D, NK = B * HKV * LK * D, NV = B * HKV * LK * DV,
           NO = B * HQ * LQ * DV, NL = B * HQ * LQ };
    float *qd = rnd_buf(NQ), *kd = rnd_buf(NK), *vd = rnd_buf(NV), *go = rnd_buf(NO);
    float od[NO], lse[NL], gq[NQ], gk[NK], gv[NV];
    double p[NL * LK], want_o[NO], wq[NQ] = {0}, wk[NK] = {0}, wv[NV] = {0};
    fa_tensor q = tensor(qd, B, HQ, LQ, D), k = tensor(kd, B, HKV, LK, D);
    fa_tensor v = tensor(vd, B, HKV, LK, DV), out = tensor(od, B, HQ, LQ, DV);
    fa_tensor dout = tensor(go, B, HQ, LQ, DV), dq = tensor(gq, B, HQ, LQ, D);
    fa_tensor dk = tensor(gk, B, HKV, LK, D), dv = tensor(gv, B, HKV, LK, DV);
    fa_sdpa_options o;
    fa_sdpa_options_init(&o, sizeof o);
    o.causal = 1;
    o.lse = lse;
    int rc = fa_sdpa(&q, &k, &v, &out, &o);
    CHECK(rc == FA_OK, "fa_sdpa(causal, lse) returned %d", rc);
    /* The forward's options serve as they are (their weights and lse are not used). */
    rc = fa_sdpa_backward(&q, &k, &v, &out, &dout, lse, NL, &dq, &dk, &dv, &o);
    CHECK(rc == FA_OK, "fa_sdpa_backward returned %d", rc);

    sdpa_naive(&q, &k, &v, 1, NULL, NULL, want_o, p, NULL);
    double scale = 1.0 / sqrt((double)D);
    for (size_t row = 0; row < NL; row++) {
        size_t b = row / (HQ * LQ), hk = row / LQ % HQ / (HQ / HKV);
        double dsum = 0.0;
        for (size_t e = 0; e < DV; e++) dsum += (double)go[row * DV + e] * want_o[row * DV + e];
        for (size_t j = 0; j < LK; j++) {
            size_t kv = (b * HKV + hk) * LK + j;
            double dp = 0.0;
            for (size_t e = 0; e < DV; e++) dp += (double)go[row * DV + e] * vd[kv * DV + e];
            double pij = p[row * LK + j], ds = scale * pij * (dp - dsum);
            for (size_t e = 0; e < DV; e++) wv[kv * DV + e] += pij * go[row * DV + e];
            for (size_t d = 0; d < D; d++) {
                wq[row * D + d] += ds * kd[kv * D + d];
                wk[kv * D + d] += ds * qd[row * D + d];
            }
        }
    }
    double err = max_abs_diff(gq, wq, NQ);
    CHECK(err < 1e-4, "fa_sdpa_backward dQ max error %g", err);
    err = max_abs_diff(gk, wk, NK);
    CHECK(err < 1e-4, "fa_sdpa_backward dK max error %g", err);
    err = max_abs_diff(gv, wv, NV);
    CHECK(err < 1e-4, "fa_sdpa_backward dV max error %g", err);

    /* Refusals, with nothing written: a 16-bit gradient, a wrong lse_len, NULL lse, a
     * gradient overlapping an input. */
    gq[0] = 42.0f;
    fa_tensor dk16 = dk;
    dk16.dtype = FA_DTYPE_BF16;
    CHECK(fa_sdpa_backward(&q, &k, &v, &out, &dout, lse, NL, &dq, &dk16, &dv, &o) ==
              FA_ERR_INVALID_ARGUMENT, "bf16 grad_k");
    CHECK(strstr(fa_last_error(), "grad_k->dtype") != NULL, "bf16 grad_k message");
    CHECK(fa_sdpa_backward(&q, &k, &v, &out, &dout, lse, NL - 1, &dq, &dk, &dv, &o) ==
              FA_ERR_BAD_SHAPE, "lse_len B*Hq*Lq - 1");
    CHECK(fa_sdpa_backward(&q, &k, &v, &out, &dout, NULL, NL, &dq, &dk, &dv, &o) ==
              FA_ERR_NULL_POINTER, "NULL lse");
    fa_tensor over_v = tensor(vd, B, HKV, LK, DV);
    CHECK(fa_sdpa_backward(&q, &k, &v, &out, &dout, lse, NL, &dq, &dk, &over_v, &o) ==
              FA_ERR_BAD_STRIDE, "grad_v overlapping v");
    CHECK(gq[0] == 42.0f, "a refused fa_sdpa_backward wrote a gradient");

    free(qd);
    free(kd);
    free(vd);
    free(go);
}

/* --------------------------------------------------------------- layer */

enum { DM = 12, NH = 2, NKV = 1, HD = 4, SEQ = 6, BATCH = 2 };

/* Naive causal multi-head attention with [d_in, d_out] weights and no biases; the keys
 * and values are rounded to `kv_dtype`, as a KV cache of that type stores them. */
static void mha_naive(const float *x, const float *wq, const float *wk, const float *wv,
                      const float *wo, int32_t kv_dtype, double *y) {
    static double q[BATCH * SEQ][NH * HD], k[BATCH * SEQ][NKV * HD], v[BATCH * SEQ][NKV * HD],
        a[BATCH * SEQ][NH * HD];
    for (int r = 0; r < BATCH * SEQ; r++) {
        for (int c = 0; c < NH * HD; c++) {
            double s = 0.0;
            for (int i = 0; i < DM; i++) s += (double)x[r * DM + i] * wq[i * NH * HD + c];
            q[r][c] = s;
        }
        for (int c = 0; c < NKV * HD; c++) {
            double sk = 0.0, sv = 0.0;
            for (int i = 0; i < DM; i++) {
                sk += (double)x[r * DM + i] * wk[i * NKV * HD + c];
                sv += (double)x[r * DM + i] * wv[i * NKV * HD + c];
            }
            k[r][c] = round_to(sk, kv_dtype);
            v[r][c] = round_to(sv, kv_dtype);
        }
    }
    for (int b = 0; b < BATCH; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < SEQ; i++) {
                int hk = h / (NH / NKV);
                double s[SEQ], mx = -INFINITY, sum = 0.0;
                for (int j = 0; j <= i; j++) {
                    double dot = 0.0;
                    for (int d = 0; d < HD; d++)
                        dot += q[b * SEQ + i][h * HD + d] * k[b * SEQ + j][hk * HD + d];
                    s[j] = dot / sqrt((double)HD);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j <= i; j++) sum += (s[j] = exp(s[j] - mx));
                for (int d = 0; d < HD; d++) {
                    double acc = 0.0;
                    for (int j = 0; j <= i; j++) acc += s[j] / sum * v[b * SEQ + j][hk * HD + d];
                    a[b * SEQ + i][h * HD + d] = acc;
                }
            }
    for (int r = 0; r < BATCH * SEQ; r++)
        for (int c = 0; c < DM; c++) {
            double acc = 0.0;
            for (int i = 0; i < NH * HD; i++) acc += a[r][i] * wo[i * DM + c];
            y[r * DM + c] = acc;
        }
}

static void test_layer(void) {
    float *x = rnd_buf(BATCH * SEQ * DM);
    float *wq = rnd_buf(DM * NH * HD), *wk = rnd_buf(DM * NKV * HD), *wv = rnd_buf(DM * NKV * HD),
          *wo = rnd_buf(NH * HD * DM);
    float y[BATCH * SEQ * DM], step[BATCH * DM], xs[BATCH * DM];
    double want[BATCH * SEQ * DM];
    fa_mha_config cfg;
    fa_mha_config_init(&cfg, sizeof cfg);
    cfg.d_model = DM;
    cfg.n_heads = NH;
    cfg.n_kv_heads = NKV;
    cfg.head_dim = HD;
    fa_mha_weights w;
    fa_mha_weights_init(&w, sizeof w);
    w.wq = wq;
    w.wk = wk;
    w.wv = wv;
    w.wo = wo;
    fa_mha *layer = NULL;
    int rc = fa_mha_new(&cfg, &w, &layer);
    CHECK(rc == FA_OK && layer != NULL, "fa_mha_new returned %d", rc);
    if (!layer) return;
    fa_sdpa_options causal;
    fa_sdpa_options_init(&causal, sizeof causal);
    causal.causal = 1;
    mha_naive(x, wq, wk, wv, wo, FA_DTYPE_F32, want);
    rc = fa_mha_forward(layer, x, BATCH, SEQ, y, &causal);
    double err = max_abs_diff(y, want, BATCH * SEQ * DM);
    CHECK(rc == FA_OK && err < 1e-4, "fa_mha_forward: rc %d, max error %g", rc, err);

    /* Decoding token by token through a KV cache gives the same rows. */
    fa_kv_cache *cache = NULL;
    rc = fa_kv_cache_new(layer, BATCH, SEQ, &cache);
    CHECK(rc == FA_OK && cache != NULL, "fa_kv_cache_new returned %d", rc);
    double worst = 0.0;
    for (int t = 0; t < SEQ && cache; t++) {
        for (int b = 0; b < BATCH; b++) memcpy(xs + b * DM, x + (b * SEQ + t) * DM, DM * sizeof(float));
        rc = fa_mha_forward_cached(layer, cache, xs, BATCH, 1, step, &causal);
        CHECK(rc == FA_OK, "fa_mha_forward_cached step %d returned %d", t, rc);
        for (int b = 0; b < BATCH; b++)
            for (int c = 0; c < DM; c++) {
                double d = fabs(step[b * DM + c] - want[(b * SEQ + t) * DM + c]);
                if (!(d <= worst)) worst = d;
            }
    }
    CHECK(worst < 1e-4, "cached decoding max error %g", worst);
    CHECK(fa_kv_cache_len(cache) == SEQ, "fa_kv_cache_len");
    /* A full cache refuses more tokens and stays as it was. */
    CHECK(fa_mha_forward_cached(layer, cache, xs, BATCH, 1, step, &causal) == FA_ERR_CACHE_FULL,
          "full cache");
    CHECK(fa_kv_cache_len(cache) == SEQ, "a refused step changed the cache");
    CHECK(fa_kv_cache_truncate(cache, 0) == FA_OK && fa_kv_cache_len(cache) == 0,
          "fa_kv_cache_truncate");
    fa_kv_cache_free(cache);

    /* A cache of 2^60 bytes cannot be allocated: an error code, not an abort. */
    fa_kv_cache *huge = NULL;
    rc = fa_kv_cache_new(layer, (size_t)1 << 26, (size_t)1 << 28, &huge);
    CHECK(rc == FA_ERR_ALLOC && huge == NULL, "huge KV cache returned %d", rc);
    CHECK(fa_mha_forward(layer, x, BATCH, SEQ, x, NULL) == FA_ERR_BAD_STRIDE,
          "layer output overlapping its input");
    fa_mha_config bad = cfg;
    bad.n_kv_heads = 3;
    fa_mha *none = NULL;
    CHECK(fa_mha_new_random(&bad, 0, 1, &none) == FA_ERR_BAD_SHAPE && none == NULL,
          "Hq not a multiple of Hkv");
    fa_mha_free(layer);
    fa_mha_free(NULL);
    free(x);
    free(wq);
    free(wk);
    free(wv);
    free(wo);
}

/* n values rounded to multiples of 2^-bits. */
static void quantize(float *x, size_t n, int bits) {
    for (size_t i = 0; i < n; i++) x[i] = ldexpf(rintf(ldexpf(x[i], bits)), -bits);
}

/* The layer with bf16 weights (read and kept as bf16) and a bf16 KV cache, against the
 * naive loop on the weights and the keys and values rounded to bf16. The inputs are
 * multiples of 1/8 and the weights of 1/64 (exact in bf16), so every projection is exact
 * in f32 and the library and the loop round the very same keys and values to bf16. */
static void test_layer_16bit(void) {
    enum { NW_Q = DM * NH * HD, NW_KV = DM * NKV * HD, NW_O = NH * HD * DM };
    float *x = rnd_buf(BATCH * SEQ * DM);
    float *wq = rnd_buf(NW_Q), *wk = rnd_buf(NW_KV), *wv = rnd_buf(NW_KV), *wo = rnd_buf(NW_O);
    float *ws[4] = {wq, wk, wv, wo};
    size_t ns[4] = {NW_Q, NW_KV, NW_KV, NW_O};
    uint16_t *w16[4];
    int exact = 1;
    quantize(x, BATCH * SEQ * DM, 3);
    for (int m = 0; m < 4; m++) {
        quantize(ws[m], ns[m], 6);
        w16[m] = to_16bit(ws[m], ns[m], FA_DTYPE_BF16);
        for (size_t i = 0; i < ns[m]; i++) exact &= bf16_to_f32(w16[m][i]) == ws[m][i];
    }
    CHECK(exact, "multiples of 1/64 in [-1, 1] are exact in bf16");
    float y[BATCH * SEQ * DM], step[BATCH * DM], xs[BATCH * DM];
    double want[BATCH * SEQ * DM];
    fa_mha_config cfg;
    fa_mha_config_init(&cfg, sizeof cfg);
    CHECK(cfg.weight_dtype == FA_DTYPE_F32, "fa_mha_config_init: f32 weights by default");
    cfg.d_model = DM;
    cfg.n_heads = NH;
    cfg.n_kv_heads = NKV;
    cfg.head_dim = HD;
    cfg.weight_dtype = FA_DTYPE_BF16;
    fa_mha_weights w;
    fa_mha_weights_init(&w, sizeof w);
    w.wq = w16[0];
    w.wk = w16[1];
    w.wv = w16[2];
    w.wo = w16[3];
    fa_mha *layer = NULL;
    int rc = fa_mha_new(&cfg, &w, &layer);
    CHECK(rc == FA_OK && layer != NULL, "fa_mha_new(bf16 weights) returned %d", rc);
    if (!layer) return;
    fa_sdpa_options causal;
    fa_sdpa_options_init(&causal, sizeof causal);
    causal.causal = 1;
    mha_naive(x, wq, wk, wv, wo, FA_DTYPE_F32, want);
    rc = fa_mha_forward(layer, x, BATCH, SEQ, y, &causal);
    double err = max_abs_diff(y, want, BATCH * SEQ * DM);
    CHECK(rc == FA_OK && err < 1e-4, "fa_mha_forward(bf16 weights): rc %d, max error %g", rc, err);

    /* Decoding through a bf16 cache: half the bytes of an f32 one. */
    fa_kv_cache *cache = NULL, *cache32 = NULL;
    rc = fa_kv_cache_new_typed(layer, BATCH, SEQ, FA_DTYPE_BF16, &cache);
    CHECK(rc == FA_OK && cache != NULL, "fa_kv_cache_new_typed(bf16) returned %d", rc);
    CHECK(fa_kv_cache_new(layer, BATCH, SEQ, &cache32) == FA_OK, "fa_kv_cache_new");
    CHECK(fa_kv_cache_dtype(cache) == FA_DTYPE_BF16 && fa_kv_cache_dtype(cache32) == FA_DTYPE_F32,
          "fa_kv_cache_dtype");
    CHECK(2 * fa_kv_cache_bytes(cache) == fa_kv_cache_bytes(cache32) &&
              fa_kv_cache_bytes(cache32) == 2 * BATCH * NKV * SEQ * HD * sizeof(float),
          "fa_kv_cache_bytes: bf16 %zu, f32 %zu", fa_kv_cache_bytes(cache),
          fa_kv_cache_bytes(cache32));
    mha_naive(x, wq, wk, wv, wo, FA_DTYPE_BF16, want);
    double worst = 0.0;
    for (int t = 0; t < SEQ && cache; t++) {
        for (int b = 0; b < BATCH; b++)
            memcpy(xs + b * DM, x + (b * SEQ + t) * DM, DM * sizeof(float));
        rc = fa_mha_forward_cached(layer, cache, xs, BATCH, 1, step, &causal);
        CHECK(rc == FA_OK, "fa_mha_forward_cached(bf16 cache) step %d returned %d", t, rc);
        for (int b = 0; b < BATCH; b++)
            for (int c = 0; c < DM; c++) {
                double d = fabs(step[b * DM + c] - want[(b * SEQ + t) * DM + c]);
                if (!(d <= worst)) worst = d;
            }
    }
    CHECK(worst < 1e-4, "bf16 cached decoding max error %g", worst);
    CHECK(fa_kv_cache_len(cache) == SEQ, "fa_kv_cache_len(bf16)");
    fa_kv_cache *none = NULL;
    CHECK(fa_kv_cache_new_typed(layer, 1, 1, 7, &none) == FA_ERR_INVALID_ARGUMENT && !none,
          "cache dtype 7");
    fa_kv_cache_free(cache);
    fa_kv_cache_free(cache32);
    fa_mha_free(layer);

    /* Random bf16 weights: the f32 layer's weights of the same seed, rounded. */
    fa_mha *r32 = NULL, *r16 = NULL;
    cfg.weight_dtype = FA_DTYPE_F32;
    CHECK(fa_mha_new_random(&cfg, 1, 7, &r32) == FA_OK, "fa_mha_new_random(f32)");
    cfg.weight_dtype = FA_DTYPE_BF16;
    CHECK(fa_mha_new_random(&cfg, 1, 7, &r16) == FA_OK, "fa_mha_new_random(bf16)");
    if (r32 && r16) {
        float y16[BATCH * SEQ * DM];
        CHECK(fa_mha_forward(r32, x, BATCH, SEQ, y, &causal) == FA_OK &&
                  fa_mha_forward(r16, x, BATCH, SEQ, y16, &causal) == FA_OK,
              "random layers forward");
        double d = 0.0, same = 1.0;
        for (int i = 0; i < BATCH * SEQ * DM; i++) {
            double e = fabs((double)y[i] - y16[i]);
            if (!(e <= d)) d = e;
            if (y[i] != y16[i]) same = 0.0;
        }
        CHECK(d < 1e-2 && same == 0.0, "bf16 random layer vs f32: max difference %g", d);
    }
    fa_mha_free(r32);
    fa_mha_free(r16);
    fa_mha *r_bad = NULL;
    cfg.weight_dtype = -1;
    CHECK(fa_mha_new_random(&cfg, 0, 1, &r_bad) == FA_ERR_INVALID_ARGUMENT && r_bad == NULL,
          "weight_dtype -1");
    for (int m = 0; m < 4; m++) free(w16[m]);
    free(x);
    free(wq);
    free(wk);
    free(wv);
    free(wo);
}

/* ------------------------------------------------ serving: varlen, paged caches, sinks */

/* Three sequences (a prefill chunk with a cached prefix, a decode token, one without
 * queries) over a paged cache of pages of VBS keys; heads VHQ/VHKV, head dim VD. */
enum { VB = 3, VHQ = 4, VHKV = 2, VD = 8, VBS = 4, VNB = 8, VBPS = 3, VTQ = 4 };
static const int32_t v_cu_q[VB + 1] = {0, 3, 4, 4};
static const int32_t v_used[VB] = {7, 10, 2};
/* Pages in shuffled order; -1 pads past each sequence's last page (never read). */
static const int32_t v_table[VB * VBPS] = {5, 2, -1, 7, 0, 6, 3, -1, -1};

/* Naive varlen attention over the paged caches (f32, [VNB, VBS, VHKV, VD]): causal bottom
 * right per sequence, optional sinks; out [VTQ, VHQ, VD], lse [VHQ, VTQ]. */
static void varlen_naive(const float *q, const float *kc, const float *vc, int causal,
                         const float *sinks, double *out, double *lse) {
    double scale = 1.0 / sqrt((double)VD);
    for (int s = 0; s < VB; s++) {
        int q0 = v_cu_q[s], lq = v_cu_q[s + 1] - q0, n = v_used[s];
        for (int h = 0; h < VHQ; h++)
            for (int i = 0; i < lq; i++) {
                int hk = h / (VHQ / VHKV);
                double sc[VBPS * VBS], mx = sinks ? sinks[h] : -INFINITY, sum = 0.0;
                for (int j = 0; j < n; j++) {
                    size_t row = (size_t)v_table[s * VBPS + j / VBS] * VBS + (size_t)(j % VBS);
                    double dot = 0.0;
                    for (int d = 0; d < VD; d++)
                        dot += (double)q[((size_t)(q0 + i) * VHQ + h) * VD + d] *
                               kc[(row * VHKV + hk) * VD + d];
                    sc[j] = causal && j > i + n - lq ? -INFINITY : dot * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j < n; j++) {
                    sc[j] = mx == -INFINITY ? 0.0 : exp(sc[j] - mx);
                    sum += sc[j];
                }
                double total = sum + (sinks && mx > -INFINITY ? exp(sinks[h] - mx) : 0.0);
                lse[h * VTQ + q0 + i] = total > 0 ? mx + log(total) : -INFINITY;
                for (int e = 0; e < VD; e++) {
                    double acc = 0.0;
                    for (int j = 0; j < n; j++) {
                        size_t row =
                            (size_t)v_table[s * VBPS + j / VBS] * VBS + (size_t)(j % VBS);
                        acc += sc[j] * vc[(row * VHKV + hk) * VD + e];
                    }
                    out[((size_t)(q0 + i) * VHQ + h) * VD + e] = total > 0 ? acc / total : 0.0;
                }
            }
    }
}

/* The [1, h, t, d] view of a packed [t, h, d] buffer. */
static fa_tensor packed_of(void *data, int32_t dtype, size_t h, size_t t, size_t d) {
    fa_tensor x = {data,
                   {1, h, t, d},
                   {(ptrdiff_t)(t * h * d), (ptrdiff_t)d, (ptrdiff_t)(h * d), 1},
                   dtype};
    return x;
}

static void test_varlen(void) {
    enum { NQ = VTQ * VHQ * VD, NC = VNB * VBS * VHKV * VD };
    float *q = rnd_buf(NQ), *kc = rnd_buf(NC), *vc = rnd_buf(NC);
    float sinks[VHQ] = {0.5f, -INFINITY, 2.0f, -1.0f};
    float out[NQ], lse[VHQ * VTQ];
    double want[NQ], want_lse[VHQ * VTQ];
    fa_tensor tq = packed_of(q, FA_DTYPE_F32, VHQ, VTQ, VD);
    fa_tensor tk = tensor(kc, VNB, VBS, VHKV, VD), tv = tensor(vc, VNB, VBS, VHKV, VD);
    fa_tensor to = packed_of(out, FA_DTYPE_F32, VHQ, VTQ, VD);
    fa_varlen_seqs seqs;
    CHECK(fa_varlen_seqs_init(&seqs, sizeof seqs) == FA_OK, "fa_varlen_seqs_init");
    seqs.batch = VB;
    seqs.cu_seqlens_q = v_cu_q;
    seqs.seqused_k = v_used;
    seqs.block_table = v_table;
    seqs.blocks_per_seq = VBPS;
    fa_sdpa_options opts;
    fa_sdpa_options_init(&opts, sizeof opts);
    opts.lse = lse;
    for (int causal = 0; causal < 2; causal++)
        for (int with_sinks = 0; with_sinks < 2; with_sinks++) {
            opts.causal = causal;
            opts.sinks = with_sinks ? sinks : NULL;
            int rc = fa_sdpa_varlen(&tq, &tk, &tv, &to, &seqs, &opts);
            CHECK(rc == FA_OK, "fa_sdpa_varlen paged, causal %d, sinks %d: %d", causal,
                  with_sinks, rc);
            varlen_naive(q, kc, vc, causal, with_sinks ? sinks : NULL, want, want_lse);
            double e = max_abs_diff(out, want, NQ), el = 0.0;
            for (int i = 0; i < VHQ * VTQ; i++) {
                double d = fabs((double)lse[i] - want_lse[i]);
                if (!(d <= el)) el = d;
            }
            CHECK(e < 1e-5 && el < 1e-5, "varlen causal %d sinks %d: out %g, lse %g", causal,
                  with_sinks, e, el);
        }

    /* int64 offsets and 16-bit caches written by fa_paged_kv_write give the same result
     * as the f32 call on the rounded values. */
    int64_t cu_q64[VB + 1], used64[VB];
    for (int i = 0; i <= VB; i++) cu_q64[i] = v_cu_q[i];
    for (int i = 0; i < VB; i++) used64[i] = v_used[i];
    uint16_t *kc16 = to_16bit(kc, NC, FA_DTYPE_BF16), *vc16 = calloc(NC, sizeof *vc16);
    /* Write V's used rows through fa_paged_kv_write: every slot of the caches, as rows
     * [NC / (VHKV*VD), VHKV, VD] in slot order. */
    enum { T = VNB * VBS };
    int64_t slots[T];
    for (int t = 0; t < T; t++) slots[t] = t;
    fa_tensor rows = packed_of(vc, FA_DTYPE_F32, VHKV, T, VD);
    fa_tensor cache = tensor_of(vc16, FA_DTYPE_BF16, VNB, VBS, VHKV, VD);
    fa_tensor kcache = tensor_of(kc16, FA_DTYPE_BF16, VNB, VBS, VHKV, VD);
    uint16_t *scratch = calloc(NC, sizeof *scratch);
    fa_tensor kscratch = tensor_of(scratch, FA_DTYPE_BF16, VNB, VBS, VHKV, VD);
    CHECK(fa_paged_kv_write(&rows, &rows, &kscratch, &cache, slots) == FA_OK,
          "fa_paged_kv_write f32 -> bf16");
    int same = 1;
    for (int i = 0; i < NC; i++) same &= vc16[i] == f32_to_bf16(vc[i]);
    CHECK(same, "fa_paged_kv_write rounds to the cache's type");
    seqs.index_dtype = FA_INDEX_I64;
    seqs.cu_seqlens_q = cu_q64;
    seqs.seqused_k = used64;
    opts.causal = 1;
    opts.sinks = sinks;
    CHECK(fa_sdpa_varlen(&tq, &kcache, &cache, &to, &seqs, &opts) == FA_OK,
          "fa_sdpa_varlen int64, bf16 caches");
    float *kr = malloc(NC * sizeof *kr), *vr = malloc(NC * sizeof *vr);
    for (int i = 0; i < NC; i++) {
        kr[i] = bf16_to_f32(kc16[i]);
        vr[i] = bf16_to_f32(vc16[i]);
    }
    varlen_naive(q, kr, vr, 1, sinks, want, want_lse);
    CHECK(max_abs_diff(out, want, NQ) < 1e-5, "bf16 caches: %g", max_abs_diff(out, want, NQ));

    /* Refusals write nothing. */
    seqs.index_dtype = FA_INDEX_I32;
    seqs.cu_seqlens_q = v_cu_q;
    seqs.seqused_k = v_used;
    for (int i = 0; i < NQ; i++) out[i] = 7.0f;
    static const int32_t bad_cu[VB + 1] = {0, 3, 2, 4}, short_cu[VB + 1] = {0, 3, 3, 3};
    static const int32_t over_used[VB] = {7, 13, 2}, bad_table[VB * VBPS] = {5, 2, -1,
                                                                              7, 0, 6,
                                                                              -1, -1, -1};
    static const int32_t far_table[VB * VBPS] = {5, VNB, -1, 7, 0, 6, 3, -1, -1};
    struct {
        const char *what;
        int want;
        fa_varlen_seqs s;
    } cases[] = {
        {"decreasing cu_seqlens_q", FA_ERR_INVALID_ARGUMENT, seqs},
        {"cu_seqlens_q ending before Tq", FA_ERR_INVALID_ARGUMENT, seqs},
        {"seqused_k above the pages held", FA_ERR_INVALID_ARGUMENT, seqs},
        {"negative block index read", FA_ERR_INVALID_ARGUMENT, seqs},
        {"block index past the caches", FA_ERR_INVALID_ARGUMENT, seqs},
        {"unknown index type", FA_ERR_INVALID_ARGUMENT, seqs},
        {"NULL cu_seqlens_q", FA_ERR_NULL_POINTER, seqs},
        {"uninitialised seqs", FA_ERR_INVALID_ARGUMENT, seqs},
    };
    cases[0].s.cu_seqlens_q = bad_cu;
    cases[1].s.cu_seqlens_q = short_cu;
    cases[2].s.seqused_k = over_used;
    cases[3].s.block_table = bad_table;
    cases[4].s.block_table = far_table;
    cases[5].s.index_dtype = 2;
    cases[6].s.cu_seqlens_q = NULL;
    cases[7].s.struct_size = 0;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int rc = fa_sdpa_varlen(&tq, &tk, &tv, &to, &cases[c].s, &opts);
        CHECK(rc == cases[c].want, "%s: %d", cases[c].what, rc);
    }
    opts.lse = out; /* overlapping the output */
    CHECK(fa_sdpa_varlen(&tq, &tk, &tv, &to, &seqs, &opts) == FA_ERR_BAD_STRIDE, "lse on out");
    opts.lse = NULL;
    fa_tensor tk3 = tensor(kc, VNB, VBS, VHKV, VD - 1);
    CHECK(fa_sdpa_varlen(&tq, &tk3, &tv, &to, &seqs, &opts) == FA_ERR_BAD_SHAPE, "head dims");
    CHECK(fa_sdpa_varlen(&tq, &tk, &tv, &to, NULL, &opts) == FA_ERR_NULL_POINTER, "NULL seqs");
    int untouched = 1;
    for (int i = 0; i < NQ; i++) untouched &= out[i] == 7.0f;
    CHECK(untouched, "a refused fa_sdpa_varlen wrote its output");

    /* fa_paged_kv_write refusals leave the caches alone. */
    memcpy(scratch, vc16, NC * sizeof *scratch);
    slots[3] = T; /* past the cache */
    CHECK(fa_paged_kv_write(&rows, &rows, &kscratch, &cache, slots) == FA_ERR_INVALID_ARGUMENT,
          "slot past the cache");
    slots[3] = -2;
    CHECK(fa_paged_kv_write(&rows, &rows, &kscratch, &cache, slots) == FA_ERR_INVALID_ARGUMENT,
          "slot below -1");
    slots[3] = 3;
    fa_tensor rows16 = packed_of(kc16, FA_DTYPE_BF16, VHKV, T, VD);
    CHECK(fa_paged_kv_write(&rows, &rows16, &kscratch, &cache, slots) == FA_ERR_INVALID_ARGUMENT,
          "k and v of different types");
    CHECK(fa_paged_kv_write(&rows, &rows, &cache, &cache, slots) == FA_ERR_BAD_STRIDE,
          "one buffer for both caches");
    CHECK(fa_paged_kv_write(&rows, &rows, &kscratch, &cache, NULL) == FA_ERR_NULL_POINTER,
          "NULL slot_mapping");
    CHECK(memcmp(scratch, vc16, NC * sizeof *scratch) == 0, "a refused write changed a cache");
    free(q);
    free(kc);
    free(vc);
    free(kc16);
    free(vc16);
    free(scratch);
    free(kr);
    free(vr);
}

/* The options struct of a program built against ABI 3: every field up to `lse`. */
typedef struct {
    size_t struct_size;
    float scale;
    int32_t causal;
    const fa_tensor *mask;
    const int64_t *kv_lengths;
    int64_t window_left, window_right;
    float softcap;
    const float *alibi_slopes;
    fa_tensor *weights;
    float *lse;
} fa_sdpa_options_v3;

static void test_sinks_and_old_options(void) {
    enum { N = 1 * 2 * 3 * 4 };
    float *x = rnd_buf(N), out[N], out3[N], ref[N];
    float sinks[2] = {1.0f, 0.0f};
    fa_tensor t = tensor(x, 1, 2, 3, 4);
    fa_tensor o = tensor(out, 1, 2, 3, 4), o3 = tensor(out3, 1, 2, 3, 4);
    fa_tensor r = tensor(ref, 1, 2, 3, 4);
    fa_sdpa_options opts;
    fa_sdpa_options_init(&opts, sizeof opts);
    opts.causal = 1;
    CHECK(fa_sdpa(&t, &t, &t, &r, &opts) == FA_OK, "fa_sdpa without sinks");
    opts.sinks = sinks;
    CHECK(fa_sdpa(&t, &t, &t, &o, &opts) == FA_OK, "fa_sdpa with sinks");
    /* The first query of head 0 sees one key, weight 1/(1 + e^(1 - s)) with s its score. */
    double s = 0.0;
    for (int d = 0; d < 4; d++) s += (double)x[d] * x[d];
    s *= 0.5;
    double w = 1.0 / (1.0 + exp(1.0 - s));
    CHECK(fabs(out[0] - w * x[0]) < 1e-5, "sink weight: %g vs %g", out[0], w * x[0]);
    fa_sdpa_options_v3 old;
    CHECK(fa_sdpa_options_init((fa_sdpa_options *)(void *)&old, sizeof old) == FA_OK,
          "init of an ABI 3 struct");
    old.causal = 1;
    CHECK(fa_sdpa(&t, &t, &t, &o3, (const fa_sdpa_options *)(void *)&old) == FA_OK,
          "fa_sdpa with an ABI 3 options struct");
    CHECK(memcmp(out3, ref, sizeof ref) == 0, "an ABI 3 struct gets no sinks");
    CHECK(fa_sdpa_options_init(&opts, sizeof old + 4) == FA_ERR_INVALID_ARGUMENT,
          "a size between layouts");
    free(x);
}

int main(void) {
    printf("fastattn %s (ABI %u), kernels: %s, threads: %d\n", fa_version(), fa_abi_version(),
           fa_variant_name(), fa_num_threads());
    CHECK(fa_abi_version() == FA_ABI_VERSION, "library ABI %u, header ABI %d", fa_abi_version(),
          FA_ABI_VERSION);
    {
        /* An uninitialised (zeroed) options struct is refused, not read as defaults. */
        fa_sdpa_options zero;
        memset(&zero, 0, sizeof zero);
        float one = 1.0f, o1 = 0.0f;
        fa_tensor t = {&one, {1, 1, 1, 1}, {1, 1, 1, 1}, FA_DTYPE_F32};
        fa_tensor to = {&o1, {1, 1, 1, 1}, {1, 1, 1, 1}, FA_DTYPE_F32};
        CHECK(fa_sdpa(&t, &t, &t, &to, &zero) == FA_ERR_INVALID_ARGUMENT, "struct_size 0");
        CHECK(strstr(fa_last_error(), "fa_sdpa_options_init") != NULL, "struct_size message");
    }
    test_cblas_sgemm();
    test_fa_sgemm();
    test_softmax();
    test_conversions();
    test_sdpa();
    test_sdpa_16bit();
    test_sdpa_backward();
    test_layer();
    test_layer_16bit();
    test_varlen();
    test_sinks_and_old_options();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
