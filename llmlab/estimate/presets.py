"""Where an estimate's model comes from: a ModelConfig, an HF config dict or file, a GGUF file, or a preset.

`resolve(cfg)` turns any of those into a `ModelConfig`. The presets are the published Hugging Face
`config.json` values of well-known models (only the keys that change a count), so
`llmlab estimate params llama2-7b` works offline. GPT-3 175B (Brown et al. 2020, Table 2.1) is
expressed as a GPT-2-architecture config: same shapes (96 layers, d=12288, 96 heads, vocab 50257,
context 2048); its alternating sparse attention has no parameters of its own.

Not here: downloading anything. A GGUF file is read for its metadata and tensor names only
(by `llmlab.model.convert.config_from_gguf`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmlab.config import ModelConfig, load_hf_config
from llmlab.errors import ConfigError

ConfigLike = ModelConfig | dict[str, Any] | str | Path


def _gpt2(n_embd: int, n_layer: int, n_head: int, n_positions: int = 1024) -> dict[str, Any]:
    return {"model_type": "gpt2", "vocab_size": 50257, "n_embd": n_embd, "n_layer": n_layer,
            "n_head": n_head, "n_positions": n_positions}


def _llama(model_type: str, vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int,
           ctx: int, theta: float, tied: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model_type": model_type, "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "max_position_embeddings": ctx, "rope_theta": theta, "tie_word_embeddings": tied, **extra}


# name -> HF config.json keys (values as published on the models' Hugging Face pages).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "gpt3-175b": _gpt2(12288, 96, 96, n_positions=2048),
    "llama-7b": _llama("llama", 32000, 4096, 11008, 32, 32, 32, 2048, 1e4),
    "llama2-7b": _llama("llama", 32000, 4096, 11008, 32, 32, 32, 4096, 1e4),
    "llama2-13b": _llama("llama", 32000, 5120, 13824, 40, 40, 40, 4096, 1e4),
    "llama2-70b": _llama("llama", 32000, 8192, 28672, 80, 64, 8, 4096, 1e4),
    "llama3-8b": _llama("llama", 128256, 4096, 14336, 32, 32, 8, 8192, 5e5),
    "llama3-70b": _llama("llama", 128256, 8192, 28672, 80, 64, 8, 8192, 5e5),
    "mistral-7b": _llama("mistral", 32000, 4096, 14336, 32, 32, 8, 32768, 1e4, sliding_window=4096),
    "qwen2.5-0.5b": _llama("qwen2", 151936, 896, 4864, 24, 14, 2, 32768, 1e6, tied=True),
    "qwen2.5-1.5b": _llama("qwen2", 151936, 1536, 8960, 28, 12, 2, 32768, 1e6, tied=True),
    "qwen2.5-7b": _llama("qwen2", 152064, 3584, 18944, 28, 28, 4, 32768, 1e6),
    "qwen3-0.6b": _llama("qwen3", 151936, 1024, 3072, 28, 16, 8, 40960, 1e6, tied=True, head_dim=128),
    "qwen3-1.7b": _llama("qwen3", 151936, 2048, 6144, 28, 16, 8, 40960, 1e6, tied=True, head_dim=128),
    "qwen3-8b": _llama("qwen3", 151936, 4096, 12288, 36, 32, 8, 40960, 1e6, head_dim=128),
    "smollm2-135m": _llama("llama", 49152, 576, 1536, 30, 9, 3, 8192, 1e5, tied=True),
    "smollm2-360m": _llama("llama", 49152, 960, 2560, 32, 15, 5, 8192, 1e5, tied=True),
    "smollm2-1.7b": _llama("llama", 49152, 2048, 8192, 24, 32, 32, 8192, 1.3e5, tied=True),
}


def resolve(cfg: ConfigLike) -> ModelConfig:
    """A ModelConfig from a ModelConfig, an HF config dict, a preset name, a config.json/dir or a .gguf path."""
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, dict):
        return ModelConfig.from_hf_dict(cfg, source="config dict")
    if not isinstance(cfg, (str, Path)):
        raise ConfigError(f"cannot estimate from a {type(cfg).__name__}: pass a ModelConfig, an HF config "
                          "dict, a preset name, a config.json path or a .gguf path.")
    key = str(cfg).lower()
    if key in PRESETS:
        return ModelConfig.from_hf_dict(PRESETS[key], source=f"preset {key}")
    path = Path(cfg)
    if path.suffix == ".gguf":
        return _config_from_gguf(path)
    if path.is_dir():
        return load_hf_config(path / "config.json")
    if path.is_file():
        return load_hf_config(path)
    raise ConfigError(f"{cfg!s} is neither a preset nor an existing file; use a config.json, a model "
                      f"directory, a .gguf file, or one of the presets: {', '.join(PRESETS)}.")


def _config_from_gguf(path: Path) -> ModelConfig:
    from llmlab.gguf_file import open_gguf
    from llmlab.model.convert import config_from_gguf

    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass the path of a .gguf model file.")
    try:
        reader = open_gguf(path)
    except Exception as e:  # noqa: BLE001 (the gguf package raises ValueError, IndexError, struct errors ...)
        raise ConfigError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); "
                          "re-download or re-convert it.") from None
    try:
        return config_from_gguf(reader, source=str(path))
    except ConfigError:
        raise
    except (ValueError, TypeError, ArithmeticError) as e:  # e.g. a head count stored as text, or zero
        raise ConfigError(f"{path} has unusable GGUF metadata ({type(e).__name__}: {e}); "
                          "re-convert it with llama.cpp's convert_hf_to_gguf.py.") from None


def preset_hf_dict(name: str) -> dict[str, Any]:
    """A copy of a preset's HF config keys (for building the reference `transformers` model)."""
    return json.loads(json.dumps(PRESETS[name]))
