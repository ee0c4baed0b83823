"""THE model: one decoder-only Transformer for training, inference, PEFT, quantization and parallelism.

GPT-2, LLaMA (1/2/3), Qwen2, Qwen3, Mistral and the textbook variants differ only in ModelConfig.
`forward(input_ids, attention_mask=None, position_ids=None, *, cache=None)` returns logits
(B, T, V). Padding is honoured both ways: `attention_mask` (B, T_past + T) zeroes attention to
padded keys, and default position ids count only real tokens, so a left- or right-padded row
gives the same logits at its real positions as the row alone.

Serving: pass a `PagedKVCache` (model/cache.py) whose metadata describes a flattened batch —
input_ids and position_ids (1, N) holding prefill chunks and decode tokens of many sequences —
and attention runs over the paged pools (`attend(..., paged=meta)`); no attention_mask then.

Parameter names (the state-dict contract that convert.py maps to HF / GGUF names):
    embed, pos_embed, blocks.{i}.{norm1, attn.{q,k,v,o,q_norm,k_norm}, norm2, ffn.{gate,up,down}},
    norm_f, lm_head
Speed and scale are applied from outside (attention backend, module swaps, compile, parallelize).

References: Radford et al. 2019 (GPT-2), Touvron et al. 2023 (LLaMA), HF modeling_llama.py,
karpathy/nanoGPT model.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.model.attention import BACKENDS, attend, causal_mask
from llmlab.model.cache import KVCache, PagedKVCache
from llmlab.model.layers import (FeedForward, FusedProjections, RMSNorm, alibi_bias, alibi_slopes, apply_rope,
                                 make_norm, rope_cos_sin, rope_inv_freq, sinusoidal_embedding)


class Attention(FusedProjections):
    _fused_attr, _fused_parts = "qkv", ("q", "k", "v")

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        d = cfg.hidden_size
        self.q = nn.Linear(d, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.k = nn.Linear(d, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v = nn.Linear(d, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o = nn.Linear(self.n_heads * self.hd, d, bias=cfg.o_bias)
        self.q_norm = RMSNorm(self.hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.hd, cfg.norm_eps) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.set_fused(None)  # self.qkv: q, k and v as one Linear (fuse_projections)

    def forward(self, x: Tensor, ctx: _Context) -> Tensor:
        B, T, _ = x.shape
        if self.qkv is not None and not torch.is_grad_enabled():  # one matmul for q, k, v (inference)
            q, k, v = self.qkv(x).split(
                [self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(B, T, self.n_heads, self.hd)  # (B, T, H, hd)
        k = k.view(B, T, self.n_kv, self.hd)
        v = v.view(B, T, self.n_kv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if ctx.cache is not None and ctx.cos is not None and ctx.cache.fuses_rope:  # the engine on CPU
            q, k, v = ctx.cache.rope_update(self.layer, q, k, v, ctx.cos, ctx.sin)  # one C call, same values
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
            if ctx.cos is not None:
                q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
            if ctx.cache is not None:
                k, v = ctx.cache.update(self.layer, k, v)  # (B, Hkv, T_past + T, hd)
        y = attend(q, k, v, mask=ctx.mask, bias=ctx.bias, causal=ctx.causal, backend=ctx.backend,
                   dropout_p=self.dropout if self.training else 0.0, paged=ctx.paged)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


@torch.no_grad()
def fuse_projections(model: nn.Module) -> int:
    """Inference: q/k/v, and gate/up, each become one matmul (fewer, larger kernels per layer in decode).

    The fused weight is one new tensor and the original Linear weights become views into it, so no
    memory is added and the state dict (names, values, requires_grad) is unchanged; in-place updates of
    either side (load_state_dict, an optimizer) show in both. The fused Linear (`attn.qkv`, `ffn.gate_up`)
    sits outside the module tree, runs only with gradients off, and moving the module (.to, .half, ...)
    drops it. Returns the number of fused groups. Skipped where a projection is not a plain nn.Linear
    (LoRA, quantized, CPU-packed: pack after fusing, and kernels/cpu_linear.py packs the fused Linear).
    """

    def fuse(linears: list[nn.Module]) -> nn.Linear | None:
        if not all(type(m) is nn.Linear for m in linears):
            return None
        weight = torch.cat([m.weight for m in linears])
        bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
        start = 0
        for m in linears:
            n = m.weight.shape[0]
            m.weight = nn.Parameter(weight[start:start + n], requires_grad=m.weight.requires_grad)
            if bias is not None:
                m.bias = nn.Parameter(bias[start:start + n], requires_grad=m.bias.requires_grad)
            start += n
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=False)
        fused.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        return fused

    count = 0
    for module in model.modules():
        if isinstance(module, Attention) and module.qkv is None:
            module.set_fused(fuse([module.q, module.k, module.v]))
        elif isinstance(module, FeedForward) and module.gate is not None and module.gate_up is None:
            module.set_fused(fuse([module.gate, module.up]))
        else:
            continue
        count += module.fused is not None
    return count


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.norm2 = make_norm(cfg)
        self.ffn = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, ctx: _Context) -> Tensor:
        drop = self.drop if self.training and self.drop.p > 0 else _identity  # inference: no module call
        if self.pre_norm:
            x = x + drop(self.attn(self.norm1(x), ctx))
            return x + drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + drop(self.attn(x, ctx)))  # post-LN (Vaswani et al. 2017)
        return self.norm2(x + drop(self.ffn(x)))


def _identity(x: Tensor) -> Tensor:
    return x


class _Context:
    """Per-forward attention inputs shared by every layer: explicit, never a module global."""

    __slots__ = ("mask", "bias", "causal", "cos", "sin", "cache", "backend", "paged")

    def __init__(self, **kw):
        for name in self.__slots__:
            setattr(self, name, kw.get(name))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, *, attn_backend: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.attn_backend = attn_backend
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embed = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm_f = make_norm(cfg) if cfg.final_norm else None
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        # Derived tables: recomputed from cfg, never saved in checkpoints.
        self.register_buffer("inv_freq", rope_inv_freq(cfg) if cfg.position == "rope" else None, persistent=False)
        self.register_buffer("alibi", alibi_slopes(cfg.num_heads) if cfg.position == "alibi" else None,
                             persistent=False)
        if self.embed.weight.device.type != "meta":  # (on meta each init call costs ~10-270 ms and sets nothing)
            self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        std = self.cfg.initializer_range
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, Block):  # GPT-2: scale residual-branch outputs by 1/sqrt(2 * layers)
            for proj in (m.attn.o, m.ffn.down):
                nn.init.normal_(proj.weight, 0.0, std / math.sqrt(2 * self.cfg.num_layers))

    # ---- forward ---------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                *, cache: KVCache | PagedKVCache | None = None) -> Tensor:
        return self.lm_head(self.hidden_states(input_ids, attention_mask, position_ids, cache=cache))

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      position_ids: Tensor | None = None, *, cache: KVCache | PagedKVCache | None = None) -> Tensor:
        """Final-norm hidden states (B, T, d): the logits before the LM head."""
        cfg = self.cfg
        B, T = input_ids.shape
        past = 0
        paged = isinstance(cache, PagedKVCache)
        if paged and (B != 1 or position_ids is None or attention_mask is not None or cfg.position == "alibi"):
            raise LlmlabError("a paged cache takes a flattened (1, N) batch with explicit position_ids, no "
                              "attention_mask, and a model without ALiBi.")
        if cache is not None and not paged:
            cache.check_room(T)
            past = cache.length
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise LlmlabError(f"attention_mask has shape {tuple(attention_mask.shape)} but must be (batch, past + new) "
                              f"= {(B, past + T)}: it covers cached and new tokens.")
        if cfg.position == "learned" and not paged:
            # Default positions never exceed past + T - 1: check that bound with Python ints, so the common
            # path never syncs with the device (a GPU stall per step; a graph break under torch.compile).
            # The engine checks lengths itself.
            last = past + T - 1 if position_ids is None or position_ids.is_cuda else int(position_ids.max())
            if last >= cfg.max_position_embeddings:
                raise LlmlabError(f"position {last} is beyond the {cfg.max_position_embeddings} learned position "
                                  "embeddings; shorten the input.")
        if position_ids is None:
            position_ids = self._default_positions(attention_mask, B, T, past, input_ids.device)

        x = self.embed(input_ids)
        if cfg.embedding_scale:
            x = x * math.sqrt(cfg.hidden_size)
        if cfg.position == "learned":
            x = x + self.pos_embed(position_ids)
        elif cfg.position == "sinusoidal":
            x = x + sinusoidal_embedding(position_ids, cfg.hidden_size).to(x.dtype)
        x = self.drop(x)

        ctx = self._attention_context(attention_mask, position_ids, B, T, past, x.dtype, cache)
        for block in self.blocks:
            x = block(x, ctx)
        if cache is not None and not paged:
            cache.advance(T)
        return self.norm_f(x) if self.norm_f is not None else x

    @staticmethod
    def _default_positions(attention_mask: Tensor | None, B: int, T: int, past: int, device) -> Tensor:
        if attention_mask is None:
            return torch.arange(past, past + T, device=device).expand(B, T)
        # Count only real tokens, so left padding does not shift positions.
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]

    def _attention_context(self, attention_mask, position_ids, B, T, past, dtype, cache) -> _Context:
        cfg, device = self.cfg, position_ids.device
        if isinstance(cache, PagedKVCache):  # masks (causal, window, padding) live in the paged metadata
            cos = sin = None
            if cfg.position == "rope":
                cos, sin = rope_cos_sin(self.inv_freq, position_ids, dtype)
            return _Context(mask=None, bias=None, causal=False, cos=cos, sin=sin, cache=cache,
                            backend=self.attn_backend, paged=cache.meta)
        Tk = past + T
        mask = None
        if attention_mask is not None or cfg.sliding_window is not None or past > 0:
            allowed = causal_mask(T, Tk, device)[None]  # (1, T, Tk)
            if cfg.sliding_window is not None:
                i = torch.arange(T, device=device)[:, None] + past
                allowed = allowed & (i - torch.arange(Tk, device=device)[None, :] < cfg.sliding_window)
            if attention_mask is not None:
                # A padded query would see no key at all (softmax of all -inf is NaN): let it see itself.
                own = torch.zeros(T, Tk, dtype=torch.bool, device=device)
                own[torch.arange(T), torch.arange(T) + past] = True
                allowed = allowed & (attention_mask.bool()[:, None, :] | own)
            mask = allowed[:, None]  # (B|1, 1, T, Tk)
        cos = sin = bias = None
        if cfg.position == "rope":
            cos, sin = rope_cos_sin(self.inv_freq, position_ids, dtype)
        elif cfg.position == "alibi":
            k_pos = self._default_positions(attention_mask, B, Tk, 0, device)
            bias = alibi_bias(self.alibi, position_ids, k_pos)
        return _Context(mask=mask, bias=bias, causal=mask is None, cos=cos, sin=sin, cache=cache,
                        backend=self.attn_backend)

    # ---- conveniences ------------------------------------------------------------------------

    def set_attention_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise LlmlabError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        self.attn_backend = backend

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if exclude_embeddings:
            n -= self.embed.weight.numel() + (self.pos_embed.weight.numel() if self.pos_embed is not None else 0)
        return n

    def loss(self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy; labels are already shifted, -100 ignored (train.objectives.causal_lm_loss)."""
        from llmlab.train.objectives import causal_lm_loss

        return causal_lm_loss(self(input_ids, attention_mask), labels)

    @torch.no_grad()
    def generate(self, input_ids: Tensor | list[int] | list[list[int]], attention_mask: Tensor | None = None,
                 **kwargs) -> Tensor:
        """Greedy (temperature=0) or sampled continuation; see llmlab.model.generate.generate."""
        import inspect

        from llmlab.model.generate import HF_NAMES, generate

        known = [n for n, p in inspect.signature(generate).parameters.items() if p.kind is p.KEYWORD_ONLY]
        for name in kwargs:
            if name in HF_NAMES:  # transformers' generate keywords: say what llmlab calls them
                raise LlmlabError(f"generate() has no {name!r} (a transformers keyword); use {HF_NAMES[name]}.")
            if name not in known:
                raise LlmlabError(f"generate() has no keyword {name!r}; its keywords are {', '.join(known)}.")
        return generate(self, input_ids, attention_mask, **kwargs)

    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | str | None = None) -> Path:
        """Write config.json + model.safetensors that transformers (and llmlab) load."""
        from llmlab.model.pretrained import save_pretrained

        return save_pretrained(self, directory, dtype=dtype)
