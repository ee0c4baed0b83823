"""Byte-level BPE: split patterns, the merge loop, and the GPT-2 byte <-> unicode alphabet.

A byte-level BPE vocabulary maps byte strings to ids. Encoding a pre-split piece starts from its
UTF-8 bytes (one symbol per byte, so nothing is ever out of vocabulary) and repeatedly merges the
adjacent pair with the lowest rank, leftmost first, until no ranked pair is left. Two rank rules
exist in the wild and both are implemented exactly:

- **merges mode** (Hugging Face `tokenizer.json`, GGUF, llmlab-trained): only the listed pairs
  `(a, b)` merge, ranked by their position in the merges list.
- **ranks mode** (tiktoken `.tiktoken` files): any adjacent pair whose concatenated bytes is a
  token merges, ranked by that token's rank (= its id); a piece that is itself a token is
  returned directly, as tiktoken does.

Once an encode has done some merge work in Python (a few thousand short pieces, or one long one), the same loop
runs in C (`cmerge.py`): over an id-pair table in merges mode, over a table of the tokens' bytes in ranks mode.
Without a C compiler the Python loop keeps going, with the same ids.

Training lives in `train.py`; the text pipeline (special tokens, pre-split, word cache) in
`tokenizer.py`. This module is not a tokenizer by itself.

References: Sennrich et al. 2016 (BPE for NMT); Radford et al. 2019 (GPT-2, byte-level BPE and
its split regex); openai/tiktoken `src/lib.rs` (`byte_pair_merge`); huggingface/tokenizers
`models/bpe/word.rs` (`merge_all`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import regex

from llmlab.errors import TokenizerError
from llmlab.tokenizer.cmerge import CMerger, RankTable
from llmlab.tokenizer.rebuild import Rebuilt

# Pre-split regexes. "gpt2" is the pattern of the original GPT-2 release (what Hugging Face's
# ByteLevel pre-tokenizer uses); "cl100k" ("gpt4") and "o200k" are tiktoken's, with `$` written
# as `\z`: Rust's `$` is end-of-text only, Python's also matches before a final newline and
# Oniguruma's (used by tokenizers) at every line end; `\z` is end-of-text in all three engines.
# cl100k's `\p{N}{1,3}+` is written `\p{N}{1,3}` (as in Hugging Face's own cl100k/o200k files):
# Oniguruma reads `{n,m}+` as a repeated group, which would take a whole digit run; nothing follows
# it in its branch, so dropping the possessive changes no match in `regex` or Rust.
PATTERNS: dict[str, str] = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++\z|\s*[\r\n]|\s+(?!\S)|\s""",
    "o200k": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]),
}
PATTERNS["gpt4"] = PATTERNS["cl100k"]
# As Hugging Face tokenizer.json files spell them: Llama 3's (cl100k written for Oniguruma) and Qwen2's (one digit a piece).
PATTERNS["llama3"] = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
PATTERNS["qwen2"] = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


# `X{n,m}+` is possessive in Python `regex` and Rust, a repeated group `(X{n,m})+` in Oniguruma.
_POSSESSIVE_INTERVAL = regex.compile(r"(?<!\\|\\[a-zA-Z])\{(?:\d+,?\d*|,\d+)\}\+")


def resolve_pattern(pattern: str) -> str:
    """A named pattern ('gpt2', 'gpt4'/'cl100k', 'o200k') or a regex, returned as a regex."""
    return PATTERNS.get(pattern, pattern)


def check_portable(pattern: str) -> None:
    """Refuse a split regex that `regex` (llmlab, tiktoken) and Oniguruma (tokenizers) read differently."""
    if m := _POSSESSIVE_INTERVAL.search(pattern):
        raise TokenizerError(f"split pattern {pattern[:60]!r} uses the possessive quantifier {m.group()!r}, which "
                             "tokenizers (Oniguruma) reads as a repeated group, so llmlab and a saved tokenizer.json "
                             f"would split differently; write {m.group()[:-1]!r} or an atomic group (?>...).")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used in `tokenizer.json` and GGUF.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards, so a
    space is 'Ġ' (U+0120) and a newline 'Ċ' (U+010A).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_INF = float("inf")
# str.translate tables between the alphabet and Latin-1 (byte b as chr(b)): a whole vocabulary in C string calls, not
# a Python step per character (150,000 random tokens of 1-8 bytes: 0.135 -> 0.064 s). A code point below the
# alphabet's last that is not in it maps past Latin-1, so its encode fails as a character past the alphabet does.
_FROM_ALPHABET = {cp: CHAR_TO_BYTE.get(chr(cp), 0x110000 - 1) for cp in range(ord(max(CHAR_TO_BYTE)) + 1)}
_TO_ALPHABET = {b: ord(c) for b, c in BYTE_TO_CHAR.items()}


def unicode_to_bytes(token: str) -> bytes:
    """Inverse of the GPT-2 alphabet: 'Ġhello' -> b' hello'. KeyError if not in the alphabet."""
    try:
        return token.translate(_FROM_ALPHABET).encode("latin-1")
    except UnicodeEncodeError:
        bad = next(c for c in token if c not in CHAR_TO_BYTE)
        raise KeyError(f"{bad!r} (U+{ord(bad):04X}) in {token!r} is not in the GPT-2 byte alphabet") from None


def bytes_to_alphabet(token: bytes) -> str:
    """Token bytes in the GPT-2 alphabet, as tokenizer.json and GGUF write them: b' hello' -> 'Ġhello'."""
    return token.decode("latin-1").translate(_TO_ALPHABET)


def alphabet_strings(tokens: list[bytes]) -> dict[bytes, str]:
    """bytes_to_alphabet of many tokens in one translate (a byte is one character, so each token is a slice)."""
    text = b"".join(tokens).decode("latin-1").translate(_TO_ALPHABET)
    ends = list(accumulate(map(len, tokens)))
    return {t: text[a:b] for t, a, b in zip(tokens, [0, *ends], ends)}


@dataclass
class BPEModel(Rebuilt):
    """Byte-level BPE vocabulary and merge rule (see module docstring for the two modes).

    `vocab` maps token bytes to ids (ordinary tokens only, no special tokens). `merges` lists
    `(left, right)` pairs in rank order; `None` selects ranks mode, where a token's id is its rank.
    """

    vocab: dict[bytes, int]
    merges: list[tuple[bytes, bytes]] | None = None
    ignore_merges: bool = False  # HF flag: a piece that is a whole token skips the merge loop
    _pair_rank: dict[tuple[int, int], int] = field(init=False, repr=False)
    _merged_id: list[int] = field(init=False, repr=False)
    _byte_id: list[int | None] = field(init=False, repr=False)
    _c: CMerger = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._byte_id = [self.vocab.get(bytes([b])) for b in range(256)]
        self._pair_rank, self._merged_id = {}, []
        if self.merges is not None:
            v = self.vocab
            for rank, (a, b) in enumerate(self.merges):
                ia, ib, iab = v.get(a), v.get(b), v.get(a + b)
                if ia is None or ib is None or iab is None:
                    raise KeyError(f"merge {a!r} + {b!r} refers to a token missing from the vocabulary")
                self._pair_rank.setdefault((ia, ib), rank)  # first listing wins, like tokenizers
                self._merged_id.append(iab)
        self._c = CMerger(self._c_pairs) if self.merges is not None else CMerger(ranks=self.vocab)

    def _c_pairs(self):
        """The merge rules as (left id, right id, rank, merged id) for the C loop."""
        return ((a, b, r, self._merged_id[r]) for (a, b), r in self._pair_rank.items())

    @property
    def ranks_mode(self) -> bool:
        return self.merges is None

    def encode_piece(self, piece: bytes) -> tuple[int, ...]:
        """Ids of one pre-split piece (UTF-8 bytes)."""
        if self.merges is None:
            return self._encode_ranks(piece)
        return self._encode_merges(piece)

    def _encode_ranks(self, piece: bytes) -> tuple[int, ...]:
        ranks = self.vocab
        tok = ranks.get(piece)
        if tok is not None:  # tiktoken's shortcut: a whole-token piece is returned as is
            return (tok,)
        if (out := self._c(piece)) is not None:
            return tuple(out)
        parts = [piece[i:i + 1] for i in range(len(piece))]
        rk = [ranks.get(parts[i] + parts[i + 1], _INF) for i in range(len(parts) - 1)]
        while rk:
            r = min(rk)
            if r == _INF:
                break
            i = rk.index(r)  # leftmost among equal ranks
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
            del rk[i]
            if i < len(rk):
                rk[i] = ranks.get(parts[i] + parts[i + 1], _INF)
            if i > 0:
                rk[i - 1] = ranks.get(parts[i - 1] + parts[i], _INF)
        return tuple(ranks[p] for p in parts)

    def _encode_merges(self, piece: bytes) -> tuple[int, ...]:
        if self.ignore_merges and piece in self.vocab:
            return (self.vocab[piece],)
        # A byte missing from the vocabulary is dropped, as tokenizers does without an unk token.
        ids = [i for i in map(self._byte_id.__getitem__, piece) if i is not None]
        if len(ids) > 1 and (out := self._c(ids)) is not None:
            return tuple(out)
        pr, merged = self._pair_rank, self._merged_id
        rk = [pr.get((ids[i], ids[i + 1]), _INF) for i in range(len(ids) - 1)]
        while rk:
            r = min(rk)
            if r == _INF:
                break
            i = rk.index(r)
            ids[i:i + 2] = [merged[r]]
            del rk[i]
            if i < len(rk):
                rk[i] = pr.get((ids[i], ids[i + 1]), _INF)
            if i > 0:
                rk[i - 1] = pr.get((ids[i - 1], ids[i]), _INF)
        return tuple(ids)

    def _rank_table(self) -> RankTable | None:
        """Ranks mode's C table (the one the merges and the C encoder share), or None without C."""
        return self._c.table()

    def derive_merges(self) -> list[tuple[bytes, bytes]]:
        """Explicit merges for a ranks-mode vocabulary (to write a tokenizer.json).

        Each multi-byte token's pair is found by running BPE on its bytes with only lower ranks
        allowed, which stops at exactly two parts (minbpe's `recover_merges`).
        """
        if self.merges is not None:
            return list(self.merges)
        table = self._rank_table()
        pairs = table.derive_merges() if table is not None else None
        if pairs is not None:  # the same loop in C, all tokens in one call (o200k's 200k: 3.5 -> 0.3 s)
            by_rank = {r: t for t, r in self.vocab.items()}
            merges = sorted((r, by_rank[a], by_rank[b]) for r, a, b in zip(self.vocab.values(), pairs[::2], pairs[1::2])
                            if a >= 0)
            return [(a, b) for _, a, b in merges]
        out = []
        for tok, rank in sorted(self.vocab.items(), key=lambda kv: kv[1]):
            if len(tok) < 2:
                continue
            parts = [tok[i:i + 1] for i in range(len(tok))]
            while len(parts) > 2:
                best = min(range(len(parts) - 1),
                           key=lambda i: self.vocab.get(parts[i] + parts[i + 1], _INF))
                r = self.vocab.get(parts[best] + parts[best + 1], _INF)
                if r >= rank:
                    break
                parts[best:best + 2] = [parts[best] + parts[best + 1]]
            if len(parts) == 2:
                out.append((parts[0], parts[1]))
        return out
