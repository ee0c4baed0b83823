"""FLOPs: per token (forward, backward), prefill and decode, a training run, and MFU / MBU.

Conventions (a multiply-add is 2 FLOPs):
  forward per token = 2·M + 4·L·c·(heads·head_dim)   (QKᵀ and A·V, 2·c·d_attn each: PaLM App. B's
    6N + 12·L·H·Q·T is 3× this; Kaplan et al. 2020, Table 1 count QKᵀ only, 2·L·c·d_attn)
    M = weights multiplied by every token: the layer matrices and the LM head (tied or not);
    embedding lookups, norms, softmax and activations are not counted (< 1%).
    c = keys each query attends to. For training we count the full sequence (c = s, no causal
    skipping), as Kaplan and Megatron's MFU do; prefill counts the causal triangle exactly.
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


def flops_per_token(cfg: ConfigLike, context: int) -> FlopsPerToken:
    cfg = resolve(cfg)
    return FlopsPerToken(2 * matmul_params(cfg), 4 * cfg.num_layers * context * cfg.num_heads * cfg.head_dim,
                         context)


def training_flops(cfg: ConfigLike, tokens: float, *, seq_len: int | None = None) -> float:
    """6·N·D; with `seq_len`, 3·D·(2·M + 4·L·s·d_attn) (matmul weights and attention, exactly)."""
    if seq_len is None:
        return 6 * count_params(cfg) * tokens
    return tokens * flops_per_token(cfg, seq_len).train


def prefill_flops(cfg: ConfigLike, batch: int, prompt_len: int) -> float:
    """Forward FLOPs for `batch` prompts of `prompt_len` tokens: token i attends to i + 1 keys."""
    cfg = resolve(cfg)
    attn = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * prompt_len * (prompt_len + 1) / 2
    return batch * (2 * matmul_params(cfg) * prompt_len + attn)


def decode_flops(cfg: ConfigLike, batch: int, context: int) -> float:
    """Forward FLOPs for one decode step of `batch` sequences that attend to `context` keys each."""
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
    f = flops_per_token(cfg, s)
    steps = [
        Step("parameters N", n, "params"),
        Step("matmul weights M (layers + LM head)", m, "params"),
        Step("forward matmuls per token", f.matmul, "FLOP", "2·M", f"2 · {num(m)}"),
        Step(f"forward attention per token (s={s})", f.attention, "FLOP", "4·L·s·heads·head_dim",
             f"4 · {L} · {s} · {da}"),
        Step("forward per token", f.forward, "FLOP", "2·M + 4·L·s·d_attn"),
        Step("backward per token", f.backward, "FLOP", "2 · forward"),
        Step("training per token", f.train, "FLOP", f"3 · forward (6N = {6 * n:.4g} leaves out attention)",
             f"3 · {f.forward:.4g}"),
        Step(f"prefill, 1 × {s} tokens", prefill_flops(cfg, 1, s), "FLOP",
             "2·M·s + 4·L·d_attn·s(s+1)/2 (causal)"),
        Step(f"decode step at context {s}", decode_flops(cfg, 1, s), "FLOP", "2·M + 4·L·s·d_attn"),
    ]
    if tokens is not None:
        steps += [
            Step(f"training run, D = {tokens:.4g} tokens", training_flops(cfg, tokens), "FLOP", "6·N·D",
                 f"6 · {num(n)} · {tokens:.4g}"),
            Step("  with attention (3·D·forward)", training_flops(cfg, tokens, seq_len=s), "FLOP",
                 "3·D·(2·M + 4·L·s·d_attn)", f"3 · {tokens:.4g} · {f.forward:.4g}"),
        ]
    return steps
