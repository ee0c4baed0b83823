// BPE merges of one piece in C: the inner loop of llmlab's tokenizers (byte-level BPE and SentencePiece-style BPE).
//
// A pair table maps (left id, right id) to (rank, merged id): open addressing, linear probing, 2^bits slots, keys
// (left << 32 | right) with ~0 for an empty slot, values (rank << 32 | merged). bpe_merge repeatedly merges the
// adjacent pair of lowest rank, the leftmost among equal ranks, until no adjacent pair is in the table: a min-heap of
// (rank << 32 | left position) over a linked list of symbols. A heap entry is checked when it is popped (the pair now
// at that position must still have that rank); every pair present has an entry, so the first valid pop is always the
// best pair. Called through ctypes from llmlab/tokenizer/cmerge.py, which keeps the Python loop as the fallback.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY UINT64_MAX

static inline uint64_t slot(uint64_t key, int bits) { return (key * 0x9E3779B97F4A7C15ULL) >> (64 - bits); }

// Build the table: keys[] must hold 2^bits slots set to EMPTY; a pair listed twice keeps its first value.
void bpe_table_build(uint64_t *keys, int64_t *vals, int bits, const uint64_t *pair_keys, const int64_t *pair_vals,
                     int64_t n) {
    uint64_t mask = (1ULL << bits) - 1;
    for (int64_t i = 0; i < n; i++) {
        uint64_t s = slot(pair_keys[i], bits);
        while (keys[s] != EMPTY && keys[s] != pair_keys[i]) s = (s + 1) & mask;
        if (keys[s] == EMPTY) {
            keys[s] = pair_keys[i];
            vals[s] = pair_vals[i];
        }
    }
}

static inline int64_t lookup(const uint64_t *keys, const int64_t *vals, int bits, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, mask = (1ULL << bits) - 1;
    for (uint64_t s = slot(key, bits);; s = (s + 1) & mask) {
        if (keys[s] == key) return vals[s];
        if (keys[s] == EMPTY) return -1;
    }
}

static void push(int64_t *heap, int64_t *len, int64_t x) {
    int64_t i = (*len)++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (heap[p] <= x) break;
        heap[i] = heap[p];
        i = p;
    }
    heap[i] = x;
}

static int64_t pop(int64_t *heap, int64_t *len) {
    int64_t top = heap[0], x = heap[--(*len)], n = *len, i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap[c + 1] < heap[c]) c++;
        if (x <= heap[c]) break;
        heap[i] = heap[c];
        i = c;
    }
    if (n) heap[i] = x;
    return top;
}

// Merge ids[0..n) in place; returns the new length, or -1 when memory runs out (the caller falls back).
int64_t bpe_merge(const uint64_t *keys, const int64_t *vals, int bits, int32_t *ids, int64_t n) {
    if (n < 2) return n;
    int32_t *nxt = malloc(sizeof(int32_t) * n), *prv = malloc(sizeof(int32_t) * n);
    int64_t *heap = malloc(sizeof(int64_t) * 3 * n), len = 0;  // n - 1 pairs at first, at most 2 pushes a merge
    if (!nxt || !prv || !heap) {
        free(nxt), free(prv), free(heap);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) nxt[i] = (int32_t)(i + 1 < n ? i + 1 : -1), prv[i] = (int32_t)(i - 1);
    for (int64_t i = 0; i + 1 < n; i++) {
        int64_t v = lookup(keys, vals, bits, ids[i], ids[i + 1]);
        if (v >= 0) push(heap, &len, (v & ~0xFFFFFFFFLL) | i);
    }
    while (len) {
        int64_t top = pop(heap, &len), i = top & 0xFFFFFFFF, j = nxt[i];
        if (ids[i] < 0 || j < 0) continue;
        int64_t v = lookup(keys, vals, bits, ids[i], ids[j]);
        if (v < 0 || (v >> 32) != (top >> 32)) continue;  // stale: that pair has merged since
        int32_t m = (int32_t)(v & 0xFFFFFFFF);
        ids[i] = m, ids[j] = -1;
        int32_t k = nxt[i] = nxt[j];
        if (k >= 0) {
            prv[k] = (int32_t)i;
            int64_t w = lookup(keys, vals, bits, m, ids[k]);
            if (w >= 0) push(heap, &len, (w & ~0xFFFFFFFFLL) | i);
        }
        int32_t p = prv[i];
        if (p >= 0) {
            int64_t w = lookup(keys, vals, bits, ids[p], m);
            if (w >= 0) push(heap, &len, (w & ~0xFFFFFFFFLL) | p);
        }
    }
    int64_t out = 0;
    for (int64_t i = 0; i >= 0 && i < n; i = nxt[i]) ids[out++] = ids[i];
    free(nxt), free(prv), free(heap);
    return out;
}

// ---- ranks mode (tiktoken files): any adjacent pair whose bytes are a token merges, the lowest rank first ----------
//
// A byte-string table: open addressing over 2^bits slots of four int32 (tag, rank, offset, length), rank -1 for an
// empty slot; the token is blob[offset..offset + length), tag the low 32 bits of its hash, so a probe reads one slot
// and touches the blob only when the tags agree. bpe_ranks_merge runs tiktoken's byte_pair_merge on one piece with
// the heap of bpe_merge, a symbol being a byte span: the pair at symbol i is the span from i to the end of the symbol
// after it, looked up by its bytes. cur[i] holds the rank of the pair now at i, so a popped entry is checked without
// a second lookup (a pair at i that changes covers other bytes, hence another token and another rank).

static inline uint64_t load_short(const uint8_t *s, int64_t n) {  // n <= 8 bytes as one word (overlapping loads)
    uint32_t a, b;
    if (n >= 4) {
        memcpy(&a, s, 4), memcpy(&b, s + n - 4, 4);
        return (uint64_t)a << 32 | b;
    }
    return n ? (uint64_t)s[0] << 16 | (uint64_t)s[n >> 1] << 8 | s[n - 1] : 0;
}

static inline uint64_t hash_bytes(const uint8_t *s, int64_t n) {  // a word at a time, then murmur3's finalizer
    uint64_t h = (uint64_t)n * 0x9E3779B97F4A7C15ULL, w;
    for (; n > 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 29;
    }
    h = (h ^ load_short(s, n)) * 0x94d049bb133111ebULL;
    h ^= h >> 33, h *= 0xff51afd7ed558ccdULL, h ^= h >> 33, h *= 0xc4ceb9fe1a85ec53ULL, h ^= h >> 33;
    return h;
}

void bpe_bytes_table_build(int32_t *slots, int bits, const uint8_t *blob, const int64_t *offs, const int32_t *ranks,
                           int64_t n) {
    uint64_t mask = (1ULL << bits) - 1;
    for (int64_t i = 0; i < n; i++) {
        uint64_t h = hash_bytes(blob + offs[i], offs[i + 1] - offs[i]), s = h >> (64 - bits);
        while (slots[4 * s + 1] >= 0) s = (s + 1) & mask;  // token byte strings are distinct
        int32_t *e = slots + 4 * s;
        e[0] = (int32_t)(uint32_t)h, e[1] = ranks[i], e[2] = (int32_t)offs[i], e[3] = (int32_t)(offs[i + 1] - offs[i]);
    }
}

static inline int64_t rank_of(const int32_t *slots, int bits, const uint8_t *blob, const uint8_t *s, int64_t n) {
    uint64_t mask = (1ULL << bits) - 1, h = hash_bytes(s, n);
    int32_t tag = (int32_t)(uint32_t)h;
    for (uint64_t k = h >> (64 - bits);; k = (k + 1) & mask) {
        const int32_t *e = slots + 4 * k;
        if (e[1] < 0) return -1;
        if (e[0] == tag && e[3] == n && memcmp(blob + (uint32_t)e[2], s, n) == 0) return e[1];
    }
}

// The ranks of `piece` (n bytes) into out[0..); returns their count, -1 when memory runs out or a byte is not a
// token (the caller falls back to Python).
int64_t bpe_ranks_merge(const int32_t *slots, int bits, const uint8_t *blob, const uint8_t *piece, int64_t n,
                        int32_t *out) {
#define RANK(a, b) rank_of(slots, bits, blob, piece + (a), (b) - (a))
    if (n == 0) return 0;
    int64_t whole = RANK(0, n);
    if (whole >= 0) {  // a piece that is itself a token is returned as is, as tiktoken does
        out[0] = (int32_t)whole;
        return 1;
    }
    int32_t *nxt = malloc(sizeof(int32_t) * n), *prv = malloc(sizeof(int32_t) * n);
    int32_t *tok = malloc(sizeof(int32_t) * n);  // the rank of symbol i's bytes once it is a merge, else -1
    int64_t *cur = malloc(sizeof(int64_t) * n), *heap = malloc(sizeof(int64_t) * 3 * n), len = 0;
    if (!nxt || !prv || !tok || !cur || !heap) {
        free(nxt), free(prv), free(tok), free(cur), free(heap);
        return -1;
    }
    for (int64_t i = 0; i < n; i++)
        nxt[i] = (int32_t)(i + 1 < n ? i + 1 : -1), prv[i] = (int32_t)(i - 1), tok[i] = -1;
    cur[n - 1] = -1;
    for (int64_t i = 0; i + 1 < n; i++) {
        int64_t r = cur[i] = RANK(i, i + 2);
        if (r >= 0) push(heap, &len, r << 32 | i);
    }
#define END(i) (nxt[i] < 0 ? n : nxt[i])
    while (len) {
        int64_t top = pop(heap, &len), i = top & 0xFFFFFFFF, j = nxt[i];
        if (prv[i] == -2 || cur[i] != (top >> 32)) continue;  // stale: merged since
        nxt[i] = nxt[j], prv[j] = -2;  // j joins i
        tok[i] = (int32_t)(top >> 32), cur[i] = -1;
        if (nxt[i] >= 0) {
            prv[nxt[i]] = (int32_t)i;
            int64_t r = cur[i] = RANK(i, END(nxt[i]));
            if (r >= 0) push(heap, &len, r << 32 | i);
        }
        int32_t p = prv[i];
        if (p >= 0) {
            int64_t r = cur[p] = RANK(p, END(i));
            if (r >= 0) push(heap, &len, r << 32 | p);
        }
    }
    int64_t m = 0;
    for (int64_t i = 0; i >= 0 && i < n; i = nxt[i]) {
        int64_t r = tok[i] >= 0 ? tok[i] : RANK(i, i + 1);
        if (r < 0) {
            m = -1;
            break;
        }
        out[m++] = (int32_t)r;
    }
#undef END
#undef RANK
    free(nxt), free(prv), free(tok), free(cur), free(heap);
    return m;
}
