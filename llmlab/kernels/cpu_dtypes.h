/* Element types of llmlab's C kernels: fp32, bf16 (as uint16_t bits) and fp16 (_Float16 where the compiler
 * has it). LOAD_<name>(p, i) reads element i as a float; STORE_<name>(p, i, v) rounds v to nearest even.
 * Each kernel library defines llmlab_has_f16() from HAS_F16 so Python knows whether its fp16 entry works. */
#ifndef LLMLAB_CPU_DTYPES_H
#define LLMLAB_CPU_DTYPES_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, NaN kept a NaN */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#define LOAD_f32(p, i) ((p)[i])
#define STORE_f32(p, i, v) ((p)[i] = (v))
#define LOAD_bf16(p, i) bf16_to_f32((p)[i])
#define STORE_bf16(p, i, v) ((p)[i] = f32_to_bf16(v))
#ifdef __FLT16_MAX__
#define HAS_F16 1
typedef _Float16 f16_t;
#define LOAD_f16(p, i) ((float)(p)[i])
#define STORE_f16(p, i, v) ((p)[i] = (_Float16)(v))
#else
#define HAS_F16 0
typedef uint16_t f16_t; /* placeholder: the fp16 entry points compute nothing; Python does not call them */
#define LOAD_f16(p, i) (0.0f)
#define STORE_f16(p, i, v) ((void)(v))
#endif

#endif
