"""Interop: identical ids to `tokenizers` (both directions), `tiktoken`, and real vocabularies."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from llmlab import artifacts, load_tokenizer
from llmlab.tokenizer import train_bpe, train_wordpiece

MIXED = (Path(__file__).parent / "data" / "tokenizer_mixed.txt").read_text(encoding="utf-8")
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# The corpus: the whole mixed file, each of its lines, and edge cases (whitespace runs at the end,
# lone newlines, specials glued to text, digits, an empty string).
CASES = [MIXED, *MIXED.splitlines(), MIXED + "   ", "\n", "  \n\n ", "x<|endoftext|><|endoftext|>y",
         "12345 67 8", "", "don't DON'T it's", "\t\tindented\n\t\tcode"]
# tiktoken's own split patterns, copied from tiktoken_ext/openai_public.py (with its `$`).
TIKTOKEN_PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "cl100k": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}


def corpus() -> list[str]:
    return [(STDLIB / f).read_text(encoding="utf-8") for f in ("textwrap.py", "shlex.py", "glob.py")] + [MIXED] * 2


def assert_same_ids(ours, ref: tokenizers.Tokenizer, add_special_tokens: bool = False):
    for text in CASES:
        got = ours.encode(text, allowed_special="all", add_special_tokens=add_special_tokens)
        want = ref.encode(text, add_special_tokens=add_special_tokens).ids
        assert got == want, f"ids differ on {text[:60]!r}"


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_llmlab_bpe_file_loads_in_tokenizers(tmp_path, pattern):
    tok = train_bpe(corpus(), 700, pattern=pattern)
    tok.save(tmp_path / "tok")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    assert_same_ids(tok, ref)
    assert ref.decode(tok.encode(MIXED, allowed_special="all"), skip_special_tokens=False) == MIXED
    again = load_tokenizer(tmp_path / "tok")  # and back: the same tokenizer, with its config
    assert again.encode(MIXED, allowed_special="all") == tok.encode(MIXED, allowed_special="all")
    assert (again.eos_token, again.chat_template) == (tok.eos_token, tok.chat_template)


def test_tokenizers_bpe_file_loads_in_llmlab(tmp_path):
    ref = tokenizers.Tokenizer(models.BPE())
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ref.decoder = decoders.ByteLevel()
    ref.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ref.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path / "tokenizer.json")
    assert ours.vocab_size == ref.get_vocab_size()
    assert_same_ids(ours, ref)
    assert ours.decode(ref.encode(MIXED).ids) == MIXED


def test_llmlab_wordpiece_file_loads_in_tokenizers(tmp_path):
    tok = train_wordpiece(corpus(), 600)
    tok.save(tmp_path / "wp.json")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "wp.json"))
    assert_same_ids(tok, ref, add_special_tokens=True)
    ids = tok.encode("Hello, world!", add_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids)


def test_tokenizers_wordpiece_file_loads_in_llmlab(tmp_path):
    from tokenizers import normalizers, processors
    ref = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    ref.normalizer = normalizers.BertNormalizer(lowercase=True)
    ref.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ref.decoder = decoders.WordPiece()
    ref.train_from_iterator(corpus(), trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    ref.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ref.token_to_id("[CLS]")), ("[SEP]", ref.token_to_id("[SEP]"))])
    ref.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    assert_same_ids(ours, ref, add_special_tokens=True)


@pytest.mark.artifact
@pytest.mark.parametrize("name", ["gpt2", "cl100k"])
def test_real_ranks_match_tiktoken(name):
    import tiktoken
    tok = load_tokenizer(artifacts.fetch(f"{name}-tiktoken"), pattern=name)
    enc = tiktoken.Encoding(name, pat_str=TIKTOKEN_PATTERNS[name], mergeable_ranks=tok.model.vocab,
                            special_tokens=tok.special_tokens)
    for text in CASES + [(STDLIB / "textwrap.py").read_text(encoding="utf-8")]:
        assert tok.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all"), text[:60]
    # golden ids: a real vocabulary, not just agreement
    if name == "gpt2":
        assert tok.encode("Hello world") == [15496, 995]
    else:
        assert tok.encode("Hello world") == [9906, 1917]
    assert tok.decode(tok.encode(MIXED, allowed_special="all")) == MIXED


@pytest.mark.artifact
def test_gpt2_ranks_saved_as_tokenizer_json_match_tiktoken(tmp_path):
    import tiktoken
    tok = load_tokenizer(artifacts.fetch("gpt2-tiktoken"), pattern="gpt2")
    tok.save(tmp_path / "gpt2.json")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "gpt2.json"))
    enc = tiktoken.Encoding("gpt2", pat_str=TIKTOKEN_PATTERNS["gpt2"], mergeable_ranks=tok.model.vocab,
                            special_tokens=tok.special_tokens)
    for text in CASES:
        assert ref.encode(text).ids == enc.encode(text, allowed_special="all"), text[:60]


@pytest.mark.artifact
def test_minilm_tokenizer_json_and_vocab_txt_match_tokenizers():
    path = artifacts.fetch("minilm-tokenizer")
    ref = tokenizers.Tokenizer.from_file(str(path))
    ref.no_padding()  # its tokenizer.json pads every encoding to 128; llmlab never pads
    ref.no_truncation()
    from_json, from_vocab = load_tokenizer(path), load_tokenizer(artifacts.fetch("minilm-vocab"))
    assert from_json.vocab_size == from_vocab.vocab_size == 30522
    assert_same_ids(from_json, ref, add_special_tokens=True)
    assert_same_ids(from_vocab, ref, add_special_tokens=True)
    assert from_json.encode("This is an example sentence", add_special_tokens=True) == \
        [101, 2023, 2003, 2019, 2742, 6251, 102]
    ids = ref.encode("Hello, world! It's a café.").ids
    assert from_json.decode(ids, skip_special_tokens=True) == ref.decode(ids)


def smollm2_reference(with_specials: bool = True) -> tokenizers.Tokenizer:
    """SmolLM2's GGUF vocabulary and merges rebuilt as a `tokenizers` BPE: llama.cpp's "smollm"
    pre-tokenizer is HF's Digits(individual) + ByteLevel; `with_specials` adds its control tokens."""
    import gguf
    f = gguf.GGUFReader(str(artifacts.fetch("smollm2-135m"))).fields
    strings = lambda key: [bytes(f[key].parts[i]).decode("utf-8") for i in f[key].data]  # noqa: E731
    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    ref = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)},
                                          [tuple(m.split(" ", 1)) for m in merges]))
    ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    ref.decoder = decoders.ByteLevel()
    if with_specials:
        ref.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == 3])
    return ref


@pytest.mark.artifact
def test_smollm2_gguf_vocab_matches_tokenizers_rebuild():
    ours, ref = load_tokenizer(artifacts.fetch("smollm2-135m")), smollm2_reference()
    assert ours.vocab_size == 49152
    assert (ours.bos_token, ours.eos_token) == ("<|im_start|>", "<|im_end|>")
    cases = [c.replace("<|endoftext|>", "<|im_end|>") for c in CASES] + ["<|im_start|>user\nHi 2024!<|im_end|>"]
    for text in cases:
        assert ours.encode(text, allowed_special="all") == ref.encode(text).ids, text[:60]
    assert ours.decode(ours.encode(MIXED)) == MIXED


@pytest.mark.parametrize("add_bos", [True, False])
def test_gguf_add_bos_token_puts_a_bos_before_text_as_llama_cpp(tmp_path, add_bos):
    """A Llama GGUF says tokenizer.ggml.add_bos_token = true: encode(..., add_special_tokens=True) (what LLM.generate
    uses for text) starts with its BOS, as llama.cpp's tokenizer does; with false, none."""
    gguf = pytest.importorskip("gguf")
    from llmlab.tokenizer import load_tokenizer
    from llmlab.tokenizer.bpe import bytes_to_unicode

    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + ["hi", "<s>", "</s>"]
    w = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * 257 + [3, 3])
    w.add_token_merges(["h i"])
    w.add_bos_token_id(257)
    w.add_eos_token_id(258)
    w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = load_tokenizer(tmp_path / "tok.gguf")
    assert tok.encode("hi") == [256]
    assert tok.encode("hi", add_special_tokens=True) == ([257] if add_bos else []) + [256]
