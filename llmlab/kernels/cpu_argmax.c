/* argmax over the last dimension of fp32 rows, for the sampler: torch.argmax's CPU kernel ran at ~1 GB/s on a
 * 2-core Zen 3 EPYC (116 us for one row of SmolLM2's 49,152 logits, 683 us for 16; torch.amax, a plain
 * reduction, 12.5 us). Two vectorised passes per row: the maximum (and whether there is a NaN), then the first
 * index holding it. Same answer as torch.argmax: the first maximal index, the first NaN where a row has one.
 * Built and loaded by cpu_argmax.py through cbuild.py. x (rows, n) contiguous, n >= 1; out (rows,) int64. */
#include <math.h>
#include <stdint.h>

#define PARALLEL_MIN_ELEMENTS 262144

/* The first index in [0, n) where MATCH(p[i]) holds: 64-element chunks tested with a vector OR, then the hit chunk
 * element by element. */
#define FIRST(p, n, MATCH)                                                                                  \
    for (int64_t c0 = 0; c0 < (n); c0 += 64) {                                                             \
        const int64_t c1 = c0 + 64 < (n) ? c0 + 64 : (n);                                                  \
        int hit = 0;                                                                                       \
        _Pragma("omp simd reduction(| : hit)") for (int64_t i = c0; i < c1; i++) hit |= MATCH((p)[i]);    \
        if (hit)                                                                                           \
            for (int64_t i = c0; i < c1; i++)                                                              \
                if (MATCH((p)[i])) return i;                                                               \
    }

#define IS_NAN(v) ((v) != (v))
#define IS_MAX(v) ((v) == m)

static int64_t row_argmax(const float *p, int64_t n) {
    float m = -INFINITY;
    int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
    for (int64_t i = 0; i < n; i++) {
        m = p[i] > m ? p[i] : m;
        nan |= IS_NAN(p[i]);
    }
    if (nan) {
        FIRST(p, n, IS_NAN)
    }
    FIRST(p, n, IS_MAX)
    return 0; /* not reached: some element equals the maximum */
}

int argmax_rows_f32(const float *x, int64_t *out, int64_t rows, int64_t n, int nthreads) {
    if (n < 1) return 1;
    if (rows * n < PARALLEL_MIN_ELEMENTS || nthreads <= 1 || rows < 2) {
        for (int64_t r = 0; r < rows; r++) out[r] = row_argmax(x + r * n, n);
        return 0;
    }
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < rows; r++) out[r] = row_argmax(x + r * n, n);
    return 0;
}
