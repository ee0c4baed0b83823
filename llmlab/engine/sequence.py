"""A request's sampling parameters and the engine's unit of work, the `Sequence` — pure Python.

`SamplingParams` is vLLM-shaped and validated once, with one-sentence errors. A request with
`n > 1` becomes n sequences that share the prompt (and, with prefix caching, its KV blocks).

A `Sequence` is token ids (prompt then output) plus the bookkeeping the scheduler and block
manager need: how many tokens already have K/V in the cache (`num_computed_tokens`), which
blocks hold them (`block_table`), and the chained hashes of its full blocks (prefix caching).
Preemption by recompute resets `num_computed_tokens` and the block table but keeps the tokens,
so a resumed sequence continues exactly where it stopped.

Not here: torch. Random generators and logits live in the model runner and sampler.
Reference: vLLM `SamplingParams` / `Sequence`; GeeeekExplorer/nano-vllm `engine/sequence.py`.
"""

from __future__ import annotations

import difflib
import enum
import functools
import itertools
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from llmlab.errors import LlmlabError, is_bool, is_int, is_number

if TYPE_CHECKING:
    from llmlab.engine.output import Logprob


class RequestError(LlmlabError, ValueError):
    """A generation request (prompt or sampling parameters) is invalid."""


class UnknownParameterError(RequestError, TypeError):
    """`SamplingParams` got a keyword it does not have (a TypeError, as Python would raise, and a RequestError)."""


# Names other libraries use for a setting SamplingParams has under another name.
_OTHER_NAMES = {"max_new_tokens": "max_tokens", "max_length": "max_tokens", "num_return_sequences": "n",
                "stop_sequences": "stop", "eos_token_id": "stop_token_ids", "do_sample": "temperature (0 = greedy)",
                "random_seed": "seed", "top_logprobs": "logprobs"}
# vLLM settings llmlab does not have (a close name would be the wrong hint: min_tokens is not max_tokens), with the
# value at which vLLM behaves as llmlab does: passing that value (a wrapper that spells out every setting) is fine.
_OFF = object()  # no value matches: any use is refused
_NOT_SUPPORTED = {"detokenize": True, "bad_words": None,
                  "best_of": None, "use_beam_search": False, "length_penalty": 1.0, "guided_decoding": None,
                  "structured_outputs": None, "truncate_prompt_tokens": None, "spaces_between_special_tokens": True,
                  "output_kind": _OFF, "logits_processors": None, "extra_args": None}
# Settings whose empty value asks for nothing, as None does (an empty allowed_token_ids would forbid every token).
_EMPTY_IS_NONE = ("bad_words", "logits_processors", "extra_args")
# Temperatures below this sample as greedy (vLLM's _SAMPLING_EPS): dividing logits by ~1e-45 overflows to inf.
GREEDY_BELOW = 1e-5


@dataclass(slots=True, kw_only=True)  # by keyword only: vLLM's positional order differs (n, presence_penalty, ...)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy (as is anything below GREEDY_BELOW)
    top_k: int = 0  # 0 or -1 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF/CTRL: on prompt + output tokens, divides positive logits
    presence_penalty: float = 0.0  # OpenAI: on output tokens, subtracted once per seen token
    frequency_penalty: float = 0.0  # OpenAI: on output tokens, subtracted per occurrence
    max_tokens: int | None = 16  # None: until the context is full
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None  # None (or -1, as vLLM) = the engine's shared generator
    logprobs: int | None = None  # return the sampled token's logprob and this many top alternatives (-1: all)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    min_tokens: int = 0  # no EOS, stop token or stop string before this many output tokens (vLLM's)
    include_stop_str_in_output: bool = False  # keep the stop string that ended the text (text after it is cut)
    logit_bias: dict[int, float] | None = None  # {token id: added to its logit} before penalties and sampling
    allowed_token_ids: list[int] | None = None  # sample only these ids (every other logit -inf)
    prompt_logprobs: int | None = None  # each prompt token's logprob and this many top alternatives (-1: all)

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise RequestError(f"SamplingParams: {message}.")

        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            if not _is_number(getattr(self, name)):
                fail(f"{name} must be a number, got {getattr(self, name)!r}")
        # numpy ints become Python ints: np.int64 arithmetic overflows (a seed's stream, inside the step of every
        # request in the batch) where Python's does not
        for name in ("n", "top_k"):
            if not is_int(getattr(self, name)):
                fail(f"{name} must be an integer, got {getattr(self, name)!r}")
            setattr(self, name, int(getattr(self, name)))
        if self.seed == -1 and is_int(self.seed):  # vLLM's "no seed"
            self.seed = None
        for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output"):  # "false" would be true
            value = getattr(self, name)
            if not is_bool(value):
                fail(f"{name} must be True or False, got {value!r}")
            setattr(self, name, bool(value))
        for name in ("seed", "logprobs", "max_tokens", "prompt_logprobs"):
            if getattr(self, name) is not None:
                if not is_int(getattr(self, name)):
                    fail(f"{name} must be None or an integer, got {getattr(self, name)!r}")
                setattr(self, name, int(getattr(self, name)))
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple, type(None))):
            fail(f"stop must be a string or a list of strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, (list, tuple, type(None))):
            fail(f"stop_token_ids must be a list of token ids, got {self.stop_token_ids!r}")
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if not is_int(self.min_tokens):
            fail(f"min_tokens must be an integer, got {self.min_tokens!r}")
        self.min_tokens = int(self.min_tokens)
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                fail(f"logit_bias must be a dict of token id -> bias, got {self.logit_bias!r}")
            bad = [k for k, v in self.logit_bias.items() if not (_as_id(k) is not None and _is_number(v)
                                                                 and -100 <= v <= 100)]
            if bad:
                fail(f"logit_bias takes token ids (ints, or their strings as JSON gives) mapped to numbers in "
                     f"[-100, 100] (OpenAI's range: 100 forces a token, -100 bans it); got {bad[0]!r}: "
                     f"{self.logit_bias[bad[0]]!r}")
            self.logit_bias = {_as_id(k): float(v) for k, v in self.logit_bias.items()} or None
        if self.allowed_token_ids is not None:
            if not isinstance(self.allowed_token_ids, (list, tuple, set, frozenset)) or not all(
                    is_int(t) and t >= 0 for t in self.allowed_token_ids):
                fail(f"allowed_token_ids must be a list of token ids, got {self.allowed_token_ids!r}")
            if not self.allowed_token_ids:
                fail("allowed_token_ids is empty, which forbids every token; leave it None to allow all")
            self.allowed_token_ids = sorted({int(t) for t in self.allowed_token_ids})
        checks = [
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (0 <= self.temperature < float("inf"), f"temperature must be a finite number >= 0 (0 = greedy), got "
                                                    f"{self.temperature}"),
            (self.top_k >= -1, f"top_k must be -1, 0 (off) or positive, got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (self.max_tokens is None or self.max_tokens >= 1,
             f"max_tokens must be >= 1 (or None: until the context is full), got {self.max_tokens}"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (all(is_int(t) and t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids must be non-negative token ids, got {self.stop_token_ids!r}"),
            (self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             f"min_tokens ({self.min_tokens}) must be at most max_tokens ({self.max_tokens})"),
            (self.logprobs is None or self.logprobs >= -1,
             f"logprobs must be None, >= 0, or -1 (the whole vocabulary), got {self.logprobs}"),
            (self.prompt_logprobs is None or self.prompt_logprobs >= -1,
             f"prompt_logprobs must be None, >= 0, or -1 (the whole vocabulary), got {self.prompt_logprobs}"),
        ]
        for ok, message in checks:
            if not ok:
                fail(message)
        if self.temperature < GREEDY_BELOW:
            self.temperature = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _refuse_unknown_keywords(init):
    """Wrap the dataclass __init__: an unknown keyword names the setting meant, not just Python's TypeError."""
    known = [f.name for f in fields(SamplingParams)]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs) -> None:
        if args:
            raise UnknownParameterError(f"SamplingParams takes keywords only (e.g. SamplingParams(temperature=0.8)), "
                                        f"got {len(args)} positional value(s); its settings are {', '.join(known)}.")
        for name in list(kwargs):
            if name in _NOT_SUPPORTED:
                value = kwargs[name]
                empty = name in _EMPTY_IS_NONE and isinstance(value, (list, tuple, dict)) and not value
                if _same(value, _NOT_SUPPORTED[name]) or empty:
                    # vLLM's default (or an empty list of bad words, biases...): llmlab's behaviour; nothing to do
                    del kwargs[name]
                    continue
                like = "" if _NOT_SUPPORTED[name] is _OFF else f" (it behaves as {name}={_NOT_SUPPORTED[name]!r})"
                raise UnknownParameterError(f"SamplingParams: {name}={kwargs[name]!r} (a vLLM setting) is not "
                                            f"supported by llmlab{like}; the settings are {', '.join(known)}.")
            if name not in known:
                meant = _OTHER_NAMES.get(name) or next(iter(difflib.get_close_matches(name, known, n=1)), None)
                hint = f"did you mean {meant}?" if meant else f"the settings are {', '.join(known)}."
                raise UnknownParameterError(f"SamplingParams: unknown setting {name!r}; {hint}")
        init(self, *args, **kwargs)

    return __init__


SamplingParams.__init__ = _refuse_unknown_keywords(SamplingParams.__init__)


def _same(value, default) -> bool:
    """value is vLLM's default for a setting (True for 1, or 0 for False, would be another request)."""
    if default is None:
        return value is None
    if isinstance(default, bool):
        return value is default
    return is_number(value) and not isinstance(value, bool) and value == default


def _as_id(key) -> int | None:
    """A logit_bias key as a token id: an int >= 0, or its decimal string (JSON object keys are strings)."""
    if is_int(key) and key >= 0:
        return int(key)
    if isinstance(key, str) and key.isdecimal() and key.isascii():
        return int(key)
    return None


def _is_number(v) -> bool:
    return is_number(v) and v == v  # NaN is not a setting


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_ids = itertools.count()


class Sequence:
    """One prompt + its growing output; n of these make a request with SamplingParams(n=n)."""

    __slots__ = ("seq_id", "request_id", "index", "token_ids", "num_prompt_tokens", "params", "status",
                 "stop_token_ids", "block_table", "num_computed_tokens", "num_cached_tokens", "block_hashes",
                 "finish_reason", "stop_reason", "logprobs", "cumulative_logprob", "num_preemptions",
                 "first_scheduled", "prompt_logprobs")

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *, index: int = 0,
                 eos_token_ids: frozenset[int] = frozenset()):
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.index = index  # which of the request's n samples
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        eos = frozenset() if params.ignore_eos else eos_token_ids
        self.stop_token_ids = eos | frozenset(params.stop_token_ids)
        self.block_table: list[int] = []  # appended to while held, replaced (never cut) on release: block_tables.py
        self.num_computed_tokens = 0  # tokens whose K/V is in the cache
        self.num_cached_tokens = 0  # of those, how many came from the prefix cache at admission
        self.block_hashes: list[bytes] = []  # chained hash of each full block of token_ids (memo)
        self.finish_reason: str | None = None  # "stop" | "length" | "abort"
        self.stop_reason: int | str | None = None  # the stop token id or stop string that ended it
        self.logprobs: list[dict[int, Logprob]] = []
        self.cumulative_logprob = 0.0
        self.num_preemptions = 0
        self.first_scheduled: float | None = None  # time.perf_counter() of its first admission (RequestMetrics)
        # SamplingParams.prompt_logprobs: entry j for prompt token j (None for the first, which nothing predicts),
        # {id: (logprob, rank)} of it and its top alternatives; filled by the model runner as chunks are computed
        self.prompt_logprobs: list[dict[int, tuple[float, int]] | None] = [None]

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, {self.status.value}, len={len(self)}, "
                f"computed={self.num_computed_tokens}, blocks={self.block_table})")

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
