"""The C encoder (kernels/cpu_bpe.c via tokenizer/cencode.py): its pre-split is the `regex` module's for every
pre-split it knows, on ASCII and on text from every Unicode category, and its ids are the Python encode's (and tiktoken's) in ranks mode, in merges mode with
and without ignore_merges and with bytes missing from the vocabulary, for SmolLM2's two stages, on text in any script,
with a small cache and from several threads; SentencePiece-style BPE's ids are Python's and sentencepiece's; without
a compiler Python encodes alone."""

from __future__ import annotations

import functools
import os
import threading
import time

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tokenizer_cmerge import stdlib_text

from llmlab import artifacts, load_tokenizer
from llmlab.kernels import cbuild
from llmlab.tokenizer import PATTERNS, BPEModel, Tokenizer, cencode, train_bpe
from llmlab.tokenizer.tokenizer import _Split

needs_cc = pytest.mark.skipif(cbuild.compiler() is None, reason="no C compiler: Python encodes alone")

ASCII = st.text(alphabet=st.sampled_from(list("aAbzZsdmtlvrSDMTLVRE019 \t\n\r\x0b\x0c\x1c\x1f\x00\x7f'.,;!?(){}_-/\\#")),
                max_size=60)

@functools.cache
def category_samples() -> list[str]:
    """Up to 40 characters of each general category the patterns tell apart, and of White_Space: uppercase,
    lowercase, titlecase, modifier and other letters, marks, each kind of number, punctuation, symbols, controls,
    private use, unassigned, astral letters and digits."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    out = []
    for p in (r"\p{Lu}", r"\p{Ll}", r"\p{Lt}", r"\p{Lm}", r"\p{Lo}", r"\p{Mn}", r"\p{Mc}", r"\p{Me}", r"\p{Nd}",
              r"\p{Nl}", r"\p{No}", r"\s", r"\p{P}", r"\p{S}", r"\p{Cc}", r"\p{Cf}", r"\p{Co}", r"\p{Cn}",
              r"[\U00010000-\U0010FFFF&&\p{L}]", r"[\U00010000-\U0010FFFF&&\p{N}]"):
        found = regex.findall(r"(?V1)" + p, every)
        out += found[:: max(1, len(found) // 40)]
    return out


# Text from every category, with the ASCII that the alternatives turn on (contractions, "ſ" which (?i) folds to s,
# line breaks, o200k's "/")
UNICODE = st.text(alphabet=st.one_of(st.sampled_from(list("aAsStTlLdD09 \t\n\r'./ſ")),
                                     st.sampled_from(category_samples())), max_size=40)
MIXED = ["x = 1;\n// é note\n", "He said “don’t” — fine…\n  ‘quoted’ ©2024 «x»", "“Hello\u0301” x\u0301", "é.\n/x",
         "Grüße, мир!  🙂🙃 \n\n  done", "中文 text 123 ٣ and\u3000more\xa0words", "tab\t\u2028line\n   é  ",
         "a" * 300 + "é" + " b" * 200, "no accents at all, but after others", "le café était très bon à Paris. " * 30,
         "Привет, мир! Как дела? " * 30, "北京是中华人民共和国的首都，也是全国的政治、文化中心。" * 10,
         "नमस्ते दुनिया, यह एक परीक्षण है। ", "مرحبا بالعالم ١٢٣٤", "ὈΔΥΣΣΕΎΣ ǅemal ʰa IT'ſ ΆΛΦΑ", "emoji 👩‍👩‍👧 ok 🇫🇷!"]


def stages_split(patterns: tuple[str, ...], text: str) -> list[str]:
    """The pre-split as the Python tokenizer runs it: each stage over the pieces of the one before."""
    pieces = [text]
    for p in patterns:
        stage = _Split(regex.compile(p))
        pieces = [q for piece in pieces for q in stage(piece)]
    return pieces


@needs_cc
@settings(max_examples=300, deadline=None)
@given(ASCII)
def test_c_split_is_the_regex_split(text):
    for patterns in cencode.KINDS:
        assert cencode.split(patterns, text) == stages_split(patterns, text), patterns


@needs_cc
@settings(max_examples=500, deadline=None)
@given(UNICODE)
def test_c_split_of_unicode_text_is_the_regex_split(text):
    for patterns in cencode.KINDS:
        assert cencode.split(patterns, text) == stages_split(patterns, text), patterns


def test_character_classes_are_the_patterns_classes():
    """Each class bit holds exactly the code points of the class it stands for in the patterns (as `regex` reads
    them): a category given two bits, or White_Space overlapping a letter, would show here."""
    every = "".join(map(chr, range(0x110000)))
    table = cencode.classes()
    for bit, cls in ((cencode.C_LETTER, r"\p{L}"), (cencode.C_UPPER, r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"),
                     (cencode.C_LOWER, r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"), (cencode.C_DIGIT, r"\p{N}"), (cencode.C_SPACE, r"\s"),
                     (cencode.C_NEWLINE, r"[\r\n]")):
        members = {m.start() for m in regex.finditer(cls, every)}
        assert members == {c for c in range(0x110000) if table[c] & bit}, cls


# Where the alternatives differ: a whitespace run with line breaks at the end of a text (cl100k's \\s++\\z), a run
# before a word (\\s+(?!\\S)), o200k's [\\r\\n/]*, cased runs and contractions, digit groups, \\x1c (not \\s)
EDGE = ["a\n  ", "x  \n\t", "a \n b", "  x", " \n\n y", "\t\tx", ".\n/x", ".\n\n//y", "!!\r\n", "HTTPServer's",
        "'S 'LL 're 've 'd 'm 't 'x", "it's", "ABCdef", "abcDEF", "A", "12345678", " 123", "x1y22", "\x1c \x1fa",
        " !", "  !", "a\x0b\x0cb", "", " ", "\n", "'", "x'", "\x7f\x00z", "“Hello”", "don’t", " —x", "a…\n\n b",
        "«x» ©2024 €5", "\u0301abc", " ’s", "—\nx", "“\n/”", "\u0301AB", "\u0301\u0301AB", "x\u0301AB", "ʰA", "Aʰ", "AʰB",
        "AʰBc", "ǅemal", "ΣΑΣ'ſ", "it'ſ", "IT'ſ", "'ſ", "中文字", "\u3000\u3000x", "x\u2028\u2028y", "\u3000", "a\xa0\n b",
        "٣٤٥٦٧", "²³¼", "Ⅻ1", "𝐀𝐚𝐀", "👍🏽!\n/", "é́", "\x85x", "\u0301\n"]


@needs_cc
def test_c_split_of_edge_cases():
    for patterns in cencode.KINDS:
        for text in EDGE:
            assert cencode.split(patterns, text) == stages_split(patterns, text), (patterns, text)


@needs_cc
def test_c_split_of_source_text():
    texts = stdlib_text(300_000)
    for patterns in cencode.KINDS:
        assert [cencode.split(patterns, t) for t in texts + MIXED] == \
            [stages_split(patterns, t) for t in texts + MIXED], patterns


def fast_and_slow(monkeypatch, load, texts: list[str]) -> list[list[int]]:
    """Encode with C from the first text and with Python alone: the same ids, and C really ran."""
    monkeypatch.setattr(cencode, "WARMUP", 0)
    fast = load()
    ids = [fast.encode(t) for t in texts]
    assert fast._fast._enc is not None, "the C encoder was not built"
    slow = load()
    slow._fast = None
    assert ids == [slow.encode(t) for t in texts]
    assert ids == [fast.encode(t) for t in texts]  # again, from the C cache
    return ids


@needs_cc
@pytest.mark.parametrize("name", ["gpt2", "cl100k", "o200k"])
def test_ranks_mode_is_tiktoken(monkeypatch, name):
    tiktoken = pytest.importorskip("tiktoken")
    path = artifacts.fetch(f"{name}-tiktoken")
    texts = stdlib_text(200_000) + MIXED
    ids = fast_and_slow(monkeypatch, lambda: load_tokenizer(path, pattern=name), texts)
    vocab = load_tokenizer(path, pattern=name).model.vocab
    enc = tiktoken.Encoding(name, pat_str=PATTERNS[name], mergeable_ranks=vocab, special_tokens={})
    assert ids == [enc.encode_ordinary(t) for t in texts]


@needs_cc
@pytest.mark.parametrize("name", ["gpt2", "cl100k", "o200k", "llama3", "qwen2"])
@pytest.mark.parametrize("ignore_merges", [False, True])
def test_merges_mode(monkeypatch, tmp_path, name, ignore_merges):
    texts = stdlib_text(60_000)
    train_bpe(texts, 700, pattern=name, progress=False).save(tmp_path / "tok")

    def load():
        tok = load_tokenizer(tmp_path / "tok")
        tok.model.ignore_merges = ignore_merges
        return tok

    fast_and_slow(monkeypatch, load, stdlib_text(150_000) + MIXED)


@needs_cc
def test_smollm2_digits_then_gpt2(monkeypatch):
    path = artifacts.fetch("smollm2-135m")
    fast_and_slow(monkeypatch, lambda: load_tokenizer(path), stdlib_text(150_000) + MIXED + ["x12345 6 7.5e-3 0x1F"])


@needs_cc
def test_bytes_missing_from_the_vocabulary_are_dropped(monkeypatch):
    """Merges mode without an unknown token drops a byte it has no id for, in C as in Python (and tokenizers)."""
    vocab = {bytes([b]): i for i, b in enumerate(b"abcdehlorw ")}
    vocab.update({b"he": len(vocab), b"ll": len(vocab) + 1, b"hell": len(vocab) + 2, b" w": len(vocab) + 3})
    merges = [(b"h", b"e"), (b"l", b"l"), (b"he", b"ll"), (b" ", b"w")]
    spec = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    ids = fast_and_slow(monkeypatch, lambda: Tokenizer(BPEModel(vocab, merges), pre_tokenizer=spec),
                        ["hello, world! 42", "hell\n\nhello", "?!"])
    assert ids[2] == []


@needs_cc
@pytest.mark.parametrize("ignore_merges", [False, True])
def test_ignore_merges_takes_a_whole_token_the_merges_miss(monkeypatch, ignore_merges):
    """Merges make "abc" into a + bc; with ignore_merges (Llama 3's tokenizer.json) the piece is its own token."""
    vocab = {bytes([b]): i for i, b in enumerate(b"abc ")}
    vocab.update({b"bc": 4, b"ab": 5, b"abc": 6})
    merges = [(b"b", b"c"), (b"a", b"b")]
    spec = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    ids = fast_and_slow(monkeypatch, lambda: Tokenizer(BPEModel(vocab, merges, ignore_merges=ignore_merges),
                                                        pre_tokenizer=spec), ["abc abcab"])
    assert ids == ([[6, 3, 0, 4, 5]] if ignore_merges else [[0, 4, 3, 0, 4, 5]])


TEXT = st.text(alphabet=st.sampled_from(list("aAsStT019 \t\n\n\r\x0b'.,;!/’“—…ſ") + [
    "é", "É", "中", "ʰ", "\xa0", "\u2028", "\u0663", "\x85", "\u3000", "\U0001F600", "\u0301", "\u00b2"]), max_size=50)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[Tokenizer, Tokenizer]]:
    """name -> (C from the first text, Python only), for a tokenizer of each pre-split C knows."""
    out = {}
    for name in ("gpt2", "cl100k", "o200k", "llama3", "qwen2", "smollm2"):
        if name == "smollm2":
            load = functools.partial(load_tokenizer, artifacts.fetch("smollm2-135m"))
        elif name in ("llama3", "qwen2"):
            path = tmp_path_factory.mktemp(name) / "tok"
            train_bpe(stdlib_text(30_000), 500, pattern=name, progress=False).save(path)
            load = functools.partial(load_tokenizer, path)
        else:
            load = functools.partial(load_tokenizer, artifacts.fetch(f"{name}-tiktoken"), pattern=name)
        fast, slow = load(), load()
        fast._fast._work, slow._fast = cencode.WARMUP, None
        out[name] = fast, slow
    return out


@needs_cc
@settings(max_examples=200, deadline=None)
@given(text=TEXT)
def test_random_mixed_text_encodes_alike(pairs, text):
    for name, (fast, slow) in pairs.items():
        assert fast._fast(text) == slow.encode(text), name


@needs_cc
def test_a_full_cache_starts_again(monkeypatch):
    tok = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
    slow = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
    slow._fast = None
    enc = cencode._Encoder(cencode._functions(), 0, tok.model, limit=50)
    texts = stdlib_text(50_000)
    for t in texts + MIXED + texts:
        assert enc(t).tolist() == enc.ids(t) == slow.encode(t)
        assert cencode._functions().bpe_encoder_size(enc.handle) < 50


@needs_cc
def test_threads_encode_alike_each_with_a_cache_of_its_own(monkeypatch):
    """The C call releases the GIL (ctypes.CDLL), so each thread has its own encoder (cache) over shared tables: the
    ids are Python's, every thread's handle differs, one set of tables was built, and a finished thread's encoder is
    freed."""
    import ctypes
    import gc
    import weakref

    monkeypatch.setattr(cencode, "WARMUP", 0)
    assert type(cencode._functions()) is ctypes.CDLL  # (PyDLL would hold the GIL through each call)
    tok = load_tokenizer(artifacts.fetch("cl100k-tiktoken"), pattern="cl100k")
    texts = stdlib_text(100_000)
    slow = load_tokenizer(artifacts.fetch("cl100k-tiktoken"), pattern="cl100k")
    slow._fast = None
    expected = [slow.encode(t) for t in texts]
    results: dict[int, list] = {}
    encoders, handles = set(), {}

    def work(k: int) -> None:
        order = texts[k:] + texts[:k]  # each thread starts elsewhere, so misses meet
        results[k] = [tok.encode(t) for t in order]
        encoders.add(id(tok._fast._enc))
        handles[k] = (tok._fast._enc.handle, weakref.ref(tok._fast._enc._local.mine))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k, got in results.items():
        assert got == expected[k:] + expected[:k]
    assert len(encoders) == 1 and len({h for h, _ in handles.values()}) == 4
    gc.collect()
    assert all(mine() is None for _, mine in handles.values()), "a finished thread's C encoder was not freed"


def test_c_starts_after_the_warm_up():
    """Loading a tokenizer and encoding a prompt never build the C tables; a corpus does."""
    tok = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
    tok.encode("a short prompt")
    assert tok._fast._enc is None
    tok.encode("x " * cencode.WARMUP)
    assert tok._fast._enc is not None or cbuild.compiler() is None


@needs_cc
def test_a_lone_surrogate_is_a_replacement_character(monkeypatch):
    """A str that is not UTF-8 (a lone surrogate) encodes as U+FFFD through encode and encode_ordinary alike."""
    monkeypatch.setattr(cencode, "WARMUP", 0)
    tok = load_tokenizer(artifacts.fetch("cl100k-tiktoken"), pattern="cl100k")
    want = tok._encode_python("a\ufffdb")
    assert tok.encode("a\ud800b") == tok.encode_ordinary("a\ud800b") == tok._fast("a\ufffdb") == want
    assert tok.encode("\ud83d\ude00") == tok.encode("\U0001F600")  # a pair split in two surrogates


def test_without_a_compiler_python_encodes(monkeypatch):
    monkeypatch.setattr(cencode, "WARMUP", 0)
    monkeypatch.setattr(cencode, "_functions", lambda: None)
    tok = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
    assert tok.encode("hello world") == [31373, 995]
    assert tok._fast._off and tok._fast._enc is None


def test_only_known_pre_splits_get_c():
    path = artifacts.fetch("gpt2-tiktoken")
    assert load_tokenizer(path, pattern="gpt2")._fast is not None
    assert load_tokenizer(path, pattern=r"\w+|\s+|[^\w\s]+")._fast is None
    assert load_tokenizer(artifacts.fetch("mistral-7b-tokenizer"))._fast is not None  # SentencePiece-style BPE
    assert load_tokenizer(artifacts.fetch("minilm-tokenizer"))._fast is None  # WordPiece


# ---- SentencePiece-style BPE (Llama 2, Mistral): "▁" words, characters merged, byte fallback ------------------------

SPM_TEXT = st.text(alphabet=st.sampled_from(list("▁ab ▁▁x\n中") + ["\U0001F600", "é"]), max_size=30)


@needs_cc
@settings(max_examples=300, deadline=None)
@given(SPM_TEXT)
def test_c_split_of_sentencepiece_words_is_the_regex_split(text):
    assert cencode.split((cencode.SPM_WORDS,), text) == regex.findall(cencode.SPM_WORDS, text)


@needs_cc
@pytest.mark.parametrize("name", ["mistral-7b-tokenizer", "mistral-7b-v3-tokenizer"])
def test_sentencepiece_bpe_is_sentencepiece(monkeypatch, name):
    """Mistral's tokenizer.model (v3: 20 user-defined pieces, whose texts Python encodes) in C, as in Python and
    sentencepiece: words of every script, byte fallback (emoji, rare CJK), runs of spaces."""
    path = artifacts.fetch(name)
    texts = stdlib_text(100_000) + MIXED + ["[INST] hi [/INST] x", "a  b   c    d", "▁▁x", " ", "\n\n", "𠀋 🙂"]
    ids = fast_and_slow(monkeypatch, lambda: load_tokenizer(path), texts)
    sentencepiece = pytest.importorskip("sentencepiece")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert ids == [sp.encode(t) for t in texts]


def test_sentencepiece_bpe_gets_c_only_where_its_merge_is_plain():
    """C takes byte fallback and plain merges; a model without byte pieces (unknown characters fuse into <unk>),
    with SentencePiece's unused pieces, or with ignore_merges stays in Python, as does text holding a user-defined
    piece."""
    from test_tokenizer_spm_model import CHARS, MERGED, tiny_model, tiny_vocab

    from llmlab.tokenizer.spm import PieceBPEModel
    from llmlab.tokenizer.spm_file import normalizer_spec

    def fast(model):
        return Tokenizer(model, normalizer=normalizer_spec(True, False))._fast

    m = tiny_model()
    assert fast(m) is not None
    no_bytes = {p: i for p, i in m.vocab.items() if not p.startswith("<0x")}
    assert fast(PieceBPEModel(no_bytes, scores=m.scores)) is None
    vocab = tiny_vocab(MERGED + ["[REF]"])
    scores = {p: -float(i) for p, i in vocab.items() if p in CHARS or p in MERGED}
    assert fast(PieceBPEModel(vocab, scores=scores, unused=frozenset({"ab"}))) is None
    assert fast(PieceBPEModel(vocab, merges=m.derive_merges(), ignore_merges=True)) is None
    user = fast(PieceBPEModel(vocab, scores=scores, user_defined=frozenset({"[REF]"})))
    user._work = cencode.WARMUP
    assert user("▁see▁[REF]") is None and user("▁see▁REF") is not None


@needs_cc
def test_sentencepiece_bpe_after_metaspace(monkeypatch):
    """transformers' tokenizer.json for a tokenizer.model has no normalizer and a Metaspace pre-tokenizer that does
    not split (prepend_scheme "first"): C takes the text as Metaspace leaves it, "▁" prepended only at the start of
    the input (not after a special token); a Metaspace that splits before every "▁" stays in Python."""
    from test_tokenizer_spm_model import tiny_model

    monkeypatch.setattr(cencode, "WARMUP", 0)

    def load(split):
        spec = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": split}
        return Tokenizer(tiny_model(), pre_tokenizer=spec, special_tokens={"</s>": tiny_model().vocab["</s>"]})

    assert load(True)._fast is None
    texts = ["ab cde", " ab", "a  b   c", "", " ", "abc</s>abc</s> ab"]
    fast, slow = load(False), load(False)
    slow._fast = None
    for text in texts:
        assert fast.encode(text, allowed_special="all") == slow.encode(text, allowed_special="all"), text
    assert fast._fast._enc is not None
    assert fast._fast("ab", first=False) == slow._encode_python("ab", first=False) != fast._fast("ab")


@pytest.mark.parametrize("name, pattern", [("gpt2-tiktoken", "gpt2"), ("smollm2-135m", None),
                                           ("mistral-7b-tokenizer", None), ("minilm-tokenizer", None)])
def test_encode_batch_on_threads_is_encode_in_order(monkeypatch, name, pattern):
    """encode_batch / encode_ordinary_batch on any number of threads: each text's encode(), in order, with its
    keywords; C (byte-level and SentencePiece-style BPE) and Python (WordPiece) alike. The pool stays for the next
    batch (warm caches) unless the thread count changes. Bad arguments are one clear error."""
    from llmlab.errors import TokenizerError

    monkeypatch.setattr(cencode, "WARMUP", 0)
    load = lambda: load_tokenizer(artifacts.fetch(name), **({"pattern": pattern} if pattern else {}))  # noqa: E731
    tok, ref = load(), load()
    texts = stdlib_text(60_000) + MIXED + ["", "<|endoftext|> and <s> [CLS] inside"]
    special = "all"
    expected = [ref.encode(t, allowed_special=special) for t in texts]
    for threads in (1, 2, 3, 3):
        assert tok.encode_batch(texts, num_threads=threads, allowed_special=special) == expected, threads
        assert tok.encode_ordinary_batch(iter(texts), num_threads=threads) == [ref.encode_ordinary(t) for t in texts]
        if threads > 1:
            assert tok._pool[0] == threads
    pool = tok._pool[2]
    tok.encode_batch(texts[:4], num_threads=3)
    assert tok._pool[2] is pool  # the same threads, their caches warm
    assert tok.encode_batch(texts) == [ref.encode(t) for t in texts]  # the default: one thread
    assert tok._pool[2] is pool  # (the pool is left as it was)
    assert tok.encode_batch([]) == []
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(TokenizerError, match="num_threads must be a whole number >= 1"):
            tok.encode_batch(texts, num_threads=bad)
    with pytest.raises(TokenizerError, match="one str"):
        tok.encode_batch("a text")
    with pytest.raises(TokenizerError, match="not special tokens"):
        tok.encode_batch(texts, num_threads=2, allowed_special={"<nope>"})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_encode_batch_in_a_forked_process_starts_threads_of_its_own():
    """A fork copies the tokenizer but not its pool's threads: encode_batch there would wait forever on the copy."""
    tok = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
    texts = ["hello world", "a b c", "x"]
    expected = tok.encode_batch(texts, num_threads=2)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the batch comes back right
        ok = False
        try:
            ok = tok.encode_batch(texts, num_threads=2) == expected
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("encode_batch in the forked process hung on its parent's pool")


@pytest.mark.parametrize("name, pattern", [("o200k-tiktoken", "o200k"), ("smollm2-135m", None),
                                           ("mistral-7b-v3-tokenizer", None), ("minilm-tokenizer", None)])
def test_encode_to_numpy_is_encode(monkeypatch, name, pattern):
    """encode_to_numpy: encode()'s ids in an array of the dtype asked for, through C (the ids never a list) and
    Python alike, before and after the warm-up, with special tokens allowed or not."""
    import numpy as np

    from llmlab.errors import TokenizerError

    monkeypatch.setattr(cencode, "WARMUP", 1000)
    tok = load_tokenizer(artifacts.fetch(name), **({"pattern": pattern} if pattern else {}))
    texts = MIXED + stdlib_text(20_000) + ["", "x\ud800y", "<|endoftext|> <s> [INST] [CLS] <|im_start|>"]
    for t in texts:
        for special in ("none", "all"):
            want = tok.encode(t, allowed_special=special)
            for dtype in ("uint32", np.int64) + ((np.dtype(np.uint16),) if tok.vocab_size <= 1 << 16 else ()):
                got = tok.encode_to_numpy(t, allowed_special=special, dtype=dtype)
                assert got.dtype == np.dtype(dtype) and got.tolist() == want
    assert tok._fast is None or tok._fast._enc is not None  # C ran where it can
    with pytest.raises(TokenizerError, match="takes a str"):
        tok.encode_to_numpy(b"bytes")
    for small in ("int8", np.float32) + (("uint16",) if tok.vocab_size > 1 << 16 else ()):
        with pytest.raises(TokenizerError, match=f"dtype {np.dtype(small)} cannot hold ids up to"):
            tok.encode_to_numpy("hello", dtype=small)


@needs_cc
def test_lists_made_in_c_hold_the_same_ints_and_count_their_references():
    """cpu_pylist.c's ids_to_list: the list array.tolist makes, from shared int objects, each one reference more
    while the list lives; an id outside the table is an IndexError, not a read past it."""
    import random
    import sys
    from array import array

    make = cencode._list_maker()
    if make is None:
        pytest.skip(cbuild.load("cpu_pylist.c").error)
    ints = list(range(300, 1300))  # (past the small ints Python shares anyway)
    rng = random.Random(0)
    ids = array("i", [rng.randrange(1000) for _ in range(5000)] + [999, 0])
    before, times = sys.getrefcount(ints[999]), ids.tolist().count(999)
    got = make(ints, ids.buffer_info()[0], len(ids))
    same = all(a is ints[i] for a, i in zip(got, ids, strict=True))  # (outside the assert: pytest keeps its parts)
    assert same and len(got) == len(ids) and times >= 2
    during = sys.getrefcount(ints[999])  # (not inside an assert: pytest's rewrite holds ints[999] once more there)
    del got
    after = sys.getrefcount(ints[999])
    assert during == before + times and after == before
    assert make(ints, ids.buffer_info()[0], 0) == []
    for bad in (-1, 1000):
        out = array("i", [1, bad])
        with pytest.raises(IndexError, match=f"token id {bad} is outside the table of 1000 ids"):
            make(ints, out.buffer_info()[0], 2)
    with pytest.raises(TypeError, match="list of ints"):
        make(tuple(ints), ids.buffer_info()[0], 1)


def test_without_python_headers_lists_come_from_tolist(monkeypatch, tmp_path):
    """A Python without its C headers: cpu_pylist.c is not built (no compiler run, no line at every engine start),
    and the C encoder's ids still come back as lists."""
    import sysconfig

    real = sysconfig.get_paths
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {**real(*a, **k), "include": str(tmp_path)})
    monkeypatch.setattr(cencode, "WARMUP", 0)
    cbuild.load.cache_clear()
    cencode._list_maker.cache_clear()
    try:
        assert "cpu_pylist.c" not in cbuild.sources()
        lib = cbuild.load("cpu_pylist.c")
        assert lib.lib is None and "no C headers" in lib.error and "Python.h is missing" in lib.error
        tok = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
        assert tok.encode("hello world, hello") == [31373, 995, 11, 23748]
        assert tok._fast._enc is None or tok._fast._enc._to_list is None
    finally:
        cbuild.load.cache_clear()
        cencode._list_maker.cache_clear()
