"""Host-to-device copies that do not wait for the GPU (llmlab/transfer.py), and the paths that rely on them.

On a CPU the helpers are plain copies: their values are checked here. On CUDA the property is timing: with a
kernel queued that keeps the GPU busy for half a second, a call that makes a pageable copy (or any other sync)
waits it out, and one that does not returns at once. Checked for the helpers (beside a plain `.to("cuda")`,
which waits: the premise), for a step of the engine under async scheduling (beside the same engine waiting for
each step, which must wait: the test can tell) and for a training step.
"""

from __future__ import annotations

import time

import pytest
import torch

from llmlab import LLM, ModelConfig, Transformer
from llmlab.engine import SamplingParams
from llmlab.train.loop import train_step
from llmlab.train.optim import AdamW, LossScaler
from llmlab.transfer import copy_to_device, device_tensor, to_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
BUSY_S = 0.5


def test_helpers_copy_values_on_the_cpu():
    t = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    assert torch.equal(to_device(t, "cpu"), t)
    assert torch.equal(to_device(t.t(), torch.device("cpu")), t.t())
    made = device_tensor([[1, 2], [3, 4]], torch.int32, "cpu")
    assert made.dtype == torch.int32 and made.tolist() == [[1, 2], [3, 4]]
    dst = torch.zeros(3, 4, dtype=torch.int64)
    copy_to_device(dst[:, :2], t[:, :2])
    assert dst[:, :2].tolist() == t[:, :2].tolist() and not dst[:, 2:].any()


@pytest.fixture(scope="module")
def busy():
    """busy(seconds): queue a kernel that keeps the GPU spinning for about that long (torch.cuda._sleep counts
    clock cycles: the rate is measured first, over ~0.1 s after a spin that lifts the card from its idle clocks, since
    a rate measured at idle clocks makes every later spin too short)."""
    torch.cuda._sleep(10**8)
    torch.cuda.synchronize()
    cycles = 2 * 10**8
    t0 = time.perf_counter()
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    rate = cycles / (time.perf_counter() - t0)

    def run(seconds: float) -> None:
        torch.cuda.synchronize()
        torch.cuda._sleep(int(rate * seconds))

    return run


def _returns_within(busy, fn, seconds: float = BUSY_S) -> float:
    busy(seconds)
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    torch.cuda.synchronize()
    return dt


@pytest.mark.gpu
@cuda
def test_helpers_do_not_wait_for_the_gpu_where_a_pageable_copy_does(busy):
    host = torch.arange(1 << 18, dtype=torch.int64)  # 2 MiB, pageable
    assert _returns_within(busy, lambda: host.to("cuda")) > 0.8 * BUSY_S  # the premise: a plain copy waits
    out = {}
    assert _returns_within(busy, lambda: out.update(a=to_device(host, "cuda"))) < 0.5 * BUSY_S
    assert torch.equal(out["a"].cpu(), host)
    made = _returns_within(busy, lambda: out.update(b=device_tensor(list(range(1000)), torch.long, "cuda")))
    assert made < 0.5 * BUSY_S
    assert out["b"].cpu().tolist() == list(range(1000))
    dst = torch.zeros(1 << 18, dtype=torch.int64, device="cuda")
    assert _returns_within(busy, lambda: copy_to_device(dst, host)) < 0.5 * BUSY_S
    assert torch.equal(dst.cpu(), host)


CFG = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                  max_position_embeddings=512)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("async_on", [True, False])
@pytest.mark.parametrize("arrival", [False, True], ids=["decode step", "mixed step with an arrival"])
def test_an_async_engine_step_launches_without_waiting_for_the_gpu(busy, async_on, arrival):
    torch.manual_seed(0)
    model = Transformer(CFG).to("cuda").eval()
    llm = LLM(model, device="cuda", block_size=16, max_num_seqs=8, async_scheduling=async_on)
    e = llm.engine
    for i in range(4):  # temperature and a seed: the sampler's parameter tensors are made too
        e.add_request(str(i), [3 + i] * (20 + 7 * i), SamplingParams(temperature=0.8, seed=i, max_tokens=200,
                                                                      ignore_eos=True))
    for _ in range(12):  # prefill, then decode steps (launched ahead when async)
        e.step()
    assert (e.async_steps > 0) == async_on
    if arrival:  # the timed step admits it: its prompt's chunk runs eagerly beside the decode rows
        e.add_request("late", list(range(5, 45)), SamplingParams(temperature=0, max_tokens=8))
    waited = _returns_within(busy, e.step)
    if async_on:  # it launched the next step behind the busy kernel and read the step before it
        assert waited < 0.5 * BUSY_S
    else:  # the control: a waiting engine reads this step's tokens, behind the busy kernel
        assert waited > 0.8 * BUSY_S
    while e.has_unfinished_requests():
        e.step()


@pytest.mark.gpu
@cuda
def test_a_training_step_queues_without_waiting_for_the_gpu(busy):
    torch.manual_seed(0)
    model = Transformer(CFG).to("cuda").train()
    opt = AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, CFG.vocab_size, (64, 257))  # pageable, as the token loader gives it (128 KiB)
    batch = [(data[:, :-1], data[:, 1:])]

    def step():
        return train_step(model, model, batch, opt, LossScaler(enabled=False), device=torch.device("cuda"),
                          precision="bf16", grad_clip=1.0)

    for _ in range(2):
        step()
    out = []
    assert _returns_within(busy, lambda: out.append(step())) < 0.5 * BUSY_S
    loss, gnorm, ok = out[0]
    assert ok and torch.isfinite(loss) and torch.isfinite(gnorm)
