"""Linear layers for CPU inference from a weight packed once into 16-column panels (cpu_panel_linear.c).

    packed = pack_panels(weight)            # (N, K) -> panels; one copy, made once per weight
    y = panel_linear(x, packed, N, bias)    # x (..., K) -> (..., N), any number of rows

Why. A decode step multiplies a few to a few dozen rows by every weight: too few rows for a GEMM library's
blocking to pay, too many for a GEMV. The kernel keeps a 48-column x 8-row tile of fp32 sums in AVX-512
registers, streams each weight panel from memory once (prefetching the next while the row blocks pass over this
one) and, in bf16, multiplies pairs with VDPBF16PS, or, on AVX-512 CPUs without it, widens each pair to fp32
and uses two FMAs: half the bytes of fp32 at the same FMA count. `benchmarks/cpu_linear.py` times SmolLM2-135M's
210 linears per step (benchmarks/results/cpu_linear.json): on a 2-core Zen 4 EPYC in bf16, 16 rows take 11.0 ms
against oneDNN's 19.1, 1 row 7.9 ms (26.8 GB/s against a 28.1 GB/s read limit), 512 rows 241 against 259
(452 GFLOP/s; a large torch matmul runs at 425 there); fp32 16 rows 20.8 against 29.9. On a 2-core Intel Xeon
(Ice Lake, no AVX512-BF16; cpu_linear_xeon.json), bf16 widened: 1 row 12.0 ms against F.linear's 15.2, 16 rows
19.8 against oneDNN's 82.5, 512 rows 363 against 1,658 (299 GFLOP/s; torch's bf16 matmul runs at 65 there).
On a 2-core Zen 3 EPYC (AVX2 only, no oneDNN bf16; cpu_linear_zen3.json): bf16 16 rows 25.6 ms against F.linear's
185.7, 512 rows 756 against 6,033; fp32 16 rows 36.3 against oneDNN's 62.4.

Where it runs: x86 with AVX-512 (fp32; bf16 with an even K, AVX512-BW) or AVX2 with FMA (a 16-column x 6-row
tile in its 16 registers; bf16 widened), built by cbuild with -march=native; `panel_supported` says whether this
machine has it, `bf16_widened` whether bf16 runs without VDPBF16PS.
`kernels/cpu_linear.PackedLinear` routes row counts to it where `tune_packing` measured it fastest.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from llmlab.kernels import cbuild

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


@functools.cache
def _functions() -> dict[torch.dtype, ctypes._CFuncPtr]:
    """Entry points by dtype where this CPU and compiler have the instructions; empty without a compiler."""
    lib = cbuild.load("cpu_panel_linear.c").lib
    if lib is None:
        return {}
    fns = {}
    for dtype, code in _DTYPE_CODES.items():
        if lib.llmlab_panel_has(code):
            fn = getattr(lib, "panel_linear_" + ("f32" if dtype == torch.float32 else "bf16"))
            fn.argtypes, fn.restype = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int], ctypes.c_int
            fns[dtype] = fn
    return fns


@functools.cache
def bf16_widened() -> bool:
    """Whether the bf16 kernel here widens to fp32 and FMAs (AVX2, AVX-512 without AVX512-BF16), not VDPBF16PS."""
    lib = cbuild.load("cpu_panel_linear.c").lib
    return lib is not None and lib.llmlab_panel_bf16_mode() == 2


def _pair(dtype: torch.dtype) -> int:
    """Adjacent k values per packed element group: bf16 multiplies pairs."""
    return 2 if dtype == torch.bfloat16 else 1


def panel_supported(dtype: torch.dtype, in_features: int | None = None) -> bool:
    """Whether the kernel runs here for `dtype` (and, given, an input width: bf16 needs it even)."""
    if dtype not in _functions():
        return False
    return in_features is None or in_features % _pair(dtype) == 0


def pack_panels(weight: Tensor) -> Tensor:
    """An nn.Linear weight (N, K) as the kernel reads it: (ceil(N/16), K/p, 16, p), p = 2 for bf16 (pairs of k)
    else 1; columns past N are zero."""
    N, K = weight.shape
    p = _pair(weight.dtype)
    if K % p:
        raise ValueError(f"bf16 panels need an even input width, got {K}; use F.linear for this layer.")
    P = -(-N // 16)
    w = weight.detach()
    if P * 16 != N:
        w = torch.cat([w, w.new_zeros(P * 16 - N, K)])
    return w.reshape(P, 16, K // p, p).transpose(1, 2).contiguous()


def panel_linear(x: Tensor, packed: Tensor, out_features: int, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) from `pack_panels(weight)`: CPU tensors of one dtype `panel_supported` accepts."""
    K = packed.shape[1] * packed.shape[3]
    if x.shape[-1] != K or x.dtype != packed.dtype or out_features > packed.shape[0] * 16:
        raise ValueError(f"panel_linear got x {tuple(x.shape)} {x.dtype} for a packed ({out_features}, {K}) "
                         f"{packed.dtype} weight; pass rows of width {K} in the weight's dtype.")
    return panel_linear_checked(x, packed, out_features, bias)


def panel_linear_checked(x: Tensor, packed: Tensor, out_features: int, bias: Tensor | None) -> Tensor:
    """`panel_linear` once the caller has checked x's width and dtype against the packed weight (PackedLinear
    does, per call): the decode step calls it ~120 times, and each check or reshape costs about a microsecond."""
    K = x.shape[-1]
    y = torch.empty(x.shape[:-1] + (out_features,), dtype=x.dtype)
    M = x.numel() // K
    if M:
        x = x if x.is_contiguous() else x.contiguous()
        b = None if bias is None else bias if bias.is_contiguous() else bias.contiguous()
        status = _functions()[x.dtype](x.data_ptr(), packed.data_ptr(), None if b is None else b.data_ptr(),
                                       y.data_ptr(), M, out_features, K, torch.get_num_threads())
        if status == 2:
            raise MemoryError(f"the panel linear kernel could not allocate {M} x {K} fp32 values.")
        if status:
            raise RuntimeError(f"the panel linear kernel refused {x.dtype} with {K} inputs on this CPU.")
    return y


# The op torch.compile traces: registered with torch.library's low-level API, whose dispatch costs ~2 us over a
# direct call where `torch.library.custom_op`'s costs ~18 us (and ~180 us under inference_mode; torch 2.13).
# Dropping the Library handle would unregister the op, so the module keeps it.
_LIB = torch.library.Library("llmlab", "FRAGMENT")
_LIB.define("panel_linear(Tensor x, Tensor packed, Tensor? bias, int out_features) -> Tensor")
_LIB.impl("panel_linear", lambda x, packed, bias, n: panel_linear(x, packed, n, bias), "CPU")


@torch.library.register_fake("llmlab::panel_linear", lib=_LIB)
def _(x, packed, bias, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


def panel_linear_op(x: Tensor, packed: Tensor, out_features: int, bias: Tensor | None = None) -> Tensor:
    """`panel_linear` as the op `llmlab::panel_linear`: opaque to torch.compile, which fuses around it."""
    return torch.ops.llmlab.panel_linear(x, packed, bias, out_features)
