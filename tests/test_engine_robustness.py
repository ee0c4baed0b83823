"""The engine after things go wrong or change under it: errors in the middle of a call or a step leave it
serving with every block back; ids the tokenizer cannot decode are never sampled; changed weights reset the
prefix cache; request arguments of the wrong type are one-line RequestErrors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, RequestError, SamplingParams
from llmlab.tokenizer import DEFAULT_CHAT_TEMPLATE, train_bpe

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def tiny(vocab=101, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"vocab_size": vocab, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                         "max_position_embeddings": 64, **kw})
    return Transformer(cfg).eval()


def clean(llm: LLM) -> bool:
    stats = llm.engine.stats()
    return not llm.engine.has_unfinished_requests() and stats["free_blocks"] == stats["num_blocks"]


def reference(model, prompt, n=6):
    return model.generate(torch.tensor([prompt]), max_new_tokens=n)[0, len(prompt):].tolist()


def test_a_bad_prompt_in_a_list_leaves_the_engine_clean():
    model = tiny()
    llm = LLM(model, block_size=4)
    with pytest.raises(RequestError, match="a prompt is text, a list of token ids"):
        llm.generate([[1, 2, 3], None], GREEDY)
    assert clean(llm)
    for _ in range(2):  # later calls get their own outputs (the first one's request was not left queued)
        assert llm.generate([[5, 6, 7]], GREEDY)[0].outputs[0].token_ids == reference(model, [5, 6, 7])
    assert clean(llm)


def test_an_error_inside_a_step_drops_that_steps_requests_and_the_engine_serves_on(monkeypatch):
    model = tiny()
    llm = LLM(model, block_size=4)
    real, calls = llm.engine.runner.run, []

    def failing_once(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return real(batch)

    monkeypatch.setattr(llm.engine.runner, "run", failing_once)
    with pytest.raises(RuntimeError, match="device lost"):
        llm.generate([[1, 2, 3], [4, 5, 6, 7, 8]], GREEDY)
    assert clean(llm)
    out = llm.generate([[5, 6, 7], [9, 8]], GREEDY)
    assert [o.outputs[0].token_ids for o in out] == [reference(model, [5, 6, 7]), reference(model, [9, 8])]


def test_logprobs_beyond_the_vocabulary_are_refused_up_front():
    llm = LLM(tiny(vocab=101))
    with pytest.raises(RequestError, match="logprobs=102 asks for more alternatives than the 101 tokens"):
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, logprobs=102))
    assert clean(llm)
    assert len(llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, logprobs=101))[0].outputs[0].logprobs[0]) >= 101


def test_padded_vocabulary_ids_are_never_sampled():
    """A model vocabulary padded past the tokenizer's (gpt2-small: 50304 vs 50257) has ids with no text."""
    tok = train_bpe(["The quick brown fox says hello. " * 10], vocab_size=300, progress=False)
    model = tiny(vocab=tok.vocab_size + 20, max_position_embeddings=128)
    with torch.no_grad():
        model.lm_head.weight[tok.vocab_size:] *= 50  # make the padded rows likely
    llm = LLM(model, tokenizer=tok, block_size=4)
    params = [SamplingParams(temperature=5.0, max_tokens=30, seed=s, ignore_eos=True) for s in range(4)]
    outs = llm.generate(["The quick"] * 4, params)
    ids = [i for o in outs for i in o.outputs[0].token_ids]
    assert len(ids) == 120 and max(ids) < tok.vocab_size
    assert all(o.outputs[0].text == tok.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outs)
    greedy = llm.generate(["The quick"], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert max(greedy[0].outputs[0].token_ids) < tok.vocab_size


def test_changed_weights_reset_the_prefix_cache():
    model = tiny()
    llm = LLM(model, block_size=4)
    prompt = list(range(1, 14))
    first = llm.generate([prompt], GREEDY)[0]
    assert llm.generate([prompt], GREEDY)[0].num_cached_tokens == 12  # cached: same weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    again = llm.generate([prompt], GREEDY)[0]
    assert again.num_cached_tokens == 0
    assert again.outputs[0].token_ids == reference(model, prompt) != first.outputs[0].token_ids
    # a change the engine cannot see (through .data) needs the explicit reset
    for p in model.parameters():
        p.data.mul_(1.5)
    llm.reset_prefix_cache()
    assert llm.generate([prompt], GREEDY)[0].outputs[0].token_ids == reference(model, prompt)


def test_stop_strings_without_a_tokenizer_are_refused():
    llm = LLM(tiny())
    with pytest.raises(RequestError, match="stop strings need the model's tokenizer"):
        llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, stop=["x"]))
    assert clean(llm)


@pytest.mark.parametrize("kw, match", [
    ({"stop_token_ids": 5}, "stop_token_ids must be a list"),
    ({"stop_token_ids": ["a"]}, "stop_token_ids must be non-negative token ids"),
    ({"temperature": None}, "temperature must be a number"),
    ({"temperature": "0"}, "temperature must be a number"),
    ({"top_p": float("nan")}, "top_p must be a number"),
    ({"max_tokens": True}, "max_tokens must be None or an integer"),
    ({"max_tokens": 2.5}, "max_tokens must be None or an integer"),
    ({"n": True}, "n must be an integer"),
    ({"logprobs": True}, "logprobs must be None or an integer"),
    ({"stop": 5}, "stop must be a string or a list of strings"),
])
def test_sampling_params_of_the_wrong_type_are_request_errors(kw, match):
    with pytest.raises(RequestError, match=match):
        SamplingParams(**kw)


@pytest.mark.parametrize("kw, match", [
    ({"max_new_tokens": 4}, "unknown setting 'max_new_tokens'; did you mean max_tokens"),
    ({"temprature": 0.5}, "unknown setting 'temprature'; did you mean temperature"),
    ({"do_sample": False}, "did you mean temperature"),
    ({"colour": 1}, "unknown setting 'colour'; the settings are n, temperature"),
])
def test_an_unknown_sampling_setting_names_the_one_meant(kw, match):
    with pytest.raises(RequestError, match=match) as caught:
        SamplingParams(**kw)
    assert isinstance(caught.value, TypeError)  # still what Python raises for an unknown keyword
    assert dataclasses.replace(SamplingParams(), max_tokens=3).max_tokens == 3


def test_numpy_and_tensor_prompts_are_token_ids_and_bools_are_not():
    model = tiny()
    llm = LLM(model, block_size=4)
    want = reference(model, [5, 6, 7])
    assert llm.generate(np.array([5, 6, 7]), GREEDY)[0].outputs[0].token_ids == want
    assert llm.generate([np.int64(5), np.int64(6), np.int64(7)], GREEDY)[0].outputs[0].token_ids == want
    outs = llm.generate(torch.tensor([[5, 6, 7], [5, 6, 7]]), GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == [want, want]
    assert SamplingParams(max_tokens=np.int64(3)).max_tokens == 3
    with pytest.raises(RequestError, match="prompt token True is not an id"):
        llm.generate([[True, 2]], GREEDY)
    assert clean(llm)


def test_chat_takes_one_message_and_refuses_empty_or_malformed_conversations():
    tok = train_bpe(["hello there, how are you? fine thanks. " * 10], vocab_size=300, progress=False)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    llm = LLM(tiny(vocab=tok.vocab_size, max_position_embeddings=256), tokenizer=tok)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    one = llm.chat({"role": "user", "content": "hello"}, params)
    assert one[0].outputs[0].token_ids == llm.chat([{"role": "user", "content": "hello"}], params)[0].outputs[0].token_ids
    for bad in ([], [[]], "hello"):
        with pytest.raises(RequestError, match="chat\\(\\) needs a conversation"):
            llm.chat(bad, params)
    with pytest.raises(RequestError, match="give each message a string 'content'"):
        llm.chat([{"role": "user", "content": None}], params)
    assert clean(llm)


def test_unknown_engine_options_name_the_known_ones():
    from llmlab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option\\(s\\) foo; engine options are: max_num_seqs, "):
        LLM(tiny(), foo=1)


@pytest.mark.parametrize("kw,match", [
    ({"enable_prefix_caching": "no"}, "enable_prefix_caching must be True or False, got 'no'"),  # was: on
    ({"enforce_eager": 0}, "enforce_eager must be True or False, got 0"),
    ({"async_scheduling": 1}, "async_scheduling must be True, False or None"),
    ({"max_num_seqs": True}, "max_num_seqs must be a positive integer, got True"),  # was: a TypeError in cpu_decode
    ({"gpu_memory_utilization": "0.5"}, "gpu_memory_utilization must be a number in \\(0, 1\\], got '0.5'"),
])
def test_engine_options_of_the_wrong_type_are_one_sentence_errors(kw, match):
    from llmlab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        LLM(tiny(), **kw)


def test_numpy_engine_options_are_their_python_values():
    model = tiny()
    llm = LLM(model, block_size=np.int64(4), num_blocks=np.int32(40), enable_prefix_caching=np.bool_(False))
    assert type(llm.config.block_size) is int and llm.config.enable_prefix_caching is False
    assert llm.generate([[5, 6, 7]], GREEDY)[0].outputs[0].token_ids == reference(model, [5, 6, 7])
    assert clean(llm)


def test_a_model_of_the_wrong_kind_or_a_missing_device_is_one_sentence():
    """Both were raw TypeErrors from pathlib, and torch's AssertionError / RuntimeError for a Transformer's device."""
    from llmlab.errors import ConfigError

    for bad in (None, 5, torch.nn.Linear(2, 2)):
        with pytest.raises(ConfigError, match=f"LLM\\(\\) takes a model directory, .* got {type(bad).__name__}; "):
            LLM(bad)
    with pytest.raises(ConfigError, match="device 'tpu' is not a device name"):
        LLM(tiny(), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="this machine has no CUDA GPU"):
            LLM(tiny(), device="cuda")
    assert LLM(tiny(), device="cpu").model.embed.weight.device.type == "cpu"


def test_llm_engine_refuses_arguments_of_the_wrong_kind():
    """A path for the model or tokenizer, or a dict of options: raw AttributeError / TypeError from deep inside."""
    from llmlab.engine import EngineConfig, LLMEngine
    from llmlab.errors import ConfigError

    with pytest.raises(ConfigError, match="LLMEngine\\(\\) takes a loaded llmlab Transformer, got str; load a"):
        LLMEngine("some/dir")
    with pytest.raises(ConfigError, match="takes a loaded llmlab Tokenizer, got str; load it with llmlab.tokenizer"):
        LLMEngine(tiny(), "some/dir")
    with pytest.raises(ConfigError, match="LLMEngine\\(config=...\\) takes an EngineConfig, got dict; build one"):
        LLMEngine(tiny(), config={"block_size": 4})
    assert LLMEngine(tiny(), config=EngineConfig(block_size=4)).block_manager.block_size == 4
