/* y = x w^T + b for a few rows of x (decode batches of 1-4 sequences), weights streamed once at the memory
 * bandwidth. Built and loaded by cpu_linear.py through cbuild.py (-O3 -march=native, OpenMP on torch's pool).
 *
 * Layouts, all contiguous: x (M, K), w (N, K) as nn.Linear keeps it, bias (N,) or NULL, y (M, N); M <= 4.
 * x is converted to fp32 once; each weight element is loaded and converted once and multiplied into all M
 * rows; sums in fp32 (vector lanes summed as a tree), the result rounded to the weight's dtype. Output rows
 * are split over `nthreads` threads in contiguous ranges.
 *
 * Why not oneDNN: at one row it streams SmolLM2-135M's bf16 weights at 13.6 GB/s and fp32 at 17.8 GB/s on a
 * 2-core Zen 4; plain loads, shifts and FMAs reach 25.4 and 27.1 GB/s, about the read bandwidth of that
 * machine (benchmarks/results/cpu_linear.json). From 4 rows on oneDNN's blocked GEMM wins again
 * (tune_packing measures where, per CPU).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_dtypes.h"

int llmlab_skinny_has_f16(void) { return HAS_F16; }

/* One weight row against MM rows of x (fp32, row stride K); MM is a constant, so unused sums vanish. */
#define DEFINE_DOT(NAME, T, MM)                                                                           \
    static inline __attribute__((always_inline)) void dot_##NAME##_##MM(const float *xf, const T *wr,     \
                                                                        int64_t K, float *o) {            \
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;                                                 \
        _Pragma("omp simd reduction(+ : s0, s1, s2, s3)") for (int64_t k = 0; k < K; k++) {               \
            const float wk = LOAD_##NAME(wr, k);                                                          \
            s0 += xf[k] * wk;                                                                             \
            if (MM > 1) s1 += xf[K + k] * wk;                                                             \
            if (MM > 2) s2 += xf[2 * K + k] * wk;                                                         \
            if (MM > 3) s3 += xf[3 * K + k] * wk;                                                         \
        }                                                                                                 \
        o[0] = s0, o[1] = s1, o[2] = s2, o[3] = s3;                                                       \
    }

#define DEFINE_LINEAR(NAME, T)                                                                            \
    DEFINE_DOT(NAME, T, 1) DEFINE_DOT(NAME, T, 2) DEFINE_DOT(NAME, T, 3) DEFINE_DOT(NAME, T, 4)           \
    int skinny_linear_##NAME(const T *x, const T *w, const T *bias, T *y, int64_t M, int64_t N, int64_t K, \
                             int nthreads) {                                                               \
        if (M < 1 || M > 4) return 1;                                                                      \
        if (nthreads < 1) nthreads = 1;                                                                    \
        float *xf = malloc(sizeof(float) * (size_t)(M * K));                                               \
        if (xf == NULL) return 2;                                                                          \
        for (int64_t i = 0; i < M * K; i++) xf[i] = LOAD_##NAME(x, i);                                     \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)") for (int64_t n = 0; n < N; n++) { \
            float o[4];                                                                                    \
            const T *wr = w + n * K;                                                                       \
            switch (M) {                                                                                   \
                case 1: dot_##NAME##_1(xf, wr, K, o); break;                                               \
                case 2: dot_##NAME##_2(xf, wr, K, o); break;                                               \
                case 3: dot_##NAME##_3(xf, wr, K, o); break;                                               \
                default: dot_##NAME##_4(xf, wr, K, o);                                                     \
            }                                                                                              \
            const float b = bias ? LOAD_##NAME(bias, n) : 0.0f;                                            \
            for (int64_t m = 0; m < M; m++) STORE_##NAME(y, m * N + n, o[m] + b);                          \
        }                                                                                                  \
        free(xf);                                                                                          \
        return 0;                                                                                          \
    }

DEFINE_LINEAR(f32, float)
DEFINE_LINEAR(bf16, uint16_t)
DEFINE_LINEAR(f16, f16_t)
