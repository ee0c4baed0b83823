"""Parameter counts from a ModelConfig: every tensor's shape, grouped, summed exactly.

`param_shapes(cfg)` lists the parameter tensors of one decoder-only Transformer as llmlab and
Hugging Face build it (token embedding, learned positions, per layer q/k/v/o with their biases,
optional q/k norms, FFN up/gate/down, two norms, final norm, untied LM head). Everything else —
`count_params`, the breakdown table, quantized weight bytes — is a sum over that one list, so a
shape rule lives in exactly one place. The test suite checks the sums against
`sum(p.numel())` of llmlab's `Transformer` and of `transformers` models built from the same config.

Not here: how many bytes each parameter costs in training (memory.py) or its FLOPs (flops.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.config import ModelConfig
from llmlab.estimate.presets import ConfigLike, resolve

# What each tensor is, for the breakdown table (a tensor belongs to exactly one group).
GROUPS = ("embedding", "position", "attention", "ffn", "norm", "lm_head")


@dataclass(frozen=True, slots=True)
class ParamTensor:
    name: str  # "layers.*.attn.q.weight": '*' marks a per-layer tensor repeated num_layers times
    shape: tuple[int, ...]
    group: str
    per_layer: bool  # repeated num_layers times
    matmul: bool  # a weight matrix applied to every token (counts towards 2N FLOPs, can be quantized)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def param_shapes(cfg: ModelConfig) -> list[ParamTensor]:
    """Every parameter tensor of the model; per-layer ones listed once with `per_layer=True`."""
    h, hd, nh, nkv, ffn = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    out: list[ParamTensor] = [ParamTensor("embed.weight", (cfg.vocab_size, h), "embedding", False, False)]
    if cfg.position == "learned":  # sinusoidal, RoPE, ALiBi and "none" have no parameters
        out.append(ParamTensor("pos_embed.weight", (cfg.max_position_embeddings, h), "position", False, False))

    def layer(name: str, shape: tuple[int, ...], group: str, matmul: bool = False) -> None:
        out.append(ParamTensor(f"layers.*.{name}", shape, group, True, matmul))

    def norm(name: str, size: int, bias: bool) -> None:
        layer(f"{name}.weight", (size,), "norm")
        if bias:
            layer(f"{name}.bias", (size,), "norm")

    norm("attn_norm", h, cfg.norm_bias)
    for proj, heads in (("q", nh), ("k", nkv), ("v", nkv)):
        layer(f"attn.{proj}.weight", (heads * hd, h), "attention", matmul=True)  # nn.Linear: (out, in)
        if cfg.qkv_bias:
            layer(f"attn.{proj}.bias", (heads * hd,), "attention")
    if cfg.qk_norm:  # Qwen3: RMSNorm over head_dim, shared by all heads
        layer("attn.q_norm.weight", (hd,), "attention")
        layer("attn.k_norm.weight", (hd,), "attention")
    layer("attn.o.weight", (h, nh * hd), "attention", matmul=True)
    if cfg.o_bias:
        layer("attn.o.bias", (h,), "attention")
    norm("mlp_norm", h, cfg.norm_bias)
    ups = ("gate", "up") if cfg.gated_ffn else ("up",)
    for proj in ups:
        layer(f"mlp.{proj}.weight", (ffn, h), "ffn", matmul=True)
        if cfg.mlp_bias:
            layer(f"mlp.{proj}.bias", (ffn,), "ffn")
    layer("mlp.down.weight", (h, ffn), "ffn", matmul=True)
    if cfg.mlp_bias:
        layer("mlp.down.bias", (h,), "ffn")
    if cfg.final_norm:
        out.append(ParamTensor("final_norm.weight", (h,), "norm", False, False))
        if cfg.norm_bias:
            out.append(ParamTensor("final_norm.bias", (h,), "norm", False, False))
    # The LM head is a matmul applied to every token whether or not it shares storage with the
    # embedding; it is listed separately only when untied, so numel sums stay equal to torch's.
    if not cfg.tie_word_embeddings:
        out.append(ParamTensor("lm_head.weight", (cfg.vocab_size, h), "lm_head", False, True))
    return out


@dataclass(frozen=True, slots=True)
class ParamBreakdown:
    """Parameter counts by group; `total` equals `sum(p.numel() for p in model.parameters())`."""

    embedding: int
    position: int
    attention: int  # all layers
    ffn: int  # all layers
    norm: int  # all layers + final norm
    lm_head: int  # 0 when tied to the embedding
    per_layer: int
    num_layers: int
    tied: bool

    @property
    def total(self) -> int:
        return self.embedding + self.position + self.attention + self.ffn + self.norm + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: everything but token/position embeddings (and an untied head)."""
        return self.total - self.embedding - self.position - self.lm_head

    def as_dict(self) -> dict[str, int | bool]:
        return {"embedding": self.embedding, "position": self.position, "attention": self.attention,
                "ffn": self.ffn, "norm": self.norm, "lm_head": self.lm_head, "per_layer": self.per_layer,
                "num_layers": self.num_layers, "tied": self.tied, "non_embedding": self.non_embedding,
                "total": self.total}


def count_params(cfg: ConfigLike) -> int:
    """Exactly `sum(p.numel() for p in model.parameters())` (a tied head counted once)."""
    return param_breakdown(cfg).total


def param_breakdown(cfg: ConfigLike) -> ParamBreakdown:
    cfg = resolve(cfg)
    groups = dict.fromkeys(GROUPS, 0)
    per_layer = 0
    for t in param_shapes(cfg):
        n = t.numel * (cfg.num_layers if t.per_layer else 1)
        groups[t.group] += n
        per_layer += t.numel if t.per_layer else 0
    return ParamBreakdown(per_layer=per_layer, num_layers=cfg.num_layers, tied=cfg.tie_word_embeddings,
                          **groups)


def matmul_params(cfg: ConfigLike) -> int:
    """Weights multiplied with every token's activations: layer matrices plus the LM head (tied or not).

    This is the N of "2N FLOPs per token": embedding lookups cost no FLOPs, the head costs
    2·vocab·hidden whether or not its storage is shared.
    """
    cfg = resolve(cfg)
    n = sum(t.numel * (cfg.num_layers if t.per_layer else 1) for t in param_shapes(cfg) if t.matmul)
    return n + (cfg.vocab_size * cfg.hidden_size if cfg.tie_word_embeddings else 0)
