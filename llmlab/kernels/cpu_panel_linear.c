/* y = x w^T + b for decode batches of a few to a few dozen rows, from a weight packed once into 16-column panels:
 * the register-tiled inner loop of a GEMM with no horizontal sums. Built and loaded by cpu_panel_linear.py through
 * cbuild.py (-O3 -march=native, OpenMP on torch's pool); needs AVX-512 or AVX2 with FMA, else the library says
 * so through llmlab_panel_has() and Python keeps oneDNN. bf16 multiplies with VDPBF16PS where the CPU has
 * AVX512-BF16; elsewhere (Intel Skylake-SP to Ice Lake, AVX2 CPUs such as Zen 2/3) each packed pair is widened to
 * two fp32 vectors (shifts, or a mask) and multiplied with two FMAs by rows of x widened to fp32 once per call: a
 * decode step reads half the bytes of fp32 at the same FMA count. Past 32 rows (AVX2: 64) each panel group is
 * widened once into an L2 buffer instead of once per block of rows (bf16_widened_once). AVX2 has 16 vector
 * registers of 8 lanes, so its tile is one panel (two vectors) by 6 rows; bf16 decode of one or two rows takes a
 * tile whose sums are split over more accumulators, and prefetches ahead in its own stream (tile_bf16_wide_few).
 *
 * Packed layouts (cpu_panel_linear.py's pack_panels), P = ceil(N / 16) panels, columns past N zero:
 *   fp32  wp[P][K][16]          one 64-byte vector per (panel, k): 16 output columns at one k
 *   bf16  wp[P][K / 2][16][2]   one 64-byte vector per (panel, k pair): 16 columns x 2 adjacent k (K even)
 * A tile of NT panels x up to MB rows keeps NV * MB fp32 vectors of sums in registers (NV = NT panels x PV
 * vectors a panel); each step loads NV weight vectors and broadcasts one element (fp32) or one k pair (bf16) of
 * each row of x, then one FMA (two, widened) or one VDPBF16PS per (vector, row). Panel groups are split over the
 * threads; each group's panels stay in L2 while every block of rows passes over them, so each weight byte comes
 * from memory once per call, and each pass prefetches the thread's next group into L2 at the pace it reads this
 * one: without that, memory sat idle while rows 9-16 ran from L2, and SmolLM2-135M's linears at 16 rows took
 * 14.0 ms instead of 12.2-12.4 (bf16, 2-core Zen 4).
 *
 * Rounding: bf16 products are exact in fp32 and VDPBF16PS adds them in fp32 (inputs and sums that are bf16
 * denormals count as zero; the widened path keeps denormals); the bias is added in fp32 and the sum rounded to
 * nearest even once.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The vector ISA: AVX-512 (16 fp32 lanes, a 16-column panel is one vector) or AVX2 with FMA (8 lanes, two
 * vectors a panel; Zen 2/3, Intel client cores). Tiles are written over vectors: NV = NT * PV of them per k. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define PANEL_VEC 512
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PANEL_VEC 256
#else
#define PANEL_VEC 0
#endif
#define PANEL_F32 (PANEL_VEC != 0)
#if PANEL_VEC == 512 && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define PANEL_BF16 1
#else
#define PANEL_BF16 0
#endif
#if (PANEL_VEC == 512 && defined(__AVX512BW__) && !PANEL_BF16) || PANEL_VEC == 256
#define PANEL_BF16_WIDE 1 /* bf16 widened to fp32 (no VDPBF16PS) */
#else
#define PANEL_BF16_WIDE 0
#endif

#if PANEL_VEC == 512
#define NT 3 /* panels per tile: 48 columns */
#define MB 8 /* rows per tile (ROWS_CASES has a case per count): NV * MB = 24 of 32 vector registers */
#else
#define NT 1 /* 16 columns, two vectors */
#define MB 6 /* NV * MB = 12 sums + 2 weight vectors + a broadcast = 15 of 16 registers (BLIS's 6 x 16 AVX2 tile) */
#endif

/* 1 where the entry point for `dtype` (0 fp32, 1 bf16) computes; 0 where this CPU/compiler lacks the ISA. */
int llmlab_panel_has(int dtype) { return dtype == 0 ? PANEL_F32 : dtype == 1 ? PANEL_BF16 || PANEL_BF16_WIDE : 0; }

/* 1 where bf16 multiplies with VDPBF16PS, 2 where it is widened to fp32 and FMAs, 0 where there is no bf16 kernel. */
int llmlab_panel_bf16_mode(void) { return PANEL_BF16 ? 1 : PANEL_BF16_WIDE ? 2 : 0; }

/* Vector primitives. vtail_t says which lanes of a vector at column col lie before N (a mask, or a count). */
#define INLINE static inline __attribute__((always_inline))
#if PANEL_VEC == 512
#define VL 16
#define PV 1
typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vtail_t;
INLINE vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
INLINE void vf_store_aligned(float *p, vf v) { _mm512_store_ps(p, v); }
INLINE vf vf_zero(void) { return _mm512_setzero_ps(); }
INLINE vf vf_set1(float x) { return _mm512_set1_ps(x); }
INLINE vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
INLINE vf vf_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
INLINE vi vi_load(const uint16_t *p) { return _mm512_loadu_si512(p); }
INLINE vf bf16_even(vi w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); } /* low halves: even k */
INLINE vf bf16_odd(vi w) { return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u))); }
INLINE vtail_t vtail(int64_t col, int64_t N) {
    const int64_t left = N - col;
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}
INLINE vf bias_f32(const float *b, vtail_t t) { return _mm512_maskz_loadu_ps(t, b); }
INLINE void store_f32(float *y, vf v, vtail_t t) { _mm512_mask_storeu_ps(y, t, v); }
#if PANEL_BF16 || PANEL_BF16_WIDE
INLINE vf bias_bf16(const uint16_t *b, vtail_t t) {
    const __m256i bits = _mm256_maskz_loadu_epi16(t, b);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
/* fp32 -> bf16, round to nearest even, a NaN stays a quiet NaN: VCVTNEPS2BF16, or the same in code. */
#if PANEL_BF16
INLINE __m256i round_to_bf16(vf v) { return (__m256i)_mm512_cvtneps_pbh(v); }
#else
INLINE __m256i round_to_bf16(vf v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
#endif
INLINE void store_bf16(uint16_t *y, vf v, vtail_t t) { _mm256_mask_storeu_epi16(y, t, round_to_bf16(v)); }
#endif
#elif PANEL_VEC == 256
#define VL 8
#define PV 2
typedef __m256 vf;
typedef __m256i vi;
typedef int vtail_t; /* lanes to keep: 1-8 */
INLINE vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
INLINE void vf_store_aligned(float *p, vf v) { _mm256_store_ps(p, v); }
INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
INLINE vf vf_set1(float x) { return _mm256_set1_ps(x); }
INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
INLINE vf vf_fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vi vi_load(const uint16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE vf bf16_even(vi w) { return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)); }
/* the odd k by two shifts: no mask constant holding a register */
INLINE vf bf16_odd(vi w) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(w, 16), 16)); }
INLINE vtail_t vtail(int64_t col, int64_t N) { return N - col >= 8 ? 8 : (int)(N - col); }
INLINE vf bias_f32(const float *b, vtail_t t) {
    if (t == 8) return _mm256_loadu_ps(b);
    float tmp[8] = {0};
    memcpy(tmp, b, (size_t)t * sizeof(float));
    return _mm256_loadu_ps(tmp);
}
INLINE void store_f32(float *y, vf v, vtail_t t) {
    if (t == 8) {
        _mm256_storeu_ps(y, v);
    } else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        memcpy(y, tmp, (size_t)t * sizeof(float));
    }
}
INLINE vf bias_bf16(const uint16_t *b, vtail_t t) {
    uint16_t tmp[8] = {0};
    if (t < 8) memcpy(tmp, b, (size_t)t * sizeof(uint16_t)); /* a tail: the bias ends inside this vector */
    const __m128i bits = _mm_loadu_si128((const __m128i *)(t < 8 ? tmp : b));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
/* fp32 -> bf16 in code, round to nearest even, a NaN stays a quiet NaN; the 8 results packed into 128 bits. */
INLINE __m128i round_to_bf16(vf v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_srli_epi32(_mm256_blendv_epi8(r, _mm256_or_si256(bits, _mm256_set1_epi32(0x400000)), nan), 16);
    /* packus works within 128-bit lanes: [r0-3 r0-3 | r4-7 r4-7]; quadwords 0 and 2 hold r0-7 in order */
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
}
INLINE void store_bf16(uint16_t *y, vf v, vtail_t t) {
    const __m128i h = round_to_bf16(v);
    if (t == 8) {
        _mm_storeu_si128((__m128i *)y, h);
    } else {
        uint16_t tmp[8];
        _mm_storeu_si128((__m128i *)tmp, h);
        memcpy(y, tmp, (size_t)t * sizeof(uint16_t));
    }
}
#endif
#define NV (NT * PV) /* vectors of sums per row of a tile */
#define FEW_AHEAD 1024 /* the 1-2 row AVX2 tiles prefetch this many bytes ahead in their stream */

#if PANEL_F32
/* acc[v][m] = sum over k of x[m][k] * vector v of the tile's nt panels at k, from fp32 panels (panel stride
 * K * 16 floats); PF (a constant) 1: prefetch the same place in `next` as each panel's line is read. */
#define F32_SUMS(acc, x, ldx, wp, K, next, PF, nt, mb)                                                        \
    do {                                                                                                      \
        _Pragma("GCC unroll 8") for (int v = 0; v < nt * PV; v++)                                             \
            _Pragma("GCC unroll 8") for (int m = 0; m < mb; m++) acc[v][m] = vf_zero();                       \
        for (int64_t k = 0; k < K; k++) {                                                                     \
            vf w[NV];                                                                                         \
            _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) {                                            \
                _Pragma("GCC unroll 2") for (int c = 0; c < PV; c++)                                          \
                    w[t * PV + c] = vf_load(wp + (t * K + k) * 16 + c * VL);                                  \
                if (PF) _mm_prefetch((const char *)(next + (t * K + k) * 16), _MM_HINT_T1);                   \
            }                                                                                                 \
            _Pragma("GCC unroll 8") for (int m = 0; m < mb; m++) {                                            \
                const vf xb = vf_set1(x[m * ldx + k]);                                                        \
                _Pragma("GCC unroll 8") for (int v = 0; v < nt * PV; v++) acc[v][m] = vf_fmadd(w[v], xb, acc[v][m]); \
            }                                                                                                 \
        }                                                                                                     \
    } while (0)
#endif

#if PANEL_BF16 || PANEL_BF16_WIDE
/* y[m][col0 + VL v + c] = bf16(acc[v][m][c] + bias), columns past N untouched. */
INLINE void store_sums_bf16(vf acc[NV][MB], const uint16_t *bias, uint16_t *y, int64_t ldy, int64_t col0, int64_t N,
                            const int nt, const int mb) {
#pragma GCC unroll 8
    for (int v = 0; v < nt * PV; v++) {
        const int64_t col = col0 + VL * v;
        if (col >= N) break;
        const vtail_t tail = vtail(col, N);
        const vf b = bias ? bias_bf16(bias + col, tail) : vf_zero();
#pragma GCC unroll 8
        for (int m = 0; m < mb; m++) store_bf16(y + m * ldy + col, vf_add(acc[v][m], b), tail);
    }
}
#endif

#if PANEL_BF16
/* One tile: nt panels from `wp` (panel stride K2 * 32 elements) times mb rows of x (row stride ldx). */
INLINE void tile_bf16(const uint16_t *x, int64_t ldx, const uint16_t *wp, int64_t K2, const uint16_t *bias,
                      uint16_t *y, int64_t ldy, int64_t col0, int64_t N, const uint16_t *next, const int every,
                      const int nt, const int mb) {
    (void)every;
    __m512 acc[NT][MB];
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++)
#pragma GCC unroll 8
        for (int m = 0; m < mb; m++) acc[t][m] = _mm512_setzero_ps();
    for (int64_t j = 0; j < K2; j++) {
        __m512bh w[NT];
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            w[t] = (__m512bh)_mm512_loadu_si512(wp + (t * K2 + j) * 32);
            _mm_prefetch((const char *)(next + (t * K2 + j) * 32), _MM_HINT_T1);
        }
#pragma GCC unroll 8
        for (int m = 0; m < mb; m++) {
            int32_t pair;
            memcpy(&pair, x + m * ldx + 2 * j, 4);
            const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 8
            for (int t = 0; t < nt; t++) acc[t][m] = _mm512_dpbf16_ps(acc[t][m], w[t], xb);
        }
    }
    store_sums_bf16(acc, bias, y, ldy, col0, N, nt, mb);
}
#endif

#if PANEL_BF16_WIDE
/* One tile as tile_bf16, from rows of x already widened to fp32 (row stride ldx floats): each packed vector of
 * VL columns x a k pair becomes the even-k and odd-k fp32 vectors, each multiplied by its broadcast x value.
 * Every `every`-th k pair prefetches the next nt lines from `next` (NULL: none; see WIDE_PREFETCH): nt * K2 / every
 * lines in all, a slice of the next group. */
INLINE void tile_bf16_wide(const float *x, int64_t ldx, const uint16_t *wp, int64_t K2, const uint16_t *bias,
                           uint16_t *y, int64_t ldy, int64_t col0, int64_t N, const uint16_t *next, const int every,
                           const int nt, const int mb) {
    vf acc[NV][MB];
    int until = 1; /* k pairs until the next prefetch */
#pragma GCC unroll 8
    for (int v = 0; v < nt * PV; v++)
#pragma GCC unroll 8
        for (int m = 0; m < mb; m++) acc[v][m] = vf_zero();
    for (int64_t j = 0; j < K2; j++) {
        if (next && --until == 0) {
#pragma GCC unroll 8
            for (int t = 0; t < nt; t++) _mm_prefetch((const char *)(next + t * 32), _MM_HINT_T1);
            next += nt * 32, until = every;
        }
#if PV == 1 /* AVX-512: all of the tile's weight vectors widened at once, each row's pair broadcast once */
        vf we[NV], wo[NV];
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            const vi w = vi_load(wp + (t * K2 + j) * 32);
            we[t] = bf16_even(w);
            wo[t] = bf16_odd(w);
        }
#pragma GCC unroll 8
        for (int m = 0; m < mb; m++) {
            const vf xe = vf_set1(x[m * ldx + 2 * j]), xo = vf_set1(x[m * ldx + 2 * j + 1]);
#pragma GCC unroll 8
            for (int v = 0; v < nt; v++) acc[v][m] = vf_fmadd(wo[v], xo, vf_fmadd(we[v], xe, acc[v][m]));
        }
#else
        /* AVX2: the even k of the tile's vectors times each row, then the odd k, as two fp32 steps, so 2 weight
         * vectors and a broadcast live beside the 12 sums in 16 registers; widening both halves at once spilled
         * sums. 2-core Zen 3 EPYC, SmolLM2-135M's bf16 linears: 12 rows 18.1 against 23.2 ms, 16 rows 24.2
         * against 29.0. (GCC 12 interleaves the two steps into spills on AVX-512.) */
#pragma GCC unroll 2
        for (int odd = 0; odd < 2; odd++) {
            vf w[NV];
#pragma GCC unroll 8
            for (int v = 0; v < nt * PV; v++) {
                const vi raw = vi_load(wp + ((v / PV) * K2 + j) * 32 + (v % PV) * 2 * VL);
                w[v] = odd ? bf16_odd(raw) : bf16_even(raw);
            }
#pragma GCC unroll 8
            for (int m = 0; m < mb; m++) {
                const vf xb = vf_set1(x[m * ldx + 2 * j + odd]);
#pragma GCC unroll 8
                for (int v = 0; v < nt * PV; v++) acc[v][m] = vf_fmadd(w[v], xb, acc[v][m]);
            }
        }
#endif
    }
    store_sums_bf16(acc, bias, y, ldy, col0, N, nt, mb);
}

#if PV == 2
/* tile_bf16_wide for one or two rows (decode of one or two sequences) on AVX2. With one row the general tile's two
 * sums were two chains of dependent FMAs, two FMAs per k pair each: from cache it read weights at ~37 GB/s; here
 * each sum is split over accumulators for the even and the odd k (and, for one row, of even and odd k pairs):
 * eight chains, added at the end (~42 GB/s). Prefetching FEW_AHEAD bytes ahead in the thread's own stream (its
 * groups are contiguous) instead of the next group's same place: SmolLM2-135M's bf16 linears at one row, 2-core
 * Zen 3 EPYC, the builds alternating: 13.1 against 14.2 ms, against 12.1-12.3 ms to merely read the bytes. */
INLINE void tile_bf16_wide_few(const float *x, int64_t ldx, const uint16_t *wp, int64_t K2, const uint16_t *bias,
                               uint16_t *y, int64_t ldy, int64_t col0, int64_t N, const int mb) {
    const int U = mb == 1 ? 2 : 1; /* k pairs per step, each with its own accumulators */
    vf a[PV][2][4], out[NV][MB];
#pragma GCC unroll 2
    for (int v = 0; v < PV; v++)
#pragma GCC unroll 2
        for (int m = 0; m < mb; m++)
#pragma GCC unroll 4
            for (int s = 0; s < 2 * U; s++) a[v][m][s] = vf_zero();
    int64_t j = 0;
    for (; j + U <= K2; j += U) {
#pragma GCC unroll 2
        for (int u = 0; u < U; u++) {
            const uint16_t *line = wp + (j + u) * 32;
            _mm_prefetch((const char *)line + FEW_AHEAD, _MM_HINT_T0);
            vi raw[PV];
#pragma GCC unroll 2
            for (int v = 0; v < PV; v++) raw[v] = vi_load(line + v * 2 * VL);
#pragma GCC unroll 2
            for (int m = 0; m < mb; m++) {
                const vf xe = vf_set1(x[m * ldx + 2 * (j + u)]), xo = vf_set1(x[m * ldx + 2 * (j + u) + 1]);
#pragma GCC unroll 2
                for (int v = 0; v < PV; v++) {
                    a[v][m][2 * u] = vf_fmadd(bf16_even(raw[v]), xe, a[v][m][2 * u]);
                    a[v][m][2 * u + 1] = vf_fmadd(bf16_odd(raw[v]), xo, a[v][m][2 * u + 1]);
                }
            }
        }
    }
    if (j < K2) { /* one row and an odd number of k pairs: the last one */
        const vf xe = vf_set1(x[2 * j]), xo = vf_set1(x[2 * j + 1]);
#pragma GCC unroll 2
        for (int v = 0; v < PV; v++) {
            const vi raw = vi_load(wp + j * 32 + v * 2 * VL);
            a[v][0][0] = vf_fmadd(bf16_even(raw), xe, a[v][0][0]);
            a[v][0][1] = vf_fmadd(bf16_odd(raw), xo, a[v][0][1]);
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < PV; v++)
#pragma GCC unroll 2
        for (int m = 0; m < mb; m++)
            out[v][m] = U == 2 ? vf_add(vf_add(a[v][m][0], a[v][m][1]), vf_add(a[v][m][2], a[v][m][3]))
                               : vf_add(a[v][m][0], a[v][m][1]);
    store_sums_bf16(out, bias, y, ldy, col0, N, 1, mb);
}
#define WIDE_TILE(x, ldx, wp, K2, bias, y, ldy, col0, N, next, every, nt, mb)                                   \
    ((mb) <= 2 ? tile_bf16_wide_few(x, ldx, wp, K2, bias, y, ldy, col0, N, mb)                                \
               : tile_bf16_wide(x, ldx, wp, K2, bias, y, ldy, col0, N, next, every, nt, mb))
#else
#define WIDE_TILE tile_bf16_wide
#endif

/* One tile as tile_bf16_wide, from panels already widened into an fp32 buffer (panel stride K * 16 floats). */
INLINE void tile_wf(const float *x, int64_t ldx, const float *wf, int64_t K, const uint16_t *bias, uint16_t *y,
                    int64_t ldy, int64_t col0, int64_t N, const float *next, const int every, const int nt,
                    const int mb) {
    (void)next, (void)every;
    vf acc[NV][MB];
    F32_SUMS(acc, x, ldx, wf, K, wf, 0, nt, mb);
    store_sums_bf16(acc, bias, y, ldy, col0, N, nt, mb);
}

/* x (M, K) bf16 as fp32 rows in a new buffer, also stored in *owned for the caller to free; NULL when out of
 * memory. */
static const float *widen_rows(const uint16_t *x, int64_t M, int64_t K, float **owned) {
    float *xf = *owned = malloc((size_t)(M * K) * sizeof(float));
    if (xf)
        for (int64_t i = 0; i < M * K; i++) {
            const uint32_t bits = (uint32_t)x[i] << 16;
            memcpy(xf + i, &bits, 4);
        }
    return xf;
}
#endif

#if PANEL_F32
/* The tile's fp32 sums (nt panels x mb rows) plus the bias into y, as store_sums_bf16. */
INLINE void store_sums_f32(vf acc[NV][MB], const float *bias, float *y, int64_t ldy, int64_t col0, int64_t N,
                           const int nt, const int mb) {
#pragma GCC unroll 8
    for (int v = 0; v < nt * PV; v++) {
        const int64_t col = col0 + VL * v;
        if (col >= N) break;
        const vtail_t tail = vtail(col, N);
        const vf b = bias ? bias_f32(bias + col, tail) : vf_zero();
#pragma GCC unroll 8
        for (int m = 0; m < mb; m++) store_f32(y + m * ldy + col, vf_add(acc[v][m], b), tail);
    }
}

INLINE void tile_f32(const float *x, int64_t ldx, const float *wp, int64_t K, const float *bias, float *y,
                     int64_t ldy, int64_t col0, int64_t N, const float *next, const int every, const int nt,
                     const int mb) {
    (void)every;
    vf acc[NV][MB];
    F32_SUMS(acc, x, ldx, wp, K, next, 1, nt, mb);
    store_sums_f32(acc, bias, y, ldy, col0, N, nt, mb);
}
#if PV == 2
/* AVX2 (one panel a tile), calls of several row blocks (every > 1): each `every` k prefetch one line of `next`, this
 * block's slice of the next group (F32_PREFETCH), so the blocks share that stream where each issued all of it
 * (tile_f32). SmolLM2-135M's fused fp32 decode linears, 2-core Zen 3, the builds alternating in one process, 4-8
 * processes (a countdown form of this loop): 16 rows 23.7-25.4 against 27.8-29.3 ms, 12 rows 18.7-24.5 against
 * 21.9-25.4, 64 rows 75.6-80.5 against 81.3-85.7; 1-4 rows unchanged; with no software prefetch 16 rows took
 * 31.8-33.6 against 24.2-26.0. Prefill-sized calls keep tile_f32 (F32_SLICED_ROWS). */
INLINE void tile_f32_sliced(const float *x, int64_t ldx, const float *wp, int64_t K, const float *bias, float *y,
                            int64_t ldy, int64_t col0, int64_t N, const float *next, const int every,
                            const int nt, const int mb) {
    vf acc[NV][MB];
#pragma GCC unroll 8
    for (int v = 0; v < nt * PV; v++)
#pragma GCC unroll 8
        for (int m = 0; m < mb; m++) acc[v][m] = vf_zero();
    for (int64_t k0 = 0; k0 < K; k0 += every) { /* a prefetch, then `every` k */
        if (next) _mm_prefetch((const char *)next, _MM_HINT_T1);
        next += 16;
        const int64_t k1 = k0 + every < K ? k0 + every : K;
        for (int64_t k = k0; k < k1; k++) {
            vf w[NV];
#pragma GCC unroll 2
            for (int v = 0; v < PV; v++) w[v] = vf_load(wp + k * 16 + v * VL);
#pragma GCC unroll 8
            for (int m = 0; m < mb; m++) {
                const vf xb = vf_set1(x[m * ldx + k]);
#pragma GCC unroll 2
                for (int v = 0; v < PV; v++) acc[v][m] = vf_fmadd(w[v], xb, acc[v][m]);
            }
        }
    }
    store_sums_f32(acc, bias, y, ldy, col0, N, nt, mb);
}
#endif
#endif

#if PANEL_F32 && PV == 2
/* tile_f32 for one or two rows on AVX2, as tile_bf16_wide_few: each sum split over accumulators for 4 (one row)
 * or 2 (two rows) consecutive k, eight FMA chains, and a prefetch FEW_AHEAD bytes ahead in the thread's stream.
 * SmolLM2-135M's fp32 linears, 2-core Zen 3, builds alternating (4 runs): from cache 57-66 -> 84-109 GB/s; from
 * memory two rows 25.8-31.6 -> 24.2-29.9 ms, one row the same within noise (24.5-34.2 ms: memory-bound). */
INLINE void tile_f32_few(const float *x, int64_t ldx, const float *wp, int64_t K, const float *bias, float *y,
                         int64_t ldy, int64_t col0, int64_t N, const int mb) {
    const int U = mb == 1 ? 4 : 2; /* k per step, each with its own accumulators */
    vf a[PV][2][4], out[NV][MB];
#pragma GCC unroll 2
    for (int v = 0; v < PV; v++)
#pragma GCC unroll 2
        for (int m = 0; m < mb; m++)
#pragma GCC unroll 4
            for (int u = 0; u < U; u++) a[v][m][u] = vf_zero();
    int64_t k = 0;
    for (; k + U <= K; k += U) {
#pragma GCC unroll 4
        for (int u = 0; u < U; u++) {
            const float *line = wp + (k + u) * 16;
            _mm_prefetch((const char *)line + FEW_AHEAD, _MM_HINT_T0);
            vf w[PV];
#pragma GCC unroll 2
            for (int v = 0; v < PV; v++) w[v] = vf_load(line + v * VL);
#pragma GCC unroll 2
            for (int m = 0; m < mb; m++) {
                const vf xb = vf_set1(x[m * ldx + k + u]);
#pragma GCC unroll 2
                for (int v = 0; v < PV; v++) a[v][m][u] = vf_fmadd(w[v], xb, a[v][m][u]);
            }
        }
    }
    for (; k < K; k++) { /* the last K % U */
#pragma GCC unroll 2
        for (int m = 0; m < mb; m++) {
            const vf xb = vf_set1(x[m * ldx + k]);
#pragma GCC unroll 2
            for (int v = 0; v < PV; v++) a[v][m][0] = vf_fmadd(vf_load(wp + k * 16 + v * VL), xb, a[v][m][0]);
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < PV; v++)
#pragma GCC unroll 2
        for (int m = 0; m < mb; m++)
            out[v][m] = U == 4 ? vf_add(vf_add(a[v][m][0], a[v][m][1]), vf_add(a[v][m][2], a[v][m][3]))
                               : vf_add(a[v][m][0], a[v][m][1]);
    store_sums_f32(out, bias, y, ldy, col0, N, 1, mb);
}
#define F32_TILE(x, ldx, wp, K, bias, y, ldy, col0, N, next, every, nt, mb)                                     \
    ((mb) <= 2      ? tile_f32_few(x, ldx, wp, K, bias, y, ldy, col0, N, mb)                                  \
     : (every) > 1 ? tile_f32_sliced(x, ldx, wp, K, bias, y, ldy, col0, N, next, every, nt, mb)              \
                   : tile_f32(x, ldx, wp, K, bias, y, ldy, col0, N, next, every, nt, mb))
#else
#define F32_TILE tile_f32
#endif

/* The row-block and panel-count dispatch: every (nt, mb) pair a constant, so each tile's sums live in registers. */
#if MB == 8
#define ROWS_6_7(TILE, ...) case 6: TILE(__VA_ARGS__, 6); break; case 7: TILE(__VA_ARGS__, 7); break;
#else
#define ROWS_6_7(TILE, ...)
#endif
#define ROWS_CASES(TILE, ...)                       \
    switch (mb) {                                   \
        case 1: TILE(__VA_ARGS__, 1); break;        \
        case 2: TILE(__VA_ARGS__, 2); break;        \
        case 3: TILE(__VA_ARGS__, 3); break;        \
        case 4: TILE(__VA_ARGS__, 4); break;        \
        case 5: TILE(__VA_ARGS__, 5); break;        \
        ROWS_6_7(TILE, __VA_ARGS__)                 \
        default: TILE(__VA_ARGS__, MB);             \
    }
#if NT == 3
#define PANELS_CASES(TILE, ...)                     \
    if (nt == 3) {                                  \
        ROWS_CASES(TILE, __VA_ARGS__, 3)            \
    } else if (nt == 2) {                           \
        ROWS_CASES(TILE, __VA_ARGS__, 2)            \
    } else {                                        \
        ROWS_CASES(TILE, __VA_ARGS__, 1)            \
    }
#else
#define PANELS_CASES(TILE, ...) (void)nt; ROWS_CASES(TILE, __VA_ARGS__, 1)
#endif

/* x (M, K), wp packed (see above), bias (N,) or NULL, y (M, N); all contiguous. Returns 0, 1 on bad sizes or a
 * missing ISA, 2 when out of memory (nothing written either way). XT is the type the tiles read x as: T, or
 * float where WIDEN(x, M, K, &owned) returns x widened into a buffer `owned` that this call frees. PREFETCH(next,
 * m0, M, span) is where the row block from m0 starts prefetching (the next group of `span` elements, a slice of it,
 * or NULL: nothing), PREFETCH_EVERY(M) how many weight vectors per line it prefetches (tile_bf16_wide). */
#define DEFINE_PANEL_LINEAR(NAME, T, XT, HAS, STEP, TILE, WIDEN, PREFETCH, PREFETCH_EVERY)                    \
    int panel_linear_##NAME(const T *x_in, const T *wp, const T *bias, T *y, int64_t M, int64_t N, int64_t K,   \
                            int nthreads) {                                                                    \
        if (!HAS || M < 1 || N < 1 || K < STEP || K % STEP) return 1;                                          \
        if (nthreads < 1) nthreads = 1;                                                                        \
        XT *owned = NULL;                                                                                      \
        const XT *x = WIDEN(x_in, M, K, &owned);                                                               \
        if (x == NULL) return 2;                                                                               \
        const int64_t P = (N + 15) / 16, groups = (P + NT - 1) / NT, KS = K / STEP;                            \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)") for (int64_t g = 0; g < groups; g++) { \
            const int64_t p0 = g * NT;                                                                         \
            const int nt = (int)(P - p0 < NT ? P - p0 : NT);                                                  \
            const T *w = wp + p0 * KS * 16 * STEP;                                                            \
            const T *nx0 = g + 1 < groups ? w + NT * KS * 16 * STEP : w; /* prefetch never faults */          \
            for (int64_t m0 = 0; m0 < M; m0 += MB) {                                                          \
                const int mb = (int)(M - m0 < MB ? M - m0 : MB);                                              \
                const int every = (int)PREFETCH_EVERY(M);                                                     \
                const T *nx = PREFETCH(nx0, m0, M, NT * KS * 16 * STEP);                                      \
                const XT *xr = x + m0 * K;                                                                    \
                T *yr = y + m0 * N;                                                                           \
                PANELS_CASES(TILE, xr, K, w, KS, bias, yr, N, p0 * 16, N, nx, every)                          \
            }                                                                                                 \
        }                                                                                                     \
        free(owned);                                                                                           \
        return 0;                                                                                              \
    }
/* No widening: the tiles read x as given. */
#define SAME_ROWS(x, M, K, owned) (x)
/* Every row block prefetches the next group at the pace it reads this one. */
#define EVERY_PASS(next, m0, M, span) (next)
/* The widened tile: the R = ceil(M / MB) row blocks share the next group, block r prefetching its r-th slice with
 * one line for every R weight vectors it reads, so memory streams the whole time while the blocks compute from L2.
 * 2-core Ice Lake Xeon, SmolLM2-135M's bf16 linears, alternating runs: 16 rows 15.7-16.4 ms against 16.8-17.4 with
 * only the last block prefetching the whole group, 17.2-18.4 with every block prefetching all of it. At 1-2 rows
 * the Xeon's hardware prefetcher streams best alone (8.5-8.8 ms against 10.0-10.9 with prefetching); a 2-core
 * Zen 3 EPYC (AVX2) wants the prefetch there too (1 row 11.2-11.3 ms against 11.9-13.3 without). */
#if PANEL_VEC == 512
#define WIDE_BARE_ROWS 2 /* up to this many rows, no software prefetch */
#else
#define WIDE_BARE_ROWS 0
#endif
#define WIDE_PREFETCH(next, m0, M, span) \
    ((M) <= WIDE_BARE_ROWS ? NULL : (next) + ((m0) / MB) * ((span) / WIDE_EVERY(M)))
#define WIDE_EVERY(M) (((M) + MB - 1) / MB)
#define ONE_EVERY(M) 1

#if PANEL_F32
#if PV == 2 /* AVX2, decode-sized calls: the row blocks share the next group's prefetch, each its slice (tile_f32) */
#define F32_SLICED_ROWS 64 /* past this (prefill) tile_f32, every block prefetching all of it: at 512 and 2,048 rows
                              the sliced tile was 1-10% slower in 3 of 4 alternating runs each */
#define F32_PREFETCH(next, m0, M, span) \
    ((M) <= F32_SLICED_ROWS ? WIDE_PREFETCH(next, m0, M, span) : EVERY_PASS(next, m0, M, span))
#define F32_EVERY(M) ((M) <= F32_SLICED_ROWS ? WIDE_EVERY(M) : 1)
#else
#define F32_PREFETCH EVERY_PASS
#define F32_EVERY ONE_EVERY
#endif
DEFINE_PANEL_LINEAR(f32, float, float, PANEL_F32, 1, F32_TILE, SAME_ROWS, F32_PREFETCH, F32_EVERY)
#else
int panel_linear_f32(const float *x, const float *wp, const float *bias, float *y, int64_t M, int64_t N, int64_t K,
                     int nthreads) {
    (void)x, (void)wp, (void)bias, (void)y, (void)M, (void)N, (void)K, (void)nthreads;
    return 1;
}
#endif
#if PANEL_BF16
DEFINE_PANEL_LINEAR(bf16, uint16_t, uint16_t, PANEL_BF16, 2, tile_bf16, SAME_ROWS, EVERY_PASS, ONE_EVERY)
#elif PANEL_BF16_WIDE
DEFINE_PANEL_LINEAR(bf16_per_tile, uint16_t, float, PANEL_BF16_WIDE, 2, WIDE_TILE, widen_rows,
                    WIDE_PREFETCH, WIDE_EVERY)
/* Many rows (a prefill chunk): each thread widens a panel group once into its own fp32 buffer (NT panels x K x 16,
 * ~300 KB at K = 1536: it stays in L2) and every row block multiplies from there; widening in the tile instead
 * repeats the shifts for each block of 8 rows. SmolLM2-135M's linears, 2-core Ice Lake Xeon: 512 rows 366 against
 * 486 ms (297 against 224 GFLOP/s), 128 rows 97 against 119; at 32 rows and fewer the tile's widening wins
 * (32: 32.2 against 33.3 ms, 16: 17.9 against 22.6) and panel_linear_bf16 keeps it. */
static int bf16_widened_once(const uint16_t *x_in, const uint16_t *wp, const uint16_t *bias, uint16_t *y, int64_t M,
                             int64_t N, int64_t K, int nthreads) {
    float *owned = NULL;
    const float *x = widen_rows(x_in, M, K, &owned);
    if (!x) return 2;
    const int64_t P = (N + 15) / 16, groups = (P + NT - 1) / NT, K2 = K / 2, span = NT * K * 16;
    float *bufs = aligned_alloc(64, (size_t)(nthreads * span) * sizeof(float));
    if (!bufs) { free(owned); return 2; }
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t g = 0; g < groups; g++) {
#ifdef _OPENMP
        float *wf = bufs + omp_get_thread_num() * span;
#else
        float *wf = bufs;
#endif
        const int64_t p0 = g * NT;
        const int nt = (int)(P - p0 < NT ? P - p0 : NT);
        const uint16_t *w = wp + p0 * K2 * 32;
        for (int t = 0; t < nt; t++)
            for (int64_t j = 0; j < K2; j++)
                for (int c = 0; c < PV; c++) {
                    const vi v = vi_load(w + (t * K2 + j) * 32 + c * 2 * VL);
                    vf_store_aligned(wf + (t * K + 2 * j) * 16 + c * VL, bf16_even(v));
                    vf_store_aligned(wf + (t * K + 2 * j + 1) * 16 + c * VL, bf16_odd(v));
                }
        for (int64_t m0 = 0; m0 < M; m0 += MB) {
            const int mb = (int)(M - m0 < MB ? M - m0 : MB);
            const float *xr = x + m0 * K;
            uint16_t *yr = y + m0 * N;
            PANELS_CASES(tile_wf, xr, K, wf, K, bias, yr, N, p0 * 16, N, wf, 1)
        }
    }
    free(bufs);
    free(owned);
    return 0;
}

/* More rows than this: widen each panel group once (bf16_widened_once). 2-core Zen 3 EPYC (AVX2), SmolLM2-135M's
 * bf16 linears: per tile 17.0 / 23.9 / 43.8 / 83.6 / 175.6 ms at 12 / 16 / 32 / 64 / 128 rows, once 25.0 / 32.3 /
 * 50.9 / 88.3 / 170.8. */
#if PANEL_VEC == 512
#define WIDEN_ONCE_ROWS 32
#else
#define WIDEN_ONCE_ROWS 64
#endif
int panel_linear_bf16(const uint16_t *x, const uint16_t *wp, const uint16_t *bias, uint16_t *y, int64_t M, int64_t N,
                      int64_t K, int nthreads) {
    if (M < 1 || N < 1 || K < 2 || K % 2) return 1;
    if (nthreads < 1) nthreads = 1;
    return (M > WIDEN_ONCE_ROWS ? bf16_widened_once : panel_linear_bf16_per_tile)(x, wp, bias, y, M, N, K, nthreads);
}
#else
int panel_linear_bf16(const uint16_t *x, const uint16_t *wp, const uint16_t *bias, uint16_t *y, int64_t M, int64_t N,
                      int64_t K, int nthreads) {
    (void)x, (void)wp, (void)bias, (void)y, (void)M, (void)N, (void)K, (void)nthreads;
    return 1;
}
#endif
