"""The `Tokenizer`: text <-> ids through special tokens, normalizer, pre-split, word cache, model.

    text ─ split out special/added tokens ─ normalize ─ pre-split (regex stages) ─┐
         ┌────────────────────────────────────────────────────────────────────────┘
         └─ per piece: word cache ─ miss → model (byte-level BPE | SentencePiece-style BPE | WordPiece) ─► ids

The normalizer and pre-tokenizer are kept as their Hugging Face `tokenizer.json` specs (the single
source of truth, written back by `save`) and compiled here into plain functions. The word cache is
where the speed comes from: in real text most pieces repeat, so after warm-up encoding is one
regex `findall` plus one C-level dict lookup per piece. For byte-level BPE with a known pre-split (GPT-2, cl100k,
o200k, Llama 3, Qwen2, SmolLM2), and for SentencePiece-style BPE with byte fallback (Llama 2, Mistral), text in any
script goes to C whole once a corpus is under way (cencode.py): split, cache and merges there; the path above takes the
first 64 KB and every other tokenizer.

Special tokens are only recognised where the caller allows them (`allowed_special`); elsewhere
their text is encoded as ordinary text, so user content cannot inject a control token. Non-special
added tokens are always recognised, as in `tokenizers`, with its AddedToken options: `normalized`
tokens are matched in the normalized text, the others in the raw text first; `lstrip`/`rstrip`
swallow the whitespace on that side; a `single_word` token is not matched inside a word.
Lone surrogates (a `str` can hold them, UTF-8 cannot) are replaced by U+FFFD before encoding,
exactly as tiktoken does, and decoding invalid UTF-8 (e.g. half a character) yields U+FFFD; use
`decode_bytes`/`token_bytes` to stream.

Not here: file formats (`io.py`), training (`train.py`), chat templates (`chat.py`).
"""

from __future__ import annotations

import functools
import operator
import os
import re
import threading
import unicodedata
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal

import regex

from llmlab.errors import TokenizerError
from llmlab.tokenizer.ascii_split import WS_CLASS as _WS
from llmlab.tokenizer.ascii_split import fast_findall, line_safe
from llmlab.tokenizer.bpe import PATTERNS, BPEModel, bytes_to_alphabet, check_portable, unicode_to_bytes
from llmlab.tokenizer.cencode import CEncoder
from llmlab.tokenizer.rebuild import rebuild
from llmlab.tokenizer.spm import SPACE, PieceBPEModel
from llmlab.tokenizer.wordpiece import BERT_SPLIT, BertNormalizer, WordPieceModel

_CACHE_LIMIT = 1 << 20  # entries; the cache is cleared when it grows past this
_CACHED_LEN = 256  # characters: a longer piece (a whole text no pre-split cut) is not kept in the word cache
# A cheap stdlib-`re` pre-split whose chunks no GPT-2 piece ever crosses: a chunk is a maximal
# non-space run with at most one leading space, or a whitespace run split exactly as the GPT-2
# pattern splits it. GPT-2 pieces hold whitespace only as one leading space or as a
# whitespace-only piece, so cutting here changes nothing, and chunks ("foo.bar(x)," with its
# space) repeat often enough to cache. It runs ~5x faster than the `regex` module's \p{L} split.
# Whitespace here must be exactly the pattern's `\s` (Unicode White_Space), spelled out: stdlib
# `re`'s `\s` (str.isspace) also takes U+001C..U+001F, so "\x1f's" was cut before "'s".
_GPT2_COARSE = re.compile(f" ?[^{_WS}]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+")
# The same for the cl100k family (ascii_split.line_safe: cl100k, o200k, Llama 3, Qwen2): cut before each space that
# follows a non-space. No piece of those patterns holds a non-space followed by a space (a word's leading space is the
# piece's first character; the whitespace alternatives hold no non-space, punctuation only trailing line breaks), and
# a chunk so cut ends in a non-space, so \s+(?!\S) and \s++\z read its end as they read the text's. Chunks: " x",
# " =", " 1\n    return" (a line end, the next line's indentation and first word).
_SPACE_COARSE = re.compile(f" ?[^ ]*(?:(?<=[{_WS}]) +[^ ]*)*")
# tokenizers' `\s` and `\w` (Rust regex, Unicode): for added tokens' lstrip/rstrip and single_word.
_SPACE, _SPACES = re.compile(f"[{_WS}]"), re.compile(f"[{_WS}]*")
_WORD = regex.compile(r"[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]")
TOKEN_OPTIONS = ("single_word", "lstrip", "rstrip", "normalized")  # tokenizers' AddedToken flags


def coarse_split(pattern: str) -> re.Pattern | None:
    """The cheap chunking above that fits `pattern` (a regex), or None."""
    if pattern == PATTERNS["gpt2"]:
        return _GPT2_COARSE
    return _SPACE_COARSE if line_safe(pattern) else None


@dataclass(frozen=True)
class _Split:
    """One pre-split stage: regex matches are pieces; with keep_gaps, text between them too. `of` finds them through
    the pattern's stdlib-`re` twin on ASCII text where it has one (`ascii_split.py`): the same pieces, 2-3x sooner."""

    pattern: regex.Pattern
    keep_gaps: bool = True
    prefix_space: bool = False  # ByteLevel(add_prefix_space=True)
    findall: Callable[[str], list[str]] | None = field(default=None, compare=False)  # default: pattern.findall

    @classmethod
    def of(cls, pattern: str, **kw) -> _Split:
        compiled = regex.compile(pattern)
        return cls(compiled, findall=fast_findall(pattern, compiled), **kw)

    def __call__(self, text: str, first: bool = True) -> list[str]:
        if self.prefix_space and not text.startswith(" "):
            text = " " + text
        pieces = (self.findall or self.pattern.findall)(text)
        if not self.keep_gaps or sum(map(len, pieces)) == len(text):
            return pieces  # fast path: the usual patterns cover every character
        out, pos = [], 0
        for m in self.pattern.finditer(text):
            if m.start() > pos:
                out.append(text[pos:m.start()])
            if m.end() > m.start():
                out.append(m.group())
            pos = m.end()
        if pos < len(text):
            out.append(text[pos:])
        return out


@dataclass(frozen=True)
class _Metaspace:
    """tokenizers' Metaspace pre-tokenizer: spaces become the replacement ("▁"), which is prepended to the text
    (prepend_scheme "always"; "first": only to the text at the start of the input; "never") unless it is there
    already; with `split`, the text is cut before every replacement character."""

    replacement: str = SPACE
    prepend: Literal["always", "first", "never"] = "always"
    split: bool = True

    def __call__(self, text: str, first: bool = True) -> list[str]:
        rep = self.replacement
        text = text.replace(" ", rep)
        if (self.prepend == "always" or self.prepend == "first" and first) and text and not text.startswith(rep):
            text = rep + text
        if not self.split:
            return [text] if text else []
        return [w for w in re.split(f"(?={re.escape(rep)})", text) if w]


@dataclass(frozen=True)
class _AddedSplit:
    """Cuts added tokens out of a text as tokenizers' AddedVocabulary does: leftmost-longest matches, then
    single_word, lstrip and rstrip. Returns the text between them and their ids, in order."""

    pattern: re.Pattern
    ids: dict[str, int]  # matched text -> id
    options: dict[str, dict[str, bool]]  # matched text -> its AddedToken flags

    def __call__(self, text: str) -> list[str | int]:
        out: list[str | int] = []
        pos = 0
        for m in self.pattern.finditer(text):
            start, stop = m.span()
            opt = self.options.get(m.group(), {})
            if start < pos or opt.get("single_word") and (start and _WORD.match(text, start - 1)
                                                           or _WORD.match(text, stop)):
                continue
            if opt.get("lstrip"):
                while start > pos and _SPACE.match(text, start - 1):
                    start -= 1
            if opt.get("rstrip"):
                stop = _SPACES.match(text, stop).end()
            if start > pos:
                out.append(text[pos:start])
            out.append(self.ids[m.group()])
            pos = stop
        if pos < len(text):
            out.append(text[pos:])
        return out


def compile_pre_tokenizer(spec: dict | None) -> list[_Split]:
    """Pre-split stages for a `tokenizer.json` pre_tokenizer spec (the subset llmlab supports)."""
    if spec is None:
        return []
    kind = spec.get("type")
    if kind == "Sequence":
        return [s for sub in spec["pretokenizers"] for s in compile_pre_tokenizer(sub)]
    if kind == "ByteLevel":
        if spec.get("use_regex", True):
            return [_Split.of(PATTERNS["gpt2"], prefix_space=spec.get("add_prefix_space", False))]
        if spec.get("add_prefix_space", False):
            return [_Split.of(r"[\s\S]+", prefix_space=True)]
        return []
    if kind == "Split":
        if spec.get("behavior") != "Isolated" or spec.get("invert"):
            raise TokenizerError(f"Split pre-tokenizer with behavior {spec.get('behavior')!r} is not "
                                 "supported; llmlab reads only behavior 'Isolated' without invert.")
        pat = spec["pattern"]
        if "Regex" in pat:
            check_portable(pat["Regex"])
        return [_Split.of(pat["Regex"] if "Regex" in pat else regex.escape(pat["String"]))]
    if kind == "Digits":
        return [_Split.of(r"\p{N}" if spec.get("individual_digits") else r"\p{N}+")]
    if kind == "BertPreTokenizer":
        return [_Split(BERT_SPLIT, keep_gaps=False)]
    if kind == "Whitespace":
        return [_Split.of(r"\w+|[^\w\s]+", keep_gaps=False)]
    if kind == "WhitespaceSplit":
        return [_Split.of(r"\S+", keep_gaps=False)]
    if kind == "Metaspace":
        scheme = spec.get("prepend_scheme")
        if scheme is None:  # tokenizers before 0.14: a bool
            scheme = "always" if spec.get("add_prefix_space", True) else "never"
        if scheme not in ("always", "first", "never"):
            raise TokenizerError(f"Metaspace prepend_scheme {scheme!r} is not one of always, first, never.")
        return [_Metaspace(spec.get("replacement", SPACE), scheme, bool(spec.get("split", True)))]
    raise TokenizerError(f"pre-tokenizer type {kind!r} is not supported; supported: ByteLevel, Split, Digits, "
                         "BertPreTokenizer, Whitespace, WhitespaceSplit, Metaspace and Sequence of them.")


def compile_normalizer(spec: dict | None) -> Callable[[str], str] | None:
    """A function for a `tokenizer.json` normalizer spec, or None for no normalization."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda s: unicodedata.normalize(kind, s)
    if kind == "Lowercase":
        return str.lower
    if kind == "BertNormalizer":
        return BertNormalizer(spec.get("clean_text", True), spec.get("handle_chinese_chars", True),
                              spec.get("strip_accents"), spec.get("lowercase", True))
    if kind == "Prepend":
        pre = spec["prepend"]
        return lambda s: pre + s if s else s
    if kind == "Replace":
        pat, content = spec["pattern"], spec["content"]
        if "Regex" in pat:
            rx = regex.compile(pat["Regex"])
            return lambda s: rx.sub(lambda m: content, s)
        old = pat["String"]
        return lambda s: s.replace(old, content)
    if kind == "Strip":
        left, right = spec.get("strip_left", True), spec.get("strip_right", True)
        return lambda s: _strip(s, left, right)
    if kind == "Sequence":
        fns = [f for f in map(compile_normalizer, spec["normalizers"]) if f is not None]
        return lambda s: _apply_all(fns, s)
    raise TokenizerError(f"normalizer type {kind!r} is not supported; supported: NFC, NFD, NFKC, NFKD, Lowercase, "
                         "BertNormalizer, Prepend, Replace, Strip and Sequence of them.")


def _strip(s: str, left: bool, right: bool) -> str:
    """tokenizers' Strip: Unicode White_Space (Rust's char::is_whitespace), not str.isspace()."""
    if left:
        s = s.lstrip(_WS)
    return s.rstrip(_WS) if right else s


def _decoder_lstrip(spec: dict | None) -> list[tuple[str, int]]:
    """How a tokenizer.json decoder removes the dummy space: ("metaspace", 1) for a Metaspace decoder that prepends
    (every "▁" of the first token goes), ("strip", n) for Strip(" ", start=n) (up to n leading spaces of the text)."""
    if not spec:
        return []
    kind = spec.get("type")
    if kind == "Sequence":
        return [step for sub in spec.get("decoders", []) for step in _decoder_lstrip(sub)]
    if kind == "Strip" and spec.get("content") == " " and spec.get("start", 0) > 0:
        return [("strip", int(spec["start"]))]
    if kind == "Metaspace":
        scheme = spec.get("prepend_scheme") or ("always" if spec.get("add_prefix_space", True) else "never")
        return [("metaspace", 1)] if scheme != "never" else []
    return []


def _apply_all(fns: list[Callable[[str], str]], s: str) -> str:
    for f in fns:
        s = f(s)
    return s


def _need_str(text, caller: str) -> str:
    if not isinstance(text, str):
        raise TokenizerError(f"{caller}() takes a str, got {type(text).__name__}; decode bytes first.")
    return text


def _well_formed(text: str) -> str:
    """`text` as UTF-8 can hold it: a lone surrogate (a str may hold one) becomes U+FFFD, a pair split in two
    surrogates becomes its character."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _plain_splits(stages: list) -> bool:
    """Whether every stage is a pattern split that keeps the text between matches and adds nothing."""
    return all(isinstance(st, _Split) and not st.prefix_space and st.keep_gaps for st in stages)


class _WordCache(dict):
    """piece -> ids; a miss computes through `fn` (dict.__missing__ keeps hits in C)."""

    def __init__(self, fn: Callable[[str], tuple[int, ...]]):
        super().__init__()
        self.fn = fn

    def __missing__(self, piece: str) -> tuple[int, ...]:
        if len(piece) > _CACHED_LEN:  # a whole text no pre-split cut (a SentencePiece model without one): not kept
            return self.fn(piece)
        ids = self[piece] = self.fn(piece)
        return ids


class Tokenizer:
    """A byte-level BPE, SentencePiece-style BPE or WordPiece tokenizer; build one with `load_tokenizer` or a
    trainer."""

    def __init__(self, model: BPEModel | PieceBPEModel | WordPieceModel, *, normalizer: dict | None = None,
                 pre_tokenizer: dict | None = None, special_tokens: dict[str, int] | None = None,
                 added_tokens: dict[str, int] | None = None, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None,
                 template: tuple[list[str], list[str]] = ([], []), chat_template: str | None = None,
                 token_options: dict[str, dict[str, bool]] | None = None, decoder: dict | None = None):
        self.model = model
        self.decoder = decoder  # tokenizer.json's decoder spec, kept for SentencePiece-style models (save writes it)
        self.normalizer, self.pre_tokenizer = normalizer, pre_tokenizer
        self.special_tokens = dict(special_tokens or {})
        self.added_tokens = dict(added_tokens or {})  # non-special: always recognised
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.template = template  # (prefix, suffix) tokens added by add_special_tokens=True
        self.chat_template = chat_template
        # tokenizers' AddedToken flags (TOKEN_OPTIONS) of special/added tokens; a token not listed has none set
        self.token_options = {t: o for t, o in (token_options or {}).items() if any(o.values())}
        # byte_level: every token is an exact byte span of the text (token_bytes streams it), as in byte-level BPE
        # and SentencePiece-style BPE with byte fallback
        self.byte_level = isinstance(model, (BPEModel, PieceBPEModel))
        self._gpt2_alphabet = isinstance(model, BPEModel)  # tokenizer.json spells its tokens in GPT-2's byte alphabet
        for name, opt in self.token_options.items():
            if name not in self.special_tokens and name not in self.added_tokens or set(opt) - set(TOKEN_OPTIONS):
                raise TokenizerError(f"token options {opt} for {name!r}: options apply to special and added tokens "
                                     f"only, and are {', '.join(TOKEN_OPTIONS)}.")
        for name in (bos_token, eos_token, pad_token, *template[0], *template[1]):
            if name is not None and self.token_to_id(name) is None:
                raise TokenizerError(f"special token {name!r} is not in the vocabulary; add it to "
                                     "special_tokens or fix the tokenizer's configuration.")
        self._normalize = compile_normalizer(normalizer)
        self._stages = compile_pre_tokenizer(pre_tokenizer)
        self._lstrip = _decoder_lstrip(decoder) if isinstance(model, PieceBPEModel) else []
        if isinstance(model, PieceBPEModel):
            self._cache = _WordCache(model.encode_word)
            if model.can_split_words():  # no merge crosses into a "▁": cut there, so words repeat and cache
                rep = re.escape(model.replacement)
                self._stages.append(_Split.of(f"{rep}*[^{rep}]+|{rep}+"))
        elif self.byte_level:
            self._cache = _WordCache(lambda p: model.encode_piece(p.encode("utf-8")))
        else:
            self._cache = _WordCache(model.encode_word)
        plain = _plain_splits(self._stages)
        coarse = coarse_split(self._stages[0].pattern.pattern) if plain and len(self._stages) == 1 else None
        # text in C, start to end (cencode.py), for byte-level BPE with a pre-split it knows and SentencePiece's words
        # (after a Metaspace that does not split: transformers' tokenizer.json for a tokenizer.model)
        meta = self._stages[0] if self._stages and isinstance(self._stages[0], _Metaspace) else None
        rest = self._stages[1:] if meta is not None else self._stages
        if _plain_splits(rest):
            self._fast = CEncoder.of(model, tuple(st.pattern.pattern for st in rest), meta)
        else:
            self._fast = None
        self._coarse, self._chunks = coarse, None  # two-level cache: coarse chunk -> pre-split pieces -> ids
        if coarse is not None:  # (splitting a text's missing chunks in one call instead: no faster, measured)
            fine, pieces = self._stages[0].findall, self._cache
            self._chunks = _WordCache(lambda c: tuple(chain.from_iterable(map(pieces.__getitem__, fine(c)))))
        self._build_id_tables()
        self._splits: dict[frozenset[str], tuple[_AddedSplit | None, _AddedSplit | None]] = {}
        self._pool: tuple[int, int, ThreadPoolExecutor] | None = None  # encode_batch's: (threads, process, pool)
        self._pool_lock = threading.Lock()

    def _build_id_tables(self) -> None:
        extra = self._extra_ids = {**self.added_tokens, **self.special_tokens}
        self._extra_text = {i: t for t, i in extra.items()}
        piece = self.model.piece_bytes if isinstance(self.model, PieceBPEModel) else lambda t: t
        table = {i: piece(t) for t, i in self.model.vocab.items()}
        table.update({i: s.encode("utf-8") if self.byte_level else s for s, i in extra.items()})
        n = max(table, default=-1) + 1
        self._id_to_token: list = [table.get(i, b"" if self.byte_level else "") for i in range(n)]
        self._special_ids = frozenset(self.special_tokens.values())

    # ---- properties -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids (max id + 1), special tokens included; ids never used count too."""
        return len(self._id_to_token)

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        return None if self.pad_token is None else self.token_to_id(self.pad_token)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token written as in tokenizer.json (byte-level tokens in GPT-2's alphabet)."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        if token in self.added_tokens:
            return self.added_tokens[token]
        if self._gpt2_alphabet:
            try:
                return self.model.vocab.get(unicode_to_bytes(token))
            except KeyError:  # a character outside the alphabet: no such token
                return None
        return self.model.vocab.get(token)

    def id_to_token(self, i: int) -> str:
        """The token string of id `i` as tokenizer.json writes it."""
        i = self._check_id(i, "id_to_token")
        t = self._id_to_token[i]
        ordinary = i not in self._special_ids and i not in self.added_tokens.values()
        if ordinary and isinstance(self.model, PieceBPEModel):
            return self.model.piece(i)
        if ordinary and self._gpt2_alphabet:
            return bytes_to_alphabet(t)
        return t if isinstance(t, str) else t.decode("utf-8", "replace")

    # ---- encode -----------------------------------------------------------------------------
    def encode(self, text: str, *, allowed_special: Literal["all", "none"] | Collection[str] = "none",
               add_special_tokens: bool = False) -> list[int]:
        """Ids of `text`. Special tokens in the text are recognised only if allowed
        (`"all"`, or a set of token strings); `add_special_tokens` applies the tokenizer's
        template (e.g. BERT's [CLS] ... [SEP])."""
        _need_str(text, "encode")
        raw, normalized = self._added_splits(allowed_special)
        if raw is None and normalized is None:
            ids = self.encode_ordinary(text)
        else:  # as tokenizers: raw-text tokens out first, then normalize the rest and take out normalized ones
            text, ids = _well_formed(text), []
            for k, part in enumerate(raw(text) if raw else [text]):
                if isinstance(part, int):
                    ids.append(part)
                    continue
                if self._normalize is not None:
                    part = self._normalize(part)
                for j, sub in enumerate(normalized(part) if normalized else [part]):
                    if isinstance(sub, int):
                        ids.append(sub)
                    else:  # first: this text starts the input (Metaspace's prepend_scheme "first")
                        ids += self._encode_normalized(sub, first=k == 0 and j == 0)
        if add_special_tokens and (self.template[0] or self.template[1]):
            ids = [self.token_to_id(t) for t in self.template[0]] + ids + \
                  [self.token_to_id(t) for t in self.template[1]]
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` with no special-token handling at all (the hot path)."""
        return self._encode_normalized(self._ordinary_text(text, "encode_ordinary"))

    def _ordinary_text(self, text: str, caller: str) -> str:
        """`text` checked, well-formed and normalized, as the ordinary encode takes it."""
        text = _well_formed(_need_str(text, caller))
        return self._normalize(text) if self._normalize is not None else text

    def encode_to_numpy(self, text: str, *, allowed_special: Literal["all", "none"] | Collection[str] = "none",
                        dtype="uint32"):
        """encode(text, allowed_special=...) as a NumPy array of `dtype` (tiktoken's encode_to_numpy): where C
        encodes the text, its ids go into the array with no Python int made for each (`data prepare` writes its
        shards this way)."""
        import numpy as np

        _need_str(text, "encode_to_numpy")
        dtype = np.dtype(dtype)
        if dtype.kind not in "iu" or np.iinfo(dtype).max < self.vocab_size - 1:
            raise TokenizerError(f"encode_to_numpy() dtype {dtype} cannot hold ids up to {self.vocab_size - 1}; use "
                                 "uint32 (the default).")
        raw, normalized = self._added_splits(allowed_special)
        if raw is not None or normalized is not None:
            return np.asarray(self.encode(text, allowed_special=allowed_special), dtype=dtype)
        text = self._ordinary_text(text, "encode_to_numpy")
        if self._fast is not None and (ids := self._fast.array(text)) is not None:
            return np.frombuffer(ids, dtype=np.int32).astype(dtype)
        return np.asarray(self._encode_python(text), dtype=dtype)

    def _encode_normalized(self, text: str, first: bool = True) -> list[int]:
        if self._fast is not None and (ids := self._fast(text, first)) is not None:
            return ids
        return self._encode_python(text, first)

    def _encode_python(self, text: str, first: bool = True) -> list[int]:
        if self._chunks is not None:
            chunks = self._chunks
            if len(chunks) > _CACHE_LIMIT:
                chunks.clear()
            return list(chain.from_iterable(map(chunks.__getitem__, self._coarse.findall(text))))
        stages = self._stages
        if len(stages) == 1:
            pieces = stages[0](text, first)
        elif not stages:
            pieces = [text] if text else []
        else:
            pieces = [text]
            for st in stages:
                pieces = [q for n, p in enumerate(pieces) for q in st(p, first and n == 0)]
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        return list(chain.from_iterable(map(cache.__getitem__, pieces)))

    def encode_batch(self, texts: Iterable[str], *, num_threads: int = 1, **kw) -> list[list[int]]:
        """encode(text, **kw) of each text, in order, on `num_threads` threads (default 1). Where the C encoder runs
        (cencode.py) it releases the GIL, each thread with a cache of its own (the threads stay for the next batch,
        their caches warm). On a 2-core VM two threads measured 0.8-1.4x one thread cold and 0.6-1.1x warm
        (benchmarks/tokenizer.py section 6): each thread merges the pieces its own cache has not seen, and lists
        are made under the GIL; hence one thread unless asked (tiktoken's encode_batch defaults to 8)."""
        return self._batch(self.encode, texts, num_threads, kw)

    def encode_ordinary_batch(self, texts: Iterable[str], *, num_threads: int = 1) -> list[list[int]]:
        """encode_ordinary of each text, in order, on threads as encode_batch."""
        return self._batch(self.encode_ordinary, texts, num_threads, {})

    def _batch(self, fn: Callable[..., list[int]], texts: Iterable[str], num_threads: int,
               kw: dict) -> list[list[int]]:
        if isinstance(texts, str):
            raise TokenizerError(f"{fn.__name__}_batch() takes a list of str, got one str; pass [text], or call "
                                 f"{fn.__name__}().")
        texts = list(texts)
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise TokenizerError(f"num_threads must be a whole number >= 1, got {num_threads!r}.")
        if num_threads == 1 or len(texts) < 2:
            return [fn(t, **kw) for t in texts]
        with self._pool_lock:  # (a process forked from this one has none of these threads: it starts its own)
            if self._pool is None or self._pool[:2] != (num_threads, os.getpid()):
                if self._pool is not None and self._pool[1] == os.getpid():
                    self._pool[2].shutdown(wait=False)
                pool = ThreadPoolExecutor(num_threads, thread_name_prefix="llmlab-encode")
                self._pool = (num_threads, os.getpid(), pool)
            pool = self._pool[2]
        return list(pool.map(functools.partial(fn, **kw), texts))

    def _added_splits(self, allowed: Literal["all", "none"] | Collection[str]
                      ) -> tuple[_AddedSplit | None, _AddedSplit | None]:
        """The (raw-text, normalized-text) splitters for the added tokens and the allowed special tokens."""
        if isinstance(allowed, str) and allowed not in ("all", "none"):
            allowed = {allowed}  # one token's name, not a collection of its characters
        if allowed == "all":
            names = frozenset(self.special_tokens)
        elif allowed == "none":
            names = frozenset()
        else:
            names = frozenset(allowed)
            unknown = names - set(self.special_tokens)
            if unknown:
                raise TokenizerError(f"allowed_special names {sorted(unknown)} that are not special tokens "
                                     f"of this tokenizer; known: {sorted(self.special_tokens)}.")
        names |= frozenset(self.added_tokens)
        if names not in self._splits:
            norm = {t for t in names if self.token_options.get(t, {}).get("normalized")}
            self._splits[names] = (self._added_split(names - norm, str),
                                   self._added_split(norm, self._normalize or str))
        return self._splits[names]

    def _added_split(self, names: Collection[str], form: Callable[[str], str]) -> _AddedSplit | None:
        """A splitter matching `form(token)` (normalized tokens are matched in their normalized form)."""
        ids = {form(t): self._extra_ids[t] for t in names if form(t)}
        if not ids:
            return None
        alt = "|".join(re.escape(t) for t in sorted(ids, key=len, reverse=True))  # longest first, as tokenizers
        return _AddedSplit(re.compile(alt), ids, {form(t): o for t, o in self.token_options.items() if t in names})

    # ---- decode -----------------------------------------------------------------------------
    def token_bytes(self, i: int) -> bytes:
        """The exact bytes of token `i` (byte-level BPE): concatenating them streams text safely."""
        if not self.byte_level:
            raise TokenizerError("token_bytes() needs a byte-level BPE tokenizer; WordPiece tokens are "
                                 "not byte spans of the text, use decode() instead.")
        return self._id_to_token[self._check_id(i, "token_bytes")]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        if not self.byte_level:
            return self.decode(ids).encode("utf-8")
        return self._join(self._ids(ids))

    def _join(self, ids: list[int]) -> bytes:
        """The bytes of checked ids (byte-level BPE)."""
        return b"".join(map(self._id_to_token.__getitem__, ids))

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (ints: a list, numpy array or tensor); invalid UTF-8 (e.g. a cut multi-byte character)
        becomes U+FFFD."""
        ids = self._ids(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        if isinstance(self.model, PieceBPEModel):
            return self._decode_pieces(ids)
        if self.byte_level:
            return self._join(ids).decode("utf-8", "replace")
        return self.model.decode([self._id_to_token[i] for i in ids])

    def _decode_pieces(self, ids: list[int]) -> str:
        """SentencePiece-style text: pieces with "▁" as spaces, runs of byte pieces decoded together, the dummy space
        removed as SentencePiece does (a .model or GGUF) or as the tokenizer.json's decoder chain says."""
        m, extra, spm = self.model, self._extra_text, self.model.spm_decode
        parts: list[str] = []
        run = bytearray()
        at_start = True  # SentencePiece: the leading "▁" of the text is still to be removed
        for n, i in enumerate(ids):
            b = None if i in extra else m.byte_value(i)
            if b is not None:
                run.append(b)
                at_start = False
                continue
            if run:
                parts.append(m.decode_bytes(bytes(run)))
                run.clear()
            if i in extra:  # special and added tokens: their text, after which a piece's "▁" is a space, as
                parts.append(extra[i])  # transformers and llama.cpp print "<s> Hello" (sentencepiece hides "<s>")
                at_start = at_start and not extra[i]
                continue
            text = m.piece_text(i)
            if spm is not None:
                if at_start and (spm[0] or spm[1]) and text.startswith(" "):
                    text = text[1:]
                at_start = at_start and spm[1] and not text  # remove_extra_whitespaces: until a piece keeps text
            elif n == 0 and any(kind == "metaspace" for kind, _ in self._lstrip):
                text = m.piece(i).replace(m.replacement, "")  # tokenizers' Metaspace decoder: no "▁" in token 0
            parts.append(text)
        if run:
            parts.append(m.decode_bytes(bytes(run)))
        text = "".join(parts)
        if spm is None:
            for kind, k in self._lstrip:  # tokenizers' Strip(" ", start=k) after Fuse: up to k leading spaces
                if kind == "strip":
                    text = text[min(k, len(text) - len(text.lstrip(" "))):]
        return text

    def _ids(self, ids: Iterable[int]) -> list[int]:
        """`ids` as a list of checked Python ints; numpy and torch integers count, a bool or float does not."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # numpy array, tensor: their ints, in C
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TokenizerError(f"decode() takes a sequence of int ids, got {type(ids).__name__} {ids!r:.40}; "
                                 "pass a list, numpy array or tensor of ids.")
        ids = ids if isinstance(ids, list) else list(ids)
        if set(map(type, ids)) <= {int} and (not ids or min(ids) >= 0 and max(ids) < len(self._id_to_token)):
            return ids  # the usual case, checked in C
        return [self._check_id(i) for i in ids]  # numpy / torch scalars become ints; a bad id is named

    def _check_id(self, i: int, caller: str = "decode") -> int:
        try:
            j = None if isinstance(i, bool) else operator.index(i)
        except TypeError:
            j = None
        if j is None:
            raise TokenizerError(f"{caller}() got {i!r} of type {type(i).__name__}, not an integer id; pass ints "
                                 "(a list, numpy array or tensor of integers).")
        if not 0 <= j < len(self._id_to_token):
            raise TokenizerError(f"{caller}() got an id outside 0..{self.vocab_size - 1}: {j}; ids must come from "
                                 "this tokenizer.")
        return j

    # ---- files and chat ---------------------------------------------------------------------
    def save(self, path) -> None:
        """Write `tokenizer.json` (a `.json` path) or a directory with tokenizer.json and
        tokenizer_config.json (special tokens, chat template) that transformers also reads."""
        from llmlab.tokenizer.io import save_tokenizer
        save_tokenizer(self, path)

    def render_chat(self, messages: list[dict], template: str | None = None, *,
                    add_generation_prompt: bool = False, **kwargs) -> tuple[list[int], list[int]]:
        """(ids, assistant_mask) of a conversation; see `llmlab.tokenizer.chat.render_chat`."""
        from llmlab.tokenizer.chat import render_chat
        return render_chat(self, messages, template, add_generation_prompt=add_generation_prompt, **kwargs)

    def apply_chat_template(self, conversation: list[dict], tools: list[dict] | None = None,
                            chat_template: str | None = None, add_generation_prompt: bool = False,
                            continue_final_message: bool = False, tokenize: bool = True, return_dict: bool = False,
                            return_tensors: str | None = None, **kwargs):
        """transformers' call for a prompt: the rendered conversation as ids (`tokenize`; a list, or with
        return_dict {"input_ids", "attention_mask"}, as tensors of one row with return_tensors="pt") or as text;
        other keywords reach the template (e.g. enable_thinking=False). See `llmlab.tokenizer.chat.chat_text`; the
        assistant mask for training is render_chat's."""
        from llmlab.tokenizer.chat import chat_text

        unsupported = sorted(set(kwargs) & {"padding", "truncation", "max_length", "tokenizer_kwargs",
                                             "return_assistant_tokens_mask"})
        if unsupported:
            raise TokenizerError(f"apply_chat_template() does not take {', '.join(unsupported)} here; render one "
                                 "conversation at a time (render_chat gives the assistant mask).")
        if "template" in kwargs:
            raise TokenizerError("apply_chat_template() takes the template as chat_template=..., as transformers does; "
                                 "template= is render_chat's and chat_text's name for it.")
        if return_tensors not in (None, "pt"):
            raise TokenizerError(f"return_tensors={return_tensors!r}: only 'pt' (torch) or None (lists) is supported.")
        variables = {**kwargs, **({"tools": tools} if tools is not None else {})}
        text = chat_text(self, conversation, chat_template, add_generation_prompt=add_generation_prompt,
                         continue_final_message=continue_final_message, **variables)
        if not tokenize:
            return text
        ids = self.encode(text, allowed_special="all")
        if return_tensors == "pt":
            import torch

            ids = torch.tensor([ids])
        if return_dict:
            mask = [1] * len(ids) if return_tensors is None else torch.ones_like(ids)
            return {"input_ids": ids, "attention_mask": mask}
        return ids

    # transformers' names for the special token ids
    bos_token_id = bos_id
    eos_token_id = eos_id
    pad_token_id = pad_id

    def __reduce__(self):
        """Pickled as its arguments (rebuild.py): the caches and compiled patterns are built again on load."""
        return rebuild, (type(self), dict(
            model=self.model, normalizer=self.normalizer, pre_tokenizer=self.pre_tokenizer,
            special_tokens=self.special_tokens, added_tokens=self.added_tokens, bos_token=self.bos_token,
            eos_token=self.eos_token, pad_token=self.pad_token, template=self.template,
            chat_template=self.chat_template, token_options=self.token_options, decoder=self.decoder))

    def __repr__(self) -> str:
        kind = "SentencePiece BPE" if isinstance(self.model, PieceBPEModel) else \
            "BPE" if self.byte_level else "WordPiece"
        return f"Tokenizer({kind}, vocab_size={self.vocab_size}, special={list(self.special_tokens)[:4]})"
