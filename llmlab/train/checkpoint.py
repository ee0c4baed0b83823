"""Atomic, resumable training checkpoints — safetensors and JSON only.

    <out>/checkpoints/step-000200/
        config.json, model.safetensors   Hugging Face format (transformers loads it)
        tokenizer.json, tokenizer_config.json   when the run has them
        optimizer.safetensors            AdamW moments and step counts, by parameter index
        rng.safetensors                  torch CPU (and CUDA) generator states
        trainer_state.json               step, data position, loss scaler, config — written last

A checkpoint is written into a hidden temp directory, every file fsync'ed, then renamed into
place in one `os.rename`: a process killed mid-write leaves only a `.tmp-*` directory, which is
ignored (and swept by the next save), and the previous checkpoint stays whole. The newest
`step-*` directory is therefore always complete. Only the last `keep_last` are kept.

Resuming restores weights, AdamW moments and RNG states into a model built from the run's config, which
must be the checkpoint's (`trainer_state.json` holds it); the optimizer's hyper-parameters are the run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llmlab.errors import CheckpointError, is_int

_NAME = re.compile(r"step-\d+")  # what save_checkpoint names a checkpoint (step-000200)


def save_checkpoint(root: str | Path, step: int, *, model, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], tokenizer_dir: Path | None = None, keep_last: int = 2) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if tokenizer_dir is not None and (Path(tokenizer_dir) / name).is_file():
            shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
    tensors, groups = _flatten_optimizer(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file(_rng_state(), str(tmp / "rng.safetensors"))
    state = dict(trainer_state, step=step, optimizer_param_groups=groups)
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():  # re-saving the same step (e.g. a resumed run's final save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(root)
    _prune(root, keep_last)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        return None
    return max(_checkpoints(root), key=_step_of, default=None)


def _step_of(d: Path) -> int:
    return int(d.name[len("step-"):])


def _checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under root: directories named exactly step-<digits> that hold a trainer state.
    Anything else there (a user's copy such as step-000200.bak or step-best) is neither resumed from nor pruned."""
    return [d for d in root.glob("step-*") if _NAME.fullmatch(d.name) and (d / "trainer_state.json").is_file()]


def incomplete_checkpoints(root: Path) -> list[Path]:
    """Directories named like a checkpoint (step-<digits>) that lack a trainer state, so are neither resumed from nor
    pruned: a user's partial copy, or an old one whose pruning was cut short."""
    return [d for d in Path(root).glob("step-*") if _NAME.fullmatch(d.name) and d.is_dir()
            and not (d / "trainer_state.json").is_file()]


def load_checkpoint(path: str | Path, *, model, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model weights, optimizer and RNG in place; return the trainer state."""
    from llmlab.model.pretrained import from_pretrained

    path = Path(path)
    state = read_trainer_state(path)
    check_same_model(path, state, model.cfg.to_dict())
    try:
        saved = from_pretrained(path)
    except CheckpointError as e:  # e.g. a torn model.safetensors: the same way out as a torn optimizer file
        raise CheckpointError(f"{str(e).rstrip('.')}; the checkpoint is damaged: delete {path} to resume from the "
                              "one before, or start a fresh run.") from None
    model.load_state_dict(saved.state_dict())
    _restore_optimizer(optimizer, _load_tensors(path / "optimizer.safetensors"), state["optimizer_param_groups"])
    _restore_rng(_load_tensors(path / "rng.safetensors"))
    return state


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # missing, or safetensors' own error types for a torn or empty file
        raise CheckpointError(f"{file} is missing or damaged ({type(e).__name__}); delete {file.parent} to resume "
                              "from the checkpoint before it, or start a fresh run.") from None


def same_vocabulary(a: Path, b: Path) -> bool | None:
    """Whether the tokenizers of a and b map every id they share to the same bytes (ids past the smaller
    vocabulary are padding or added tokens). Each is a directory with a tokenizer.json or a GGUF file (its
    vocabulary). None: one has no byte-level tokenizer we can read, so nothing can be said."""
    fa, fb = _tokenizer_source(Path(a)), _tokenizer_source(Path(b))
    if fa is None or fb is None:
        return None
    if fa.name == fb.name == "tokenizer.json" and fa.read_bytes() == fb.read_bytes():
        return True
    from llmlab.errors import LlmlabError
    from llmlab.tokenizer import load_tokenizer

    try:
        ta, tb = load_tokenizer(fa), load_tokenizer(fb)
        return all(ta.token_bytes(i) == tb.token_bytes(i) for i in range(min(ta.vocab_size, tb.vocab_size)))
    except LlmlabError:  # e.g. WordPiece: no token bytes
        return None


def _tokenizer_source(path: Path) -> Path | None:
    """The tokenizer file of a model directory (tokenizer.json, else a SentencePiece tokenizer.model) or GGUF file;
    None where there is none."""
    if path.is_dir():
        return next((path / n for n in ("tokenizer.json", "tokenizer.model") if (path / n).is_file()), None)
    return path if path.suffix == ".gguf" and path.is_file() else None


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """The trainer_state.json of checkpoint directory `path` (step, train/val loss, config, ...)."""
    state_file = Path(path) / "trainer_state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no trainer_state.json).")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{state_file} is not valid JSON ({e}); the checkpoint is damaged: delete "
                              f"{path} to resume from the one before, or start a fresh run.") from None
    if not isinstance(state, dict):
        state = {}
    for key, (ok, meaning) in _STATE_FIELDS.items():
        if not ok(state.get(key)):
            raise CheckpointError(f"{state_file} {'lacks' if key not in state else 'has no valid'} {key} ({meaning}); "
                                  f"the checkpoint is damaged: delete {path} to resume from the one before, or start "
                                  "a fresh run.")
    return state


# what a resume reads back from trainer_state.json (save_checkpoint and train write it): key -> (test, its meaning);
# checked up front, so that an edited or damaged file is one sentence, not a KeyError from halfway through a resume
_STATE_FIELDS = {
    "step": (lambda v: is_int(v) and v >= 0, "a step number"),
    "config": (lambda v: isinstance(v, dict), "the run's config"),
    "loader": (lambda v: isinstance(v, dict) and is_int(v.get("step")) and is_int(v.get("seed")),
               "the data position"),
    "scaler": (lambda v: isinstance(v, dict) and all(k in v for k in ("scale", "good_steps", "skipped")),
               "the loss scaler's state"),
    "optimizer_param_groups": (lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v),
                               "the optimizer's parameter groups"),
}


_TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # train now fills eos_token_id from the shards


def check_same_model(path: Path, state: dict[str, Any], run: dict[str, Any]) -> None:
    """Refuse to resume checkpoint `path` (its trainer `state`) with a run whose model config `run` differs."""
    saved = state.get("config", {}).get("model")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}/trainer_state.json has no model config, so it was not written by "
                              "llmlab train; start a fresh run without --resume.")
    run = json.loads(json.dumps(run))  # the form trainer_state.json holds (tuples as lists)
    differ = [f"{k} {saved[k]!r} vs {v!r}" for k, v in run.items() if k in saved and saved[k] != v and k != "dropout"
              and not (k in _TOKEN_ID_FIELDS and saved[k] is None)]  # fields newer than the checkpoint are not
    # compared, nor token ids it left unset (no weights depend on them): a run of an older llmlab stays resumable;
    # dropout has no weights either (train notes a change, as init_from allows one)
    if differ:
        raise CheckpointError(f"{path} holds another model than this run's ({', '.join(differ)}: checkpoint vs "
                              "run); resume with the checkpoint's model settings, or start a fresh run in a new "
                              "--out (or without --resume).")


def _flatten_optimizer(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {f"{idx}.{name}": t.detach().cpu().contiguous()
               for idx, st in sd["state"].items() for name, t in st.items() if torch.is_tensor(t)}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    # The run's lr, betas, eps and weight decay, not the checkpoint's: a changed setting takes effect.
    current = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    groups = [dict(saved, **now) for saved, now in zip(groups, current)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def _restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: Path, keep_last: int) -> None:
    done = sorted(_checkpoints(root), key=_step_of)
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
