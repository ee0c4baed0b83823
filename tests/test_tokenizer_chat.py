"""Chat templates: ids and assistant masks against transformers' apply_chat_template, real templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlab import artifacts, load_tokenizer
from llmlab.errors import TokenizerError
from llmlab.tokenizer import DEFAULT_CHAT_TEMPLATE, train_bpe

MIXED = (Path(__file__).parent / "data" / "tokenizer_mixed.txt").read_text(encoding="utf-8")
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2? 答えて 😀"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And   3+3?\n"},
    {"role": "assistant", "content": "6, obviously.\n  Done"},
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = train_bpe([MIXED] * 4, 600)
    path = tmp_path_factory.mktemp("tok")
    tok.save(path)
    return tok, path


def test_default_template_matches_transformers(saved):
    from transformers import AutoTokenizer
    tok, path = saved
    hf = AutoTokenizer.from_pretrained(str(path))
    for msgs, gen in ((CHAT, False), (CHAT[:2], True), (CHAT[:4], True)):
        ids, mask = tok.render_chat(msgs, add_generation_prompt=gen)
        out = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True,
                                     return_assistant_tokens_mask=True)
        assert ids == list(out["input_ids"])
        assert mask == list(out["assistant_masks"])
    ids, mask = tok.render_chat(CHAT)
    trained_on = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained_on == "4.<|im_end|>6, obviously.\n  Done<|im_end|>"  # content + stop token only


def test_generation_prompt_is_not_trained_on(saved):
    tok, _ = saved
    ids, mask = tok.render_chat(CHAT[:2], add_generation_prompt=True)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n") and not any(mask)
    tail = tok.encode("<|im_start|>assistant\n", allowed_special="all")
    assert ids[-len(tail):] == tail and tail[0] == tok.special_tokens["<|im_start|>"]


@pytest.mark.artifact
def test_smollm2_gguf_template_matches_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast
    tok = load_tokenizer(artifacts.fetch("smollm2-135m"))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    tok.save(tmp_path / "smol")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "smol" / "tokenizer.json"),
                                 bos_token=tok.bos_token, eos_token=tok.eos_token)
    for msgs, gen in ((CHAT[1:], False), (CHAT[1:2], True)):
        ids, mask = tok.render_chat(msgs, add_generation_prompt=gen)
        assert ids == list(hf.apply_chat_template(msgs, chat_template=tok.chat_template, tokenize=True,
                                                  add_generation_prompt=gen, return_dict=True)["input_ids"])
        assert ids[:3] == tok.encode("<|im_start|>system\n", allowed_special="all")  # its default system turn
    # no {% generation %} in SmolLM2's template: assistant spans come from prefix rendering
    ids, mask = tok.render_chat(CHAT[1:])
    trained_on = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained_on == "4.<|im_end|>\n6, obviously.\n  Done<|im_end|>\n"


def test_hf_directory_template_locations_and_special_tokens(saved, tmp_path):
    tok, path = saved
    d = tmp_path / "hf"
    tok.save(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == DEFAULT_CHAT_TEMPLATE and cfg["eos_token"] == "<|endoftext|>"
    cfg.update(chat_template="CFG {{ messages[0]['content'] }}", bos_token={"content": "<|im_start|>"})
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    loaded = load_tokenizer(d)
    assert loaded.bos_token == "<|im_start|>"  # the AddedToken-dict form is read too
    assert loaded.decode(loaded.render_chat(CHAT)[0]) == "CFG You are terse."
    (d / "chat_template.jinja").write_text("JINJA {{ messages|length }}")  # transformers prefers this file
    with pytest.warns(UserWarning, match="mask is all zeros"):  # no assistant text in this output
        ids, mask = load_tokenizer(d).render_chat(CHAT)
    assert tok.decode(ids) == "JINJA 5" and not any(mask)


def test_no_double_bos(saved):
    tok, _ = saved
    tok = load_tokenizer(_save_with_bos_template(tok, saved[1].parent / "bos"))
    bos = tok.bos_id
    plain = tok.encode("hi", add_special_tokens=True)
    assert plain[0] == bos  # the tokenizer itself prepends BOS ...
    ids, _ = tok.render_chat(CHAT, template="{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert ids[0] == bos and ids.count(bos) == 1  # ... but a template's BOS is not doubled


def _save_with_bos_template(tok, path):
    from llmlab.tokenizer.io import tokenizer_json
    spec = tokenizer_json(tok)
    spec["post_processor"] = {"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [], "special_tokens": {}}
    path.mkdir(exist_ok=True)
    (path / "tokenizer.json").write_text(json.dumps(spec))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|endoftext|>"}))
    return path


def test_template_errors_are_clear(saved):
    tok, _ = saved
    with pytest.raises(TokenizerError, match="refused these messages: only user"):
        tok.render_chat(CHAT, template="{{ raise_exception('only user turns') }}")
    with pytest.raises(TokenizerError, match="syntax error"):
        tok.render_chat(CHAT, template="{% for %}")
    with pytest.raises(TokenizerError, match="list of dicts"):
        tok.render_chat("hello")
    with pytest.raises(TokenizerError, match="sandbox|refused"):  # untrusted templates stay sandboxed
        tok.render_chat(CHAT, template="{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}")
