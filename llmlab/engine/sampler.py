"""Batched sampling with per-request parameters, on the logits' device, without a sync per request.

    tokens, chosen, top = sample(logits (B, V) fp32, SamplingBatch.build(rows, ...))  # chosen: (logprob, rank)

Every row carries its own parameters as (B,) tensors, so one pass of vectorised ops handles a
batch that mixes greedy and sampled rows, different temperatures, top-k/top-p/min-p and penalties.
The order follows transformers' `generate` (so the tests can use its processors as references):

    allowed_token_ids, min_tokens (stop ids -inf), logit_bias (vLLM's order: these before penalties)
    -> penalties (repetition on prompt+output, presence/frequency on output)
    -> greedy rows: argmax
    -> temperature -> top-k -> top-p -> min-p -> softmax -> sample

Sampling uses the exponential race: argmax(p_i / E_i) with E_i ~ Exp(1) draws token i with
probability p_i, needs no cumulative sum or `multinomial`, and never leaves the device. A
request with a `seed` gets its own `torch.Generator`, which draws exactly one (V,) noise row per
sampled token — so its samples do not depend on what else is in the batch, or on preemption.
Rows without a seed share one engine generator. The only GPU->CPU transfer is the caller's
single `.tolist()` of the chosen ids (and logprobs, if asked) per step.

Logprobs are of the model's raw distribution (log_softmax of the unprocessed logits), as vLLM
reports them by default.

Not here: which rows to sample (scheduler) or how logits are made (model_runner.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmlab.engine.sequence import SamplingParams
from llmlab.kernels.cpu_argmax import argmax_rows
from llmlab.transfer import device_tensor, to_device


@dataclass(slots=True)
class SamplingBatch:
    temperature: Tensor | None  # (B,) 0 for greedy rows; None when every row is greedy (nothing to divide)
    top_k: Tensor | None  # (B,) long, V where off; None when no row uses it
    top_p: Tensor | None  # (B,)
    min_p: Tensor | None  # (B,)
    repetition: Tensor | None  # (B,)
    presence: Tensor | None  # (B,)
    frequency: Tensor | None  # (B,)
    seen: Tensor | None  # (B, V) bool: token appears in prompt or output (repetition penalty)
    counts: Tensor | None  # (B, V) output-token counts (presence / frequency)
    generators: list[torch.Generator | None]  # per row; None = the shared generator
    all_greedy: bool
    num_logprobs: int  # max over rows; 0 with want_logprobs False means skip the work
    want_logprobs: bool
    allowed: Tensor | None = None  # (B, V) bool: the ids a row may sample (allowed_token_ids); None: all, every row
    suppress: tuple[Tensor, Tensor] | None = None  # (rows, ids) set to -inf: stop ids of rows short of min_tokens
    bias: tuple[Tensor, Tensor, Tensor] | None = None  # (rows, ids, values) added: logit_bias
    min_tokens_rows: tuple[int, ...] | None = None  # rows suppressed now (None: no row has min_tokens)

    @classmethod
    def build(cls, params: list[SamplingParams], token_ids: list[list[int]], num_prompt: list[int],
              generators: list[torch.Generator | None], vocab_size: int, device: torch.device,
              short: list[tuple[int, frozenset[int]]] | None = None) -> SamplingBatch:
        """Per-row tensors for a step; token_ids/num_prompt are only read when a row has penalties. `short`: the
        rows below their min_tokens with their stop ids (None where no row has min_tokens)."""
        B, V = len(params), vocab_size
        if not B:
            raise ValueError("SamplingBatch.build needs at least one row.")

        def col(values, dtype=torch.float32):
            return device_tensor(values, dtype, device)  # (on CUDA: without waiting for a step in flight)

        # one pass over the rows' settings (a step at 256 sequences builds this on the host while the GPU waits)
        temperature, top_k, top_p, min_p, repetition, presence, frequency, logprobs = zip(*[
            (p.temperature, p.top_k if p.top_k > 0 else V, p.top_p, p.min_p, p.repetition_penalty,
             p.presence_penalty, p.frequency_penalty, p.logprobs) for p in params])
        seen = counts = None
        if min(repetition) != 1.0 or max(repetition) != 1.0 or any(presence) or any(frequency):
            longest = max(len(t) for t in token_ids)
            ids = torch.full((B, longest), V, dtype=torch.long)  # V = padding column, dropped below
            out_mask = torch.zeros(B, longest, dtype=torch.bool)
            for i, (t, n) in enumerate(zip(token_ids, num_prompt)):
                if params[i].has_penalties:
                    ids[i, :len(t)] = torch.tensor(t, dtype=torch.long)
                    out_mask[i, n:len(t)] = True
            ids, out_mask = to_device(ids, device), to_device(out_mask, device)
            seen = torch.zeros(B, V + 1, dtype=torch.bool, device=device).scatter_(1, ids, True)[:, :V]
            out_ids = ids.masked_fill(~out_mask, V)
            counts = torch.zeros(B, V + 1, device=device).scatter_add_(1, out_ids, torch.ones_like(out_ids, dtype=torch.float))
            counts = counts[:, :V]
        all_greedy = max(temperature) == 0.0  # temperatures are validated >= 0
        asked = [k for k in logprobs if k is not None]
        allowed = bias = suppress = None
        if any(p.allowed_token_ids for p in params):  # built on the device: (B, V) is 39 MB at 256 x 151k
            allowed = torch.zeros(B, V, dtype=torch.bool, device=device)
            free = [i for i, p in enumerate(params) if not p.allowed_token_ids]
            if free:
                allowed[col(free, torch.long)] = True
            pairs = [(i, t) for i, p in enumerate(params) if p.allowed_token_ids for t in p.allowed_token_ids]
            allowed.index_put_((col([i for i, _ in pairs], torch.long), col([t for _, t in pairs], torch.long)),
                               torch.ones((), dtype=torch.bool, device=device))
        if any(p.logit_bias for p in params):
            entries = [(i, t, b) for i, p in enumerate(params) if p.logit_bias for t, b in p.logit_bias.items()]
            rows, ids, values = zip(*entries)
            bias = col(rows, torch.long), col(ids, torch.long), col(values)
        pairs = [(i, t) for i, stops in short or () for t in stops if t < V]
        if pairs:
            suppress = col([i for i, _ in pairs], torch.long), col([t for _, t in pairs], torch.long)
        return cls(
            temperature=None if all_greedy else col(temperature),
            top_k=col(top_k, torch.long) if min(top_k) < V else None,
            top_p=col(top_p) if min(top_p) < 1 else None,
            min_p=col(min_p) if max(min_p) > 0 else None,
            repetition=col(repetition) if seen is not None else None,
            presence=col(presence) if seen is not None else None,
            frequency=col(frequency) if seen is not None else None,
            seen=seen, counts=counts, generators=generators,
            all_greedy=all_greedy,
            num_logprobs=max(asked, default=0),
            want_logprobs=bool(asked),
            allowed=allowed, suppress=suppress, bias=bias,
            # None once no row is short: its rows only move further past their min_tokens (no more checks)
            min_tokens_rows=tuple(i for i, _ in short) if short else None,
        )


    def add_output_tokens(self, tokens: Tensor, rows: list[int] | None = None) -> None:
        """Count one more output token for each of `rows` (default: every row), tokens on the device (async
        scheduling: the last step's ids, not yet on the host), as if `build` had been given them; rows without
        penalties ignore seen and counts."""
        if rows is not None and len(rows) < self.seen.shape[0]:
            at = device_tensor(rows, torch.long, tokens.device)
            self.seen = self.seen.index_put((at, tokens), torch.ones_like(tokens, dtype=torch.bool))
            self.counts = self.counts.index_put((at, tokens), torch.ones_like(tokens, dtype=torch.float),
                                                accumulate=True)
            return
        self.seen = self.seen.scatter(1, tokens[:, None], True)
        self.counts = self.counts.scatter_add(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=torch.float))


def apply_processors(logits: Tensor, sb: SamplingBatch) -> Tensor:
    """allowed_token_ids, min_tokens and logit_bias, in vLLM's order (before the penalties)."""
    if sb.allowed is not None:
        logits = logits.masked_fill(~sb.allowed, float("-inf"))
    if sb.suppress is not None:
        logits = logits.index_put(sb.suppress, logits.new_full((), float("-inf")))  # (a fill: no host copy)
    if sb.bias is not None:
        logits = logits.index_put(sb.bias[:2], sb.bias[2], accumulate=True)
    return logits


def apply_penalties(logits: Tensor, sb: SamplingBatch) -> Tensor:
    if sb.seen is None:
        return logits
    rep = sb.repetition[:, None]
    penalised = torch.where(logits < 0, logits * rep, logits / rep)  # CTRL / HF: push away from zero
    logits = torch.where(sb.seen, penalised, logits)
    return logits - sb.frequency[:, None] * sb.counts - sb.presence[:, None] * (sb.counts > 0)


def filter_logits(logits: Tensor, sb: SamplingBatch) -> Tensor:
    """Temperature, top-k, top-p, min-p: -inf on filtered tokens. logits (B, V) fp32."""
    if sb.temperature is not None:  # greedy rows keep their logits (divided by 1)
        logits = logits / torch.where(sb.temperature > 0, sb.temperature, 1.0)[:, None]
    if sb.top_k is not None or sb.top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        if sb.top_k is not None:
            rank = torch.arange(logits.shape[-1], device=logits.device)[None, :]
            sorted_logits = sorted_logits.masked_fill(rank >= sb.top_k[:, None], float("-inf"))
        if sb.top_p is not None:
            probs = sorted_logits.softmax(-1)
            # Drop a token once the mass of strictly likelier tokens reaches top_p; the top one stays.
            before = probs.cumsum(-1) - probs
            drop = before >= sb.top_p[:, None]
            drop[:, 0] = False
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    if sb.min_p is not None:
        probs = logits.softmax(-1)
        floor = sb.min_p[:, None] * probs.amax(-1, keepdim=True)
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def sample(logits: Tensor, sb: SamplingBatch, shared: torch.Generator | None = None) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor] | None]:
    """-> (token ids (B,), (their raw logprobs, their vocab ranks as floats) (B, 2) or None, (top logprobs, top ids)
    (B, k) or None). A rank counts the ids at least as likely as the chosen one (itself included), as vLLM's."""
    logits = logits.float()
    raw_logprobs = logits.log_softmax(-1) if sb.want_logprobs else None
    logits = apply_penalties(apply_processors(logits, sb), sb)
    greedy = argmax_rows(logits)  # torch.argmax; in C for CPU logits (4-5x faster there)
    if sb.all_greedy:
        tokens = greedy
    else:
        probs = filter_logits(logits, sb).softmax(-1)
        noise = torch.empty_like(probs)
        seeded = [i for i, g in enumerate(sb.generators) if g is not None]
        if len(seeded) < len(sb.generators):
            noise.exponential_(generator=shared)
        for i in seeded:  # one (V,) draw per seeded row: its stream ignores the rest of the batch
            noise[i].exponential_(generator=sb.generators[i])
        noise.clamp_(min=torch.finfo(noise.dtype).tiny)  # an exact 0 would turn p / E into inf or nan
        tokens = torch.where(sb.temperature == 0, greedy, argmax_rows(probs / noise))
    if raw_logprobs is None:
        return tokens, None, None
    return tokens, *logprobs_of(raw_logprobs, tokens, sb.num_logprobs)


def logprobs_of(logprobs: Tensor, tokens: Tensor, k: int) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """-> ((B, 2): each row's logprob of its token and that token's vocab rank (the ids at least as likely,
    itself included, as vLLM's), (top k logprobs, their ids) (B, k) or None for k = 0), from logprobs (B, V)."""
    chosen = logprobs.gather(-1, tokens[:, None])
    chosen = torch.cat([chosen, (logprobs >= chosen).sum(-1, keepdim=True).to(chosen.dtype)], -1)
    top = logprobs.topk(k, dim=-1) if k > 0 else None
    return chosen, (top.values, top.indices) if top is not None else None
