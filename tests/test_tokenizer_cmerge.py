"""The C merge loop (kernels/cpu_bpe.c via tokenizer/cmerge.py) gives the Python loop's ids, for byte-level BPE in
merges mode and ranks mode (tiktoken files) and for SentencePiece-style BPE; without a compiler the Python loop runs
alone."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tokenizer_spm_model import CHARS, brute, tiny_model

from llmlab import artifacts, load_tokenizer
from llmlab.kernels import cbuild
from llmlab.tokenizer import BPEModel, cmerge, train_bpe

needs_cc = pytest.mark.skipif(cbuild.compiler() is None, reason="no C compiler: the Python loop is the only one")


def stdlib_text(n_bytes: int) -> list[str]:
    out, total = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="replace")
        out.append(text)
        total += len(text)
        if total > n_bytes:
            return out
    return out


def both_ways(monkeypatch, load, texts: list[str]) -> None:
    """Encode with the C loop from the first merge and with Python only: the same ids, and C really ran."""
    monkeypatch.setattr(cmerge, "WARMUP", 0)
    fast = load()
    ids_c = [fast.encode(t) for t in texts]
    assert fast.model._c._table is not None, "the C table was not built"
    slow = load()
    slow.model._c._off = True
    assert ids_c == [slow.encode(t) for t in texts]


CJK = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多"


@needs_cc
@pytest.mark.parametrize("name", ["gpt2", "cl100k", "o200k"])
def test_ranks_mode(monkeypatch, name):
    path = artifacts.fetch(f"{name}-tiktoken")
    texts = stdlib_text(100_000) + [CJK * 12, "Grüße, мир! 🙂🙃 " * 30, "x" * 5000, " " * 300 + "\n" * 40]
    both_ways(monkeypatch, lambda: load_tokenizer(path, pattern=name), texts)


@needs_cc
def test_one_long_piece_is_enough_to_start_the_c_loop():
    """The warm-up counts merge work, not calls: a CJK run is one piece of hundreds of bytes, and a text of a few
    such pieces merging in Python (O(n^2) each) ran at 0.1 MB/s against tiktoken's 12."""
    tok = load_tokenizer(artifacts.fetch("cl100k-tiktoken"), pattern="cl100k")
    tok.encode((CJK * 6)[:280])
    assert tok.model._c._table is not None


@needs_cc
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=2, max_size=4).map(lambda b: bytes(c % 3 + 97 for c in b)), max_size=40,
                unique=True), st.binary(max_size=80).map(lambda b: bytes(c % 3 + 97 for c in b)))
def test_c_ranks_merge_is_tiktokens(tokens, piece):
    """On a small alphabet with random multi-byte tokens (so pieces merge many times): C == Python == tiktoken."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {bytes([i]): i for i in range(256)}
    for t in tokens:
        ranks.setdefault(t, len(ranks))
    m = BPEModel(ranks)
    table = cmerge.RankTable(cmerge._library(), ranks)
    enc = tiktoken.Encoding("t", pat_str=r"[\s\S]+", mergeable_ranks=ranks, special_tokens={})
    expected = enc._core_bpe.encode_single_piece(piece) if piece else []
    assert table.merge(piece) == expected
    m._c._off = True
    assert list(m.encode_piece(piece)) == expected


@needs_cc
def test_merges_mode_trained(monkeypatch, tmp_path):
    texts = stdlib_text(200_000)
    train_bpe(texts, 600, progress=False).save(tmp_path / "tok")
    both_ways(monkeypatch, lambda: load_tokenizer(tmp_path / "tok"), texts + ["x" * 3000 + "yz" * 700])


@needs_cc
def test_sentencepiece_mistral(monkeypatch):
    path = artifacts.fetch("mistral-7b-tokenizer")
    texts = stdlib_text(200_000) + ["你好，世界。" * 50, "  a  b \n\t c " * 40]
    both_ways(monkeypatch, lambda: load_tokenizer(path), texts)


@needs_cc
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=CHARS, max_size=300))
def test_c_loop_follows_the_rule_with_tied_ranks(word):
    m = tiny_model()  # tied scores for "▁▁" and "▁▁▁▁": the leftmost pair must win in C as in Python
    table = cmerge.PairTable(cmerge._library(), m._c_pairs())
    assert [m.piece(i) for i in table.merge([m.vocab[c] for c in word])] == brute(m, word)


def test_without_a_compiler_the_python_loop_runs(monkeypatch):
    monkeypatch.setattr(cmerge, "WARMUP", 0)
    monkeypatch.setattr(cmerge, "_library", lambda: None)
    m = tiny_model()
    word = "▁ab▁abc▁▁▁▁cde" * 3
    assert [m.piece(i) for i in m.encode_word(word)] == brute(m, word)
    assert m._c._off and m._c._table is None


@needs_cc
def test_a_table_past_int32_leaves_the_python_loop(monkeypatch):
    """Offsets, ranks and ids are int32 in C: a vocabulary past that turns C off instead of failing the encode."""
    def too_big(*args):
        raise OverflowError("past int32")

    monkeypatch.setattr(cmerge, "WARMUP", 0)
    monkeypatch.setattr(cmerge, "RankTable", too_big)
    tok = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
    assert tok.encode("hello worldlessnesses") == [31373, 995, 17587, 274]
    assert tok.model._c._off and tok.model._c._table is None


def python_derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    m = BPEModel(ranks)
    m._rank_table = lambda: None  # the Python loop
    return m.derive_merges()


@needs_cc
@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=2, max_size=5).map(lambda b: bytes(c % 3 + 97 for c in b)), max_size=40,
                unique=True), st.booleans())
def test_c_derives_the_merges_python_does(tokens, drop_a_byte):
    """A ranks-mode vocabulary's merges (to write tokenizer.json) in one C call: Python's, tokens no merge makes
    left out (e.g. 'abc' with neither 'ab' nor 'bc'); a byte that is no token (a vocabulary only Python reads)
    leaves the work to the Python loop."""
    ranks = {bytes([i]): i for i in range(256) if not (drop_a_byte and i == 99)}
    for t in tokens:
        ranks.setdefault(t, 256 + len(ranks))
    m = BPEModel(ranks)
    expected = python_derive_merges(ranks)
    assert m.derive_merges() == expected
    table = m._rank_table()
    assert table is not None and (table.derive_merges() is None) == (drop_a_byte and any(99 in t for t in ranks))


@needs_cc
def test_c_derives_cl100k_merges_as_python():
    tok = load_tokenizer(artifacts.fetch("cl100k-tiktoken"), pattern="cl100k")
    c = tok.model.derive_merges()
    assert len(c) == len(tok.model.vocab) - 256 == 100_000 and c == python_derive_merges(tok.model.vocab)
