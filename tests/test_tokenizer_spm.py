"""SentencePiece BPE tokenizers (Llama-2 / Mistral / TinyLlama): `tokenizer.model` read by llmlab itself, the two
`tokenizer.json` layouts found in the wild, and llama.cpp GGUF vocabularies, each checked id for id against its
reference implementation.

References: a `.model` file encodes as `sentencepiece` does (dummy prefix "▁", no BOS unless add_special_tokens), a
`tokenizer.json` as `tokenizers` does (which differs from sentencepiece in places, see `test_json_layout_b_*`), a
GGUF as sentencepiece on the same pieces. Small models are trained here in a few milliseconds; the real Mistral
tokenizers (32,000 and 32,768 pieces) are `artifact` tests.

Models trained here:
- "bpe": BPE, byte fallback, identity normalizer, split digits, two user-defined symbols ("[REF]", "<tool>");
- "llama_ws": "bpe" with whitespace-only pieces "▁▁", "▁▁▁▁" inserted after the byte pieces with score -1e9, as in
  Llama-2's and Mistral's tokenizer.model (merged last by sentencepiece, whatever their id);
- "collapse": trained with remove_extra_whitespaces=True (sentencepiece's default), which encoding must honour;
- "unigram" and "nfkc" (default nmt_nfkc normalization, a precompiled charsmap): llmlab refuses both.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from functools import cache
from pathlib import Path

import pytest

spm = pytest.importorskip("sentencepiece")
pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
tokenizers = pytest.importorskip("tokenizers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llmlab import artifacts, load_tokenizer  # noqa: E402
from llmlab.errors import TokenizerError  # noqa: E402
from llmlab.kernels import cbuild  # noqa: E402
from llmlab.tokenizer import cencode  # noqa: E402

# saving a vocabulary with user-defined pieces warns that tokenizer.json lists them as added tokens (a format limit,
# tested in test_tokenizer_spm_model.py); the round trips here leave those texts out
pytestmark = pytest.mark.filterwarnings("ignore:this tokenizer has .* user-defined pieces")

# ---- text ---------------------------------------------------------------------------------------------------------

_PARAGRAPH = (
    "The committee met on Tuesday to review the 2023 budget, which had grown by 12.5% since the previous year. "
    "Several members objected:  \"we cannot keep spending like this\", one said, while another pointed out that "
    "the new library (opened in March) already served 3,400 readers a week.\n\t- item one\n\t- item two\n"
    "Meanwhile the engineers rewrote the parser in   three   days; its tokenizer now handles tabs\tand\ttabs, "
    "naïve café façades, Ελληνικά, русский текст, 日本語の文章, 中文句子，以及 emoji 🙂🚀 without trouble.\n"
)
LONG = _PARAGRAPH * 8  # ~4 KB in one string: merges on long inputs
# Hypothesis runs that repeat exactly (derandomized, no example database): a failure is the same failure next time.
REPRODUCIBLE = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def texts(pieces: list[str], max_size: int, **characters):
    """Random text: any characters but lone surrogates (sentencepiece cannot take them), mixed with `pieces`."""
    return st.lists(st.one_of(st.characters(blacklist_categories=("Cs",), **characters), st.sampled_from(pieces)),
                    max_size=max_size).map("".join)

CASES = [
    "", " ", "Hello world", "  leading spaces", "trailing  ", "tabs\tand\nnewlines\n\n", "multiple    spaces",
    "def f(x):\n    return x**2\n", "class A:\n\tdef g(self):\n\t\tpass\n", "你好，世界。今天天气很好",
    "🙂👍🏽 family: 👨\u200d👩\u200d👧", "\u0b85 ᚠ 𝔘𝔫𝔦", "mixed: café naïve 東京 🙂 x=1\t# done", "12345 3.14159",
    "1234567890", LONG, "literal <s> and </s> in text", "<s>hello</s>", "a ▁ b ▁▁c ▁", "▁leading block", "▁",
    "\n", "   ", "x", " x", "  x", "    x", "x ", "x\u00a0y\u3000z", "\r\n", "zero\u200bwidth", "\x00\x01\x7f",
    "\ufeffbom", "a" * 300, " " * 40 + "deep indent", "ab" * 50, "\t\t\n \n\t ", "a line ending in a space \n",
]
# text with the small models' user-defined symbols, which sentencepiece always matches as whole pieces
USER_CASES = ["see [REF] here", "[REF]x", "a<tool>b", "<tool>", " [REF] ", "[REF][REF]", "x [REF]", "[REF"]
# text with the control pieces' spelling
SPECIAL_CASES = ["<s>hello</s>", "literal <s> and </s> in text", "a<s>b", "</s>", "<s> x", "x</s><s>y"]

_TRAIN_TEXT = [
    _PARAGRAPH,
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "Hello world, this is a small corpus for testing the SentencePiece BPE reader.",
    "def f(x):\n    return x**2\n\nfor i in range(10):\n    print(i, f(i))\n",
    "class Model:\n\tdef __init__(self):\n\t\tself.layers = []\n\t\tself.size = 4096\n",
    "if (a > b) {\n        return a;\n    } else {\n        return b;\n    }",
    "multiple    spaces   and   runs     of     blanks", "Numbers 12345, 678, 3.14159 and 2024-01-01 09:30.",
    "你好，世界。今天天气很好。我们在测试分词器，中文文本需要正确处理。", "東京は日本の首都です。",
    "Emoji 🙂 are fun 👍 and 🚀 goes to the moon 🙂🙂",
    "see [REF] for details; the <tool> call returns [REF] again",
    "Tokenization with byte fallback works on rare characters, encoding and decoding.",
    "Ελληνικά γράμματα και русский язык тоже.",
]


def _train(**kw) -> bytes:
    out = io.BytesIO()
    args = dict(sentence_iterator=iter(_TRAIN_TEXT * 20), model_writer=out, model_type="bpe", vocab_size=700,
                byte_fallback=True, normalization_rule_name="identity", character_coverage=0.9995,
                add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True, hard_vocab_limit=False,
                user_defined_symbols=["[REF]", "<tool>"], max_sentence_length=100000, minloglevel=2, num_threads=1)
    args.update(kw)
    spm.SentencePieceTrainer.train(**args)
    return out.getvalue()


def _with_llama_whitespace(model: bytes) -> bytes:
    """Llama-2/Mistral's hand-added whitespace pieces: low ids, score -1e9 (sentencepiece merges them last)."""
    m = pb.ModelProto()
    m.ParseFromString(model)
    first_normal = next(i for i, p in enumerate(m.pieces) if p.type == pb.ModelProto.SentencePiece.NORMAL)
    pieces = [copy.deepcopy(p) for p in m.pieces]
    assert not {"▁▁", "▁▁▁▁"} & {p.piece for p in pieces}
    added = []
    for s in ("▁▁", "▁▁▁▁"):
        p = pb.ModelProto.SentencePiece()
        p.piece, p.score, p.type = s, -1e9, pb.ModelProto.SentencePiece.NORMAL
        added.append(p)
    pieces[first_normal:first_normal] = added
    del m.pieces[:]
    m.pieces.extend(pieces)
    return m.SerializeToString()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """name -> a directory holding only tokenizer.model."""
    root = tmp_path_factory.mktemp("spm")
    bpe = _train()
    blobs = {
        "bpe": bpe,
        "llama_ws": _with_llama_whitespace(bpe),
        "collapse": _train(remove_extra_whitespaces=True),
        "unigram": _train(model_type="unigram"),
        "nfkc": _train(normalization_rule_name="nmt_nfkc"),
    }
    paths = {}
    for name, blob in blobs.items():
        (root / name).mkdir()
        (root / name / "tokenizer.model").write_bytes(blob)
        paths[name] = root / name
    # the references are what we think they are
    sp = _sp(paths["bpe"] / "tokenizer.model")
    assert sp.encode("ᚠ", out_type=str)[-3:] == ["<0xE1>", "<0x9A>", "<0xA0>"]  # byte fallback is exercised
    assert sp.encode("see [REF]", out_type=str)[-1] == "[REF]"
    ws = _sp(paths["llama_ws"] / "tokenizer.model")
    assert ws.piece_to_id("▁▁") < ws.piece_to_id("▁t") and ws.encode("x  the", out_type=str) == ["▁x", "▁", "▁the"]
    assert _sp(paths["collapse"] / "tokenizer.model").encode("  a   b  ") == sp.encode("a b")
    return paths


@cache
def _sp(path: Path):
    return spm.SentencePieceProcessor(model_file=str(path))


def _model_file(d: Path) -> Path:
    return d / "tokenizer.model" if d.is_dir() else d


def _ref_model(d: Path):
    m = pb.ModelProto()
    m.ParseFromString(_model_file(d).read_bytes())
    return m


# ---- tokenizer.json layouts ---------------------------------------------------------------------------------------

LEGACY_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
BOS_TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
}


def _added(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


# Llama-2's tokenizer_config.json on the Hub (bos/eos as AddedToken dicts)
LLAMA2_CONFIG = {"add_bos_token": True, "add_eos_token": False, "bos_token": _added("<s>"),
                 "clean_up_tokenization_spaces": False, "eos_token": _added("</s>"), "legacy": True,
                 "model_max_length": 1000000000000000019884624838656, "pad_token": None, "sp_model_kwargs": {},
                 "tokenizer_class": "LlamaTokenizer", "unk_token": _added("<unk>")}


def score_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Merges ranked by the merged piece's score (as transformers' converter did for the Hub's Llama-2 files):
    every split of a piece into two vocabulary pieces, highest score first."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def layout_b(model_dir: Path, out: Path) -> Path:
    """What transformers 5 writes for a tokenizer.model: Metaspace(prepend_scheme="first") pre-tokenizer, no
    normalizer, merges ranked by id, no BOS in the post-processor."""
    import transformers

    transformers.LlamaTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["normalizer"] is None and spec["pre_tokenizer"]["type"] == "Metaspace"
    assert spec["pre_tokenizer"]["prepend_scheme"] == "first" and spec["model"]["byte_fallback"]
    assert [d["type"] for d in spec["decoder"]["decoders"]] == ["Replace", "ByteFallback", "Fuse", "Strip"]
    return out / "tokenizer.json"


def layout_a(b_json: Path, sp, out: Path) -> Path:
    """The legacy layout of Llama-2 / TinyLlama / Mistral v0.1 on the Hub, made from layout b: Prepend+Replace
    normalizer, no pre-tokenizer, "<s> $A" template, unk_token "<unk>", merges ranked by score as "a b" strings."""
    spec = json.loads(b_json.read_text(encoding="utf-8"))
    spec["normalizer"] = copy.deepcopy(LEGACY_NORMALIZER)
    spec["pre_tokenizer"] = None
    spec["post_processor"] = copy.deepcopy(BOS_TEMPLATE)
    spec["model"]["unk_token"] = "<unk>"
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    spec["model"]["merges"] = [f"{a} {b}" for a, b in score_merges(spec["model"]["vocab"], scores)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(LLAMA2_CONFIG), encoding="utf-8")
    return out / "tokenizer.json"


def _plain(text: str) -> bool:
    """No added/special token spelling in it."""
    return not any(t in text for t in ("<s>", "</s>", "[REF]", "<tool>", "[INST]", "[/INST]", "[REFERENCE_DOC"))


@cache
def json_files(model_dir: Path) -> dict[str, Path]:
    """{"a": legacy tokenizer.json, "b": transformers' tokenizer.json} for a directory with tokenizer.model; the
    references are checked against sentencepiece where they are meant to agree with it."""
    sp = _sp(model_dir / "tokenizer.model")
    b = layout_b(model_dir, model_dir.parent / f"{model_dir.name}_b")
    a = layout_a(b, sp, model_dir.parent / f"{model_dir.name}_a")
    ra, rb = tokenizers.Tokenizer.from_file(str(a)), tokenizers.Tokenizer.from_file(str(b))
    normal = [p.score for p in _ref_model(model_dir).pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    ordered = all(x >= y for x, y in zip(normal, normal[1:]))  # ids ranked as scores: merges by id == by score
    for text in CASES:
        if not _plain(text):
            continue
        want = sp.encode(text)
        assert ra.encode(text, add_special_tokens=False).ids == want, f"reference a != sentencepiece on {text!r}"
        assert ra.encode(text).ids == [1] + want
        # Metaspace(prepend_scheme="first") does not prepend "▁" to text that starts with one (or a space), and
        # transformers ranks merges by id: it agrees with sentencepiece only elsewhere, and on score-ordered vocabs
        if ordered and not text.startswith((" ", "▁")):
            assert rb.encode(text, add_special_tokens=False).ids == want, f"reference b != sentencepiece on {text!r}"
        assert ra.decode(want) == sp.decode(want)
    return {"a": a, "b": b}


def _diff(ids_got, ids_want, sp=None, who="llmlab") -> str:
    """A readable message for an id mismatch: the first difference, with pieces."""
    k = next((i for i, (x, y) in enumerate(zip(ids_got, ids_want)) if x != y), min(len(ids_got), len(ids_want)))
    piece = (lambda i: sp.id_to_piece(i)) if sp is not None else (lambda i: i)
    return (f"first difference at {k}: {who} {ids_got[k:k + 6]} {[piece(i) for i in ids_got[k:k + 6]]} vs "
            f"reference {ids_want[k:k + 6]} {[piece(i) for i in ids_want[k:k + 6]]}")


def _check_against_sp(tok, sp, texts, **kw):
    bad = []
    for text in texts:
        got, want = tok.encode(text, **kw), sp.encode(text)
        if got != want:
            bad.append(f"{text[:50]!r}: {_diff(got, want, sp, getattr(tok, 'who', 'llmlab'))}")
    assert not bad, f"{len(bad)} texts encode differently from sentencepiece:\n" + "\n".join(bad[:8])


def _check_against_tokenizers(tok, ref, texts, add_special_tokens=False):
    bad = []
    for text in texts:
        got = tok.encode(text, allowed_special="all", add_special_tokens=add_special_tokens)
        want = ref.encode(text, add_special_tokens=add_special_tokens).ids
        if got != want:
            bad.append(f"{text[:50]!r}: {_diff(got, want, _Pieces(ref))}")
    assert not bad, f"{len(bad)} texts encode differently from tokenizers:\n" + "\n".join(bad[:8])


class _Pieces:
    def __init__(self, ref):
        self.ref = ref

    def id_to_piece(self, i):
        return self.ref.id_to_token(i)


# ---- tokenizer.model ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bpe", "llama_ws", "collapse"])
def test_model_file_encodes_as_sentencepiece(models, name):
    """ids == sentencepiece's on the corpus; special-token spellings are text by default; add_special_tokens=True
    prepends BOS."""
    path = models[name] / "tokenizer.model"
    tok, sp = load_tokenizer(path), _sp(path)
    _check_against_sp(tok, sp, CASES + SPECIAL_CASES)
    for text in ["Hello world", "", " x", "<s>"]:
        assert tok.encode(text, add_special_tokens=True) == [sp.bos_id()] + sp.encode(text)
    assert tok.vocab_size == sp.get_piece_size()
    assert tok.byte_level is True


@pytest.mark.parametrize("name", ["bpe", "llama_ws", "collapse"])
def test_model_file_decodes_as_sentencepiece(models, name):
    """decode == sentencepiece's decode (leading dummy space removed, byte pieces joined); round trips where
    sentencepiece round-trips; special ids are dropped with skip_special_tokens."""
    path = models[name] / "tokenizer.model"
    tok, sp = load_tokenizer(path), _sp(path)
    bos, eos = sp.bos_id(), sp.eos_id()
    for text in CASES:
        ids = sp.encode(text)
        want = sp.decode(ids)
        assert tok.decode(ids) == want, f"decode of {text[:40]!r}: {tok.decode(ids)!r} != {want!r}"
        if want == text:
            assert tok.decode(tok.encode(text)) == text
        assert tok.decode([bos, *ids, eos], skip_special_tokens=True) == want
    # piece by piece too: each ordinary id alone
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)):
            assert tok.decode([i]) == sp.decode([i]), f"id {i} {sp.id_to_piece(i)!r}"


@pytest.mark.parametrize("name", ["bpe", "llama_ws"])
def test_model_file_prints_special_tokens_as_transformers_does(models, name):
    """A special token kept in the text (skip_special_tokens=False) is followed by the next word's space, as in
    transformers' and llama.cpp's decode ("<s> Hello"); sentencepiece itself never prints a control piece."""
    path = models[name] / "tokenizer.model"
    tok, sp, ref = load_tokenizer(path), _sp(path), _ref_json(json_files(models[name])["b"])
    bos, eos = sp.bos_id(), sp.eos_id()
    for text in ("Hello world", " two  spaces", "ᚠ bytes", "x"):
        ids = [bos, *sp.encode(text), eos, *sp.encode(text)]
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False), text
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids), text
    assert tok.decode([bos, *sp.encode("Hello")]) == "<s> Hello"


def _byte(sp, b: int) -> int:
    return sp.piece_to_id(f"<0x{b:02X}>")


@settings(max_examples=150, **REPRODUCIBLE)
@given(data=st.data())
def test_model_file_decodes_any_ids_as_sentencepiece(models, data):
    """Any ordinary ids (what a model may generate: normal, user-defined and byte pieces in any order, a character
    cut short, a byte piece first) decode as sentencepiece decodes them."""
    path = models["llama_ws"] / "tokenizer.model"
    sp = _sp(path)
    pieces = [i for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    utf8 = [_byte(sp, b) for b in (0x20, 0x41, 0xE1, 0x9A, 0xA0, 0xF0, 0x9F, 0x99, 0x82, 0xC3, 0xA9, 0xFF)]
    ids = data.draw(st.lists(st.one_of(st.sampled_from(pieces), st.sampled_from(utf8)), max_size=12))
    assert _loaded(path).decode(ids) == sp.decode(ids), [sp.id_to_piece(i) for i in ids]


@pytest.mark.parametrize("pieces", [["<0xE1>", "<0x9A>"], ["<0x20>", "▁the"], ["<0xFF>", "<0x41>"],
                                    ["<0xE1>", "▁the", "<0x9A>", "<0xA0>"], ["▁▁", "▁the"], ["er", "▁the"]])
def test_model_file_decodes_byte_pieces_as_sentencepiece(models, pieces):
    """The named cases behind the property above: a cut character (sentencepiece writes one U+FFFD per byte), a
    space byte piece first (sentencepiece strips only a "▁" of the first piece)."""
    path = models["llama_ws"] / "tokenizer.model"
    sp = _sp(path)
    ids = [sp.piece_to_id(p) for p in pieces]
    assert _loaded(path).decode(ids) == sp.decode(ids)


@pytest.mark.parametrize("name", ["bpe", "llama_ws", "collapse"])
def test_model_file_user_defined_symbols(models, name):
    """User-defined pieces ("[REF]", Mistral v3's [REFERENCE_DOC_n]) are ordinary text that sentencepiece always
    cuts out whole, from the normalized text: the dummy "▁" goes once at the start of the text (before a symbol
    that starts it too), and text right after a symbol gets no "▁" of its own."""
    path = models[name] / "tokenizer.model"
    tok, sp = load_tokenizer(path), _sp(path)
    assert "[REF]" not in tok.special_tokens and "<tool>" not in tok.special_tokens
    _check_against_sp(tok, sp, USER_CASES)
    for text in USER_CASES:
        ids = sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids), text
        assert tok.decode_bytes(ids) == sp.normalize(text).replace("▁", " ").encode("utf-8"), text


@pytest.mark.parametrize("kind", ["model", "json_a", "json_b", "gguf"])
def test_token_strings_are_pieces(models, tmp_path, kind):
    """id_to_token / token_to_id speak the file's own spelling: sentencepiece pieces ("▁the", "<0xE4>", "<s>")."""
    model_file = models["llama_ws"] / "tokenizer.model"
    sp = _sp(model_file)
    src = {"model": lambda: model_file, "json_a": lambda: json_files(models["llama_ws"])["a"],
           "json_b": lambda: json_files(models["llama_ws"])["b"],
           "gguf": lambda: write_gguf(model_file, tmp_path / "t.gguf")}[kind]()
    tok = load_tokenizer(src)
    assert tok.vocab_size == sp.get_piece_size()
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        assert tok.id_to_token(i) == piece, i
        assert tok.token_to_id(piece) == i, piece


def test_model_file_special_tokens(models):
    """Control pieces are special tokens: recognised in text only with allowed_special; <s>/</s> are bos/eos."""
    path = models["bpe"] / "tokenizer.model"
    tok, sp = load_tokenizer(path), _sp(path)
    assert (tok.bos_token, tok.eos_token, tok.bos_id, tok.eos_id) == ("<s>", "</s>", sp.bos_id(), sp.eos_id())
    assert tok.special_tokens["<s>"] == 1 and tok.special_tokens["</s>"] == 2
    assert "[REF]" not in tok.special_tokens  # user-defined: ordinary text that is always one piece
    ids = tok.encode("<s>hello</s>", allowed_special="all")
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1] and 2 not in ids[1:-1]
    assert tok.decode(ids[1:-1]).strip() == "hello"
    assert 1 not in tok.encode("<s>hello</s>") and 2 not in tok.encode("<s>hello</s>")
    assert tok.encode("<s>hello</s>") == sp.encode("<s>hello</s>")


def test_model_file_remove_extra_whitespaces(models):
    """remove_extra_whitespaces=True: runs of spaces collapse and the ends are stripped before encoding."""
    path = models["collapse"] / "tokenizer.model"
    tok, sp = load_tokenizer(path), _sp(path)
    for text in ["  a   b  ", "   ", "x    y", " \t x  \n  y ", "multiple    spaces"]:
        assert tok.encode(text) == sp.encode(text), text
    assert tok.encode("  hello    world  ") == tok.encode("hello world")
    assert tok.encode("   ") == []


@settings(max_examples=200, **REPRODUCIBLE)
@given(text=texts(list(" ▁\t\nab你🙂ᚠ1") + ["<s>", "the", "  ", "\u2581\u2581"], 40))
def test_random_text_encodes_as_sentencepiece(models, text):
    """Random text (no lone surrogates: llmlab replaces those with U+FFFD, sentencepiece cannot take them), in
    Python and through the C encoder."""
    for name in ("bpe", "llama_ws"):
        path = models[name] / "tokenizer.model"
        want = _sp(path).encode(text)
        for tok in (_loaded(path), _loaded_c(path)):
            got = tok.encode(text)
            assert got == want, f"{name}, C {tok is _loaded_c(path)}: {text!r}: {_diff(got, want, _sp(path))}"


@cache
def _loaded(path: Path):
    return load_tokenizer(path)


@cache
def _loaded_c(path: Path):
    """The tokenizer with its C encoder on from the first text (cencode.py; it starts after 64 KB otherwise)."""
    tok = load_tokenizer(path)
    if cbuild.compiler() is not None:
        assert tok._fast is not None, "SentencePiece-style BPE with byte fallback should get the C encoder"
        tok._fast._work = cencode.WARMUP
    return tok


@settings(max_examples=150, **REPRODUCIBLE)
@given(text=texts([" ", "  ", "\t", "\n", "a", "the", "\u3000", "\xa0"], 30, blacklist_characters="\u2581"))
def test_random_text_encodes_as_sentencepiece_removing_extra_whitespace(models, text):
    """remove_extra_whitespaces=True on random text (without a literal "▁", which sentencepiece strips at the end
    only: see CASES)."""
    path = models["collapse"] / "tokenizer.model"
    want = _sp(path).encode(text)
    for tok in (_loaded(path), _loaded_c(path)):
        got = tok.encode(text)
        assert got == want, f"C {tok is _loaded_c(path)}: {text!r}: {_diff(got, want, _sp(path))}"


@settings(max_examples=100, **REPRODUCIBLE)
@given(text=st.lists(st.sampled_from(["[REF]", "<tool>", " ", "  ", "a", "the", "x", "▁", "\n", "ᚠ", "[RE", "F]"]),
                     max_size=12).map("".join))
def test_random_text_with_user_defined_symbols_encodes_as_sentencepiece(models, text):
    path = models["llama_ws"] / "tokenizer.model"
    want = _sp(path).encode(text)
    for tok in (_loaded(path), _loaded_c(path)):
        got = tok.encode(text)
        assert got == want, f"C {tok is _loaded_c(path)}: {text!r}: {_diff(got, want, _sp(path))}"


def test_lone_surrogates_become_replacement_character(models):
    path = models["bpe"] / "tokenizer.model"
    tok, sp = _loaded(path), _sp(path)
    assert tok.encode("a\ud800b") == sp.encode("a\ufffdb")


def test_model_file_names_and_directory(models, tmp_path):
    """tokenizer.model.v1 / *.model.v3 names load; a directory with only tokenizer.model loads it; a directory with
    tokenizer.json too prefers tokenizer.json (layout b differs from sentencepiece on a leading space)."""
    src = models["bpe"] / "tokenizer.model"
    sp = _sp(src)
    want = sp.encode("Hello  world 你好")
    for name in ("tokenizer.model.v1", "mistral_instruct_tokenizer_240323.model.v3", "spm.model"):
        shutil.copy(src, tmp_path / name)
        assert load_tokenizer(tmp_path / name).encode("Hello  world 你好") == want, name
    assert load_tokenizer(models["bpe"]).encode("Hello  world 你好") == want
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(src, both / "tokenizer.model")
    b = json_files(models["bpe"])["b"]
    shutil.copy(b, both / "tokenizer.json")
    ref = tokenizers.Tokenizer.from_file(str(b))
    assert ref.encode(" x", add_special_tokens=False).ids != sp.encode(" x")  # the two are told apart
    assert load_tokenizer(both).encode(" x") == ref.encode(" x", add_special_tokens=False).ids


def test_token_bytes(models):
    """Each token's exact bytes ("▁" -> b" ", "<0xE4>" -> b"\\xe4"); joined, the ids of a text give the UTF-8 of
    the normalized text (its leading dummy space included)."""
    path = models["llama_ws"] / "tokenizer.model"
    tok, sp = load_tokenizer(path), _sp(path)
    assert tok.byte_level is True
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            assert tok.token_bytes(i) == bytes([int(piece[3:5], 16)]), piece
        elif not (sp.is_control(i) or sp.is_unknown(i)):
            assert tok.token_bytes(i) == piece.replace("▁", " ").encode("utf-8"), piece
    for text in CASES:
        ids = tok.encode(text)
        assert b"".join(tok.token_bytes(i) for i in ids) == sp.normalize(text).replace("▁", " ").encode("utf-8")
        assert tok.decode_bytes(ids) == sp.normalize(text).replace("▁", " ").encode("utf-8")


def test_detokenizer_streams_byte_fallback(models):
    """The engine's streaming detokenizer, fed one id at a time: never a broken character, and the text of a
    continuation keeps its first token's leading space."""
    from llmlab.engine import SamplingParams
    from llmlab.engine.output import Detokenizer

    path = models["bpe"] / "tokenizer.model"
    tok, sp = load_tokenizer(path), _sp(path)
    assert sum(map(sp.is_byte, sp.encode("ᚠ 𝔘𝔫𝔦 and \u0b85"))) >= 8  # characters cut into byte pieces
    for text in ["ᚠ 𝔘𝔫𝔦 and \u0b85", "你好，世界 🙂👍🏽", "Hello world", "  two spaces", LONG[:600]]:
        ids = sp.encode(text)
        d = Detokenizer(tok, SamplingParams())
        shown = []
        for i in ids + [sp.eos_id()]:  # a final </s> is skipped (skip_special_tokens)
            d.add(i)
            shown.append(d.text)
        d.flush()
        assert all("\ufffd" not in s for s in shown), text
        assert all(b.startswith(a) for a, b in zip(shown, shown[1:]))
        assert d.text == " " + text == " " + sp.decode(ids)


def _random_texts(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    alphabet = [" ", "  ", "    ", "\t", "\n", "a", "the", "The", "x", "▁", "ᚠ", "你好", "🙂", "1", "23", "é", "ing",
                "\u3000", "[REF]", "<tool>", "<s>", "▁▁", "def", "(", ":"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def test_c_merge_loop_encodes_as_sentencepiece(models, monkeypatch):
    """llmlab's C merge loop (used once a tokenizer has done cmerge.WARMUP merge work in Python) against the
    references directly, from the first merge: .model and GGUF as sentencepiece, tokenizer.json as tokenizers."""
    from llmlab.kernels import cbuild
    from llmlab.tokenizer import cmerge

    if cbuild.compiler() is None:
        pytest.skip("no C compiler: llmlab runs the Python merge loop only")
    monkeypatch.setattr(cmerge, "WARMUP", 0)
    texts = CASES + SPECIAL_CASES + USER_CASES + _random_texts(300)
    for name in ("bpe", "llama_ws", "collapse"):
        path = models[name] / "tokenizer.model"
        for src in (path, write_gguf(path, models[name].parent / f"{name}_c.gguf")):
            tok = load_tokenizer(src)
            _check_against_sp(tok, _sp(path), texts)
            assert tok.model._c._table is not None, "the C merge loop did not run"
    for layout in ("a", "b"):
        path = json_files(models["llama_ws"])[layout]
        tok = load_tokenizer(path)
        _check_against_tokenizers(tok, _ref_json(path), texts)
        assert tok.model._c._table is not None, "the C merge loop did not run"


# ---- errors -------------------------------------------------------------------------------------------------------

def test_unigram_model_is_refused(models):
    assert _ref_model(models["unigram"]).trainer_spec.model_type == pb.TrainerSpec.UNIGRAM
    with pytest.raises(TokenizerError, match=r"(?i)unigram"):
        load_tokenizer(models["unigram"] / "tokenizer.model")
    with pytest.raises(TokenizerError, match=r"(?i)unigram"):
        load_tokenizer(models["unigram"])


def test_precompiled_charsmap_normalizer_is_refused(models):
    assert len(_ref_model(models["nfkc"]).normalizer_spec.precompiled_charsmap) > 0
    with pytest.raises(TokenizerError, match=r"(?i)normaliz|charsmap|nfkc|identity"):
        load_tokenizer(models["nfkc"] / "tokenizer.model")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_model_file_is_refused(models, tmp_path, damage):
    good = (models["bpe"] / "tokenizer.model").read_bytes()
    blob = {"truncated": good[: len(good) // 2], "garbage": b"\x8f\xff not a model \x00\x01" * 50, "empty": b""}[damage]
    path = tmp_path / "tokenizer.model"
    path.write_bytes(blob)
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path)
    assert len(str(e.value)) > 20


# ---- tokenizer.json -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["a", "b"])
@pytest.mark.parametrize("name", ["bpe", "llama_ws"])
def test_json_layouts_encode_as_tokenizers(models, name, layout):
    """Both real-world layouts: ids == tokenizers' with and without add_special_tokens (layout a adds <s>, the
    file transformers 5 writes adds nothing); specials are recognised with allowed_special="all"."""
    path = json_files(models[name])[layout]
    tok, ref = load_tokenizer(path), tokenizers.Tokenizer.from_file(str(path))
    texts = CASES + USER_CASES + SPECIAL_CASES
    _check_against_tokenizers(tok, ref, texts, add_special_tokens=False)
    _check_against_tokenizers(tok, ref, texts, add_special_tokens=True)
    assert tok.byte_level is True and tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.bos_id == 1
    assert tok.encode("<s>hello</s>", allowed_special="all") == ref.encode("<s>hello</s>",
                                                                         add_special_tokens=False).ids
    assert 1 not in tok.encode("<s>hello</s>")  # not recognised by default


@pytest.mark.parametrize("layout", ["a", "b"])
def test_json_layouts_decode_as_tokenizers(models, layout):
    path = json_files(models["llama_ws"])[layout]
    tok, ref = load_tokenizer(path), tokenizers.Tokenizer.from_file(str(path))
    for text in CASES + USER_CASES + SPECIAL_CASES:
        ids = ref.encode(text, add_special_tokens=True).ids + [2]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), \
                f"{text[:40]!r} skip_special_tokens={skip}"
    for ids in ([1, 2], [2, 1], [300], [1, 300, 301], [], [0, 300], [3, 300, 4]):
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids


@settings(max_examples=150, **REPRODUCIBLE)
@given(data=st.data())
def test_json_decodes_any_ids_as_tokenizers(models, data):
    """Any ids, special and byte pieces included (tokenizers' ByteFallback turns each byte of an invalid run into
    U+FFFD; Strip removes one leading space of the whole text), decode as tokenizers decodes them."""
    sp = _sp(models["llama_ws"] / "tokenizer.model")
    some = [0, 1, 2, 3, 4] + [_byte(sp, b) for b in (0x20, 0x41, 0xE1, 0x9A, 0xA0, 0xF0, 0x9F, 0x99, 0x82, 0xFF)]
    ids = data.draw(st.lists(st.one_of(st.integers(0, sp.get_piece_size() - 1), st.sampled_from(some)), max_size=12))
    for layout in ("a", "b"):
        path = json_files(models["llama_ws"])[layout]
        for skip in (False, True):
            got, want = _loaded(path).decode(ids, skip_special_tokens=skip), _ref_json(path).decode(ids, skip)
            assert got == want, f"layout {layout}, skip_special_tokens={skip}: {[sp.id_to_piece(i) for i in ids]}"


def test_json_layout_b_follows_tokenizers_not_sentencepiece(models):
    """Where the Metaspace layout and sentencepiece disagree (a leading space, user-defined symbol first, merges
    ranked by id over -1e9 whitespace pieces), a tokenizer.json encodes as tokenizers does."""
    path = json_files(models["llama_ws"])["b"]
    tok, ref, sp = load_tokenizer(path), tokenizers.Tokenizer.from_file(str(path)), _sp(models["llama_ws"] /
                                                                                         "tokenizer.model")
    texts = [" x", "  leading spaces", "[REF]x", "x  y", "a    b"]
    assert sum(ref.encode(t, add_special_tokens=False).ids != sp.encode(t) for t in texts) >= 4
    for t in texts:
        assert tok.encode(t) == ref.encode(t, add_special_tokens=False).ids, t


@settings(max_examples=100, **REPRODUCIBLE)
@given(text=texts(list(" ▁\t\nab你🙂ᚠ1") + ["<s>", "</s>", "[REF]", "  "], 30))
def test_random_text_encodes_as_tokenizers(models, text):
    for layout in ("a", "b"):
        path = json_files(models["llama_ws"])[layout]
        want = _ref_json(path).encode(text, add_special_tokens=False).ids
        for tok in (_loaded(path), _loaded_c(path)):
            got = tok.encode(text, allowed_special="all")
            assert got == want, f"layout {layout}: {text!r}: {_diff(got, want, _Pieces(_ref_json(path)))}"


@cache
def _ref_json(path: Path):
    return tokenizers.Tokenizer.from_file(str(path))


# ---- GGUF ---------------------------------------------------------------------------------------------------------

def write_gguf(model_file: Path, out: Path, *, add_bos: bool = True, extra_keys: bool = True) -> Path:
    """A tokenizer-only GGUF written as llama.cpp's converter writes a SentencePiece vocabulary."""
    import gguf

    m = _ref_model(model_file)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_tokenizer_model("llama")
    if extra_keys:
        w.add_tokenizer_pre("default")
    w.add_token_list([p.piece.encode("utf-8") for p in m.pieces])
    w.add_token_scores([p.score for p in m.pieces])
    w.add_token_types([int(p.type) for p in m.pieces])  # the proto's numbers are GGUF's: 1..6
    w.add_bos_token_id(m.trainer_spec.bos_id)
    w.add_eos_token_id(m.trainer_spec.eos_id)
    w.add_unk_token_id(m.trainer_spec.unk_id)
    w.add_add_bos_token(add_bos)
    if extra_keys:
        w.add_add_eos_token(False)
        w.add_add_space_prefix(m.normalizer_spec.add_dummy_prefix)
        w.add_remove_extra_whitespaces(m.normalizer_spec.remove_extra_whitespaces)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.mark.parametrize("name,extra_keys,add_bos", [("bpe", True, True), ("llama_ws", False, True),
                                                      ("llama_ws", True, False)])
def test_gguf_encodes_as_sentencepiece(models, tmp_path, name, extra_keys, add_bos):
    model_file = models[name] / "tokenizer.model"
    path = write_gguf(model_file, tmp_path / "t.gguf", add_bos=add_bos, extra_keys=extra_keys)
    tok, sp = load_tokenizer(path), _sp(model_file)
    _check_against_sp(tok, sp, CASES + SPECIAL_CASES)
    assert tok.encode("Hello world", add_special_tokens=True) == [1] * add_bos + sp.encode("Hello world")
    assert (tok.bos_id, tok.eos_id, tok.bos_token, tok.eos_token) == (1, 2, "<s>", "</s>")
    ids = tok.encode("<s>hi</s>", allowed_special="all")
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids[1:-1]).strip() == "hi"
    for text in CASES:
        ids = sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids)
        assert tok.decode_bytes(ids) == sp.normalize(text).replace("▁", " ").encode("utf-8")


def test_gguf_user_defined_symbols_encode_as_sentencepiece(models, tmp_path):
    """User-defined pieces (token type 4) are matched whole wherever they are, and the dummy prefix goes at the
    start of the text as in sentencepiece (llama.cpp itself prefixes each fragment after one: it differs here)."""
    model_file = models["bpe"] / "tokenizer.model"
    tok, sp = load_tokenizer(write_gguf(model_file, tmp_path / "t.gguf")), _sp(model_file)
    assert "[REF]" not in tok.special_tokens
    _check_against_sp(tok, sp, USER_CASES)


# ---- save ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["model", "json_a", "json_b", "gguf"])
def test_save_round_trip_into_tokenizers(models, tmp_path, source):
    """tok.save writes a tokenizer.json that tokenizers loads and that encodes as tok does (and, saved from a
    .model file, as sentencepiece does); llmlab reads it back to the same tokenizer.

    Text with user-defined symbols is left out for a tokenizer read from a .model or GGUF: sentencepiece puts the
    dummy "▁" once before the whole text and none after a symbol, which no tokenizer.json can say (tokenizers
    normalizes each piece between added tokens; a normalized added token is matched as "▁[REF]" under Prepend).
    Read from a tokenizer.json, llmlab follows tokenizers and the saved file must keep that."""
    model_file = models["llama_ws"] / "tokenizer.model"
    sp = _sp(model_file)
    src = {"model": lambda: model_file, "json_a": lambda: json_files(models["llama_ws"])["a"],
           "json_b": lambda: json_files(models["llama_ws"])["b"],
           "gguf": lambda: write_gguf(model_file, tmp_path / "t.gguf")}[source]()
    tok = load_tokenizer(src)
    tok.save(tmp_path / "saved")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "saved" / "tokenizer.json"))
    texts = CASES + SPECIAL_CASES + (USER_CASES if source.startswith("json") else [])
    _check_against_tokenizers(tok, ref, texts, add_special_tokens=False)
    _check_against_tokenizers(tok, ref, texts, add_special_tokens=True)
    again = load_tokenizer(tmp_path / "saved")
    for text in texts:
        assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all"), text
        assert again.encode(text) == tok.encode(text), text
        ids = tok.encode(text, allowed_special="all", add_special_tokens=True)
        assert ref.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True), text
    if source in ("model", "gguf"):
        _check_against_sp(_Ref(ref), sp, [t for t in CASES if "<s>" not in t and "</s>" not in t])
    tok.save(tmp_path / "file.json")  # a .json path: that file alone
    assert tokenizers.Tokenizer.from_file(str(tmp_path / "file.json")).encode("Hello  world").ids == \
        ref.encode("Hello  world").ids


class _Ref:
    """A tokenizers.Tokenizer with llmlab's encode signature (no special tokens added)."""

    who = "tokenizers on the saved file"

    def __init__(self, ref):
        self.ref = ref

    def encode(self, text):
        return self.ref.encode(text, add_special_tokens=False).ids


# ---- the real Mistral tokenizers (artifacts) ----------------------------------------------------------------------

MISTRAL_CASES = CASES + ["[INST] hi [/INST]", "[TOOL_CALLS] [IMG]", "x  y", "x▁▁y", "a" + " " * 17 + "b"]
MISTRAL_USER_CASES = ["[REFERENCE_DOC_1]x", "see [REFERENCE_DOC_12] there", "a[REFERENCE_DOC_0]b", "[REFERENCE_DOC_3]"]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """name -> directory with tokenizer.model (fetched lazily, by the artifact tests only)."""
    root = tmp_path_factory.mktemp("mistral")

    @cache
    def get(name: str) -> Path:
        path = artifacts.fetch(name)
        d = root / name
        d.mkdir()
        shutil.copy(path, d / "tokenizer.model")
        return d

    return get


@pytest.mark.artifact
@pytest.mark.parametrize("name,size", [("mistral-7b-tokenizer", 32000), ("mistral-7b-v3-tokenizer", 32768)])
def test_mistral_model_file(name, size):
    path = artifacts.fetch(name)  # tokenizer.model.v1 / *.model.v3: loaded under its own name
    tok, sp = load_tokenizer(path), _sp(path)
    assert tok.vocab_size == sp.get_piece_size() == size
    _check_against_sp(tok, sp, MISTRAL_CASES + SPECIAL_CASES)
    assert tok.encode("Hello", add_special_tokens=True) == [1] + sp.encode("Hello")
    assert (tok.bos_token, tok.eos_token, tok.bos_id, tok.eos_id) == ("<s>", "</s>", 1, 2)
    for text in MISTRAL_CASES:
        ids = sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids), text
        assert tok.decode_bytes(ids) == sp.normalize(text).replace("▁", " ").encode("utf-8"), text
    controls = {sp.id_to_piece(i): i for i in range(size) if sp.is_control(i)}
    assert {t: tok.special_tokens.get(t) for t in controls} == controls
    if size == 32768:
        assert tok.encode("[INST] hi [/INST]", allowed_special="all")[0] == 3
        assert tok.encode("[INST] hi [/INST]", allowed_special="all")[-1] == 4
        assert 3 not in tok.encode("[INST] hi [/INST]")


@pytest.mark.artifact
def test_mistral_v3_user_defined_symbols():
    path = artifacts.fetch("mistral-7b-v3-tokenizer")
    tok, sp = load_tokenizer(path), _sp(path)
    assert 767 in sp.encode("x[REFERENCE_DOC_3]y") and "[REFERENCE_DOC_3]" not in tok.special_tokens
    _check_against_sp(tok, sp, MISTRAL_USER_CASES)


@pytest.mark.artifact
@pytest.mark.parametrize("name", ["mistral-7b-tokenizer", "mistral-7b-v3-tokenizer"])
def test_mistral_json_layouts(mistral, name):
    files = json_files(mistral(name))
    for layout in ("a", "b"):
        tok, ref = load_tokenizer(files[layout]), tokenizers.Tokenizer.from_file(str(files[layout]))
        _check_against_tokenizers(tok, ref, MISTRAL_CASES + MISTRAL_USER_CASES + SPECIAL_CASES, add_special_tokens=False)
        _check_against_tokenizers(tok, ref, ["Hello", "", " x", "[INST] a"], add_special_tokens=True)
        ids = ref.encode("[INST] 你好 🙂 ᚠ [/INST] ok</s>").ids
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


@pytest.mark.artifact
def test_mistral_gguf(mistral, tmp_path):
    model_file = mistral("mistral-7b-tokenizer") / "tokenizer.model"
    path = write_gguf(model_file, tmp_path / "mistral.gguf", extra_keys=False)
    tok, sp = load_tokenizer(path), _sp(model_file)
    _check_against_sp(tok, sp, MISTRAL_CASES + SPECIAL_CASES)
    assert tok.encode("Hello", add_special_tokens=True) == [1] + sp.encode("Hello")
    tok.save(tmp_path / "saved")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "saved" / "tokenizer.json"))
    for text in MISTRAL_CASES:
        if _plain(text):
            assert ref.encode(text, add_special_tokens=False).ids == sp.encode(text), text
            assert ref.decode(sp.encode(text)) == sp.decode(sp.encode(text)), text


@pytest.mark.artifact
def test_mistral_v3_save_keeps_control_tokens(tmp_path):
    path = artifacts.fetch("mistral-7b-v3-tokenizer")
    tok = load_tokenizer(path)
    tok.save(tmp_path / "saved")
    ref = tokenizers.Tokenizer.from_file(str(tmp_path / "saved" / "tokenizer.json"))
    text = "[INST] What is [IMG] here? [/INST] It is [TOOL_CALLS] done</s>"
    assert tok.encode(text, allowed_special="all") == ref.encode(text, add_special_tokens=False).ids
    assert ref.get_vocab_size() == 32768 and ref.token_to_id("[control_748]") == 750

