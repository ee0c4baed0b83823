"""Byte-level BPE encoding in C (llmlab/kernels/cpu_bpe.c) of text that is ASCII but for punctuation and symbols:
pre-split, word cache and merges.

    fast = CEncoder.of(model, patterns)  # None unless the pre-split is PATTERNS' gpt2, cl100k, o200k, llama3, qwen2
                                         # or SmolLM2's single digits + gpt2
    fast(text, slow) -> list[int] | None  # the ids of text (slow: Python's encode of a non-ASCII part), or None

The Python encode spends its time making a str per piece and looking it up (a chunk cache takes most of that away
once warm, not on first sight); C splits the text with each pattern's alternatives written out for ASCII's four
character classes, keeps its own cache of piece bytes -> ids and merges the misses with the loops of cmerge.py, so
a text costs one call. Non-ASCII characters of the pattern's "other" class (’ “ ” — …, `others`) pass through C
as punctuation; around any other non-ASCII character the text is cut where no piece crosses (ascii_split.segments)
and those parts go to Python (Unicode categories are the regex module's); prose in other scripts goes to Python
whole. Like CMerger, the C side starts only
after WARMUP bytes were encoded in Python, so loading a tokenizer and encoding a prompt never wait for tables;
without a C compiler every call returns None.

Calls hold the GIL (ctypes.PyDLL): the cache is the encoder's own, and two threads must not fill it at once.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import weakref
from array import array
from collections.abc import Callable

import regex

from llmlab.tokenizer import ascii_split
from llmlab.tokenizer.bpe import PATTERNS, BPEModel
from llmlab.tokenizer.cmerge import PairTable, RankTable, _library

WARMUP = 1 << 16  # bytes encoded in Python before the C encoder is built
CACHE_LIMIT = 1 << 20  # pieces in the C cache before it is emptied (the Python word cache's limit)
# The pre-splits C knows (the patterns of its stages, in order) -> (its number in cpu_bpe.c, the pattern whose cuts
# `segments` uses); the last is SmolLM2's: single digits, then GPT-2's pattern
KINDS = {**{(PATTERNS[name],): (kind, PATTERNS[name])
            for kind, name in enumerate(("gpt2", "cl100k", "o200k", "llama3", "qwen2"))},
         (r"\p{N}", PATTERNS["gpt2"]): (5, PATTERNS["gpt2"])}


@functools.cache
def _functions() -> ctypes.PyDLL | None:
    """The encoder's entry points, called with the GIL held (PyDLL), or None without a C library."""
    lib = _library()
    if lib is None:
        return None
    fns, p = ctypes.PyDLL(lib._name), ctypes.c_void_p
    fns.bpe_encoder_new.argtypes = [ctypes.c_int, p, ctypes.c_int, p, p, p, ctypes.c_int, p, ctypes.c_char_p,
                                    ctypes.c_int64]
    fns.bpe_encoder_new.restype = p
    fns.bpe_encoder_free.argtypes, fns.bpe_encoder_free.restype = [p], None
    fns.bpe_encode.argtypes = [p, ctypes.c_char_p, ctypes.c_int64, p]
    fns.bpe_encode.restype = ctypes.c_int64
    fns.bpe_encoder_size.argtypes, fns.bpe_encoder_size.restype = [p], ctypes.c_int64
    fns.bpe_split.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int64, p]
    fns.bpe_split.restype = ctypes.c_int64
    return fns


@functools.cache
def others(kind: int) -> bytes:
    """One byte a code point below 0x3000: 1 where the character is of the pre-split's "other" class
    ([^\\s\\p{L}\\p{N}], as `regex` reads it: punctuation and symbols such as ’ “ ” — … © €), which C treats
    like ASCII punctuation; o200k leaves out the marks (\\p{M}), which its letter classes take."""
    other = r"[^\s\p{L}\p{N}\p{M}]" if kind == KINDS[(PATTERNS["o200k"],)][0] else r"[^\s\p{L}\p{N}]"
    table = bytearray(0x3000)
    for m in regex.finditer(other, "".join(map(chr, range(0x80, 0x3000)))):
        table[0x80 + m.start()] = 1
    return bytes(table)


def split(patterns: tuple[str, ...], text: str) -> list[str] | None:
    """C's pre-split of `text` with stages of KINDS (for tests), or None where C does not run (no C; a character
    outside ASCII and the "other" class)."""
    fns = _functions()
    if fns is None or patterns not in KINDS:
        return None
    kind, raw = KINDS[patterns][0], text.encode("utf-8")
    ends = array("i", [0]) * len(raw)
    n = fns.bpe_split(kind, others(kind), raw, len(raw), ends.buffer_info()[0])
    if n < 0:
        return None
    starts = [0, *ends[:n - 1]] if n else []
    return [raw[a:b].decode("utf-8") for a, b in zip(starts, ends[:n], strict=True)]


class _Encoder:
    """One C encoder: its handle, and the tables its pointers refer to (kept alive with it)."""

    def __init__(self, fns: ctypes.PyDLL, kind: int, model: BPEModel, limit: int = CACHE_LIMIT):
        addr = lambda a: a.buffer_info()[0] if a is not None else None  # noqa: E731
        c = model._c
        if model.ranks_mode:
            table = c._table if isinstance(c._table, RankTable) else RankTable(_library(), model.vocab)
            c._table = table  # the Python path's misses share it
            vocab, pairs, byte_ids = table, None, None
        else:
            pairs = c._table if isinstance(c._table, PairTable) else PairTable(_library(), model._c_pairs())
            c._table = pairs
            vocab = RankTable(_library(), model.vocab) if model.ignore_merges else None
            byte_ids = array("i", (-1 if i is None else i for i in model._byte_id))
        self._keep = (vocab, pairs, byte_ids)
        handle = fns.bpe_encoder_new(
            kind, addr(vocab.slots) if vocab else None, vocab.bits if vocab else 0,
            ctypes.cast(ctypes.c_char_p(vocab.blob), ctypes.c_void_p) if vocab else None,
            addr(pairs.keys) if pairs else None, addr(pairs.vals) if pairs else None, pairs.bits if pairs else 0,
            addr(byte_ids), others(kind), limit)
        if not handle:
            raise MemoryError("the C encoder could not allocate its cache")
        self.handle = handle
        self._encode = functools.partial(fns.bpe_encode, handle)
        self._local = threading.local()
        weakref.finalize(self, fns.bpe_encoder_free, handle)

    def __call__(self, text: str, raw: bytes | None = None) -> list[int] | None:
        """The ids of `text` (`raw`: its UTF-8, when the caller has it), or None for a character C leaves to Python."""
        raw = text.encode("utf-8") if raw is None else raw
        out = getattr(self._local, "out", None)  # one output buffer per thread, grown as needed
        if out is None or len(out) < len(raw):
            out = self._local.out = array("i", [0]) * max(len(raw), 1 << 12)
        n = self._encode(raw, len(raw), out.buffer_info()[0])
        return None if n < 0 else out[:n].tolist()


class CEncoder:
    """Builds the C encoder once WARMUP bytes went through Python; returns None wherever Python must encode."""

    def __init__(self, model: BPEModel, patterns: tuple[str, ...]):
        self._model, (self._kind, self._cut) = model, KINDS[patterns]
        self._work = 0
        self._enc: _Encoder | None = None
        self._off = False

    @classmethod
    def of(cls, model, patterns: tuple[str, ...]) -> CEncoder | None:
        """An encoder for byte-level BPE whose pre-split stages (their patterns) are in KINDS, else None."""
        return cls(model, patterns) if isinstance(model, BPEModel) and patterns in KINDS else None

    def __call__(self, text: str, slow: Callable[[str], list[int]]) -> list[int] | None:
        """The ids of `text` through C, whole when its characters are ASCII or of the pattern's "other" class
        (`others`: ’ “ ” — …), else its ASCII stretches through C and the parts around the other non-ASCII
        characters (ascii_split's segments) through `slow`; None for text mostly not ASCII (French or Russian
        prose: Python, whole), and while C is warming up or unavailable."""
        if self._off or len(text) >= 1 << 31:
            return None
        plain = text.isascii()
        enc = self._enc
        if enc is None:
            self._work += len(text)
            if self._work < WARMUP:
                return None
            fns = _functions()
            try:
                enc = self._enc = _Encoder(fns, self._kind, self._model) if fns is not None else None
            except (OverflowError, MemoryError):  # ids, ranks or offsets past int32; no memory for the cache
                enc = None
            if enc is None:
                self._off = True
                return None
        if plain:
            return enc(text)
        raw = text.encode("utf-8")
        ids = enc(text, raw)  # whole, when its other characters are all of the "other" class
        if ids is not None:
            return ids
        cuts = ascii_split.segments(text, self._cut, utf8_len=len(raw))
        if cuts is None or sum(b - a for a, b, ascii in cuts if ascii) * 2 < len(text):
            return None  # non-ASCII characters all through, or C would get under half the text: Python, whole
        out: list[int] = []
        for a, b, ascii in cuts:
            part = text[a:b]
            ids = enc(part) if ascii else None
            out += slow(part) if ids is None else ids
        return out
