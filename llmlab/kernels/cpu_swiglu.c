/* SiLU(gate) * up for CPU inference, one call instead of PyTorch's two ops (and, in bf16 on CPUs without bf16
 * instructions, their slow conversions): out = round(round(silu(g)) * u), each product rounded to the dtype as
 * FeedForward.forward's `act(g) * u` rounds it. silu(x) = x * sigmoid(x) with exp of -|x| from cpu_math.h, in
 * fp32 (within a few fp32 ulps of PyTorch's; after rounding to bf16 almost always the same value).
 * Built and loaded by cpu_swiglu.py through cbuild.py. gu (rows, 2 * inter): each row the gate then the up
 * projection (the fused gate_up Linear's output); out (rows, inter); both contiguous. Rows are spread over
 * `nthreads` threads from PARALLEL_MIN_ELEMENTS on: a decode step of 16 rows of SmolLM2's 1536 in bf16 takes
 * 10.4 us on two threads against 18.7 on one (2-core EPYC, Zen 4); one row, 1536 elements, stays on one. */
#include <math.h>
#include <stdint.h>

#include "cpu_dtypes.h"
#include "cpu_math.h"

int llmlab_swiglu_has_f16(void) { return HAS_F16; }

#define PARALLEL_MIN_ELEMENTS 16384

#define DEFINE_SWIGLU(NAME, T)                                                                                \
    static inline void row_##NAME(const T *g, const T *u, T *o, int64_t inter) {                              \
        _Pragma("omp simd") for (int64_t i = 0; i < inter; i++) {                                             \
            const float x = LOAD_##NAME(g, i), e = exp_nonpositive(-fabsf(x)); /* e^-|x| in (0, 1] */           \
            const float sig = x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);                                 \
            T s;                                                                                              \
            STORE_##NAME(&s, 0, x * sig);                                                                     \
            STORE_##NAME(o, i, LOAD_##NAME(&s, 0) * LOAD_##NAME(u, i));                                       \
        }                                                                                                     \
    }                                                                                                         \
    int swiglu_##NAME(const T *gu, T *out, int64_t rows, int64_t inter, int nthreads) {                        \
        if (rows * inter < PARALLEL_MIN_ELEMENTS || nthreads <= 1 || rows < 2) {                                          \
            for (int64_t r = 0; r < rows; r++)                                                                \
                row_##NAME(gu + r * 2 * inter, gu + r * 2 * inter + inter, out + r * inter, inter);           \
            return 0;                                                                                         \
        }                                                                                                     \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)") for (int64_t r = 0; r < rows; r++) \
            row_##NAME(gu + r * 2 * inter, gu + r * 2 * inter + inter, out + r * inter, inter);               \
        return 0;                                                                                             \
    }

DEFINE_SWIGLU(f32, float)
DEFINE_SWIGLU(bf16, uint16_t)
DEFINE_SWIGLU(f16, f16_t)
