"""Training's SDPA backend choice (llmlab/train/attention_backend.py): the fastest timed backend goes first,
PyTorch's own order on CPU or "default", clear errors, and the training loop runs inside the chosen order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from llmlab.errors import ConfigError
from llmlab.train import attention_backend as ab
from llmlab.train.config import TrainConfig

SHAPE = dict(batch=2, heads=4, seq=32, head_dim=16, dtype=torch.float32)


def test_auto_puts_the_fastest_timed_backend_first(monkeypatch):
    fake = {"flash": 3.0, "cudnn": 1.0, "efficient": 2.0}
    monkeypatch.setattr(ab, "time_backends", lambda **shape: fake)  # as timed on a Hopper card
    order, times = ab.choose_backends("auto", **SHAPE, device=torch.device("cuda"))
    assert times == fake
    assert order[0] == SDPBackend.CUDNN_ATTENTION and order[-1] == SDPBackend.MATH
    assert set(order) == {SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                          SDPBackend.MATH}  # every fallback kept


def test_named_backend_goes_first_and_default_keeps_pytorchs_order():
    order, times = ab.choose_backends("efficient", **SHAPE, device=torch.device("cpu"))
    assert order[0] == SDPBackend.EFFICIENT_ATTENTION and not times
    assert ab.choose_backends("default", **SHAPE, device=torch.device("cuda")) == (None, {})
    assert ab.choose_backends("auto", **SHAPE, device=torch.device("cpu")) == (None, {})  # nothing to time


def test_time_backends_leaves_out_what_cannot_run():
    """On this CPU only the math and flash (CPU) kernels exist: the CUDA-only ones raise and are left out."""
    times = ab.time_backends(**SHAPE, device=torch.device("cpu"), iters=1, names=("cudnn", "math"))
    assert list(times) == ["math"] and times["math"] > 0


def test_prefer_reorders_pytorchs_backends_and_keeps_the_fallbacks():
    """Inside prefer(order) PyTorch's SDPA priority starts with order[0] (restored after), and SDPA on this
    CPU (which has no cuDNN kernel) still falls back to a kernel it has, with the same numbers."""
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    priority = getattr(torch._C, "_get_sdp_priority_order", None)
    before = priority() if priority else None
    with ab.prefer([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        if priority:
            assert priority()[0] == SDPBackend.CUDNN_ATTENTION.value
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True), want)
    if priority:
        assert priority() == before
    with ab.prefer(None):
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True), want)


def test_bad_choice_is_a_clear_error():
    with pytest.raises(ConfigError, match="attention_backend must be one of"):
        TrainConfig(attention_backend="fa3")
    with pytest.raises(ConfigError, match="attention_backend must be one of"):
        ab.choose_backends("fast", **SHAPE, device=torch.device("cuda"))
