"""RMSNorm for CPU inference in one C call (cpu_rms_norm.c) instead of eager PyTorch's ~8 small ops.

    use_fast_norms(model)   # swap every RMSNorm of `model` in place; returns how many
    rms_norm_cpu(x, w, eps) # the kernel: LLaMA's order, statistics in fp32, rounded like model/layers.RMSNorm
    add_rms_norm_cpu(h, r, w, eps)  # h += r (in place), then the same norm of h: kernels/cpu_decode.py's residuals

Why: a decode step of a small model on a CPU is mostly small ops. SmolLM2-135M runs 61 RMSNorms a step, and
in bf16 each is an upcast, a square, a mean, an add, an rsqrt, a multiply, a downcast and the weight multiply —
about 30 us each on a 2-core EPYC, ~1.8 ms of a 17 ms batch-1 step; the kernel is one ctypes call.

`FastRMSNorm` *is* an `RMSNorm` (same parameter, same state-dict name), like kernels/cpu_linear.PackedLinear
is an nn.Linear. It takes the kernel only for inference on CPU tensors whose dtype matches the weight's
(fp32, bf16, fp16 where the compiler has _Float16), outside torch.compile; everything else (training,
autograd, other devices, mixed dtypes) runs the plain RMSNorm forward.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor, nn

from llmlab.kernels import cbuild
from llmlab.model.layers import RMSNorm


@functools.cache
def _functions() -> dict[torch.dtype, ctypes._CFuncPtr]:
    """The kernel's entry points by dtype; empty where it cannot be built (no compiler)."""
    args = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_float, ctypes.c_int]
    return cbuild.dtype_functions("cpu_rms_norm.c", "rms_norm", args, "llmlab_norm_has_f16")


@functools.cache
def _add_functions() -> dict[torch.dtype, ctypes._CFuncPtr]:
    """add_rms_norm_<dtype>(h, r, w, y, rows, dim, eps, nthreads): h += r in place, then y = RMSNorm(h)."""
    args = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_float, ctypes.c_int]
    return cbuild.dtype_functions("cpu_rms_norm.c", "add_rms_norm", args, "llmlab_norm_has_f16")


def supported(dtype: torch.dtype) -> bool:
    return dtype in _functions()


def rms_norm_cpu(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """y = weight * cast(x / sqrt(mean(x^2, -1) + eps)) for CPU tensors of one supported dtype; x (..., dim)."""
    x = x.contiguous()
    w = weight.contiguous()
    y = torch.empty_like(x)
    dim = w.shape[0]
    _functions()[x.dtype](x.data_ptr(), w.data_ptr(), y.data_ptr(), x.numel() // dim, dim, eps,
                          torch.get_num_threads())
    return y


def add_rms_norm_cpu(h: Tensor, r: Tensor, weight: Tensor, eps: float) -> Tensor:
    """h += r in place (rounded as PyTorch's add), then RMSNorm(h) as rms_norm_cpu; contiguous CPU tensors of one
    supported dtype, h and r (..., dim)."""
    if not (h.is_contiguous() and r.is_contiguous() and h.shape == r.shape and h.dtype == r.dtype == weight.dtype):
        raise ValueError("add_rms_norm_cpu takes contiguous h and r of one shape and the weight's dtype.")
    y = torch.empty_like(h)
    dim = weight.shape[0]
    _add_functions()[h.dtype](h.data_ptr(), r.data_ptr(), weight.contiguous().data_ptr(), y.data_ptr(),
                              h.numel() // dim, dim, eps, torch.get_num_threads())
    return y


class FastRMSNorm(RMSNorm):
    """RMSNorm whose CPU inference forward is one C call (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        # Traced first: the checks below call into ctypes, which torch.compile cannot trace (a graph break).
        if (torch.compiler.is_compiling() or x.device.type != "cpu" or x.dtype != w.dtype or not supported(x.dtype)
                or x.numel() == 0 or torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
            return super().forward(x)
        return rms_norm_cpu(x, w, self.eps)


def use_fast_norms(model: nn.Module) -> int:
    """Swap every plain RMSNorm of `model` for a FastRMSNorm sharing its weight, in place; return how many.
    Returns 0 where the kernel cannot be built."""
    if not _functions():
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is RMSNorm:
                new = FastRMSNorm.__new__(FastRMSNorm)
                nn.Module.__init__(new)
                new.eps, new.weight = child.eps, child.weight
                setattr(parent, name, new)
                swapped += 1
    return swapped
