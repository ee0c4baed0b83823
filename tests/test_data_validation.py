"""Damaged shard directories, the prepare progress bar on errors, and which files a corpus input contributes."""

from __future__ import annotations

import json
import shutil

import pytest

from llmlab.cli import main
from llmlab.data import corpora
from llmlab.data.corpora import TEXT_SUFFIXES, resolve_corpus
from llmlab.data.shards import ShardInfo, prepare_shards
from llmlab.errors import LlmlabError
from llmlab.tokenizer import train_bpe

TEXT = "To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer.\n" * 10


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text(TEXT)
    (d / "b.md").write_text(TEXT.upper())
    return d


@pytest.fixture(scope="module")
def tok(corpus_dir):
    return train_bpe(resolve_corpus([corpus_dir]).files, vocab_size=280, progress=False)


@pytest.fixture(scope="module")
def good(corpus_dir, tok, tmp_path_factory):
    return prepare_shards(resolve_corpus([corpus_dir]), tok, tmp_path_factory.mktemp("good"), val_fraction=0.2,
                          progress=False).path


def _meta(d, **changes):
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, **changes}))


DAMAGES = {
    "no directory": (lambda d: shutil.rmtree(d), r"shards does not exist"),
    "not JSON": (lambda d: (d / "meta.json").write_text("{garbage"), r"meta.json is not valid JSON"),
    "not an object": (lambda d: (d / "meta.json").write_text("[1, 2]"), r"holds a JSON list, not an object"),
    "keys missing": (lambda d: (d / "meta.json").write_text('{"dtype": "uint16"}'), r"lacks vocab_size, eos_id"),
    "bad dtype": (lambda d: _meta(d, dtype="float32"), r"unknown dtype 'float32'"),
    "count a string": (lambda d: _meta(d, vocab_size="280"), r"vocab_size = '280', not a non-negative integer"),
    "no val.bin": (lambda d: (d / "val.bin").unlink(), r"val.bin is missing"),
    "odd size": (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:1001]),
                 r"train.bin is truncated or damaged \(1001 bytes is not a whole number of uint16 tokens\)"),
    "short": (lambda d: (d / "val.bin").write_bytes((d / "val.bin").read_bytes()[:-2]),
              r"val.bin holds \d+ tokens but meta.json records \d+"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_shards_are_a_clear_error_on_load(good, tmp_path, damage):
    """Each once a KeyError, JSONDecodeError or numpy ValueError, or (val.bin gone) an error after training."""
    shards = shutil.copytree(good, tmp_path / "shards")
    harm, message = DAMAGES[damage]
    harm(shards)
    with pytest.raises(LlmlabError, match=message):
        ShardInfo.load(shards)


def test_train_refuses_damaged_shards_before_any_step(good, tmp_path, capsys):
    from llmlab.train.config import PRESETS

    shards = shutil.copytree(good, tmp_path / "shards")
    (shards / "val.bin").unlink()
    argv = ["train", "--preset", next(iter(PRESETS)), "--data", str(shards), "--out", str(tmp_path / "run"),
            "--max_steps", "1"]
    assert main(argv) == 2
    assert "val.bin is missing" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_shards_with_an_empty_val_split_still_load(corpus_dir, tok, tmp_path):
    info = prepare_shards(resolve_corpus([corpus_dir]), tok, tmp_path, val_fraction=0, progress=False)
    again = ShardInfo.load(tmp_path)
    assert again.val_tokens == 0 and (tmp_path / "val.bin").stat().st_size == 0 and again == info


def test_prepare_closes_its_progress_bar_before_an_error(corpus_dir, tok, tmp_path, capsys):
    """A non-UTF-8 file printed `tokenize:   0%|...|llmlab data: error: ...` on one line."""
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    tok.save(tmp_path / "tok")
    argv = ["data", "prepare", "--input", str(corpus_dir / "a.txt"), str(tmp_path / "latin1.txt"),
            "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "tokenize" in err and "\nllmlab data: error:" in err and "is not UTF-8 text" in err


def test_a_file_given_twice_is_one_document(corpus_dir):
    """`--input corpus corpus/a.txt` read a.txt twice."""
    again = corpus_dir / "a.txt"
    corpus = resolve_corpus([again, corpus_dir, corpus_dir / ".." / corpus_dir.name / "b.md", again])
    assert corpus.files == [again, corpus_dir / "b.md"]


def test_directory_suffixes_match_in_any_case(tmp_path):
    """NOTES.TXT was not read: the directory 'contains no non-empty text files'."""
    for name in ("NOTES.TXT", "Readme.Md", "skip.bin"):
        (tmp_path / name).write_text("text")
    assert resolve_corpus([tmp_path]).files == [tmp_path / "NOTES.TXT", tmp_path / "Readme.Md"]


def test_help_and_docstring_name_the_suffixes_a_directory_contributes(capsys):
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(TEXT_SUFFIXES) in help_text
    assert all(f"*{s}" in corpora.__doc__ for s in TEXT_SUFFIXES)
