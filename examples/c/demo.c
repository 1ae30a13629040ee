/*
 * A first program with fastattn from C: one attention call, its error handling, a
 * decoder layer generating tokens through a KV cache, and a serving step: a batch of
 * requests decoding from a paged KV cache (fa_paged_kv_write, fa_sdpa_varlen).
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Serving: one decode step for 3 requests of different lengths whose keys and values live
 * in a paged bf16 cache [pages, PAGE, HKV, D] (FlashAttention-2's and vLLM's layout). Each
 * request's new key/value row is written to its next slot, then all three attend to their
 * pages in one call. */
enum { REQS = 3, PAGE = 16, PAGES = 8, PER_REQ = 3 };

static uint16_t bf16_of(float f) { /* round to nearest even (finite values) */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static int serve(void) {
    static uint16_t k_cache[PAGES * PAGE * HKV * D], v_cache[PAGES * PAGE * HKV * D];
    for (size_t i = 0; i < sizeof k_cache / sizeof *k_cache; i++) {
        k_cache[i] = bf16_of(0.01f * (float)(i % 11));
        v_cache[i] = bf16_of((float)(i % 3));
    }
    /* Pages of each request (any order; -1 pads), and its cached length before this step. */
    const int32_t block_table[REQS * PER_REQ] = {3, 0, -1, 5, -1, -1, 1, 6, 2};
    int32_t seqused_k[REQS] = {20, 7, 40};
    /* The new token of each request: its query [REQS, HQ, D] and K/V rows [REQS, HKV, D]. */
    static float q[REQS * HQ * D], k_new[REQS * HKV * D], v_new[REQS * HKV * D];
    static float out[REQS * HQ * D];
    for (size_t i = 0; i < sizeof q / sizeof *q; i++) q[i] = 0.01f * (float)(i % 13);
    for (size_t i = 0; i < sizeof k_new / sizeof *k_new; i++) k_new[i] = v_new[i] = 0.5f;

    /* Slot of position p of request r: page block_table[r][p / PAGE], row p % PAGE. */
    int64_t slots[REQS];
    for (int r = 0; r < REQS; r++) {
        int p = seqused_k[r];
        slots[r] = (int64_t)block_table[r * PER_REQ + p / PAGE] * PAGE + p % PAGE;
        seqused_k[r] = p + 1;
    }
    /* A packed [T, H, D] buffer is the [1, H, T, D] view with strides {T*H*D, D, H*D, 1}. */
    fa_tensor kn = {k_new, {1, HKV, REQS, D}, {REQS * HKV * D, D, HKV * D, 1}, FA_DTYPE_F32};
    fa_tensor vn = {v_new, {1, HKV, REQS, D}, {REQS * HKV * D, D, HKV * D, 1}, FA_DTYPE_F32};
    fa_tensor kc = {k_cache, {PAGES, PAGE, HKV, D}, {PAGE * HKV * D, HKV * D, D, 1},
                    FA_DTYPE_BF16};
    fa_tensor vc = {v_cache, {PAGES, PAGE, HKV, D}, {PAGE * HKV * D, HKV * D, D, 1},
                    FA_DTYPE_BF16};
    int rc = fa_paged_kv_write(&kn, &vn, &kc, &vc, slots);
    if (rc != FA_OK) return fail("fa_paged_kv_write", rc);

    const int32_t cu_seqlens_q[REQS + 1] = {0, 1, 2, 3}; /* one query per request */
    fa_varlen_seqs seqs;
    fa_varlen_seqs_init(&seqs, sizeof seqs);
    seqs.batch = REQS;
    seqs.index_dtype = FA_INDEX_I32;
    seqs.cu_seqlens_q = cu_seqlens_q;
    seqs.seqused_k = seqused_k;
    seqs.block_table = block_table;
    seqs.blocks_per_seq = PER_REQ;
    float sinks[HQ]; /* gpt-oss style: one learned logit per query head */
    for (int h = 0; h < HQ; h++) sinks[h] = 0.25f * (float)h;
    fa_sdpa_options opts;
    fa_sdpa_options_init(&opts, sizeof opts);
    opts.causal = 1;
    opts.sinks = sinks;
    fa_tensor tq = {q, {1, HQ, REQS, D}, {REQS * HQ * D, D, HQ * D, 1}, FA_DTYPE_F32};
    fa_tensor to = {out, {1, HQ, REQS, D}, {REQS * HQ * D, D, HQ * D, 1}, FA_DTYPE_F32};
    rc = fa_sdpa_varlen(&tq, &kc, &vc, &to, &seqs, &opts);
    if (rc != FA_OK) return fail("fa_sdpa_varlen", rc);
    printf("serving: %d requests decoded from a paged cache, out[0] = %f\n", REQS, out[0]);
    return 0;
}

int main(void) {
    if (fa_abi_version() != FA_ABI_VERSION) {
        fprintf(stderr, "header (ABI %d) and library (ABI %u) differ\n", FA_ABI_VERSION,
                fa_abi_version());
        return 1;
    }
    printf("fastattn %s, %s kernels, %d threads\n", fa_version(), fa_variant_name(),
           fa_num_threads());
    if (attention() != 0 || decode() != 0 || serve() != 0) return EXIT_FAILURE;
    printf("done\n");
    return EXIT_SUCCESS;
}
