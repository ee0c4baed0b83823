"""Weight-name and layout conversion: Hugging Face <-> llmlab, and GGUF (llama) -> llmlab.

Pure functions over name -> tensor dicts; file reading and error reporting live in pretrained.py.

- LLaMA family (llama, qwen2, qwen3, mistral): a renaming.
- GPT-2: `Conv1D` stores weights as (in, out), so they are transposed; the fused `c_attn` is split
  into q, k, v. Checkpoints with and without the `transformer.` prefix both load.
- GGUF (llama.cpp): tensors are dequantized by the `gguf` package (Q4_0/Q4_1/Q8_0/F16/F32/...),
  and Q/K rows are un-permuted: llama.cpp's converter interleaves each head's rotary pairs
  (x0, x_{d/2}, x1, x_{d/2+1}, ...), while HF / llmlab RoPE rotates halves (x_i, x_{i+d/2}).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from llmlab.config import ModelConfig

_LLAMA_LAYER = {
    "self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o", "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm",
    "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up", "mlp.down_proj": "ffn.down",
    "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
}
_LLAMA_TOP = {"model.embed_tokens": "embed", "model.norm": "norm_f", "lm_head": "lm_head"}
_GPT2_LAYER = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_proj": "attn.o", "mlp.c_fc": "ffn.up",
               "mlp.c_proj": "ffn.down"}
_GPT2_TOP = {"wte": "embed", "wpe": "pos_embed", "ln_f": "norm_f"}
_GPT2_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_GPT2_IGNORED = re.compile(r"h\.\d+\.attn\.(masked_)?bias$")  # causal-mask buffers


def hf_to_llmlab(hf: dict[str, Tensor], cfg: ModelConfig) -> Iterator[tuple[str, str, Tensor]]:
    """Yield (llmlab_name, hf_name, tensor) for every weight in an HF state dict."""
    if cfg.model_type == "gpt2":
        yield from _gpt2_to_llmlab(hf, cfg)
        return
    for name, t in hf.items():
        if name.endswith(".rotary_emb.inv_freq"):  # a buffer older transformers saved; derived from the config
            continue
        yield _rename(name, _LLAMA_TOP, "model.layers.", _LLAMA_LAYER), name, t


def llmlab_to_hf(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """HF-named state dict for `save_pretrained`, named for `cfg.hf_model_type` (the architecture
    `cfg.to_hf_dict()` writes); the tied head is omitted, as transformers does."""
    if cfg.hf_model_type == "gpt2":
        return _llmlab_to_gpt2(state, cfg)
    top = {v: k for k, v in _LLAMA_TOP.items()}
    layer = {v: k for k, v in _LLAMA_LAYER.items()}
    return {_rename(n, top, "blocks.", layer, out_prefix="model.layers."): t
            for n, t in state.items() if not (cfg.tie_word_embeddings and n == "lm_head.weight")}


def _rename(name: str, top: dict[str, str], layer_prefix: str, layer: dict[str, str],
            out_prefix: str = "blocks.") -> str:
    stem, _, leaf = name.rpartition(".")
    if stem in top:
        return f"{top[stem]}.{leaf}"
    m = re.fullmatch(re.escape(layer_prefix) + r"(\d+)\.(.+)", stem)
    if m and m.group(2) in layer:
        return f"{out_prefix}{m.group(1)}.{layer[m.group(2)]}.{leaf}"
    return name  # unknown: reported by the loader as an unexpected tensor


def _gpt2_to_llmlab(hf: dict[str, Tensor], cfg: ModelConfig) -> Iterator[tuple[str, str, Tensor]]:
    for name, t in hf.items():
        short = name.removeprefix("transformer.")
        if _GPT2_IGNORED.search(short):
            continue
        stem, _, leaf = short.rpartition(".")
        m = re.fullmatch(r"h\.(\d+)\.(.+)", stem)
        sub = m.group(2) if m else None
        if leaf == "weight" and sub in _GPT2_CONV1D:
            t = t.t()  # Conv1D (in, out) -> Linear (out, in)
        if sub == "attn.c_attn":  # fused q|k|v along the output dimension
            for part, piece in zip("qkv", t.chunk(3, dim=0)):
                yield f"blocks.{m.group(1)}.attn.{part}.{leaf}", name, piece.contiguous()
        elif m and sub in _GPT2_LAYER:
            yield f"blocks.{m.group(1)}.{_GPT2_LAYER[sub]}.{leaf}", name, t.contiguous()
        elif stem in _GPT2_TOP:
            yield f"{_GPT2_TOP[stem]}.{leaf}", name, t
        else:
            yield name, name, t


def _llmlab_to_gpt2(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    top = {v: k for k, v in _GPT2_TOP.items()}
    layer = {v: k for k, v in _GPT2_LAYER.items()}
    for i in range(cfg.num_layers):
        p = f"blocks.{i}.attn"
        out[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(
            [state[f"{p}.{x}.weight"] for x in "qkv"], dim=0).t().contiguous()
        out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat([state[f"{p}.{x}.bias"] for x in "qkv"])
    for name, t in state.items():
        stem, _, leaf = name.rpartition(".")
        if stem in top:
            out[f"transformer.{top[stem]}.{leaf}"] = t
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", stem)
        if m and m.group(2) in layer:
            sub = layer[m.group(2)]
            out[f"transformer.h.{m.group(1)}.{sub}.{leaf}"] = (
                t.t().contiguous() if leaf == "weight" and sub in _GPT2_CONV1D else t)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


# ---- GGUF ------------------------------------------------------------------------------------

_GGUF_LAYER = {
    "attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v", "attn_output": "attn.o",
    "attn_q_norm": "attn.q_norm", "attn_k_norm": "attn.k_norm",
    "ffn_gate": "ffn.gate", "ffn_up": "ffn.up", "ffn_down": "ffn.down",
    "attn_norm": "norm1", "ffn_norm": "norm2",
}
_GGUF_TOP = {"token_embd": "embed", "output_norm": "norm_f", "output": "lm_head"}


def gguf_field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def config_from_gguf(reader, source: str = "model.gguf") -> ModelConfig:
    """ModelConfig from a llama-architecture GGUF's metadata."""
    from llmlab.errors import ConfigError

    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise ConfigError(f"{source}: general.architecture is {arch!r}; llmlab loads GGUF files with 'llama'.")

    def get(key: str, default=None):
        value = gguf_field(reader, f"llama.{key}", default)
        if value is None:
            raise ConfigError(f"{source}: required GGUF metadata llama.{key} is missing.")
        return value

    names = {t.name for t in reader.tensors}
    qk_norm = "blk.0.attn_q_norm.weight" in names  # llama layers with Qwen3's q/k RMSNorm: HF's qwen3
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    scaling = None
    kind = gguf_field(reader, "llama.rope.scaling.type")
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif kind not in (None, "none"):  # yarn, longrope, ...: llama.cpp applies them, so loading unscaled is wrong
        raise ConfigError(f"{source}: RoPE scaling {kind!r} (llama.rope.scaling.type) is not supported by llmlab; "
                          "it reads linear scaling and Llama 3's rope_freqs only.")
    head_dim, theta = int(get("rope.dimension_count", hidden // heads)), float(get("rope.freq_base", 10000.0))
    if "rope_freqs.weight" in names:  # Llama 3.x: llama.cpp's converter stores the scaling as a divisor per frequency
        freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        scaling = llama3_from_factors([float(x) for x in freqs.data], theta, head_dim, source)
    return ModelConfig(
        vocab_size=int(get("vocab_size", len(tokens) if tokens else None)), hidden_size=hidden,
        num_layers=int(get("block_count")), num_heads=heads, num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim, intermediate_size=int(get("feed_forward_length")),
        max_position_embeddings=int(get("context_length")), norm="rmsnorm",
        norm_eps=float(get("attention.layer_norm_rms_epsilon")), activation="silu", gated_ffn=True,
        position="rope", rope_theta=theta, rope_scaling=scaling,
        qk_norm=qk_norm, tie_word_embeddings="output.weight" not in names,
        bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=gguf_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=gguf_field(reader, "tokenizer.ggml.padding_token_id"),
        model_type="qwen3" if qk_norm else "llama",
    )


def llama3_from_factors(factors: list[float], theta: float, head_dim: int, source: str) -> dict | None:
    """HF's llama3 rope_scaling that gives llama.cpp's per-frequency divisors (a GGUF's rope_freqs, written by
    convert_hf_to_gguf.py from that scaling): 1 for short wavelengths, `factor` for long ones, and in between
    1 / ((1 - s) / factor + s) with s = (old_ctx / wavelength - low) / (high - low). s is linear in 1 / wavelength,
    so two in-between frequencies give old_ctx / (high - low) and low / (high - low); any (old_ctx, low, high) with
    those ratios gives the same frequencies, so low = 1. One in-between frequency (or none) leaves old_ctx free
    within the gap to its longer neighbour. Checked by recomputing every divisor with the model's own formula."""
    import math

    from llmlab.errors import ConfigError
    from llmlab.model.layers import rope_base_inv_freq

    inv = rope_base_inv_freq(theta, head_dim)
    if len(factors) != len(inv):
        raise ConfigError(f"{source}: rope_freqs.weight has {len(factors)} entries for {len(inv)} frequencies.")
    factor = max(factors)
    if all(abs(f - 1) < 1e-6 for f in factors):
        return None
    if all(abs(f - factor) < 1e-6 * factor for f in factors):
        return {"rope_type": "linear", "factor": factor}
    wave = [2 * math.pi / f for f in inv.tolist()]
    mid = [(1 / w, (1 / d - 1 / factor) / (1 - 1 / factor)) for w, d in zip(wave, factors, strict=True)
           if 1 + 1e-6 < d < factor * (1 - 1e-6)]
    longer = [w for w, d in zip(wave, factors, strict=True) if d >= factor * (1 - 1e-6)]
    candidates = []  # (old, high) pairs; the first whose divisors match is the scaling
    if len(mid) >= 2:
        (x0, s0), (x1, s1) = mid[0], mid[-1]
        a = (s1 - s0) / (x1 - x0)  # s = a / wavelength + b
        b = s0 - a * x0
        high, old = 1 - 1 / b, -a / b
        old = float(round(old)) if abs(old - round(old)) < 1e-3 * old else old  # (an int in HF's configs)
        candidates.append((old, round(high, 6)))
    elif mid:  # s0 = (old / w0 - 1) / (high - 1) with old in (w0, the next longer wavelength): the nearer old is to
        w0, s0 = 1 / mid[0][0], mid[0][1]  # w0, the more room below old / high for the shorter wavelengths, and the
        gap = min(longer) / w0 if longer else 1.1  # fewer digits fp32 keeps of s: try a few distances
        for power in (0.05, 0.01, 0.002, 0.0005):
            old = w0 * gap ** power
            candidates.append((old, 1 + (old / w0 - 1) / s0))
    else:  # a step from 1 to factor: any threshold between the two groups
        short = max(w for w, d in zip(wave, factors, strict=True) if d < 1 + 1e-6)
        candidates.append((math.sqrt(short * min(longer)), 1.0 + 1e-9))
    for old, high in candidates:
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": high,
                   "original_max_position_embeddings": old}
        if _same_factors(scaling, inv, factors):
            return scaling
    raise ConfigError(f"{source}: rope_freqs.weight holds RoPE divisors that are not Llama 3's scaling; llmlab "
                      "cannot load them.")


def _same_factors(scaling: dict, inv: Tensor, factors: list[float]) -> bool:
    """Whether HF's llama3 formula with `scaling` gives these divisors (to fp32 precision)."""
    from llmlab.model.layers import llama3_inv_freq

    want = inv / llama3_inv_freq(inv, scaling)
    got = torch.tensor(factors, dtype=torch.float32)
    return bool(((want - got).abs() <= 1e-4 * got.clamp(min=1.0)).all())


def unpermute_rope(w: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's per-head interleaving of rotary pairs (inverse of convert_hf_to_gguf's permute)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_to_llmlab(reader, cfg: ModelConfig,
                   progress: Callable[[Iterator], Iterator] = iter) -> Iterator[tuple[str, str, Tensor]]:
    """Yield (llmlab_name, gguf_name, fp32 tensor) for every tensor of a llama GGUF."""
    from llmlab.model.gguf_quants import dequantize

    for t in progress(reader.tensors):
        if t.name == "rope_freqs.weight":  # the RoPE scaling, read into the config (config_from_gguf)
            continue
        stem, _, leaf = t.name.rpartition(".")
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", stem)
        if m and m.group(2) in _GGUF_LAYER:
            name = f"blocks.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}.{leaf}"
        elif stem in _GGUF_TOP:
            name = f"{_GGUF_TOP[stem]}.{leaf}"
        else:
            name = t.name
        w = dequantize(t.data, t.tensor_type)  # a new, writable fp32 tensor
        if name.endswith("attn.q.weight"):
            w = unpermute_rope(w, cfg.num_heads)
        elif name.endswith("attn.k.weight"):
            w = unpermute_rope(w, cfg.num_kv_heads)
        yield name, t.name, w
