"""Block manager and scheduler, pure Python: accounting invariants as properties, prefix caching, preemption."""

from __future__ import annotations

import random

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from llmlab.engine.block_manager import BlockManager
from llmlab.engine.scheduler import Scheduler
from llmlab.engine.sequence import RequestError, SamplingParams, Sequence, SequenceStatus


def make(num_blocks=16, block_size=4, *, max_num_seqs=8, budget=16, max_model_len=64, caching=True, chunked=True):
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching=caching)
    return bm, Scheduler(bm, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=max_model_len,
                         enable_chunked_prefill=chunked)


def seq(tokens, max_tokens=8, rid="r", eos=frozenset()):
    return Sequence(rid, list(tokens), SamplingParams(max_tokens=max_tokens), eos_token_ids=eos)


def fake_step(sched: Scheduler, rng: random.Random, vocab: int = 3):
    """One engine step without a model: schedule, then 'sample' a token for rows that reach their end."""
    batch = sched.schedule()
    check_batch(sched, batch)
    sampled = {s.seq_id: rng.randrange(vocab) for i, s in enumerate(batch.seqs) if batch.samples(i)}
    return batch, sched.update(batch, sampled)


def live(sched: Scheduler) -> list[Sequence]:
    return list(sched.running) + list(sched.waiting)


def check_batch(sched: Scheduler, batch) -> None:
    assert sum(batch.num_tokens) <= sched.max_num_batched_tokens
    assert len(sched.running) <= sched.max_num_seqs
    assert len({s.seq_id for s in batch.seqs}) == len(batch.seqs)
    for s, n in zip(batch.seqs, batch.num_tokens):
        assert 1 <= n <= s.num_uncomputed_tokens
        assert len(s.block_table) * sched.bm.block_size >= s.num_computed_tokens + n  # room for the new K/V


# Mostly-zero prompts share prefixes (cache hits); several live requests outgrow the blocks (preemption).
ADD = st.tuples(st.just("add"), st.lists(st.sampled_from([0, 0, 0, 1]), min_size=1, max_size=10), st.integers(1, 8))
OPS = st.lists(st.one_of(ADD, ADD, st.tuples(st.just("step"), st.integers(1, 4)),
                         st.tuples(st.just("abort"), st.integers(0, 50))), min_size=8, max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops=OPS, num_blocks=st.integers(5, 12), block_size=st.sampled_from([1, 2, 4]), budget=st.integers(1, 24),
       max_num_seqs=st.integers(1, 6), caching=st.sampled_from([True, True, False]), chunked=st.booleans(),
       seed=st.integers(0, 2**16))
def test_no_leaks_under_any_add_step_abort(ops, num_blocks, block_size, budget, max_num_seqs, caching, chunked, seed):
    """After any interleaving: ref counts match block tables, free + used == total, nothing leaks at the end."""
    bm, sched = make(num_blocks, block_size, max_num_seqs=max_num_seqs, budget=budget, max_model_len=40,
                     caching=caching, chunked=chunked)
    rng = random.Random(seed)
    seqs: list[Sequence] = []
    for op in ops:
        if op[0] == "add":
            s = seq(op[1], max_tokens=op[2])
            try:
                sched.add(s)
            except RequestError:
                continue
            seqs.append(s)
        elif op[0] == "step":
            for _ in range(op[1]):
                fake_step(sched, rng)
        elif seqs:
            sched.finish(seqs[op[1] % len(seqs)], "abort")
        bm.check_invariants(live(sched))
    # Drain: every accepted request finishes (no starvation, no deadlock), then nothing is held.
    for _ in range(2000):
        if not len(sched):
            break
        batch, _ = fake_step(sched, rng)
        assert batch.seqs, "the scheduler stalled with work queued"
        bm.check_invariants(live(sched))
    assert not len(sched)
    assert all(r == 0 for r in bm.ref_count) and bm.num_free_blocks == bm.num_blocks
    event(f"preempted: {sched.num_preemptions > 0}")  # --hypothesis-show-statistics: the cases are exercised
    event(f"prefix-cache hits: {bm.num_hits > 0}")
    assert all(s.finish_reason in ("length", "abort") for s in seqs)
    assert all(s.num_output_tokens == s.params.max_tokens for s in seqs if s.finish_reason == "length")


@settings(max_examples=100, deadline=None)
@given(base=st.lists(st.integers(0, 3), min_size=2, max_size=9), tails=st.lists(
       st.tuples(st.lists(st.integers(0, 3), max_size=5), st.integers(1, 6)), min_size=2, max_size=8),
       num_blocks=st.integers(6, 12), aborts=st.lists(st.integers(0, 30), max_size=3), seed=st.integers(0, 2**16))
def test_shared_prefixes_under_memory_pressure(base, tails, num_blocks, aborts, seed):
    """Requests sharing a prompt prefix, more of them than the blocks hold: hits, preemptions, aborts, no leaks."""
    bm, sched = make(num_blocks, 2, max_num_seqs=8, budget=8, max_model_len=40)
    rng = random.Random(seed)
    seqs = []
    for tail, max_tokens in tails:
        s = seq(base + tail, max_tokens=max_tokens)
        try:
            sched.add(s)
            seqs.append(s)
        except RequestError:
            pass
    for step in range(500):
        if not len(sched):
            break
        if step in aborts and seqs:
            sched.finish(seqs[step % len(seqs)], "abort")
        fake_step(sched, rng)
        bm.check_invariants(live(sched))
    assert not len(sched) and all(r == 0 for r in bm.ref_count) and bm.num_free_blocks == bm.num_blocks
    event(f"preempted: {sched.num_preemptions > 0}")
    event(f"prefix-cache hits: {bm.num_hits > 0}")


def run_to_end(sched, rng=None):
    rng = rng or random.Random(0)
    steps = []
    while len(sched):
        batch, _ = fake_step(sched, rng)
        steps.append(batch)
    return steps


def test_prefix_cache_hits_and_exact_multiple_all_cached():
    bm, sched = make(num_blocks=16, block_size=4)
    first = seq(range(10), max_tokens=1)  # blocks [0..3], [4..7], partial [8, 9]
    sched.add(first)
    run_to_end(sched)
    assert len(bm.cached) == 2  # the two full prompt blocks are cached, the partial one is not

    again = seq(range(10), max_tokens=1)
    sched.add(again)
    batch = sched.schedule()
    assert again.num_cached_tokens == 8 and batch.num_tokens == [2]  # only the partial block is computed

    exact = seq(range(8), max_tokens=1)  # an exact multiple, fully cached: the last block is recomputed
    sched.add(exact)
    batch = sched.schedule()
    assert exact.num_cached_tokens == 4 and batch.num_tokens[-1] == 4
    assert exact.block_table[0] == again.block_table[0]  # shared ...
    assert exact.block_table[1] != again.block_table[1]  # ... but the block it writes is its own
    assert bm.ref_count[exact.block_table[0]] == 2
    run_to_end(sched)
    assert all(r == 0 for r in bm.ref_count)


def test_prompts_admitted_in_the_same_step_share_their_prefix():
    bm, sched = make(num_blocks=16, block_size=4, budget=64)
    a, b = seq(range(9), max_tokens=1), seq(range(9), max_tokens=1)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.num_tokens == [9, 1] and b.block_table[:2] == a.block_table[:2]
    run_to_end(sched)
    assert all(r == 0 for r in bm.ref_count)


def test_no_prefix_cache_when_disabled():
    bm, sched = make(caching=False)
    sched.add(seq(range(10), max_tokens=1))
    run_to_end(sched)
    s = seq(range(10), max_tokens=1)
    sched.add(s)
    assert sched.schedule().num_tokens == [10] and s.num_cached_tokens == 0 and not bm.cached


def test_evicted_block_is_no_longer_a_hit():
    bm, sched = make(num_blocks=4, block_size=4)
    sched.add(seq(range(8), max_tokens=1))
    run_to_end(sched)
    sched.add(seq([3] * 16, max_tokens=1))  # needs all 4 blocks: the cached ones are evicted
    run_to_end(sched)
    s = seq(range(8), max_tokens=1)
    sched.add(s)
    sched.schedule()
    assert s.num_cached_tokens == 0


def test_chunked_prefill_splits_a_long_prompt_and_mixes_with_decode():
    bm, sched = make(num_blocks=32, block_size=4, budget=8, max_model_len=64)
    a = seq(range(3), max_tokens=5)
    sched.add(a)
    fake_step(sched, random.Random(0))  # a: prefill of 3, samples its first token
    b = seq(range(20), max_tokens=1)
    sched.add(b)
    batch = sched.schedule()
    assert [(s is a, n) for s, n in zip(batch.seqs, batch.num_tokens)] == [(True, 1), (False, 7)]
    assert not batch.samples(1)


def test_without_chunking_a_prompt_waits_until_it_fits_whole():
    bm, sched = make(num_blocks=32, block_size=4, budget=8, chunked=False)
    a, b = seq(range(6), max_tokens=2), seq(range(10, 16), max_tokens=2)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [a] and batch.num_tokens == [6]  # b's 6 tokens do not fit the 2 left
    with pytest.raises(RequestError, match="max_num_batched_tokens"):
        sched.add(seq(range(9), max_tokens=1))


def test_preemption_recomputes_youngest_and_keeps_fcfs():
    bm, sched = make(num_blocks=4, block_size=2, budget=16, max_model_len=32, caching=False)
    a, b = seq([1, 2, 3], max_tokens=4, rid="a"), seq([4, 5, 6], max_tokens=4, rid="b")
    sched.add(a)
    sched.add(b)
    rng = random.Random(0)
    fake_step(sched, rng)  # both prefilled (3 tokens): 2 blocks each, all 4 used
    admitted = b.first_scheduled  # its first admission (RequestMetrics.first_scheduled_time)
    fake_step(sched, rng)  # both decode position 3, still inside their second block
    batch, _ = fake_step(sched, rng)  # a needs a third block for position 4 -> b (younger) is preempted
    assert batch.preempted == [b] and b.status is SequenceStatus.WAITING and not b.block_table
    assert batch.seqs == [a] and sched.waiting[0] is b
    assert b.num_output_tokens == 2 and b.num_computed_tokens == 0  # tokens kept, K/V forgotten
    run_to_end(sched, rng)
    assert a.finish_reason == b.finish_reason == "length" and b.num_preemptions >= 1
    assert admitted is not None and b.first_scheduled == admitted  # readmission after preemption is not the first
    assert all(r == 0 for r in bm.ref_count)


def test_request_that_can_never_fit_is_rejected():
    bm, sched = make(num_blocks=4, block_size=4, max_model_len=64)
    with pytest.raises(RequestError, match="only 4 blocks"):
        sched.add(seq(range(10), max_tokens=8))  # K/V for 10 + 8 - 1 = 17 tokens > 16 slots
    with pytest.raises(RequestError, match="context"):
        sched.add(seq(range(64)))
    s = seq(range(10), max_tokens=7)  # 16 tokens of K/V (the last token is never fed back): fits
    sched.add(s)
    run_to_end(sched)
    assert s.finish_reason == "length" and all(r == 0 for r in bm.ref_count)


def test_stop_token_and_max_model_len():
    bm, sched = make(max_model_len=12)
    s = seq(range(4), max_tokens=100, eos=frozenset({7}))
    sched.add(s)
    batch = sched.schedule()
    sched.update(batch, {s.seq_id: 7})
    assert s.finish_reason == "stop" and s.stop_reason is None and s.output_token_ids == [7]  # EOS: None, as vLLM
    u = Sequence("u", [1, 2], SamplingParams(max_tokens=100, stop_token_ids=[9]), eos_token_ids=frozenset({7}))
    sched.add(u)
    sched.update(sched.schedule(), {u.seq_id: 9})
    assert u.finish_reason == "stop" and u.stop_reason == 9  # a stop_token_ids hit names its id
    t = seq(range(10), max_tokens=100)
    sched.add(t)
    run_to_end(sched)
    assert t.finish_reason == "length" and len(t) == 12
