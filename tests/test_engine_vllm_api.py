"""vLLM offline-inference code that runs unchanged on llmlab's engine: dict prompts, the model's own sampling
defaults from generation_config.json, chat() with tools / chat_template_kwargs / continue_final_message / content
parts (rendered as transformers' apply_chat_template renders them), vLLM's LLM() and LLMEngine keywords, and
SamplingParams settings given at vLLM's defaults; what llmlab cannot do is refused with the reason."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from llmlab import ConfigError, ModelConfig, Transformer
from llmlab.engine import LLM, LLMEngine, RequestError, RequestMetrics, SamplingParams
from llmlab.engine.config import EngineConfig
from llmlab.engine.sequence import UnknownParameterError
from llmlab.tokenizer import train_bpe

TEXT = "The quick brown fox says hello to the lazy dog. Tools: search, weather. "
TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
GREEDY = SamplingParams(temperature=0, max_tokens=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_model")
    tok = train_bpe([TEXT * 10], vocab_size=320, progress=False)
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_position_embeddings=256)
    Transformer(cfg).eval().save_pretrained(d)
    tok.save(d)
    return d


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(str(model_dir), block_size=4)


def test_dict_prompts_are_vllms_text_and_tokens_prompts(llm):
    text = llm.generate("The quick", GREEDY)[0]
    as_dict = llm.generate({"prompt": "The quick"}, GREEDY)[0]
    ids = llm.generate([{"prompt_token_ids": text.prompt_token_ids}], GREEDY)[0]
    assert as_dict.prompt == "The quick" and as_dict.outputs[0].token_ids == text.outputs[0].token_ids
    assert ids.prompt_token_ids == text.prompt_token_ids and ids.outputs[0].token_ids == text.outputs[0].token_ids
    both = [{"prompt": "The quick"}, "The quick", {"prompt_token_ids": [5, 6]}]
    assert [o.prompt_token_ids for o in llm.generate(both, GREEDY)][:2] == [text.prompt_token_ids] * 2
    with pytest.raises(RequestError, match="'multi_modal_data' are not supported"):
        llm.generate({"prompt": "x", "multi_modal_data": {}}, GREEDY)
    with pytest.raises(RequestError, match="needs 'prompt'"):
        llm.generate([{}], GREEDY)
    # each key holds its own kind (text under prompt_token_ids was tokenized, ids under prompt taken as ids)
    with pytest.raises(RequestError, match="'prompt_token_ids' takes a list of token ids, got text; give text as"):
        llm.generate({"prompt_token_ids": "The quick"}, GREEDY)
    with pytest.raises(RequestError, match="'prompt' takes text, got list; give token ids as"):
        llm.generate({"prompt": [5, 6]}, GREEDY)
    assert llm.generate("The", GREEDY)[0].outputs  # the engine still serves after those refusals


def test_no_sampling_params_means_the_models_generation_config(model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    assert LLM(str(d), block_size=4).get_default_sampling_params() == SamplingParams()  # no file: vLLM's defaults
    (d / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 3, "do_sample": True, "eos_token_id": None}))
    llm = LLM(str(d), block_size=4)
    assert llm.get_default_sampling_params() == SamplingParams(temperature=0.6, top_p=0.95, top_k=20, max_tokens=3)
    assert len(llm.generate("The quick")[0].outputs[0].token_ids) == 3  # max_new_tokens became max_tokens
    (d / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "max_new_tokens": 5}))
    llm = LLM(str(d), block_size=4)
    assert llm.generate("The quick")[0].outputs[0].token_ids == \
        llm.generate("The quick", SamplingParams(temperature=0, max_tokens=5))[0].outputs[0].token_ids
    (d / "generation_config.json").write_text(json.dumps({"top_p": 0}))
    with pytest.raises(ConfigError, match="generation_config.json has settings SamplingParams refuses.*top_p"):
        LLM(str(d), block_size=4).generate("The quick")
    assert LLM(Transformer(ModelConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2)).eval(),
               block_size=4).get_default_sampling_params() == SamplingParams()


MESSAGES = [{"role": "user", "content": "hello"}]


def test_chat_renders_as_transformers_apply_chat_template(llm, model_dir):
    """tools and template variables reach the template; continue_final_message cuts right after the last message;
    the prompt ids are the rendered text's, the text is what out.prompt reports."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(model_dir)
    tok = llm.get_tokenizer()
    tools = [{"type": "function", "function": {"name": "search"}}]
    partial = MESSAGES + [{"role": "assistant", "content": "The quick brown "}]
    cases = [(MESSAGES, dict(add_generation_prompt=True)),
             (MESSAGES, dict(add_generation_prompt=True, tools=tools)),
             (MESSAGES, dict(add_generation_prompt=True, enable_thinking=False)),
             (partial, dict(continue_final_message=True)),
             (partial, dict(add_generation_prompt=False))]
    for messages, kw in cases:
        want = hf.apply_chat_template(messages, tokenize=False, **kw)
        assert tok.apply_chat_template(messages, tokenize=False, **kw) == want, kw
        want_ids = hf.apply_chat_template(messages, tokenize=True, return_dict=False, **kw)
        assert tok.apply_chat_template(messages, **kw) == want_ids, kw  # transformers' own tokenization
        pt = tok.apply_chat_template(messages, return_dict=True, return_tensors="pt", **kw)
        assert pt["input_ids"].tolist() == [want_ids] and pt["attention_mask"].sum() == len(want_ids)
        chat_kw = {"add_generation_prompt": False, **{k: v for k, v in kw.items() if k != "enable_thinking"}}
        if "enable_thinking" in kw:
            chat_kw["chat_template_kwargs"] = {"enable_thinking": kw["enable_thinking"]}
        out = llm.chat(messages, GREEDY, **chat_kw)[0]
        assert out.prompt == want and out.prompt_token_ids == want_ids
    assert tok.apply_chat_template(partial, tokenize=False, continue_final_message=True).endswith(
        "<|im_start|>assistant\nThe quick brown ")  # the template keeps the trailing space: so does the cut
    with pytest.raises(RequestError, match="set only one of them"):
        llm.chat(partial, GREEDY, continue_final_message=True)  # add_generation_prompt defaults to True


def test_chat_joins_text_content_parts_and_refuses_others(llm):
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "fox"}]}]
    joined = [{"role": "user", "content": "hello\nfox"}]
    assert llm.chat(parts, GREEDY)[0].prompt_token_ids == llm.chat(joined, GREEDY)[0].prompt_token_ids
    with pytest.raises(RequestError, match="is not text"):
        llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], GREEDY)
    with pytest.raises(RequestError, match="content_format must be"):
        llm.chat(MESSAGES, GREEDY, chat_template_content_format="html")


def test_vllm_accessors_and_completion_finished_is_a_method(llm):
    assert llm.llm_engine is llm.engine and llm.get_tokenizer() is llm.tokenizer
    tok = llm.get_tokenizer()
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (tok.eos_id, tok.bos_id, tok.pad_id)
    c = llm.generate("The", GREEDY, False)[0].outputs[0]  # use_tqdm positional, as in vLLM
    assert c.finished() is True


def test_sampling_params_at_vllms_defaults_are_accepted_other_values_refused():
    vllm_defaults = dict(min_tokens=0, prompt_logprobs=None, include_stop_str_in_output=False, detokenize=True,
                         logit_bias=None, best_of=None, spaces_between_special_tokens=True, length_penalty=1.0,
                         truncate_prompt_tokens=None, logits_processors=None, bad_words=None)
    assert SamplingParams(max_tokens=5, **vllm_defaults) == SamplingParams(max_tokens=5)
    for name, value in (("detokenize", False), ("length_penalty", 2.0), ("best_of", 2),
                        ("output_kind", None)):
        with pytest.raises(UnknownParameterError, match=f"{name}={value!r} \\(a vLLM setting\\) is not supported"):
            SamplingParams(**{name: value})
    with pytest.raises(UnknownParameterError, match="takes keywords only"):
        SamplingParams(1, 0.5)  # vLLM's second field is presence_penalty, llmlab's was temperature: never guessed
    assert SamplingParams(seed=-1).seed is None  # vLLM's "no seed"


def test_llm_takes_vllms_keywords_where_they_change_nothing(model_dir):
    llm = LLM(str(model_dir), trust_remote_code=True, tensor_parallel_size=1, quantization=None, revision=None,
              disable_log_stats=True, swap_space=4, seed=None, kv_cache_memory_bytes=1 << 20,
              num_gpu_blocks_override=64, dtype="float", block_size=4)
    assert (llm.config.kv_cache_memory, llm.config.num_blocks, llm.config.seed) == (1 << 20, 64, 0)
    assert next(llm.model.parameters()).dtype == torch.float32
    for kw, why in ((dict(tensor_parallel_size=2), "one device"), (dict(quantization="awq"), "llmlab's quantizers"),
                    (dict(enable_lora=True), "merge the adapter")):
        with pytest.raises(ConfigError, match=why):
            LLM(str(model_dir), **kw)
    with pytest.raises(ConfigError, match="seed must be an integer"):
        LLM(str(model_dir), seed="0")


def test_llm_engine_add_request_and_abort_request_as_vllm(model_dir):
    from llmlab.model.pretrained import from_pretrained
    from llmlab.tokenizer import load_tokenizer

    engine = LLMEngine(from_pretrained(model_dir), load_tokenizer(model_dir), EngineConfig(block_size=4))
    arrived = time.time() - 2.0
    engine.add_request("a", {"prompt": "The quick"}, GREEDY, arrival_time=arrived, priority=0)
    engine.add_request("b", [5, 6, 7], GREEDY)
    engine.add_request("c", [5, 6], SamplingParams(max_tokens=50))
    assert engine.requests["a"].metrics["arrival"] < time.perf_counter() - 1.5  # on the engine's clock
    with pytest.raises(RequestError, match="first come, first served"):
        engine.add_request("d", [5], GREEDY, priority=1)
    with pytest.raises(RequestError, match="lora_request is not supported"):
        engine.add_request("d", [5], GREEDY, lora_request=object())
    with pytest.raises(RequestError, match="abort_request\\(\\) takes a list"):
        engine.abort(["b", "c"])
    engine.abort_request(["b", "c"])
    engine.abort_request("missing")
    engine.abort_request(12)  # one id of any kind, as abort() takes
    outs = {}
    while engine.has_unfinished_requests():
        outs |= {o.request_id: o for o in engine.step() if o.finished}
    assert set(outs) == {"a"} and outs["a"].prompt == "The quick" and len(outs["a"].outputs[0].token_ids) == 4
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    m = outs["a"].metrics  # vLLM's RequestMetrics on the time.time() clock, its arrival_time as given
    assert isinstance(m, RequestMetrics) and m.arrival_time == arrived
    assert m.arrival_time < m.first_scheduled_time <= m.first_token_time <= m.last_token_time <= m.finished_time
    assert m.finished_time <= time.time()
    assert m.time_in_queue == pytest.approx(m.first_scheduled_time - m.arrival_time, abs=1e-3)
    assert m.time_in_queue > 1.5


def test_request_metrics_while_streaming(llm):
    """Each step's output carries the timestamps so far: no finished_time until the request ends; the n samples'
    first admission is the request's first_scheduled_time."""
    engine = llm.llm_engine
    engine.add_request("s", [5, 6, 7], SamplingParams(temperature=1.0, seed=0, n=2, max_tokens=3, ignore_eos=True))
    seen = []
    while engine.has_unfinished_requests():
        seen += engine.step()
    first, last = seen[0].metrics, seen[-1].metrics
    assert not seen[0].finished and first.finished_time is None and first.first_token_time is not None
    assert last.finished_time is not None and last.first_token_time == first.first_token_time
    assert first.last_token_time <= last.last_token_time and last.first_scheduled_time == first.first_scheduled_time


def test_dtype_names_half_and_float():
    from llmlab.model.pretrained import resolve_dtype

    assert (resolve_dtype("half"), resolve_dtype("float")) == (torch.float16, torch.float32)


def test_auto_dtype_keeps_a_16_bit_checkpoints_dtype_on_a_gpu(tmp_path, monkeypatch):
    """vLLM's dtype="auto": a GPU loads an fp16 checkpoint in fp16 and a bf16 or fp32 one in bf16 (fp16 on a GPU
    without bf16); a CPU loads fp32."""
    from llmlab.model import pretrained
    from llmlab.model.pretrained import auto_dtype

    def ckpt(name, **cfg):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        return tmp_path / name

    fp16, bf16, fp32 = ckpt("a", torch_dtype="float16"), ckpt("b", dtype="bfloat16"), ckpt("c", torch_dtype="float32")
    nested = ckpt("d", model_type="gemma3", text_config={"torch_dtype": "float16"})  # a multimodal config's text part
    monkeypatch.setattr(pretrained, "_bf16_supported", lambda dev: True)
    assert [auto_dtype(p, "cuda") for p in (fp16, bf16, fp32, nested, tmp_path / "missing")] == \
        [torch.float16, torch.bfloat16, torch.bfloat16, torch.float16, torch.bfloat16]
    assert auto_dtype(fp16, "cpu") == auto_dtype(bf16, torch.device("cpu")) == torch.float32
    asked = []
    monkeypatch.setattr(pretrained, "_bf16_supported", lambda dev: asked.append(dev) or False)
    assert auto_dtype(bf16, "cuda:1") == torch.float16 and asked == [torch.device("cuda:1")]


def test_chat_template_variables_as_transformers_defines_them(llm, model_dir):
    """tools is None (not undefined) without tools, as transformers passes it; chat_template_kwargs may set
    add_generation_prompt (vLLM lets it win) but not the messages; a tool tojson cannot write is named as such."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(model_dir)
    strict = ("{% if tools is not none %}TOOLS {{ tools | tojson }}\n{% endif %}"
              "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}assistant:{% endif %}")
    tok = llm.get_tokenizer()
    for kw in (dict(), dict(tools=[{"name": "search"}]), dict(add_generation_prompt=True)):
        want = hf.apply_chat_template(MESSAGES, chat_template=strict, tokenize=False, **kw)
        assert tok.apply_chat_template(MESSAGES, chat_template=strict, tokenize=False, **kw) == want, kw
    out = llm.chat(MESSAGES, GREEDY, chat_template=strict, chat_template_kwargs={"add_generation_prompt": False})[0]
    assert out.prompt == hf.apply_chat_template(MESSAGES, chat_template=strict, tokenize=False)
    with pytest.raises(RequestError, match="cannot set messages"):
        llm.chat(MESSAGES, GREEDY, chat_template_kwargs={"messages": []})
    with pytest.raises(RequestError, match="cannot set tokenizer"):
        llm.chat(MESSAGES, GREEDY, chat_template_kwargs={"tokenizer": None})
    mine = [{"name": "mine"}]  # chat_template_kwargs' tools win over tools=, as in vLLM
    out = llm.chat(MESSAGES, GREEDY, chat_template=strict, tools=[{"name": "other"}],
                   chat_template_kwargs={"tools": mine})[0]
    assert '"mine"' in out.prompt and '"other"' not in out.prompt
    with pytest.raises(RequestError, match="could not render these messages \\(.*serializable") as e:
        llm.chat(MESSAGES, GREEDY, chat_template=strict, tools=[object()])
    assert "string 'content'" not in str(e.value)  # every content here is text: not blamed
    with pytest.raises(Exception, match="does not take padding"):
        tok.apply_chat_template(MESSAGES, padding=True)


def test_auto_content_format_keeps_parts_for_templates_that_loop_over_them(llm):
    parts_template = ("{% for m in messages %}{{ m['role'] }}:{% for p in m['content'] %}[{{ p['text'] }}]"
                      "{% endfor %}\n{% endfor %}")
    msg = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "fox"}]}]
    assert llm.chat(msg, GREEDY, chat_template=parts_template)[0].prompt == "user:[hello][fox]"  # trim_blocks
    one = [{"role": "user", "content": "hello"}]  # a string content is one text part for such a template, as vLLM
    assert llm.chat(one, GREEDY, chat_template=parts_template)[0].prompt == "user:[hello]"
    assert llm.chat(msg, GREEDY, chat_template=TEMPLATE)[0].prompt.startswith("<|im_start|>user\nhello\nfox")


def test_max_logprobs_seed_and_priority_edges(model_dir):
    llm = LLM(str(model_dir), max_logprobs=2, seed=-3, block_size=4)
    assert llm.generate("The", SamplingParams(max_tokens=2, logprobs=2), priority=[0])[0].outputs[0].logprobs
    with pytest.raises(RequestError, match="more than this engine's max_logprobs=2"):
        llm.generate("The", SamplingParams(max_tokens=2, logprobs=3))
    with pytest.raises(RequestError, match="first come, first served"):
        llm.generate("The", GREEDY, priority=1)
    with pytest.raises(ConfigError, match="both kv_cache_memory and kv_cache_memory_bytes, which name the same"):
        LLM(str(model_dir), kv_cache_memory_bytes=1 << 21, kv_cache_memory=1 << 20)
    assert LLM(str(model_dir), max_logprobs=-1, block_size=4).config.max_logprobs is None  # vLLM's "no cap"
    with pytest.raises(ConfigError, match="seed must be an integer in"):
        LLM(str(model_dir), seed=2**64)
    with pytest.raises(ConfigError, match="takes a number of GiB"):
        LLM(str(model_dir), swap_space="4GB")
    assert SamplingParams(bad_words=[], logit_bias={}) == SamplingParams()
    with pytest.raises(RequestError, match="allowed_token_ids is empty, which forbids every token"):
        SamplingParams(allowed_token_ids=[])


def test_an_int_request_id_is_still_aborted_when_its_step_fails(model_dir, monkeypatch):
    """abort() refuses only lists: a step that fails drops its requests whatever their id type."""
    from llmlab.model.pretrained import from_pretrained

    engine = LLMEngine(from_pretrained(model_dir), None, EngineConfig(block_size=4))
    engine.add_request(7, [5, 6, 7], GREEDY)
    monkeypatch.setattr(engine.runner, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        engine.step()
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_chat_cli_samples_with_the_models_recommended_settings_unless_flags_say_otherwise(model_dir, tmp_path):
    import argparse

    from llmlab.engine.cli import _sampling

    flags = argparse.Namespace(temperature=None, top_p=None, max_tokens=8, seed=3)
    assert _sampling(LLM(str(model_dir), block_size=4), flags) == \
        SamplingParams(temperature=0.7, top_p=0.95, max_tokens=8, seed=3)  # no generation_config.json: the CLI's
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_k": 20, "max_new_tokens": 99}))
    llm = LLM(str(d), block_size=4)
    assert _sampling(llm, flags) == SamplingParams(temperature=0.6, top_p=0.95, top_k=20, max_tokens=8, seed=3)
    flags.temperature, flags.top_p = 0.0, 0.5
    assert _sampling(llm, flags) == SamplingParams(temperature=0.0, top_p=0.5, top_k=20, max_tokens=8, seed=3)
