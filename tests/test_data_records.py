"""Record corpora: JSON Lines (plain or gzip) and Parquet files, one document per record, as `datasets` exports and
nanochat's FineWeb shards store text. Whole records are held out for validation; a broken record names its file
and line; shards are written as they are produced and replace the old ones only when the corpus is done."""

from __future__ import annotations

import builtins
import gzip
import json

import numpy as np
import pytest

from llmlab.cli import main
from llmlab.data.corpora import CorpusError, resolve_corpus
from llmlab.data.shards import ShardInfo, prepare_shards
from llmlab.tokenizer import train_bpe

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

WORDS = "the cat sat on a mat and then it ran far away from home to see the sea é 🙂".split()
RNG = np.random.default_rng(0)
DOCS = [" ".join(RNG.choice(WORDS, size=int(RNG.integers(3, 30)))) for _ in range(90)]


def write_jsonl(path, docs, field="text", gz=False):
    lines = "".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs))
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    write_jsonl(d / "a.jsonl", DOCS[:30])
    write_jsonl(d / "b.jsonl.gz", DOCS[30:60], gz=True)
    pq.write_table(pa.table({"text": DOCS[60:], "n": list(range(30))}), d / "c.parquet", row_group_size=7)
    (d / ".hidden.jsonl").write_text('{"text": "never read"}\n')
    return d


@pytest.fixture(scope="module")
def tok():
    return train_bpe(DOCS, vocab_size=300, progress=False)


def test_every_record_is_one_document_and_whole_records_are_held_out(records, tok, tmp_path):
    corpus = resolve_corpus([records])
    assert [f.name for f in corpus.files] == ["a.jsonl", "b.jsonl.gz", "c.parquet"]
    assert [doc.text for doc in corpus.documents()] == DOCS
    info = prepare_shards(corpus, tok, tmp_path, val_fraction=0.1, progress=False)
    held = [i for i in range(len(DOCS)) if (i + 1) // 10 > i // 10]  # floor((i + 1) f) > floor(i f), f = 0.1
    assert held == list(range(9, 90, 10)) and info.documents == len(DOCS)

    def ids(docs):
        return [t for d in docs for t in tok.encode(d) + [tok.eos_id]]

    assert info.tokens("train").tolist() == ids(d for i, d in enumerate(DOCS) if i not in held)
    assert info.tokens("val").tolist() == ids(DOCS[i] for i in held)


def test_the_progress_bar_counts_every_file_byte(records, tok, tmp_path, monkeypatch):
    import llmlab.data.shards as shards

    seen = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.n = total, 0

        def update(self, n):
            assert n >= 0
            self.n += n

        def close(self):
            seen.append((self.n, self.total))

    monkeypatch.setattr(shards, "tqdm", Bar)
    prepare_shards(resolve_corpus([records]), tok, tmp_path, progress=False)
    assert seen and seen[0][0] == seen[0][1]


def test_trailing_blank_lines_and_empty_files_move_the_bar_to_the_end(tmp_path, tok, monkeypatch):
    import llmlab.data.shards as shards

    write_jsonl(tmp_path / "a.jsonl", DOCS[:5])
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write("\n\n   \n")
    (tmp_path / "blank.jsonl").write_text("\n \n")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    seen = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.n = total, 0

        def update(self, n):
            self.n += n

        def close(self):
            seen.append((self.n, self.total))

    monkeypatch.setattr(shards, "tqdm", Bar)
    prepare_shards(resolve_corpus([tmp_path]), tok, tmp_path / "s", progress=False)
    assert seen[0][0] == seen[0][1]


def test_tokenizer_train_reads_the_records_text_not_their_json(records, tmp_path):
    assert main(["tokenizer", "train", "--input", str(records), "--vocab-size", "300", "--out", str(tmp_path)]) == 0
    from llmlab import load_tokenizer

    assert load_tokenizer(tmp_path).model.vocab == train_bpe(DOCS, vocab_size=300, progress=False).model.vocab


def test_text_field_names_another_field_on_both_commands(tmp_path, capsys):
    write_jsonl(tmp_path / "c.jsonl", DOCS, field="content")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "c.jsonl"), "--text-field", "content",
                 "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 0
    assert main(["data", "prepare", "--input", str(tmp_path / "c.jsonl"), "--text-field", "content",
                 "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "shards")]) == 0
    assert ShardInfo.load(tmp_path / "shards").documents == len(DOCS)
    capsys.readouterr()
    code = main(["data", "prepare", "--input", str(tmp_path / "c.jsonl"), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "again")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "c.jsonl line 1 has no 'text' field (its fields: 'id', 'content'); pass --text-field NAME" in err


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"text": 3}\n', r"line 2: field 'text' holds a JSON int, not text"),
    ('{"text": "ok"}\n\n["a list"]\n', r"line 3 is a JSON list, not an object with a 'text' field"),
    ('{"text": "ok"}\n{"text": "cut\n', r"line 2 is not JSON \(Invalid control character"),
    (b'{"text": "caf\xe9"}\n', r"line 1 is not UTF-8"),
    ('{"text": "ok"}\n{"text": "a \\ud83d b"}\n', r"line 2: field 'text' holds an unpaired surrogate \(U\+D83D\)"),
    (b'{"text": "a \xed\xa0\xbd b"}\n', r"line 1: field 'text' holds an unpaired surrogate"),  # CESU-8 bytes
])
def test_a_broken_record_names_its_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CorpusError, match=r"bad\.jsonl " + message):
        list(resolve_corpus([path]).texts())


def test_null_and_blank_records_are_skipped(tmp_path, tok):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": null}\n{"text": "  "}\n{"text": "the cat"}\n\n')
    info = prepare_shards(resolve_corpus([path]), tok, tmp_path / "s", val_fraction=0, progress=False)
    assert info.documents == 1 and info.tokens("train").tolist() == tok.encode("the cat") + [tok.eos_id]


def test_a_truncated_gzip_file_is_named(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl.gz", DOCS, gz=True)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CorpusError, match=r"r\.jsonl\.gz cannot be read past line \d+ .*complete gzip-compressed"):
        list(resolve_corpus([path]).texts())


def test_parquet_column_errors(tmp_path, monkeypatch):
    pq.write_table(pa.table({"body": ["a", "b"], "n": [1, 2]}), tmp_path / "p.parquet")
    with pytest.raises(CorpusError, match=r"p\.parquet has no column 'text' \(its columns: body, n\); pass --text"):
        list(resolve_corpus([tmp_path / "p.parquet"]).texts())
    with pytest.raises(CorpusError, match=r"column 'n' holds int64, not text"):
        list(resolve_corpus([tmp_path / "p.parquet"], text_field="n").texts())
    assert list(resolve_corpus([tmp_path / "p.parquet"], text_field="body").texts()) == ["a", "b"]
    pq.write_table(pa.table({"text": pa.array(["x", None, "x"]).dictionary_encode()}), tmp_path / "cat.parquet")
    assert list(resolve_corpus([tmp_path / "cat.parquet"]).texts()) == ["x", "", "x"]  # pandas' Categorical
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match=r"junk\.parquet is not a readable Parquet file"):
        list(resolve_corpus([tmp_path / "junk.parquet"]).texts())
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(CorpusError, match=r"reading one needs pyarrow, which is not installed; `pip install pyarrow`"):
        list(resolve_corpus([tmp_path / "p.parquet"]).texts())


def test_a_failed_prepare_leaves_the_previous_shards_as_they_were(tmp_path, tok):
    good = write_jsonl(tmp_path / "good.jsonl", DOCS)
    out = tmp_path / "shards"
    before = prepare_shards(resolve_corpus([good]), tok, out, progress=False)
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:50]) + '{"txt": "oops"}\n')
    with pytest.raises(CorpusError, match="line 51 has no 'text' field"):
        prepare_shards(resolve_corpus([bad]), tok, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == saved  # no partial files either
    assert ShardInfo.load(out).train_tokens == before.train_tokens


def test_worker_processes_write_the_same_shards(records, tok, tmp_path):
    """--workers N: pieces encoded in N processes, written in corpus order; a text file and records together, with
    pieces small enough that one document spans several tasks."""
    import llmlab.data.shards as shards

    (records / "big.txt").write_text("\n".join(DOCS) * 3, encoding="utf-8")
    try:
        corpus = resolve_corpus([records])
        one = prepare_shards(corpus, tok, tmp_path / "one", val_fraction=0.1, progress=False)
        real = shards.safe_chunks
        shards.safe_chunks = lambda text: real(text, 500)  # (forked workers see it too; the ids do not change)
        try:
            two = prepare_shards(corpus, tok, tmp_path / "two", val_fraction=0.1, progress=False, workers=2)
        finally:
            shards.safe_chunks = real
    finally:
        (records / "big.txt").unlink()
    for split in ("train", "val"):
        assert np.array_equal(one.tokens(split), two.tokens(split))
    assert one.documents == two.documents == len(DOCS) + 1


def test_ctrl_c_with_workers_prints_no_worker_tracebacks(tmp_path):
    """Ctrl-C reaches every process of the group: each forked worker printed its own KeyboardInterrupt traceback."""
    import os
    import signal
    import subprocess
    import sys

    write_jsonl(tmp_path / "r.jsonl", DOCS)
    train_bpe(DOCS, vocab_size=300, progress=False).save(tmp_path / "tok")
    code = f"""
import os, signal, sys, time
import llmlab.data.shards as shards
real = shards._encode_batch
def interrupted(*args):
    os.killpg(0, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    time.sleep(1)
    return real(*args)
shards._encode_batch = interrupted
from llmlab.cli import main
sys.exit(main(["data", "prepare", "--input", {str(tmp_path / "r.jsonl")!r}, "--tokenizer", {str(tmp_path / "tok")!r},
               "--out", {str(tmp_path / "s")!r}, "--workers", "2"]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130 and "interrupted" in done.stderr, done.stderr[-800:]
    assert "Traceback" not in done.stderr and not os.path.exists(tmp_path / "s" / "train.bin")


def test_a_small_record_corpus_says_why_nothing_was_held_out(tmp_path, capsys):
    write_jsonl(tmp_path / "one.jsonl", [" ".join(DOCS[i:i + 30]) for i in (0, 30, 60)])  # a train window's worth
    train_bpe(DOCS, vocab_size=300, progress=False).save(tmp_path / "tok")
    assert main(["data", "prepare", "--input", str(tmp_path / "one.jsonl"), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "fewer than 1 / 0.05 = 20 records, so none is held out" in err and "train split" not in err


def test_worker_errors_and_bad_worker_counts(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS) + "[1]\n")
    with pytest.raises(CorpusError, match="line 91 is a JSON list"):
        prepare_shards(resolve_corpus([bad]), tok, tmp_path / "s", progress=False, workers=2)
    assert not (tmp_path / "s" / "train.bin").exists() and not list((tmp_path / "s").glob(".*partial"))
    for workers in (0, -1, 1.5, True):
        with pytest.raises(Exception, match=r"workers \(--workers\) must be a whole number >= 1"):
            prepare_shards(resolve_corpus([bad]), tok, tmp_path / "s", progress=False, workers=workers)
