"""Shared fixtures: tiny random models built with `transformers`, saved as HF checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # `make test` runs the suite in one worker process per core (pytest-xdist): each takes its share of the cores,
    # since more threads than free cores makes every op wait at a barrier for a descheduled thread (registry.py's
    # one_thread); the commands tests start in subprocesses inherit the same share.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_share)
    os.environ["OMP_NUM_THREADS"] = str(_share)

if not torch.cuda.is_available():
    # Triton kernels run on CPU through Triton's interpreter; the flag is read when a kernel is
    # decorated, so it is set before any test module imports llmlab.kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Fill every parameter with noise (norm weights around 1) so a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            is_norm_weight = p.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_weight else noise)
    return model


@pytest.fixture(autouse=True)
def _own_tuning_cache(tmp_path_factory, monkeypatch):
    """Each test keeps its kernel timings apart (kernels/tuning_cache.py): an engine started under a faked kernel
    speed must leave its routes neither for a later test nor for the user's next real start. Set in the environment,
    so the commands a test runs in a subprocess keep theirs apart too."""
    from llmlab.kernels import tuning_cache

    directory = tmp_path_factory.mktemp("tuning")
    monkeypatch.setenv(tuning_cache.DIR_ENV, str(directory))
    monkeypatch.delenv(tuning_cache.RETUNE_ENV, raising=False)
    return directory


@pytest.fixture
def tmp_model_dir(tmp_path):
    return tmp_path / "model"
