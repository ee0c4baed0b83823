"""BPE encoding in C (llmlab/kernels/cpu_bpe.c): pre-split, word cache and merges, one call a text.

    fast = CEncoder.of(model, patterns)  # byte-level BPE whose pre-split is PATTERNS' gpt2, cl100k, o200k, llama3,
                                         # qwen2 or SmolLM2's single digits + gpt2; SentencePiece-style BPE (Llama 2,
                                         # Mistral) split into "▁" words; else None
    fast(text) -> list[int] | None       # the ids of text, or None: encode it in Python
    fast.array(text) -> array("i") | None  # the same as int32s (Tokenizer.encode_to_numpy)

The Python encode spends its time making a str per piece and looking it up (a chunk cache takes most of that away
once warm, not on first sight); C splits the text with each pattern's alternatives written out over character
classes, keeps its own cache of piece bytes -> ids and merges the misses with the loops of cmerge.py, so a text
costs one call, in any script. The classes of all code points come from the `regex` module's Unicode properties
(`classes`: the ones the Python path's split uses), built once a process. SentencePiece-style BPE (text normalized
with "▁" for spaces, cut into words before each "▁": PieceBPEModel.can_split_words) starts each word's merge from
its characters' ids, with byte fallback. Like CMerger, the C side starts only after WARMUP bytes were encoded in
Python, so loading a tokenizer and encoding a prompt never wait for tables; without a C compiler every call returns
None.

Each thread encodes with a C encoder of its own (its own cache, over tables all threads share), and the call that
splits and merges a text releases the GIL: threads encode in parallel (Tokenizer.encode_batch).
"""

from __future__ import annotations

import ctypes
import functools
import threading
import weakref
from array import array
from collections.abc import Callable

import regex

from llmlab.tokenizer.bpe import PATTERNS, BPEModel
from llmlab.tokenizer.cmerge import RankTable, _library
from llmlab.tokenizer.spm import SPACE, PieceBPEModel

WARMUP = 1 << 16  # bytes encoded in Python before the C encoder is built
CACHE_LIMIT = 1 << 20  # pieces in the C cache before it is emptied (the Python word cache's limit)
# The pre-splits C knows (the patterns of its stages, in order) -> their number in cpu_bpe.c; the last is SmolLM2's:
# single digits, then GPT-2's pattern
KINDS = {**{(PATTERNS[name],): kind for kind, name in enumerate(("gpt2", "cl100k", "o200k", "llama3", "qwen2"))},
         (r"\p{N}", PATTERNS["gpt2"]): 5}
SPM_WORDS = f"{SPACE}*[^{SPACE}]+|{SPACE}+"  # the words a Tokenizer cuts SentencePiece-style text into
SPM = 6  # its number in cpu_bpe.c


@functools.cache
def _functions() -> ctypes.CDLL | None:
    """The encoder's entry points, or None without a C library. ctypes.CDLL releases the GIL for each call: only
    bpe_encode runs long enough for that to matter, and it touches no Python object."""
    lib = _library()
    if lib is None:
        return None
    fns, p = ctypes.CDLL(lib._name), ctypes.c_void_p
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
def _list_maker() -> Callable | None:
    """cpu_pylist.c's ids_to_list(ints, ids pointer, n) -> list (the GIL held: PyDLL), or None where it cannot build
    (no Python.h): then array.tolist makes the list."""
    from llmlab.kernels import cbuild

    lib = cbuild.load("cpu_pylist.c").lib
    if lib is None:
        return None
    fn = ctypes.PyDLL(lib._name).ids_to_list
    fn.argtypes, fn.restype = [ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t], ctypes.py_object
    return fn


# cpu_bpe.c's character classes (its C_* bits): C_UPPER and C_LOWER are o200k's [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and
# [\p{Ll}\p{Lm}\p{Lo}\p{M}]; a character without C_LETTER, C_DIGIT or C_SPACE is "other" ([^\s\p{L}\p{N}])
C_LETTER, C_UPPER, C_LOWER, C_DIGIT, C_SPACE, C_NEWLINE = 1, 2, 4, 8, 16, 32
_CLASSES = ((r"[\p{Lu}\p{Lt}]", C_LETTER | C_UPPER), (r"\p{Ll}", C_LETTER | C_LOWER),
            (r"[\p{Lm}\p{Lo}]", C_LETTER | C_UPPER | C_LOWER),
            (r"\p{M}", C_UPPER | C_LOWER), (r"\p{N}", C_DIGIT), (r"\s", C_SPACE), (r"[\r\n]", C_SPACE | C_NEWLINE))


@functools.cache
def classes() -> bytes:
    """One byte a code point (0x110000): its class bits, from `regex`'s reading of each property (the general
    categories are disjoint, and no White_Space character is a letter, mark or digit). About 0.1 s, once."""
    import numpy as np  # here: `llmlab --help` builds its parser (and imports this module) without numpy

    every = np.arange(0x110000, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    table = np.zeros(0x110000, np.uint8)
    for pattern, bits in _CLASSES:
        for m in regex.finditer(pattern + "+", every):
            table[m.start():m.end()] = bits
    return table.tobytes()


def split(patterns: tuple[str, ...], text: str) -> list[str] | None:
    """C's pre-split of `text` with stages of KINDS or SPM_WORDS (for tests), or None without C."""
    fns = _functions()
    kind = SPM if patterns == (SPM_WORDS,) else KINDS.get(patterns)
    if fns is None or kind is None:
        return None
    raw = text.encode("utf-8")
    ends = array("i", [0]) * len(raw)
    n = fns.bpe_split(kind, classes(), raw, len(raw), ends.buffer_info()[0])
    if n < 0:
        raise AssertionError(f"the C split found no alternative in {text!r}")
    starts = [0, *ends[:n - 1]] if n else []
    return [raw[a:b].decode("utf-8") for a, b in zip(starts, ends[:n], strict=True)]


class _Handle:
    """One thread's C encoder; freed when the thread ends (or the _Encoder goes), before the tables it reads."""

    def __init__(self, handle: int, free: Callable[[int], None], tables: tuple) -> None:
        self.handle, self._tables = handle, tables
        weakref.finalize(self, free, handle)


class _Encoder:
    """C encoders of one model: the tables their pointers refer to, and one encoder (a cache) for each thread that
    calls it."""

    def __init__(self, fns: ctypes.CDLL, kind: int, model: BPEModel | PieceBPEModel, limit: int = CACHE_LIMIT):
        addr = lambda a: a.buffer_info()[0] if a is not None else None  # noqa: E731
        table = model._c.table()  # the merge rules' table (ranks mode: the ranks'), shared with the Python path's misses
        if table is None:
            raise OverflowError("the model's merge table does not fit C's int32 ids, ranks or offsets")
        if kind == SPM:  # characters -> ids (a bytes table of the vocabulary), the merge rules, the byte pieces
            pairs = table
            vocab = RankTable(_library(), {p.encode("utf-8"): i for p, i in model.vocab.items()})
            byte_ids = array("i", model._byte_ids)
        elif model.ranks_mode:
            vocab, pairs, byte_ids = table, None, None
        else:
            pairs = table
            vocab = RankTable(_library(), model.vocab) if model.ignore_merges else None
            byte_ids = array("i", (-1 if i is None else i for i in model._byte_id))
        self._keep = (vocab, pairs, byte_ids)
        self._new = functools.partial(
            fns.bpe_encoder_new, kind, addr(vocab.slots) if vocab else None, vocab.bits if vocab else 0,
            ctypes.cast(ctypes.c_char_p(vocab.blob), ctypes.c_void_p) if vocab else None,
            addr(pairs.keys) if pairs else None, addr(pairs.vals) if pairs else None, pairs.bits if pairs else 0,
            addr(byte_ids), classes() if kind != SPM else None, limit)  # (SentencePiece's words need no classes)
        self._free, self._encode = fns.bpe_encoder_free, fns.bpe_encode
        self._local = threading.local()
        # every id C can give, as int objects, for lists made in C (_list_maker): 28 + 8 bytes an id (o200k: 7 MB)
        self._to_list = _list_maker()
        self._ints = list(range(max(model.vocab.values(), default=0) + 1)) if self._to_list is not None else None
        _ = self.handle  # this thread's now: no memory for it raises here, and the model stays in Python

    @property
    def handle(self) -> int:
        """The calling thread's C encoder, made on its first call; MemoryError when it cannot be."""
        mine = getattr(self._local, "mine", None)
        if mine is None:
            handle = self._new()
            if not handle:
                raise MemoryError("the C encoder could not allocate its cache")
            mine = self._local.mine = _Handle(handle, self._free, self._keep)
        return mine.handle

    def ids(self, text: str) -> list[int] | None:
        """The ids of `text` as a list, or None where C failed."""
        out = self(text)
        if out is None:
            return None
        if self._to_list is None:
            return out.tolist()
        return self._to_list(self._ints, out.buffer_info()[0], len(out))

    def __call__(self, text: str) -> array | None:
        """The ids of `text` (an int32 array: a list of Python ints costs more than the encoding, where a caller
        needs none), or None where C failed (out of memory)."""
        try:
            handle = self.handle
        except MemoryError:
            return None
        raw = text.encode("utf-8")
        out = getattr(self._local, "out", None)  # one output buffer per thread, grown as needed
        if out is None or len(out) < len(raw):
            out = self._local.out = array("i", [0]) * max(len(raw), 1 << 12)
        n = self._encode(handle, raw, len(raw), out.buffer_info()[0])  # the GIL released: threads run at once
        return None if n < 0 else out[:n]


class CEncoder:
    """Builds the C encoder once WARMUP bytes went through Python; returns None wherever Python must encode."""

    def __init__(self, model: BPEModel | PieceBPEModel, kind: int, prepare: Callable[[str, bool], list[str]] | None = None):
        self._model, self._kind, self._prepare = model, kind, prepare
        self._user = model._user if kind == SPM else None  # SentencePiece's user-defined pieces: Python matches them
        self._work = 0
        self._enc: _Encoder | None = None
        self._off = False
        self._building = threading.Lock()  # the first threads past WARMUP build one set of tables, not one each

    @classmethod
    def of(cls, model, patterns: tuple[str, ...], metaspace=None) -> CEncoder | None:
        """An encoder for byte-level BPE whose pre-split stages (their patterns) are in KINDS, or for
        SentencePiece-style BPE cut into words (SPM_WORDS) with byte fallback and plain merges, after a `metaspace`
        stage (tokenizer.py's _Metaspace) that does not split, if any; else None."""
        if isinstance(model, BPEModel) and patterns in KINDS and metaspace is None:
            return cls(model, KINDS[patterns])
        if isinstance(model, PieceBPEModel) and patterns == (SPM_WORDS,) and model.replacement == SPACE \
                and model.byte_fallback and model._byte_ids is not None and model._c is not None \
                and not model.ignore_merges and (metaspace is None or  # (_c is None with SentencePiece's unused pieces)
                                                 metaspace.replacement == SPACE and not metaspace.split):
            return cls(model, SPM, metaspace)
        return None

    def __call__(self, text: str, first: bool = True) -> list[int] | None:
        """The ids of `text` (well-formed: no lone surrogate; `first`: it starts the input, for Metaspace's
        prepend_scheme "first") through C; None while C is warming up or unavailable."""
        enc, text = self._ready(text, first)
        return enc.ids(text) if enc is not None else None

    def array(self, text: str, first: bool = True) -> array | None:
        """The same ids as an int32 array (no Python int made for each: Tokenizer.encode_to_numpy)."""
        enc, text = self._ready(text, first)
        return enc(text) if enc is not None else None

    def _ready(self, text: str, first: bool) -> tuple[_Encoder | None, str]:
        """(the encoder, the text as it takes it), or (None, _) where Python must encode."""
        if self._off or len(text) >= 1 << 28:
            return None, text
        if self._prepare is not None:  # Metaspace without split: one text, spaces as "▁", the "▁" prepended
            text = "".join(self._prepare(text, first))
        if self._user is not None and self._user.search(text):
            return None, text
        enc = self._enc
        if enc is None:
            self._work += len(text)
            if self._work < WARMUP:
                return None, text
            with self._building:
                if self._off:
                    return None, text
                if (enc := self._enc) is None:
                    fns = _functions()
                    try:
                        enc = self._enc = _Encoder(fns, self._kind, self._model) if fns is not None else None
                    except (OverflowError, MemoryError):  # ids, ranks or offsets past int32; no memory for a cache
                        enc = None
                    if enc is None:
                        self._off = True
                        return None, text
        return enc, text
