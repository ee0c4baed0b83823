"""Edges from the tokenizer QA audit: digit runs under the cl100k split in `tokenizers`, tiktoken special tokens,
added-token options, the CLI's line and byte handling, WordPiece roles for transformers, id types."""

from __future__ import annotations

import base64
import io
import json
import random
import re
import shutil
import sys
from pathlib import Path

import pytest
import tokenizers
from tokenizers import AddedToken, normalizers

from llmlab import artifacts, load_tokenizer
from llmlab.cli import main
from llmlab.errors import TokenizerError
from llmlab.tokenizer import DEFAULT_CHAT_TEMPLATE, train_bpe, train_wordpiece

MIXED = (Path(__file__).parent / "data" / "tokenizer_mixed.txt").read_text(encoding="utf-8")
# tiktoken's cl100k_base split, copied from tiktoken_ext/openai_public.py (possessive `{1,3}+` and `$` included).
CL100K = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$"""
          r"""|\s*[\r\n]|\s+(?!\S)|\s""")
DIGITS = ["In 2024 the total was 1234567.", "12345", "12345678901234567890", "x1234 5678y", "3.14159265 ٣٤٥٦٧",
          "a \n ", "  \n\n  x  \n", "don't DON'T 99999"]


def numbers_text() -> str:
    rng = random.Random(0)
    return "\n".join(f"In {rng.randrange(1900, 2100)} the total was {rng.randrange(10 ** rng.randrange(1, 9))}."
                     for _ in range(3000))


def stdin_bytes(monkeypatch, data: bytes) -> None:
    """Stdin as a terminal gives it: bytes under a text layer (the C locale's lenient error handler)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape"))


# ---- 1: cl100k-style split written to tokenizer.json --------------------------------------------
def test_gpt4_pattern_digit_runs_match_tokenizers_and_transformers(tmp_path):
    from transformers import AutoTokenizer
    tok = train_bpe([numbers_text()], 600, pattern="gpt4")
    tok.save(tmp_path / "tok")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    again = load_tokenizer(tmp_path / "tok")
    for text in DIGITS:
        ids = tok.encode(text)
        assert ref.encode(text).ids == hf.encode(text) == again.encode(text) == ids, text
    assert [p for p, _ in ref.pre_tokenizer.pre_tokenize_str("1234567")] == ["123", "456", "7"]


@pytest.mark.artifact
def test_cl100k_ranks_saved_as_tokenizer_json_match_tiktoken(tmp_path):
    import tiktoken
    tok = load_tokenizer(artifacts.fetch("cl100k-tiktoken"))
    enc = tiktoken.Encoding("cl100k", pat_str=CL100K, mergeable_ranks=tok.model.vocab,
                            special_tokens=tok.special_tokens)
    tok.save(tmp_path / "cl100k")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "cl100k" / "tokenizer.json"))
    again = load_tokenizer(tmp_path / "cl100k")
    for text in DIGITS + [MIXED]:
        want = enc.encode(text, allowed_special="all")
        assert tok.encode(text, allowed_special="all") == ref.encode(text).ids == want, text[:40]
        assert again.encode(text, allowed_special="all") == want, text[:40]
    assert enc.encode("12345678901234567890") == [4513, 10961, 16474, 11531, 12901, 17458, 1954]


def test_a_split_regex_that_tokenizers_reads_otherwise_is_refused(tmp_path):
    """`{1,3}+` is possessive in `regex` and Rust, a repeated group in Oniguruma: refused, not split two ways."""
    with pytest.raises(TokenizerError, match=r"possessive quantifier '\{1,3\}\+'.*write '\{1,3\}'"):
        train_bpe([MIXED], 300, pattern=r"\p{N}{1,3}+|\p{L}+|\s+|[^\s\p{L}\p{N}]+")
    train_bpe([MIXED], 300, pattern="gpt4").save(tmp_path / "t.json")
    spec = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    split = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    split["Regex"] = split["Regex"].replace(r"\p{N}{1,3}", r"\p{N}{1,3}+")  # what llmlab used to write
    (tmp_path / "t.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TokenizerError, match="reads as a repeated group"):
        load_tokenizer(tmp_path / "t.json")


# ---- 2: tiktoken special tokens ------------------------------------------------------------------
def test_tiktoken_special_tokens_come_from_the_rank_file_not_the_pattern(tmp_path):
    ranks = {bytes([b]): b for b in range(256)} | {b"parable": 50256}
    lines = "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items())
    (tmp_path / "gpt2.tiktoken").write_text(lines)  # GPT-2's name, but rank 50256 is an ordinary token
    with pytest.raises(TokenizerError, match="'<\\|endoftext\\|>' has id 50256, which gpt2.tiktoken already gives"):
        load_tokenizer(tmp_path / "gpt2.tiktoken")
    (tmp_path / "mine.tiktoken").write_text(lines)  # an unknown file with GPT-2's pattern: not GPT-2's size either
    tok = load_tokenizer(tmp_path / "mine.tiktoken", pattern="gpt2")
    assert tok.special_tokens == {} and tok.decode(tok.encode("parable")) == "parable"


@pytest.mark.artifact
def test_tiktoken_pattern_choice_keeps_the_files_special_tokens(tmp_path, monkeypatch, capsys):
    path = artifacts.fetch("cl100k-tiktoken")
    tok = load_tokenizer(path, pattern="gpt2")  # cl100k ranks, GPT-2's split
    assert tok.special_tokens["<|endoftext|>"] == 100257 and "<|fim_prefix|>" in tok.special_tokens
    assert tok.decode(tok.encode("parable")) == "parable"
    shutil.copy(path, tmp_path / "ranks.tiktoken.gz")  # renamed: known by its size when its own pattern is named
    assert load_tokenizer(tmp_path / "ranks.tiktoken.gz", pattern="gpt4").special_tokens == tok.special_tokens
    assert load_tokenizer(tmp_path / "ranks.tiktoken.gz", pattern="gpt2").special_tokens == {}
    monkeypatch.setattr(sys, "stdin", io.StringIO("a<|endoftext|>\n"))
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "ranks.tiktoken.gz"), "--pattern", r"\S+|\s+",
                 "--allow-special"]) == 0
    assert "has no special tokens, so --allow-special changes nothing" in capsys.readouterr().err


# ---- 3: added tokens' lstrip / rstrip / single_word / normalized ---------------------------------
ADDED = [AddedToken("<mask>", lstrip=True, special=True, normalized=False),
         AddedToken("[NEW]", rstrip=True, normalized=False),
         AddedToken("Word", single_word=True, normalized=True),
         AddedToken("both", lstrip=True, rstrip=True, normalized=False),
         AddedToken("sw", single_word=True, lstrip=True, normalized=False),
         AddedToken("ΣΑ", normalized=True)]


def test_added_token_options_match_tokenizers(tmp_path):
    train_bpe([MIXED * 2], 400).save(tmp_path / "base")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "base" / "tokenizer.json"))
    ref.normalizer = normalizers.Lowercase()  # so `normalized` tokens match in lowercased text
    ref.add_tokens(ADDED[1:])
    ref.add_special_tokens(ADDED[:1])
    ref.save(str(tmp_path / "t.json"))
    ours = load_tokenizer(tmp_path / "t.json")
    rng = random.Random(1)
    parts = ["<mask>", "[NEW]", "Word", "word", "WORD", "both", "sw", "ΣΑ", "σα", " ", "  ", "\n", "\u3000", "a", "_",
             "é", "1", ".", "\x1c"]
    texts = ["The capital is <mask>.", "a [NEW]   b", "COVID Word, Words", "x sw swy sw", *(
        "".join(rng.choice(parts) for _ in range(rng.randrange(9))) for _ in range(3000))]
    for text in texts:
        assert ours.encode(text, allowed_special="all") == ref.encode(text, add_special_tokens=False).ids, text
    ours.save(tmp_path / "again.json")  # the options are written back
    assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))["added_tokens"][-6:] == \
        json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["added_tokens"][-6:]


@pytest.mark.artifact
def test_normalized_added_token_in_an_uncased_bert_matches_tokenizers(tmp_path):
    spec = json.loads(artifacts.fetch("minilm-tokenizer").read_text(encoding="utf-8"))
    spec["padding"] = spec["truncation"] = None
    ref = tokenizers.Tokenizer.from_str(json.dumps(spec))
    ref.add_tokens(["covid19"])  # transformers' add_tokens: normalized=True
    ref.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path / "tokenizer.json")
    for text in ["covid19 cases", "COVID19 cases", "Covid19", "precovid19!"]:
        assert ours.encode(text, add_special_tokens=True) == ref.encode(text).ids, text


def test_token_options_of_an_unknown_token_are_refused():
    tok = train_bpe([MIXED], 300)
    with pytest.raises(TokenizerError, match="options apply to special and added tokens"):
        type(tok)(tok.model, special_tokens=tok.special_tokens, token_options={"<nope>": {"lstrip": True}})


# ---- 5 and 8: the CLI reads lines at "\n" and stdin as strict UTF-8 ------------------------------
def test_encode_keeps_one_output_line_per_input_line(monkeypatch, capsys, tmp_path):
    train_bpe([MIXED * 3], 400).save(tmp_path / "tok")
    text = "x = 1\x0cy = 2\nnext\x1dline \u2028 end\r\nlast\x85\n"
    stdin_bytes(monkeypatch, text.encode("utf-8"))
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 3
    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    assert main(["tokenizer", "decode", "--tokenizer", str(tmp_path / "tok")]) == 0
    assert capsys.readouterr().out == text.replace("\r\n", "\n")


def test_encode_refuses_stdin_that_is_not_utf8(monkeypatch, capsys, tmp_path):
    train_bpe([MIXED * 3], 400).save(tmp_path / "tok")
    stdin_bytes(monkeypatch, b"a\xffb\n")
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert "stdin is not valid UTF-8 at byte offset 1" in err and "Traceback" not in err


# ---- 6: WordPiece roles for transformers ---------------------------------------------------------
def test_saved_wordpiece_has_the_bert_roles_transformers_needs(tmp_path):
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling
    train_wordpiece([MIXED * 3], 400).save(tmp_path / "wp")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    assert (hf.cls_token, hf.sep_token, hf.mask_token, hf.unk_token) == ("[CLS]", "[SEP]", "[MASK]", "[UNK]")
    batch = DataCollatorForLanguageModeling(hf, mlm_probability=0.5, return_tensors="pt")([hf("hello world there")])
    assert batch["labels"].shape == batch["input_ids"].shape


# ---- 9: the chat-template keyword ----------------------------------------------------------------
def test_chat_template_keyword_errors_name_the_right_keyword():
    tok = train_bpe([MIXED], 300, special_tokens=["<|endoftext|>"])
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(TokenizerError, match="chat_template=... to apply_chat_template, template=... to render_chat"):
        tok.apply_chat_template(msgs)
    with pytest.raises(TokenizerError, match="takes the template as chat_template="):
        tok.apply_chat_template(msgs, template=DEFAULT_CHAT_TEMPLATE, tokenize=False)
    assert "hi" in tok.apply_chat_template(msgs, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False)


# ---- 10: ids of every integer type, and type errors as type errors -------------------------------
def test_ids_of_numpy_and_torch_integers_decode_in_bpe_and_wordpiece():
    np, torch = pytest.importorskip("numpy"), pytest.importorskip("torch")
    for tok in (train_bpe([MIXED * 2], 400), train_wordpiece([MIXED * 2], 400)):
        ids = tok.encode("Hello world, again", add_special_tokens=True)
        want = tok.decode(ids)
        assert tok.decode(np.array(ids)) == tok.decode(torch.tensor(ids)) == tok.decode(map(np.int64, ids)) == want
        assert tok.decode(torch.tensor(ids), skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
        assert tok.id_to_token(np.int64(ids[0])) == tok.id_to_token(ids[0])


@pytest.mark.parametrize("bad, message", [("64 65", "takes a sequence of int ids, got str"),
                                          ([[64, 65]], "got \\[64, 65\\] of type list, not an integer id"),
                                          ([64.0], "got 64.0 of type float"), ([True], "got True of type bool"),
                                          ([10**6], "outside 0..399: 1000000")])
def test_decode_names_type_and_range_problems(bad, message):
    for tok in (train_bpe([MIXED * 2], 400), train_wordpiece([MIXED * 2], 400)):
        with pytest.raises(TokenizerError, match=message.replace("399", str(tok.vocab_size - 1))):
            tok.decode(bad)


def test_id_to_token_checks_its_id_and_allowed_special_takes_one_name():
    tok = train_bpe([MIXED], 300)
    for i in (-1, tok.vocab_size):
        with pytest.raises(TokenizerError, match=re.escape(f"id_to_token() got an id outside 0..{tok.vocab_size - 1}")):
            tok.id_to_token(i)
    eot = tok.special_tokens["<|endoftext|>"]
    assert tok.encode("a<|endoftext|>", allowed_special="<|endoftext|>")[-1] == eot
    with pytest.raises(TokenizerError, match=r"names \['<nope>'\] that are not special tokens"):
        tok.encode("a", allowed_special="<nope>")


# ---- 11: train options that did nothing ----------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--kind", "wordpiece", "--pattern", "gpt4"], "--pattern applies to --kind bpe"),
    (["--pattern", ""], "pattern '' matches only empty strings"),
    (["--pattern", "(?=a)"], "pattern '\\(\\?=a\\)' matches only empty strings")])
def test_train_refuses_options_it_would_ignore(argv, message, tmp_path, capsys):
    (tmp_path / "c.txt").write_text(MIXED, encoding="utf-8")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "c.txt"), "--vocab-size", "300",
                 "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.artifact
@pytest.mark.parametrize("name", ["gpt2-tiktoken", "smollm2-135m"])
def test_load_tokenizer_takes_the_registry_names_its_error_lists(name):
    """The Python API resolves a registry name as the CLI, from_pretrained and LLM do (it said the file
    'gpt2-tiktoken' did not exist, and to use a registry name)."""
    ref = load_tokenizer(artifacts.fetch(name))
    tok = load_tokenizer(name)
    assert tok.encode(MIXED) == ref.encode(MIXED) and tok.vocab_size == ref.vocab_size


def test_load_tokenizer_does_not_fetch_a_corpus_of_that_name(monkeypatch, tmp_path):
    """Only tokenizer and model names resolve: 'shakespeare' (a corpus) fetched the plays, then failed on them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(artifacts, "fetch", lambda name, **kw: pytest.fail(f"fetched {name}"))
    with pytest.raises(TokenizerError, match="tokenizer file shakespeare does not exist; check the path, or use a "
                                             "registry name: cl100k-tiktoken"):
        load_tokenizer("shakespeare")
