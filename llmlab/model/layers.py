"""Building blocks of the Transformer: norms, feed-forward networks and position encodings.

Each piece matches its reference numerically: RMSNorm as LLaMA computes it (fp32 statistics, cast
back before the weight), GELU-tanh as GPT-2's `gelu_new`, RoPE in the Hugging Face "rotate half"
layout with the `llama3` and `linear` frequency scalings, sinusoidal positions from "Attention Is
All You Need", ALiBi slopes from Press et al. 2022.

Not here: attention itself (attention.py) and how blocks are wired (transformer.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.config import ModelConfig


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, statistics in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one kernel
        # LLaMA's order: normalise in fp32, cast back, then the weight. F.rms_norm on CPU is bitwise
        # x * rsqrt(mean(x^2) + eps), in three ops fewer.
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.hidden_size
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.norm_bias)


_ACT = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class FusedProjections(nn.Module):
    """A module that may hold a fused copy of some of its Linear projections — one `nn.Linear` whose weight
    the parts' weights are views of (set by transformer.fuse_projections) — in the attribute `_fused_attr`,
    outside the module tree (no state-dict entry, not moved by `.to`). The copy is dropped when the module
    is moved or cast, or when one of `_fused_parts` is swapped (LoRA, quantization), since it would be stale.
    The fused Linear itself may be swapped (`set_fused`), e.g. for a CPU-packed one (kernels/cpu_linear.py)."""

    _fused_attr: str = ""
    _fused_parts: tuple[str, ...] = ()

    @property
    def fused(self) -> nn.Linear | None:
        return self.__dict__.get(self._fused_attr)

    def set_fused(self, linear: nn.Linear | None) -> None:
        self.__dict__[self._fused_attr] = linear  # a plain attribute: never registered as a submodule

    def _apply(self, fn, recurse=True):
        self.set_fused(None)
        return super()._apply(fn, recurse)

    def __setattr__(self, name, value):
        if name in self._fused_parts and self._fused_attr in self.__dict__:
            self.set_fused(None)
        super().__setattr__(name, value)


def swap_linears(model: nn.Module, make, *, min_numel: int = 0) -> int:
    """Replace in place every plain nn.Linear of `model` with at least `min_numel` weights by `make(linear)`, and
    likewise the fused q/k/v and gate/up Linears of FusedProjections modules (whose parts then stay plain: the
    fused Linear is what inference runs); return the number replaced (kernels/cpu_linear.py, cuda_linear.py)."""
    swapped = 0
    for parent in list(model.modules()):
        skip: tuple[str, ...] = ()
        if isinstance(parent, FusedProjections) and parent.fused is not None:
            skip = parent._fused_parts
            if type(parent.fused) is nn.Linear and parent.fused.weight.numel() >= min_numel:
                parent.set_fused(make(parent.fused))
                swapped += 1
        for name, child in list(parent.named_children()):
            if name not in skip and type(child) is nn.Linear and child.weight.numel() >= min_numel:
                setattr(parent, name, make(child))
                swapped += 1
    return swapped


class FeedForward(FusedProjections):
    """down(act(up(x))), or down(act(gate(x)) * up(x)) when gated (SwiGLU, Shazeer 2020)."""

    _fused_attr, _fused_parts = "gate_up", ("gate", "up")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, f, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate = nn.Linear(d, f, bias=bias) if cfg.gated_ffn else None
        self.up = nn.Linear(d, f, bias=bias)
        self.down = nn.Linear(f, d, bias=bias)
        self.act = _ACT[cfg.activation]
        self.set_fused(None)  # self.gate_up: gate and up as one Linear (transformer.fuse_projections)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up is not None and not torch.is_grad_enabled():  # one matmul for gate and up (inference)
            g, u = self.gate_up(x).chunk(2, dim=-1)
            return self.down(self.act(g) * u)
        if self.gate is not None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


# ---- positions -------------------------------------------------------------------------------


def rope_inv_freq(cfg: ModelConfig) -> Tensor:
    """Per-pair rotation frequencies theta^(-2i/d), after the configured scaling. Shape (head_dim/2,), on the
    default device. Computed on the CPU: on the meta device (a model built to have its weights loaded) these ops
    run Python decompositions, the first of which imports torch._dynamo (~3 s)."""
    device = torch.get_default_device()
    with torch.device("cpu"):
        return _rope_inv_freq(cfg).to(device)


def _rope_inv_freq(cfg: ModelConfig) -> Tensor:
    inv_freq = rope_base_inv_freq(cfg.rope_theta, cfg.head_dim)
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return llama3_inv_freq(inv_freq, scaling)
    return inv_freq


def rope_base_inv_freq(theta: float, dim: int) -> Tensor:
    """theta^(-2i/d) for i < d/2, in fp32 (as HF computes it)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def llama3_inv_freq(inv_freq: Tensor, scaling: dict) -> Tensor:
    """Llama 3.1's scaling: keep high frequencies, divide low ones by `factor`, blend in between."""
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(inv_freq: Tensor, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables for the given positions, computed in fp32. position_ids (B, T) -> (B, 1, T, hd)."""
    freqs = position_ids[:, :, None].float() * inv_freq[None, None, :].float()  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd): "rotate half" layout
    return emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) by position-dependent angles. x (B, H, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def sinusoidal_embedding(position_ids: Tensor, dim: int) -> Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...). (B, T) -> (B, T, d), fp32."""
    half = torch.arange(0, dim, 2, dtype=torch.float32, device=position_ids.device)
    angles = position_ids[..., None].float() / (10000.0 ** (half / dim))  # (B, T, ceil(d/2))
    pe = torch.zeros(*position_ids.shape, dim, device=position_ids.device)
    pe[..., 0::2] = angles.sin()
    pe[..., 1::2] = angles.cos()[..., : dim // 2]
    return pe


def alibi_slopes(num_heads: int) -> Tensor:
    """Head-specific slopes 2^(-8i/n) (geometric; interleaved for non-powers of two, as in the paper)."""

    def powers(n: int) -> list[float]:
        start = 2 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(powers(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = powers(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(powers(closest) + extra)


def alibi_bias(slopes: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """-slope * distance, added to attention scores. q_pos (B, Tq), k_pos (B, Tk) -> (B, H, Tq, Tk) fp32."""
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).clamp(min=0).float()  # (B, Tq, Tk)
    return -slopes.float()[None, :, None, None] * dist[:, None]
