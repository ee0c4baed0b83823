"""RoPE and the paged KV-cache write for CPU inference in one C call per layer (cpu_rope_cache.c).

    supports(dtype) -> bool                 the kernel is built here for dtype (fp32, bf16; fp16 with _Float16)
    rope_cache_cpu(q, k, v, cos, sin, k_pages, v_pages, slot_mapping) -> q roped, (N, H, hd) contiguous
                                            k roped and v written into the pools at slot_mapping

Why: a decode step of a small model on a CPU is mostly small ops. Per layer, eager PyTorch rotates q and k in six
ops each (chunk, neg, cat, two multiplies, an add) and writes K and V with two `index_copy_`: on a 2-core Zen 3
EPYC that was ~90 us a layer of SmolLM2-135M (30 layers, ~2.7 ms of a 30 ms batch-1 step); the kernel is one
ctypes call. Each product and sum is rounded to the element type as the eager ops round them, so the outputs are
bitwise those of `model.layers.apply_rope` followed by `PagedKVCache.update` (tests/test_kernels_cpu_rope.py).

The engine's model runner turns it on per forward (`PagedMetadata.rope_kernel`) for CPU inference where the kernel
is built for the model's dtype; `PagedKVCache.rope_update` calls it. A compiled decode step traces the plain ops,
which Inductor fuses itself.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from llmlab.kernels import cbuild


@functools.cache
def _functions() -> dict[torch.dtype, ctypes._CFuncPtr]:
    """The kernel's entry points by dtype; empty where it cannot be built (no compiler)."""
    args = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 9 + [ctypes.c_int]
    return cbuild.dtype_functions("cpu_rope_cache.c", "rope_cache", args, "llmlab_rope_has_f16")


def supports(dtype: torch.dtype) -> bool:
    """Whether the kernel is built here for `dtype` (building it on the first call)."""
    return dtype in _functions()


def _token_stride(t: Tensor, name: str, n: int, hd: int) -> int:
    """The token stride of a (..., n, heads, hd) view whose heads are contiguous rows of hd and whose leading
    dimensions have size 1 (checked)."""
    shape, stride = t.shape, t.stride()
    if (len(shape) < 3 or shape[-3] != n or shape[-1] != hd or stride[-1] != 1 or stride[-2] != hd
            or t.numel() != n * shape[-2] * hd):
        raise ValueError(f"rope_cache_cpu needs {name} as (tokens, heads, {hd}) with contiguous heads; got shape "
                         f"{tuple(shape)} strides {stride}: pass a view of the projection's output.")
    return stride[-3]


def rope_cache_cpu(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, k_pages: Tensor, v_pages: Tensor,
                   slot_mapping: Tensor) -> Tensor:
    """q (N, H, hd), k and v (N, Hkv, hd): per-token views with contiguous heads, such as the fused projection's
    output gives (leading dimensions of size 1 allowed); cos, sin (N, hd) contiguous (likewise); pools
    (num_slots, Hkv, hd) contiguous; slot_mapping (N,) int64; all CPU tensors of one dtype `supports` accepts.
    Returns `apply_rope(q)` as a new contiguous (N, H, hd) tensor and writes `apply_rope(k)` and v into the pools
    at `slot_mapping`. Checks cost what the kernel does at decode sizes (~5 us): the engine calls it per layer."""
    *_, n, H, hd = q.shape
    pool = k_pages.shape
    Hkv, dtype = pool[1], q.dtype
    strides = (_token_stride(q, "q", n, hd), _token_stride(k, "k", n, hd), _token_stride(v, "v", n, hd))
    if k.shape[-2] != Hkv or v.shape[-2] != Hkv:
        raise ValueError(f"rope_cache_cpu got k {tuple(k.shape)} and v {tuple(v.shape)} for pools of {Hkv} heads.")
    if not (len(pool) == 3 and pool[2] == hd and v_pages.shape == pool and k_pages.is_contiguous()
            and v_pages.is_contiguous() and cos.numel() == sin.numel() == n * hd and cos.shape[-1] == hd
            and cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError(f"rope_cache_cpu needs contiguous pools (num_slots, {Hkv}, {hd}) and cos/sin ({n}, {hd}); "
                         f"got pools {tuple(pool)} / {tuple(v_pages.shape)}, cos {tuple(cos.shape)}.")
    fn = _functions().get(dtype)
    if fn is None or not (k.dtype == v.dtype == cos.dtype == sin.dtype == k_pages.dtype == v_pages.dtype == dtype):
        raise ValueError(f"rope_cache_cpu takes one dtype the kernel is built for; got q {dtype}, k {k.dtype}, "
                         f"cos {cos.dtype}, pools {k_pages.dtype}.")
    slots = slot_mapping if slot_mapping.dtype == torch.int64 and slot_mapping.is_contiguous() else (
        slot_mapping.to(torch.int64).contiguous())
    if slots.numel() != n:
        raise ValueError(f"slot_mapping must hold one slot per token ({n}); got shape {tuple(slots.shape)}.")
    out = torch.empty(n, H, hd, dtype=dtype)
    status = fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), cos.data_ptr(), sin.data_ptr(), out.data_ptr(),
                k_pages.data_ptr(), v_pages.data_ptr(), slots.data_ptr(), n, H, Hkv, hd, *strides, hd, pool[0],
                torch.get_num_threads())
    if status == 1:
        raise ValueError(f"slot_mapping names a slot outside the pools' {pool[0]} slots; nothing written.")
    if status:
        raise ValueError(f"rope_cache_cpu needs an even head size, got {hd}.")
    return out
