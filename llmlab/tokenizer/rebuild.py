"""Pickling tokenizers by their constructor arguments, for worker processes (`multiprocessing` with spawn, `data
prepare --workers`, a DataLoader's workers).

A tokenizer's derived state (word caches, compiled patterns, the C merge table behind ctypes) is not picklable and
need not be: `Rebuilt` pickles a dataclass model as its init fields and builds it again on load, and `Tokenizer`
does the same with its own arguments (tokenizer.py). Only ever unpickle what your own process pickled.
"""

from __future__ import annotations

import dataclasses


def rebuild(cls: type, kwargs: dict):
    return cls(**kwargs)


class Rebuilt:
    """Mixin for a dataclass: pickled as its init fields, rebuilt through __init__ / __post_init__."""

    def __reduce__(self):
        return rebuild, (type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init})
