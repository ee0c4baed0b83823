"""Tokenizers pickle by their arguments (tokenizer/rebuild.py) and encode, decode and template alike after a round
trip; `data prepare --workers` hands its workers the tokenizer itself, so their shards are the one-process shards
(they used to reload a saved tokenizer.json, which cannot hold SentencePiece user-defined pieces)."""

from __future__ import annotations

import multiprocessing
import pickle
import warnings

import numpy as np
import pytest

from llmlab import artifacts, load_tokenizer
from llmlab.data import shards
from llmlab.data.corpora import resolve_corpus
from llmlab.tokenizer import cmerge, train_bpe

TEXTS = ["Hello world! 你好 🙂 [REFERENCE_DOC_1] <|endoftext|> <s>x [CLS]", "  a\n\n b\t 12345 don't   ", ""]


def same(a, b) -> None:
    for t in TEXTS:
        assert a.encode(t, allowed_special="all") == b.encode(t, allowed_special="all")
        assert a.encode(t, add_special_tokens=True) == b.encode(t, add_special_tokens=True)
        ids = a.encode(t)
        assert a.decode(ids) == b.decode(ids) and a.decode_bytes(ids) == b.decode_bytes(ids)
    assert (a.vocab_size, a.special_tokens, a.added_tokens, a.template, a.chat_template, a.bos_id, a.eos_id,
            a.pad_id) == (b.vocab_size, b.special_tokens, b.added_tokens, b.template, b.chat_template, b.bos_id,
                          b.eos_id, b.pad_id)


@pytest.mark.parametrize("name", ["gpt2-tiktoken", "cl100k-tiktoken", "smollm2-135m", "mistral-7b-tokenizer",
                                  "mistral-7b-v3-tokenizer", "minilm-tokenizer"])
def test_round_trip(name, monkeypatch):
    monkeypatch.setattr(cmerge, "WARMUP", 0)  # the C table is built: it must not travel, and is built again
    tok = load_tokenizer(artifacts.fetch(name))
    tok.encode("warm the caches " * 50 + "你好世界" * 30)
    copy = pickle.loads(pickle.dumps(tok))
    assert copy is not tok and len(copy._cache) == 0
    same(tok, copy)


def test_round_trip_trained():
    tok = train_bpe(["some text to train on, twice: some text to train on"] * 20, 300, progress=False)
    same(tok, pickle.loads(pickle.dumps(tok)))


def shard_ids(tmp_path, tok, workers: int, tag: str) -> np.ndarray:
    shards.prepare_shards(resolve_corpus(str(tmp_path / "c")), tok, tmp_path / tag, val_fraction=0.0,
                          progress=False, workers=workers)
    return np.fromfile(tmp_path / tag / "train.bin", dtype=np.uint16)


def test_workers_encode_with_user_defined_pieces(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(6):
        (tmp_path / "c" / f"{i}.txt").write_text(f"See [REFERENCE_DOC_1] and [REFERENCE_DOC_12] in {i}.\n" * 40)
    tok = load_tokenizer(artifacts.fetch("mistral-7b-v3-tokenizer"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shards' own copy of the tokenizer (tokenizer.json) warns about them
        assert np.array_equal(shard_ids(tmp_path, tok, 1, "one"), shard_ids(tmp_path, tok, 2, "two"))


def test_workers_started_by_spawn(tmp_path, monkeypatch):
    """macOS and Windows start workers by spawn, which pickles the tokenizer to them."""
    (tmp_path / "c").mkdir()
    docs = [f"document {i}: the quick brown fox, {i * 7} times.\n" * 30 for i in range(6)]
    for i, d in enumerate(docs):
        (tmp_path / "c" / f"{i}.txt").write_text(d)
    tok = train_bpe(docs, 320, progress=False)
    monkeypatch.setattr(shards, "_context", lambda: multiprocessing.get_context("spawn"))
    assert np.array_equal(shard_ids(tmp_path, tok, 2, "spawn"), shard_ids(tmp_path, tok, 1, "one"))
