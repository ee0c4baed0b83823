"""What the engine hands back (vLLM-shaped `RequestOutput`), and the incremental detokenizer.

The detokenizer turns one sequence's output ids into text as they arrive:

- UTF-8 safe: a byte-level BPE token can end in the middle of a character (Chinese, emoji), so
  token bytes go through an incremental UTF-8 decoder that emits only complete characters and
  holds the rest until the next token; nothing broken is ever shown. At the end, leftover
  bytes that never completed a character become U+FFFD, as `bytes.decode(errors="replace")` does.
- Stop strings are searched in the text, not in tokens, so a stop string spread over several
  tokens is found; the text is cut exactly before it (vLLM's default), or after it with
  `include_stop_str_in_output`. With `min_tokens`, only text after that of the first min_tokens
  tokens is searched (as vLLM's v1: a stop string ends at token min_tokens + 1 at the earliest).
  Only the tail that can contain a new match is searched: the last (longest stop - 1) old
  characters plus the new piece.
- Streaming: `visible()` withholds a trailing partial stop string ("Hel" when "Hello" stops
  generation), so a client never sees text that is then taken back.

Special tokens are left out of the text when `skip_special_tokens` (the default), and a token
that ended the sequence as a stop token id is never part of the text (it is in token_ids).
Tokenizers that are not byte-level (WordPiece) are re-decoded whole at every token.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from llmlab.engine.sequence import SamplingParams


@dataclass(slots=True)
class Logprob:
    """One token's log-probability in a step's distribution, as vLLM's `Logprob`: the model's raw log-softmax
    (before temperature, penalties and top-k/p), its rank in the vocabulary (1 = most likely; ties count against
    it) and the token's own text (one token decoded alone, so a piece of a multi-byte character shows as U+FFFD;
    None when the engine has no tokenizer)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass(slots=True)
class CompletionOutput:
    index: int  # which of the request's n samples
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None  # per output token: {id: Logprob} for the chosen and top ids
    finish_reason: str | None = None  # "stop" | "length" | "abort"; None while running
    stop_reason: int | str | None = None  # the stop token id or stop string

    def finished(self) -> bool:  # a method, as vLLM's (RequestOutput.finished is a field)
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestMetrics:
    """A request's timestamps, vLLM's RequestMetrics: seconds on the time.time() clock (None until they happen).
    Time to first token: first_token_time - arrival_time; time in the queue: first_scheduled_time - arrival_time."""

    arrival_time: float
    last_token_time: float | None = None
    first_scheduled_time: float | None = None  # its first admission into a step (the earliest of its n samples)
    first_token_time: float | None = None
    time_in_queue: float | None = None  # first_scheduled_time - arrival_time
    finished_time: float | None = None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    metrics: RequestMetrics | None = None
    # SamplingParams.prompt_logprobs: per prompt token (None for the first), its Logprob and its top alternatives
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


class Detokenizer:
    def __init__(self, tokenizer, params: SamplingParams):
        self.tokenizer = tokenizer
        self.stop = list(params.stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.min_tokens, self.keep_stop = params.min_tokens, params.include_stop_str_in_output
        self.count = 0  # output tokens added
        self.floor = 0  # stop strings are looked for after the text of the first min_tokens tokens (vLLM's v1)
        special = getattr(tokenizer, "special_tokens", {}) if params.skip_special_tokens else {}
        self.skip = frozenset(special.values())
        self.byte_level = getattr(tokenizer, "byte_level", True)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False

    def add(self, token_id: int, search: bool = True) -> str | None:
        """Append one output token; return the stop string it completed, if any (text is then cut). `search`
        False: no stop string is looked for (a kept stop token's text)."""
        self.count += 1
        if self.stopped or token_id in self.skip:
            if self.count <= self.min_tokens:
                self.floor = len(self.text)
            return None
        old = len(self.text)
        if self.byte_level:
            self.text += self.decoder.decode(self.tokenizer.token_bytes(token_id))
        else:
            self.ids.append(token_id)
            self.text = self.tokenizer.decode(self.ids)
        if self.count <= self.min_tokens:
            self.floor = len(self.text)
            return None
        if not self.stop or len(self.text) == old or not search:
            return None
        start = max(self.floor, old - self.hold)
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if not hits:
            return None
        cut, stop = min(hits)
        self.text = self.text[:cut + len(stop) if self.keep_stop else cut]  # text after the stop string goes
        self.stopped = True
        return stop

    def flush(self) -> None:
        """The sequence ended: bytes of an unfinished character become U+FFFD."""
        if self.byte_level and not self.stopped:
            self.text += self.decoder.decode(b"", final=True)

    def visible(self, finished: bool) -> str:
        """Text safe to show now: all of it when finished, else without a trailing partial stop string."""
        if finished or not self.stop:
            return self.text
        for k in range(min(self.hold, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return self.text[:-k]
        return self.text
