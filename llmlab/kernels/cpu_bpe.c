// BPE merges of one piece in C: the inner loop of llmlab's tokenizers (byte-level BPE and SentencePiece-style BPE).
//
// A pair table maps (left id, right id) to (rank, merged id): open addressing, linear probing, 2^bits slots, keys
// (left << 32 | right) with ~0 for an empty slot, values (rank << 32 | merged). bpe_merge repeatedly merges the
// adjacent pair of lowest rank, the leftmost among equal ranks, until no adjacent pair is in the table: a min-heap of
// (rank << 32 | left position) over a linked list of symbols. A heap entry is checked when it is popped (the pair now
// at that position must still have that rank); every pair present has an entry, so the first valid pop is always the
// best pair. Called through ctypes from llmlab/tokenizer/cmerge.py, which keeps the Python loop as the fallback.
// Below: the same in ranks mode (tiktoken files), and a whole-text encoder (pre-split, a cache of piece ids, these
// merges) for llmlab/tokenizer/cencode.py.
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

static inline int64_t below(int64_t rank, int64_t limit) { return rank < limit ? rank : -1; }

static inline int64_t rank_of(const int32_t *slots, int bits, const uint8_t *blob, const uint8_t *s, int64_t n) {
    uint64_t mask = (1ULL << bits) - 1, h = hash_bytes(s, n);
    int32_t tag = (int32_t)(uint32_t)h;
    for (uint64_t k = h >> (64 - bits);; k = (k + 1) & mask) {
        const int32_t *e = slots + 4 * k;
        if (e[1] < 0) return -1;
        if (e[0] == tag && e[3] == n && memcmp(blob + (uint32_t)e[2], s, n) == 0) return e[1];
    }
}

// The ranks of `piece` (n bytes) into out[0..), merging only pairs of a rank below `limit`; returns their count, -1
// when memory runs out or a byte is not a token (the caller falls back to Python).
static int64_t ranks_merge(const int32_t *slots, int bits, const uint8_t *blob, const uint8_t *piece, int64_t n,
                           int64_t limit, int32_t *out) {
#define RANK(a, b) rank_of(slots, bits, blob, piece + (a), (b) - (a))
#define PAIR(a, b) below(RANK(a, b), limit)
    if (n == 0) return 0;
    int64_t whole = limit == INT64_MAX ? RANK(0, n) : -1;
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
        int64_t r = cur[i] = PAIR(i, i + 2);
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
            int64_t r = cur[i] = PAIR(i, END(nxt[i]));
            if (r >= 0) push(heap, &len, r << 32 | i);
        }
        int32_t p = prv[i];
        if (p >= 0) {
            int64_t r = cur[p] = PAIR(p, END(i));
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
#undef PAIR
#undef RANK
    free(nxt), free(prv), free(tok), free(cur), free(heap);
    return m;
}

int64_t bpe_ranks_merge(const int32_t *slots, int bits, const uint8_t *blob, const uint8_t *piece, int64_t n,
                        int32_t *out) {
    return ranks_merge(slots, bits, blob, piece, n, INT64_MAX, out);
}

// The merge that makes each of n tokens (token i: blob[offs[i]..offs[i + 1]), rank ranks[i]), found as minbpe's
// recover_merges finds it: BPE on its bytes with only lower ranks, which stops at two parts for a token BPE can make.
// pairs[2i], pairs[2i + 1] get those two parts' ranks, or -1 (a single byte, or a token no merge makes). Returns 0, or
// -1 when memory runs out or a byte is no token (the caller falls back to Python). BPEModel.derive_merges writes a
// ranks-mode vocabulary's tokenizer.json with it.
int64_t bpe_derive_merges(const int32_t *slots, int bits, const uint8_t *blob, const int64_t *offs,
                          const int32_t *ranks, int64_t n, int32_t *pairs) {
    int64_t longest = 1, failed = 0;
    for (int64_t i = 0; i < n; i++) longest = offs[i + 1] - offs[i] > longest ? offs[i + 1] - offs[i] : longest;
    int32_t *parts = malloc(sizeof(int32_t) * longest);
    if (!parts) return -1;
    for (int64_t i = 0; i < n && !failed; i++) {
        int64_t len = offs[i + 1] - offs[i];
        int64_t m = len < 2 ? 0 : ranks_merge(slots, bits, blob, blob + offs[i], len, ranks[i], parts);
        failed = m < 0;
        pairs[2 * i] = m == 2 ? parts[0] : -1, pairs[2 * i + 1] = m == 2 ? parts[1] : -1;
    }
    free(parts);
    return failed ? -1 : 0;
}

// ---- pre-split: the split patterns of llmlab.tokenizer.PATTERNS, each alternative as written ---------------------
//
// bpe_split writes the end of each piece (pieces are contiguous) and returns their count. The text is UTF-8 (from a
// Python str: valid, no surrogates); each character's class comes from a table of all code points built from the
// `regex` module's own Unicode properties (cencode.classes): letter (\p{L}), digit (\p{N}), whitespace (Unicode
// White_Space: on ASCII \t \n \v \f \r and space, not \x1c-\x1f, which str.isspace() takes), line break (\r \n), and
// o200k's two letter classes; the rest is "other" ([^\s\p{L}\p{N}], marks included). Alternatives are tried in the
// pattern's order with its backtracking worked out by hand, e.g. `\s*[\r\n]+` ends after the run's last line break
// and `\s+(?!\S)` leaves the run's last whitespace character to the next piece. tests/test_tokenizer_cencode.py
// fuzzes each against `regex`.

enum { SPLIT_GPT2, SPLIT_CL100K, SPLIT_O200K, SPLIT_LLAMA3, SPLIT_QWEN2, SPLIT_DIGITS_GPT2, SPLIT_SPM };
// C_UPPER and C_LOWER are o200k's [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and [\p{Ll}\p{Lm}\p{Lo}\p{M}]: a mark has both
// without C_LETTER, as do Lm and Lo with it.
enum { C_LETTER = 1, C_UPPER = 2, C_LOWER = 4, C_DIGIT = 8, C_SPACE = 16, C_NEWLINE = 32 };
#define C_WORDLIKE (C_LETTER | C_DIGIT | C_SPACE)  // none of these: the "other" class

typedef struct {
    const uint8_t *s;
    int64_t n;
    const uint8_t *table;  // the class of each code point, 0x110000 bytes
} Text;

// The class of the character starting at byte i < n; *next: where the next one starts. Inlined by force: as a call
// (GCC's choice) it cost the ASCII split 10-20%.
#define INLINE static inline __attribute__((always_inline))
INLINE int cls_next(const Text *t, int64_t i, int64_t *next) {
    const uint8_t *p = t->s + i;
    if (p[0] < 0x80) {
        *next = i + 1;
        return t->table[p[0]];
    }
    if (p[0] < 0xE0) {
        *next = i + 2;
        return t->table[(p[0] & 0x1F) << 6 | (p[1] & 0x3F)];
    }
    if (p[0] < 0xF0) {
        *next = i + 3;
        return t->table[(p[0] & 0x0F) << 12 | (p[1] & 0x3F) << 6 | (p[2] & 0x3F)];
    }
    *next = i + 4;
    return t->table[(p[0] & 0x07) << 18 | (p[1] & 0x3F) << 12 | (p[2] & 0x3F) << 6 | (p[3] & 0x3F)];
}

static inline int cls(const Text *t, int64_t i) {
    int64_t next;
    return cls_next(t, i, &next);
}

static inline int64_t utf8_len(uint8_t lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

static inline int64_t step(const Text *t, int64_t i) { return i + utf8_len(t->s[i]); }  // the next character

static inline int has(const Text *t, int64_t i, int mask) { return i < t->n && (cls(t, i) & mask); }

static inline int64_t run_of(const Text *t, int64_t i, int mask) {  // the end of the run of `mask` at i
    for (int64_t next; i < t->n && (cls_next(t, i, &next) & mask);) i = next;
    return i;
}

static inline int is_other(const Text *t, int64_t i) { return i < t->n && !(cls(t, i) & C_WORDLIKE); }

// The end of a contraction ('s 't 'm 'd 're 've 'll; case-insensitive unless `exact`, where `regex` also folds
// "ſ" (U+017F) to s) at i, or -1.
static inline int64_t contraction(const Text *t, int64_t i, int exact) {
    const uint8_t *s = t->s;
    int64_t n = t->n;
    if (i + 1 >= n || s[i] != '\'') return -1;
    if (!exact && s[i + 1] == 0xC5 && s[i + 2] == 0xBF) return i + 3;
    int a = exact ? s[i + 1] : s[i + 1] | 0x20;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 >= n) return -1;
    int b = exact ? s[i + 2] : s[i + 2] | 0x20;
    return (a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l') ? i + 3 : -1;
}

// The end of ` ?[^\s\p{L}\p{N}]+` at i (the space kept only where the run follows it), or -1.
static inline int64_t spaced_other(const Text *t, int64_t i) {
    int64_t k = t->s[i] == ' ' && is_other(t, i + 1) ? i + 1 : i;
    if (!is_other(t, k)) return -1;
    while (is_other(t, k)) k = step(t, k);
    return k;
}

static inline int64_t digit_group(const Text *t, int64_t i, int most) {  // \p{N}{1,most} at i
    for (int c = 0; c < most && has(t, i, C_DIGIT); c++) i = step(t, i);
    return i;
}

// The end of o200k's [U]*[L]+ at k (U, L: C_UPPER, C_LOWER), or -1. The greedy [U]* gives characters back until
// [L]+ can start: at the end of the run when a lowercase letter follows it, else at the run's last character that
// both classes take (Lm, Lo, a mark), from where [L]+ runs to the next uppercase-only letter.
INLINE int64_t o200k_lower(const Text *t, int64_t k) {
    int64_t u = k, both = -1, next = k;
    int c = 0;
    for (; u < t->n; u = next) {
        if (!((c = cls_next(t, u, &next)) & C_UPPER)) break;
        if (c & C_LOWER) both = u;
    }
    if (u < t->n && (c & C_LOWER)) return run_of(t, next, C_LOWER);  // a lowercase letter at u: [L]+ from there
    return both >= 0 ? run_of(t, both, C_LOWER) : -1;
}

static int64_t split_one(int kind, const Text *t, int64_t i) {
    const uint8_t *s = t->s;
    int64_t n = t->n, j;
    int c = cls(t, i);
    if (kind == SPLIT_GPT2) {  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
        if ((j = contraction(t, i, 1)) >= 0) return j;
        int64_t k = s[i] == ' ' && i + 1 < n ? i + 1 : i;  // the optional space: kept where the run follows it
        int ck = cls(t, k);
        if (ck & C_LETTER) return run_of(t, k, C_LETTER);
        if (ck & C_DIGIT) return run_of(t, k, C_DIGIT);
        if ((j = spaced_other(t, i)) >= 0) return j;
    } else if (kind == SPLIT_O200K) {
        // P?[U]*[L]+C?|P?[U]+[L]*C? with P = [^\r\n\p{L}\p{N}], C = (?i:'s|'t|'re|'ve|'m|'ll|'d). Each alternative
        // tries with the prefix first, then without: that matters only for a mark at i, which P and both letter
        // classes take (a mark before "AB" is a piece alone, by the first alternative without P; the second
        // alternative without P would need i in [U], which only a mark is, and the first then matched).
        int64_t k = c & (C_NEWLINE | C_LETTER | C_DIGIT) ? i : step(t, i);
        if ((j = o200k_lower(t, k)) < 0 && k > i && (c & C_UPPER)) j = o200k_lower(t, i);
        // [U]+[L]*, where [L]* is empty: a character of [L] after the run would have made the first alternative match
        if (j < 0 && has(t, k, C_UPPER)) j = run_of(t, k, C_UPPER);
        if (j >= 0) {
            int64_t e = contraction(t, j, 0);
            return e >= 0 ? e : j;
        }
        if (c & C_DIGIT) return digit_group(t, i, 3);
        if ((k = spaced_other(t, i)) >= 0) {  //  ?[^\s\p{L}\p{N}]+[\r\n/]*
            while (k < n && (s[k] == '\r' || s[k] == '\n' || s[k] == '/')) k++;
            return k;
        }
    } else {  // cl100k, Llama 3, Qwen2
        if ((j = contraction(t, i, 0)) >= 0) return j;
        int64_t k = c & (C_NEWLINE | C_LETTER | C_DIGIT) ? i : step(t, i);  // [^\r\n\p{L}\p{N}]?\p{L}+
        if (has(t, k, C_LETTER)) return run_of(t, k, C_LETTER);
        if (c & C_DIGIT) return digit_group(t, i, kind == SPLIT_QWEN2 ? 1 : 3);  // \p{N}{1,3} (Qwen2: \p{N})
        if ((k = spaced_other(t, i)) >= 0) return run_of(t, k, C_NEWLINE);  //  ?[^\s\p{L}\p{N}]+[\r\n]*
    }
    if (!(c & C_SPACE)) return -1;
    int64_t e = i, last = i, brk = -1;  // the whitespace run [i, e), its last character and its last line break
    for (; has(t, e, C_SPACE); e = step(t, e)) {
        last = e;
        if (s[e] == '\r' || s[e] == '\n') brk = e;
    }
    if (kind == SPLIT_CL100K && e == n) return n;  // \s++\z
    if (kind != SPLIT_GPT2 && brk >= 0) return brk + 1;  // \s*[\r\n] (cl100k), \s*[\r\n]+
    return e == n || last == i ? e : last;  // \s+(?!\S), else \s+ (cl100k: \s) takes one character
}

// SentencePiece-style BPE's words (Llama 2, Mistral: the text already has "▁", U+2581, for spaces): ▁*[^▁]+|▁+, a run
// of "▁" with the word after it, or alone at the end. UTF-8's E2 96 81 never occurs inside another character.
static inline int is_meta(const uint8_t *s, int64_t n, int64_t i) {
    return i + 2 < n && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81;
}

static int64_t spm_word(const uint8_t *s, int64_t n, int64_t i) {
    int64_t j = i;
    while (is_meta(s, n, j)) j += 3;
    while (j < n && !is_meta(s, n, j)) j++;
    return j;
}

// The end of the piece at i. SPLIT_DIGITS_GPT2 is SmolLM2's two stages: each digit alone (Digits with
// individual_digits, as \p{N}), then GPT-2's pattern over the text between digits, which ends there as a text would
// (*stop caches the next digit's position).
static inline int64_t next_piece(int kind, const Text *t, int64_t i, int64_t *stop) {
    if (kind == SPLIT_SPM) return spm_word(t->s, t->n, i);
    if (kind != SPLIT_DIGITS_GPT2) return split_one(kind, t, i);
    if (has(t, i, C_DIGIT)) return step(t, i);
    if (*stop <= i)
        for (*stop = i; *stop < t->n && !has(t, *stop, C_DIGIT); *stop = step(t, *stop)) {}
    Text head = {t->s, *stop, t->table};
    return split_one(SPLIT_GPT2, &head, i);
}

int64_t bpe_split(int kind, const uint8_t *table, const uint8_t *s, int64_t n, int32_t *ends) {
    Text t = {s, n, table};
    int64_t i = 0, m = 0, stop = 0;
    while (i < n) {
        int64_t j = next_piece(kind, &t, i, &stop);
        if (j <= i) return -1;  // no alternative matched: a bug, which the caller reports
        ends[m++] = (int32_t)j;
        i = j;
    }
    return m;
}

// ---- the encoder: pre-split the text, look each piece up in a cache of its ids, merge only the misses -----------
//
// The cache is a table of pieces (bytes kept in one arena) -> ids (in another), open addressing, doubled at half
// full, emptied when it reaches `limit` pieces; a piece longer than CACHED_LEN bytes is merged every time, as in
// Python.
// A miss merges as the model does: ranks mode (a bytes table of ranks) through bpe_ranks_merge, merges mode
// through bpe_merge on the piece's byte ids (a byte without an id is dropped), after the whole-piece lookup of
// ignore_merges when the encoder has a vocabulary table; SentencePiece-style BPE (SPLIT_SPM) through bpe_merge on
// the piece's characters, each its id in the vocabulary table or, without one, the ids of its bytes (byte fallback).
// Ids are written straight into the caller's buffer: a piece never has more ids than bytes, so n ids always fit.

#define CACHED_LEN 256

typedef struct {
    uint32_t tag, key, len, ids, count;  // len 0: an empty slot (pieces are never empty)
} CacheSlot;

typedef struct {
    int kind;
    const int32_t *bslots;  // bytes table: token ranks (ranks mode) or ids (merges mode with ignore_merges), or NULL
    int bbits;
    const uint8_t *blob;
    const uint64_t *pkeys;  // pair table (merges mode), or NULL for ranks mode
    const int64_t *pvals;
    int pbits;
    int32_t byte_id[256];
    const uint8_t *table;  // the class of each code point (Text); NULL for SPLIT_SPM, which needs none
    CacheSlot *slots;
    int bits;
    int64_t used, limit, nkeys, capkeys, nids, capids;
    uint8_t *keys;
    int32_t *ids;
} Encoder;

void bpe_encoder_free(Encoder *e) {
    if (e) free(e->slots), free(e->keys), free(e->ids), free(e);
}

Encoder *bpe_encoder_new(int kind, const int32_t *bslots, int bbits, const uint8_t *blob, const uint64_t *pkeys,
                         const int64_t *pvals, int pbits, const int32_t *byte_id, const uint8_t *table,
                         int64_t limit) {
    Encoder *e = calloc(1, sizeof(Encoder));
    if (!e) return NULL;
    e->kind = kind, e->bslots = bslots, e->bbits = bbits, e->blob = blob, e->pkeys = pkeys, e->pvals = pvals;
    e->pbits = pbits, e->table = table, e->limit = limit, e->bits = 12, e->capkeys = 1 << 16, e->capids = 1 << 14;
    for (int b = 0; b < 256; b++) e->byte_id[b] = byte_id ? byte_id[b] : -1;
    e->slots = calloc((size_t)1 << e->bits, sizeof(CacheSlot));
    e->keys = malloc(e->capkeys), e->ids = malloc(sizeof(int32_t) * e->capids);
    if (!e->slots || !e->keys || !e->ids) {
        bpe_encoder_free(e);
        return NULL;
    }
    return e;
}

int64_t bpe_encoder_size(const Encoder *e) { return e->used; }

static CacheSlot *find(const Encoder *e, const uint8_t *s, int64_t len, uint64_t h) {
    uint64_t mask = ((uint64_t)1 << e->bits) - 1;
    for (uint64_t k = h >> (64 - e->bits);; k = (k + 1) & mask) {
        CacheSlot *c = e->slots + k;
        if (!c->len || (c->tag == (uint32_t)h && c->len == len && memcmp(e->keys + c->key, s, len) == 0)) return c;
    }
}

static int grow(Encoder *e) {  // double the table; 0 when memory runs out (the table is left as it was)
    int bits = e->bits + 1;
    CacheSlot *old = e->slots, *slots = calloc((size_t)1 << bits, sizeof(CacheSlot));
    if (!slots) return 0;
    uint64_t mask = ((uint64_t)1 << bits) - 1;
    for (int64_t k = 0; k < ((int64_t)1 << e->bits); k++) {
        if (!old[k].len) continue;
        uint64_t s = hash_bytes(e->keys + old[k].key, old[k].len) >> (64 - bits);
        while (slots[s].len) s = (s + 1) & mask;
        slots[s] = old[k];
    }
    e->slots = slots, e->bits = bits;
    free(old);
    return 1;
}

static int reserve(void **buf, int64_t *cap, int64_t need, size_t item) {  // 0 when memory runs out
    if (need <= *cap) return 1;
    int64_t cap2 = *cap;
    while (cap2 < need) cap2 *= 2;
    void *p = realloc(*buf, cap2 * item);
    if (!p) return 0;
    *buf = p, *cap = cap2;
    return 1;
}

static int64_t merge_chars(const Encoder *e, const uint8_t *s, int64_t len, int32_t *out) {
    int64_t m = 0;
    for (int64_t i = 0; i < len;) {
        int64_t l = utf8_len(s[i]), r = rank_of(e->bslots, e->bbits, e->blob, s + i, l);
        if (r >= 0)
            out[m++] = (int32_t)r;
        else
            for (int64_t k = 0; k < l; k++) out[m++] = e->byte_id[s[i + k]];  // every byte has an id (cencode checks)
        i += l;
    }
    return m < 2 ? m : bpe_merge(e->pkeys, e->pvals, e->pbits, out, m);
}

static int64_t merge_piece(const Encoder *e, const uint8_t *s, int64_t len, int32_t *out) {
    if (e->kind == SPLIT_SPM) return merge_chars(e, s, len, out);
    if (!e->pkeys) return bpe_ranks_merge(e->bslots, e->bbits, e->blob, s, len, out);
    if (e->bslots) {  // ignore_merges: a piece that is a whole token is that token
        int64_t r = rank_of(e->bslots, e->bbits, e->blob, s, len);
        if (r >= 0) {
            out[0] = (int32_t)r;
            return 1;
        }
    }
    int64_t m = 0;
    for (int64_t i = 0; i < len; i++)
        if (e->byte_id[s[i]] >= 0) out[m++] = e->byte_id[s[i]];
    return bpe_merge(e->pkeys, e->pvals, e->pbits, out, m);
}

// The ids of text[0..n) (valid UTF-8) into out[0..n); returns their count, or -1 (out of memory, or a piece no
// alternative matched): the caller then encodes the text in Python.
int64_t bpe_encode(Encoder *e, const uint8_t *text, int64_t n, int32_t *out) {
    Text t = {text, n, e->table};
    int64_t m = 0, stop = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = next_piece(e->kind, &t, i, &stop), len = j - i;
        if (j <= i) return -1;
        const uint8_t *s = text + i;
        i = j;
        uint64_t h = len <= CACHED_LEN ? hash_bytes(s, len) : 0;  // a longer piece is merged, not kept
        CacheSlot *c = len <= CACHED_LEN ? find(e, s, len, h) : NULL;
        if (c && c->len) {
            memcpy(out + m, e->ids + c->ids, sizeof(int32_t) * c->count);
            m += c->count;
            continue;
        }
        int64_t k = merge_piece(e, s, len, out + m);
        if (k < 0) return -1;
        if (c) {  // keep it: the arenas first, so that a failure leaves the table as it was
            if (!reserve((void **)&e->keys, &e->capkeys, e->nkeys + len, 1) ||
                !reserve((void **)&e->ids, &e->capids, e->nids + k, sizeof(int32_t)))
                return -1;
            memcpy(e->keys + e->nkeys, s, len), memcpy(e->ids + e->nids, out + m, sizeof(int32_t) * k);
            *c = (CacheSlot){(uint32_t)h, (uint32_t)e->nkeys, (uint32_t)len, (uint32_t)e->nids, (uint32_t)k};
            e->nkeys += len, e->nids += k;
            // past the limit, or with no memory to grow: start again (the Python word cache is cleared the same way)
            if (++e->used >= e->limit || (2 * e->used > ((int64_t)1 << e->bits) && !grow(e))) {
                memset(e->slots, 0, sizeof(CacheSlot) << e->bits);
                e->used = e->nkeys = e->nids = 0;
            }
        }
        m += k;
    }
    return m;
}
