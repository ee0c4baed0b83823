"""SentencePiece-style BPE: merges over Unicode characters, "▁" for spaces, byte fallback.

This is the tokenizer of Llama 1/2, Mistral 7B, TinyLlama, CodeLlama and their fine-tunes, as they ship it
in three forms, all read into one `PieceBPEModel`:

- a SentencePiece `tokenizer.model` (`spm_file.py`): pieces with scores; a pair of symbols merges when
  their concatenation is a piece, highest score first;
- a Hugging Face `tokenizer.json` BPE with `byte_fallback`: the same pieces with an explicit merge list,
  lowest rank first;
- a GGUF vocabulary whose `tokenizer.ggml.model` is "llama": pieces, scores and types, as the `.model`.

Encoding one word (text where spaces are already "▁"): every character becomes its piece; a character
that is no piece becomes the pieces of its UTF-8 bytes ("<0xE4>", ...) when byte fallback is on, else
the unknown piece (consecutive unknowns fused into one). Then the best-ranked adjacent pair is merged,
the leftmost among equals, until no pair merges: SentencePiece's and tokenizers' order, run with a heap
so a long input costs O(n log n). Pieces of SentencePiece's UNUSED type take part in merges and are split
back into the two pieces they were made of at the end, as SentencePiece does.

Each piece's exact bytes ("▁" -> b" ", "<0x0A>" -> b"\\n") are what `Tokenizer.token_bytes` returns, so
the engine streams these tokenizers byte by byte like byte-level BPE.
"""

from __future__ import annotations

import codecs
import heapq
import re
from dataclasses import dataclass, field
from itertools import chain

from llmlab.tokenizer.cmerge import CMerger, dense_ranks
from llmlab.tokenizer.rebuild import Rebuilt

SPACE = "\u2581"  # "▁", SentencePiece's escaped space
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SMALL = 48  # symbols: below this a list scan beats the heap
_INF = float("inf")


def _per_byte(e: UnicodeDecodeError) -> tuple[str, int]:
    return "\ufffd" * (e.end - e.start), e.end


codecs.register_error("llmlab-per-byte", _per_byte)  # one U+FFFD per invalid byte, as SentencePiece decodes


def byte_piece(b: int) -> str:
    """The byte-fallback piece of byte `b`, as SentencePiece and tokenizers name it ("<0x0A>")."""
    return f"<0x{b:02X}>"


@dataclass
class PieceBPEModel(Rebuilt):
    """BPE over characters with byte fallback. Give `merges` (rank order, a tokenizer.json) or `scores`
    (piece -> score, a SentencePiece model or GGUF: only these pieces are made by merges, higher first)."""

    vocab: dict[str, int]  # every ordinary piece -> id: characters, merged pieces, byte pieces, the unknown piece
    merges: list[tuple[str, str]] | None = None
    scores: dict[str, float] | None = None
    unk_token: str | None = "<unk>"
    byte_fallback: bool = True
    fuse_unk: bool = True
    ignore_merges: bool = False  # tokenizers' flag: a word that is a whole piece skips the merges
    unused: frozenset[str] = frozenset()  # SentencePiece UNUSED pieces: merged through, then split back
    user_defined: frozenset[str] = frozenset()  # SentencePiece USER_DEFINED pieces: matched whole, never merged
    replacement: str = SPACE
    # Decoding as SentencePiece does, (add_dummy_prefix, remove_extra_whitespaces), for a .model or GGUF: the first
    # piece's leading "▁" goes (every leading "▁" with remove_extra_whitespaces), invalid bytes of byte pieces become
    # one U+FFFD each. None: as the tokenizer.json's decoder chain says (tokenizers: U+FFFD for every byte of a run
    # of byte pieces that is not valid UTF-8 as a whole).
    spm_decode: tuple[bool, bool] | None = None
    _rank: dict[tuple[int, int], float] = field(init=False, repr=False)  # (left id, right id) -> rank
    _merged: dict[tuple[int, int], int] = field(init=False, repr=False)  # (left id, right id) -> merged id
    _pieces: dict[int, str] = field(init=False, repr=False)
    _byte_ids: list[int] | None = field(init=False, repr=False)
    _unk_id: int | None = field(init=False, repr=False)
    _unused_ids: frozenset[int] = field(init=False, repr=False)
    _user: re.Pattern | None = field(init=False, repr=False)
    _byte_value: dict[int, int] = field(init=False, repr=False)
    _c: CMerger | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.merges is None) == (self.scores is None):
            raise ValueError("PieceBPEModel takes merges (a rank order) or scores, exactly one of them")
        v = self.vocab
        self._pieces = {i: p for p, i in v.items()}
        byte_ids = [v.get(byte_piece(b)) for b in range(256)]
        self._byte_ids = byte_ids if all(i is not None for i in byte_ids) else None
        self._byte_value = {i: b for b, i in enumerate(byte_ids)} if self._byte_ids is not None else {}
        self._unk_id = v.get(self.unk_token) if self.unk_token is not None else None
        self._unused_ids = frozenset(v[p] for p in self.unused if p in v)
        missing = [p for p in self.user_defined if p not in v]
        if missing:
            raise KeyError(f"user-defined piece {missing[0]!r} is missing from the vocabulary")
        self._user = re.compile("|".join(map(re.escape, sorted(self.user_defined, key=len, reverse=True)))) \
            if self.user_defined else None
        rank: dict[tuple[int, int], float] = {}
        merged: dict[tuple[int, int], int] = {}
        if self.merges is not None:
            for r, (a, b) in enumerate(self.merges):
                ia, ib, iab = v.get(a), v.get(b), v.get(a + b)
                if ia is None or ib is None or iab is None:
                    raise KeyError(f"merge {a!r} + {b!r} refers to a piece missing from the vocabulary")
                if (ia, ib) not in rank:  # the first listing wins, as in tokenizers
                    rank[ia, ib], merged[ia, ib] = r, iab
        else:  # every split of a mergeable piece into two mergeable pieces is a merge; its rank is -score
            for p, score in self.scores.items():
                ip = v.get(p)
                if ip is None:
                    raise KeyError(f"scored piece {p!r} is missing from the vocabulary")
                for k in range(1, len(p)):
                    a, b = p[:k], p[k:]
                    if a in self.scores and b in self.scores:
                        rank[v[a], v[b]], merged[v[a], v[b]] = -score, ip
        self._rank, self._merged = rank, merged
        self._c = None if self._unused_ids else CMerger(self._c_pairs)  # (unused pieces: the Python loop splits back)

    def _c_pairs(self):
        """The merge rules as (left id, right id, integer rank, merged id) for the C loop."""
        dense = dense_ranks(self._rank.values())
        return ((a, b, dense[r], self._merged[a, b]) for (a, b), r in self._rank.items())

    # ---- encode ------------------------------------------------------------------------------
    def encode_word(self, word: str) -> tuple[int, ...]:
        """Ids of one word (spaces already replaced by "▁")."""
        if self.ignore_merges and word in self.vocab:
            return (self.vocab[word],)
        if self._user is not None and self._user.search(word):  # longest first at each place, as SentencePiece
            out: list[int] = []
            pos = 0
            for m in self._user.finditer(word):
                out += self.encode_word(word[pos:m.start()]) if m.start() > pos else ()
                out.append(self.vocab[m.group()])
                pos = m.end()
            return tuple(out) + (self.encode_word(word[pos:]) if pos < len(word) else ())
        ids = list(map(self.vocab.get, word))
        if None in ids:
            ids = self._fallback(word)
        if len(ids) < 2:
            return tuple(ids)
        if self._c is not None and (out := self._c(ids)) is not None:
            return tuple(out)
        rev: dict[int, tuple[int, int]] = {}
        ids = self._merge_small(ids, rev) if len(ids) < _SMALL else self._merge_heap(ids, rev)
        if self._unused_ids:
            ids = self._resegment(ids, rev)
        return tuple(ids)

    def _fallback(self, word: str) -> list[int]:
        """Ids of the characters of a word that has some outside the vocabulary: their bytes, or the unknown id."""
        ids: list[int] = []
        v, unk = self.vocab, self._unk_id
        last_unk = False
        for c in word:
            i = v.get(c)
            if i is not None:
                ids.append(i)
                last_unk = False
            elif self.byte_fallback and self._byte_ids is not None:
                ids.extend(self._byte_ids[b] for b in c.encode("utf-8"))
                last_unk = False
            elif unk is not None:
                if not (self.fuse_unk and last_unk):
                    ids.append(unk)
                last_unk = True
            # no unknown piece and no byte fallback: the character is dropped, as tokenizers does
        return ids

    def _merge_small(self, ids: list[int], rev: dict[int, tuple[int, int]]) -> list[int]:
        ranks, inf = self._rank, _INF
        rk = [ranks.get((ids[i], ids[i + 1]), inf) for i in range(len(ids) - 1)]
        while rk:
            r = min(rk)
            if r == inf:
                break
            i = rk.index(r)  # the leftmost among equal ranks
            m = self._merged[ids[i], ids[i + 1]]
            if m in self._unused_ids:
                rev[m] = (ids[i], ids[i + 1])
            ids[i:i + 2] = [m]
            del rk[i]
            if i < len(rk):
                rk[i] = ranks.get((m, ids[i + 1]), inf)
            if i > 0:
                rk[i - 1] = ranks.get((ids[i - 1], m), inf)
        return ids

    def _merge_heap(self, ids: list[int], rev: dict[int, tuple[int, int]]) -> list[int]:
        """The same merges through a heap of (rank, left position) over a linked list; merged-away slots are -1."""
        ranks, n = self._rank, len(ids)
        if n < 2:
            return ids
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = [(r, i, ids[i], ids[i + 1]) for i in range(n - 1) if (r := ranks.get((ids[i], ids[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            _, i, a, b = heapq.heappop(heap)
            j = nxt[i]
            if ids[i] != a or j < 0 or ids[j] != b:
                continue  # stale: a symbol of this pair has merged since (a merge changes its id)
            m = self._merged[a, b]
            if m in self._unused_ids:
                rev[m] = (a, b)
            ids[i], ids[j] = m, -1
            k = nxt[i] = nxt[j]
            if k >= 0:
                prv[k] = i
                if (r := ranks.get((m, ids[k]))) is not None:
                    heapq.heappush(heap, (r, i, m, ids[k]))
            p = prv[i]
            if p >= 0 and (r := ranks.get((ids[p], m))) is not None:
                heapq.heappush(heap, (r, p, ids[p], m))
        return [i for i in ids if i >= 0]

    def _resegment(self, ids: list[int], rev: dict[int, tuple[int, int]]) -> list[int]:
        out: list[int] = []
        stack = list(reversed(ids))
        while stack:
            i = stack.pop()
            if i in self._unused_ids and i in rev:
                a, b = rev[i]
                stack += [b, a]
            else:
                out.append(i)
        return out

    # ---- pieces, bytes, merges ---------------------------------------------------------------
    def piece(self, i: int) -> str:
        return self._pieces[i]

    def piece_text(self, i: int) -> str:
        return self._pieces[i].replace(self.replacement, " ")

    def byte_value(self, i: int) -> int | None:
        """The byte a byte piece stands for (None for any other id)."""
        return self._byte_value.get(i)

    def decode_bytes(self, run: bytes) -> str:
        if self.spm_decode is not None:
            return run.decode("utf-8", "llmlab-per-byte")
        try:
            return run.decode("utf-8")
        except UnicodeDecodeError:
            return "\ufffd" * len(run)

    def piece_bytes(self, piece: str) -> bytes:
        """The text bytes a piece stands for: a byte piece its byte, "▁" a space."""
        m = _BYTE_PIECE.fullmatch(piece)
        if m is not None and self._byte_ids is not None:
            return bytes([int(m.group(1), 16)])
        return piece.replace(self.replacement, " ").encode("utf-8")

    def can_split_words(self) -> bool:
        """True when no merge joins a non-space piece to a following "▁": text can then be cut before every
        "▁" that follows another character, and each part encoded (and cached) on its own."""
        rep = self.replacement
        if self.ignore_merges or rep not in self.vocab:  # a whole-word shortcut, or "▁" itself unknown: never cut
            return False
        made = (a + b for a, b in self.merges) if self.merges is not None else iter(self.scores)
        return all(rep not in p.lstrip(rep) for p in chain(made, self.user_defined))

    def derive_merges(self) -> list[tuple[str, str]]:
        """The merge list, best first (to write a tokenizer.json); ties keep the lower merged id first."""
        if self.merges is not None:
            return list(self.merges)
        order = sorted(self._rank, key=lambda k: (self._rank[k], self._merged[k], k))
        return [(self._pieces[a], self._pieces[b]) for a, b in order]

