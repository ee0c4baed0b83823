"""`LLM`: offline batch generation with the engine, in vLLM's shape.

    from llmlab import LLM, SamplingParams
    llm = LLM("smollm2-135m")                       # HF dir, .gguf, registry name, or a Transformer
    outs = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8))
    outs[0].outputs[0].text, outs[0].outputs[0].token_ids, outs[0].outputs[0].finish_reason
    llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=32))

Prompts are text (needs the model's tokenizer) or token-id lists; `sampling_params` is one
SamplingParams for all prompts or one per prompt. `dtype` is a torch dtype, a name ("bf16", "float32", ...)
or "auto"/None: fp32 on CPU; on CUDA the checkpoint's fp16 or bf16, bf16 for fp32 checkpoints
(pretrained.auto_dtype; a Transformer passed in keeps its own). Engine options are
keyword arguments (EngineConfig's fields: max_num_seqs, max_num_batched_tokens, kv_cache_memory,
gpu_memory_utilization, block_size, num_blocks, enable_prefix_caching, fuse_projections,
compile_decode, ...).

A Transformer passed in is served in place, not copied: it is put in eval mode, its q/k/v and gate/up
projections fused into views of one weight, and on CPU its linears and norms routed to faster kernels over
the same parameters. Training it further (an RL loop) keeps working and the engine sees the new weights
(its prefix cache resets when they change; see LLMEngine.reset_prefix_cache).

Not here: the step loop (llm_engine.py), serving (serve/).
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import sys
from pathlib import Path

import torch

from llmlab.engine.config import EngineConfig
from llmlab.engine.llm_engine import LLMEngine, is_tokenizer
from llmlab.engine.output import RequestOutput
from llmlab.engine.sequence import RequestError, SamplingParams
from llmlab.errors import ConfigError, TokenizerError, is_number
from llmlab.model.transformer import Transformer

# vLLM's names for engine options llmlab has under another name
_VLLM_ALIASES = {"kv_cache_memory_bytes": "kv_cache_memory", "num_gpu_blocks_override": "num_blocks"}
# vLLM options with nothing to do here at the values each test accepts (a script that passes them runs as it would
# there); other values are refused with the reason
_VLLM_NOOPS = {
    "trust_remote_code": (lambda v: isinstance(v, bool), "llmlab never runs a checkpoint's own code"),
    "tensor_parallel_size": (lambda v: v == 1, "llmlab's engine runs on one device"),
    "pipeline_parallel_size": (lambda v: v == 1, "llmlab's engine runs on one device"),
    "data_parallel_size": (lambda v: v == 1, "llmlab's engine runs on one device"),
    "quantization": (lambda v: v is None, "quantize the checkpoint with llmlab's quantizers, then load it"),
    "revision": (lambda v: v is None, "llmlab loads local directories, GGUF files and registry names"),
    "tokenizer_revision": (lambda v: v is None, "llmlab loads local directories, GGUF files and registry names"),
    "download_dir": (lambda v: v is None, "llmlab loads local directories, GGUF files and registry names"),
    "tokenizer_mode": (lambda v: v == "auto", "llmlab has one tokenizer implementation"),
    "load_format": (lambda v: v in ("auto", "safetensors", "gguf"), "llmlab reads safetensors and GGUF only"),
    "kv_cache_dtype": (lambda v: v == "auto", "the KV cache has the model's dtype"),
    "enable_lora": (lambda v: v is False, "merge the adapter into the model first, then serve the merged model"),
    "skip_tokenizer_init": (lambda v: v is False, "pass token-id prompts to an engine without a tokenizer instead"),
    "disable_log_stats": (lambda v: isinstance(v, bool), "it takes True or False (llmlab logs no stats)"),
    "disable_custom_all_reduce": (lambda v: isinstance(v, bool), "it takes True or False (one device: no all-reduce)"),
    # llmlab preempts by recompute, never swaps to CPU memory
    "swap_space": (lambda v: is_number(v) and v >= 0, "it takes a number of GiB (unused: preemption recomputes)"),
}


def _vllm_options(options: dict) -> dict:
    """Engine options with vLLM's aliases renamed and its options that change nothing here dropped."""
    out = {}
    for name, value in options.items():
        if name in _VLLM_NOOPS:
            ok, why = _VLLM_NOOPS[name]
            if not ok(value):
                raise ConfigError(f"LLM({name}={value!r}) is not supported: {why}.")
            continue
        ours = _VLLM_ALIASES.get(name, name)
        if ours in out:
            given = sorted(n for n in options if _VLLM_ALIASES.get(n, n) == ours)
            raise ConfigError(f"LLM() got both {' and '.join(given)}, which name the same option; give one of them.")
        out[ours] = value
    return out


class LLM:
    def __init__(self, model: str | Path | Transformer, *, tokenizer=None, dtype: str | torch.dtype | None = None,
                 device: str | torch.device | None = None, **engine_options):
        engine_options = _vllm_options(engine_options)
        unknown = sorted(set(engine_options) - {f.name for f in dataclasses.fields(EngineConfig)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(EngineConfig))
            raise ConfigError(f"LLM() got unknown option(s) {', '.join(unknown)}; engine options are: {known}.")
        if dtype == "auto":  # vLLM's spelling of the default (pretrained.auto_dtype); a Transformer keeps its own
            dtype = None
        if isinstance(tokenizer, (str, Path)):  # a tokenizer.json, or a model directory / GGUF / name that has one
            from llmlab.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        elif tokenizer is not None and not is_tokenizer(tokenizer):
            raise ConfigError(f"LLM(tokenizer=...) takes an llmlab Tokenizer or the path of a tokenizer.json or model "
                              f"directory, got a {type(tokenizer).__name__}; pass the path its files are in.")
        if not isinstance(model, (str, Path, Transformer)):
            raise ConfigError(f"LLM() takes a model directory, a .gguf file, a registry name or an llmlab Transformer, "
                              f"got {type(model).__name__}; save a transformers model with save_pretrained(dir) "
                              "and pass the directory.")
        if isinstance(model, Transformer):  # used where it is, unless told otherwise
            if device is not None:
                from llmlab.model.pretrained import resolve_device

                model = model.to(resolve_device(device))  # a bad name or a missing GPU: one sentence, not torch's
            if dtype is not None:
                from llmlab.model.pretrained import resolve_dtype

                model = model.to(resolve_dtype(dtype))
        else:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            from llmlab import artifacts
            from llmlab.model.pretrained import auto_dtype, from_pretrained, resolve_device

            if dtype is None:  # a bad device is refused before anything is fetched or read
                dev = resolve_device(device)
                dtype = auto_dtype(artifacts.resolve(model), dev) if dev.type == "cuda" else torch.float32
            source = model
            model = from_pretrained(source, dtype=dtype, device=device)
            if tokenizer is None:
                tokenizer = _load_tokenizer(source)
            from llmlab.model.pretrained import generation_defaults

            self._sampling_defaults = generation_defaults(artifacts.resolve(source))
        self.config = EngineConfig(**engine_options)
        self.engine = LLMEngine(model, tokenizer, self.config)
        self.model, self.tokenizer = model, tokenizer
        self._ids = itertools.count()

    _sampling_defaults: dict = {}  # class default: a Transformer passed in has no generation_config.json

    @property
    def llm_engine(self) -> LLMEngine:
        """The engine under this LLM (vLLM's name; also `engine`)."""
        return self.engine

    def get_tokenizer(self):
        """The model's tokenizer (None where it has none: token-id prompts only)."""
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """What generate() and chat() sample with when given no SamplingParams: the model's generation_config.json
        settings (temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens) over SamplingParams'
        defaults, as vLLM does."""
        try:
            return SamplingParams(**self._sampling_defaults)
        except RequestError as e:
            raise ConfigError(f"the model's generation_config.json has settings SamplingParams refuses ({e}); pass "
                              "sampling_params=SamplingParams(...) explicitly, or fix the file.") from None

    def generate(self, prompts: str | list[int] | dict | list[str] | list[list[int]] | list[dict],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool | None = None, lora_request=None, priority: list[int] | None = None,
                 ) -> list[RequestOutput]:
        """Generate for every prompt; outputs in prompt order, each finished. A prompt is text, token ids, or
        vLLM's {"prompt": text} / {"prompt_token_ids": ids}. Without `sampling_params`, the model's own defaults
        (get_default_sampling_params). A progress bar of finished requests (`use_tqdm`) shows by default where
        stderr is a terminal and there is more than one prompt."""
        if hasattr(prompts, "tolist") and not isinstance(prompts, str):  # a tensor or array: (L,) one, (B, L) many
            prompts = prompts.tolist()
        if isinstance(prompts, tuple):  # any sequence of prompts, as vLLM takes
            prompts = list(prompts)
        if isinstance(prompts, (str, dict)) or (
                isinstance(prompts, list) and prompts and isinstance(prompts[0], numbers.Integral)):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts:
            raise RequestError("generate() needs a prompt or a non-empty list of prompts (text or token-id lists).")
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params = list(sampling_params) if isinstance(sampling_params, (list, tuple)) \
            else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise RequestError(f"got {len(params)} SamplingParams for {len(prompts)} prompts; pass one, or one each.")
        # lora_request and priority are the engine's to accept or refuse, per request (vLLM: priority one per prompt)
        levels = list(priority) if isinstance(priority, (list, tuple)) else [priority or 0] * len(prompts)
        if len(levels) != len(prompts):
            raise RequestError(f"got {len(levels)} priorities for {len(prompts)} prompts; pass one each.")
        ids = [f"gen-{next(self._ids)}" for _ in prompts]
        mine = set(ids)
        done: dict[str, RequestOutput] = {}
        others: list[RequestOutput] = []  # finished requests another caller added: theirs to collect from step()
        if use_tqdm is None:
            use_tqdm = len(ids) > 1 and sys.stderr.isatty()
        bar = _progress(len(ids)) if use_tqdm else None
        try:
            for rid, prompt, p, level in zip(ids, prompts, params, levels):
                self.engine.add_request(rid, prompt, p, lora_request=lora_request, priority=level)
            while len(done) < len(ids):
                for out in self.engine.step(finished_only=True):
                    if out.request_id not in mine:
                        others.append(out)
                    elif out.finished:
                        done[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            for rid in ids:  # all or nothing: the caller gets the error and a clean engine
                self.engine.abort(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
            if others:
                self.engine.deliver_later(others)  # once, at the end: the next step() returns them first
        return [done[rid] for rid in ids]

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt prefixes (done by itself when the model's weights change in place; see
        LLMEngine.reset_prefix_cache)."""
        self.engine.reset_prefix_cache()

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | list[SamplingParams] | None = None, use_tqdm: bool | None = None,
             lora_request=None, chat_template: str | None = None, chat_template_content_format: str = "auto",
             add_generation_prompt: bool = True, continue_final_message: bool = False, tools: list[dict] | None = None,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """Render each conversation with the chat template (the tokenizer's own by default), then generate, as vLLM:
        `tools` and `chat_template_kwargs` (e.g. {"enable_thinking": False}) reach the template;
        `continue_final_message` leaves the last (assistant) message open for the model to go on;
        OpenAI-style content parts [{"type": "text", "text": ...}] are joined with newlines (content format
        "string") or passed to the template as they are ("openai"); "auto" picks "openai" for a template that loops
        over a message's content, as vLLM's detection does. `chat_template_kwargs` may also set
        add_generation_prompt or continue_final_message (they win over the arguments, as in vLLM)."""
        if self.tokenizer is None:
            raise RequestError("chat() needs the model's tokenizer; load the model from a directory or GGUF that "
                               "has one, or pass tokenizer=...")
        if chat_template_content_format not in ("auto", "string", "openai"):
            raise RequestError(f"chat_template_content_format must be 'auto', 'string' or 'openai', got "
                               f"{chat_template_content_format!r}.")
        if chat_template is not None and not isinstance(chat_template, str):
            raise RequestError(f"chat_template must be the template's Jinja text (a str), got "
                               f"{type(chat_template).__name__}.")
        if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
            raise RequestError(f"chat_template_kwargs must be a dict of template variables, got "
                               f"{type(chat_template_kwargs).__name__}.")
        from llmlab.tokenizer.chat import chat_text, parts_content, takes_content_parts, text_content

        variables = dict(chat_template_kwargs or {})
        add_generation_prompt = variables.pop("add_generation_prompt", add_generation_prompt)
        continue_final_message = variables.pop("continue_final_message", continue_final_message)
        clash = sorted(set(variables) & {"messages", "template", "chat_template", "tokenizer"})
        if clash:
            raise RequestError(f"chat_template_kwargs cannot set {', '.join(clash)}: pass the conversation as messages "
                               "and the template as chat_template.")
        if tools is not None:
            variables.setdefault("tools", tools)  # chat_template_kwargs win, as in vLLM

        if isinstance(messages, dict):  # one message
            messages = [messages]
        if isinstance(messages, tuple):  # any sequence, as generate() takes prompts
            messages = list(messages)
        if isinstance(messages, list):
            messages = [list(c) if isinstance(c, tuple) else c for c in messages]
        conversations = [messages] if isinstance(messages, list) and messages and isinstance(messages[0], dict) \
            else messages
        if not isinstance(conversations, list) or not conversations or not all(
                isinstance(c, list) and c for c in conversations):
            raise RequestError("chat() needs a conversation: a non-empty list of {'role': ..., 'content': ...} "
                               "messages, or a list of such conversations.")
        if chat_template is None and self.tokenizer.chat_template is None:
            raise RequestError("this model's tokenizer has no chat template (a base model, or a tokenizer.model "
                               "without its tokenizer_config.json); pass one as LLM.chat(..., chat_template=...), or "
                               "prompt it with LLM.generate.")
        if chat_template_content_format == "auto":
            template = chat_template if chat_template is not None else self.tokenizer.chat_template
            chat_template_content_format = "openai" if template and takes_content_parts(template) else "string"
        try:
            if chat_template_content_format == "string":
                conversations = [[text_content(m) for m in conv] for conv in conversations]
            else:  # "openai": every content a list of parts, a string one part, as vLLM hands them over
                conversations = [[parts_content(m) for m in conv] for conv in conversations]
            texts = [chat_text(self.tokenizer, conv, chat_template, add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, **variables) for conv in conversations]
        except TokenizerError as e:
            raise RequestError(str(e)) from None
        # the template writes the special tokens (BOS included) itself, so none are added
        prompts = [self.tokenizer.encode(t, allowed_special="all") for t in texts]
        outs = self.generate(prompts, sampling_params, use_tqdm, lora_request)
        for out, text in zip(outs, texts):  # the rendered conversation, as vLLM reports it
            out.prompt = text
        return outs


def _load_tokenizer(source: str | Path):
    """The tokenizer that ships with a model (tokenizer.json in the directory, or the GGUF's vocab)."""
    from llmlab import artifacts
    from llmlab.tokenizer import load_tokenizer

    path = artifacts.resolve(source)
    try:
        return load_tokenizer(path)
    except TokenizerError:
        return None  # token-id prompts still work; text prompts then get a clear error


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="generate", unit="req")
