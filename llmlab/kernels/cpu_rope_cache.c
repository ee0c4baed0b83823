/* RoPE on q and k and the paged KV write, in one call per layer instead of the ~16 ops eager PyTorch runs (per
 * projection: chunk, neg, cat, two multiplies and an add; then two index_copy_ into the pools with their
 * transposes). Built and loaded by cpu_rope_cache.py through cbuild.py.
 *
 * Per token t of n, with the "rotate half" layout of model/layers.apply_rope (pairs (d, d + hd/2)):
 *   q_out[t, h]            = rope(q[t, h])          h < hq    (q_out contiguous (n, hq, hd))
 *   k_pages[slots[t], h]   = rope(k[t, h])          h < hkv
 *   v_pages[slots[t], h]   = v[t, h]
 * rope(x)[d] = x[d] * cos[t, d] + r[d] * sin[t, d], r = (-x[hd/2:], x[:hd/2]); each product and the sum is
 * rounded to the element type, as the three eager ops round them, so the results are bitwise the eager ones
 * (fp32 too: contraction into an FMA, which would skip a rounding, is off for this file).
 * q, k, v: heads of hd contiguous elements, consecutive heads hd apart, tokens q_stride / k_stride / v_stride
 * apart (views of the fused q/k/v projection's output); cos, sin: cs_stride apart per token.
 * Tokens are spread over `nthreads` threads from PARALLEL_MIN_ELEMENTS on: 16 tokens of SmolLM2's heads in bf16,
 * 10.3 us on two threads against 14.4 on one (median, 2-core Zen 4 EPYC); a token or a few stay on one thread.
 * Returns 1 (nothing written) when a slot is outside [0, num_slots), 2 for an odd hd. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif
#include <stdint.h>
#include <string.h>

#include "cpu_dtypes.h"

int llmlab_rope_has_f16(void) { return HAS_F16; }

#define PARALLEL_MIN_ELEMENTS 8192

/* v rounded to the element type and back to fp32 (what storing a product in T and reading it again gives). */
#define ROUND_f32(v) (v)
#define ROUND_bf16(v) bf16_to_f32(f32_to_bf16(v))
#if HAS_F16
#define ROUND_f16(v) ((float)(f16_t)(v))
#else
#define ROUND_f16(v) (v) /* placeholder: never called */
#endif

/* rope(x) into y: the two halves as separate loops, so each vectorises (no per-element branch). */
#define DEFINE_ROPE_CACHE(NAME, T)                                                                               \
    static inline void rope_##NAME(const T *x, const T *c, const T *s, T *y, int64_t hd) {                       \
        const int64_t half = hd / 2;                                                                             \
        _Pragma("omp simd") for (int64_t d = 0; d < half; d++) {                                                 \
            const float a = ROUND_##NAME(LOAD_##NAME(x, d) * LOAD_##NAME(c, d));                                 \
            const float b = ROUND_##NAME(-LOAD_##NAME(x, d + half) * LOAD_##NAME(s, d));                         \
            STORE_##NAME(y, d, a + b);                                                                           \
        }                                                                                                        \
        _Pragma("omp simd") for (int64_t d = half; d < hd; d++) {                                                \
            const float a = ROUND_##NAME(LOAD_##NAME(x, d) * LOAD_##NAME(c, d));                                 \
            const float b = ROUND_##NAME(LOAD_##NAME(x, d - half) * LOAD_##NAME(s, d));                          \
            STORE_##NAME(y, d, a + b);                                                                           \
        }                                                                                                        \
    }                                                                                                            \
    static void token_##NAME(const T *q, const T *k, const T *v, const T *cos, const T *sin, T *q_out,          \
                             T *k_pages, T *v_pages, int64_t slot, int64_t t, int64_t hq, int64_t hkv,           \
                             int64_t hd, int64_t q_stride, int64_t k_stride, int64_t v_stride,                   \
                             int64_t cs_stride) {                                                                \
        const T *c = cos + t * cs_stride, *s = sin + t * cs_stride;                                              \
        for (int64_t h = 0; h < hq; h++) rope_##NAME(q + t * q_stride + h * hd, c, s, q_out + (t * hq + h) * hd, hd); \
        T *kp = k_pages + slot * hkv * hd, *vp = v_pages + slot * hkv * hd;                                      \
        for (int64_t h = 0; h < hkv; h++) {                                                                      \
            rope_##NAME(k + t * k_stride + h * hd, c, s, kp + h * hd, hd);                                       \
            memcpy(vp + h * hd, v + t * v_stride + h * hd, (size_t)hd * sizeof(T));                              \
        }                                                                                                        \
    }                                                                                                            \
    int rope_cache_##NAME(const T *q, const T *k, const T *v, const T *cos, const T *sin, T *q_out, T *k_pages,  \
                          T *v_pages, const int64_t *slots, int64_t n, int64_t hq, int64_t hkv, int64_t hd,      \
                          int64_t q_stride, int64_t k_stride, int64_t v_stride, int64_t cs_stride,              \
                          int64_t num_slots, int nthreads) {                                                     \
        if (hd % 2) return 2;                                                                                    \
        for (int64_t t = 0; t < n; t++)                                                                          \
            if (slots[t] < 0 || slots[t] >= num_slots) return 1;                                                 \
        if (n * (hq + 2 * hkv) * hd < PARALLEL_MIN_ELEMENTS || nthreads <= 1 || n < 2) {                                  \
            for (int64_t t = 0; t < n; t++)                                                                      \
                token_##NAME(q, k, v, cos, sin, q_out, k_pages, v_pages, slots[t], t, hq, hkv, hd, q_stride,     \
                             k_stride, v_stride, cs_stride);                                                     \
            return 0;                                                                                            \
        }                                                                                                        \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)") for (int64_t t = 0; t < n; t++)       \
            token_##NAME(q, k, v, cos, sin, q_out, k_pages, v_pages, slots[t], t, hq, hkv, hd, q_stride,         \
                         k_stride, v_stride, cs_stride);                                                         \
        return 0;                                                                                                \
    }

DEFINE_ROPE_CACHE(f32, float)
DEFINE_ROPE_CACHE(bf16, uint16_t)
DEFINE_ROPE_CACHE(f16, f16_t)
