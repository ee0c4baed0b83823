"""ModelConfig: the one description of a decoder-only Transformer, and its Hugging Face mapping.

One dataclass covers GPT-2, LLaMA (incl. llama3 RoPE scaling, GQA/MQA), Qwen2, Qwen3, Mistral and
the textbook variants the explain experiments need (post-LN, sinusoidal/ALiBi positions, ReLU FFN,
embedding x sqrt(d_model)). It is validated once, in `__post_init__`, with messages for people.

`from_hf_dict` / `to_hf_dict` translate to and from a Hugging Face `config.json`; both the
transformers v4 layout (`rope_theta` + `rope_scaling`) and v5 (`rope_parameters`) are read.
`hf_model_type` is the one decision of which architecture a checkpoint is written as (config.json
and tensor names both follow it): a declared HF model_type must express the shape exactly (refused
at construction otherwise); a "llmlab" config is written as the first HF architecture that does,
else with `model_type: "llmlab"`.

Not here: tokenizer settings (tokenizer/), training hyper-parameters (train/).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError, is_number

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
HF_MODEL_TYPES = ("gpt2", "llama", "qwen2", "qwen3", "mistral")
ROPE_TYPES = ("default", "llama3", "linear")
_ROPE_KEYS = {"linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


@dataclass(slots=True)
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None  # None -> num_heads (MHA); 1 -> MQA; in between -> GQA
    head_dim: int | None = None  # None -> hidden_size // num_heads
    intermediate_size: int | None = None  # None -> 4 * hidden_size
    max_position_embeddings: int = 2048

    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"  # "pre" (GPT-2/LLaMA) or "post" (original Transformer)
    final_norm: bool = True
    activation: str = "silu"
    gated_ffn: bool = True  # SwiGLU when activation == "silu"

    position: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3"|"linear", "factor": ..., ...}
    sliding_window: int | None = None  # Mistral-style: a query sees at most this many keys

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False  # LayerNorm with bias (GPT-2); RMSNorm never has one
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    tie_word_embeddings: bool = False
    embedding_scale: bool = False  # multiply token embeddings by sqrt(hidden_size)
    dropout: float = 0.0  # embedding, attention-probability and residual dropout

    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    model_type: str = "llmlab"  # the HF architecture this config came from / exports to
    extra: dict[str, Any] = field(default_factory=dict)  # HF keys we keep but do not interpret

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}.")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}: "
                    "choose sizes that divide, or set head_dim explicitly."
                )
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}: "
                "each KV head must serve the same number of query heads (GQA)."
            )
        _choice("norm", self.norm, NORMS)
        _choice("norm_position", self.norm_position, ("pre", "post"))
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("position", self.position, POSITIONS)
        if self.position == "rope":
            if self.head_dim % 2:
                raise ConfigError(f"RoPE needs an even head_dim, got {self.head_dim}.")
            if self.rope_scaling is not None:
                kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
                _choice("rope_scaling.rope_type", kind, ROPE_TYPES)
                for key in _ROPE_KEYS.get(kind, ()):  # the fields rope_inv_freq reads, as positive numbers
                    value = self.rope_scaling.get(key)
                    if not (is_number(value) and value > 0):
                        raise ConfigError(f"rope_scaling of type {kind} needs {key} as a positive number, got "
                                          f"{value!r}; set it (or drop the scaling).")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if not (is_number(value) and value > 0):
                raise ConfigError(f"ModelConfig.{name} must be a positive number, got {value!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window must be positive or None, got {self.sliding_window}.")
        if self.norm == "rmsnorm" and self.norm_bias:
            raise ConfigError("RMSNorm has no bias: set norm_bias=False or norm='layernorm'.")
        if self.model_type != "llmlab":
            _choice("model_type", self.model_type, ("llmlab", *HF_MODEL_TYPES))
            if (clash := self._hf_mismatch(self.model_type)) is not None:
                name, value, needed = clash
                raise ConfigError(
                    f"model_type {self.model_type!r} cannot express {name}={value!r} (a {self.model_type} model "
                    f"has {name}={needed!r}); set model_type='llmlab' to keep this shape, or set {name}={needed!r}."
                )

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def eos_ids(self) -> frozenset[int]:
        """eos_token_id as a set of ids (HF configs give one id, a list of them, or none)."""
        eos = self.eos_token_id
        return frozenset([eos] if isinstance(eos, int) else eos or [])

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig keys {unknown}; valid keys are {sorted(known)}.")
        return cls(**d)

    # ---- Hugging Face config.json ----------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        model_type = d.get("model_type")
        if model_type == "llmlab":
            return _config(source, **{k: v for k, v in d.items() if k not in ("architectures", "torch_dtype",
                                                                             "dtype", "transformers_version")})
        if model_type not in HF_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported; llmlab loads "
                f"{', '.join(HF_MODEL_TYPES)} (or its own 'llmlab' configs)."
            )
        if model_type == "gpt2":
            return _from_gpt2(d, source)
        return _from_llama_family(d, model_type, source)

    @property
    def hf_model_type(self) -> str:
        """The architecture a checkpoint of this model is written as: the declared HF model_type
        (validated to fit), else the first HF architecture that expresses the shape exactly, else
        "llmlab". `to_hf_dict` and the tensor names (model/convert.py `llmlab_to_hf`) both follow it."""
        if self.model_type in HF_MODEL_TYPES:
            return self.model_type
        return next((t for t in ("llama", "qwen3", "qwen2", "mistral", "gpt2") if self._hf_mismatch(t) is None),
                    "llmlab")

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json for this model, written as `hf_model_type`."""
        kind = self.hf_model_type
        if kind == "gpt2":
            return _to_gpt2(self.replace(model_type="gpt2"))
        if kind != "llmlab":
            return _to_llama_family(self.replace(model_type=kind))
        d = self.to_dict()
        d["model_type"] = "llmlab"
        return d

    def _hf_mismatch(self, kind: str) -> tuple[str, Any, Any] | None:
        """The first (field, value, value the HF architecture `kind` has) this config disagrees on; None if
        `kind` expresses it exactly. Dropout is not compared: it changes neither weights nor inference."""
        if kind == "gpt2":
            head_dim = self.hidden_size // self.num_heads if self.hidden_size % self.num_heads == 0 else None
            needed = dict(norm="layernorm", norm_bias=True, norm_position="pre", final_norm=True,
                          position="learned", gated_ffn=False, qkv_bias=True, o_bias=True, mlp_bias=True,
                          num_kv_heads=self.num_heads, head_dim=head_dim,
                          embedding_scale=False, qk_norm=False, sliding_window=None)
        else:
            qkv_bias, o_bias = _bias_layout(kind, self.qkv_bias)
            needed = dict(norm="rmsnorm", norm_position="pre", final_norm=True, position="rope", gated_ffn=True,
                          qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=False, embedding_scale=False,
                          qk_norm=kind == "qwen3")
            if kind != "mistral":
                needed["sliding_window"] = None
        return next(((name, getattr(self, name), value) for name, value in needed.items()
                     if getattr(self, name) != value), None)


def load_hf_config(path: str | Path) -> ModelConfig:
    """Read a Hugging Face `config.json` (or llmlab's own) into a ModelConfig."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: a model directory needs a config.json.") from None
    except UnicodeDecodeError:  # a weights file (model.safetensors) given where its config.json belongs
        raise ConfigError(f"{path} is not a text file, so not a config.json (a weights file?); pass the model "
                          "directory or its config.json.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}).") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path} holds a JSON {type(d).__name__}, not an object of config keys.")
    return ModelConfig.from_hf_dict(d, source=str(path))


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _config(source: str, **kw: Any) -> ModelConfig:
    """ModelConfig.from_dict(kw), its errors naming the file the values came from."""
    try:
        return ModelConfig.from_dict(kw)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _required(d: dict[str, Any], source: str, *keys: str) -> None:
    missing = [k for k in keys if d.get(k) is None]
    if missing:
        raise ConfigError(f"{source} lacks the required key(s) {', '.join(missing)}; "
                          f"a {d.get('model_type')} config.json must set them.")


_HF_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
           "silu": "silu", "swish": "silu"}
_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _hf_act(name: str, source: str) -> str:
    if name not in _HF_ACT:
        raise ConfigError(f"{source}: activation {name!r} is not supported; use one of {sorted(_HF_ACT)}.")
    return _HF_ACT[name]


def _from_gpt2(d: dict[str, Any], source: str) -> ModelConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if d.get(flag):
            raise ConfigError(f"{source}: GPT-2 option {flag}=true is not supported by llmlab.")
    if d.get("scale_attn_weights") is False:
        raise ConfigError(f"{source}: GPT-2 with scale_attn_weights=false is not supported by llmlab.")
    _required(d, source, "vocab_size", "n_embd", "n_layer", "n_head", "n_positions")
    return _config(
        source, vocab_size=d["vocab_size"], hidden_size=d["n_embd"], num_layers=d["n_layer"], num_heads=d["n_head"],
        intermediate_size=d.get("n_inner") or 4 * d["n_embd"], max_position_embeddings=d["n_positions"],
        norm="layernorm", norm_bias=True, norm_eps=d.get("layer_norm_epsilon", 1e-5),
        activation=_hf_act(d.get("activation_function", "gelu_new"), source), gated_ffn=False,
        position="learned", qkv_bias=True, o_bias=True, mlp_bias=True,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),  # transformers' GPT-2 default: tied
        dropout=0.0, initializer_range=d.get("initializer_range", 0.02), model_type="gpt2",
        **{k: d.get(k) for k in _TOKENS},
    )


def _to_gpt2(c: ModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
        "n_embd": c.hidden_size, "n_layer": c.num_layers, "n_head": c.num_heads,
        "n_inner": c.intermediate_size, "n_positions": c.max_position_embeddings,
        "layer_norm_epsilon": c.norm_eps,
        "activation_function": {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[c.activation],
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
        "initializer_range": c.initializer_range, "tie_word_embeddings": c.tie_word_embeddings,
        **{k: getattr(c, k) for k in _TOKENS},
    }


def _rope_from_hf(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either transformers v4 or v5 keys."""
    params = d.get("rope_parameters")
    if params:  # v5: {"rope_type": ..., "rope_theta": ..., scaling fields}
        theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = d.get("rope_theta", 10000.0)  # a number: ModelConfig checks it
        scaling = dict(d["rope_scaling"]) if d.get("rope_scaling") else {}
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default":
        return theta, None
    return theta, scaling


def _from_llama_family(d: dict[str, Any], model_type: str, source: str) -> ModelConfig:
    theta, scaling = _rope_from_hf(d)
    if scaling and scaling.get("rope_type") not in ROPE_TYPES:
        raise ConfigError(f"{source}: rope_type {scaling.get('rope_type')!r} is not supported; "
                          f"llmlab implements {', '.join(ROPE_TYPES)}.")
    _required(d, source, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size")
    heads = d["num_attention_heads"]
    qkv_bias, o_bias = _bias_layout(model_type, bool(d.get("attention_bias", False)))
    if d.get("use_sliding_window"):
        raise ConfigError(f"{source}: {model_type} with use_sliding_window=true (per-layer windows) is not "
                          "supported by llmlab; set it to false.")
    window = d.get("sliding_window") if model_type == "mistral" else None
    if d.get("mlp_bias"):
        raise ConfigError(f"{source}: mlp_bias=true is not supported by llmlab.")
    return _config(
        source, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
        num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads, head_dim=d.get("head_dim"),
        intermediate_size=d["intermediate_size"], max_position_embeddings=d.get("max_position_embeddings", 2048),
        norm="rmsnorm", norm_eps=d.get("rms_norm_eps", 1e-6), activation=_hf_act(d.get("hidden_act", "silu"), source),
        gated_ffn=True, position="rope", rope_theta=theta, rope_scaling=scaling, sliding_window=window,
        qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=model_type == "qwen3",
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        initializer_range=d.get("initializer_range", 0.02), model_type=model_type,
        **{k: d.get(k) for k in _TOKENS},
    )


def _bias_layout(model_type: str, attention_bias: bool) -> tuple[bool, bool]:
    """(q/k/v bias, o bias) as each HF architecture builds its attention projections."""
    if model_type == "qwen2":
        return True, False
    if model_type == "mistral":
        return False, False
    return attention_bias, attention_bias  # llama, qwen3: one flag for all four


_LLAMA_ACT = {"gelu_tanh": "gelu_pytorch_tanh"}  # HF's name for exactly F.gelu(approximate="tanh")
_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
         "mistral": "MistralForCausalLM"}


def _to_llama_family(c: ModelConfig) -> dict[str, Any]:
    rope = {"rope_type": "default", **(c.rope_scaling or {}), "rope_theta": c.rope_theta}
    d: dict[str, Any] = {
        "architectures": [_ARCH[c.model_type]], "model_type": c.model_type, "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.norm_eps,
        "hidden_act": _LLAMA_ACT.get(c.activation, c.activation), "tie_word_embeddings": c.tie_word_embeddings,
        "initializer_range": c.initializer_range, "attention_dropout": c.dropout,
        # Both spellings, so transformers v4 and v5 read the same RoPE.
        "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling, "rope_parameters": rope,
        **{k: getattr(c, k) for k in _TOKENS},
    }
    if c.model_type in ("llama", "qwen3"):
        d["attention_bias"] = c.qkv_bias
    if c.model_type in ("qwen2", "qwen3"):
        d["use_sliding_window"] = False
    d["sliding_window"] = c.sliding_window
    return d
