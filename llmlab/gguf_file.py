"""Opening a GGUF file: gguf-py's reader, over a plain numpy view of the file's memory map, with its
metadata arrays parsed in one pass each.

`gguf.GGUFReader` parses the metadata through hundreds of thousands of small slices of an
`np.memmap`, and every slice of a memmap runs `memmap.__array_finalize__` in Python: most of the
parse time (SmolLM2-135M's 49,152-token vocabulary and merges: 5.7 s on a 2-core EPYC). Given a
plain ndarray view of the same mapping those slices stay in C: 1.5 s. Most of the rest was the
reader's generic per-element walk of each metadata array (a type lookup and two dtype views per
token); arrays of strings and of scalars now take one loop that cuts the same slices: the whole parse
0.18-0.37 s. Same fields, parts, data indices and tensors as GGUFReader (tests/test_gguf_file.py);
nothing is read into memory that the reader did not read before. Arrays of arrays and files in the
other byte order keep the reader's own walk.
"""

from __future__ import annotations

import functools
import struct
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

    array, string = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING

    class _PlainViewReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, value):  # GGUFReader.__init__ assigns its np.memmap here
            self._plain = value.view(type=np.ndarray)

        def _get_field_parts(self, orig_offs: int, raw_type: int):
            """GGUFReader's (size, parts, data indices, types) of one value; an array of strings or scalars in a
            single loop. The reader's parts for such an array: its item type and length, then per item one
            (1,) array (a scalar) or its u64 length and its bytes (a string, the bytes being the data part)."""
            if raw_type != array or self.byte_order != "I":  # "I": the file's byte order is this machine's
                return super()._get_field_parts(orig_offs, raw_type)
            data, offs = self._plain, orig_offs + 12
            raw_itype, alen = data[orig_offs:orig_offs + 4].view(np.uint32), data[orig_offs + 4:offs].view(np.uint64)
            itype, n = gguf.GGUFValueType(int(raw_itype[0])), int(alen[0])
            nptype = self.gguf_scalar_to_np.get(itype)
            if itype != string and nptype is None:  # arrays of arrays
                return super()._get_field_parts(orig_offs, raw_type)
            parts: list[np.ndarray] = [raw_itype, alen]
            if itype == string:
                unpack, u64 = struct.Struct("=Q").unpack_from, np.uint64
                for _ in range(n):
                    if offs + 8 > len(data) or offs + 8 + (length := unpack(data, offs)[0]) > len(data):
                        return super()._get_field_parts(orig_offs, raw_type)  # a cut file: the reader's error
                    parts += (data[offs:offs + 8].view(u64), data[offs + 8:offs + 8 + length])
                    offs += 8 + length
                idxs = list(range(3, len(parts), 2))
            else:
                size = np.dtype(nptype).itemsize
                items = data[offs:offs + n * size].view(nptype)
                if len(items) < n:
                    return super()._get_field_parts(orig_offs, raw_type)
                parts += (items[i:i + 1] for i in range(n))
                offs += n * size
                idxs = list(range(2, len(parts)))
            return offs - orig_offs, parts, idxs, [array, itype] if n else [array]

    return _PlainViewReader(path)
