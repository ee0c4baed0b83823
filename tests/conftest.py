"""Shared fixtures (tiny random models built with `transformers`, saved as HF checkpoints), each test's own kernel
timings, and the size of `make test`'s worker pool (pytest-xdist `-n auto`: usable cores, memory)."""

from __future__ import annotations

import os

import pytest
import torch

# memory a worker may need: one process running the SmolLM2 engine, tokenizer, HF-parity, estimator and load-speed
# test files peaked at 2.9 GB (maximum resident set)
WORKER_MEMORY = 3 << 30


def usable_cpus(cgroup: str = "/sys/fs/cgroup") -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's `--cpus`), which
    os.cpu_count(), pytest-xdist's `-n auto` and torch's default thread count all ignore."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def read(name: str) -> list[str]:
        with open(os.path.join(cgroup, name)) as f:
            return f.read().split()

    for quota_period in (lambda: read("cpu.max")[:2],  # cgroup v2: "200000 100000" or "max 100000"
                         lambda: read("cpu/cpu.cfs_quota_us")[:1] + read("cpu/cpu.cfs_period_us")[:1]):  # v1
        try:
            quota, period = quota_period()
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and quota.isdigit() and period.isdigit() and int(period) > 0:
            n = min(n, max(1, int(quota) // int(period)))
        break
    return max(1, n)


def available_memory(cgroup: str = "/sys/fs/cgroup", meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes of memory free for new work (MemAvailable, page cache included), capped by a cgroup v2 memory limit."""
    found = []
    try:
        with open(meminfo) as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(os.path.join(cgroup, "memory.max")) as f:
            limit = f.read().strip()
        found += [int(limit)] if limit.isdigit() else []
    except OSError:
        pass
    return min(found) if found else None


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (`make test`): one worker per usable core, no more than the available memory holds."""
    cpus, memory = usable_cpus(), available_memory()
    return max(1, min(cpus, memory // WORKER_MEMORY) if memory is not None else cpus)


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Each worker takes its share of the cores, since more threads than free cores makes every op wait at a barrier
    # for a descheduled thread (registry.py's one_thread); the commands tests start in subprocesses inherit it.
    _share = max(1, usable_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
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
