"""ASCII twins of split patterns (stdlib `re` on ASCII text) and the line cutting of mixed text: the same pieces as
the `regex` module gives, for every pattern llmlab ships and for hand-written edge cases."""

from __future__ import annotations

import dataclasses
import functools

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.tokenizer.ascii_split import ascii_twin, line_safe, segments, split_mixed
from llmlab.tokenizer.bpe import PATTERNS
from llmlab.tokenizer.io import GGUF_PRE
from llmlab.tokenizer.tokenizer import compile_pre_tokenizer

ASCII = st.text(alphabet=st.sampled_from(list("aAbzZ09 \t\n\r\x0b\x0c\x1c\x1f\x00\x7f'sdmtlvrSDMTLVRE.,;!?(){}[]_-/\\~"
                                              "#")), max_size=40)
MIXED = st.text(alphabet=st.sampled_from(list("aAz09 \t\n\n\n\r's.,(\x0b//") + [
    "é", "中", "\xa0", "\u2028", "\u0663", "\x85", "\u2163", "\u3000", "\U0001F600", "\u0301", "\u00b2"]), max_size=40)

SHIPPED = {**PATTERNS,
           **{f"gguf {k}": stage["pattern"]["Regex"] for k, v in GGUF_PRE.items()
              for stage in v.get("pretokenizers", [v]) if stage.get("type") == "Split"},
           "Digits": r"\p{N}", "Digits run": r"\p{N}+", "Whitespace": r"\w+|[^\w\s]+", "WhitespaceSplit": r"\S+",
           "ByteLevel without regex": r"[\s\S]+"}
EDGE = [r"[\p{M}]+|x", r"[^\p{Lt}]", r"\P{L}+", r"\P{Lo}", r"[]a]+|[^]b]+", r"\p{Lu}\p{Ll}*", r"[\p{L}\p{N}_]+",
        r"(?i:ab)+", r"\pL+|\pN", r"a{2,}|b{,2}|c{3}", r"(?>a+)b|a", r"\s++\z|\s", r"\x41+|\x2e", r"(?=a)\w|.",
        r"[^\r\n\p{L}]?+\p{L}++", r"\p{N}{1,3}+", r"\p{Nd}|\p{No}|\p{Nl}|\p{LC}", r"(?i:\p{L}+|[\p{N}x]+)",
        r"(?i)'s|\p{L}"]


@settings(max_examples=150, deadline=None)
@given(ASCII)
def test_every_shipped_pattern_has_a_twin_that_splits_ascii_alike(text):
    for name, pattern in SHIPPED.items():
        twin = ascii_twin(pattern)
        assert twin is not None, name
        assert twin.findall(text) == regex.findall(pattern, text), name


@settings(max_examples=150, deadline=None)
@given(ASCII)
def test_edge_case_twins(text):
    for pattern in EDGE:
        twin = ascii_twin(pattern)
        assert twin is not None, pattern
        assert twin.findall(text) == regex.findall(pattern, text), pattern


def test_what_has_no_twin():
    for pattern in [r"\p{Han}+", r"\p{White_Space}", r"[[:alpha:]]+", r"(?P<w>a)(?P=w)", r"(?:ab){e<=1}", r"\X",
                    r"(?x) a # \p{L}", r"[\P{L}]", r"(a)\1", r"\p{^L}", r"[[a-z]--[aeiou]]", r"(?V1)a", r"a{1", "[a",
                    r"\m", r"\N{BULLET}", "a\\", r"(?i:[\p{Lt} ])", r"(?i)\p{Lu}", "(?i:\u017f)", r"a(?i)b", "a)"]:
        assert ascii_twin(pattern) is None, pattern


def cut_split(text: str, pattern: str) -> list[str]:
    """The pieces of `text` split part by part at every cut `segments` finds (however dense), the ASCII parts by
    the twin."""
    compiled, twin = regex.compile(pattern), ascii_twin(pattern)
    return [p for a, b, ascii in segments(text, pattern, most=len(text) + 1)
            for p in (twin if ascii else compiled).findall(text[a:b])]


@settings(max_examples=300, deadline=None)
@given(MIXED)
def test_cut_mixed_text_splits_alike(text):
    """Lines for the cl100k family, spaces after non-spaces for GPT-2: the parts split as the whole text does."""
    for name in ("cl100k", "o200k", "llama3", "qwen2", "gpt2"):
        pattern = PATTERNS[name]
        assert line_safe(pattern) == (name != "gpt2")
        compiled = regex.compile(pattern)
        cuts = segments(text, pattern, most=len(text) + 1)  # every cut, however dense
        assert [a for a, _, _ in cuts] == [0, *[b for _, b, _ in cuts]][:len(cuts)] and all(a < b for a, b, _ in cuts)
        assert not text or cuts[-1][1] == len(text)
        assert all(text[a:b].isascii() for a, b, ascii in cuts if ascii)
        assert cut_split(text, pattern) == compiled.findall(text), name


def test_gpt2_is_not_line_safe():
    """Its `\\s+(?!\\S)` takes a run's final line break at the end of a text, not before a word: no cutting at lines
    (its own cut, before a space after a non-space, holds)."""
    assert not line_safe(PATTERNS["gpt2"])
    gpt2 = regex.compile(PATTERNS["gpt2"])
    text = "x  \nyé"
    assert gpt2.findall("x  \n") + gpt2.findall("yé") != gpt2.findall(text)
    assert cut_split(text, PATTERNS["gpt2"]) == gpt2.findall(text)


def test_o200k_does_not_cut_before_a_slash_line():
    """o200k's punctuation takes [\\r\\n/]*: ".\\n/" is one piece, so a line starting with "/" is not a cut (it was,
    and "é;\\n// note" encoded differently from tiktoken)."""
    o200k = regex.compile(PATTERNS["o200k"])
    for text in ("é.\n/x", "é;\n// note", "é;\n  // note"):
        assert cut_split(text, PATTERNS["o200k"]) == o200k.findall(text)
    assert o200k.findall("é.\n/x") == ["é", ".\n/", "x"]


def test_text_dense_in_non_ascii_is_not_cut():
    """Past one part per 256 characters (French or Russian prose) the text goes to the regex whole: faster."""
    prose = "le café était très bon à Paris " * 40
    assert segments(prose, PATTERNS["gpt2"]) is None and segments(prose, PATTERNS["cl100k"]) is None
    lines = "x" * 2000 + " é\n" + "y é\n" * 200  # sparse at first, then past the allowance (a part per 256 characters)
    assert segments(lines, PATTERNS["cl100k"]) is None
    assert segments(lines[:2012], PATTERNS["cl100k"]) == [(0, 2003, False), (2003, 2007, False), (2007, 2011, False),
                                                         (2011, 2012, True)]
    assert segments("x" * 2000 + " é", PATTERNS["gpt2"]) == [(0, 2000, True), (2000, 2002, False)]
    gpt2 = regex.compile(PATTERNS["gpt2"])
    assert split_mixed(prose, PATTERNS["gpt2"], gpt2.findall, ascii_twin(PATTERNS["gpt2"]).findall) == \
        gpt2.findall(prose)


def test_a_pattern_without_cuts_has_no_segments():
    assert segments("é x", r"\p{L}+|\s") is None


@settings(max_examples=100, deadline=None)
@given(MIXED)
def test_pre_tokenizer_stages_use_the_twins_and_split_alike(text):
    """Whole stages (twin on ASCII text, line cutting, gaps kept) against the same stage with `regex` alone."""
    for spec in ({"type": "Split", "pattern": {"Regex": PATTERNS["llama3"]}, "behavior": "Isolated", "invert": False},
                 {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True},
                 {"type": "Digits", "individual_digits": True}, {"type": "Whitespace"}):
        (stage,) = compile_pre_tokenizer(spec)
        assert ascii_twin(stage.pattern.pattern) is not None
        plain = dataclasses.replace(stage, findall=None)
        for t in (text, text.encode("ascii", "ignore").decode()):
            assert stage(t) == plain(t), spec


@settings(max_examples=300, deadline=None)
@given(MIXED)
def test_space_chunks_cut_no_piece_of_the_cl100k_family(text):
    """tokenizer._SPACE_COARSE (cut before a space that follows a non-space): chunk by chunk, the pieces of the text."""
    from llmlab.tokenizer.tokenizer import _SPACE_COARSE, coarse_split

    chunks = _SPACE_COARSE.findall(text)
    assert "".join(chunks) == text
    for name in ("cl100k", "o200k", "llama3", "qwen2"):
        assert coarse_split(PATTERNS[name]) is _SPACE_COARSE
        compiled = regex.compile(PATTERNS[name])
        assert [p for c in chunks for p in compiled.findall(c)] == compiled.findall(text), name


def test_space_chunks_break_only_after_the_patterns_non_space():
    from llmlab.tokenizer.tokenizer import _SPACE_COARSE

    every = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000)))
    ws = set(regex.findall(r"\s", every)) - {" "}  # (a space before the space: the cut comes before both)
    assert {c for c in every if c != " " and len([x for x in _SPACE_COARSE.findall(f"x{c} y") if x]) == 1} == ws


def test_cl100k_tokenizer_encodes_by_chunks_as_by_pieces():
    from llmlab import artifacts, load_tokenizer

    tok = load_tokenizer(artifacts.fetch("cl100k-tiktoken"), pattern="cl100k")
    assert tok._chunks is not None
    split = regex.compile(PATTERNS["cl100k"]).findall
    for text in ("def f(x):\n    return x  \n\n\tpass ", " \n\n  a\u00a0b  c\r\n", "x \x1c\x1d\x1e y", "Grüße  мир 🙂\n z",
                 "a.\n/b  ", "  lead", "trail  ", ""):
        assert tok.encode(text) == [i for p in split(text) for i in tok.model.encode_piece(p.encode())], repr(text)


WORDY = st.lists(st.sampled_from(["foo", " foo", "Bar", " 's", "'s", "12", " 345", ".", " (", "\n", "\n\n", "  ", "\t",
                                  "é", " 中文", "\xa0", "\u2028", " 🙂", "x\r\n", " ", "\n    ", "a"]),
                 max_size=30).map("".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(WORDY, min_size=1, max_size=4))
def test_chunk_cache_gives_the_ids_of_splitting_by_pieces(texts):
    """Cold (every chunk missing) and warm encodes: the ids of splitting each text piece by piece, for GPT-2's chunks
    and the cl100k family's."""
    for name in ("gpt2", "cl100k"):
        tok = ranks_tokenizer(name)
        tok._chunks.clear()
        split = regex.compile(PATTERNS[name]).findall
        expected = [[i for p in split(t) for i in tok.model.encode_piece(p.encode())] for t in texts]
        assert [tok.encode(t) for t in texts] == expected, name
        assert [tok.encode(t) for t in texts] == expected, name



@functools.cache
def ranks_tokenizer(name: str):
    from llmlab import artifacts, load_tokenizer

    return load_tokenizer(artifacts.fetch(f"{name}-tiktoken"), pattern=name)


def random_pattern(rng) -> str:
    """A random split-pattern-like regex: property classes, sets, escapes, quantifiers, groups and lookarounds (groups
    are not quantified, so no pattern backtracks for long)."""
    atoms = [r"\p{L}", r"\p{N}", r"\p{Lu}", r"\p{Ll}", r"\P{L}", r"\P{N}", r"\s", r"\S", r"\d", r"\w", r"\W", "a", "A",
             "1", " ", r"\n", r"\.", "'", ".", r"\p{M}", r"\p{Lo}", r"\pL", r"\x41", "-", ","]
    members = [r"\p{L}", r"\p{N}", r"\p{Lu}", r"\p{Ll}", r"\p{M}", r"\s", r"\d", r"\w", "a-c", "A-Z", "0-5", r"\r",
               r"\n", "'", ".", "_", " ", r"\]", r"\-", r"\p{Lt}", "!-/"]
    quants = ["", "", "?", "*", "+", "{1,3}", "{2}", "{,2}", "??", "*?", "+?", "?+", "*+", "++"]

    def seq(depth: int) -> str:
        out = []
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            if r < 0.45 or depth:
                out.append(rng.choice(atoms) + rng.choice(quants))
            elif r < 0.8:
                neg = "^" if rng.random() < 0.3 else ""
                out.append(f"[{neg}{''.join(rng.choice(members) for _ in range(rng.randint(1, 3)))}]{rng.choice(quants)}")
            elif r < 0.9:
                out.append(rng.choice(["(?:", "(?>", "("]) + "|".join(seq(1) for _ in range(rng.randint(1, 2))) + ")")
            else:
                out.append(rng.choice(["(?=", "(?!", "(?<=", "(?<!"]) + rng.choice(atoms) + ")")
        return rng.choice(["", "", "", "^", r"\b", r"\A"]) + "".join(out) + rng.choice(["", "", "", "$", r"\z", r"\b"])

    return "|".join(seq(0) for _ in range(rng.randint(1, 3)))


def test_random_patterns_twins_split_ascii_alike():
    """Patterns a user might pass (--pattern, a tokenizer.json Split): where a twin exists, it finds what `regex` finds.
    (Scoped (?i:...) groups are left out: `regex` 2026.11 misreads some, e.g. (?i:x)?[^\\p{Ll}] skips "Z".)"""
    import random

    rng = random.Random(0)
    alphabet = "aAbzZ09 \t\n\r'.,-_!x]["
    checked = 0
    for _ in range(1500):
        pattern = random_pattern(rng)
        try:
            compiled = regex.compile(pattern)
        except regex.error:
            continue
        twin = ascii_twin(pattern)
        if twin is None:
            continue
        checked += 1
        for _ in range(12):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
            assert [m.span() for m in twin.finditer(text)] == [m.span() for m in compiled.finditer(text)], \
                (pattern, twin.pattern, text)
    assert checked > 1000
