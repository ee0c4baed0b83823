"""Fuzz parity: llmlab's encode/decode against tiktoken and `tokenizers` on generated text.

The interop tests compare a fixed list of cases; here hypothesis builds text from fragments that
stress the pre-split regexes and byte-level BPE (whitespace runs of every kind, digit runs,
contractions in mixed case, combining marks, CJK, emoji with ZWJ and skin tones, punctuation runs,
lone surrogates, special-token strings glued to text, very long words) mixed with arbitrary
unicode, for each real tokenizer: GPT-2 and cl100k ranks vs tiktoken, SmolLM2's GGUF vocabulary vs
a `tokenizers` rebuild, MiniLM's WordPiece (tokenizer.json and vocab.txt) vs `tokenizers`.

Runs are deterministic (derandomize=True); LLMLAB_FUZZ_EXAMPLES=N runs N random examples per test
for a deeper local search. Lone surrogates are replaced by U+FFFD before encoding (tiktoken's
behaviour, documented in llmlab/tokenizer/tokenizer.py); `tokenizers` cannot take them at all, so
its reference gets the replaced text. Characters that the libraries classify by different Unicode
versions are left out of the generated text (see `regex_version_skew`, `unicode_version_skew`):
with them in, the comparison tests the Unicode tables, not the tokenizers.
"""

from __future__ import annotations

import functools
import json
import os

import pytest
import tokenizers
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_tokenizer_interop import TIKTOKEN_PATTERNS, smollm2_reference
from tokenizers import pre_tokenizers

from llmlab import artifacts, load_tokenizer

pytestmark = pytest.mark.artifact

N = int(os.environ.get("LLMLAB_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=N, deadline=None, derandomize="LLMLAB_FUZZ_EXAMPLES" not in os.environ, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---- text generation --------------------------------------------------------------------------
WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", "\r\n\r\n", " \n", "\n ",
              "\u00a0", "\u3000", "\u2009", "\u200a", "\x0b", "\x0c", "\x85", "\u2028", "\u2029",
              "\u1680", "\u202f", "\u205f", "\u200b", "\ufeff", " \t ", "\t \n",
              "\x1c", "\x1d", "\x1e", "\x1f", "\u180e", "\u2060"]  # str.isspace() but not \s; not either
DIGITS = ["0", "7", "12", "123", "1234", "12345", "1234567", "3.14", "1,000", "٣٤٥", "²³", "½", "Ⅻ",
          "①", "１２３", "𝟙𝟚", "0x1F"]
CONTRACTIONS = ["'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'vE", "'m", "'M", "'ll",
                "'LL", "'Ll", "'d", "'D", "’s", "'", "''", "don't", "DON'T", "it's", "I'M", "we'Ll"]
LETTERS = ["a", "Z", "hello", "Hello", "HELLO", "hElLo", " the", " The", "café", "cafe\u0301",
           "n\u0303", "e\u0301\u0302\u0323", "\u0301", "Ωμέγα", "ΣΑΣ", "straße", "ﬁ", "İstanbul",
           "Привет", "مرحبا", "שלום", "नमस्ते", "ไทย", "ǅ", "ʰ", "ᾼ"]
CJK = ["中文", "日本語", "漢字かな", "한국어", "ｶﾀｶﾅ", "𠀀", "〜", "。", "、", "㐀"]
EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "🇺🇸", "❤\ufe0f", "🧑🏿\u200d💻",
         "\u200d", "\ufe0f", "🏽", "©", "™", "🔥🔥🔥"]
PUNCT = [".", "...", "!", "!!", "?!", ",", ";", ":", "(", ")", "()", "{}", "[]", "<>", "--", "->", "=>",
         "==", "\"", "`", "```", "#", "##", "@", "_", "__init__", "$", "%", "&", "*", "/", "\\", "|",
         "~", "^", "+", "-", ".\n", "!\n\n", "«»", "—", "…", "¿", "•", "<|", "|>", "<", "|"]
SURROGATES = ["\ud800", "\udfff", "\udc00x", "\ud83d\ude00", "\ud83d"]
SPECIALS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>",
            "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>", "[CLS]", "[SEP]", "[MASK]", "[PAD]",
            "[UNK]", "<|endoftext", "endoftext|>", "<|<|endoftext|>|>"]

long_word = st.builds(lambda s, n: s * n, st.sampled_from(["a", "ab", "é", "中", "😀", "1", " ", "\n", "x1", ".", "\u0301"]),
                      st.integers(1, 400))
fragment = st.one_of(
    st.sampled_from(WHITESPACE), st.sampled_from(DIGITS), st.sampled_from(CONTRACTIONS),
    st.sampled_from(LETTERS), st.sampled_from(CJK), st.sampled_from(EMOJI), st.sampled_from(PUNCT),
    st.sampled_from(SPECIALS), st.sampled_from(SURROGATES), long_word,
    st.text(max_size=6),  # any code point, surrogates included
    st.text(st.characters(codec="utf-8"), max_size=3),
)
texts = st.one_of(st.lists(fragment, max_size=12).map("".join), st.text())


def fix_surrogates(text: str) -> str:
    """What encode() does to a str holding lone surrogates (tiktoken's rule)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@functools.cache
def regex_version_skew() -> frozenset[str]:
    """Code points the pre-split classes (\\p{L}, \\p{N}, \\p{Lu}, ..., \\s) hold in Python's `regex`
    (Unicode 17 here) but not in Rust's regex under tiktoken (Unicode 16; `tokenizers`' Oniguruma
    agrees with it): 17,560 code points, nearly all assigned in Unicode 17 (CJK extension J,
    U+0558 ARMENIAN MODIFIER LETTER ...). On o200k, "\u0558'S" is one piece to llmlab, two to
    tiktoken. A version difference, not a tokenizer bug; the fuzz leaves these characters out."""
    import regex
    import tiktoken
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    ranks = {bytes([b]): b for b in range(256)}
    skew: set[str] = set()
    for cls in (r"\p{L}", r"\p{N}", r"\s", r"\p{Lu}", r"\p{Ll}", r"\p{Lt}", r"\p{Lm}", r"\p{Lo}", r"\p{M}"):
        probe = tiktoken.Encoding("probe", pat_str=cls, mergeable_ranks=ranks, special_tokens={})
        skew |= set(probe.decode(probe.encode_ordinary(every))) ^ set(regex.findall(cls, every))
    return frozenset(skew)


def without_regex_skew(text: str) -> str:
    skew = regex_version_skew()
    return "".join(c for c in text if c not in skew)


# Strings found by fuzzing that once differed (kept as explicit examples).
REGRESSIONS = [
    "\x1f's",  # gpt2: U+001F cut as whitespace by the coarse pre-split (stdlib re's \s), "'s" merged
    " \u00a0\x1fa",  # gpt2: the same, " \u00a0" became one piece
]


def examples(extra=()):
    def deco(f):
        for s in [*REGRESSIONS, *extra]:
            f = example(s)(f)
        return f
    return deco


# ---- tokenizers under test and their references -----------------------------------------------
# o200k (not in the interop tests): tiktoken_ext/openai_public.py's pattern, which has no `$`.
PATTERNS = {**TIKTOKEN_PATTERNS, "o200k": "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+""",
])}
TIKTOKEN_NAMES = ["gpt2", "cl100k", "o200k"]


@functools.cache
def tiktoken_pair(name: str):
    import tiktoken
    tok = load_tokenizer(artifacts.fetch(f"{name}-tiktoken"), pattern=name)
    enc = tiktoken.Encoding(name, pat_str=PATTERNS[name], mergeable_ranks=tok.model.vocab,
                            special_tokens=tok.special_tokens)
    return tok, enc


@functools.cache
def smollm2_pair():
    return load_tokenizer(artifacts.fetch("smollm2-135m")), smollm2_reference(True), smollm2_reference(False)


@functools.cache
def minilm_refs():
    path = artifacts.fetch("minilm-tokenizer")
    spec = json.loads(path.read_text(encoding="utf-8"))
    spec["padding"] = spec["truncation"] = None  # its tokenizer.json pads to 128; llmlab never pads
    ref = tokenizers.Tokenizer.from_str(json.dumps(spec))
    spec["added_tokens"] = []  # the same pipeline with "[CLS]" etc. as plain text
    plain = tokenizers.Tokenizer.from_str(json.dumps(spec))
    return ref, plain


@functools.cache
def minilm(source: str):
    return load_tokenizer(artifacts.fetch(f"minilm-{source}"))


# ---- tiktoken: gpt2, cl100k -------------------------------------------------------------------
@pytest.mark.parametrize("name", TIKTOKEN_NAMES)
@FUZZ
@given(text=texts)
@examples()
def test_tiktoken_parity(name, text):
    tok, enc = tiktoken_pair(name)
    text = without_regex_skew(text)
    want = enc.encode(text, allowed_special="all")
    got = tok.encode(text, allowed_special="all")
    assert got == want
    # default: special-token text is ordinary text (tiktoken would raise; encode_ordinary-like)
    assert tok.encode(text) == enc.encode(text, disallowed_special=())
    # a subset of specials allowed
    allowed = {"<|endoftext|>"}
    assert tok.encode(text, allowed_special=allowed) == enc.encode(text, allowed_special=allowed,
                                                                 disallowed_special=())
    assert tok.decode(got) == enc.decode(want) == fix_surrogates(text)


@pytest.mark.parametrize("name", TIKTOKEN_NAMES)
@FUZZ
@given(data=st.data())
def test_tiktoken_decode_parity(name, data):
    """Any id sequence (cut characters, special tokens included) decodes as tiktoken decodes it."""
    tok, enc = tiktoken_pair(name)
    ids = data.draw(st.lists(st.one_of(st.integers(0, len(tok.model.vocab) - 1),
                                       st.sampled_from(sorted(tok.special_tokens.values()))), max_size=12))
    assert tok.decode_bytes(ids) == enc.decode_bytes(ids)
    assert tok.decode(ids) == enc.decode(ids)


# ---- tokenizers: smollm2 (GGUF) ---------------------------------------------------------------
@FUZZ
@given(text=texts)
@examples()
def test_smollm2_parity(text):
    ours, ref, plain = smollm2_pair()
    text = without_regex_skew(text)
    clean = fix_surrogates(text)
    want = ref.encode(clean).ids
    assert ours.encode(text, allowed_special="all") == want
    assert ours.encode(text) == plain.encode(clean).ids
    back = ref.decode(want, skip_special_tokens=False)
    assert ours.decode(want) == back
    # SmolLM2's vocabulary has no token for 21 bytes (0x04, 0xf1, ...: U+40000..U+BFFFF and some
    # controls); both drop them, so only text free of those round-trips, in both libraries.
    assert (back == clean) == all(ours.model._byte_id[b] is not None for b in clean.encode("utf-8"))
    assert ours.decode(want, skip_special_tokens=True) == ref.decode(want, skip_special_tokens=True)


@FUZZ
@given(ids=st.lists(st.integers(0, 49151), max_size=12))
def test_smollm2_decode_parity(ids):
    ours, ref, _ = smollm2_pair()
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)


# ---- tokenizers: MiniLM WordPiece -------------------------------------------------------------
_BERT_STEPS = [dict(clean_text=True), dict(handle_chinese_chars=True), dict(strip_accents=True), dict(lowercase=True)]


@functools.cache
def unicode_version_skew(c: str) -> bool:
    """Does the reference classify `c` differently from llmlab in one BERT step, because the two
    read different Unicode versions? tokenizers takes control (Cf), nonspacing-mark (Mn) and
    punctuation (P*) classes and NFD from crates frozen at an old Unicode (~9-11), whitespace and
    lowercase from Rust's std (current); llmlab takes classes from `regex` (current) and NFD and
    lowercase from the interpreter's unicodedata (14.0 on Python 3.11). 693 code points differ in
    this environment, e.g. U+061D ARABIC END OF TEXT MARK (Po since Unicode 14: llmlab isolates
    it, tokenizers does not), U+07FD NKO DANTAYALAN (Mn: llmlab strips it), U+1C89 CYRILLIC
    CAPITAL TJE (Unicode 16: tokenizers lowercases it, Python 3.11 does not)."""
    from tokenizers import normalizers

    from llmlab.tokenizer.wordpiece import BERT_SPLIT, BertNormalizer
    s = f"a{c}a"
    off = dict(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    for step in _BERT_STEPS:
        kw = {**off, **step}
        if normalizers.BertNormalizer(**kw).normalize_str(s) != BertNormalizer(**kw)(s):
            return True
    return [p for p, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(s)] != BERT_SPLIT.findall(s)


@pytest.mark.parametrize("source", ["tokenizer", "vocab"])
@FUZZ
@given(text=texts)
@examples()
def test_minilm_parity(source, text):
    ours = minilm(source)
    ref, plain = minilm_refs()
    # characters the two libraries classify by different Unicode versions are left out
    text = "".join(c for c in text if c.isascii() or "\ud800" <= c <= "\udfff" or not unicode_version_skew(c))
    clean = fix_surrogates(text)
    want = ref.encode(clean).ids
    assert ours.encode(text, allowed_special="all", add_special_tokens=True) == want
    assert ours.encode(text, allowed_special="all") == ref.encode(clean, add_special_tokens=False).ids
    assert ours.encode(text, add_special_tokens=True) == plain.encode(clean).ids
    assert ours.decode(want) == ref.decode(want, skip_special_tokens=False)
    assert ours.decode(want, skip_special_tokens=True) == ref.decode(want)


@FUZZ
@given(ids=st.lists(st.integers(0, 30521), max_size=12))
def test_minilm_decode_parity(ids):
    """Any id sequence ('##' pieces first, [UNK], specials, punctuation cleanup) decodes alike."""
    ours = minilm("tokenizer")
    ref, _ = minilm_refs()
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
