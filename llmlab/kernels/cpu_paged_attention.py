"""Paged decode attention on the CPU: a small C kernel that reads the KV pages in place.

    available() -> bool                      a C compiler built (or had built) the kernel for this machine
    build_error() -> str | None              why it could not be built
    paged_decode_cpu(q, k_pages, v_pages, block_tables, context_lens, block_size=16, scale=None, window=None)
        -> (B, H, hd) in q's dtype           same contract as kernels/paged_attention.paged_decode

Why it exists: the gather path (model/attention.py) copies each row's whole context out of the pools,
upcasts it and hands it to SDPA, whose CPU kernel is built for long queries, not one query per row. For
SmolLM2-135M decoding 16 sequences of ~200 tokens on 2 cores that is ~15 ms of a ~46 ms step (30 layers);
the kernel reads each K/V row once, in fp32 registers, for all query heads that share it (GQA).

The source (cpu_paged_attention.c, ~150 lines) is compiled on first use with the system C compiler
(kernels/cbuild.py: -O3 -march=native, OpenMP on torch's own thread pool, cached under
`$LLMLAB_CACHE/kernels/`; about a second). Inside `torch.compile` the kernel is the
custom op `llmlab::paged_decode_cpu`, opaque to Inductor.

`paged_decode_reference` (kernels/paged_attention.py) is the same maths in plain PyTorch; the tests
compare the two for fp32/bf16/fp16, GQA/MQA, sliding windows, ragged contexts and shuffled pages.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from llmlab.kernels import cbuild

_SOURCE = "cpu_paged_attention.c"


@functools.cache
def _functions() -> dict[torch.dtype, ctypes._CFuncPtr]:
    """The kernel's entry points by dtype; empty where it cannot be built (no compiler)."""
    args = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 7 + [ctypes.c_float, ctypes.c_int64, ctypes.c_int]
    return cbuild.dtype_functions(_SOURCE, "paged_decode", args, "llmlab_has_f16")


def available() -> bool:
    """Whether the kernel is built (building it on the first call)."""
    return bool(_functions())


def run_tiles() -> bool:
    """Whether this build computes prefill chunks' rows in tiles (cpu_paged_attention.c, RUN_MIN; AVX-512)."""
    lib = cbuild.load(_SOURCE).lib
    return lib is not None and bool(lib.llmlab_paged_run_tiles())


def build_error() -> str | None:
    return cbuild.load(_SOURCE).error


def supports(dtype: torch.dtype) -> bool:
    return dtype in _functions()


def _int64(t: Tensor) -> Tensor:
    return t if t.dtype == torch.int64 and t.is_contiguous() else t.to(torch.int64).contiguous()


def _run(q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, context_lens: Tensor, block_size: int,
         scale: float, window: int) -> Tensor:
    # Called once per layer and step: each avoidable tensor call here costs ~1 us of a decode step's time.
    B, H, hd = q.shape
    q = q if q.is_contiguous() else q.contiguous()
    tables, ctx = _int64(block_tables), _int64(context_lens)
    out = torch.empty(B, H, hd, dtype=q.dtype)
    pool = k_pages.shape
    status = _functions()[q.dtype](q.data_ptr(), k_pages.data_ptr(), v_pages.data_ptr(), tables.data_ptr(),
                                   ctx.data_ptr(), out.data_ptr(), B, H, pool[1], hd, tables.shape[1], block_size,
                                   window, scale, pool[0], torch.get_num_threads())
    if status == 1:
        raise ValueError("a context length is longer than its block table covers (context_lens > "
                         "block_tables.shape[1] * block_size); pass a block table that covers every position.")
    if status == 3:  # checked in C, before any page is read: no tensor op per layer and step
        raise ValueError(f"block_tables name a block beyond the {pool[0] // block_size} blocks of the pages.")
    if status != 0:
        raise MemoryError("the CPU paged-attention kernel could not allocate its scratch space.")
    return out


@torch.library.custom_op("llmlab::paged_decode_cpu", mutates_args=())
def _paged_decode_op(q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, context_lens: Tensor,
                     block_size: int, scale: float, window: int) -> Tensor:
    return _run(q, k_pages, v_pages, block_tables, context_lens, block_size, scale, window)


@_paged_decode_op.register_fake
def _(q, k_pages, v_pages, block_tables, context_lens, block_size, scale, window):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def paged_decode_cpu(q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, context_lens: Tensor,
                     block_size: int = 16, scale: float | None = None, window: int | None = None) -> Tensor:
    """q (B, H, hd); k_pages / v_pages (num_slots, Hkv, hd) contiguous CPU tensors of q's dtype;
    block_tables (B, nb) and context_lens (B,) integer -> (B, H, hd)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    window = 0 if window is None else int(window)
    if torch.compiler.is_compiling():  # the checks below ran when the engine chose this kernel
        return _paged_decode_op(q, k_pages, v_pages, block_tables, context_lens, block_size, scale, window)
    if not supports(q.dtype):
        raise RuntimeError(build_error() or f"the CPU paged-attention kernel does not take {q.dtype}.")
    B, H, hd = q.shape
    pool = k_pages.shape
    if not (len(pool) == 3 and pool[2] == hd and H % pool[1] == 0 and v_pages.shape == pool
            and k_pages.dtype == v_pages.dtype == q.dtype and k_pages.is_contiguous() and v_pages.is_contiguous()):
        raise ValueError(f"k_pages/v_pages must be contiguous (num_slots, Hkv, {hd}) {q.dtype} tensors with Hkv "
                         f"dividing {H}; got {tuple(k_pages.shape)} {k_pages.dtype} and {tuple(v_pages.shape)}.")
    return _run(q, k_pages, v_pages, block_tables, context_lens, block_size, scale, window)
