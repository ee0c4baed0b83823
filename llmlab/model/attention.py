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

Later backends (Triton flash attention, paged attention for the engine) register here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("explicit", "sdpa")


def attend(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, bias: Tensor | None = None,
           causal: bool = False, backend: str = "sdpa", dropout_p: float = 0.0,
           scale: float | None = None) -> Tensor:
    """Scaled dot-product attention; returns (B, H, Tq, hd) in q's dtype."""
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
    return out.reshape(B, H, Tq, hd).to(q.dtype)


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
