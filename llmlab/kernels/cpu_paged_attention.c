/* Paged decode attention for the CPU: one query per sequence over its KV pages, read in place.
 *
 * Built and loaded by cpu_paged_attention.py (the system C compiler, -O3 -march=native, OpenMP when the
 * compiler has it). Layouts, all contiguous:
 *   q, out        (S, H, hd)
 *   k_pages/v_pages (num_slots, Hkv, hd): position p of row s lives in slot
 *                 tables[s, p / block_size] * block_size + p % block_size
 *   tables        (S, nb) int64;  ctx (S,) int64: row s sees positions [ctx - window, ctx) (all when window <= 0)
 * Returns 0; 1 when a context is longer than its table covers, 3 when a table names a block outside the
 * num_slots of the pages (both checked before any page is read), 2 when scratch space cannot be allocated.
 * One work item per (row, KV head): the g = H / Hkv query heads sharing that KV head read each K and V row
 * once, converted to fp32; scores and softmax in fp32 (two passes over the keys: scores, then the
 * weighted sum of V). Items are spread over `nthreads` OpenMP threads (torch's own pool: the library links
 * the libgomp.so.1 torch has loaded); when there are fewer items than threads (a small batch), each item's
 * keys are split into ranges done in parallel and their partial softmaxes combined.
 * With AVX-512 and a head size of 64 or 128 the item is written with intrinsics (fast_<dtype>): the query rows
 * and output sums of up to 4 query heads stay in registers and each K/V row is converted once into vectors;
 * SmolLM2 heads, bf16, 2 threads: 16 rows x 256 keys 168-195 -> 99-101 us, 1 x 2048 89 -> 51-54 us, 1.2-2.0x
 * over other head shapes (same inputs, the two builds alternating, two runs); outputs bitwise equal at hd=64 (bf16
 * with VDPBF16PS scores, below: within a rounding).
 * With AVX2 + FMA (no AVX-512) and a head size of 64 or 128 another intrinsics item (fast_<dtype>, below) takes
 * all of a row's KV heads at once when there are at least as many rows as threads.
 * With AVX-512, rows that are a prefill chunk (consecutive context lengths, one block table) are computed in tiles
 * of many queries, flash-attention style (RUN_MIN, run_tile_<dtype>): 1.9x at 2048 tokens.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_dtypes.h"
#include "cpu_math.h"
#ifdef _OPENMP
#include <omp.h>
#define THREAD_ID omp_get_thread_num()
#else
#define THREAD_ID 0
#endif

/* Softmax numerators of `count` rows of L scores (row stride `stride`) in place, each row's maximum and sum of
 * exp(score - max) into mx[j] and sum[j]. */
static inline __attribute__((always_inline)) void softmax_rows(float *sc, int64_t stride, int64_t L, int64_t count,
                                                               float *sum, float *mx) {
    for (int64_t j = 0; j < count; j++) {
        float *sj = sc + j * stride, t = 0.0f, m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int64_t i = 0; i < L; i++) m = sj[i] > m ? sj[i] : m;
#pragma omp simd reduction(+ : t)
        for (int64_t i = 0; i < L; i++) {
            sj[i] = exp_nonpositive(sj[i] - m);
            t += sj[i];
        }
        sum[j] = t, mx[j] = m;
    }
}

int llmlab_has_f16(void) { return HAS_F16; }

/* Keys per part, at least, when a small batch splits its keys over the threads (see DEFINE_PAGED_DECODE). */
#define SPLIT_MIN_KEYS 128

/* Blocks ahead the items prefetch, into L2 (prefetcht2) rather than L1. On a 2-core Zen 4 VM, against the one-block
 * L1 prefetch before it (`python benchmarks/cpu_paged_attention_ab.py --baseline eb62c43`: SmolLM2 heads, pages of
 * 30 layers visited in turn, so read from memory; outputs bitwise equal), per layer: bf16 16 rows x 190 keys 223 ->
 * 149 us, 16 x 512 552 -> 366, 1 x 2048 115 -> 84, 64 x 256 1033 -> 742; fp32 1.2-1.4x; 1 x 190 the same. The
 * hint gave most of it (the AVX2 build on that CPU gained 1.3-1.5x from it too); four to eight blocks ahead beat
 * one at long contexts. On a Zen 3 (the AVX2 item) 1 to 4 blocks and the hint had measured the same. */
#define PF_BLOCKS 4
/* Prefetch `rows` rows of `row_bytes` each, `stride` bytes apart, from `first` on, into L2. */
static inline __attribute__((always_inline)) void prefetch_rows(const void *first, int64_t rows, int64_t stride,
                                                                int64_t row_bytes) {
    for (int64_t o = 0; o < rows; o++)
        for (int64_t c = 0; c < row_bytes; c += 64) __builtin_prefetch((const char *)first + o * stride + c, 0, 1);
}

/* The blocks PF_BLOCKS ahead of block b of a row whose keys are [lo, hi) (at the row's first block, blocks 1 to
 * PF_BLOCKS ahead, so the start is covered too), each `block_size` rows of `row_bytes`, `slot_bytes` apart, from
 * `head` (the pages at the first head read, slot 0) and the row's block table `table`. */
static inline __attribute__((always_inline)) void prefetch_ahead(const char *head, const int64_t *table, int64_t b,
                                                                 int64_t lo, int64_t hi, int64_t block_size,
                                                                 int64_t slot_bytes, int64_t row_bytes) {
    for (int64_t a = b == lo / block_size ? 1 : PF_BLOCKS; a <= PF_BLOCKS && (b + a) * block_size < hi; a++)
        prefetch_rows(head + table[b + a] * block_size * slot_bytes, block_size, slot_bytes, row_bytes);
}

/* Visit positions [lo, n) of row s block by block: `slot` is each position's slot, `i` its index from lo. At
 * each block's start the rows of head h in `pages` of the block PF_BLOCKS ahead are prefetched (at the first
 * block, blocks 1 to PF_BLOCKS): blocks sit anywhere in the pool, so the hardware prefetcher cannot follow the
 * block table (SmolLM2 heads, bf16, 2 cores, one block ahead into L1: 64 rows x 2048 keys 13.6-15.4 -> 10.2-11.2
 * ms, 16 x 2048 1.8-2.6 -> 1.8-2.1 ms; four runs each; for the L2 hint and the distance see PF_BLOCKS). */
#define FOR_SLOTS(s, lo, n, i, slot, pages, BODY)                                                             \
    for (int64_t b_ = (lo) / block_size; b_ * block_size < (n); b_++) {                                      \
        const int64_t base_ = tables[(s) * nb + b_] * block_size, p0_ = b_ * block_size;                     \
        const int64_t first_ = (lo) > p0_ ? (lo) : p0_, last_ = (n) < p0_ + block_size ? (n) : p0_ + block_size; \
        for (int64_t a_ = b_ == (lo) / block_size ? 1 : PF_BLOCKS; a_ <= PF_BLOCKS && (b_ + a_) * block_size < (n); \
             a_++)                                                                                             \
            prefetch_rows((pages) + (tables[(s) * nb + b_ + a_] * block_size * Hkv + h) * hd, block_size,     \
                          Hkv * hd * (int64_t)sizeof(*(pages)), hd * (int64_t)sizeof(*(pages)));              \
        for (int64_t p_ = first_; p_ < last_; p_++) {                                                         \
            const int64_t i = p_ - (lo), slot = base_ + p_ - p0_;                                             \
            BODY                                                                                              \
        }                                                                                                     \
    }

/* A prefill chunk reaches the kernel as one row per token: its rows have consecutive context lengths and the same
 * block table. Runs of at least RUN_MIN such rows are cut into tiles of RUN_TILE rows, each computed for one KV head
 * at a time as flash attention does (run_tile_<dtype>): a block of 16 keys is converted (K transposed) once for
 * the tile's RUN_TILE x g queries; scores are 16-key vectors, one FMA per query and dimension, no horizontal sums;
 * the softmax runs online (a running maximum and sum per query, the output sums rescaled when the maximum grows).
 * Other rows (decodes, short chunks) stay one item each. SmolLM2 heads, 2-core Zen 4, against rows as items
 * (`python benchmarks/cpu_paged_attention_ab.py --baseline 0ca292a --prefill`, pages of 30 layers), per layer, bf16:
 * 1 x 2048 tokens 66.7 -> 34.6 ms (torch's CPU SDPA on contiguous K/V: 42.5), 1 x 512 4.08 -> 2.31 ms, 4 x 512
 * 12.1 -> 9.6 ms, 16 x 128 3.50 -> 3.10 ms; fp32 1.07-1.98x; outputs within a rounding of the items' (fp32 1.5e-6,
 * bf16 one ulp). Tiles of 16, 32 and 64 rows took about the same time at 1 x 2048. In bf16 on AVX512-BF16 CPUs
 * the scores are VDPBF16PS of K transposed as pairs of dims and the query's raw pairs (dp_bf16; the scale after):
 * `--baseline 3718d57 --prefill`, 1.08-1.14x (1 x 2048 35.5 -> 32.9 ms, 4 x 512 11.2 -> 9.8), within a bf16 ulp. */
#define RUN_MIN 8
#define RUN_TILE 32

/* The run tiles of rows 0..S-1 into tiles (pairs r0, r1; returns how many) and the other rows into rest (*nrest). */
static int64_t find_runs(const int64_t *tables, const int64_t *ctx, int64_t S, int64_t nb, int64_t *tiles,
                         int64_t *rest, int64_t *nrest) {
    int64_t count = 0, k = 0;
    for (int64_t r = 0; r < S;) {
        int64_t e = r + 1;
        while (e < S && ctx[e] == ctx[e - 1] + 1 && memcmp(tables + e * nb, tables + r * nb, sizeof(int64_t) * (size_t)nb) == 0)
            e++;
        if (e - r >= RUN_MIN)
            for (int64_t t = r; t < e; t += RUN_TILE, count++) tiles[2 * count] = t, tiles[2 * count + 1] = t + RUN_TILE < e ? t + RUN_TILE : e;
        else
            for (int64_t t = r; t < e; t++) rest[k++] = t;
        r = e;
    }
    *nrest = k;
    return count;
}

/* One (row s, KV head h) item over the positions [lo, hi). Always inlined into the parallel loop with hd a
 * constant where it is 64 or 128, so the dot products and V updates compile to straight vector code. `w` is
 * this thread's scratch. With `part` NULL the item writes its g output rows; otherwise it leaves its partial
 * softmax there for combine(): g maxima, g sums of exp(score - max), then g x hd unnormalised outputs. */
#define DEFINE_ITEM(NAME, T)                                                                                  \
    static inline __attribute__((always_inline)) void item_##NAME(                                            \
        const T *q, const T *k_pages, const T *v_pages, const int64_t *tables, T *out, int64_t s, int64_t h,  \
        int64_t lo, int64_t hi, int64_t H, int64_t Hkv, const int64_t hd, int64_t nb, int64_t block_size,     \
        float scale, int64_t max_keys, float *w, float *part) {                                               \
        const int64_t g = H / Hkv, L = hi - lo;                                                                \
        float *qf = w, *row = qf + g * hd, *acc = row + hd, *sc = acc + g * hd, *sum = sc + g * max_keys;     \
        float *mx = sum + g;                                                                                   \
        for (int64_t j = 0; j < g * hd; j++) {                                                                 \
            qf[j] = LOAD_##NAME(q, (s * H + h * g) * hd + j) * scale;                                          \
            acc[j] = 0.0f;                                                                                     \
        }                                                                                                      \
        FOR_SLOTS(s, lo, hi, i, slot, k_pages, { /* scores */                                                  \
            const T *kr = k_pages + (slot * Hkv + h) * hd;                                                     \
            _Pragma("omp simd") for (int64_t d = 0; d < hd; d++) row[d] = LOAD_##NAME(kr, d);                  \
            for (int64_t j = 0; j < g; j++) {                                                                  \
                const float *qj = qf + j * hd;                                                                 \
                float dot = 0.0f;                                                                              \
                _Pragma("omp simd reduction(+ : dot)") for (int64_t d = 0; d < hd; d++) dot += qj[d] * row[d]; \
                sc[j * max_keys + i] = dot;                                                                    \
            }                                                                                                  \
        })                                                                                                     \
        softmax_rows(sc, max_keys, L, g, sum, mx);                                                             \
        FOR_SLOTS(s, lo, hi, i, slot, v_pages, { /* weighted sum of V */                                       \
            const T *vr = v_pages + (slot * Hkv + h) * hd;                                                     \
            _Pragma("omp simd") for (int64_t d = 0; d < hd; d++) row[d] = LOAD_##NAME(vr, d);                  \
            for (int64_t j = 0; j < g; j++) {                                                                  \
                const float wt = sc[j * max_keys + i];                                                         \
                float *aj = acc + j * hd;                                                                      \
                _Pragma("omp simd") for (int64_t d = 0; d < hd; d++) aj[d] += wt * row[d];                     \
            }                                                                                                  \
        })                                                                                                     \
        if (part != NULL) {                                                                                    \
            for (int64_t j = 0; j < g; j++) part[j] = mx[j], part[g + j] = sum[j];                             \
            memcpy(part + 2 * g, acc, sizeof(float) * (size_t)(g * hd));                                       \
            return;                                                                                            \
        }                                                                                                      \
        for (int64_t j = 0; j < g; j++) {                                                                      \
            const float inv = L > 0 ? 1.0f / sum[j] : 0.0f;                                                    \
            for (int64_t d = 0; d < hd; d++) STORE_##NAME(out, (s * H + h * g + j) * hd + d, acc[j * hd + d] * inv); \
        }                                                                                                      \
    }


#if defined(__AVX512F__)
#include <immintrin.h>
/* 16 elements as fp32 vectors, and back (round to nearest even). */
static inline __attribute__((always_inline)) __m512 ld16_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline __attribute__((always_inline)) __m512 ld16_bf16(const uint16_t *p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
static inline __attribute__((always_inline)) __m512 ld16_f16(const f16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline __attribute__((always_inline)) void st16_f32(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
/* [sum of a's lanes, b's, c's, d's], each summed in _mm512_reduce_add_ps's order (so the same bits): 14 shuffles
 * and adds for four sums against 8 for one. */
static inline __attribute__((always_inline)) __m128 hsum4_512(__m512 a, __m512 b, __m512 c, __m512 d) {
    /* 128-bit lanes: ab = [a0 + a2, a1 + a3, b0 + b2, b1 + b3], cd alike, then x = [a, b, c, d] partials */
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    const __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    const __m512 y = _mm512_add_ps(x, _mm512_permute_ps(x, 0x4E)); /* [x0 + x2, x1 + x3, ...] in each lane */
    const __m512 z = _mm512_add_ps(y, _mm512_permute_ps(y, 0xB1)); /* lane totals in each lane's element 0 */
    return _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), z));
}
static inline __attribute__((always_inline)) void st16_bf16(uint16_t *p, __m512 v) {
    /* f32_to_bf16 of cpu_dtypes.h on 16 lanes: round to nearest even, a NaN kept a (quiet) NaN */
    const __m512i u = _mm512_castps_si512(v), high = _mm512_srli_epi32(u, 16);
    const __m512i lsb = _mm512_and_si512(high, _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_or_si512(high, _mm512_set1_epi32(0x40)));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(r));
}
static inline __attribute__((always_inline)) void st16_f16(f16_t *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* The item for head sizes that are multiples of 16 (NV = hd / 16 vectors a row), GC query heads at a time with
 * their query and output rows in registers: each K row is converted once into NV vectors and dotted with the GC
 * queries, four keys at a time with one tree of shuffles per four scores (hsum4_512; same bits as a horizontal
 * sum each); each V row converted once and added into the GC accumulators. Same arguments, scratch use and
 * results as item_<NAME>: scores and softmax in fp32, two passes over the keys. The four-key sums, against one
 * per key (SmolLM2 heads, bf16, 2-core Zen 4, `benchmarks/cpu_paged_attention_ab.py --baseline 1b6330b`): pages
 * in cache (--layers 1) 1.04-1.08x, e.g. 16 rows x 512 keys 177-184 -> 167-170 us; pages from memory the same
 * (0.92-1.04x, noise); the engine's prefill rows (kernel in cache) 107 -> 101 ms a 16 x 128-token step.
 * In bf16 on CPUs with AVX512-BF16 the scores are VDPBF16PS of the raw query and K rows (dp_bf16; exact products,
 * fp32 sums, the scale after): `cpu_paged_attention_ab.py --baseline b2d22ba`, pages from memory 1.03-1.06x
 * (16 x 512 413 -> 389 us, 64 x 256 940 -> 890), in cache (--layers 1) 1.03-1.08x; outputs within a bf16 rounding. */
#define DEFINE_FAST_ITEM(NAME, T)                                                                             \
    static inline __attribute__((always_inline)) void fast_##NAME(                                            \
        const T *q, const T *k_pages, const T *v_pages, const int64_t *tables, T *out, int64_t s, int64_t h,  \
        int64_t lo, int64_t hi, int64_t H, int64_t Hkv, const int64_t NV, const int64_t GC, int64_t nb,       \
        int64_t block_size, float scale, int64_t max_keys, float *w, float *part) {                           \
        const int64_t g = H / Hkv, L = hi - lo, hd = 16 * NV, stride = Hkv * hd;                              \
        float *sc = w, *sum = sc + g * max_keys, *mx = sum + g;                                               \
        for (int64_t c0 = 0; c0 < g; c0 += GC) {                                                               \
            __m512 qv[4][8], acc[4][8];                                                                        \
            __m512i qw[4][4]; /* bf16 with VDPBF16PS: the query rows as they are (pairs of bf16) */            \
            if (DPBF16_##NAME)                                                                                 \
                _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++)                                       \
                _Pragma("GCC unroll 4") for (int64_t c = 0; c < NV / 2; c++)                                   \
                    qw[j][c] = _mm512_loadu_si512((const __m512i *)(q + (s * H + h * g + c0 + j) * hd) + c);    \
            _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++)                                           \
            _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++) {                                         \
                qv[j][c] = _mm512_mul_ps(ld16_##NAME(q + (s * H + h * g + c0 + j) * hd + 16 * c),              \
                                         _mm512_set1_ps(scale));                                              \
            }                                                                                                  \
            for (int64_t b = lo / block_size; b * block_size < hi; b++) { /* scores, four keys at a time */      \
                const int64_t p0 = b * block_size, first = lo > p0 ? lo : p0;                                  \
                const int64_t last = hi < p0 + block_size ? hi : p0 + block_size;                              \
                prefetch_ahead((const char *)(k_pages + h * hd), tables + s * nb, b, lo, hi, block_size,       \
                               stride * (int64_t)sizeof(T), hd * (int64_t)sizeof(T));                          \
                const T *k0 = k_pages + ((tables[s * nb + b] * block_size + first - p0) * Hkv + h) * hd;      \
                float *si = sc + first - lo;                                                                   \
                int64_t p = first;                                                                             \
                for (; DPBF16_##NAME && p + 4 <= last; p += 4) { /* bf16: VDPBF16PS on the raw rows */       \
                    __m512 t[4][4];                                                                            \
                    _Pragma("GCC unroll 4") for (int64_t r = 0; r < 4; r++) {                                  \
                        const __m512i *kr = (const __m512i *)(k0 + (p - first + r) * stride);                  \
                        __m512i kw[4];                                                                         \
                        _Pragma("GCC unroll 4") for (int64_t c = 0; c < NV / 2; c++) kw[c] = _mm512_loadu_si512(kr + c); \
                        _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++) {                             \
                            t[j][r] = dp_bf16(_mm512_setzero_ps(), qw[j][0], kw[0]);                           \
                            _Pragma("GCC unroll 4") for (int64_t c = 1; c < NV / 2; c++)                       \
                                t[j][r] = dp_bf16(t[j][r], qw[j][c], kw[c]);                                   \
                        }                                                                                      \
                    }                                                                                          \
                    _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++)                                   \
                        _mm_storeu_ps(si + j * max_keys + (p - first),                                         \
                                      _mm_mul_ps(hsum4_512(t[j][0], t[j][1], t[j][2], t[j][3]), _mm_set1_ps(scale))); \
                }                                                                                              \
                for (; p + 4 <= last; p += 4) {                                                                \
                    __m512 t[4][4];                                                                            \
                    _Pragma("GCC unroll 4") for (int64_t r = 0; r < 4; r++) {                                  \
                        const T *kr = k0 + (p - first + r) * stride;                                           \
                        __m512 kv[8];                                                                          \
                        _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++) kv[c] = ld16_##NAME(kr + 16 * c); \
                        _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++) {                             \
                            t[j][r] = _mm512_mul_ps(qv[j][0], kv[0]);                                          \
                            _Pragma("GCC unroll 8") for (int64_t c = 1; c < NV; c++)                           \
                                t[j][r] = _mm512_fmadd_ps(qv[j][c], kv[c], t[j][r]);                           \
                        }                                                                                      \
                    }                                                                                          \
                    _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++)                                   \
                        _mm_storeu_ps(si + j * max_keys + (p - first), hsum4_512(t[j][0], t[j][1], t[j][2], t[j][3])); \
                }                                                                                              \
                for (; DPBF16_##NAME && p < last; p++) { /* the same sums one key at a time: the same bits */ \
                    const __m512i *kr = (const __m512i *)(k0 + (p - first) * stride);                          \
                    _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++) {                                 \
                        __m512 t = dp_bf16(_mm512_setzero_ps(), qw[j][0], _mm512_loadu_si512(kr));              \
                        _Pragma("GCC unroll 4") for (int64_t c = 1; c < NV / 2; c++)                           \
                            t = dp_bf16(t, qw[j][c], _mm512_loadu_si512(kr + c));                              \
                        si[j * max_keys + p - first] = _mm512_reduce_add_ps(t) * scale;                        \
                    }                                                                                          \
                }                                                                                              \
                for (; p < last; p++) {                                                                        \
                    const T *kr = k0 + (p - first) * stride;                                                   \
                    __m512 kv[8];                                                                              \
                    _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++) kv[c] = ld16_##NAME(kr + 16 * c); \
                    _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++) {                                 \
                        __m512 t = _mm512_mul_ps(qv[j][0], kv[0]);                                             \
                        _Pragma("GCC unroll 8") for (int64_t c = 1; c < NV; c++) t = _mm512_fmadd_ps(qv[j][c], kv[c], t); \
                        si[j * max_keys + p - first] = _mm512_reduce_add_ps(t);                                \
                    }                                                                                          \
                }                                                                                              \
            }                                                                                                  \
            softmax_rows(sc, max_keys, L, GC, sum + c0, mx + c0);                                              \
            _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++)                                           \
            _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++) acc[j][c] = _mm512_setzero_ps();          \
            FOR_SLOTS(s, lo, hi, i, slot, v_pages, { /* weighted sum of V */                                   \
                const T *vr = v_pages + (slot * Hkv + h) * hd;                                                 \
                __m512 vv[8];                                                                                  \
                _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++) vv[c] = ld16_##NAME(vr + 16 * c);     \
                _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++) {                                     \
                    const __m512 wt = _mm512_set1_ps(sc[j * max_keys + i]);                                    \
                    _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++) acc[j][c] = _mm512_fmadd_ps(wt, vv[c], acc[j][c]); \
                }                                                                                              \
            })                                                                                                 \
            _Pragma("GCC unroll 4") for (int64_t j = 0; j < GC; j++) {                                         \
                const float inv = part != NULL ? 1.0f : L > 0 ? 1.0f / sum[c0 + j] : 0.0f;                     \
                _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++) {                                     \
                    const __m512 y = _mm512_mul_ps(acc[j][c], _mm512_set1_ps(inv));                            \
                    if (part != NULL)                                                                          \
                        _mm512_storeu_ps(part + 2 * g + (c0 + j) * hd + 16 * c, y);                            \
                    else                                                                                       \
                        st16_##NAME(out + (s * H + h * g + c0 + j) * hd + 16 * c, y);                          \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        if (part != NULL)                                                                                      \
            for (int64_t j = 0; j < g; j++) part[j] = mx[j], part[g + j] = sum[j];                             \
    }

/* bf16 K rows dotted with bf16 query rows by VDPBF16PS (exact products, fp32 sums), where the CPU has it: no
 * widening of K to fp32 and half the multiplies; the scale is applied to the four sums after. */
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#define DPBF16_bf16 1
static inline __attribute__((always_inline)) __m512 dp_bf16(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}
#else
#define DPBF16_bf16 0
static inline __attribute__((always_inline)) __m512 dp_bf16(__m512 acc, __m512i a, __m512i b) {
    return (void)a, (void)b, acc; /* never called: DPBF16_bf16 is 0 */
}
#endif
#define DPBF16_f32 0
#define DPBF16_f16 0

/* exp(x) for x <= 0 on 16 lanes: cpu_math.h's exp_nonpositive (Cody-Waite, the Cephes polynomial), 2^n by scalef. */
static inline __attribute__((always_inline)) __m512 exp16_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                          _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* r[0..15] (rows of a 16 x 16 fp32 block) transposed in place: 64 shuffles. */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]), t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    for (int i = 0; i < 4; i++) { /* u[4i + k]: in 128-bit lane L, column 4L + k of rows 4i..4i+3 */
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c)), u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d)), u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int k = 0; k < 4; k++) { /* column 4L + k: lane L of u[k], u[4 + k], u[8 + k], u[12 + k] */
        const __m512 x0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x44), x1 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xEE);
        const __m512 y0 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x44), y1 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xEE);
        r[k] = _mm512_shuffle_f32x4(x0, y0, 0x88), r[4 + k] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
        r[8 + k] = _mm512_shuffle_f32x4(x1, y1, 0x88), r[12 + k] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
    }
}

/* One tile (see RUN_MIN): rows [r0, r1) of a run, KV head h, their query heads in groups of GQ (scores in GQ
 * registers, then GQ x NV output sums); w: this thread's tile scratch (run_scratch floats). */
#define RUNS_OK 1
#define DEFINE_RUN_TILE(NAME, T)                                                                              \
static inline __attribute__((always_inline)) void run_tile_##NAME(                                                    \
    const T *q, const T *k_pages, const T *v_pages, const int64_t *table, const int64_t *ctx, T *out, int64_t r0,     \
    int64_t r1, int64_t h, int64_t H, int64_t Hkv, const int64_t NV, const int64_t GQ, int64_t block_size,            \
    int64_t window, float scale, float *w) {                                                                          \
    const int64_t g = H / Hkv, hd = 16 * NV, Q = (r1 - r0) * g, stride = Hkv * hd;                                    \
    const int64_t row_bytes = hd * (int64_t)sizeof(T), step = stride * (int64_t)sizeof(T);                            \
    float *qf = w, *acc = qf + Q * hd, *mx = acc + Q * hd, *sm = mx + Q, *kt = sm + Q, *vf = kt + hd * 16;            \
    float *pb = vf + 16 * hd;                                                                                         \
    int32_t *lo = (int32_t *)(pb + 16 * GQ), *hi = lo + Q; /* query qi sees the keys [lo[qi], hi[qi]) */              \
    for (int64_t qi = 0; qi < Q; qi++) {                                                                              \
        const int64_t r = r0 + qi / g, n = ctx[r];                                                                    \
        const T *qr = q + (r * H + h * g + qi % g) * hd;                                                              \
        for (int64_t c = 0; c < NV; c++) {                                                                            \
            _mm512_storeu_ps(qf + qi * hd + 16 * c, _mm512_mul_ps(ld16_##NAME(qr + 16 * c), _mm512_set1_ps(scale)));  \
            _mm512_storeu_ps(acc + qi * hd + 16 * c, _mm512_setzero_ps());                                            \
        }                                                                                                             \
        mx[qi] = -INFINITY, sm[qi] = 0.0f;                                                                            \
        hi[qi] = (int32_t)n, lo[qi] = (int32_t)(window > 0 && n > window ? n - window : 0);                           \
    }                                                                                                                 \
    const int64_t first = lo[0], last = hi[Q - 1]; /* both grow with the row */                                       \
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);                     \
    for (int64_t b = first / block_size; b * block_size < last; b++) {                                                \
        const int64_t p0 = b * block_size, end = p0 + block_size < last ? p0 + block_size : last;                     \
        prefetch_ahead((const char *)(k_pages + h * hd), table, b, first, last, block_size, step, row_bytes);         \
        prefetch_ahead((const char *)(v_pages + h * hd), table, b, first, last, block_size, step, row_bytes);         \
        for (int64_t k0 = p0 > first ? p0 : first; k0 < end; k0 += 16) {                                              \
            const int64_t cnt = end - k0 < 16 ? end - k0 : 16;                                                        \
            const T *kr = k_pages + ((table[b] * block_size + k0 - p0) * Hkv + h) * hd;                               \
            const T *vr = v_pages + ((table[b] * block_size + k0 - p0) * Hkv + h) * hd;                               \
            /* keys [k0, k0 + cnt): K transposed into kt (hd rows of 16 keys), V into vf (16 rows of hd), fp32,       \
               zeros past cnt (0 * a V row would be NaN for garbage in the pool) */                                   \
            if (DPBF16_##NAME) { /* bf16: K transposed as pairs of dims (hd / 2 rows of 16 keys), for VDPBF16PS */    \
                for (int64_t c = 0; c < NV / 2; c++) {                                                                \
                    __m512 rows[16];                                                                                  \
                    for (int64_t l = 0; l < 16; l++)                                                                  \
                        rows[l] = l < cnt ? _mm512_castsi512_ps(_mm512_loadu_si512((const __m512i *)(kr + l * stride) + c)) \
                                          : _mm512_setzero_ps();                                                      \
                    transpose16(rows);                                                                                \
                    for (int64_t d = 0; d < 16; d++) _mm512_storeu_ps(kt + (16 * c + d) * 16, rows[d]);               \
                }                                                                                                     \
                for (int64_t c = 0; c < NV; c++)                                                                      \
                    for (int64_t l = 0; l < 16; l++)                                                                  \
                        _mm512_storeu_ps(vf + l * hd + 16 * c,                                                        \
                                         l < cnt ? ld16_##NAME(vr + l * stride + 16 * c) : _mm512_setzero_ps());      \
            } else                                                                                                    \
            for (int64_t c = 0; c < NV; c++) {                                                                        \
                __m512 rows[16];                                                                                      \
                for (int64_t l = 0; l < 16; l++) {                                                                    \
                    rows[l] = l < cnt ? ld16_##NAME(kr + l * stride + 16 * c) : _mm512_setzero_ps();                  \
                    _mm512_storeu_ps(vf + l * hd + 16 * c,                                                            \
                                     l < cnt ? ld16_##NAME(vr + l * stride + 16 * c) : _mm512_setzero_ps());          \
                }                                                                                                     \
                transpose16(rows);                                                                                    \
                for (int64_t d = 0; d < 16; d++) _mm512_storeu_ps(kt + (16 * c + d) * 16, rows[d]);                   \
            }                                                                                                         \
            const __m512i keys = _mm512_add_epi32(lane, _mm512_set1_epi32((int32_t)k0));                              \
            const __mmask16 have = (__mmask16)((1u << cnt) - 1u);                                                     \
            for (int64_t q0 = 0; q0 < Q; q0 += GQ) {                                                                  \
                const int64_t gq = Q - q0 < GQ ? Q - q0 : GQ;                                                         \
                if (hi[q0 + gq - 1] <= k0) continue; /* causal: none of the group sees these keys yet */              \
                if (lo[q0] >= k0 + cnt) break;       /* window: nor any later group */                                \
                __m512 s[8], a[8][8];                                                                                 \
                _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++) s[j] = _mm512_setzero_ps();                  \
                if (DPBF16_##NAME) { /* bf16: a pair of dims per VDPBF16PS, the query's raw pair broadcast */         \
                    const char *qrow[8];                                                                              \
                    _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++)                                          \
                        qrow[j] = (const char *)(q + ((r0 + (q0 + (j < gq ? j : 0)) / g) * H + h * g +                \
                                                      (q0 + (j < gq ? j : 0)) % g) * hd);          \
                    for (int64_t i = 0; i < hd / 2; i++) {                                                            \
                        const __m512i kd = _mm512_castps_si512(_mm512_loadu_ps(kt + i * 16));                         \
                        _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++)                                      \
                            if (j < gq) {                                                                             \
                                int32_t pair;                                                                         \
                                memcpy(&pair, qrow[j] + 4 * i, 4);                                                    \
                                s[j] = dp_bf16(s[j], _mm512_set1_epi32(pair), kd);                                    \
                            }                                                                                         \
                    }                                                                                                 \
                    _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++) s[j] = _mm512_mul_ps(s[j], _mm512_set1_ps(scale)); \
                } else                                                                                                \
                for (int64_t d = 0; d < hd; d++) { /* scores: 16 keys a vector, one FMA per query and dim */          \
                    const __m512 kd = _mm512_loadu_ps(kt + d * 16);                                                   \
                    _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++)                                          \
                        if (j < gq) s[j] = _mm512_fmadd_ps(_mm512_set1_ps(qf[(q0 + j) * hd + d]), kd, s[j]);          \
                }                                                                                                     \
                _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++) { /* online softmax (flash attention) */     \
                    if (j >= gq) break;                                                                               \
                    const int64_t qi = q0 + j;                                                                        \
                    const __mmask16 ok = have & _mm512_cmp_epi32_mask(keys, _mm512_set1_epi32(lo[qi]), _MM_CMPINT_NLT) & \
                                         _mm512_cmp_epi32_mask(keys, _mm512_set1_epi32(hi[qi]), _MM_CMPINT_LT);       \
                    if (!ok) {                                                                                        \
                        _mm512_storeu_ps(pb + j * 16, _mm512_setzero_ps());                                           \
                        continue;                                                                                     \
                    }                                                                                                 \
                    const float m = _mm512_mask_reduce_max_ps(ok, s[j]), top = m > mx[qi] ? m : mx[qi];               \
                    const __m512 p = _mm512_maskz_mov_ps(ok, exp16_nonpositive(_mm512_sub_ps(s[j], _mm512_set1_ps(top)))); \
                    _mm512_storeu_ps(pb + j * 16, p);                                                                 \
                    if (top > mx[qi]) { /* the running sums were of exp(score - old maximum) */                       \
                        const float alpha = sm[qi] > 0.0f ? expf(mx[qi] - top) : 0.0f;                                \
                        sm[qi] *= alpha;                                                                              \
                        for (int64_t c = 0; c < NV; c++)                                                              \
                            _mm512_storeu_ps(acc + qi * hd + 16 * c,                                                  \
                                             _mm512_mul_ps(_mm512_loadu_ps(acc + qi * hd + 16 * c), _mm512_set1_ps(alpha))); \
                        mx[qi] = top;                                                                                 \
                    }                                                                                                 \
                    sm[qi] += _mm512_reduce_add_ps(p);                                                                \
                }                                                                                                     \
                _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++)                                              \
                    _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++)                                          \
                        a[j][c] = j < gq ? _mm512_loadu_ps(acc + (q0 + j) * hd + 16 * c) : _mm512_setzero_ps();       \
                for (int64_t l = 0; l < cnt; l++) /* weighted sum of V: each V vector from L1 as an FMA operand */    \
                    _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++) {                                        \
                        if (j >= gq) break; /* a last, smaller group: its other pb rows are stale */                  \
                        const __m512 wt = _mm512_set1_ps(pb[j * 16 + l]);                                             \
                        _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++)                                      \
                            a[j][c] = _mm512_fmadd_ps(wt, _mm512_loadu_ps(vf + l * hd + 16 * c), a[j][c]);            \
                    }                                                                                                 \
                _Pragma("GCC unroll 8") for (int64_t j = 0; j < GQ; j++)                                              \
                    _Pragma("GCC unroll 8") for (int64_t c = 0; c < NV; c++)                                          \
                        if (j < gq) _mm512_storeu_ps(acc + (q0 + j) * hd + 16 * c, a[j][c]);                          \
            }                                                                                                         \
        }                                                                                                             \
    }                                                                                                                 \
    for (int64_t qi = 0; qi < Q; qi++) {                                                                              \
        const int64_t r = r0 + qi / g;                                                                                \
        const float inv = sm[qi] > 0.0f ? 1.0f / sm[qi] : 0.0f;                                                       \
        for (int64_t c = 0; c < NV; c++)                                                                              \
            st16_##NAME(out + (r * H + h * g + qi % g) * hd + 16 * c,                                                 \
                        _mm512_mul_ps(_mm512_loadu_ps(acc + qi * hd + 16 * c), _mm512_set1_ps(inv)));                 \
    }                                                                                                                 \
}                                                                                                                     \
/* The tile work units of a call (see RUN_MIN), inside paged_decode_<dtype>. */
#define RUN_TILES(NAME)                                                                                               \
    if (ntiles > 0) { /* biggest tiles (last of each run: the most keys) first, taken as threads come free */         \
        const int64_t Qt = RUN_TILE * g, tper = (2 * Qt * hd + 4 * Qt + 32 * hd + 128 + 15) / 16 * 16;                \
        float *tw = aligned_alloc(64, sizeof(float) * (size_t)(tper * nthreads));                                     \
        if (tw == NULL) {                                                                                             \
            free(tiles);                                                                                              \
            return 2;                                                                                                 \
        }                                                                                                             \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nthreads)")                                        \
        for (int64_t u = ntiles * Hkv - 1; u >= 0; u--) {                                                             \
            const int64_t t = u / Hkv, h = u % Hkv, r0 = tiles[2 * t], r1 = tiles[2 * t + 1];                         \
            float *w = tw + tper * THREAD_ID;                                                                         \
            if (hd == 64)                                                                                             \
                run_tile_##NAME(q, k_pages, v_pages, tables + r0 * nb, ctx, out, r0, r1, h, H, Hkv, 4, 6, block_size, \
                                window, scale, w);                                                                    \
            else                                                                                                      \
                run_tile_##NAME(q, k_pages, v_pages, tables + r0 * nb, ctx, out, r0, r1, h, H, Hkv, 8, 3, block_size, \
                                window, scale, w);                                                                    \
        }                                                                                                             \
        free(tw);                                                                                                     \
    }                                                                                                                 \

/* Query heads per pass of the fast item: the largest divisor of g whose query rows fit 16 registers (another
 * 16 hold the accumulators and the K/V row); 0 where the head size is not 64 or 128 (the generic item runs). */
static inline int64_t fast_heads(int64_t g, int64_t hd) {
    if (hd != 64 && hd != 128) return 0;
    for (int64_t gc = 4; gc >= 1; gc--)
        if (g % gc == 0 && gc * (hd / 16) <= 16) return gc;
    return 0;
}
#define FAST(NAME, NV, GC, LO, HI, PART)                                                                      \
    fast_##NAME(q, k_pages, v_pages, tables, out, s, h, LO, HI, H, Hkv, NV, GC, nb, block_size, scale, max_keys, \
                w, PART)
#define FAST_KV_HEADS(Hkv) 1
#define FAST_CASES(NAME, LO, HI, PART, PSTRIDE)                                                               \
    switch (fast * 16 + hd / 16) {                                                                            \
        case 1 * 16 + 4: FAST(NAME, 4, 1, LO, HI, PART); break;                                               \
        case 2 * 16 + 4: FAST(NAME, 4, 2, LO, HI, PART); break;                                               \
        case 3 * 16 + 4: FAST(NAME, 4, 3, LO, HI, PART); break;                                               \
        case 4 * 16 + 4: FAST(NAME, 4, 4, LO, HI, PART); break;                                               \
        case 1 * 16 + 8: FAST(NAME, 8, 1, LO, HI, PART); break;                                               \
        default: FAST(NAME, 8, 2, LO, HI, PART);                                                              \
    }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
/* 8 elements as fp32 vectors. */
static inline __attribute__((always_inline)) __m256 ld8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __attribute__((always_inline)) __m256 ld8_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline __attribute__((always_inline)) __m256 ld8_f16(const f16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
/* [sum of a's lanes, b's, c's, d's] */
static inline __attribute__((always_inline)) __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}
static inline __attribute__((always_inline)) float hsum1(__m256 a) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
/* Bytes of V rows one pass of the weighted sum walks before the next head (or half row) walks them again: they
 * stay in L1. */
#define TILE_BYTES 16384

/* The item for head sizes 64 and 128 (NV = hd / 8 vectors a row) with AVX2 + FMA's 16 vector registers, over all
 * the row's KV heads at once (nh = Hkv, heads h0..): a position's K (or V) rows of every head are one contiguous
 * stretch of the pages, which the memory system streams ~1.7x faster than one head's rows, 1 / Hkv of each stretch
 * (reading the same rows without any maths, SmolLM2 heads, fp32, 2 Zen 3 cores: 12-19 against 7-9 GB/s). Scores:
 * four keys against two query heads at a time (8 accumulators, each K vector converted once for both, one
 * horizontal-add tree per four scores). Weighted sum of V: one query head and 64 output dims at a time in 8
 * registers, over tiles of keys small enough to stay in L1 for the next head. Scratch: nh * g query rows (then
 * output sums), nh * g * max_keys scores, sums and maxima; results as item_<NAME> for each head (fp32 scores, two
 * passes over the keys; the sums' order differs), partial softmaxes of head h at part + h * pstride.
 * SmolLM2 heads, 2 Zen 3 cores, pages of 30 layers visited in turn (so read from memory), per layer, against the
 * generic item (the two builds alternating): fp32 16 rows x 133 keys 408-648 -> 326-500 us, 16 x 2048 8.9-10.9
 * -> 6.4-7.2 ms, 64 x 1024 19.3-21.3 -> 14.0-16.2 ms; bf16 16 x 133 366-484 -> 277-356 us, 16 x 2048 5.7-6.2 ->
 * 4.4-5.3 ms. In the engine's direct decode step (SmolLM2-135M, 16 sequences of ~133 tokens, 30 layers): fp32
 * 15.1 -> 11.8 ms a step, bf16 9.8 -> 7.9 ms. */
#define DEFINE_FAST_ITEM(NAME, T)                                                                             \
    static inline __attribute__((always_inline)) void dots4_##NAME(                                           \
        const T *kr, int64_t stride, const float *qa, const float *qb, const int64_t NV, float *sa, float *sb,  \
        const int two) {                                                                                       \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;        \
        _Pragma("GCC unroll 16") for (int64_t c = 0; c < NV; c++) {                                            \
            const __m256 k0 = ld8_##NAME(kr + 8 * c), k1 = ld8_##NAME(kr + stride + 8 * c);                     \
            const __m256 k2 = ld8_##NAME(kr + 2 * stride + 8 * c), k3 = ld8_##NAME(kr + 3 * stride + 8 * c);    \
            const __m256 x = _mm256_loadu_ps(qa + 8 * c);                                                      \
            a0 = _mm256_fmadd_ps(x, k0, a0), a1 = _mm256_fmadd_ps(x, k1, a1);                                  \
            a2 = _mm256_fmadd_ps(x, k2, a2), a3 = _mm256_fmadd_ps(x, k3, a3);                                  \
            if (two) {                                                                                         \
                const __m256 y = _mm256_loadu_ps(qb + 8 * c);                                                  \
                b0 = _mm256_fmadd_ps(y, k0, b0), b1 = _mm256_fmadd_ps(y, k1, b1);                              \
                b2 = _mm256_fmadd_ps(y, k2, b2), b3 = _mm256_fmadd_ps(y, k3, b3);                              \
            }                                                                                                  \
        }                                                                                                      \
        _mm_storeu_ps(sa, hsum4(a0, a1, a2, a3));                                                              \
        if (two) _mm_storeu_ps(sb, hsum4(b0, b1, b2, b3));                                                     \
    }                                                                                                          \
    static inline __attribute__((always_inline)) void fast_##NAME(                                            \
        const T *q, const T *k_pages, const T *v_pages, const int64_t *tables, T *out, int64_t s, int64_t h0,  \
        int64_t nh, int64_t lo, int64_t hi, int64_t H, int64_t Hkv, const int64_t NV, int64_t nb,             \
        int64_t block_size, float scale, int64_t max_keys, float *w, float *part, int64_t pstride) {          \
        const int64_t g = H / Hkv, G = nh * g, L = hi - lo, hd = 8 * NV, stride = Hkv * hd;                   \
        const int64_t row_bytes = nh * hd * (int64_t)sizeof(T), step = stride * (int64_t)sizeof(T);           \
        float *qf = w, *sc = qf + G * hd, *sum = sc + G * max_keys, *mx = sum + G;                             \
        for (int64_t j = 0; j < G * hd; j++) qf[j] = LOAD_##NAME(q, (s * H + h0 * g) * hd + j) * scale;        \
        for (int64_t b = lo / block_size; b * block_size < hi; b++) { /* scores */                             \
            const int64_t p0 = b * block_size, first = lo > p0 ? lo : p0;                                      \
            const int64_t last = hi < p0 + block_size ? hi : p0 + block_size;                                  \
            prefetch_ahead((const char *)(k_pages + h0 * hd), tables + s * nb, b, lo, hi, block_size, step, row_bytes); \
            const T *k0 = k_pages + ((tables[s * nb + b] * block_size + first - p0) * Hkv + h0) * hd;          \
            int64_t p = first;                                                                                 \
            for (; p + 4 <= last; p += 4)                                                                      \
                for (int64_t h = 0; h < nh; h++) {                                                             \
                    const T *kr = k0 + (p - first) * stride + h * hd;                                          \
                    float *si = sc + h * g * max_keys + (p - lo);                                              \
                    const float *qh = qf + h * g * hd;                                                         \
                    int64_t j = 0;                                                                             \
                    for (; j + 2 <= g; j += 2)                                                                 \
                        dots4_##NAME(kr, stride, qh + j * hd, qh + (j + 1) * hd, NV, si + j * max_keys,        \
                                     si + (j + 1) * max_keys, 1);                                              \
                    if (j < g) dots4_##NAME(kr, stride, qh + j * hd, qh, NV, si + j * max_keys, si, 0);        \
                }                                                                                              \
            for (; p < last; p++)                                                                              \
                for (int64_t j = 0; j < G; j++) {                                                              \
                    const T *kr = k0 + (p - first) * stride + (j / g) * hd;                                    \
                    __m256 t = _mm256_setzero_ps();                                                            \
                    _Pragma("GCC unroll 16") for (int64_t c = 0; c < NV; c++)                                  \
                        t = _mm256_fmadd_ps(_mm256_loadu_ps(qf + j * hd + 8 * c), ld8_##NAME(kr + 8 * c), t);  \
                    sc[j * max_keys + p - lo] = hsum1(t);                                                      \
                }                                                                                              \
        }                                                                                                      \
        softmax_rows(sc, max_keys, L, G, sum, mx);                                                             \
        float *acc = qf; /* the scaled queries are done with: the output sums go there */                     \
        memset(acc, 0, sizeof(float) * (size_t)(G * hd));                                                      \
        const int64_t tile = TILE_BYTES / row_bytes > 4 ? TILE_BYTES / row_bytes : 4;                          \
        for (int64_t t0 = lo; t0 < hi; t0 += tile) {                                                           \
            const int64_t t1 = t0 + tile < hi ? t0 + tile : hi;                                                \
            for (int64_t j = 0; j < G; j++) {                                                                  \
                const float *wj = sc + j * max_keys - lo;                                                      \
                for (int64_t d0 = 0; d0 < hd; d0 += 64) {                                                      \
                    __m256 a[8];                                                                               \
                    _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) a[c] = _mm256_loadu_ps(acc + j * hd + d0 + 8 * c); \
                    for (int64_t b = t0 / block_size; b * block_size < t1; b++) {                              \
                        const int64_t p0 = b * block_size, first = t0 > p0 ? t0 : p0;                          \
                        const int64_t last = t1 < p0 + block_size ? t1 : p0 + block_size;                      \
                        if (j == 0 && d0 == 0 && (first == p0 || b == lo / block_size)) /* first pass only */ \
                            prefetch_ahead((const char *)(v_pages + h0 * hd), tables + s * nb, b, lo, hi, block_size, \
                                           step, row_bytes);                                                   \
                        const T *v0 = v_pages + ((tables[s * nb + b] * block_size + first - p0) * Hkv + h0 + j / g) * hd + d0; \
                        for (int64_t p = first; p < last; p++) {                                               \
                            const __m256 wt = _mm256_broadcast_ss(wj + p);                                     \
                            const T *vr = v0 + (p - first) * stride;                                           \
                            _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++)                                \
                                a[c] = _mm256_fmadd_ps(wt, ld8_##NAME(vr + 8 * c), a[c]);                      \
                        }                                                                                      \
                    }                                                                                          \
                    _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) _mm256_storeu_ps(acc + j * hd + d0 + 8 * c, a[c]); \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        for (int64_t j = 0; j < G; j++) {                                                                      \
            const float inv = L > 0 ? 1.0f / sum[j] : 0.0f;                                                    \
            float *pj = part != NULL ? part + (j / g) * pstride : NULL;                                        \
            if (pj != NULL) pj[j % g] = mx[j], pj[g + j % g] = sum[j];                                         \
            for (int64_t d = 0; d < hd; d++) {                                                                 \
                if (pj != NULL)                                                                                \
                    pj[2 * g + (j % g) * hd + d] = acc[j * hd + d];                                            \
                else                                                                                           \
                    STORE_##NAME(out, (s * H + h0 * g + j) * hd + d, acc[j * hd + d] * inv);                   \
            }                                                                                                  \
        }                                                                                                      \
    }

/* Whether the fast item takes this head shape (0: the generic item), and how many KV heads one work item covers. */
static inline int64_t fast_heads(int64_t g, int64_t hd) { return (void)g, (hd == 64 || hd == 128) ? 1 : 0; }
#define FAST_KV_HEADS(Hkv) (Hkv)
#define FAST_CASES(NAME, LO, HI, PART, PSTRIDE)                                                               \
    {                                                                                                          \
        if (hd == 64)                                                                                          \
            fast_##NAME(q, k_pages, v_pages, tables, out, s, h, kvh, LO, HI, H, Hkv, 8, nb, block_size, scale, \
                        max_keys, w, PART, PSTRIDE);                                                           \
        else                                                                                                   \
            fast_##NAME(q, k_pages, v_pages, tables, out, s, h, kvh, LO, HI, H, Hkv, 16, nb, block_size, scale, \
                        max_keys, w, PART, PSTRIDE);                                                           \
    }
#else
#define DEFINE_FAST_ITEM(NAME, T)
static inline int64_t fast_heads(int64_t g, int64_t hd) { return (void)g, (void)hd, 0; }
#define FAST_KV_HEADS(Hkv) 1
#define FAST_CASES(NAME, LO, HI, PART, PSTRIDE) {} /* never taken: fast is 0 */
#endif
#ifndef RUNS_OK /* no run tiles without AVX-512: every row is an item */
#define RUNS_OK 0
#define DEFINE_RUN_TILE(NAME, T)
#define RUN_TILES(NAME) (void)ntiles;
#endif

/* 1 where prefill runs are computed in tiles (this build has AVX-512), for the tests. */
int llmlab_paged_run_tiles(void) { return RUNS_OK; }

/* The item with the head size as a constant where it is common. */
#define ITEM(NAME, HD, LO, HI, PART)                                                                          \
    item_##NAME(q, k_pages, v_pages, tables, out, s, h, LO, HI, H, Hkv, HD, nb, block_size, scale, max_keys,   \
                w, PART)

/* Few items (a small batch) leave threads idle or unevenly loaded (3 KV heads on 2 threads): then each item's
 * keys are split into `parts` ranges, done as separate work units, and their partial softmaxes are combined
 * (split-K decoding, as flash-decoding does on GPUs): out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p,
 * M the largest of the parts' maxima. SmolLM2 heads, 1 sequence x 2048 keys, 2 threads: 123 -> 98 us. */
#define DEFINE_PAGED_DECODE(NAME, T)                                                                          \
    DEFINE_ITEM(NAME, T)                                                                                      \
    DEFINE_FAST_ITEM(NAME, T)                                                                                 \
    DEFINE_RUN_TILE(NAME, T)                                                                                  \
    int paged_decode_##NAME(const T *q, const T *k_pages, const T *v_pages, const int64_t *tables,             \
                            const int64_t *ctx, T *out, int64_t S, int64_t H, int64_t Hkv, int64_t hd,          \
                            int64_t nb, int64_t block_size, int64_t window, float scale, int64_t num_slots,     \
                            int nthreads) {                                                                    \
        if (nthreads < 1) nthreads = 1;                                                                        \
        const int64_t g = H / Hkv, fast = fast_heads(g, hd);                                                          \
        int64_t max_keys = 0;                                                                                         \
        for (int64_t s = 0; s < S; s++) max_keys = ctx[s] > max_keys ? ctx[s] : max_keys;                             \
        if (max_keys > nb * block_size) return 1; /* a context longer than its block table */                         \
        for (int64_t b = 0; b < S * nb; b++)                                                                          \
            if (tables[b] < 0 || tables[b] * block_size + block_size > num_slots) return 3; /* not in the pool */     \
        /* prefill runs into tiles; rows[] the others (NULL: every row) */                                            \
        int64_t *tiles = NULL, *rows = NULL, ntiles = 0, S2 = S;                                                      \
        if (RUNS_OK && fast && S >= RUN_MIN) {                                                                        \
            tiles = malloc(sizeof(int64_t) * (size_t)(3 * S));                                                        \
            if (tiles == NULL) return 2;                                                                              \
            rows = tiles + 2 * S;                                                                                     \
            ntiles = find_runs(tables, ctx, S, nb, tiles, rows, &S2);                                                 \
        }                                                                                                             \
        RUN_TILES(NAME)                                                                                               \
        /* work items: (row, group of kvh KV heads); one head each when there are fewer rows than threads */          \
        const int64_t kvh = fast && S2 >= nthreads ? FAST_KV_HEADS(Hkv) : 1, items = S2 * (Hkv / kvh);                \
        int64_t parts = 1;                                                                                            \
        if (items > 0 && items < 4 * nthreads) { /* split: >= 4 units a thread, a whole number of units per           \
                                                    thread where possible, at least SPLIT_MIN_KEYS keys a part */     \
            const int64_t most = max_keys / SPLIT_MIN_KEYS > 1 ? max_keys / SPLIT_MIN_KEYS : 1;                       \
            parts = (4 * nthreads + items - 1) / items;                                                               \
            while ((items * parts) % nthreads != 0 && parts < most) parts++;                                          \
            parts = parts < most ? parts : most;                                                                      \
        }                                                                                                             \
        const int64_t units = items * parts, part_size = 2 * g + g * hd;                                       \
        /* per thread: g query rows, one K/V row, g accumulators, g * max_keys scores, g sums, g maxima,       \
           rounded to whole 64-byte lines: threads writing each other's lines would serialise on them */       \
        const int64_t per = (kvh * g * (2 * hd + max_keys + 2) + hd + 15) / 16 * 16;                          \
        float *all = aligned_alloc(64, sizeof(float) * (size_t)(per * nthreads));                              \
        float *partial = parts > 1 ? malloc(sizeof(float) * (size_t)(S * Hkv * parts * part_size)) : NULL;     \
        if (all == NULL || (parts > 1 && partial == NULL)) {                                                   \
            free(all);                                                                                         \
            free(partial);                                                                                     \
            free(tiles);                                                                                       \
            return 2;                                                                                          \
        }                                                                                                      \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                     \
        for (int64_t u = 0; u < units; u++) {                                                                  \
            const int64_t it = u / parts, p = u % parts, h = it % (Hkv / kvh) * kvh;                           \
            const int64_t s = rows != NULL ? rows[it / (Hkv / kvh)] : it / (Hkv / kvh);                         \
            const int64_t n = ctx[s];                                                                          \
            const int64_t first = (window > 0 && n > window) ? n - window : 0, len = n - first;                \
            const int64_t lo = first + len * p / parts, hi = first + len * (p + 1) / parts;                    \
            float *w = all + per * THREAD_ID, *part = partial ? partial + ((s * Hkv + h) * parts + p) * part_size : NULL; \
            if (fast)                                                                                          \
                FAST_CASES(NAME, lo, hi, part, parts * part_size)                                              \
            else if (hd == 64)                                                                                 \
                ITEM(NAME, 64, lo, hi, part);                                                                  \
            else if (hd == 128)                                                                                \
                ITEM(NAME, 128, lo, hi, part);                                                                 \
            else                                                                                               \
                ITEM(NAME, hd, lo, hi, part);                                                                  \
        }                                                                                                      \
        if (parts > 1) {                                                                                       \
            _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                 \
            for (int64_t it = 0; it < S2 * Hkv; it++) {                                                        \
                const int64_t s = rows != NULL ? rows[it / Hkv] : it / Hkv, h = it % Hkv;                      \
                const float *pt = partial + (s * Hkv + h) * parts * part_size;                                 \
                for (int64_t j = 0; j < g; j++) {                                                              \
                    float M = -INFINITY, den = 0.0f, f[parts];                                                 \
                    for (int64_t p = 0; p < parts; p++) M = pt[p * part_size + j] > M ? pt[p * part_size + j] : M; \
                    for (int64_t p = 0; p < parts; p++) {                                                      \
                        const float l = pt[p * part_size + g + j];                                             \
                        f[p] = l > 0.0f ? expf(pt[p * part_size + j] - M) : 0.0f;                              \
                        den += f[p] * l;                                                                       \
                    }                                                                                          \
                    const float inv = den > 0.0f ? 1.0f / den : 0.0f;                                          \
                    for (int64_t d = 0; d < hd; d++) {                                                         \
                        float y = 0.0f;                                                                        \
                        for (int64_t p = 0; p < parts; p++) y += f[p] * pt[p * part_size + 2 * g + j * hd + d]; \
                        STORE_##NAME(out, (s * H + h * g + j) * hd + d, y * inv);                              \
                    }                                                                                          \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        free(partial);                                                                                         \
        free(all);                                                                                             \
        free(tiles);                                                                                           \
        return 0;                                                                                              \
    }

DEFINE_PAGED_DECODE(f32, float)
DEFINE_PAGED_DECODE(bf16, uint16_t)
DEFINE_PAGED_DECODE(f16, f16_t)
