"""Opening a GGUF file: gguf-py's reader, over a plain numpy view of the file's memory map.

`gguf.GGUFReader` parses the metadata through hundreds of thousands of small slices of an
`np.memmap`, and every slice of a memmap runs `memmap.__array_finalize__` in Python: most of the
parse time (SmolLM2-135M's 49,152-token vocabulary and merges: 5.7 s on a 2-core EPYC). Given a
plain ndarray view of the same mapping those slices stay in C: 1.5 s, the same fields and tensors
(tests/test_gguf_file.py). Nothing is read into memory that the reader did not read before.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np


def open_gguf(path: str | Path):
    """A gguf.GGUFReader of `path`; raises what GGUFReader raises on a bad file. The last file opened is
    remembered (by path, size and modification time): loading a model and then its tokenizer from one .gguf
    parses it once."""
    p = Path(path).resolve()
    st = p.stat()
    return _open(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _open(path: str, size: int, mtime_ns: int):
    import gguf  # imported here: the commands that never read GGUF start without it

    class _PlainViewReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, value):  # GGUFReader.__init__ assigns its np.memmap here
            self._plain = value.view(type=np.ndarray)

    return _PlainViewReader(path)
