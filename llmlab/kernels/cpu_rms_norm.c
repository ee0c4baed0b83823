/* RMSNorm for CPU inference, one call instead of the ~8 ops eager PyTorch runs (upcast, square, mean, add,
 * rsqrt, multiply, downcast, weight): y = w * cast(x / sqrt(mean(x^2) + eps)), statistics in fp32 and LLaMA's
 * order (normalise in fp32, round to the input's dtype, then multiply by the weight and round again).
 * Built and loaded by cpu_norm.py through cbuild.py. x, w, y contiguous; x and y (rows, dim), w (dim,).
 * Rows are spread over `nthreads` threads only when there are many (a decode step's few rows are faster on one
 * thread than the thread pool's wake-up). add_rms_norm_<dtype> adds a residual first (h += r, in place); it
 * splits rows from ADD_PARALLEL_MIN_ELEMENTS on: 16 rows of 576 in bf16, 4.8-6.1 us on two threads against
 * 6.9-7.5 on one (median, 2-core Zen 4 EPYC). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_dtypes.h"

int llmlab_norm_has_f16(void) { return HAS_F16; }

#define PARALLEL_MIN_ELEMENTS 262144
#define ADD_PARALLEL_MIN_ELEMENTS 8192

#define DEFINE_RMS_NORM(NAME, T)                                                                              \
    static inline void row_##NAME(const T *x, const T *w, T *y, int64_t dim, float eps) {                     \
        float ss = 0.0f;                                                                                      \
        _Pragma("omp simd reduction(+ : ss)") for (int64_t d = 0; d < dim; d++) {                             \
            const float v = LOAD_##NAME(x, d);                                                                \
            ss += v * v;                                                                                      \
        }                                                                                                     \
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);                                                \
        _Pragma("omp simd") for (int64_t d = 0; d < dim; d++) {                                               \
            T normed;                                                                                         \
            STORE_##NAME(&normed, 0, LOAD_##NAME(x, d) * inv);                                                \
            STORE_##NAME(y, d, LOAD_##NAME(&normed, 0) * LOAD_##NAME(w, d));                                  \
        }                                                                                                     \
    }                                                                                                         \
    int rms_norm_##NAME(const T *x, const T *w, T *y, int64_t rows, int64_t dim, float eps, int nthreads) {   \
        if (rows * dim < PARALLEL_MIN_ELEMENTS || nthreads <= 1) {                                            \
            for (int64_t r = 0; r < rows; r++) row_##NAME(x + r * dim, w, y + r * dim, dim, eps);             \
            return 0;                                                                                         \
        }                                                                                                     \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)") for (int64_t r = 0; r < rows; r++) \
            row_##NAME(x + r * dim, w, y + r * dim, dim, eps);                                                \
        return 0;                                                                                             \
    }                                                                                                         \
    /* h += r, rounded to the dtype as PyTorch's add, then y = RMSNorm(h): a residual add and the norm after  \
     * it in one call (kernels/cpu_decode.py). Rows over `nthreads` threads from ADD_PARALLEL_MIN_ELEMENTS.   \
     */                                                                                                       \
    static inline void add_row_##NAME(T *h, const T *r, const T *w, T *y, int64_t dim, float eps) {           \
        _Pragma("omp simd") for (int64_t d = 0; d < dim; d++) STORE_##NAME(h, d, LOAD_##NAME(h, d) + LOAD_##NAME(r, d)); \
        row_##NAME(h, w, y, dim, eps);                                                                        \
    }                                                                                                         \
    int add_rms_norm_##NAME(T *h, const T *r, const T *w, T *y, int64_t rows, int64_t dim, float eps,         \
                            int nthreads) {                                                                   \
        if (rows * dim < ADD_PARALLEL_MIN_ELEMENTS || nthreads <= 1 || rows < 2) {                            \
            for (int64_t i = 0; i < rows; i++) add_row_##NAME(h + i * dim, r + i * dim, w, y + i * dim, dim, eps); \
            return 0;                                                                                         \
        }                                                                                                     \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)") for (int64_t i = 0; i < rows; i++) \
            add_row_##NAME(h + i * dim, r + i * dim, w, y + i * dim, dim, eps);                               \
        return 0;                                                                                             \
    }

DEFINE_RMS_NORM(f32, float)
DEFINE_RMS_NORM(bf16, uint16_t)
DEFINE_RMS_NORM(f16, f16_t)
