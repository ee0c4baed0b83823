"""Request semantics a vLLM (or transformers) user relies on: text prompts get the tokenizer's BOS, a directory's
generation_config.json EOS ids end generation, near-zero temperatures are greedy, max_tokens=None runs to the end of
the context, EOS leaves stop_reason None, vLLM settings llmlab lacks are named as such, tuples are sequences, and
the tokenizer may be given as a path."""

from __future__ import annotations

import json

import pytest
import torch

import llmlab
from llmlab import ConfigError, ModelConfig, Transformer
from llmlab.engine import LLM, SamplingParams
from llmlab.engine.sequence import UnknownParameterError
from llmlab.tokenizer import load_tokenizer, train_bpe

TEXT = "The quick brown fox says hello. Ünïcödé ok. 你好 "


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model saved with its tokenizer, whose tokenizer.json puts <|endoftext|> first as Llama's puts <s>."""
    d = tmp_path_factory.mktemp("bos_model")
    tok = train_bpe([TEXT * 10], vocab_size=300, progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_position_embeddings=64)
    Transformer(cfg).eval().save_pretrained(d)
    tok.save(d)
    spec = json.loads((d / "tokenizer.json").read_text())
    bos = "<|endoftext|>"
    bos_id = tok.encode(bos, allowed_special="all")[0]
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    (d / "tokenizer.json").write_text(json.dumps(spec))
    return d, bos_id


def test_text_prompts_get_the_tokenizers_bos_as_transformers_and_vllm_add_it(model_dir):
    d, bos_id = model_dir
    transformers = pytest.importorskip("transformers")
    want = transformers.AutoTokenizer.from_pretrained(d)("The quick").input_ids
    assert want[0] == bos_id
    llm = LLM(str(d), block_size=4)
    out = llm.generate("The quick", SamplingParams(temperature=0, max_tokens=2))[0]
    assert out.prompt_token_ids == want
    ids = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=2))[0].prompt_token_ids
    assert ids == [5, 6, 7]  # token ids pass as given


def test_cli_generate_encodes_text_as_the_engine_does(model_dir, capsys):
    """`llmlab generate --prompt` with BOS and special tokens as LLM.generate gets them (the same greedy text), and
    --dtype auto as `llmlab chat` takes it."""
    from llmlab.cli import main

    d, _ = model_dir
    prompt = "<|endoftext|>The quick"
    want = LLM(str(d), block_size=4).generate(prompt, SamplingParams(temperature=0, max_tokens=6))[0].outputs[0]
    assert main(["generate", "--model", str(d), "--prompt", prompt, "--max-new-tokens", "6", "--dtype", "auto"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == want.text


def test_generation_config_eos_ids_end_generation(model_dir, tmp_path):
    """A chat model's end-of-turn id listed only in generation_config.json stops the engine, as in transformers."""
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dir[0], d)
    free = LLM(str(d), block_size=4).generate([[5, 6]], SamplingParams(temperature=0, max_tokens=8))[0].outputs[0]
    stop_at = free.token_ids[2]
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [stop_at, 10**9]}))
    assert stop_at in llmlab.from_pretrained(d).cfg.eos_ids  # 10**9 is past the vocabulary: ignored
    out = LLM(str(d), block_size=4).generate([[5, 6]], SamplingParams(temperature=0, max_tokens=8))[0].outputs[0]
    cut = free.token_ids.index(stop_at) + 1
    assert out.token_ids == free.token_ids[:cut] and out.finish_reason == "stop" and out.stop_reason is None
    (d / "generation_config.json").write_text("{not json")  # unreadable, as transformers treats it: skipped
    assert llmlab.from_pretrained(d).cfg.eos_ids == frozenset()  # the config.json declares none
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": stop_at}))
    assert llmlab.from_pretrained(d).cfg.eos_ids == {stop_at}


@pytest.fixture(scope="module")
def llm():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
                                    max_position_embeddings=40)).eval()
    return LLM(model, block_size=4)


def test_near_zero_temperature_is_greedy(llm):
    greedy = llm.generate([[3, 4, 5]], SamplingParams(temperature=0, max_tokens=6))[0].outputs[0].token_ids
    for t in (1e-45, 1e-6):  # 1e-45 divided logits into inf (NaN probabilities, token 0 every step)
        params = SamplingParams(temperature=t, max_tokens=6, seed=1)
        assert params.temperature == 0.0
        assert llm.generate([[3, 4, 5]], params)[0].outputs[0].token_ids == greedy


def test_max_tokens_none_runs_to_the_end_of_the_context(llm):
    out = llm.generate([[3, 4, 5]], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 40 - 3 and out.finish_reason == "length"


def test_vllm_settings_llmlab_lacks_are_named_not_misread():
    for name in ("best_of", "bad_words", "truncate_prompt_tokens"):
        with pytest.raises(UnknownParameterError, match=f"{name}=1 \\(a vLLM setting\\) is not supported"):
            SamplingParams(**{name: 1})
    with pytest.raises(UnknownParameterError, match="did you mean max_tokens"):
        SamplingParams(max_new_tokens=4)


def test_tuples_of_prompts_and_params_are_sequences(llm):
    outs = llm.generate(([5, 6], [7, 8]), (SamplingParams(temperature=0, max_tokens=2),) * 2)
    assert [o.prompt_token_ids for o in outs] == [[5, 6], [7, 8]]
    as_lists = llm.generate([[5, 6], [7, 8]], [SamplingParams(temperature=0, max_tokens=2)] * 2)
    assert [o.outputs for o in outs] == [o.outputs for o in as_lists]


def test_tokenizer_given_as_a_path_or_refused_with_a_reason(model_dir):
    d, _ = model_dir
    model = llmlab.from_pretrained(d)
    by_path = LLM(model, tokenizer=d / "tokenizer.json", block_size=4)
    assert by_path.tokenizer.encode("The quick") == load_tokenizer(d).encode("The quick")
    assert LLM(model, tokenizer=str(d), block_size=4).generate("The", SamplingParams(max_tokens=1))[0].outputs
    with pytest.raises(ConfigError, match="takes an llmlab Tokenizer or the path"):
        LLM(model, tokenizer=object())
