"""SiLU(gate) * up for CPU inference in one C call (cpu_swiglu.c) instead of PyTorch's two ops.

    use_fast_swiglu(model)      # every gated SiLU FeedForward of `model` becomes a FastFeedForward, in place
    swiglu_cpu(gu, inter)       # the kernel: gu (..., 2 * inter) = [gate | up] -> (..., inter)

Why: SmolLM2-135M's SwiGLU is two element-wise ops a layer; in bf16 on a CPU without bf16 instructions each widens
and rounds every element in its own pass: ~37 us a layer at one sequence (30 layers: 1.1 of a ~20 ms decode step)
and ~110 us at 16, on the 2-core Zen 3 EPYC. The kernel computes silu in fp32 as x * sigmoid(x) with a
vectorisable exp, rounds it to the dtype and multiplies by up, rounding again, as `act(g) * u` does; its silu is
within a few fp32 ulps of PyTorch's, so outputs agree to the dtype's rounding, not bit for bit.

`FastFeedForward` *is* the model's FeedForward (the module's class is swapped, its parameters untouched, as
kernels/cpu_norm.FastRMSNorm is an RMSNorm). It takes the kernel for inference on CPU tensors with the fused
gate_up Linear, outside torch.compile, in a dtype the kernel is built for; anything else runs the plain forward.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.kernels import cbuild
from llmlab.model.layers import FeedForward


@functools.cache
def _functions() -> dict[torch.dtype, ctypes._CFuncPtr]:
    """swiglu_<dtype>(gu, out, rows, inter, nthreads) by dtype; empty where it cannot be built (no compiler)."""
    args = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    return cbuild.dtype_functions("cpu_swiglu.c", "swiglu", args, "llmlab_swiglu_has_f16")


def supported(dtype: torch.dtype) -> bool:
    return dtype in _functions()


def swiglu_cpu(gu: Tensor, inter: int) -> Tensor:
    """silu(gu[..., :inter]) * gu[..., inter:], each rounded to gu's dtype; a contiguous CPU tensor of a supported
    dtype whose last dimension is 2 * inter."""
    if not gu.is_contiguous() or gu.shape[-1] != 2 * inter:
        raise ValueError(f"swiglu_cpu takes a contiguous (..., {2 * inter}) tensor, got {tuple(gu.shape)}.")
    out = gu.new_empty(*gu.shape[:-1], inter)
    _functions()[gu.dtype](gu.data_ptr(), out.data_ptr(), gu.numel() // (2 * inter), inter, torch.get_num_threads())
    return out


class FastFeedForward(FeedForward):
    """FeedForward whose CPU inference SwiGLU is one C call (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        # Traced first: the checks below call into ctypes, which torch.compile cannot trace (a graph break).
        if (torch.compiler.is_compiling() or self.gate_up is None or torch.is_grad_enabled() or x.device.type != "cpu"
                or not supported(x.dtype)):
            return super().forward(x)
        gu = self.gate_up(x)
        return self.down(swiglu_cpu(gu if gu.is_contiguous() else gu.contiguous(), gu.shape[-1] // 2))


def use_fast_swiglu(model: nn.Module) -> int:
    """Make every gated SiLU FeedForward of `model` a FastFeedForward, in place; return how many. Returns 0 where
    the kernel cannot be built."""
    if not _functions():
        return 0
    swapped = 0
    for m in model.modules():
        if type(m) is FeedForward and m.gate is not None and m.act is F.silu:
            m.__class__ = FastFeedForward
            swapped += 1
    return swapped
