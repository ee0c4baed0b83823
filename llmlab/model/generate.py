"""Minimal autoregressive generation over the contiguous KV cache: greedy and temperature sampling.

One prefill over the (left-padded) prompt batch, then one token per step for every row; a row that
emits an EOS id keeps emitting `pad_token_id` (default: the first EOS id) until all rows are done.
This is the reference path the parity tests and the engine's greedy path are checked against; the
serving engine (engine/) adds paging, continuous batching and per-request sampling parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmlab.errors import LlmlabError
from llmlab.model.cache import KVCache


def sample_next(logits: Tensor, *, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V). temperature == 0 is greedy (argmax)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int = 32,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Prompt ids (B, T) -> prompt + continuation (B, T + n), n <= max_new_tokens."""
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise LlmlabError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}.")
    if max_new_tokens < 0 or temperature < 0:
        raise LlmlabError("max_new_tokens and temperature must be non-negative.")
    limit = model.cfg.max_position_embeddings
    if input_ids.shape[1] + max_new_tokens > limit:
        raise LlmlabError(f"a prompt of {input_ids.shape[1]} tokens plus {max_new_tokens} new ones is beyond the "
                          f"model's {limit} positions; shorten the prompt or ask for fewer new tokens.")
    if top_p is not None and not 0 < top_p <= 1:
        raise LlmlabError(f"top_p must be in (0, 1], got {top_p}; 1 (or None) keeps every token.")
    if top_k is not None and top_k < 1:
        raise LlmlabError(f"top_k must be at least 1, got {top_k}; None keeps every token.")
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    B, T = input_ids.shape
    dtype = next(model.parameters()).dtype
    cache = KVCache.allocate(model.cfg, B, T + max_new_tokens, dtype=dtype, device=input_ids.device)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    out, step_ids = input_ids, input_ids
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    eos_t = torch.tensor(eos, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = model(step_ids, mask, cache=cache)[:, -1]  # (B, V)
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out = torch.cat([out, nxt[:, None]], dim=1)
        if eos:
            done = done | torch.isin(nxt, eos_t)
            if bool(done.all()):
                break
        step_ids = nxt[:, None]
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
    return out
