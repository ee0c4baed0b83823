"""FLOPs: per token (forward, backward), prefill and decode, a training run, and MFU / MBU.

Conventions (a multiply-add is 2 FLOPs):
  forward per token = 2·M + 4·L·c·(heads·head_dim)   (QKᵀ and A·V, 2·c·d_attn each: PaLM App. B's
    6N + 12·L·H·Q·T is 3× this; Kaplan et al. 2020, Table 1 count QKᵀ only, 2·L·c·d_attn)
    M = weights multiplied by every token: the layer matrices and the LM head (tied or not);
    embedding lookups, norms, softmax and activations are not counted (< 1%).
    c = keys a query attends to. The query at position p (1-based) sees min(p, W) keys under a
    sliding window of W (Mistral; llmlab's mask keeps keys j with p - j < W), p without one:
    - decode at context s: the new query sits at position s, so c = min(s, W).
    - prefill of s tokens (causal, exact): K(s) = Σ_{p=1..s} min(p, W) = w(w+1)/2 + (s - w)·w keys
      in all, w = min(s, W); s(s+1)/2 without a window.
    - training at seq_len s: every query is counted like the last one, c = min(s, W), i.e. no causal
      skipping, as Kaplan and Megatron's MFU do (c = s without a window, what torch's FLOP counter
      sees for a dense kernel). `causal=True` counts the exact causal sum, K(s)/s keys per token.
  backward = 2 · forward; training = 3 · forward per token.
  `training_flops(cfg, D)` = 6·N·D with N = all parameters — the convention GPT-3's 3.14e23 uses;
  pass `seq_len` for 3·D·forward(s) with the attention term.
MFU = achieved model FLOP/s / peak (Chowdhery et al. 2022, PaLM App. B); MBU = achieved bytes/s /
peak bandwidth for decode, where each step reads all weights and the batch's KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.errors import ConfigError
from llmlab.estimate.explain import Step, num
from llmlab.estimate.hardware import GPU, check_n_gpus, get_gpu
from llmlab.estimate.memory import kv_cache_bytes, weight_bytes
from llmlab.estimate.params import count_params, matmul_params
from llmlab.estimate.presets import ConfigLike, resolve


@dataclass(frozen=True, slots=True)
class FlopsPerToken:
    matmul: float  # 2·M
    attention: float  # 4·L·c·d_attn
    context: int

    @property
    def forward(self) -> float:
        return self.matmul + self.attention

    @property
    def backward(self) -> float:
        return 2 * self.forward

    @property
    def train(self) -> float:
        return 3 * self.forward


def window_keys(cfg: ConfigLike, context: int) -> int:
    """Keys the query at position `context` attends to: min(context, sliding_window)."""
    w = resolve(cfg).sliding_window
    return context if w is None else min(context, w)


def causal_keys(cfg: ConfigLike, seq_len: int) -> int:
    """K(s) = Σ_{p=1..s} min(p, W): keys all queries of a causal sequence attend to (s(s+1)/2 without a window)."""
    w = window_keys(cfg, seq_len)
    return w * (w + 1) // 2 + (seq_len - w) * w


def flops_per_token(cfg: ConfigLike, context: int) -> FlopsPerToken:
    """One token's FLOPs when it attends to min(context, window) keys (decode; training's convention)."""
    cfg = resolve(cfg)
    keys = window_keys(cfg, context)
    return FlopsPerToken(2 * matmul_params(cfg), 4 * cfg.num_layers * keys * cfg.num_heads * cfg.head_dim, context)


def training_flops(cfg: ConfigLike, tokens: float, *, seq_len: int | None = None, causal: bool = False) -> float:
    """6·N·D; with `seq_len`, 3·D·(2·M + 4·L·c·d_attn) with c = min(s, W), or with `causal` the exact K(s)/s."""
    if seq_len is None:
        return 6 * count_params(cfg) * tokens
    if causal:
        return 3 * tokens * prefill_flops(cfg, 1, seq_len) / seq_len
    return tokens * flops_per_token(cfg, seq_len).train


def prefill_flops(cfg: ConfigLike, batch: int, prompt_len: int) -> float:
    """Forward FLOPs for `batch` prompts of `prompt_len` tokens: the token at position p attends to min(p, W) keys."""
    cfg = resolve(cfg)
    attn = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * causal_keys(cfg, prompt_len)
    return batch * (2 * matmul_params(cfg) * prompt_len + attn)


def decode_flops(cfg: ConfigLike, batch: int, context: int) -> float:
    """Forward FLOPs for one decode step of `batch` sequences at `context` (min(context, W) keys each)."""
    return batch * flops_per_token(cfg, context).forward


def mfu(cfg: ConfigLike, tokens_per_s: float, gpu: str | GPU, *, n_gpus: int = 1, dtype: str = "bf16",
        seq_len: int | None = None) -> float:
    """Model FLOPs utilisation of a training run that processes `tokens_per_s` tokens/s in total."""
    check_n_gpus(n_gpus)
    if tokens_per_s <= 0:
        raise ConfigError(f"tokens_per_s is a measured throughput and must be positive, got {tokens_per_s}.")
    per_token = training_flops(cfg, 1, seq_len=seq_len)
    return tokens_per_s * per_token / (n_gpus * get_gpu(gpu).peak_flops(dtype))


def mbu(cfg: ConfigLike, tokens_per_s: float, gpu: str | GPU, *, batch: int = 1, context: int = 1,
        weights: str = "bf16", kv_dtype: str = "bf16") -> float:
    """Memory-bandwidth utilisation of decoding at `tokens_per_s` (all sequences together)."""
    step_bytes = weight_bytes(cfg, weights) + kv_cache_bytes(cfg, batch, context, kv_dtype)
    return step_bytes * (tokens_per_s / batch) / get_gpu(gpu).bandwidth


def flops_steps(cfg: ConfigLike, *, seq_len: int | None = None, tokens: float | None = None) -> list[Step]:
    """The FLOP estimates of `llmlab estimate flops`, with formulas."""
    cfg = resolve(cfg)
    s = cfg.max_position_embeddings if seq_len is None else seq_len
    if s < 1:
        raise ConfigError(f"seq_len must be at least 1, got {s}.")
    if tokens is not None and tokens <= 0:
        raise ConfigError(f"tokens (the training run's D) must be positive, got {tokens:g}.")
    n, m, L, da = count_params(cfg), matmul_params(cfg), cfg.num_layers, cfg.num_heads * cfg.head_dim
    f, c, W = flops_per_token(cfg, s), window_keys(cfg, s), cfg.sliding_window
    K = causal_keys(cfg, s)  # keys of all s causal queries: s(s+1)/2, or K(s) = Σ_p min(p, W) under a window
    keys, tri, per = ("s", "s(s+1)/2", "(s+1)/2") if W is None else ("min(s, W)", "K(s)", "K(s)/s")
    k_def = "" if W is None else f"; K(s) = Σ_p min(p, W) = w(w+1)/2 + (s-w)·w, w = min(s, W) = {c}"
    causal = training_flops(cfg, 1, seq_len=s, causal=True)
    steps = [
        Step("parameters N", n, "params"),
        Step("matmul weights M (layers + LM head)", m, "params"),
        Step("forward matmuls per token", f.matmul, "FLOP", "2·M", f"2 · {num(m)}"),
        Step(f"forward attention per token (s={s}" + ("" if W is None else f", window W={W}") + ")", f.attention,
             "FLOP", f"4·L·{keys}·heads·head_dim", f"4 · {L} · {c} · {da}"),
        Step("forward per token", f.forward, "FLOP", f"2·M + 4·L·{keys}·d_attn"),
        Step("backward per token", f.backward, "FLOP", "2 · forward"),
        Step("training per token", f.train, "FLOP", f"3 · forward (6N = {6 * n:.4g} leaves out attention)",
             f"3 · {f.forward:.4g}"),
        Step("training per token, causal keys only", causal, "FLOP", f"3 · (2·M + 4·L·d_attn·{per}){k_def}",
             f"3 · (2 · {num(m)} + 4 · {L} · {da} · {K:,} / {s})"),
        Step(f"prefill, 1 × {s} tokens", prefill_flops(cfg, 1, s), "FLOP", f"2·M·s + 4·L·d_attn·{tri} (causal){k_def}",
             f"2 · {num(m)} · {s} + 4 · {L} · {da} · {K:,}"),
        Step(f"decode step at context {s}", decode_flops(cfg, 1, s), "FLOP", f"2·M + 4·L·{keys}·d_attn"),
    ]
    if tokens is not None:
        steps += [
            Step(f"training run, D = {tokens:.4g} tokens", training_flops(cfg, tokens), "FLOP", "6·N·D",
                 f"6 · {num(n)} · {tokens:.4g}"),
            Step("  with attention (3·D·forward)", training_flops(cfg, tokens, seq_len=s), "FLOP",
                 f"3·D·(2·M + 4·L·{keys}·d_attn)", f"3 · {tokens:.4g} · {f.forward:.4g}"),
        ]
    return steps
