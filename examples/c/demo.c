/*
 * A first program with fastattn from C: one attention call, its error handling, and a
 * decoder layer generating tokens through a KV cache.
 *
 * Build and run (from the repository root):
 *   cargo build --release -p fastattn-capi
 *   cc -O2 -std=c99 examples/c/demo.c -I crates/capi/include \
 *      target/release/libfastattn_capi.a -lpthread -ldl -lm -o fastattn_demo
 *   ./fastattn_demo
 *
 * (The C conformance suite, which checks every function against naive C loops, is
 * crates/capi/tests/c/conformance.c.)
 */
#include <stdio.h>
#include <stdlib.h>

#include "fastattn.h"

/* Grouped-query attention: 8 query heads share 2 key/value heads. */
enum { B = 1, HQ = 8, HKV = 2, L = 16, D = 64 };

/* A dense [b, h, l, d] f32 tensor. For the [B, L, H, D] layout of model code use the
 * strides {l*h*d, d, h*d, 1}. */
static fa_tensor dense(float *data, size_t b, size_t h, size_t l, size_t d) {
    fa_tensor t = {data,
                   {b, h, l, d},
                   {(ptrdiff_t)(h * l * d), (ptrdiff_t)(l * d), (ptrdiff_t)d, 1},
                   FA_DTYPE_F32};
    return t;
}

/* Prints the failed call and the library's message; returns 1 for main. */
static int fail(const char *what, int rc) {
    fprintf(stderr, "%s failed (%d): %s\n", what, rc, fa_last_error());
    return 1;
}

static int attention(void) {
    static float q[B * HQ * L * D], k[B * HKV * L * D], v[B * HKV * L * D], out[B * HQ * L * D];
    for (size_t i = 0; i < sizeof q / sizeof *q; i++) q[i] = 0.01f * (float)(i % 13);
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        k[i] = 0.02f * (float)(i % 7);
        v[i] = (float)(i % 5);
    }
    fa_tensor tq = dense(q, B, HQ, L, D), tk = dense(k, B, HKV, L, D),
              tv = dense(v, B, HKV, L, D), to = dense(out, B, HQ, L, D);

    /* Options start from their defaults; set only what you need. */
    fa_sdpa_options opts;
    fa_sdpa_options_init(&opts, sizeof opts);
    opts.causal = 1;
    int rc = fa_sdpa(&tq, &tk, &tv, &to, &opts);
    if (rc != FA_OK) return fail("fa_sdpa", rc);
    printf("attention: out[0] = %f, out[last] = %f\n", out[0], out[sizeof out / sizeof *out - 1]);

    /* Bad input gets an error code and a message; nothing is written. */
    fa_tensor wrong = dense(k, B, HKV, L, D / 2);
    rc = fa_sdpa(&tq, &wrong, &tv, &to, &opts);
    if (rc != FA_ERR_BAD_SHAPE) return fail("fa_sdpa with mismatched head dims", rc);
    printf("refused as expected (%d): %s\n", rc, fa_last_error());
    return 0;
}

/* A decoder layer with random weights: the prompt in one call, then one token per call. */
enum { DM = 64, PROMPT = 5, STEPS = 3 };

static int decode(void) {
    fa_mha_config cfg;
    fa_mha_config_init(&cfg, sizeof cfg);
    cfg.d_model = DM;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.head_dim = 16;
    fa_mha *layer = NULL;
    int rc = fa_mha_new_random(&cfg, /* bias */ 0, /* seed */ 42, &layer);
    if (rc != FA_OK) return fail("fa_mha_new_random", rc);
    fa_kv_cache *cache = NULL;
    rc = fa_kv_cache_new(layer, B, PROMPT + STEPS, &cache);
    if (rc != FA_OK) {
        fa_mha_free(layer);
        return fail("fa_kv_cache_new", rc);
    }

    fa_sdpa_options causal;
    fa_sdpa_options_init(&causal, sizeof causal);
    causal.causal = 1;
    float prompt[PROMPT * DM], y[PROMPT * DM], token[DM];
    for (int i = 0; i < PROMPT * DM; i++) prompt[i] = 0.1f * (float)(i % 9) - 0.4f;
    rc = fa_mha_forward_cached(layer, cache, prompt, B, PROMPT, y, &causal);
    for (int s = 0; rc == FA_OK && s < STEPS; s++) {
        /* A model would embed its next token here; the demo feeds back the last output. */
        const float *last = s == 0 ? y + (PROMPT - 1) * DM : token;
        float next[DM];
        for (int c = 0; c < DM; c++) next[c] = last[c];
        rc = fa_mha_forward_cached(layer, cache, next, B, 1, token, &causal);
    }
    if (rc == FA_OK)
        printf("decode: %zu positions cached, token[0] = %f\n", fa_kv_cache_len(cache), token[0]);
    else
        fail("fa_mha_forward_cached", rc);
    fa_kv_cache_free(cache);
    fa_mha_free(layer);
    return rc == FA_OK ? 0 : 1;
}

int main(void) {
    if (fa_abi_version() != FA_ABI_VERSION) {
        fprintf(stderr, "header (ABI %d) and library (ABI %u) differ\n", FA_ABI_VERSION,
                fa_abi_version());
        return 1;
    }
    printf("fastattn %s, %s kernels, %d threads\n", fa_version(), fa_variant_name(),
           fa_num_threads());
    if (attention() != 0 || decode() != 0) return EXIT_FAILURE;
    printf("done\n");
    return EXIT_SUCCESS;
}
