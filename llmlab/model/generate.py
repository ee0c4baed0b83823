"""Minimal autoregressive generation over the contiguous KV cache: greedy and temperature sampling.

One prefill over the (left-padded) prompt batch, then one token per step for every row; a row that
emits an EOS id (default: the model config's, as transformers and the engine do) keeps emitting
`pad_token_id` (default: the config's, else the first EOS id) until all rows are done.
This is the reference path the parity tests and the engine's greedy path are checked against; the
serving engine (engine/) adds paging, continuous batching and per-request sampling parameters.
"""

from __future__ import annotations


import torch
from torch import Tensor

from llmlab.errors import LlmlabError, is_int, is_number
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


# transformers' generate keywords llmlab spells otherwise (Transformer.generate names the right one)
HF_NAMES = {"do_sample": "temperature > 0 to sample (0, the default, is greedy)",
            "max_length": "max_new_tokens (the new tokens, not prompt + new)",
            "num_return_sequences": "the engine's SamplingParams(n=...) (llmlab.LLM), or repeat the prompt rows",
            "num_beams": "greedy or sampling: llmlab has no beam search", "generation_config": "keyword arguments",
            "streamer": "the engine (llmlab.LLM / LLMEngine.step) to stream"}


@torch.no_grad()
def generate(model, input_ids: Tensor | list[int] | list[list[int]], attention_mask: Tensor | None = None, *,
             max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None, ignore_eos: bool = False,
             generator: torch.Generator | None = None) -> Tensor:
    """Prompt ids (B, T) -> prompt + continuation (B, T + n), n <= max_new_tokens.

    input_ids may be a tensor or a list of ids (one prompt) / list of equal-length lists. As in
    transformers, eos_token_id=None (and pad_token_id=None) use the model config's; ignore_eos=True
    generates all max_new_tokens, as the engine's SamplingParams(ignore_eos=True) does. The model runs
    in eval mode (no dropout) and is put back in the mode it was in."""
    cfg = model.cfg
    device = next(model.parameters()).device
    input_ids = _as_ids(input_ids, "input_ids", device)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise LlmlabError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}.")
    _check_vocab(input_ids, cfg.vocab_size)
    if attention_mask is not None:
        if isinstance(attention_mask, list | tuple):
            attention_mask = _as_ids(attention_mask, "attention_mask", device)
        if not isinstance(attention_mask, Tensor) or attention_mask.device != device:
            where = attention_mask.device if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise LlmlabError(f"attention_mask must be a tensor on the model's {device}, got {where}.")
        if attention_mask.shape != input_ids.shape:
            raise LlmlabError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                              f"{tuple(input_ids.shape)}; give one 0/1 entry per prompt token.")
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise LlmlabError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    if not is_number(temperature) or not temperature >= 0:
        raise LlmlabError(f"temperature must be a non-negative number, got {temperature!r}; 0 is greedy.")
    limit = cfg.max_position_embeddings
    if input_ids.shape[1] + max_new_tokens > limit:
        raise LlmlabError(f"a prompt of {input_ids.shape[1]} tokens plus {max_new_tokens} new ones is beyond the "
                          f"model's {limit} positions; shorten the prompt or ask for fewer new tokens.")
    if top_p is not None and (not is_number(top_p) or not 0 < top_p <= 1):
        raise LlmlabError(f"top_p must be in (0, 1], got {top_p}; 1 (or None) keeps every token.")
    if top_k is not None and not is_int(top_k):
        raise LlmlabError(f"top_k must be an integer, got {top_k!r}; None keeps every token.")
    if top_k is not None and top_k < 1:
        raise LlmlabError(f"top_k must be at least 1, got {top_k}; None keeps every token.")
    if eos_token_id is None:
        eos_token_id = cfg.eos_token_id
    eos = [] if ignore_eos else [eos_token_id] if is_int(eos_token_id) else list(eos_token_id or [])
    if not all(is_int(e) for e in eos):
        raise LlmlabError(f"eos_token_id must be an id or a list of ids, got {eos_token_id!r}.")
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    modes = {m: m.training for m in model.modules()}  # restored one by one: a module may be frozen in eval
    model.eval()
    try:
        return _decode(model, input_ids, attention_mask, max_new_tokens, eos, pad,
                       dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator))
    finally:
        for m, training in modes.items():
            m.training = training


def _decode(model, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int, eos: list[int], pad: int,
            sampling: dict) -> Tensor:
    B, T = input_ids.shape
    dtype = next(model.parameters()).dtype
    cache = KVCache.allocate(model.cfg, B, T + max_new_tokens, dtype=dtype, device=input_ids.device)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    out, step_ids = input_ids, input_ids
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    eos_t = torch.tensor(eos, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = model(step_ids, mask, cache=cache)[:, -1]  # (B, V)
        nxt = sample_next(logits, **sampling)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out = torch.cat([out, nxt[:, None]], dim=1)
        if eos:
            done = done | torch.isin(nxt, eos_t)
            if bool(done.all()):
                break
        step_ids = nxt[:, None]
        mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
    return out


def _as_ids(x, name: str, device: torch.device) -> Tensor:
    """An integer tensor on the model's device from a tensor, a list of ints or a list of equal-length lists
    (or a numpy array of either)."""
    if not isinstance(x, Tensor) and hasattr(x, "tolist"):  # numpy
        x = x.tolist()
    if isinstance(x, list | tuple):
        rows = [x] if all(is_int(i) for i in x) else x
        if not all(isinstance(r, list | tuple) and all(is_int(i) for i in r) for r in rows):
            raise LlmlabError(f"{name} must be a tensor, a list of ints or a list of lists of ints.")
        if len({len(r) for r in rows}) > 1:
            raise LlmlabError(f"the rows of {name} have different lengths ({sorted({len(r) for r in rows})}); "
                              "left-pad them to one length and pass an attention_mask.")
        return torch.tensor(rows, dtype=torch.long, device=device)
    if not isinstance(x, Tensor):
        raise LlmlabError(f"{name} must be a tensor or a list of token ids, got {type(x).__name__}.")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise LlmlabError(f"{name} must hold integer token ids, got a {x.dtype} tensor; convert it with .long().")
    if x.device != device:
        raise LlmlabError(f"{name} is on {x.device} but the model is on {device}; move it with .to({str(device)!r}).")
    return x


def _check_vocab(ids: Tensor, vocab: int) -> None:
    bad = (ids < 0) | (ids >= vocab)
    if bool(bad.any()):
        raise LlmlabError(f"input_ids holds token {int(ids[bad][0])}, which is not an id in this model's vocabulary "
                          f"(0..{vocab - 1}).")
