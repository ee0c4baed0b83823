"""Names a package exports but imports on first use (PEP 562), so that `import llmlab` and the command line's
`--help` do not import torch (about 2 s) before something needs it.

    __getattr__, __dir__ = lazy_exports(__name__, {"LLM": "llmlab.engine.llm", ...})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module `__getattr__` that imports `names[name]` and returns its `name`, or else the submodule `name`
    (kept in the package afterwards, so a name is looked up once), and a `__dir__` that lists the lazy names too."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # dunder probes (copy, pickle, inspect): never a lazy name or a submodule
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
        else:  # a submodule (`llmlab.artifacts`), as when the package imported everything up front
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
