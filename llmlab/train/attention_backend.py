"""Which fused attention kernel training's `scaled_dot_product_attention` prefers, chosen by timing.

PyTorch picks an SDPA backend by a fixed order (FlashAttention-2 first). Which one is fastest depends on
the card and the shape: on Hopper the cuDNN kernels are reported 1.7-2.3x faster for training shapes,
while on Ampere FlashAttention-2 wins. So `attention_backend = "auto"` (TrainConfig) times a forward and
backward of each available backend at the run's own attention shape (batch, heads, seq_len, head_dim,
dtype, causal) at start-up, a second or so on a GPU, and puts the fastest first in the priority order
(`torch.nn.attention.sdpa_kernel(..., set_priority=True)`): shapes it cannot serve still fall back in
PyTorch's order. A name ("flash", "cudnn", "efficient", "math") prefers that backend; "default" keeps
PyTorch's order. On a CPU "auto" is "default" (nothing to choose between).

    order, times = choose_backends("auto", batch=16, heads=12, seq=1024, head_dim=64, dtype=torch.bfloat16,
                                   device=torch.device("cuda"))
    with prefer(order):  # around compilation and every step: torch.compile bakes the choice in when it traces
        ...
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from llmlab.errors import ConfigError
from llmlab.train.config import ATTENTION_CHOICES as CHOICES


def _backends() -> dict:
    from torch.nn.attention import SDPBackend

    names = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "math": "MATH"}
    return {name: getattr(SDPBackend, attr) for name, attr in names.items() if hasattr(SDPBackend, attr)}


def _time_ms(fn: Callable[[], None], device: torch.device, iters: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / iters


def time_backends(*, batch: int, heads: int, seq: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                  iters: int = 10, names: tuple[str, ...] = ("flash", "cudnn", "efficient")) -> dict[str, float]:
    """Milliseconds for a causal forward + backward of each named backend at this shape; a backend that
    cannot run it (dtype, head_dim, card) is left out."""
    from torch.nn.attention import sdpa_kernel

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, device=device, dtype=dtype, generator=g).requires_grad_()
               for _ in range(3))
    grad = torch.randn_like(q)

    def step():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), grad)

    times = {}
    backends = _backends()
    for name in names:
        backend = backends.get(name)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                times[name] = _time_ms(step, device, iters)
        except RuntimeError:  # "No available kernel": this backend does not take this shape/dtype/card
            continue
    return times


def choose_backends(setting: str, *, batch: int, heads: int, seq: int, head_dim: int, dtype: torch.dtype,
                    device: torch.device) -> tuple[list | None, dict[str, float]]:
    """(priority order to prefer, or None for PyTorch's own; the timings behind an "auto" choice)."""
    if setting not in CHOICES:
        raise ConfigError(f"attention_backend must be one of {', '.join(CHOICES)}; got {setting!r}.")
    backends = _backends()
    if setting == "default" or (setting == "auto" and device.type != "cuda"):
        return None, {}
    times = {}
    first = setting
    if setting == "auto":
        times = time_backends(batch=batch, heads=heads, seq=seq, head_dim=head_dim, dtype=dtype, device=device)
        if not times:
            return None, times
        first = min(times, key=times.get)
    if first not in backends:
        raise ConfigError(f"attention_backend {setting!r} is not in this PyTorch ({torch.__version__}); "
                          "use 'auto' or 'default'.")
    rest = [b for name, b in backends.items() if name != first and name != "math"] + [backends["math"]]
    return [backends[first], *rest], times


def prefer(order: list | None):
    """A context in which SDPA tries `order` first (None: a no-op). PyTorch before `set_priority` (2.6)
    cannot reorder: it gets an allow-list of the first backend and the math fallback."""
    if order is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if _can_set_priority():
        return sdpa_kernel(order, set_priority=True)
    return sdpa_kernel([order[0], SDPBackend.MATH])


@functools.cache
def _can_set_priority() -> bool:
    """Whether this PyTorch's sdpa_kernel takes set_priority (2.6+); asked once, not on every training step."""
    from torch.nn.attention import sdpa_kernel

    return "set_priority" in inspect.signature(sdpa_kernel).parameters
