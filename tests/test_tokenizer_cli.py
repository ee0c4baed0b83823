"""`llmlab tokenizer train|encode` and the errors a person can cause (bad files, bad arguments)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import sys
from pathlib import Path

import pytest

from llmlab import load_tokenizer
from llmlab.cli import main
from llmlab.errors import TokenizerError
from llmlab.tokenizer import train_bpe, train_wordpiece

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
    with pytest.raises(TokenizerError, match="no tokenizer.json, tokenizer.model or vocab.txt"):
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


def test_tiktoken_files_under_their_own_names_need_no_pattern(tmp_path, monkeypatch, capsys):
    """`--tokenizer cl100k-tiktoken` (the help's own example) failed: 'carries no split pattern; pass
    --pattern'. The registry's rank files keep tiktoken's names, which say the encoding."""
    ranks = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
    for fname, pattern, special in [("gpt2.tiktoken", "gpt2", {"<|endoftext|>": 50256}),
                                    ("cl100k_base.tiktoken.gz", "cl100k", {"<|fim_prefix|>": 100258}),
                                    ("o200k_base.tiktoken", "o200k", {"<|endofprompt|>": 200018})]:
        path = tmp_path / fname
        path.write_bytes(gzip.compress(ranks.encode()) if fname.endswith(".gz") else ranks.encode())
        tok, ref = load_tokenizer(path), load_tokenizer(path, pattern=pattern)
        assert special.items() <= tok.special_tokens.items()
        text = "Hello  world's 12345 你好 🙂\n"
        assert tok.encode(text) == ref.encode(text)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "gpt2.tiktoken")]) == 0
    assert capsys.readouterr().out.split() == [str(ord("h")), str(ord("i"))]


@pytest.mark.artifact
@pytest.mark.parametrize("name", ["gpt2", "cl100k", "o200k"])
def test_encode_takes_a_tiktoken_registry_name_alone(name, monkeypatch, capsys):
    from llmlab import artifacts

    text = "Hello world 你好，世界 🙂👍🏽"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert main(["tokenizer", "encode", "--whole", "--tokenizer", f"{name}-tiktoken"]) == 0
    ids = list(map(int, capsys.readouterr().out.split()))
    ref = load_tokenizer(artifacts.fetch(f"{name}-tiktoken"), pattern=name)
    assert ids == ref.encode(text)
    assert ref.decode(ids) == text


NON_ASCII = "你好，世界\n🙂👍🏽 café\n\nmixed 中文 and emoji 🎉\n"


def _encode_then_decode(tokenizer: str, text: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert main(["tokenizer", "encode", "--tokenizer", tokenizer]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(capsys.readouterr().out))
    assert main(["tokenizer", "decode", "--tokenizer", tokenizer]) == 0
    return capsys.readouterr().out


def test_decode_round_trips_non_ascii_text(tmp_path, monkeypatch, capsys):
    """There was no `llmlab tokenizer decode` (\"invalid choice: 'decode'\"): ids printed by encode could not be
    turned back into text on the command line."""
    tok = train_bpe([MIXED * 3 + NON_ASCII], 400)
    tok.save(tmp_path / "tok")
    assert _encode_then_decode(str(tmp_path / "tok"), NON_ASCII, monkeypatch, capsys) == NON_ASCII
    ids = tok.encode("a<|endoftext|>", allowed_special="all")
    monkeypatch.setattr(sys, "stdin", io.StringIO(",".join(map(str, ids)) + "\n"))  # commas, as `generate --ids`
    assert main(["tokenizer", "decode", "--tokenizer", str(tmp_path / "tok"), "--skip-special"]) == 0
    assert capsys.readouterr().out == "a\n"


@pytest.mark.parametrize("ids, message", [("1 2 x", "line 1: 'x' is not a token id"),
                                          ("5\n-1", "line 2: decode\\(\\) got an id outside 0..399"),
                                          ("400", "line 1: decode\\(\\) got an id outside 0..399")])
def test_decode_refuses_what_is_not_an_id_of_the_tokenizer(ids, message, tmp_path, monkeypatch, capsys):
    train_bpe([MIXED * 3], 400).save(tmp_path / "tok")
    monkeypatch.setattr(sys, "stdin", io.StringIO(ids + "\n"))
    assert main(["tokenizer", "decode", "--tokenizer", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.artifact
@pytest.mark.parametrize("name", ["smollm2-135m", "cl100k-tiktoken"])
def test_decode_round_trips_non_ascii_text_with_registry_tokenizers(name, monkeypatch, capsys):
    assert _encode_then_decode(name, NON_ASCII, monkeypatch, capsys) == NON_ASCII


def test_registry_name_resolution(tmp_path, monkeypatch):
    from llmlab import artifacts

    monkeypatch.setattr(artifacts, "fetch", lambda name, **kw: tmp_path / f"fetched-{name}")
    assert artifacts.resolve("gpt2-tiktoken") == tmp_path / "fetched-gpt2-tiktoken"
    assert artifacts.resolve(tmp_path / "tok.json") == tmp_path / "tok.json"  # a path stays a path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2-tiktoken").mkdir()  # a local directory of that name wins over the registry
    assert artifacts.resolve("gpt2-tiktoken") == Path("gpt2-tiktoken")


def test_train_refuses_what_it_cannot_honour(tmp_path, capsys):
    src = tmp_path / "c.txt"
    src.write_text(MIXED, encoding="utf-8")
    (tmp_path / "empty.txt").write_text("")
    out = ["--out", str(tmp_path / "o")]
    cases = [
        (["--input", str(tmp_path / "empty.txt"), "--vocab-size", "300"], "contains no non-empty text files"),
        (["--kind", "wordpiece", "--input", str(src), "--vocab-size", "10"], r"vocab_size 10 is below the \d+ symbols"),
        (["--input", str(src), "--vocab-size", "300", "--special-tokens", ""], "special tokens must be non-empty"),
        (["--input", str(src), "--vocab-size", "300", "--min-frequency", "-3"], "min_frequency must be an integer"),
        (["--input", str(src), "--vocab-size", "300", "--pattern", "(["], "not a valid regex"),
    ]
    for argv, message in cases:
        assert main(["tokenizer", "train", *argv, *out]) == 2, argv
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()
    with pytest.raises(TokenizerError, match="has no text"):
        train_bpe([""], 300)
    with pytest.raises(TokenizerError, match="has no text"):
        train_wordpiece(["<|endoftext|>"], 300, special_tokens=["[UNK]", "<|endoftext|>"])


@pytest.mark.parametrize("out", ["file.txt", "file.txt/tok"])
def test_train_refuses_an_out_under_a_file_before_training(out, tmp_path, capsys, monkeypatch):
    from llmlab.tokenizer import train as train_mod

    src = tmp_path / "c.txt"
    src.write_text(MIXED, encoding="utf-8")
    (tmp_path / "file.txt").write_text("mine")
    monkeypatch.setattr(train_mod, "train_bpe", lambda *a, **k: pytest.fail("trained before the --out was checked"))
    assert main(["tokenizer", "train", "--input", str(src), "--vocab-size", "300", "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'file.txt'} is a file; pass a new or existing directory" in err and "Traceback" not in err
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_train_notes_when_the_merges_run_out(tmp_path, capsys):
    src = tmp_path / "c.txt"
    src.write_text(MIXED, encoding="utf-8")
    assert main(["tokenizer", "train", "--input", str(src), "--vocab-size", "10000000",
                 "--out", str(tmp_path / "o")]) == 0
    size = load_tokenizer(tmp_path / "o").vocab_size
    assert size < 10_000_000 and f"note: stopped at {size} of the 10000000 asked: no pair occurs >= 2 times" in \
        capsys.readouterr().err


def test_train_takes_a_directory_like_data_prepare(tmp_path):
    (tmp_path / "texts" / "sub").mkdir(parents=True)
    (tmp_path / "texts" / "a.txt").write_text(MIXED, encoding="utf-8")
    (tmp_path / "texts" / "sub" / "b.md").write_text(MIXED, encoding="utf-8")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "texts"), "--vocab-size", "300",
                 "--out", str(tmp_path / "o")]) == 0
    assert load_tokenizer(tmp_path / "o").encode("hello") == train_bpe([MIXED * 2], 300).encode("hello")


def test_encode_checks_the_pattern(tmp_path, monkeypatch, capsys):
    (tmp_path / "r.tiktoken").write_text("aGk= 0\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "r.tiktoken"), "--pattern", "(["]) == 2
    err = capsys.readouterr().err
    assert "pattern '([' is not a valid regex" in err and "Traceback" not in err


def test_missing_tokenizer_names_the_registry_tokenizers(tmp_path):
    with pytest.raises(TokenizerError, match="or use a registry name: cl100k-tiktoken, gpt2-tiktoken, .*smollm2-135m") as e:
        load_tokenizer(tmp_path / "nope.json")
    assert "shakespeare" not in str(e.value)


def test_a_txt_that_is_no_vocab_is_named_as_such(tmp_path, capsys, monkeypatch):
    """A .txt tokenizer is read as a WordPiece vocab.txt: binary bytes there were a raw UnicodeDecodeError, and a
    corpus file given by mistake got an [UNK] message that did not say how the file had been read."""
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc\n")
    with pytest.raises(TokenizerError, match=r"bin\.txt is not UTF-8 text, so it is no WordPiece vocab\.txt"):
        load_tokenizer(binary)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi"))
    assert main(["tokenizer", "encode", "--tokenizer", str(binary)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "Traceback" not in err
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be,\nthat is the question.\n")
    with pytest.raises(TokenizerError, match=r"was read as a WordPiece vocab\.txt .* has no \[UNK\] token"):
        load_tokenizer(corpus)
