"""`llmlab tokenizer train|encode` and the errors a person can cause (bad files, bad arguments)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from llmlab import load_tokenizer
from llmlab.cli import main
from llmlab.errors import TokenizerError
from llmlab.tokenizer import train_bpe

MIXED = (Path(__file__).parent / "data" / "tokenizer_mixed.txt").read_text(encoding="utf-8")


def test_train_then_encode(tmp_path, monkeypatch, capsys):
    src = tmp_path / "corpus.txt"
    src.write_text(MIXED * 3, encoding="utf-8")
    assert main(["tokenizer", "train", "--input", str(src), "--vocab-size", "400", "--out", str(tmp_path / "tok")]) == 0
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.vocab_size == 400
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello world\nsecond <|endoftext|> line\n"))
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok"), "--allow-special"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [list(map(int, ln.split())) for ln in lines] == [
        tok.encode("Hello world"), tok.encode("second <|endoftext|> line", allowed_special="all")]


def test_train_wordpiece_cli(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text(MIXED, encoding="utf-8")
    assert main(["tokenizer", "train", "--kind", "wordpiece", "--input", str(src), "--vocab-size", "300",
                 "--out", str(tmp_path / "wp")]) == 0
    assert load_tokenizer(tmp_path / "wp").encode("[CLS]", allowed_special="all") == [2]


@pytest.mark.parametrize("argv", [["tokenizer", "--help"], ["tokenizer", "train", "--help"],
                                  ["tokenizer", "encode", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and "usage: llmlab tokenizer" in capsys.readouterr().out


def test_non_utf8_training_file_names_file_and_offset(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("hello wörld".encode("latin-1"))  # 'ö' is byte 0xF6 at offset 7
    with pytest.raises(TokenizerError, match=r"latin1\.txt is not valid UTF-8 at byte offset 7"):
        train_bpe([bad], 300)
    code = main(["tokenizer", "train", "--input", str(bad), "--vocab-size", "300", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "byte offset 7" in err and "Traceback" not in err


def test_corrupt_tokenizer_json_names_missing_field(tmp_path):
    tok = train_bpe([MIXED], 300)
    tok.save(tmp_path / "t.json")
    spec = json.loads((tmp_path / "t.json").read_text())
    del spec["model"]["merges"]
    (tmp_path / "t.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="missing the field 'model.merges'"):
        load_tokenizer(tmp_path / "t.json")
    del spec["model"]
    (tmp_path / "t.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="missing the field 'model'"):
        load_tokenizer(tmp_path / "t.json")
    (tmp_path / "t.json").write_text('{"model": ')
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(tmp_path / "t.json")


def test_other_user_errors(tmp_path):
    (tmp_path / "r.tiktoken").write_text("aGk= 0\n")
    with pytest.raises(TokenizerError, match="pass pattern="):
        load_tokenizer(tmp_path / "r.tiktoken")
    (tmp_path / "bad.tiktoken").write_text("not-base64!! x\n")
    with pytest.raises(TokenizerError, match="line 1"):
        load_tokenizer(tmp_path / "bad.tiktoken", pattern="gpt2")
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="not a valid regex"):
        train_bpe([MIXED], 300, pattern="(unclosed")
    with pytest.raises(TokenizerError, match="takes a str"):
        train_bpe([MIXED], 300).encode(b"bytes")


@pytest.mark.artifact
def test_encode_takes_a_registry_name(monkeypatch, capsys):
    """As `generate --model smollm2-135m`: a registry name resolves to the fetched artifact."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello world\n"))
    assert main(["tokenizer", "encode", "--tokenizer", "gpt2-tiktoken", "--pattern", "gpt2"]) == 0
    assert capsys.readouterr().out.split() == ["15496", "995"]  # GPT-2's ids for "Hello world"


def test_registry_name_resolution(tmp_path, monkeypatch):
    from llmlab import artifacts

    monkeypatch.setattr(artifacts, "fetch", lambda name, **kw: tmp_path / f"fetched-{name}")
    assert artifacts.resolve("gpt2-tiktoken") == tmp_path / "fetched-gpt2-tiktoken"
    assert artifacts.resolve(tmp_path / "tok.json") == tmp_path / "tok.json"  # a path stays a path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2-tiktoken").mkdir()  # a local directory of that name wins over the registry
    assert artifacts.resolve("gpt2-tiktoken") == Path("gpt2-tiktoken")
