"""Byte-level BPE: the trainer against a naive reference, encode/decode properties, special tokens."""

from __future__ import annotations

import sysconfig
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.errors import TokenizerError
from llmlab.tokenizer import PATTERNS, train_bpe

MIXED = (Path(__file__).parent / "data" / "tokenizer_mixed.txt").read_text(encoding="utf-8")
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def small_corpus() -> list[str]:
    files = ["textwrap.py", "fnmatch.py", "colorsys.py", "bisect.py", "shlex.py", "glob.py"]
    return [(STDLIB / f).read_text(encoding="utf-8") for f in files] + [MIXED] * 2


@pytest.fixture(scope="module")
def tok():
    return train_bpe(small_corpus(), 800)


def naive_bpe_merges(texts: list[str], n_merges: int, pattern: str, specials: list[str]) -> list[tuple[bytes, bytes]]:
    """Textbook BPE: recount every pair of every word before each merge (slow, obviously right)."""
    words: Counter = Counter()
    cut = regex.compile("|".join(map(regex.escape, specials)))
    for t in texts:
        for seg in cut.split(t):
            words.update(regex.findall(PATTERNS[pattern], seg))
    seqs = {tuple(bytes([b]) for b in w.encode()): f for w, f in words.items()}
    tid = {bytes([i]): i for i in range(256)}
    merges = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for s, f in seqs.items():
            for p in zip(s, s[1:]):
                pairs[p] += f
        if not pairs:
            break
        # most frequent; ties: the smallest pair of ids (llmlab's documented rule)
        best = min(pairs, key=lambda p: (-pairs[p], tid[p[0]], tid[p[1]]))
        if pairs[best] < 2:
            break
        merges.append(best)
        tid[best[0] + best[1]] = len(tid)
        new = {}
        for s, f in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + f
        seqs = new
    return merges


def test_incremental_trainer_equals_naive_recount():
    texts = [MIXED, (STDLIB / "colorsys.py").read_text(encoding="utf-8")]
    tok = train_bpe(texts, 256 + 3 + 150)
    assert tok.model.merges == naive_bpe_merges(texts, 150, "gpt2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


def test_training_is_deterministic_and_sized(tok):
    again = train_bpe(small_corpus(), 800)
    assert again.model.merges == tok.model.merges
    assert tok.vocab_size == 800
    assert tok.special_tokens == {"<|endoftext|>": 797, "<|im_start|>": 798, "<|im_end|>": 799}


def test_min_frequency_stops_early():
    tok = train_bpe(["aaaa bbbb aaaa"], 10_000, special_tokens=[], min_frequency=2)
    # 'aa' (x4), 'aaaa'(x2) and ' b'... only pairs seen at least twice are merged
    assert all(len(a + b) <= 4 for a, b in tok.model.merges)
    assert tok.vocab_size < 300


def test_gpt4_pattern_and_custom_regex_train():
    for pattern in ("gpt4", r"\S+|\s+"):
        tok = train_bpe(small_corpus(), 400, pattern=pattern)
        assert tok.decode(tok.encode(MIXED)) == MIXED


def test_round_trip_mixed(tok):
    assert tok.decode(tok.encode(MIXED)) == MIXED
    assert tok.decode_bytes(tok.encode(MIXED)) == MIXED.encode()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_any_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=50))  # includes lone surrogates
def test_lone_surrogates_become_replacement_char(tok, s):
    expected = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert tok.decode(tok.encode(s)) == expected


def test_streaming_bytes_reassemble_characters(tok):
    text = "日本語 😀 café"
    ids = tok.encode(text)
    streamed = b"".join(tok.token_bytes(i) for i in ids)
    assert streamed.decode("utf-8") == text
    assert any(len(tok.token_bytes(i).decode("utf-8", "replace")) != len(tok.token_bytes(i).decode("utf-8", "ignore"))
               for i in tok.encode("😀"))  # an emoji is split into partial-UTF-8 tokens


def test_special_tokens_only_where_allowed(tok):
    text = "a<|endoftext|>b<|im_end|>"
    eot, end = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|im_end|>"]
    plain = tok.encode(text)
    assert eot not in plain and end not in plain and tok.decode(plain) == text
    both = tok.encode(text, allowed_special="all")
    assert both.count(eot) == 1 and both.count(end) == 1 and tok.decode(both) == text
    one = tok.encode(text, allowed_special={"<|im_end|>"})
    assert eot not in one and one.count(end) == 1
    assert tok.encode("<|endoftext|>", allowed_special="all") == [eot]  # never split
    with pytest.raises(TokenizerError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})


def test_word_cache_paths_agree(tok):
    """The coarse-chunk cache (GPT-2 pattern) gives the same ids as splitting piece by piece."""
    from llmlab.tokenizer.tokenizer import _GPT2_COARSE
    assert tok._chunks is not None
    split = regex.compile(PATTERNS["gpt2"]).findall
    # U+001C..U+001F: whitespace to stdlib `re` (str.isspace), not to the pattern's \s (found by fuzzing)
    for text in (MIXED, MIXED + "  \n\t x  ", " \n\n  a\u00a0b  c\r\n", "\x1f's", " \u00a0\x1fa", "x \x1c\x1d\x1e y"):
        direct = [i for p in split(text) for i in tok.model.encode_piece(p.encode())]
        assert tok.encode(text) == direct, repr(text)
        assert [p for c in _GPT2_COARSE.findall(text) for p in split(c)] == split(text), repr(text)


def test_coarse_split_whitespace_is_the_patterns_whitespace():
    from llmlab.tokenizer.tokenizer import _GPT2_COARSE
    every = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000)))
    ws = set(regex.findall(r"\s", every))
    assert {c for c in every if len(_GPT2_COARSE.findall(f"x{c}x")) > 1} == ws  # chunks break at \s only


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k", "o200k"])
def test_long_text_is_counted_in_chunks_without_cutting_pieces(monkeypatch, pattern):
    """Text past _CHUNK characters is pre-split in parts cut at _SAFE_CUT; o200k's ".\n/" is one
    piece, so a cut between "\n" and "/" miscounted it."""
    from collections import Counter

    from llmlab.tokenizer import train
    from llmlab.tokenizer.io import compile_pattern
    monkeypatch.setattr(train, "_CHUNK", 16)
    text = "ab.\n/cd x\ny\n\nz " * 20
    split = compile_pattern(pattern).findall
    assert train.count_words([text], split) == Counter(split(text))


def test_decode_rejects_foreign_ids(tok):
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode([tok.vocab_size + 5])
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # half a character decodes to U+FFFD, no crash


def test_vocab_size_too_small():
    with pytest.raises(TokenizerError, match="at least 259"):
        train_bpe(["abc"], 100)


def test_decode_of_a_negative_id_is_an_error_not_the_last_token():
    tok = train_bpe(["low lower lowest newer wider " * 20], 300)
    assert tok.decode([tok.vocab_size - 1])  # the last id decodes
    for ids in ([5, -1], [-tok.vocab_size]):  # a list index took -1 as the last token ('<|im_end|>')
        with pytest.raises(TokenizerError, match=f"outside 0..{tok.vocab_size - 1}"):
            tok.decode(ids)
        with pytest.raises(TokenizerError, match=f"outside 0..{tok.vocab_size - 1}"):
            tok.decode_bytes(iter(ids))


def test_the_byte_alphabet_both_ways_and_what_is_outside_it(tmp_path):
    """unicode_to_bytes / bytes_to_alphabet / alphabet_strings (str.translate tables) agree with the alphabet's own dicts on every byte and
    on random tokens; a character outside the alphabet is a KeyError naming it, and a tokenizer.json with one is a
    clear TokenizerError."""
    import json
    import random

    from llmlab.tokenizer import load_tokenizer
    from llmlab.tokenizer.bpe import BYTE_TO_CHAR, CHAR_TO_BYTE, alphabet_strings, bytes_to_alphabet, unicode_to_bytes

    rng = random.Random(0)
    tokens = [bytes([b]) for b in range(256)] + [rng.randbytes(rng.randint(0, 12)) for _ in range(3000)]
    for b in tokens:
        s = "".join(BYTE_TO_CHAR[x] for x in b)
        assert bytes_to_alphabet(b) == s and unicode_to_bytes(s) == b
    assert alphabet_strings(tokens) == {t: "".join(BYTE_TO_CHAR[x] for x in t) for t in tokens}
    outside = [chr(c) for c in [*range(0x145), 0x200, 0xFFFF, 0x10FFFF] if chr(c) not in CHAR_TO_BYTE]
    assert len(outside) == 68 + 4  # the 68 bytes the alphabet moves, U+0144 and three more
    for c in outside:
        with pytest.raises(KeyError, match="U\\+%04X" % ord(c)):
            unicode_to_bytes("Ġa" + c)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "a b": 2}, "merges": []},
                                "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"}}))
    with pytest.raises(TokenizerError, match=r"not byte-level \(' ' \(U\+0020\)"):
        load_tokenizer(path)
