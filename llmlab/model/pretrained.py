"""Load and save checkpoints: Hugging Face directories (safetensors), GGUF files, registry names.

    model = llmlab.from_pretrained("path/to/hf-dir" | "model.gguf" | "smollm2-135m")
    model.save_pretrained("out-dir")   # config.json + model.safetensors, loadable by transformers

Only safetensors, JSON and GGUF are ever read — never pickle (`pytorch_model.bin` is refused with
a pointer to conversion). Every problem with a file is one `CheckpointError` naming the file and,
where it applies, the tensor: a missing config.json or weights file, an unsupported model_type, a
tensor whose shape disagrees with the config, a tensor missing or left over.
"""

from __future__ import annotations

import contextlib

import json
from pathlib import Path

import torch
from torch import Tensor

from llmlab import artifacts
from llmlab.config import ModelConfig, load_hf_config
from llmlab.errors import CheckpointError, ConfigError
from llmlab.model.convert import (
    config_from_gguf,
    gguf_to_llmlab,
    hf_to_llmlab,
    llmlab_to_hf,
)
from llmlab.model.transformer import Transformer

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "float": torch.float32}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A floating-point torch dtype from a dtype or a name ('bf16', 'float32', ...); None is float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype {dtype} is not a floating-point type, so model weights cannot take it; "
                              f"use one of {', '.join(_DTYPES)}.")
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def auto_dtype(source: str | Path, device: str | torch.device) -> torch.dtype:
    """The dtype to load a checkpoint in when none is asked for (vLLM's dtype="auto"): fp32 on a CPU (bf16 runs
    slowly on CPUs without bf16 instructions); on a GPU the checkpoint's own 16-bit dtype (config.json's dtype /
    torch_dtype), bf16 for an fp32 or unstated one, fp16 where the GPU has no bf16 (before Ampere)."""
    if torch.device(device).type != "cuda":
        return torch.float32
    path = Path(source)
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8")) if path.is_dir() else {}
    except (OSError, ValueError):
        cfg = {}
    if not isinstance(cfg, dict):
        cfg = {}
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    stated = cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    dev = torch.device(device)
    if stated == "float16" or not _bf16_supported(dev):
        return torch.float16
    return torch.bfloat16


def _bf16_supported(dev: torch.device) -> bool:
    """Whether the GPU `dev` (the current one where no index is given) computes in bf16 (Ampere and later)."""
    if not torch.cuda.is_available():
        return True  # no GPU to ask: from_pretrained refuses the device with a clear error
    with torch.cuda.device(dev.index if dev.index is not None else torch.cuda.current_device()):
        return torch.cuda.is_bf16_supported()


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch.device that exists on this machine; a clear ConfigError for a bad name or a missing GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {str(dev)!r} was asked for but this machine has no CUDA GPU that PyTorch "
                              "can use; use device='cpu'.")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {str(dev)!r} was asked for but this machine has {count} CUDA GPU(s); "
                              f"use an index below {count}.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' was asked for but MPS is not available here; use device='cpu'.")
    return dev


def from_pretrained(path: str | Path, *, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                    attn_backend: str = "sdpa", **kwargs) -> Transformer:
    """Build a Transformer from an HF directory, a .gguf file or a registry name such as 'smollm2-135m'. dtype: a
    torch dtype or name; None is float32; "auto" is auto_dtype's choice (fp32 on a CPU, the checkpoint's 16-bit
    dtype on a GPU)."""
    if kwargs:
        name = next(iter(kwargs))
        hint = "pass dtype=... (transformers' torch_dtype)" if name == "torch_dtype" else \
            "its keywords are dtype, device and attn_backend"
        raise ConfigError(f"from_pretrained() got an unknown keyword {name!r}; {hint}.")
    device = resolve_device(device)  # bad arguments fail before any reading
    auto = dtype == "auto"
    dtype = None if auto else resolve_dtype(dtype)
    path = artifacts.resolve(path)
    if not path.exists():
        known = ", ".join(artifacts.names("model"))
        raise CheckpointError(f"{path} does not exist; pass an HF model directory, a .gguf file, or one of: {known}.")
    gguf = path.is_file() and path.suffix == ".gguf"
    if gguf:
        cfg, weights = _read_gguf(path)
    elif path.is_dir():
        cfg, weights = _read_hf_dir(path)
    else:
        raise CheckpointError(f"{path} is neither a model directory nor a .gguf file.")
    model = _build(cfg, weights, attn_backend, from_gguf=gguf)
    return model.to(device=device, dtype=auto_dtype(path, device) if auto else dtype).eval()


def save_pretrained(model: Transformer, directory: str | Path, *, dtype: torch.dtype | str | None = None) -> Path:
    """Write config.json + model.safetensors as `model.cfg.hf_model_type`; dtype None keeps the model's."""
    from safetensors.torch import save_file

    dtype = None if dtype is None else resolve_dtype(dtype)
    cfg = model.cfg.replace()  # re-validated: fields may have been assigned since construction
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # the path, or a folder above it, is a file
        raise CheckpointError(f"cannot save to {directory}: a file is in the way of that directory "
                              "(config.json + model.safetensors go inside it); pick another path.") from None
    state = {n: t.detach() for n, t in model.state_dict().items()}
    if dtype is not None:
        state = {n: t.to(dtype) for n, t in state.items()}
    hf = {n: t.contiguous().cpu() for n, t in llmlab_to_hf(state, cfg).items()}
    _remove_shards(directory)  # a sharded checkpoint saved here before would be read instead of this one
    save_file(hf, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_hf_dict()
    config["torch_dtype"] = str(next(iter(hf.values())).dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


# ---- readers: each yields (llmlab_name, source_name, source_file, tensor) ------------------------


def _run_hint(path: Path) -> str:
    """Where a training run's directory (or its checkpoints/) was given for a model: its newest checkpoint."""
    for root in (path / "checkpoints", path):
        steps = [d for d in root.glob("step-*") if (d / "config.json").is_file()]
        if steps:
            newest = max(steps, key=lambda d: (len(d.name), d.name))  # step-000060 < step-1000000
            return f" (this looks like a training run: pass a checkpoint, the newest is {newest})"
    return ""


def _read_hf_dir(path: Path):
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json; a Hugging Face model directory needs one"
                              f"{_run_hint(path)}.")
    try:
        cfg = load_hf_config(cfg_file)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    cfg = with_generation_eos(cfg, path / "generation_config.json")
    files = _safetensors_files(path)

    def weights():
        from safetensors import safe_open

        for f in files:
            try:
                with safe_open(str(f), framework="pt") as sf:
                    hf = {k: sf.get_tensor(k) for k in sf.keys()}
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"{f} is not a readable safetensors file ({e}).") from None
            for name, src, t in hf_to_llmlab(hf, cfg):
                yield name, src, f, t

    return cfg, weights()


def with_generation_eos(cfg, gen_file: Path):
    """cfg with the end-of-sequence ids of generation_config.json added, where the directory has one: chat models
    often list their end-of-turn token there only (Llama 3.x Instruct's <|eot_id|>), and transformers' generate and
    vLLM stop on those. A file that cannot be read as JSON is skipped, as transformers skips it."""
    try:
        eos = json.loads(gen_file.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return cfg
    extra = [eos] if isinstance(eos, int) else eos if isinstance(eos, list) else []
    extra = [i for i in extra if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < cfg.vocab_size]
    if not extra or set(extra) <= cfg.eos_ids:
        return cfg
    ids = list(dict.fromkeys(([cfg.eos_token_id] if isinstance(cfg.eos_token_id, int) else cfg.eos_token_id or [])
                             + extra))
    return cfg.replace(eos_token_id=ids[0] if len(ids) == 1 else ids)


# generation_config.json keys that set a sampling default (vLLM's get_diff_sampling_param), as SamplingParams names
_SAMPLING_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                  "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}


def generation_defaults(source: str | Path) -> dict:
    """The sampling settings a model directory's generation_config.json recommends, as SamplingParams keywords
    ({} where there is no such file, or it cannot be read: as transformers skips it). vLLM samples with these
    when a request gives no SamplingParams; an instruct model's card values (Qwen3: temperature 0.6, top_p 0.95,
    top_k 20) live there."""
    path = Path(source)
    try:
        gen = json.loads((path / "generation_config.json").read_text(encoding="utf-8")) if path.is_dir() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(gen, dict):
        return {}
    return {ours: gen[key] for key, ours in _SAMPLING_KEYS.items() if gen.get(key) is not None}


def _remove_shards(directory: Path) -> None:
    """Delete a sharded checkpoint's index and the shards it lists (transformers' save_pretrained does too)."""
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return
    for name in set(_index_shards(index) or ()) | {p.name for p in directory.glob("model-*-of-*.safetensors")}:
        if "/" not in name:
            (directory / name).unlink(missing_ok=True)
    index.unlink()


def _index_shards(index: Path) -> list[str] | None:
    """The shard files a model.safetensors.index.json lists, in order, or None if it is not such an index."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):  # (UnicodeDecodeError is a ValueError)
        return None
    return shards if all(isinstance(name, str) for name in shards) else None


def _safetensors_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.is_file():  # first, as transformers: the file a later save_pretrained wrote
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = _index_shards(index)
        if shards is None:
            raise CheckpointError(f"{index} is not a valid safetensors index (no 'weight_map' of tensor names to "
                                  "shard files).")
        files = [path / name for name in shards]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f} is listed in {index.name} but missing.")
        return files
    if (path / "pytorch_model.bin").exists() or list(path.glob("pytorch_model*.bin")):
        raise CheckpointError(f"{path} holds only pickled pytorch_model*.bin weights, which llmlab never loads "
                              "(unpickling can run code); convert them to safetensors first.")
    raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json.")


def _read_gguf(path: Path):
    from llmlab.gguf_file import open_gguf

    try:
        reader = open_gguf(path)
    except Exception as e:  # the gguf package raises ValueError / struct errors on bad files
        raise CheckpointError(f"{path} is not a readable GGUF file ({e}).") from None
    try:
        cfg = config_from_gguf(reader, source=str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None

    def weights():
        for name, src, t in gguf_to_llmlab(reader, cfg):
            yield name, src, path, t

    return cfg, weights()


@contextlib.contextmanager
def _no_init():
    """Module constructors without their weight init (as transformers' `no_init_weights`): on the meta device
    init sets nothing, and the first init call there imports torch._dynamo (2.5-3.6 s on a 2-core EPYC, the
    largest part of loading SmolLM2-135M). torch.nn.init's functions are swapped for the identity meanwhile."""
    names = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "zeros_", "ones_", "constant_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def _build(cfg: ModelConfig, weights, attn_backend: str, *, from_gguf: bool) -> Transformer:
    """The model `cfg` (read from a GGUF's metadata or a config.json: named in errors) with `weights`: (llmlab
    name, name in the file, file, tensor) tuples."""
    config_source = "this GGUF's metadata" if from_gguf else "config.json"
    with torch.device("meta"), _no_init():
        model = Transformer(cfg, attn_backend=attn_backend)
    expected = {n: p.shape for n, p in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    loaded: dict[str, Tensor] = {}
    for name, src, file, t in weights:
        if name not in expected:
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # some tied checkpoints store the head anyway
            hint = ("a llama variant llmlab does not load, such as mixture-of-experts layers?" if from_gguf else
                    "is the config for a different model?")
            raise CheckpointError(f"{file}: tensor {src} has no place in a {cfg.model_type} model as "
                                  f"{config_source} describes it; {hint}")
        if tuple(t.shape) != tuple(expected[name]):
            raise CheckpointError(f"{file}: tensor {src} has shape {tuple(t.shape)} but {config_source} gives "
                                  f"{tuple(expected[name])}; the metadata and the weights disagree.")
        loaded[name] = t
    missing = sorted(set(expected) - set(loaded))
    if missing:
        hint = ("; a checkpoint without its own LM head ties it to the embeddings: set tie_word_embeddings true "
                "in config.json" if missing == ["lm_head.weight"] else
                "; the file is incomplete or for a different architecture")
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s), first: {missing[0]} "
                              f"(llmlab name){hint}.")
    model.load_state_dict(loaded, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    # Buffers derived from the config were created on meta: rebuild them on the CPU.
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            model._buffers[name] = _derived_buffer(cfg, name)
    return model


def _derived_buffer(cfg: ModelConfig, name: str) -> Tensor:
    from llmlab.model.layers import alibi_slopes, rope_inv_freq

    return rope_inv_freq(cfg) if name == "inv_freq" else alibi_slopes(cfg.num_heads)
