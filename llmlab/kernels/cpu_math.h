/* Maths helpers the C kernels share, written so loops that call them vectorise. */
#ifndef LLMLAB_CPU_MATH_H
#define LLMLAB_CPU_MATH_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp for x <= 0 as plain arithmetic, so the softmax loop vectorises (libm's expf is a scalar call):
 * x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite), e^r by the Cephes expf polynomial, 2^n built in the
 * exponent bits. Relative error ~1e-7; inputs below -87 give ~1e-38 rather than 0. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, 4);
    return p * two_n;
}

#endif
