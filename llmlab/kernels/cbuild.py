"""Build and load llmlab's small C kernels for the CPU, the way Inductor builds its own: on first use, with the
system C compiler, into a cache keyed by the source, the flags and the CPU.

    lib = load("cpu_paged_attention.c")   # a CLibrary: .lib (ctypes.CDLL or None) and .error (why not)

The compiler is `$CC`, else the first of cc / gcc / clang on PATH. Flags: -O3 -march=native, OpenMP when the
compiler has it (the library then binds to the libgomp.so.1 torch has already loaded, so its threads are
torch's), and reassociation so vector loops may sum their lanes as a tree — NaN and infinity semantics stay
exact (no -ffinite-math-only). Flag sets are tried in turn until one builds. Output goes to
`$LLMLAB_CACHE/kernels/` (default ~/.cache/llmlab), written to a temporary file and renamed into place, so a
concurrent or interrupted build never leaves a half-written library. A build takes 0.2-10 s (the paged attention
kernel the longest); `prebuild()` builds the missing ones side by side and says so, as the CPU engine does at start.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_MATH = ["-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
FLAG_SETS = (["-O3", "-march=native", "-fopenmp", *_MATH], ["-O3", "-march=native", *_MATH], ["-O3", *_MATH])


@dataclass
class CLibrary:
    lib: ctypes.CDLL | None
    error: str | None  # why there is no library


def compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        if shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags (Linux), else the platform."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(keep) or platform.processor()
    except OSError:
        return platform.platform()


def _source_text(*source_names: str) -> bytes:
    """The bytes a build or a timing of these kernels depends on: their sources, then every shared header."""
    here = Path(__file__).parent
    return b"".join((here / n).read_bytes() for n in source_names) + b"".join(
        h.read_bytes() for h in sorted(here.glob("*.h")))


def signature(*source_names: str) -> dict[str, str]:
    """What a timing of these kernels depends on besides its inputs: the CPU (model name, and a digest of its
    feature flags) and a digest of the sources and the shared headers."""
    text = _source_text(*source_names)
    cpu = _cpu_signature()
    name = cpu.splitlines()[0].split(":", 1)[-1].strip() if cpu else ""
    return {"cpu": name, "cpu_digest": hashlib.sha256(cpu.encode()).hexdigest()[:16],
            "sources_digest": hashlib.sha256(text).hexdigest()[:16]}


def dtype_functions(source_name: str, prefix: str, argtypes: list, has_f16: str) -> dict:
    """{torch dtype: typed ctypes function} for the entry points `<prefix>_f32`, `<prefix>_bf16` and, where the
    library's `has_f16()` says the compiler had _Float16, `<prefix>_f16`; empty where nothing could be built."""
    import torch

    lib = load(source_name).lib
    if lib is None:
        return {}
    fns = {}
    for dtype, suffix in ((torch.float32, "f32"), (torch.bfloat16, "bf16"), (torch.float16, "f16")):
        if dtype == torch.float16 and not getattr(lib, has_f16)():
            continue
        fn = getattr(lib, f"{prefix}_{suffix}")
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
        fns[dtype] = fn
    return fns


def sources() -> list[str]:
    """The file names of every C kernel in llmlab/kernels."""
    return sorted(p.name for p in Path(__file__).parent.glob("*.c"))


def prebuild(source_names: list[str] | None = None) -> list[str]:
    """Build the libraries of these kernels (default: all of them) that are not cached yet, side by side (the
    compiler runs in subprocesses, one per core), saying so on stderr: on a 2-core Zen 3 VM the seven kernels took
    11.3-11.7 s one after another and 7.1-7.8 s this way, once per machine. Returns the names it built (or tried
    to); each then loads from the cache, and a failure stays what `load` reports."""
    cc = compiler()
    if cc is None:  # nothing can build; each `load` says why
        return []
    missing = [n for n in (sources() if source_names is None else source_names)
               if not any(p.exists() for p in _paths(cc, n))]
    if not missing:
        return []
    from llmlab.artifacts import cache_dir

    print(f"llmlab: building {len(missing)} C kernel{'s' * (len(missing) > 1)} for this CPU (once; kept in "
          f"{cache_dir() / 'kernels'}) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(len(missing), os.cpu_count() or 1))) as pool:
        failed = [n for n, lib in zip(missing, pool.map(load, missing), strict=True) if lib.lib is None]
    note = f" ({', '.join(failed)} failed; the slower paths take over)" if failed else ""
    print(f"llmlab: built in {time.perf_counter() - t0:.0f} s{note}", file=sys.stderr, flush=True)
    return missing


def _paths(cc: str, source_name: str) -> list[Path]:
    """Where the library of each of FLAG_SETS, in order, is cached: keyed by the source and headers, the compiler
    and flags, and the CPU."""
    from llmlab.artifacts import cache_dir

    text, cpu = _source_text(source_name), _cpu_signature().encode()
    keys = [hashlib.sha256(text + " ".join([cc, *flags]).encode() + cpu).hexdigest() for flags in FLAG_SETS]
    return [cache_dir() / "kernels" / f"{Path(source_name).stem}-{key[:16]}.so" for key in keys]


@functools.cache
def load(source_name: str) -> CLibrary:
    """The library built from llmlab/kernels/<source_name> (built now if not cached), or why there is none."""
    cc = compiler()
    if cc is None:
        return CLibrary(None, "no C compiler found (set $CC or install gcc/clang)")
    source = Path(__file__).with_name(source_name)
    last = ""
    for flags, path in zip(FLAG_SETS, _paths(cc, source_name), strict=True):
        if not path.exists():
            last = _compile(cc, flags, source, path)
            if last:
                continue
        try:
            return CLibrary(ctypes.CDLL(str(path)), None)
        except OSError as e:
            last = f"loading {path} failed: {e}"
    return CLibrary(None, f"building {source_name} with {cc} failed: {last}")


def _compile(cc: str, flags: list[str], source: Path, path: Path) -> str:
    """Compile `source` to `path` atomically; '' on success, else the compiler's last line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
    except OSError as e:  # a read-only cache: say where, keep serving through the slower paths
        return f"cannot write to {path.parent} ({e.strerror}); set $LLMLAB_CACHE to a writable directory"
    try:
        proc = subprocess.run([cc, *flags, "-shared", "-fPIC", "-I", str(source.parent), "-o", tmp, str(source), "-lm"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            return next((ln for ln in lines if "error" in ln), lines[-1] if lines else f"exit status {proc.returncode}")
        os.replace(tmp, path)
        return ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
