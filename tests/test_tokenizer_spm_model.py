"""SentencePiece-style BPE inside llmlab: the merge paths agree, words are cut only where no merge crosses, and the
engine and CLI use such a tokenizer end to end (the reference comparisons with sentencepiece and tokenizers are in
test_tokenizer_spm.py)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab import load_tokenizer
from llmlab.tokenizer.spm import PieceBPEModel, byte_piece

CHARS = "▁abcde"


def tiny_vocab(extra: list[str]) -> dict[str, int]:
    pieces = ["<unk>", "<s>", "</s>", *(byte_piece(b) for b in range(256)), *CHARS, *extra]
    return {p: i for i, p in enumerate(dict.fromkeys(pieces))}


MERGED = ["▁a", "ab", "▁ab", "bc", "▁▁", "cd", "abc", "▁abc", "de", "cde", "▁▁▁▁", "ee", "eee", "▁c"]


def tiny_model(extra=MERGED) -> PieceBPEModel:
    vocab = tiny_vocab(extra)
    scores = {p: -float(i) for p, i in vocab.items() if p in CHARS or p in extra}
    scores["▁▁"] = scores["▁▁▁▁"] = -1e9  # tied scores, as Mistral's whitespace pieces: the leftmost pair wins
    return PieceBPEModel(vocab, scores=scores)


def brute(model: PieceBPEModel, word: str) -> list[str]:
    """SentencePiece's rule spelled out: merge the best-scored adjacent pair (leftmost on ties) until none merges."""
    syms = list(word)
    while True:
        best = None
        for i in range(len(syms) - 1):
            p = syms[i] + syms[i + 1]
            if p in model.scores and syms[i] in model.scores and syms[i + 1] in model.scores:
                if best is None or model.scores[p] > best[0]:
                    best = (model.scores[p], i)
        if best is None:
            return syms
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=CHARS, max_size=120))
def test_both_merge_paths_equal_the_rule(word):
    m = tiny_model()
    want = [m.vocab[p] for p in brute(m, word)]
    ids = [m.vocab[c] for c in word]
    assert m._merge_small(list(ids), {}) == want
    assert m._merge_heap(list(ids), {}) == want
    assert list(m.encode_word(word)) == want


def test_long_words_take_the_heap_and_agree():
    m, rng = tiny_model(), random.Random(0)
    for _ in range(20):
        word = "".join(rng.choice(CHARS) for _ in range(rng.randrange(200, 600)))
        assert [m.piece(i) for i in m.encode_word(word)] == brute(m, word)


def test_byte_fallback_and_fused_unknowns():
    m = tiny_model()
    assert [m.piece(i) for i in m.encode_word("a中")] == ["a", "<0xE4>", "<0xB8>", "<0xAD>"]
    no_bytes = PieceBPEModel({p: i for p, i in m.vocab.items() if not p.startswith("<0x")}, scores=m.scores,
                             fuse_unk=True)
    assert [no_bytes.piece(i) for i in no_bytes.encode_word("a中文b")] == ["a", "<unk>", "b"]
    unfused = PieceBPEModel(no_bytes.vocab, scores=m.scores, fuse_unk=False)
    assert [unfused.piece(i) for i in unfused.encode_word("a中文b")] == ["a", "<unk>", "<unk>", "b"]


def test_unused_pieces_merge_through_and_split_back():
    extra = ["ab", "abc"]
    vocab = tiny_vocab(extra)
    scores = {p: -float(i) for p, i in vocab.items() if p in CHARS or p in extra}
    m = PieceBPEModel(vocab, scores=scores, unused=frozenset({"ab"}))
    assert [m.piece(i) for i in m.encode_word("abc")] == ["abc"]  # made through the unused "ab"
    assert [m.piece(i) for i in m.encode_word("abd")] == ["a", "b", "d"]  # "ab" left over: split back


def test_words_are_cut_only_where_no_merge_crosses(tmp_path):
    assert tiny_model().can_split_words()
    crossing = tiny_model(MERGED + ["a▁", "a▁b"])  # a piece with "▁" inside: text must stay whole
    assert not crossing.can_split_words()
    for model in (tiny_model(), crossing):
        tok = _tokenizer_json(tmp_path, model)
        text = "ab ab  abc cde a b"
        normalized = "▁" + text.replace(" ", "▁")
        assert tok.encode(text) == list(model.encode_word(normalized))  # cut or not, the ids of the whole text


def _tokenizer_json(tmp_path, model: PieceBPEModel):
    spec = {"version": "1.0", "added_tokens": [{"id": i, "content": t, "special": True} for t, i in
                                               (("<unk>", 0), ("<s>", 1), ("</s>", 2))],
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {
                "type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": None,
            "post_processor": {"type": "TemplateProcessing", "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True,
                      "vocab": model.vocab, "merges": [list(m) for m in model.derive_merges()]}}
    path = tmp_path / f"tok{len(model.vocab)}.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return load_tokenizer(path)


def test_engine_streams_a_sentencepiece_tokenizer(tmp_path):
    torch = pytest.importorskip("torch")
    from llmlab import ModelConfig, Transformer
    from llmlab.engine import LLM, SamplingParams
    from llmlab.model.pretrained import save_pretrained

    tok = _tokenizer_json(tmp_path, tiny_model())
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                    max_position_embeddings=64, model_type="llama"))
    save_pretrained(model, tmp_path / "m")
    tok.save(tmp_path / "m")
    llm = LLM(str(tmp_path / "m"), dtype="float32", max_num_seqs=2)
    pieces = [i for p, i in tok.model.vocab.items() if not p.startswith("<")]  # characters and merged pieces
    for allowed in (None, pieces):  # random weights pick stray byte pieces; restricted, the text is valid UTF-8
        out = llm.generate(["ab cd", "中"], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True,
                                                          allowed_token_ids=allowed))
        for o in out:
            assert o.prompt_token_ids[0] == tok.token_to_id("<s>")  # the template's BOS first, as Llama's tokenizer
            ids = o.outputs[0].token_ids
            streamed = b"".join(tok.token_bytes(i) for i in ids if i not in tok.special_tokens.values())
            assert o.outputs[0].text == streamed.decode("utf-8", "replace")  # a continuation keeps its leading space
            if allowed:
                assert tok.decode(ids, skip_special_tokens=True) == o.outputs[0].text.removeprefix(" ")


def test_cli_encodes_with_a_sentencepiece_tokenizer(tmp_path):
    tok = _tokenizer_json(tmp_path, tiny_model())
    path = tmp_path / "cli.json"
    tok.save(path)
    run = subprocess.run([sys.executable, "-m", "llmlab", "tokenizer", "encode", "--tokenizer", str(path)],
                         input="ab cde", capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert [int(x) for x in run.stdout.split()] == tok.encode("ab cde")


def test_saving_user_defined_pieces_warns(tmp_path):
    vocab = tiny_vocab(MERGED + ["[REF]"])
    scores = {p: -float(i) for p, i in vocab.items() if p in CHARS or p in MERGED}
    from llmlab.tokenizer.spm_file import decoder_spec, normalizer_spec
    from llmlab.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer(PieceBPEModel(vocab, scores=scores, user_defined=frozenset({"[REF]"}), spm_decode=(True, False)),
                    normalizer=normalizer_spec(True, False), decoder=decoder_spec(True))
    assert tok.encode("[REF]x") == [vocab["▁"], vocab["[REF]"], vocab["x"] if "x" in vocab else vocab["<0x78>"]]
    with pytest.warns(UserWarning, match="user-defined pieces"):
        tok.save(tmp_path / "t.json")
    spec = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert {"[REF]"} == {t["content"] for t in spec["added_tokens"] if not t["special"]}


def test_generate_prints_the_continuation_with_its_space(tmp_path):
    from llmlab.model.cli import continuation_text

    tok = _tokenizer_json(tmp_path, tiny_model())
    new = [tok.token_to_id("▁ab"), tok.token_to_id("cd"), tok.token_to_id("</s>")]
    assert tok.decode(new, skip_special_tokens=True) == "abcd"  # a text of its own: no dummy space
    assert continuation_text(tok, new) == " abcd"  # after "Hi": "Hi abcd", as the engine streams it


def test_tokenizer_config_flags_set_bos_and_eos(tmp_path):
    tok = _tokenizer_json(tmp_path, tiny_model())
    tok.save(tmp_path / "d")
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    assert load_tokenizer(tmp_path / "d").encode("ab", add_special_tokens=True)[0] == bos  # the template's BOS
    cfg_path = tmp_path / "d" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.update(bos_token="<s>", eos_token="</s>", add_bos_token=False, add_eos_token=True)
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    ids = load_tokenizer(tmp_path / "d").encode("ab", add_special_tokens=True)
    assert bos not in ids and ids[-1] == eos  # as transformers' Llama tokenizer reads add_bos_token / add_eos_token


def test_data_prepare_starts_every_document_with_bos(tmp_path):
    import numpy as np

    from llmlab.data.corpora import resolve_corpus
    from llmlab.data.shards import prepare_shards

    tok = _tokenizer_json(tmp_path, tiny_model())
    tok.bos_token, tok.eos_token = "<s>", "</s>"  # (what a Llama tokenizer_config.json names)
    (tmp_path / "c").mkdir()
    for name, text in (("a.txt", "ab cd ab\n" * 30), ("b.txt", "cde ab\n" * 30), ("c.txt", " \n\n")):  # c: blank
        (tmp_path / "c" / name).write_text(text, encoding="utf-8")
    info = prepare_shards(resolve_corpus(str(tmp_path / "c")), tok, tmp_path / "s", val_fraction=0.2, progress=False)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    assert json.loads((tmp_path / "s" / "meta.json").read_text(encoding="utf-8"))["bos_id"] == bos
    for split in ("train", "val"):
        ids = np.fromfile(tmp_path / "s" / f"{split}.bin", dtype=info.dtype).tolist()
        assert ids[0] == bos and ids[-1] == eos
        assert ids.count(bos) == ids.count(eos) == 2  # two documents, each <s> ... </s>
        assert all(ids[i + 1] == bos for i, t in enumerate(ids[:-1]) if t == eos)


def test_chat_without_a_template_names_the_fix(tmp_path):
    pytest.importorskip("torch")
    from llmlab import ModelConfig, Transformer
    from llmlab.engine import LLM
    from llmlab.engine.sequence import RequestError
    from llmlab.model.pretrained import save_pretrained

    tok = _tokenizer_json(tmp_path, tiny_model())
    save_pretrained(Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                            max_position_embeddings=64, model_type="llama")), tmp_path / "m")
    tok.save(tmp_path / "m")
    llm = LLM(str(tmp_path / "m"), dtype="float32")
    with pytest.raises(RequestError, match=r"no chat template .*LLM\.chat\(\.\.\., chat_template=\.\.\.\)"):
        llm.chat([{"role": "user", "content": "hi"}])
    out = llm.chat([{"role": "user", "content": "hi"}], chat_template="{{ messages[0]['content'] }}")
    assert out[0].prompt == "hi"
