"""Memory: weights by format, KV cache, training model states (ZeRO 0-3, TP/PP) and activations.

Training (per device):
  model states = Φ · (weight + gradient + master + optimizer bytes), Φ = N / (tp · pp), with ZeRO
  (Rajbhandari et al. 2020) dividing optimizer states and master weights (stage 1), then gradients
  (stage 2), then weights (stage 3) by the data-parallel size. bf16/fp16 mixed-precision AdamW is
  2 + 2 + 4 + 4 + 4 = 16 bytes/param (the autocast variant — fp32 params and grads — is also 16).
  activations, two formulas, both per layer and summed over all layers (with 1F1B pipelining the
  first stage holds p micro-batches of L/p layers, i.e. L layers' worth):
  - "megatron": Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
    Models" — GPT-style Megatron layers (LayerNorm, GELU MLP, dropout, 16-bit activations):
    sbh(34 + 5as/h) bytes, sbh(10 + 24/t + 5as/ht) with TP t, sbh/t(34 + 5as/h) with sequence
    parallelism; selective recomputation drops the 5as/h term, full recomputation keeps 2sbh;
    FlashAttention replaces 5as²b by its fp32 log-sum-exp, 4asb. Generalised here to GQA and any FFN
    width/gating (the 34 is 11 attention + 19 MLP + 4 LayerNorm for MHA and a 4h GELU MLP).
  - "llmlab": what autograd saves for llmlab's own `Transformer` (RMSNorm statistics in fp32,
    SwiGLU, RoPE tables, GQA expanded for SDPA, SDPA's log-sum-exp, the fp32 cross-entropy), derived
    op by op from llmlab/model/{transformer,layers,attention}.py and checked to the byte against
    `saved_tensors_hooks` measurements (tests/test_estimate_activations.py,
    benchmarks/estimate_memory.py).
Inference: weights (+ quantization metadata), KV cache = 2 · bytes · layers · batch · context ·
kv_heads · head_dim (the same bytes `KVCache.allocate` holds), and a peak-activation estimate.
Framework overhead (CUDA context, allocator slack) is reported separately, never mixed in.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.config import ModelConfig
from llmlab.errors import ConfigError
from llmlab.estimate.explain import Step, num
from llmlab.estimate.params import count_params, param_shapes
from llmlab.estimate.presets import ConfigLike, resolve

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
DEFAULT_OVERHEAD = 2**30  # CUDA context + allocator slack: an assumption, reported on its own line


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}.")
    return DTYPE_BYTES[dtype]


# ---- weights ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """How one weight matrix is stored: `bits` per weight plus `meta_bytes` per group of `group` weights.

    group 0 means one group per output row (per-channel scales)."""

    bits: int
    group: int | None = None
    meta_bytes: int = 0
    note: str = ""


WEIGHT_FORMATS = {
    "fp32": WeightFormat(32), "bf16": WeightFormat(16), "fp16": WeightFormat(16),
    "fp8": WeightFormat(8, note="per-tensor scale, negligible"),
    "int8": WeightFormat(8, 0, 2, "per-output-channel fp16 scale"),
    "int4": WeightFormat(4, 128, 4, "groups of 128, fp16 scale + fp16 zero (GPTQ/AWQ style)"),
    "q8_0": WeightFormat(8, 32, 2, "GGUF Q8_0: 34 bytes per 32 weights"),
    "q4_0": WeightFormat(4, 32, 2, "GGUF Q4_0: 18 bytes per 32 weights"),
    "q4_1": WeightFormat(4, 32, 4, "GGUF Q4_1: 20 bytes per 32 weights"),
}


def is_gguf(cfg: ConfigLike) -> bool:
    return isinstance(cfg, (str, Path)) and Path(cfg).suffix == ".gguf"


def gguf_tensor_bytes(path: str | Path) -> dict[str, int]:
    """Bytes of a .gguf file's tensors by the type each is stored in ({"Q4_1": ..., "Q8_0": ..., "F32": ...}).
    Remembered by path, size and modification time: an estimate asks for them at every step of its search."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        resolve(path)  # the same one-line error as every estimate for a missing file
        raise
    return dict(_gguf_tensor_bytes(str(p.resolve()), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _gguf_tensor_bytes(path: str, size: int, mtime_ns: int) -> dict[str, int]:
    from llmlab.gguf_file import open_gguf

    resolve(path)  # the same one-line errors as every estimate for an unreadable file
    by_type: dict[str, int] = {}
    for t in open_gguf(path).tensors:
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + int(t.n_bytes)
    return by_type


def weight_bytes(cfg: ConfigLike, weights: str = "bf16", *, other: str = "bf16") -> int:
    """Bytes of all parameters when the layers' weight matrices use format `weights`.

    The rule: a format narrower than 16 bits (fp8, int8, int4, q8_0, q4_0, q4_1) applies to the
    attention and FFN matrices only, as llmlab's module swap and FP8 serving (vLLM, TensorRT-LLM)
    do; embeddings, an untied LM head, norms and biases stay in `other`. fp32/bf16/fp16 apply to all.
    weights="gguf" (for a .gguf `cfg` only) is the file's own tensors as stored: llama.cpp also
    quantizes the embedding (SmolLM2's Q4_1 file keeps token_embd in Q8_0) and keeps norms in F32.
    """
    if weights == "gguf":
        if not is_gguf(cfg):
            what = cfg if isinstance(cfg, (str, Path)) else f"a {type(cfg).__name__}"
            raise ConfigError(f"weights 'gguf' are the tensors of a .gguf MODEL as stored, and {what} is not a "
                              f".gguf file; choose one of {', '.join(WEIGHT_FORMATS)}.")
        return sum(gguf_tensor_bytes(cfg).values())
    cfg = resolve(cfg)
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"unknown weight format {weights!r}; choose one of {', '.join(WEIGHT_FORMATS)}"
                          " (or gguf for a .gguf MODEL).")
    fmt, plain = WEIGHT_FORMATS[weights], dtype_bytes(other)
    quantized = fmt.bits < 16
    total = 0
    for t in param_shapes(cfg):
        reps = cfg.num_layers if t.per_layer else 1
        if not t.matmul or not t.per_layer or not quantized:
            nbytes = t.numel * (fmt.bits // 8 if not quantized else plain)
        else:
            out_features, in_features = t.shape
            group = in_features if fmt.group == 0 else (fmt.group or t.numel)
            nbytes = t.numel * fmt.bits // 8 + -(-t.numel // group) * fmt.meta_bytes
        total += nbytes * reps
    return total


def kv_cache_bytes(cfg: ConfigLike, batch: int, context: int, dtype: str = "bf16") -> int:
    """2 (K and V) · bytes · layers · batch · context · kv_heads · head_dim."""
    cfg = resolve(cfg)
    return 2 * dtype_bytes(dtype) * cfg.num_layers * batch * context * cfg.num_kv_heads * cfg.head_dim


def _kv_step(cfg: ModelConfig, batch: int, context: int, dtype: str) -> Step:
    return Step("KV cache", kv_cache_bytes(cfg, batch, context, dtype), "B",
                "2 · bytes · layers · batch · context · kv_heads · head_dim",
                f"2 · {dtype_bytes(dtype)} · {cfg.num_layers} · {batch} · {context} · {cfg.num_kv_heads} · {cfg.head_dim}")


# ---- activations -----------------------------------------------------------------------------

RECOMPUTE = ("none", "selective", "full")
ACTIVATION_FORMULAS = ("llmlab", "megatron")
_MEGATRON = "`--activations megatron` on the command line, formula='megatron' in Python"


@dataclass(frozen=True, slots=True)
class Activations:
    per_layer: float  # bytes one layer keeps for backward
    layers: float  # all layers on the device
    other: float  # embeddings, final norm, logits/cross-entropy, position tables
    formula: str
    numbers: str
    head_backward: float = 0.0  # transient at the start of backward: fp32 grads of the logits and log-softmax

    @property
    def total(self) -> float:
        return self.layers + self.other

    @property
    def peak(self) -> float:
        """Saved activations plus the loss head's backward transient: what `torch.cuda.max_memory_allocated`
        grows by over one forward + backward (weights, gradients and optimizer state already allocated)."""
        return self.total + self.head_backward


def activation_bytes(cfg: ConfigLike, batch: int, seq_len: int, *, formula: str = "llmlab", dtype: str = "bf16",
                     recompute: str = "none", flash: bool = True, tp: int = 1, pp: int = 1,
                     sequence_parallel: bool = False, device: str = "cuda") -> Activations:
    """Bytes of activations saved for backward on the busiest device (the first pipeline stage).
    `device` ("cuda" or "cpu") matters for the 'llmlab' formula only: the two keep different norm tensors."""
    cfg = resolve(cfg)
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device must be 'cuda' or 'cpu', got {device!r}.")
    if recompute not in RECOMPUTE:
        raise ConfigError(f"unknown recompute {recompute!r}; choose one of {', '.join(RECOMPUTE)}.")
    _check_tp(cfg, tp)
    if formula == "megatron":
        return _megatron(cfg, batch, seq_len, dtype, recompute, flash, tp, pp, sequence_parallel)
    if formula == "llmlab":
        return _llmlab(cfg, batch, seq_len, dtype, recompute, flash, tp, pp, sequence_parallel, device)
    raise ConfigError(f"unknown activation formula {formula!r}; choose one of {', '.join(ACTIVATION_FORMULAS)}.")


def _check_tp(cfg: ModelConfig, tp: int) -> None:
    """Tensor parallelism (Megatron) gives each rank whole attention heads, whole KV heads (query groups)
    and an equal slice of the FFN columns, so tp must divide all three."""
    if tp < 1:
        raise ConfigError(f"tp must be at least 1, got {tp}.")
    whole = math.gcd(cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size)
    if whole % tp:
        valid = ", ".join(str(d) for d in range(1, whole + 1) if whole % d == 0)
        raise ConfigError(f"tensor-parallel degree {tp} does not split this model evenly: each rank needs whole "
                          f"attention heads ({cfg.num_heads}), KV heads ({cfg.num_kv_heads}) and an equal share of "
                          f"the {cfg.intermediate_size} FFN columns; choose tp from {valid}.")


def _megatron(cfg, b, s, dtype, recompute, flash, t, p, sp) -> Activations:
    if dtype_bytes(dtype) != 2:
        raise ConfigError("Korthikanti's activation formula assumes 16-bit activations; train in 16 bits "
                          "(`--precision bf16-mixed` on the command line, dtype='bf16' in Python) or estimate fp32 "
                          "with the 'llmlab' formula (`--activations llmlab`, formula='llmlab').")
    h, a, L, V = cfg.hidden_size, cfg.num_heads, cfg.num_layers, cfg.vocab_size
    hq, hkv, ffn = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    widths = 4 if cfg.gated_ffn else 2  # FFN tensors of width `ffn`: act in/out (+ up output and product if gated)
    # Per sbh, 16-bit values count 2, 1-byte dropout masks 1. For MHA with a 4h GELU MLP this is 11+19+4=34.
    attn = 2 + 2 * (hq + hkv) / h + 2 * hkv / h + 2 * hq / h + 1  # qkv input, Q, K, V, proj input, mask
    mlp = 2 + 2 * widths * ffn / h + 1  # fc1 input, the `ffn`-wide tensors, dropout mask
    norms = 4
    c = attn + mlp + norms
    unsplit = 10  # norm inputs, qkv/fc1 inputs and both dropout masks are not split by TP without SP
    sbh = s * b * h
    if recompute == "full":
        per_layer = 2 * sbh / (t if sp else 1)
        text, nums = "L · 2sbh" + ("/t" if sp else ""), f"{L} · 2 · {s} · {b} · {h}" + (f" / {t}" if sp else "")
    else:
        lin = c / t if sp else unsplit + (c - unsplit) / t
        attn_core = 0.0 if recompute == "selective" else (4 * a * s * b / t if flash else 5 * a * s * s * b / t)
        per_layer = sbh * lin + attn_core
        core_sym, core_num = {
            "selective": ("", ""),
            "flash": (" + 4asb/t", f" + 4·{a}·{s}·{b}/{t}"),
            "scores": (" + 5as²b/t", f" + 5·{a}·{s}²·{b}/{t}"),
        }["selective" if recompute == "selective" else "flash" if flash else "scores"]
        lin_sym = f"{c:g}/t" if sp else f"{unsplit} + {c - unsplit:g}/t"
        lin_num = f"{c:g}/{t}" if sp else f"{unsplit} + {c - unsplit:g}/{t}"
        text = f"L · (sbh({lin_sym}){core_sym})"
        nums = f"{L} · ({s}·{b}·{h}·({lin_num}){core_num})"
    # Outside the layers (Korthikanti §4.3): embedding dropout (p micro-batches on the first stage);
    # with p = 1 also the final LayerNorm, output projection and fp32 cross-entropy: 4sbh/t (1 + v/h).
    other = sbh * p / t + (4 * sbh / t * (1 + V / h) if p == 1 else 0)
    return Activations(per_layer, per_layer * L, other, text, nums)


def _llmlab(cfg, b, s, dtype, recompute, flash, t, p, sp, device) -> Activations:
    if t != 1 or sp:
        raise ConfigError("the 'llmlab' activation formula is measured for tp=1 without sequence parallelism; "
                          f"use the megatron formula for tensor-parallel estimates ({_MEGATRON}).")
    if recompute == "selective":
        raise ConfigError("llmlab has no selective recomputation (it checkpoints whole blocks); use "
                          f"recompute 'none' or 'full', or the megatron formula ({_MEGATRON}).")
    if cfg.dropout > 0:
        raise ConfigError(f"the 'llmlab' activation formula covers dropout=0 (got {cfg.dropout}): CPU and CUDA "
                          f"save different dropout masks; use the megatron formula for dropout models ({_MEGATRON}).")
    if cfg.position == "alibi" or cfg.sliding_window is not None:
        raise ConfigError("the 'llmlab' activation formula covers plain causal attention; ALiBi and sliding "
                          f"windows add a (T, T) mask or bias: use the megatron formula ({_MEGATRON}).")
    e = dtype_bytes(dtype)
    h, H, Hkv, hd, ffn, L, V = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                cfg.intermediate_size, cfg.num_layers, cfg.vocab_size)
    bs = b * s

    def norm(elems: int, rows: int, input_counted: bool = False) -> int:
        """What a norm keeps; its output is kept by the matmul that reads it and counted there.

        RMSNorm: the fp32 x (x itself when e = 4), the normalised x cast back (e), rsqrt per row (4) —
        except fp32 on CUDA, where one fused kernel (weight included) keeps only x and rsqrt (measured on
        an H100, torch 2.11). LayerNorm: its input (e), mean and rstd per row (fp32 on CUDA; CPU keeps
        them in the input dtype). `input_counted`: x was counted as some matmul's input, but this norm is
        its only reader (RMSNorm in 16-bit keeps the fp32 copy, not x)."""
        if cfg.norm == "rmsnorm":
            kept = elems * 4 + 4 * rows if (e == 4 and device == "cuda") else elems * (4 + e) + 4 * rows
        else:
            kept = elems * e + (8 if device == "cuda" else 2 * e) * rows
        return kept - (e * elems if input_counted else 0)

    norms = 2 * norm(bs * h, bs) + 2 * e * bs * h  # + the two outputs, read by q/k/v and the FFN
    if flash:  # SDPA (flash kernel on CPU and GPU): q, and k, v expanded to H heads; out (= o's input); fp32 lse
        attn = 4 * e * bs * H * hd + 4 * b * H * s
    else:  # explicit: fp32 q, k, v; masked scores, exp and weights (fp32, s x s); row max and sum; o's input
        attn = 4 * bs * (H + 2 * Hkv) * hd + 12 * b * H * s * s + 8 * b * H * s + e * bs * H * hd
    if cfg.qk_norm:  # Qwen3: RMSNorm over head_dim of every q and k head
        attn += norm(bs * (H + Hkv) * hd, bs * (H + Hkv))
    # gate out, act out, up out, product (gated); act in, act out (plain). ReLU keeps its output only.
    widths = (4 if cfg.gated_ffn else 2) - (1 if cfg.activation == "relu" else 0)
    mlp = widths * e * bs * ffn
    per_layer = e * bs * h if recompute == "full" else norms + attn + mlp  # checkpointing keeps the block input

    other = 2 * 8 * bs + 4 * bs * V  # int64 token ids and labels; fp32 log-softmax kept by the cross-entropy
    if cfg.position == "learned":
        other += 8 * s  # position ids: one arange shared by the batch
    if cfg.position == "rope" and recompute != "full":
        # cos and sin tables, shared by all layers. Checkpointed blocks keep them referenced through the
        # forward's context instead, outside autograd (2e·bs·hd bytes, not counted there).
        other += 2 * e * bs * hd
    if cfg.norm_position == "pre" or recompute == "full":  # the last block's output feeds the final norm / head
        other += norm(bs * h, bs) + e * bs * h if cfg.final_norm else e * bs * h
    else:  # post-norm: the embedding output is layer 0's input; the last block's output is a norm output
        other += e * bs * h + (norm(bs * h, bs, input_counted=True) + e * bs * h if cfg.final_norm else 0)
    # Backward starts at the head with every activation still saved and allocates the fp32 gradient of the
    # log-softmax and of the (upcast) logits, b·s·V each: 8·b·s·V bytes on top (H100: 8,381,372 measured
    # for 8,388,608 predicted, every config and dtype of benchmarks/estimate_memory.py).
    head = 8 * bs * V
    if p > 1:
        other = head = 0  # the first stage holds embeddings only; the head lives on the last stage
    if recompute == "full":
        text, nums = "L · e·bsh (block inputs)", f"{L} · {e} · {b} · {s} · {h}"
    else:
        text = "L · (norms + attention + FFN)"
        nums = f"{L} · ({norms:,} + {attn:,} + {mlp:,})"
    return Activations(per_layer, per_layer * L, other, text, nums, head)


# ---- training --------------------------------------------------------------------------------

# precision -> (weight, gradient, master-weight) bytes per parameter, and the optimizer-state dtype
PRECISIONS = {
    "fp32": (4, 4, 0, 4),
    "bf16-mixed": (2, 2, 4, 4),  # Megatron/DeepSpeed: 16-bit weights and grads, fp32 master + moments
    "fp16-mixed": (2, 2, 4, 4),
    "bf16": (2, 2, 0, 2),  # pure bf16: no master copy, bf16 moments
}
# optimizer -> (states per parameter, bytes per state or None for the precision's state dtype)
OPTIMIZERS = {"adamw": (2, None), "adamw-8bit": (2, 1), "sgd-momentum": (1, None), "sgd": (0, None)}
_BNB_BLOCK = 2048  # bitsandbytes block-wise 8-bit states: one fp32 absmax per 2048 values per state


@dataclass(frozen=True, slots=True)
class TrainingMemory:
    params: int
    weights: float
    gradients: float
    master_weights: float
    optimizer_states: float
    activations: float
    overhead: float
    steps: list[Step] = field(default_factory=list, compare=False)

    @property
    def model_states(self) -> float:
        return self.weights + self.gradients + self.master_weights + self.optimizer_states

    @property
    def total(self) -> float:
        """Model states + activations; `overhead` is separate (see `total_with_overhead`)."""
        return self.model_states + self.activations

    @property
    def total_with_overhead(self) -> float:
        return self.total + self.overhead

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params, "weights": self.weights, "gradients": self.gradients,
                "master_weights": self.master_weights, "optimizer_states": self.optimizer_states,
                "model_states": self.model_states, "activations": self.activations, "total": self.total,
                "overhead": self.overhead, "total_with_overhead": self.total_with_overhead,
                "steps": [s.as_dict() for s in self.steps]}


def training_memory(cfg: ConfigLike, *, batch: int = 1, seq_len: int | None = None, precision: str = "bf16-mixed",
                    optimizer: str = "adamw", zero: int = 0, dp: int = 1, tp: int = 1, pp: int = 1,
                    recompute: str = "none", flash: bool = True, sequence_parallel: bool = False,
                    activations: str = "llmlab", overhead: int = DEFAULT_OVERHEAD) -> TrainingMemory:
    """Bytes per device for one training step; `batch` is the micro-batch per device."""
    cfg = resolve(cfg)
    seq_len = cfg.max_position_embeddings if seq_len is None else seq_len
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
    if zero not in (0, 1, 2, 3):
        raise ConfigError(f"ZeRO stage must be 0, 1, 2 or 3, got {zero}.")
    for name, value in (("batch", batch), ("seq_len", seq_len), ("dp", dp), ("tp", tp), ("pp", pp)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}.")
    if cfg.num_layers % pp:
        raise ConfigError(f"pp={pp} does not divide the {cfg.num_layers} layers; choose a divisor.")
    w_b, g_b, m_b, state_b = PRECISIONS[precision]
    n_states, bytes_per_state = OPTIMIZERS[optimizer]
    o_b = n_states * (bytes_per_state or state_b)
    if optimizer == "adamw-8bit":
        o_b += n_states * 4 / _BNB_BLOCK
    n = count_params(cfg)
    phi = n / (tp * pp)  # parameters per model-parallel shard (embeddings assumed spread evenly)
    shard = lambda stage: dp if zero >= stage else 1  # noqa: E731
    weights, grads = phi * w_b / shard(3), phi * g_b / shard(2)
    master, states = phi * m_b / shard(1), phi * o_b / shard(1)
    act_dtype = "fp32" if precision == "fp32" else "bf16"
    act = activation_bytes(cfg, batch, seq_len, formula=activations, dtype=act_dtype, recompute=recompute,
                           flash=flash, tp=tp, pp=pp, sequence_parallel=sequence_parallel, device="cuda")
    div = lambda stage: f" / {dp}" if zero >= stage and dp > 1 else ""  # noqa: E731
    if activations == "megatron":  # with pp > 1 the first stage, reported here, holds no LM head
        outside = "sbhp/t (embedding dropout; the head is on the last stage)" if pp > 1 else "sbhp/t + 4sbh/t (1 + v/h)"
    else:
        outside = ("none on the first stage (the head is on the last stage)" if pp > 1
                   else "ids, labels, position tables, final norm, fp32 log-softmax")
    steps = [Step("parameters", n, "params", "N" if tp * pp > 1 else "N = Φ (no tensor or pipeline split)")]
    if tp * pp > 1:
        steps.append(Step("parameters per device Φ", phi, "params", "N / (tp · pp)", f"{num(n)} / ({tp} · {pp})"))
    steps += [
        Step("weights", weights, "B", f"Φ · {w_b} B" + (" / dp (ZeRO-3)" if zero >= 3 else ""),
             f"{num(phi)} · {w_b}{div(3)}"),
        Step("gradients", grads, "B", f"Φ · {g_b} B" + (" / dp (ZeRO-2)" if zero >= 2 else ""),
             f"{num(phi)} · {g_b}{div(2)}"),
        Step("master weights (fp32)", master, "B", f"Φ · {m_b} B" + (" / dp (ZeRO-1)" if zero >= 1 else ""),
             f"{num(phi)} · {m_b}{div(1)}"),
        Step(f"optimizer states ({optimizer})", states, "B", f"Φ · {o_b:g} B" + (" / dp (ZeRO-1)" if zero >= 1 else ""),
             f"{num(phi)} · {o_b:g}{div(1)}"),
        Step("model states", weights + grads + master + states, "B",
             f"Φ · ({w_b} + {g_b} + {m_b} + {o_b:g}) = {w_b + g_b + m_b + o_b:g} B/param before ZeRO"),
        Step(f"activations per layer ({activations})", act.per_layer, "B", act.formula.split(" · ", 1)[-1],
             act.numbers.split(" · ", 1)[-1]),
        Step(f"activations, {cfg.num_layers} layers", act.layers, "B", act.formula, act.numbers),
        Step("activations outside layers", act.other, "B", outside),
        Step("total (model states + activations)", weights + grads + master + states + act.total, "B"),
        Step("framework overhead (assumed, separate)", overhead, "B", "CUDA context + allocator slack"),
    ]
    return TrainingMemory(n, weights, grads, master, states, act.total, overhead, steps)


# ---- inference -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InferenceMemory:
    weights: int
    kv_cache: int
    activations: float
    overhead: float
    steps: list[Step] = field(default_factory=list, compare=False)

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations

    @property
    def total_with_overhead(self) -> float:
        return self.total + self.overhead

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                "total": self.total, "overhead": self.overhead, "total_with_overhead": self.total_with_overhead,
                "steps": [s.as_dict() for s in self.steps]}


def prefill_activation_bytes(cfg: ModelConfig, batch: int, tokens: int, dtype: str = "bf16",
                             flash: bool = True) -> float:
    """Peak transient activations of a no-grad forward over `tokens` new tokens per sequence.

    The residual stream plus the larger of the attention (q, k, v, output; fp32 scores and weights
    without a fused kernel) and the FFN intermediates, plus fp32 logits of the last position (the
    engine samples from those only). A model of the peak, not a measurement."""
    e, bs = dtype_bytes(dtype), batch * tokens
    H, Hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn = e * bs * (2 * H + 2 * Hkv) * hd + (0 if flash else 8 * batch * H * tokens * tokens)
    ffn = e * bs * (3 if cfg.gated_ffn else 2) * cfg.intermediate_size
    return e * bs * cfg.hidden_size + max(attn, ffn) + 4 * batch * cfg.vocab_size


def inference_memory(cfg: ConfigLike, *, batch: int = 1, context: int | None = None, weights: str = "bf16",
                     kv_dtype: str = "bf16", prefill: int | None = None, flash: bool = True,
                     overhead: int = DEFAULT_OVERHEAD) -> InferenceMemory:
    """Bytes to serve `batch` sequences of up to `context` tokens (prefill chunk defaults to the context).
    weights="gguf": a .gguf MODEL's tensors as the file stores them (see `weight_bytes`)."""
    model, cfg = cfg, resolve(cfg)
    context = cfg.max_position_embeddings if context is None else context
    if batch < 1 or context < 1:
        raise ConfigError(f"batch and context must be at least 1, got {batch} and {context}.")
    if prefill is not None and prefill < 1:
        raise ConfigError(f"prefill must be at least 1 token, got {prefill}.")
    prefill = context if prefill is None else min(prefill, context)
    act_dtype = weights if weights in ("fp32", "fp16") else "bf16"
    w = weight_bytes(model, weights, other=act_dtype)
    kv = kv_cache_bytes(cfg, batch, context, kv_dtype)
    act = prefill_activation_bytes(cfg, batch, prefill, act_dtype, flash)
    steps = [
        Step("parameters", count_params(cfg), "params"),
        _weights_step(model, cfg, weights, w, act_dtype),
        _kv_step(cfg, batch, context, kv_dtype),
        Step("peak activations (prefill)", act, "B",
             "e·b·s·(h + max(attention, FFN)) + 4·b·vocab" + ("" if flash else " (+ 8·b·heads·s² fp32 scores)"),
             f"{dtype_bytes(act_dtype)} · {batch} · {prefill} · ({cfg.hidden_size} + max(...)) + 4 · {batch} · "
             f"{cfg.vocab_size}"),
        Step("total (weights + KV + activations)", w + kv + act, "B"),
        Step("framework overhead (assumed, separate)", overhead, "B", "CUDA context + allocator slack"),
    ]
    return InferenceMemory(w, kv, act, overhead, steps)


def _weights_step(model: ConfigLike, cfg: ModelConfig, weights: str, w: int, other: str) -> Step:
    if weights == "gguf":
        by_type = gguf_tensor_bytes(model)
        return Step("weights (the .gguf's tensors)", w, "B", f"Σ tensor bytes as stored: {' + '.join(by_type)}",
                    " + ".join(f"{v:,}" for v in by_type.values()))
    fmt, n = WEIGHT_FORMATS[weights], count_params(cfg)
    if fmt.bits >= 16:
        return Step(f"weights ({weights})", w, "B", f"N · {fmt.bits // 8} B", f"{num(n)} · {fmt.bits // 8}")
    return Step(f"weights ({weights})", w, "B", f"layer matrices at {fmt.bits} bits + {fmt.note}; "
                f"embeddings, LM head and norms in {other}")


def max_fitting(cfg: ConfigLike, capacity: float, *, vary: str, batch: int = 1, context: int | None = None,
                **kwargs: Any) -> int:
    """The largest batch (vary="batch") or context (vary="context") whose total + overhead fits `capacity` bytes.

    Contexts are capped at the model's max_position_embeddings. Returns 0 when not even one fits."""
    model, cfg = cfg, resolve(cfg)
    if kwargs.get("weights") != "gguf":  # the file itself only where its tensors count: else resolved once
        model = cfg
    context = cfg.max_position_embeddings if context is None else context

    def fits(x: int) -> bool:
        b, c = (x, context) if vary == "batch" else (batch, x)
        return inference_memory(model, batch=b, context=c, **kwargs).total_with_overhead <= capacity

    if vary not in ("batch", "context"):
        raise ConfigError(f"vary must be 'batch' or 'context', got {vary!r}.")
    if not fits(1):
        return 0
    if vary == "context" and fits(cfg.max_position_embeddings):
        return cfg.max_position_embeddings
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 2**40:
            return lo
    while hi - lo > 1:  # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
