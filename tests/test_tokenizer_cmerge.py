"""The C merge loop (kernels/cpu_bpe.c via tokenizer/cmerge.py) gives the Python loop's ids, for byte-level BPE in
merges mode and for SentencePiece-style BPE; without a compiler the Python loop runs alone."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tokenizer_spm_model import CHARS, brute, tiny_model

from llmlab import artifacts, load_tokenizer
from llmlab.kernels import cbuild
from llmlab.tokenizer import cmerge, train_bpe

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


def test_ranks_mode_stays_in_python():
    tok = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
    assert tok.model._c is None  # its pair table cost as much to build as it saved (see bpe.py)


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
