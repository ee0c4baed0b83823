"""The scheduler: which sequences run in the next step, and how many tokens each — pure Python.

One policy covers prefill and decode (continuous batching, as in vLLM v1): every step has a
token budget (`max_num_batched_tokens`) and a sequence asks for the tokens it has not computed
yet — its whole prompt (or the rest of it) before the first output token, then one token per
step. So a step may mix decodes and prefill chunks of several sequences; requests join and leave
between steps.

    1. running sequences, oldest first: take min(uncomputed, budget) tokens each. If the block
       manager cannot cover them, *preempt* the youngest running sequence (release its blocks,
       forget its K/V, put it at the front of the queue to be recomputed later) until it can.
    2. then waiting sequences in arrival order (FCFS, no overtaking), while the budget, the
       `max_num_seqs` cap and free blocks allow, reusing prefix-cached blocks where they hit.

With chunked prefill off, a prompt is admitted only whole (it must fit the budget by itself).
A request that could never fit — more blocks than exist, or a prompt over the budget without
chunking — is rejected by `check_fits` when it is added, never left to starve or crash later.

Blocks a step will fill are registered in the prefix cache when it is scheduled (block_manager.py
says why that is safe). `update` applies a step's results: computed counts, sampled tokens, and stops by token (EOS / stop_token_ids), `max_tokens` and `max_model_len`.
Stop *strings* need text, so the engine detects them and calls `finish`.

Async scheduling (llm_engine.py): a step may be launched before the last one's sampled tokens
reach the host. `advance` books a launched step at once (computed counts, a PLACEHOLDER for each
token it samples), `schedule_ahead` plans the next step while the placeholders stand — decode rows
on them, prompt chunks, admissions, as `schedule` would — or says it cannot (the running sequences
need more blocks than are free: preemption waits for the tokens), and `settle` puts the tokens in
their places and applies the stops `update` would. Blocks that hold a placeholder are registered
in the prefix cache by `settle`, once their tokens are known.

Not here: torch. Reference: vLLM v1 `core/sched/scheduler.py`; nano-vllm `engine/scheduler.py`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from llmlab.engine.block_manager import BlockManager
from llmlab.engine.sequence import RequestError, Sequence, SequenceStatus

PLACEHOLDER = -1  # the token of a launched step whose sampled ids have not reached the host yet (never an id)


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)  # tokens to compute for each, this step
    preempted: list[Sequence] = field(default_factory=list)
    on_placeholder: list[int] = field(default_factory=list)  # rows whose input is a token in flight (schedule_ahead)

    def __len__(self) -> int:
        return len(self.seqs)

    def samples(self, i: int) -> bool:
        """Does seqs[i] reach its last token this step (so its next token is sampled)?"""
        seq = self.seqs[i]
        return seq.num_computed_tokens + self.num_tokens[i] == len(seq)


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, enable_chunked_prefill: bool = True):
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: index 0 is the oldest
        self.num_preemptions = 0

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def check_fits(self, prompt_len: int, max_tokens: int | None) -> None:
        """Raise RequestError if a request of this shape could never be scheduled (max_tokens None: to the end of
        the context)."""
        if prompt_len >= self.max_model_len:
            raise RequestError(f"the prompt has {prompt_len} tokens but the model's context is {self.max_model_len}; "
                               "shorten the prompt (it must leave room for at least one new token).")
        # The last sampled token ends the sequence before its K/V is ever computed.
        peak = (self.max_model_len if max_tokens is None else min(prompt_len + max_tokens, self.max_model_len)) - 1
        need = self.bm.blocks_for(peak)
        if need > self.bm.num_blocks:
            raise RequestError(f"this request needs up to {peak} tokens of KV cache ({need} blocks) but the cache "
                               f"has only {self.bm.num_blocks} blocks; lower max_tokens or give the engine more "
                               "KV memory (kv_cache_memory / num_blocks).")
        if not self.enable_chunked_prefill and peak > self.max_num_batched_tokens:
            raise RequestError(f"without chunked prefill a sequence of up to {peak} tokens must fit "
                               f"max_num_batched_tokens={self.max_num_batched_tokens} in one step (it is recomputed "
                               "whole after a preemption); raise it or enable chunked prefill.")

    def add(self, seq: Sequence) -> None:
        self.check_fits(seq.num_prompt_tokens, seq.params.max_tokens)
        self.waiting.append(seq)

    # ---- one step -------------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        bs = self.bm.block_size
        running, take, count = self.running, batch.seqs.append, batch.num_tokens.append
        i = 0
        while i < len(running) and budget > 0:  # (~1 us a sequence: the loop is kept lean)
            seq = running[i]
            done = seq.num_computed_tokens
            n = len(seq.token_ids) - done
            if n > budget:  # noqa: PLR1730 (a compare, not a call: per sequence per step)
                n = budget
            target = done + n
            if target > len(seq.block_table) * bs:  # needs another block (else: a decode inside its last one)
                while not self.bm.can_grow(seq, target) and running[-1] is not seq:
                    self._preempt(running.pop(), batch)
                if not self.bm.can_grow(seq, target):  # seq is the youngest: it yields itself
                    self._preempt(running.pop(), batch)
                    break
                self.bm.grow(seq, target)
            if target // bs > done // bs:  # fills a block: register its hash
                self.bm.commit(seq, target)
            take(seq)
            count(n)
            budget -= n
            i += 1
        if batch.preempted:
            return batch  # blocks are short: admit nobody new this step
        self._admit(batch, budget)
        return batch

    def _admit(self, batch: ScheduledBatch, budget: int) -> None:
        """Waiting sequences into `batch` in arrival order, while the budget, max_num_seqs and free blocks allow."""
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # prompt logprobs need every prompt position computed: no prefix-cache hits (as vLLM)
            hits = self.bm.lookup(seq) if seq.params.prompt_logprobs is None else []
            uncomputed = len(seq) - len(hits) * self.bm.block_size
            n = min(uncomputed, budget)
            if n < uncomputed and not self.enable_chunked_prefill:
                break
            if not self.bm.can_admit(hits, len(seq) - uncomputed + n):
                break
            self.waiting.popleft()
            self.bm.admit(seq, hits, len(seq) - uncomputed + n)
            self.bm.commit(seq, len(seq) - uncomputed + n)
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled is None:
                seq.first_scheduled = time.perf_counter()
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            budget -= n

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Preemption by recompute: free the blocks, keep the tokens, requeue at the front."""
        self.bm.release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    # ---- results --------------------------------------------------------------------------------

    def update(self, batch: ScheduledBatch, sampled: dict[int, int]) -> list[Sequence]:
        """Apply a step: computed tokens and sampled tokens {seq_id: id}; return the sequences that finished."""
        finished = []
        for seq, n in zip(batch.seqs, batch.num_tokens):  # (lean: ~1 us a sequence at 256 sequences)
            seq.num_computed_tokens += n
            token = sampled.get(seq.seq_id)
            if token is None:
                continue
            seq.token_ids.append(token)
            if self._stops(seq, token, len(seq.token_ids)):
                finished.append(seq)
        return finished

    def _stops(self, seq: Sequence, token: int, length: int) -> bool:
        """End seq if `token`, which makes it `length` tokens long, is a stop token or reaches a length limit."""
        if token in seq.stop_token_ids and length - seq.num_prompt_tokens >= seq.params.min_tokens:
            # stop_reason: the id of a stop_token_ids hit, None for EOS (as vLLM)
            self.finish(seq, "stop", token if token in seq.params.stop_token_ids else None)
        elif self._ends_by_length(seq, length):
            self.finish(seq, "length")
        else:
            return False
        return True

    def _ends_by_length(self, seq: Sequence, length: int) -> bool:
        limit = seq.params.max_tokens
        return length >= self.max_model_len or (limit is not None and length - seq.num_prompt_tokens >= limit)

    # ---- async scheduling -------------------------------------------------------------------------

    def advance(self, batch: ScheduledBatch) -> list[int]:
        """Book a step launched before its tokens are known: its computed tokens, and a PLACEHOLDER where each
        sampled token goes. Returns the index of each one's token, for the rows that sample (batch.samples), in
        batch order."""
        where = []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            c = seq.num_computed_tokens = seq.num_computed_tokens + n
            ids = seq.token_ids
            if c == len(ids):  # it reached its last token: one is sampled
                where.append(c)
                ids.append(PLACEHOLDER)
        return where

    def schedule_ahead(self) -> ScheduledBatch | None:
        """The next step while the last one's sampled tokens are placeholders, planned as schedule() plans one:
        running sequences oldest first — a decode row on each placeholder (none for a sequence that ends by length
        on it), the next chunk of a prompt being prefilled — then admissions from the queue. The runner takes a
        decode row's input from the in-flight step's sampled ids on the device. Blocks filled by a decode row get
        their prefix-cache entries when their tokens are known (`settle`). None when the running sequences need
        more blocks than are free: schedule() would preempt, which waits for the tokens."""
        bs, budget = self.bm.block_size, self.max_num_batched_tokens
        batch = ScheduledBatch()
        seqs, counts, on_placeholder = batch.seqs, batch.num_tokens, batch.on_placeholder
        grow, commit, new_blocks = [], [], 0  # (~1 us a sequence: the loop is kept lean)
        for seq in self.running:
            if budget <= 0:
                break
            ids = seq.token_ids
            done = seq.num_computed_tokens
            if ids[-1] == PLACEHOLDER:
                if self._ends_by_length(seq, len(ids)):
                    continue  # its placeholder is its last token: it ends when that token is known
                on_placeholder.append(len(seqs))
                n = 1
            else:  # mid-prefill (or a decode row left out of the step in flight): known tokens
                n = len(ids) - done
                if n > budget:  # noqa: PLR1730 (a compare, not a call: per sequence per step)
                    n = budget
                if (done + n) // bs > done // bs:
                    commit.append((seq, done + n))
            target = done + n
            if target > len(seq.block_table) * bs:
                new_blocks += -(-target // bs) - len(seq.block_table)
                grow.append((seq, target))
            seqs.append(seq)
            counts.append(n)
            budget -= n
        if new_blocks > self.bm.num_free_blocks:  # nothing changed yet: the engine waits and schedule() preempts
            return None
        for seq, target in grow:
            self.bm.grow(seq, target)
        for seq, target in commit:
            self.bm.commit(seq, target)
        self._admit(batch, budget)
        return batch if seqs else None

    def settle(self, seqs: list[Sequence], where: list[int], tokens: list[int]) -> None:
        """A launched step's sampled tokens (one per sequence that sampled, in batch order) into the
        places `advance` kept, with update()'s stops; register the prefix-cache blocks its rows filled now that
        their tokens are known. Sequences finished meanwhile (aborted, or stopped by the step before: this step's
        row of it was wasted) are skipped."""
        bs, cache = self.bm.block_size, self.bm.enable_prefix_caching
        finished = SequenceStatus.FINISHED
        for seq, i, token in zip(seqs, where, tokens):
            if seq.status is finished:
                continue
            seq.token_ids[i] = token
            if cache and i % bs == 0:  # the step's row wrote position i - 1, the last of a block
                self.bm.commit_block(seq, i // bs - 1)
            self._stops(seq, token, i + 1)

    def finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        """End a sequence (stop, length or abort) and return its blocks; safe to call twice. Tokens of steps still
        in flight (placeholders) are dropped."""
        if seq.is_finished:
            return
        ids = seq.token_ids
        while ids[-1] == PLACEHOLDER:
            ids.pop()
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.bm.release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
