"""LLMEngine: requests in, one scheduled model step at a time, RequestOutputs out.

    engine.add_request("r1", prompt_ids_or_text, SamplingParams(...))
    while engine.has_unfinished_requests():
        for out in engine.step(): ...          # outputs of requests that progressed this step
    engine.abort("r1")                          # frees its KV blocks at once

`step` is the whole engine: schedule -> run (model + sampler) -> update (scheduler: computed
tokens, prefix cache, sampled tokens, token stops) -> detokenize (stop strings) -> outputs.
The interface is token ids; text is accepted and returned only if a tokenizer was given.

Async scheduling (`async_scheduling`, on by default where decode steps replay CUDA graphs): the
host's work for a step (scheduling, inputs, outputs, detokenizing) overlaps the device's. A step
is launched and the call returns; the next call plans the step after it while the sampled ids are
still placeholders (decode rows, prompt chunks, requests admitted from the queue), launches it with
those ids taken on the device, and only then waits for the first step's ids and turns them into
outputs. The device always has a step queued, and the host's ~0.2-1 ms a step hides behind it; its
copies to the device go through pinned memory (llmlab/transfer.py), so none of them waits for the
step in flight. A sequence that stops on a token (EOS, a stop token or string) has one wasted row
in the step after; sequences ending by length are left out of it in advance. Outputs are the same
as without (greedy, and seeded sampling; with requests queued the waiting engine may admit one a
step earlier, so steps hold other rows: logprobs then agree to rounding); the engine waits for a
step's tokens only where the next step would preempt. Logprobs travel back with the ids; penalties
count the in-flight token on the device.

Requests are checked when added — empty or out-of-vocabulary prompt, prompt longer than the
context, a request too large for the whole KV cache, bad sampling parameters — and refused with
a `RequestError`; the engine and its other requests are untouched. An error inside a step (the
model, the sampler, the detokenizer) aborts that step's requests, frees their blocks and reaches
the caller; the engine keeps serving. Requests that arrive after the model's weights changed in
place (RL or eval inside a training loop) find the prefix cache reset: cached K/V belong to the
old weights. The server (serve/) drives this same interface from its event loop.

Reference: vLLM `LLMEngine`; nano-vllm `engine/llm_engine.py`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass

from llmlab.engine.block_manager import BlockManager
from llmlab.engine.config import EngineConfig
from llmlab.engine.model_runner import InflightStep, ModelRunner
from llmlab.engine.output import CompletionOutput, Detokenizer, Logprob, RequestMetrics, RequestOutput
from llmlab.engine.scheduler import ScheduledBatch, Scheduler
from llmlab.engine.sequence import RequestError, SamplingParams, Sequence
from llmlab.errors import ConfigError, is_int, is_number
from llmlab.model.transformer import Transformer


@dataclass(slots=True)
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    seqs: list[Sequence]
    detoks: list[Detokenizer] | None
    metrics: dict[str, float]
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None  # RequestOutput's, once the prompt is done


class LLMEngine:
    def __init__(self, model: Transformer, tokenizer=None, config: EngineConfig | None = None, *,
                 pad_decode: bool = False):
        if not isinstance(model, Transformer):
            raise ConfigError(f"LLMEngine() takes a loaded llmlab Transformer, got {type(model).__name__}; load a "
                              "checkpoint with LLM(path) and use its llm_engine, or from_pretrained(path).")
        if tokenizer is not None and not is_tokenizer(tokenizer):
            raise ConfigError(f"LLMEngine(tokenizer=...) takes a loaded llmlab Tokenizer, got "
                              f"{type(tokenizer).__name__}; load it with llmlab.tokenizer.load_tokenizer(path).")
        if config is not None and not isinstance(config, EngineConfig):
            raise ConfigError(f"LLMEngine(config=...) takes an EngineConfig, got {type(config).__name__}; build one "
                              "with EngineConfig(**options).")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.runner = ModelRunner(model, self.config, pad_decode=pad_decode)
        self._clock_offset = time.time() - time.perf_counter()  # metrics: perf_counter stamps -> time.time()
        tok_vocab = getattr(tokenizer, "vocab_size", None)
        if isinstance(tok_vocab, int) and 0 < tok_vocab < model.cfg.vocab_size:
            self.runner.sample_vocab = tok_vocab  # never sample an id the tokenizer cannot turn into text
        self.max_model_len = self.runner.max_model_len
        self.block_manager = BlockManager(self.runner.num_blocks, self.config.block_size,
                                          enable_prefix_caching=self.config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=self.config.max_num_seqs,
                                   max_num_batched_tokens=self.config.max_num_batched_tokens,
                                   max_model_len=self.max_model_len,
                                   enable_chunked_prefill=self.config.enable_chunked_prefill)
        eos = model.cfg.eos_ids
        if tokenizer is not None and getattr(tokenizer, "eos_id", None) is not None:
            eos |= {tokenizer.eos_id}
        self.eos_token_ids = eos
        self.requests: dict[str, _Request] = {}
        # Finished outputs of requests LLM.generate stepped past (another caller's, e.g. a streaming loop's on this
        # engine): the next step() returns them first, so none is lost.
        self._undelivered: list[RequestOutput] = []
        self.num_steps = 0
        self._params = [(p, p.is_inference()) for p in model.parameters()]  # inference tensors have no version
        self._weights = self._weights_signature()
        self._arrivals = False  # requests added since the last step: check the weights before admitting them
        async_ok = self.config.async_scheduling
        # async scheduling where decode steps replay CUDA graphs (elsewhere a step runs inside the call: nothing
        # to overlap), unless set
        self.async_scheduling = self.runner.use_graphs if async_ok is None else async_ok
        if async_ok and not self.runner.can_launch():
            warnings.warn("async_scheduling=True has no effect on this engine: its steps run inside the call (a CPU "
                          "engine, or enforce_eager), so there is nothing to overlap; leave it unset to silence this.",
                          stacklevel=3)
        self._inflight: InflightStep | None = None  # a decode step launched whose ids the host has not read
        self.async_steps = 0  # steps launched ahead of the tokens of the step before
        self.step_s = 0.0  # wall time inside step() (stats: with the runner's sync wait, the host's share)

    # ---- requests -------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str | list[int] | dict) -> list[int]:
        if isinstance(prompt, dict):  # vLLM's TextPrompt / TokensPrompt
            prompt = _unwrap(prompt)
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this engine has no tokenizer, so prompts must be token-id lists; load the "
                                   "model with its tokenizer (LLM(path) or tokenizer=...).")
            # the tokenizer's own special tokens around the text (a BOS for Llama and Mistral), as transformers'
            # tokenizer(prompt) and vLLM add them; chat() renders its template to ids, which pass as they are
            ids = self.tokenizer.encode(prompt, allowed_special="all", add_special_tokens=True)
        elif isinstance(prompt, (list, tuple)) or hasattr(prompt, "tolist"):  # ids: a list, tensor or numpy array
            ids = prompt.tolist() if hasattr(prompt, "tolist") else list(prompt)
            if not isinstance(ids, list):
                raise RequestError("a token-id prompt must be one-dimensional; got a single number.")
        else:
            raise RequestError(f"a prompt is text, a list of token ids, or a {{'prompt': text}} or "
                               f"{{'prompt_token_ids': ids}} dict; got {type(prompt).__name__}.")
        vocab = self.model.cfg.vocab_size
        if not ids:
            raise RequestError("the prompt is empty; give at least one token.")
        if set(map(type, ids)) == {int} and 0 <= min(ids) and max(ids) < vocab:  # the common case, at C speed
            return list(ids)
        for i in ids:
            if not (is_int(i) and 0 <= i < vocab):
                raise RequestError(f"prompt token {i!r} is not an id in this model's vocabulary (0..{vocab - 1}).")
        return [int(i) for i in ids]

    def add_request(self, request_id: str, prompt: str | list[int] | dict, params: SamplingParams | None = None,
                    arrival_time: float | None = None, lora_request=None, priority: int = 0) -> None:
        """Queue a request; raises RequestError (and queues nothing) if it is invalid or can never fit. `prompt` is
        text, token ids, or vLLM's {"prompt": text} / {"prompt_token_ids": ids}; `arrival_time` a time.time()
        stamp of when it reached the caller (default now); scheduling is first come, first served."""
        if lora_request is not None:
            raise RequestError("lora_request is not supported by this engine; merge the adapter into the model's "
                               "weights first (e.g. peft's merge_and_unload, then save_pretrained), then serve the "
                               "merged model.")
        if priority != 0:
            raise RequestError(f"priority={priority!r}: this engine schedules first come, first served; leave "
                               "priority at 0.")
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise RequestError(f"sampling params must be a SamplingParams, got {type(params).__name__}.")
        try:
            hash(request_id)
        except TypeError:
            raise RequestError(f"request id {request_id!r} is a {type(request_id).__name__}, which cannot key a "
                               "request; give a string (vLLM's) or another hashable id.") from None
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use; ids must be unique among live requests.")
        if params.stop and self.tokenizer is None:
            raise RequestError("stop strings need the model's tokenizer (this engine has none); use stop_token_ids, "
                               "or load the model with its tokenizer.")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(params, name)
            if k == -1:  # vLLM's "every token's": the vocabulary the sampler picks from
                k = self.runner.sample_vocab
                params = dataclasses.replace(params, **{name: k})
            if k is not None and self.config.max_logprobs is not None and k > self.config.max_logprobs:
                raise RequestError(f"{name}={k} is more than this engine's max_logprobs={self.config.max_logprobs}; "
                                   "ask for fewer, or raise max_logprobs.")
            if k is not None and k > self.runner.sample_vocab:
                raise RequestError(f"{name}={k} asks for more alternatives than the {self.runner.sample_vocab} "
                                   "tokens there are.")
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        if params.min_tokens and params.allowed_token_ids and set(params.allowed_token_ids) <= stops:
            raise RequestError(f"allowed_token_ids holds only stop tokens ({params.allowed_token_ids}), which "
                               f"min_tokens={params.min_tokens} forbids at first, so no token could be sampled; "
                               "allow other tokens, or drop min_tokens.")
        for name, ids in (("logit_bias", params.logit_bias), ("allowed_token_ids", params.allowed_token_ids)):
            if ids and max(ids) >= self.runner.sample_vocab:
                raise RequestError(f"{name} names token {max(ids)}, outside this model's vocabulary "
                                   f"(0..{self.runner.sample_vocab - 1}).")
        ids = self.encode_prompt(prompt)
        if params.prompt_logprobs is not None and max(ids) >= self.runner.sample_vocab:
            raise RequestError(f"prompt_logprobs needs prompt ids the sampler's vocabulary holds (0.."
                               f"{self.runner.sample_vocab - 1}, the tokenizer's); the prompt has {max(ids)}.")
        if isinstance(prompt, dict):
            prompt = prompt.get("prompt")
        self.scheduler.check_fits(len(ids), params.max_tokens)
        self._arrivals = True
        seqs = [Sequence(request_id, ids, params, index=i, eos_token_ids=self.eos_token_ids) for i in range(params.n)]
        detoks = [Detokenizer(self.tokenizer, params) for _ in seqs] if self.tokenizer is not None else None
        self.requests[request_id] = _Request(request_id, prompt if isinstance(prompt, str) else None, ids, seqs,
                                             detoks, {"arrival": _arrival(arrival_time), "arrival_wall":
                                                      time.time() if arrival_time is None else arrival_time})
        for seq in seqs:
            self.scheduler.add(seq)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt prefix. Done by itself when requests arrive after the model's parameters
        changed in place (an optimizer step, load_state_dict) or got new storage (`p.data = ...`); call it after
        changes the engine cannot see (in-place writes through `.data`, parameters replaced by new objects)."""
        self.block_manager.reset_prefix_cache()
        self._weights = self._weights_signature()

    def _weights_signature(self) -> int:
        """Changes when a parameter is written in place (its version) or given new storage (its data pointer);
        0.07 ms for 273 parameters."""
        return hash(tuple((p.data_ptr(), 0 if inference else p._version) for p, inference in self._params))

    def _weights_changed(self) -> bool:
        """Cached K/V were computed with the weights of their time: have those changed since?"""
        return self.config.enable_prefix_caching and self._weights_signature() != self._weights

    def _check_weights(self) -> None:
        if self._weights_changed():
            self.reset_prefix_cache()

    def abort_request(self, request_ids: str | list[str]) -> None:
        """vLLM's spelling: abort one request id or several."""
        for rid in request_ids if isinstance(request_ids, (list, tuple, set)) else [request_ids]:
            self.abort(rid)

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its blocks; False if it is unknown or already finished."""
        if isinstance(request_id, (list, tuple, set)):
            raise RequestError("abort() takes one request id; abort_request() takes a list of them.")
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        for seq in req.seqs:
            self.scheduler.finish(seq, "abort")
            self.runner.release(seq)
        return True

    def has_unfinished_requests(self) -> bool:
        """Whether a step() is still owed: requests running or waiting, or finished outputs not yet returned."""
        return bool(self.requests) or bool(self._undelivered)

    def get_num_unfinished_requests(self) -> int:
        """vLLM's count of requests a step() still owes an output: running or waiting, or finished outputs not yet
        returned."""
        return len(self.requests) + len(self._undelivered)

    def get_tokenizer(self):
        """The engine's tokenizer (None: token-id prompts only), as vLLM's LLMEngine.get_tokenizer."""
        return self.tokenizer

    def deliver_later(self, outputs: list[RequestOutput]) -> None:
        """Hand finished outputs that a caller stepped past (LLM.generate: requests it did not add) back to the
        engine: the next step() returns them first."""
        self._undelivered.extend(outputs)

    # ---- one step -------------------------------------------------------------------------------

    def step(self, *, finished_only: bool = False) -> list[RequestOutput]:
        """Run one scheduled step; return the outputs of the requests that progressed in it (with
        `finished_only`, of those that finished: what a caller that does not stream needs, without building an
        output per running request and step). With async scheduling the outputs are those of the step launched by
        the call before, and a call that only launches a step returns none: call it while
        has_unfinished_requests(). Finished outputs handed back by deliver_later come first."""
        outputs = self._step(finished_only)
        if self._undelivered:
            outputs, self._undelivered = self._undelivered + outputs, []
        return outputs

    def _step(self, finished_only: bool) -> list[RequestOutput]:
        t0 = time.perf_counter()
        if self._inflight is not None:
            return self._step_async(finished_only, t0)
        if self._arrivals:  # before their prefix-cache lookups in schedule()
            self._check_weights()
            self._arrivals = False
        batch = self.scheduler.schedule()
        if not batch.seqs:
            if len(self.scheduler):  # check_fits guarantees progress; anything else is a bug
                raise RuntimeError(f"the scheduler made no progress with {len(self.scheduler)} sequences queued")
            return []
        if self.async_scheduling and self.runner.can_launch():
            try:  # the step's tokens are read (and its outputs made) by the next call
                self._inflight = self._launch(batch, None)
            except BaseException:
                self._abort_steps(batch)
                raise
            self.step_s += time.perf_counter() - t0
            return []
        try:
            results = self.runner.run(batch)
            self.scheduler.update(batch, {sid: r[0] for sid, r in results.items()})
            self.num_steps += 1
            return self._outputs(batch, results, finished_only, t0)
        except BaseException:
            self._abort_steps(batch)
            raise

    def _launch(self, batch: ScheduledBatch, prev: InflightStep | None) -> InflightStep:
        step = self.runner.launch(batch, prev)
        step.where = self.scheduler.advance(batch)  # the rows that sample: step.seqs (both: batch.samples)
        self.num_steps += 1
        return step

    def _step_async(self, finished_only: bool, t0: float) -> list[RequestOutput]:
        """A step with one in flight: launch the next step (when the scheduler can plan it without the tokens),
        then read the in-flight one's tokens and make its outputs."""
        prev, nxt = self._inflight, None
        self._inflight = None
        try:
            ahead = None
            # arrivals are admitted ahead unless the weights changed (then the waiting path resets the prefix cache)
            if not (self._arrivals and self._weights_changed()):
                self._arrivals = False
                ahead = self.scheduler.schedule_ahead()
            if ahead is not None:
                nxt = self._launch(ahead, prev)
                self.async_steps += 1
            tokens, results = self.runner.collect(prev)
            live = [s for s in prev.seqs if not s.is_finished]  # not aborted, nor stopped by the step before
            self.scheduler.settle(prev.seqs, prev.where, tokens)
            outputs = self._outputs(prev.batch, results, finished_only, t0, live)
        except BaseException:
            self._abort_steps(prev.batch, *([nxt.batch] if nxt is not None else []))
            raise
        self._inflight = nxt
        return outputs

    def _abort_steps(self, *batches) -> None:
        # The steps' requests would fail the same way on every later step: drop them (their blocks freed) so the
        # engine keeps serving the others, and let the caller see the error.
        for rid in {seq.request_id for batch in batches for seq in batch.seqs}:
            self.abort(rid)

    def _outputs(self, batch: ScheduledBatch, results: dict, finished_only: bool, t0: float,
                 seqs: list[Sequence] | None = None) -> list[RequestOutput]:
        """A step's results into its sequences (of `seqs`, default all: logprobs, detokenized text, stops) and
        RequestOutputs."""
        now = time.perf_counter()
        # metrics: the perf_counter -> time.time() offset of this step (a clock step, NTP's, moves it); each
        # stamp is converted once, when it is taken
        self._clock_offset = time.time() - now
        wall = now + self._clock_offset
        touched: dict[str, _Request] = {}  # requests that progressed (wanted unless finished_only)
        ended: dict[str, _Request] = {}  # requests one of whose sequences finished in this step
        requests = self.requests
        for seq in batch.seqs if seqs is None else seqs:
            r = results.get(seq.seq_id)
            if r is None:
                continue
            token, logprob, alts = r
            if logprob is not None:
                seq.logprobs.append(self._logprobs(alts))
                seq.cumulative_logprob += logprob
            req = requests[seq.request_id]
            if "first_token" not in req.metrics:
                req.metrics["first_token"] = wall
            req.metrics["last_token"] = wall
            if not finished_only:
                touched[req.request_id] = req
            if req.detoks is not None:
                self._detokenize(seq, req.detoks[seq.index], token)
            if seq.is_finished:
                self.runner.release(seq)
                ended[req.request_id] = req
        outputs = []
        for req in (ended if finished_only else touched).values():
            finished = req.request_id in ended and all(s.is_finished for s in req.seqs)
            if finished:
                req.metrics["finished"] = wall
                del self.requests[req.request_id]
            if finished or not finished_only:
                outputs.append(self._output(req))
        self.step_s += time.perf_counter() - t0
        return outputs

    def _logprobs(self, alts: dict[int, tuple[float, int]]) -> dict[int, Logprob]:
        tok = self.tokenizer
        return {i: Logprob(v, rank, tok.decode([i]) if tok is not None else None) for i, (v, rank) in alts.items()}

    def _detokenize(self, seq: Sequence, detok: Detokenizer, token: int) -> None:
        if seq.finish_reason == "stop" and seq.stop_reason in (token, None):  # a stop token (EOS) is not text...
            if seq.stop_reason == token and seq.params.include_stop_str_in_output:
                detok.add(token, search=False)  # ...unless a stop_token_ids hit is to be kept (vLLM's v1)
        else:
            hit = detok.add(token)
            if hit is not None:
                if seq.is_finished:  # the same token also hit max_tokens: the stop string wins
                    seq.finish_reason, seq.stop_reason = "stop", hit
                else:
                    self.scheduler.finish(seq, "stop", hit)
        if seq.is_finished:
            detok.flush()

    def _output(self, req: _Request) -> RequestOutput:
        completions = []
        for seq in req.seqs:
            detok = req.detoks[seq.index] if req.detoks is not None else None
            completions.append(CompletionOutput(
                index=seq.index, text=detok.visible(seq.is_finished) if detok is not None else "",
                token_ids=seq.output_token_ids,
                cumulative_logprob=seq.cumulative_logprob if seq.params.logprobs is not None else None,
                logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason))
        return RequestOutput(req.request_id, req.prompt, req.prompt_token_ids, completions,
                             finished=all(s.is_finished for s in req.seqs),
                             num_cached_tokens=max(s.num_cached_tokens for s in req.seqs), metrics=self._metrics(req),
                             prompt_logprobs=self._prompt_logprobs(req))

    def _prompt_logprobs(self, req: _Request) -> list[dict[int, Logprob] | None] | None:
        """vLLM's RequestOutput.prompt_logprobs once the whole prompt is computed (None for the first token; the
        first of the n samples' computation), None before or when not asked for."""
        seq = req.seqs[0]
        if seq.params.prompt_logprobs is None or len(seq.prompt_logprobs) < seq.num_prompt_tokens:
            return None
        if req.prompt_logprobs is None:  # converted once
            req.prompt_logprobs = [None] + [self._logprobs(alts) for alts in seq.prompt_logprobs[1:]]
        return req.prompt_logprobs

    def _metrics(self, req: _Request) -> RequestMetrics:
        """The request's stamps as vLLM's RequestMetrics, on the time.time() clock (the token stamps are taken on
        it; the first admission, a perf_counter stamp of the scheduler's, is converted once with the offset of the
        step that reports it)."""
        m = req.metrics
        if "scheduled" not in m:
            firsts = [s.first_scheduled for s in req.seqs if s.first_scheduled is not None]
            if firsts:  # the earliest admission of its n samples: fixed once one is admitted
                m["scheduled"], m["queued"] = min(firsts) + self._clock_offset, min(firsts) - m["arrival"]
        return RequestMetrics(m["arrival_wall"],  # as given, or time.time() when it came
                              m.get("last_token"), m.get("scheduled"), m.get("first_token"),
                              m.get("queued"),  # time in the queue, on one clock (perf_counter)
                              m.get("finished"))

    def stats(self) -> dict[str, float]:
        """Counters since the engine started. step_seconds: wall time in step(); sync_wait_seconds: the part of it
        the host spent waiting for the device's sampled ids (on CUDA the GPU time not hidden behind host work;
        step_seconds minus it is host work: scheduling, inputs, launches, outputs); graph_steps: decode steps
        that replayed a CUDA graph; async_steps: steps launched before the tokens of the step before reached the
        host (async scheduling)."""
        bm = self.block_manager
        return {"steps": self.num_steps, "graph_steps": self.runner.graph_steps, "async_steps": self.async_steps,
                "step_seconds": round(self.step_s, 4), "sync_wait_seconds": round(self.runner.sync_wait_s, 4),
                "preemptions": self.scheduler.num_preemptions,
                "free_blocks": bm.num_free_blocks, "num_blocks": bm.num_blocks,
                "prefix_cache_hit_rate": bm.num_hits / bm.num_queries if bm.num_queries else 0.0}


def is_tokenizer(obj) -> bool:
    """Whether obj can be the engine's tokenizer (an llmlab Tokenizer, or anything with its methods)."""
    return all(hasattr(obj, a) for a in ("encode", "decode", "token_bytes"))


def _unwrap(prompt: dict) -> str | list[int]:
    """The text or ids of vLLM's {"prompt": text} or {"prompt_token_ids": ids} (both: the ids, as vLLM)."""
    other = sorted(set(prompt) - {"prompt", "prompt_token_ids"})
    if other:
        raise RequestError(f"prompt keys {', '.join(map(repr, other))} are not supported (this engine takes text "
                           "and token ids only); give {'prompt': text} or {'prompt_token_ids': ids}.")
    if "prompt_token_ids" in prompt:  # text there (or ids under 'prompt') would be read as the other kind
        if isinstance(prompt["prompt_token_ids"], str):
            raise RequestError("'prompt_token_ids' takes a list of token ids, got text; give text as {'prompt': text}.")
        return prompt["prompt_token_ids"]
    if "prompt" in prompt:
        if not isinstance(prompt["prompt"], str):
            raise RequestError(f"'prompt' takes text, got {type(prompt['prompt']).__name__}; give token ids as "
                               "{'prompt_token_ids': ids}.")
        return prompt["prompt"]
    raise RequestError("a dict prompt needs 'prompt' (text) or 'prompt_token_ids' (a list of token ids).")


def _arrival(arrival_time: float | None) -> float:
    """A time.time() stamp (vLLM's arrival_time) on the perf_counter clock of the engine's metrics."""
    now = time.perf_counter()
    if arrival_time is None:
        return now
    if not is_number(arrival_time):
        raise RequestError(f"arrival_time must be a time.time() stamp (a number), got {arrival_time!r}.")
    return now - max(0.0, time.time() - arrival_time)
