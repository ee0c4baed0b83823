"""TrainConfig: everything one training run needs, from a preset, a TOML file and `--key value` flags.

    llmlab train --preset tiny-cpu --data runs/shards --max_steps 200 --model.num_layers 4

A TOML file has top-level run keys and a `[model]` table of ModelConfig fields. Unknown keys,
values of the wrong type and values out of range are refused up front, naming the key. With
`init_from`, the model is the checkpoint's: model keys may only restate it (dropout aside).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab import artifacts
from llmlab.config import ModelConfig, load_hf_config
from llmlab.errors import ConfigError, is_int, is_number

# attention_backend's values (train/attention_backend.py; here so that reading a config needs no torch)
ATTENTION_CHOICES = ("auto", "default", "flash", "cudnn", "efficient", "math")

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(slots=True)
class TrainConfig:
    # each field's one-line meaning is in FIELD_DOCS below (`llmlab train --help` lists them)
    data: str = ""
    out: str = "runs/train"
    init_from: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)

    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int = 256
    max_steps: int = 1000
    time_budget_s: float = 0.0

    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0

    precision: str = "fp32"
    activation_checkpointing: bool = False
    compile: bool = False
    attention_backend: str = "auto"  # see llmlab/train/attention_backend.py
    device: str = "auto"

    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    ckpt_every: int = 0
    keep_last: int = 2
    seed: int = 1337
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("data", "out", "init_from"):  # a Path is fine, kept as str: the config is saved as JSON
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(_checked_model(self.model))
        self.validate()

    def validate(self) -> None:
        """Refuse a value of the wrong type or out of range, naming the field. `train` calls it again, since
        fields may be set after construction."""
        for f in dataclasses.fields(self):
            if f.name != "model":
                setattr(self, f.name, _checked(f.name, getattr(self, f.name), f.type))
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig or a dict of its fields, got {self.model!r}.")
        for name in _POSITIVE_INTS:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name, meaning_of_zero in _ZERO_MEANS.items():
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: {meaning_of_zero}), got {getattr(self, name)}.")
        for name, (ok, rule) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and ok(value)):
                raise ConfigError(f"{name} must be {rule}, got {value}.")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}.")
        self.precision, self.device = self.precision.lower(), self.device.lower()  # FP16, CUDA as well
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")
        if self.seq_len > self.model.max_position_embeddings:
            fix = (f"shorten seq_len to at most {self.model.max_position_embeddings} (init_from's checkpoint fixes "
                   "the context)" if self.init_from else "shorten seq_len or enlarge the context")
            raise ConfigError(f"seq_len {self.seq_len} is above the model's context of "
                              f"{self.model.max_position_embeddings} (model.max_position_embeddings); {fix}.")
        if self.attention_backend not in ATTENTION_CHOICES:
            raise ConfigError(f"attention_backend must be one of {', '.join(ATTENTION_CHOICES)}; "
                              f"got {self.attention_backend!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda; got {self.device!r}.")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_DOCS: dict[str, str] = {
    "data": "shard directory from `llmlab data prepare`; required",
    "out": "run directory: checkpoints/, metrics.jsonl, loss.png",
    "init_from": "start from a pretrained checkpoint directory, .gguf or registry name (it fixes the model)",
    "model": "the model: set its fields as model.KEY (e.g. --model.num_layers 6)",
    "batch_size": "sequences per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "seq_len": "tokens per sequence (at most model.max_position_embeddings)",
    "max_steps": "optimizer steps of the whole run (--resume continues up to it)",
    "time_budget_s": "> 0: stop early (and say so) after this many seconds; 0: no budget",
    "lr": "peak learning rate (linear warmup, then cosine decay)",
    "min_lr_ratio": "final learning rate as a fraction of lr, in [0, 1]",
    "warmup_steps": "steps of linear warmup (0: none)",
    "weight_decay": "AdamW decoupled weight decay of the weight matrices (not embeddings, norms or biases)",
    "beta1": "AdamW first-moment decay, in [0, 1)",
    "beta2": "AdamW second-moment decay, in [0, 1)",
    "eps": "AdamW denominator epsilon",
    "grad_clip": "clip the global gradient norm to this (0: no clipping)",
    "precision": f"one of {', '.join(PRECISIONS)} (bf16/fp16: autocast; fp16 adds loss scaling)",
    "activation_checkpointing": "recompute each block's activations in backward (less memory, more compute)",
    "compile": "torch.compile the model, loss and optimizer step",
    "attention_backend": f"preferred fused SDPA kernel: {', '.join(ATTENTION_CHOICES)} (auto: timed on a GPU)",
    "device": "auto, cpu or cuda (auto: cuda when available)",
    "eval_every": "steps between validation losses (0: only at the end)",
    "eval_batches": "validation batches per evaluation",
    "log_every": "steps between logged train losses (metrics.jsonl, progress bar)",
    "ckpt_every": "steps between checkpoints (0: only at the end; Ctrl-C also saves the step it stops at)",
    "keep_last": "checkpoints kept on disk (older ones are deleted)",
    "seed": "seed of the initial weights, data order and dropout",
    "progress": "show a progress bar (true/false)",
}


def run_keys_help(width: int = 100) -> str:
    """`llmlab train --help`'s list of run keys: every TrainConfig field, its default and its meaning."""
    def shown(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else ("none" if v == "" else str(v))

    rows = [(f"--{f.name}", f"{FIELD_DOCS[f.name]} (default {shown(f.default)})")
            for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    key_width = max(len(k) for k, _ in rows) + 2
    lines = ["run keys (--KEY VALUE or --KEY=VALUE; the defaults are before --preset / --config):"]
    for key, doc in rows:
        lines += textwrap.wrap(doc, width, initial_indent=f"  {key:<{key_width}}",
                               subsequent_indent=" " * (key_width + 2))
    model_keys = ", ".join(f.name for f in dataclasses.fields(ModelConfig))
    lines += ["", *textwrap.wrap(f"model keys (--model.KEY VALUE): {model_keys}", width, subsequent_indent="  ")]
    return "\n".join(lines)


_POSITIVE_INTS = ("batch_size", "grad_accum", "seq_len", "max_steps", "eval_batches", "log_every", "keep_last")
_ZERO_MEANS = {"warmup_steps": "no warmup", "eval_every": "no evaluation during the run",
               "ckpt_every": "a checkpoint only at the end"}
# float field -> (test, the rule it states); every float must also be finite
_FLOAT_RANGES = {
    "time_budget_s": (lambda v: v >= 0, ">= 0 seconds (0: no budget)"),
    "lr": (lambda v: v > 0, "a positive learning rate"),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1] (the final lr as a fraction of lr)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: v > 0, "positive"),
    "grad_clip": (lambda v: v >= 0, "a gradient norm >= 0 (0: no clipping)"),
}
_KINDS = {"None": "none", "bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
          "list[int]": "a list of integers"}


def _checked(key: str, value: Any, annotation: str) -> Any:
    """`value` if it has a type that `annotation` ("int | None", "dict[str, Any]", ...) names, else a
    ConfigError. A bool is never a number; an int is a float (and becomes one); numpy scalars become Python ones
(the config is saved as JSON)."""
    kinds = annotation.split(" | ")
    for kind in kinds:
        if _is(kind, value):
            return {"float": float, "int": int}[kind](value) if kind in ("float", "int") else value
    wanted = " or ".join(_KINDS.get(k, "a table (dict)" if k.startswith("dict") else k) for k in kinds)
    raise ConfigError(f"{key} must be {wanted}, got the {type(value).__name__} {value!r}.")


def _is(kind: str, value: Any) -> bool:
    if kind == "int":
        return is_int(value)
    if kind == "float":
        return is_number(value)
    if kind == "list[int]":
        return isinstance(value, list) and all(is_int(v) for v in value)
    if kind.startswith("dict"):
        return isinstance(value, dict)
    return {"None": value is None, "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]


def _checked_model(model: dict[str, Any]) -> dict[str, Any]:
    """Model fields of the right types (ModelConfig itself refuses unknown keys and bad values)."""
    types = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    return {k: _checked(f"model.{k}", v, types[k]) if k in types else v for k, v in model.items()}


def _llama(**kw) -> dict[str, Any]:
    return {"norm": "rmsnorm", "position": "rope", "activation": "silu", "gated_ffn": True,
            "tie_word_embeddings": True, "model_type": "llama", **kw}


PRESETS: dict[str, dict[str, Any]] = {
    # ~2-3M parameters: learns Shakespeare on a 2-core CPU in minutes (the demo).
    "tiny-cpu": dict(model=_llama(hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=2, intermediate_size=512,
                                  max_position_embeddings=256),
                     batch_size=16, seq_len=128, lr=3e-3, warmup_steps=30, eval_every=100, eval_batches=16),
    # GPT-2 small (124M): the GPU benchmark shape.
    "gpt2-small": dict(model={"vocab_size": 50304, "hidden_size": 768, "num_layers": 12, "num_heads": 12,
                              "max_position_embeddings": 1024, "norm": "layernorm", "norm_bias": True,
                              "position": "learned", "activation": "gelu_tanh", "gated_ffn": False,
                              "qkv_bias": True, "o_bias": True, "mlp_bias": True, "tie_word_embeddings": True,
                              "model_type": "gpt2"},
                       batch_size=16, seq_len=1024, lr=6e-4, warmup_steps=100, precision="bf16", device="cuda"),
}


def build_config(*, preset: str | None = None, file: str | Path | None = None,
                 overrides: dict[str, str] | None = None, default_vocab_size: int | None = None,
                 default_eos_token_id: int | None = None) -> TrainConfig:
    """Preset, then TOML file, then overrides (strings parsed by each field's type).

    `default_vocab_size` (the shards' vocabulary) fills model.vocab_size when no layer set it, and
    `default_eos_token_id` (the shards' document separator) model.eos_token_id: the checkpoint's config.json then
    stops `llmlab generate`, `Transformer.generate` and transformers' `generate` at the end of a document, as the
    engine (which also takes the tokenizer's EOS) already did."""
    raw: dict[str, Any] = {}
    file_model_keys: set[str] = set()
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        raw = _merge(raw, PRESETS[preset])
    if file:
        try:
            from_file = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist; pass a TOML file to --config.") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {file} is a directory; pass a TOML file to --config.") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {file} is not UTF-8 text, so not TOML; pass a TOML file to --config.") \
                from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file} is not valid TOML ({e}).") from None
        if not isinstance(from_file.get("model", {}), dict):
            raise ConfigError(f"model in {file} must be a [model] table of ModelConfig fields, got "
                              f"{from_file['model']!r}.")
        file_model_keys = set(from_file.get("model", {}))
        raw = _merge(raw, from_file)
    for key, value in (overrides or {}).items():
        _set(raw, key, value)
    _check_keys(raw)
    model = _checked_model(raw.pop("model", {}))
    init_from = _checked("init_from", raw.get("init_from", ""), "str")
    default_model = file and not preset and not init_from and not set(model) & _SHAPE_KEYS
    if init_from:
        if preset:  # the checkpoint fixes the model: a preset gives only its run keys (and its dropout) then
            user = file_model_keys | {k.replace("-", "_").removeprefix("model.") for k in overrides or {}
                                                if k.replace("-", "_").startswith("model.")}
            model = {k: v for k, v in model.items() if k in user or k == "dropout"}
        model = _from_checkpoint(init_from, model)
    else:
        if default_vocab_size is not None and "vocab_size" not in model:
            model["vocab_size"] = default_vocab_size
        if default_eos_token_id is not None and "eos_token_id" not in model:
            model["eos_token_id"] = default_eos_token_id
    cfg = TrainConfig(model=model, **raw)  # every value checked first
    if default_model:
        raise ConfigError(f"{file} sets no model (no [model] table) and neither --preset nor init_from gives one, so "
                          "it would be ModelConfig's 114M default; add a [model] table (hidden_size, num_layers, "
                          "num_heads, ...) or pass --preset NAME.")
    return cfg


def _from_checkpoint(init_from: str, model: dict[str, Any]) -> dict[str, Any]:
    """The model fields of a run started from `init_from`: the checkpoint's. `model` may restate them and may
    set dropout (a training-time switch, no weights); a key that contradicts them is refused."""
    base = checkpoint_model_config(init_from).to_dict()
    clash = [f"model.{k}={v!r} (the checkpoint has {base[k]!r})" for k, v in model.items()
             if k != "dropout" and v != base[k]]
    if clash:
        raise ConfigError(f"init_from {init_from} fixes the model, which these model keys contradict: "
                          f"{', '.join(clash)}; drop them, or train from scratch without init_from.")
    return {**base, **model}


_SHAPE_KEYS = {"hidden_size", "num_layers", "num_heads", "intermediate_size", "num_kv_heads", "head_dim"}


def checkpoint_model_config(init_from: str) -> ModelConfig:
    """The ModelConfig of a checkpoint directory, .gguf file or registry name (what `from_pretrained` builds)."""
    from llmlab.estimate.presets import resolve as config_only
    from llmlab.model.pretrained import from_pretrained

    path = artifacts.resolve(init_from)  # without the weights: `train` reads those
    if (path / "config.json").is_file():  # with generation_config.json's EOS ids, as from_pretrained adds them
        from llmlab.model.pretrained import with_generation_eos

        return with_generation_eos(load_hf_config(path / "config.json"), path / "generation_config.json")
    if path.suffix == ".gguf" and path.is_file():
        return config_only(path)  # the GGUF's metadata, not its tensors
    return from_pretrained(path).cfg  # a bad path: from_pretrained names the problem


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and k == "model" else v
    return out


def _check_keys(raw: dict) -> None:
    """Refuse unknown keys of a config file (or preset) as the flags are: naming close matches where there are."""
    for key in sorted(raw):
        if key != "model":
            _field(key)
    for key in sorted(raw.get("model", {})):
        _field(f"model.{key}")


def check_override_keys(keys) -> None:
    """Refuse a `--key` that names no TrainConfig / ModelConfig field, suggesting the close ones."""
    for key in keys:
        _field(key.replace("-", "_"))


def is_bool_key(key: str) -> bool:
    """Whether flag `key` ("compile", "model.tie_word_embeddings") names a yes/no field (unknown keys: False)."""
    try:
        return str(_field(key.replace("-", "_"))[2].type).startswith("bool")
    except ConfigError:
        return False


def _field(key: str) -> tuple[type, str, dataclasses.Field]:
    """(the dataclass, the field name, the field) a flag `key` ("lr", "model.num_layers") sets."""
    cls, name = TrainConfig, key
    if key.startswith("model."):
        cls, name = ModelConfig, key.removeprefix("model.")
    if cls is TrainConfig and name == "model":
        raise ConfigError("--model takes no value: set the model's fields one by one, as --model.KEY VALUE "
                          "(e.g. --model.num_layers 6).")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name in fields:
        return cls, name, fields[name]
    prefix = "model." if cls is ModelConfig else ""
    names = [prefix + n for n in fields if n != "model"]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join('--' + c for c in close)}?" if close else
            f"valid {'model' if prefix else 'run'} keys: {', '.join(names)}"
            + ("" if prefix else "; model keys are model.KEY") + " (see llmlab train --help).")
    raise ConfigError(f"unknown config key {key!r}: {cls.__name__} has no field {name!r}; {hint}")


def _set(raw: dict, key: str, value: str) -> None:
    key = key.replace("-", "_")
    cls, name, f = _field(key)
    target = raw.setdefault("model", {}) if cls is ModelConfig else raw
    target[name] = _parse(key, value, str(f.type))


def _parse(key: str, value: str, type_name: str) -> Any:
    if value.lower() == "none" and "None" in type_name:
        return None
    try:
        if "dict" in type_name or "list" in type_name:
            return json.loads(value)  # e.g. --model.rope_scaling '{"rope_type": "linear", "factor": 2.0}'
        if type_name.startswith("bool"):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if type_name.startswith("int"):
            return int(value)
        if type_name.startswith("float"):
            return float(value)
    except ValueError:  # json.JSONDecodeError is one
        if "dict" in type_name or "list" in type_name:
            example = '{"rope_type": "linear", "factor": 2.0}' if "dict" in type_name else "[1, 2]"
            raise ConfigError(f"--{key} expects JSON such as '{example}', or none; got {value!r}.") from None
        kind = type_name.split(" ")[0]
        raise ConfigError(f"--{key} expects {'an' if kind[0] in 'aeiou' else 'a'} {kind} value, got {value!r}.") \
            from None
    return value
