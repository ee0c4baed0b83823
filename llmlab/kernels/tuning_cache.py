"""Kernel timings kept between runs, so that a start-up measurement is taken once per machine and model shape.

    fields = {"cpu": ..., "torch": ..., "shapes": [...], "rows": [...]}   # everything the timings depend on
    table = tuning_cache.load("cpu-linear", fields)    # the stored value, or None (absent, unreadable, retuning)
    tuning_cache.save("cpu-linear", fields, table)     # JSON, written to a temporary file and renamed into place

Entries live in `$LLMLAB_CACHE/tuning/` (default ~/.cache/llmlab; `$LLMLAB_TUNING_DIR` names another directory, as
the test suite does for every process it starts), one JSON file per key: the SHA-256 of the
fields, which the file also holds so a person can read what was timed. Change any field (another CPU, thread
count, torch build, kernel source, model shape) and the key changes, so nothing stale is read back; an entry
that cannot be read or parsed counts as absent. `LLMLAB_RETUNE=1` (any value but 0, false, no or off) ignores
every entry (the timings are taken again and overwrite them), for a machine whose load changed since. Inductor keeps
its autotuning results the same way (torch/_inductor/codecache.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

RETUNE_ENV = "LLMLAB_RETUNE"
DIR_ENV = "LLMLAB_TUNING_DIR"


def directory() -> Path:
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    from llmlab.artifacts import cache_dir

    return cache_dir() / "tuning"


def path_for(kind: str, fields: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps([kind, fields], sort_keys=True).encode()).hexdigest()
    return directory() / f"{kind}-{key[:24]}.json"


def retuning() -> bool:
    """Whether $LLMLAB_RETUNE asks to time again: set to anything but empty, 0, false, no or off."""
    return os.environ.get(RETUNE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def load(kind: str, fields: dict[str, Any]) -> Any | None:
    """The value saved for (kind, fields), or None: none saved, unreadable, for other fields, or $LLMLAB_RETUNE set."""
    if retuning():
        return None
    try:
        entry = json.loads(path_for(kind, fields).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("kind") != kind or entry.get("fields") != fields:
        return None  # a hash collision or a hand-edited file: time again
    return entry.get("value")


def save(kind: str, fields: dict[str, Any], value: Any) -> Path | None:
    """Store value for (kind, fields) atomically; where the cache cannot be written, warn and return None (the
    timings were still used; the next start times again)."""
    path = path_for(kind, fields)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"kind": kind, "fields": fields, "value": value}, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        env = DIR_ENV if os.environ.get(DIR_ENV) else "LLMLAB_CACHE"
        warnings.warn(f"could not keep the kernel timings in {path.parent} ({e.strerror or e}): the next start times "
                      f"them again; set ${env} to a writable directory to keep them.", stacklevel=2)
        return None
    return path
