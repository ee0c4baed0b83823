"""Build and load llmlab's small C kernels for the CPU, the way Inductor builds its own: on first use, with the
system C compiler, into a cache keyed by the source, the flags and the CPU.

    lib = load("cpu_paged_attention.c")   # a CLibrary: .lib (ctypes.CDLL or None) and .error (why not)

The compiler is `$CC` (arguments allowed: "ccache gcc"), else the first of cc / gcc / clang on PATH. Flags: -O3
-march=native, OpenMP when the compiler has it (the library then binds to the libgomp.so.1 torch has already loaded,
so its threads are torch's), and reassociation so vector loops may sum their lanes as a tree — NaN and infinity
semantics stay exact (no -ffinite-math-only). Flag sets are tried in turn until one builds; a library built before
with a later set (a compiler without OpenMP) is used without retrying the earlier ones. Output goes to
`$LLMLAB_CACHE/kernels/` (default ~/.cache/llmlab), written to a temporary file and renamed into place, so a
concurrent or interrupted build never leaves a half-written library; one found damaged all the same (truncated by a
full disk or a copy cut short: mapping it would kill the process) is removed and built again. A build takes 0.2-10 s
(the paged attention kernel the longest); `prebuild()` builds the missing ones side by side and says so, as the
CPU engine does at start.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_MATH = ["-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
FLAG_SETS = (["-O3", "-march=native", "-fopenmp", *_MATH], ["-O3", "-march=native", *_MATH], ["-O3", *_MATH])
# Sources that call Python's C API (loaded with ctypes.PyDLL, the GIL held): built against this interpreter's headers,
# so the path (hence the version) is in their cache key; without the headers (a Python without its -dev package) they
# are not built (`load` says why, `sources` leaves them out) and their callers keep the pure-Python route.
PYTHON_API = frozenset({"cpu_pylist.c"})
COMPILE_TIMEOUT_S = 120.0  # one compiler run; past it the build stops (later flag sets would hang the same way)
_TIMED_OUT = "the compiler ran past"
_CPUINFO = Path("/proc/cpuinfo")
# The /proc/cpuinfo fields -march=native depends on, the first processor's: x86 ("model name", "flags"), Arm
# ("Features" and the implementer / architecture / variant / part ids: no "model name" there), RISC-V ("isa",
# "uarch"), POWER ("cpu").
_CPU_FIELDS = ("model name", "flags", "Features", "CPU implementer", "CPU architecture", "CPU variant", "CPU part",
               "isa", "uarch", "cpu")


@dataclass
class CLibrary:
    lib: ctypes.CDLL | None
    error: str | None  # why there is no library


def compiler() -> str | None:
    """The compiler command: `$CC` where its program is found (it may carry arguments), else cc / gcc / clang."""
    for name in filter(None, (os.environ.get("CC", "").strip(), "cc", "gcc", "clang")):
        try:
            program = shlex.split(name)[0]
        except (ValueError, IndexError):  # unbalanced quotes in $CC
            continue
        if shutil.which(program):
            return name
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags (Linux; the first processor's lines of
    _CPU_FIELDS, as they are written), else the platform."""
    try:
        lines = _CPUINFO.read_text().splitlines()
    except OSError:
        return platform.platform()
    keep, seen = [], set()
    for ln in lines:
        key = ln.split(":", 1)[0].strip()
        if ":" in ln and key in _CPU_FIELDS and key not in seen:
            seen.add(key)
            keep.append(ln)
    return "\n".join(keep) or platform.processor()


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
    lines = cpu.splitlines()
    named = [ln for ln in lines if ln.startswith("model name")] or lines
    name = named[0].split(":", 1)[-1].strip() if named else ""
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
    """The file names of every C kernel in llmlab/kernels that can build here (a PYTHON_API one needs Python.h)."""
    return sorted(p.name for p in Path(__file__).parent.glob("*.c") if _no_headers(p.name) is None)


def _no_headers(source_name: str) -> str | None:
    """Why a PYTHON_API source cannot build here (this Python has no Python.h), else None."""
    if source_name not in PYTHON_API:
        return None
    import sysconfig

    include = Path(sysconfig.get_paths()["include"])
    if (include / "Python.h").exists():
        return None
    return f"this Python has no C headers ({include / 'Python.h'} is missing: its -dev package)"


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

    unwritable = _unwritable(cache_dir() / "kernels")
    if unwritable:  # one line, not a "building ... (once; kept in ...)" that keeps nothing, on every start
        print(f"llmlab: the C kernels are not built: {unwritable}; the slower paths take over.", file=sys.stderr,
              flush=True)
        return []
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
    extra = _extra_flags(source_name)
    keys = [hashlib.sha256(text + " ".join([cc, *flags, *extra]).encode() + cpu).hexdigest() for flags in FLAG_SETS]
    return [cache_dir() / "kernels" / f"{Path(source_name).stem}-{key[:16]}.so" for key in keys]


@functools.cache
def load(source_name: str) -> CLibrary:
    """The library built from llmlab/kernels/<source_name> (built now if not cached), or why there is none."""
    cc = compiler()
    if cc is None:
        return CLibrary(None, "no C compiler found (set $CC or install gcc/clang)")
    if (why := _no_headers(source_name)) is not None:
        return CLibrary(None, why)
    source = Path(__file__).with_name(source_name)
    paths = _paths(cc, source_name)
    last = ""
    # A library built before with any flag set is used first: a compiler that cannot build an earlier set (clang
    # without libomp fails -fopenmp at the link, after the whole compile) would otherwise retry it on every start.
    for path in paths:
        if path.exists():
            lib, last = _open(path)
            if lib is not None:
                return CLibrary(lib, None)
    for flags, path in zip(FLAG_SETS, paths, strict=True):
        if path.exists():  # tried above, and it would not load
            continue
        last = _compile(cc, flags, source, path)
        if last.startswith(_TIMED_OUT):
            break
        if not last:
            lib, last = _open(path)
            if lib is not None:
                return CLibrary(lib, None)
    return CLibrary(None, f"building {source_name} with {cc} failed: {last}")


def _open(path: Path) -> tuple[ctypes.CDLL | None, str]:
    """The library at `path`, or why not; a damaged file is removed (it is built again) rather than mapped."""
    if not _intact(path):
        try:
            path.unlink()
        except OSError as e:
            return None, f"{path} is damaged and cannot be removed ({e.strerror}); delete it"
        return None, f"{path} was damaged (removed)"
    try:
        return ctypes.CDLL(str(path)), ""
    except OSError as e:
        return None, f"loading {path} failed: {e}"


def _intact(path: Path) -> bool:
    """Whether the ELF file at `path` holds every byte its headers point to. A truncated library (a full disk, a
    copy or sync cut short) passes dlopen's first checks, and mapping its missing pages then kills the process
    (SIGBUS), past any `except`. Files that are not ELF are left to the loader off Linux (macOS: Mach-O)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                return platform.system() != "Linux"
            if len(head) < 52:  # shorter than the smallest (32-bit) ELF header
                return False
            wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
            if len(head) < (64 if wide else 52):
                return False
            if wide:
                phoff, shoff = struct.unpack_from(order + "QQ", head, 0x20)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 0x36)
            else:
                phoff, shoff = struct.unpack_from(order + "II", head, 0x1C)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 0x2A)
            if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
                return False
            f.seek(phoff)
            table = f.read(phnum * phentsize)
    except (OSError, struct.error):
        return False
    for i in range(phnum):
        if wide:
            offset, filesz = struct.unpack_from(order + "Q16xQ", table, i * phentsize + 8)
        else:
            offset, filesz = struct.unpack_from(order + "I8xI", table, i * phentsize + 4)
        if offset + filesz > size:
            return False
    return True


def _unwritable(directory: Path) -> str:
    """'' where a library can be written into `directory`, else why not (and what to do)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".probe", dir=directory)
        os.close(fd)
        os.unlink(tmp)
        return ""
    except OSError as e:
        return f"cannot write to {directory} ({e.strerror or e}); set $LLMLAB_CACHE to a writable directory"


def _cause(stderr: str) -> str:
    """The line of a failed build's messages that says why: the first error, else the linker's own line, not the
    driver's summary of it ("collect2: error: ld returned 1 exit status" hid "No space left on device", and clang's
    "linker command failed" hid "cannot find -lomp"), else the last line."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if "collect2: error:" not in ln and "linker command failed" not in ln]
    return next((ln for ln in useful if "error" in ln),
                next((ln for ln in useful if "ld:" in ln and "warning" not in ln), lines[-1] if lines else ""))


def _extra_flags(source_name: str) -> list[str]:
    """The Python headers' folder for a source of PYTHON_API, else nothing."""
    import sysconfig

    return ["-I", sysconfig.get_paths()["include"]] if source_name in PYTHON_API else []


def _compile(cc: str, flags: list[str], source: Path, path: Path) -> str:
    """Compile `source` to `path` atomically; '' on success, else why not (_cause)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
    except OSError as e:  # a read-only cache: say where, keep serving through the slower paths
        return f"cannot write to {path.parent} ({e.strerror}); set $LLMLAB_CACHE to a writable directory"
    try:
        # its own process group: a compiler that hangs is stopped with its children (cc1, as, ld), not just the driver
        proc = subprocess.Popen([*shlex.split(cc), *flags, "-shared", "-fPIC", "-I", str(source.parent),
                                 *_extra_flags(source.name), "-o", tmp, str(source), "-lm"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=COMPILE_TIMEOUT_S)
        except BaseException as e:  # the timeout, or Ctrl-C (which the compiler's own session does not get)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # gone meanwhile
                pass
            proc.communicate()
            if isinstance(e, subprocess.TimeoutExpired):
                return f"{_TIMED_OUT} {COMPILE_TIMEOUT_S:g} s ({cc} {' '.join(flags)})"
            raise
        if proc.returncode != 0:
            return _cause(stderr) or f"exit status {proc.returncode}"
        os.replace(tmp, path)
        return ""
    except (OSError, ValueError) as e:  # (ValueError: $CC that shlex cannot split)
        return str(e)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
