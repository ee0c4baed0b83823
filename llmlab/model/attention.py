"""One attention call with interchangeable backends — the single place kernels change.

    attend(q, k, v, mask=..., bias=..., causal=..., backend="explicit" | "sdpa")

q is (B, H, Tq, hd); k and v are (B, Hkv, Tk, hd) with H a multiple of Hkv (MHA, GQA, MQA).
`mask` is boolean (B|1, 1, Tq, Tk), True where a query may look; `bias` is an additive fp32 term
(ALiBi) broadcastable to (B, H, Tq, Tk); `causal=True` with no mask means plain causal attention
over Tq == Tk positions (the fast path every backend specialises).

- explicit: the textbook computation, kept readable for the explain experiments — scores in fp32,
  an additive −inf mask, softmax with max subtraction written out, GQA by grouping query heads
  (no K/V copies).
- sdpa: `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).

Paged attention (the engine's path): `attend(q, k_pages, v_pages, paged=meta)` with a
`PagedMetadata`. Then q is a flattened variable-length batch (1, H, N, hd) — prefill chunks and
decode tokens of many sequences, one after another — and k/v are one layer's page pools
(num_slots, Hkv, hd), num_slots = num_blocks * block_size, that `PagedKVCache.update` has just
written. The metadata cuts the N query rows into segments, each a dense sub-batch:

- a decode segment: S sequences with one query each, keys gathered from their block tables and
  padded to a common length (a key-validity mask hides the padding);
- a prefill segment: one sequence's chunk of q_len queries over its q_len + past keys, causal
  (with the chunk's offset) and, for Mistral, windowed.

Each segment gathers its keys by slot index (`pages.index_select(0, key_slots)`) and runs the
ordinary backend (explicit | sdpa) on it, so paged attention is exactly dense attention on the
gathered keys — which is what the engine's tests check. With `meta.decode_kernel` set (the engine's
default: "triton" on CUDA when Triton is installed, "cpu" on CPU when a C compiler built the kernel),
decode segments skip the gather: the kernel (kernels/paged_attention.py, kernels/cpu_paged_attention.py)
reads K/V from the pages in place through the block tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("explicit", "sdpa")
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa arrived in 2.5


def attend(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, bias: Tensor | None = None,
           causal: bool = False, backend: str = "sdpa", dropout_p: float = 0.0,
           scale: float | None = None, paged: PagedMetadata | None = None) -> Tensor:
    """Scaled dot-product attention; returns (B, H, Tq, hd) in q's dtype.

    With `paged`, k and v are page pools and q a flattened batch: see `paged_attend`.
    """
    if paged is not None:
        return paged_attend(q, k, v, paged, backend=backend, scale=scale)
    if causal and mask is None and q.shape[-2] != k.shape[-2]:
        raise ValueError("causal=True without a mask needs Tq == Tk; pass an explicit mask with a cache")
    if backend == "explicit":
        return _explicit(q, k, v, mask, bias, causal, dropout_p, scale)
    if backend == "sdpa":
        return _sdpa(q, k, v, mask, bias, causal, dropout_p, scale)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def causal_mask(tq: int, tk: int, device: torch.device) -> Tensor:
    """(Tq, Tk) bool: query i (the last Tq of Tk positions) sees keys j <= i + (Tk - Tq)."""
    i = torch.arange(tq, device=device)[:, None] + (tk - tq)
    j = torch.arange(tk, device=device)[None, :]
    return j <= i


def _explicit(q, k, v, mask, bias, causal, dropout_p, scale) -> Tensor:
    B, H, Tq, hd = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    g = H // Hkv
    scale = hd**-0.5 if scale is None else scale
    qg = q.reshape(B, Hkv, g, Tq, hd).float()  # (B, Hkv, g, Tq, hd): g query heads share one KV head
    scores = torch.einsum("bkgqd,bktd->bkgqt", qg, k.float()) * scale  # (B, Hkv, g, Tq, Tk)
    scores = scores.reshape(B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias
    if mask is None and causal:
        mask = causal_mask(Tq, Tk, q.device)
    if mask is not None:
        # Additive mask: 0 where allowed, -inf where not, so exp() gives exactly 0 weight.
        scores = scores + torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, float("-inf"))
    # Softmax with the max subtracted: exp never overflows; every row keeps one 0 exponent.
    scores = scores - scores.amax(dim=-1, keepdim=True)
    weights = scores.exp()
    weights = weights / weights.sum(dim=-1, keepdim=True)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = torch.einsum("bkgqt,bktd->bkgqd", weights.reshape(B, Hkv, g, Tq, Tk), v.float())
    return out.reshape(B, H, Tq, v.shape[-1]).to(q.dtype)


def _sdpa(q, k, v, mask, bias, causal, dropout_p, scale) -> Tensor:
    H, Hkv = q.shape[1], k.shape[1]
    if Hkv != H:
        # enable_gqa needs torch >= 2.5; repeating K/V is correct everywhere.
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    attn_mask = mask
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if mask is None and causal:
            mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
        if mask is not None:
            attn_mask = attn_mask.masked_fill(~mask, float("-inf"))
        causal = False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal and attn_mask is None, scale=scale
    )


# ---- paged attention (engine) ------------------------------------------------------------------


@dataclass(slots=True)
class PagedSegment:
    """Query rows [q_start, q_start + num_seqs * q_len) of the flattened batch, as (num_seqs, q_len)."""

    q_start: int
    num_seqs: int
    q_len: int
    key_slots: Tensor | None  # (num_seqs, Lk) long: slot of every key (padded rows: any valid slot); None when
    #                           the paged kernel reads block_tables instead
    mask: Tensor | None  # (num_seqs, 1, q_len, Lk) bool, True where a query may look; None = causal, Lk == q_len
    # Decode segments (q_len == 1) also carry what the paged kernel reads instead of key_slots and mask:
    block_tables: Tensor | None = None  # (num_seqs, max_blocks) int
    context_lens: Tensor | None = None  # (num_seqs,) int: keys visible to each row
    block_size: int = 0
    window: int | None = None  # sliding window (keys within `window` of the newest), None = all


@dataclass(slots=True)
class PagedMetadata:
    """Everything one forward over a flattened batch needs to read and write paged KV."""

    slot_mapping: Tensor  # (N,) long: where each new token's K/V is written
    segments: list[PagedSegment]
    # decode segments read the pages in place: "triton" (kernels/paged_attention.py), "cpu"
    # (kernels/cpu_paged_attention.py), "" = gather the keys and run SDPA
    decode_kernel: str = ""
    # RoPE and the KV write in one C call per layer (kernels/cpu_rope_cache.py, PagedKVCache.rope_update): the
    # engine sets it for CPU inference where the kernel is built for the model's dtype
    rope_kernel: bool = False


def paged_attend(q: Tensor, k_pages: Tensor, v_pages: Tensor, meta: PagedMetadata, *, backend: str = "sdpa",
                 scale: float | None = None) -> Tensor:
    """q (1, H, N, hd), pages (num_slots, Hkv, hd) -> (1, H, N, hd); one dense attend per segment."""
    H, hd = q.shape[1], q.shape[-1]
    outs = []
    for s in meta.segments:
        rows = q[0, :, s.q_start:s.q_start + s.num_seqs * s.q_len]  # (H, S*q_len, hd)
        if meta.decode_kernel and s.q_len == 1 and s.block_tables is not None:
            if meta.decode_kernel == "cpu":
                from llmlab.kernels.cpu_paged_attention import paged_decode_cpu as paged_decode
            else:
                from llmlab.kernels.paged_attention import paged_decode

            y = paged_decode(rows.transpose(0, 1), k_pages, v_pages, s.block_tables, s.context_lens,
                             block_size=s.block_size, scale=scale, window=s.window)  # (S, H, hd)
            outs.append(y.transpose(0, 1))
            continue
        qs = rows.reshape(H, s.num_seqs, s.q_len, hd).transpose(0, 1)  # (S, H, q_len, hd)
        # index_select on the flat slot list: ~6x faster than k_pages[key_slots] on CPU (a row memcpy per slot).
        flat, shape = s.key_slots.reshape(-1), (*s.key_slots.shape, *k_pages.shape[1:])
        k = k_pages.index_select(0, flat).view(shape)  # (S, Lk, Hkv, hd)
        v = v_pages.index_select(0, flat).view(shape)
        if s.q_len == 1 and q.device.type == "cpu" and torch.compiler.is_compiling():
            y = _decode_products(qs, k, v, s.mask, scale)
            outs.append(y.transpose(0, 1).reshape(H, s.num_seqs, hd))
            continue
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (S, Hkv, Lk, hd)
        if s.q_len == 1 and q.device.type == "cpu" and q.dtype != torch.float32:
            # CPU SDPA in bf16/fp16 is slow at one query per row (2.4 ms for 16 rows of 256 keys on the 2-core
            # EPYC): upcasting the gathered K/V and running fp32 SDPA takes 0.5 ms (the explicit path 1.1 ms),
            # and fp32 scores are the more precise ones.
            if _SDPA_GQA:
                y = F.scaled_dot_product_attention(qs.float(), k.float(), v.float(), attn_mask=s.mask, scale=scale,
                                                   enable_gqa=True).to(q.dtype)
            else:
                y = _explicit(qs, k, v, s.mask, None, False, 0.0, scale)
        elif backend == "sdpa" and _SDPA_GQA and (q.device.type == "cpu" or s.q_len == 1):
            # SDPA broadcasts K/V over each query group (enable_gqa) instead of copying them H/Hkv times:
            # half the decode attention time on CPU. CUDA prefill keeps the repeat for the fused kernels.
            y = F.scaled_dot_product_attention(qs, k, v, attn_mask=s.mask, is_causal=s.mask is None, scale=scale,
                                               enable_gqa=True)
        else:
            y = attend(qs, k, v, mask=s.mask, causal=s.mask is None, backend=backend, scale=scale)
        outs.append(y.transpose(0, 1).reshape(H, s.num_seqs * s.q_len, hd))
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))[None]  # (1, H, N, hd)


def _decode_products(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    """One query per row as broadcast products and sums, in fp32: q (S, H, 1, hd), gathered k/v (S, Lk, Hkv, hd),
    mask (S, 1, 1, Lk) -> (S, H, 1, hd).

    For the compiled CPU decode step: Inductor fuses the gather, the products and the softmax into loops that
    read the pages directly. Measured on 2 EPYC cores (SmolLM2 heads, 30 layers, compiled): 2 rows x 256 keys
    1.7 ms vs 2.9 ms for gather + SDPA, whose CPU kernel is built for long queries; 16 rows x 256 keys 14.5 vs
    46 ms. Keys stay in their page layout (Lk, Hkv, hd), the reduction over Lk outermost: laid out as
    (S, Hkv, g, Lk) instead, the same sums ran 2.5-3.5x slower. Eager, this would materialise (S, Lk, H, hd)
    products, so eager decode keeps SDPA.
    """
    S, H, _, hd = q.shape
    Hkv = k.shape[2]
    scale = hd**-0.5 if scale is None else scale
    qg = q.reshape(S, 1, Hkv, H // Hkv, hd).float()  # (S, 1, Hkv, g, hd): g query heads share one KV head
    scores = (qg * k[:, :, :, None, :].float()).sum(-1) * scale  # (S, Lk, Hkv, g)
    if mask is not None:
        scores = scores.masked_fill(~mask.reshape(S, -1)[:, :, None, None], float("-inf"))
    weights = torch.softmax(scores, dim=1)
    out = (weights[..., None] * v[:, :, :, None, :].float()).sum(1)  # (S, Hkv, g, hd)
    return out.reshape(S, H, 1, hd).to(q.dtype)
