"""The C kernels' build cache on machines users really have (kernels/cbuild.py, tuning_cache.py, cpu_linear.py): a
damaged cached library, a compiler without OpenMP or one that hangs, `$CC` with arguments, an unwritable cache,
Arm CPUs, a garbled timing table and `$LLMLAB_RETUNE` spelt out. Every build goes to a temporary `$LLMLAB_CACHE`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import llmlab.kernels.cpu_linear as cl
from llmlab.kernels import cbuild, tuning_cache

needs_cc = pytest.mark.skipif(cbuild.compiler() is None, reason="needs a C compiler")
SMALL = "cpu_argmax.c"  # the quickest kernel to build (~0.7 s)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """cpu_argmax.c built once with the first flag set, in a cache of its own (copied by the tests)."""
    cache = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMLAB_CACHE", str(cache))
        path = cbuild._paths(cbuild.compiler(), SMALL)[0]
        assert not cbuild._compile(cbuild.compiler(), cbuild.FLAG_SETS[0], Path(cbuild.__file__).with_name(SMALL),
                                   path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh $LLMLAB_CACHE, and `load`'s memo cleared before and after."""
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))
    cbuild.load.cache_clear()
    yield tmp_path / "cache"
    cbuild.load.cache_clear()


@needs_cc
def test_a_truncated_cached_library_is_built_again_not_mapped(built, cache):
    """A library cut short (a full disk, an interrupted copy or sync of a home directory) passed dlopen's checks and
    then killed the process with SIGBUS as its pages were mapped: no `except` could fall back."""
    path = cbuild._paths(cbuild.compiler(), SMALL)[0]
    path.parent.mkdir(parents=True)
    path.write_bytes(built.read_bytes()[:3000])
    code = ("from llmlab.kernels import cbuild; lib = cbuild.load('cpu_argmax.c'); "
            "print('loaded' if lib.lib is not None else lib.error)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LLMLAB_CACHE": str(cache)})
    assert done.returncode == 0, f"the process died (status {done.returncode}): {done.stderr[-500:]}"
    assert done.stdout.strip() == "loaded"
    assert path.stat().st_size == built.stat().st_size  # built again in place, with the same flags


@needs_cc
def test_every_truncation_of_a_library_is_found(built, tmp_path):
    """_intact read the ELF class and byte order before checking the length: 4 or 5 bytes raised IndexError."""
    data = built.read_bytes()
    cut = tmp_path / "cut.so"
    for n in sorted({*range(0, 80), *range(80, len(data), max(1, len(data) // 300))}):
        cut.write_bytes(data[:n])
        assert not cbuild._intact(cut), n
    cut.write_bytes(data)
    assert cbuild._intact(cut)


@needs_cc
def test_a_garbled_cached_library_is_rebuilt_with_its_own_flags(cache):
    """A file that is no library at all used to be skipped for the next flag set: the kernel then ran without OpenMP
    (one thread) for good, next to the bad file."""
    paths = cbuild._paths(cbuild.compiler(), SMALL)
    paths[0].parent.mkdir(parents=True)
    paths[0].write_bytes(b"\x7fELF garbage")
    assert cbuild.load(SMALL).lib is not None
    assert cbuild._intact(paths[0]) and not paths[1].exists() and not paths[2].exists()


@needs_cc
def test_a_library_built_with_a_later_flag_set_is_not_built_again(built, cache, monkeypatch):
    """A compiler without OpenMP (clang without libomp fails -fopenmp at the link, after compiling everything) used to
    be run with -fopenmp again for every kernel on every start before the cached library was loaded."""
    paths = cbuild._paths(cbuild.compiler(), SMALL)
    paths[1].parent.mkdir(parents=True)
    shutil.copy(built, paths[1])
    calls = []
    monkeypatch.setattr(cbuild, "_compile", lambda cc, flags, source, path: calls.append(flags) or "error: -fopenmp")
    assert cbuild.load(SMALL).lib is not None
    assert calls == []


@pytest.mark.skipif(shutil.which("sh") is None or sys.platform != "linux", reason="needs sh and /proc")
def test_a_hanging_compiler_is_stopped_once_with_its_children(cache, tmp_path, monkeypatch):
    """A compiler that hangs (a wrapper waiting on a network, a license) cost the timeout once per flag set, three
    times per kernel, and left its child processes running."""
    log, pids = tmp_path / "runs", tmp_path / "pids"
    script = tmp_path / "cc"
    script.write_text(f"#!/bin/sh\necho run >> {log}\nsleep 30 &\necho $! >> {pids}\nwait\n")
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setattr(cbuild, "COMPILE_TIMEOUT_S", 0.5)
    t0 = time.perf_counter()
    built = cbuild.load(SMALL)
    assert time.perf_counter() - t0 < 5
    assert built.lib is None and "ran past 0.5 s" in built.error
    assert log.read_text().split() == ["run"]
    child = int(pids.read_text().split()[0])
    status = Path(f"/proc/{child}/status")
    for _ in range(50):  # killed: gone, or a zombie until reaped
        if not status.exists() or "\nState:\tZ" in status.read_text():
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the compiler's child process still runs")
    assert not list((cache / "kernels").glob("*.so"))  # nothing half-written left behind


@needs_cc
def test_cc_with_arguments_is_the_compiler_used(cache, tmp_path, monkeypatch):
    """CC="ccache gcc" (or "gcc -m64") was not found as a program and silently replaced by cc."""
    log = tmp_path / "log"
    wrapper = tmp_path / "wrap.sh"
    wrapper.write_text(f'echo "$1" >> {log}\nshift\nexec "$@"\n')
    monkeypatch.setenv("CC", f"sh {wrapper} tagged {cbuild.compiler()}")
    assert cbuild.compiler() == os.environ["CC"]
    assert cbuild.load(SMALL).lib is not None
    assert log.read_text().split() == ["tagged"]


@needs_cc
def test_an_unwritable_cache_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    """Not "building 7 C kernels (once; kept in ...)" then "7 failed" on every start, where nothing can be kept."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "file" / "cache"))
    cbuild.load.cache_clear()
    try:
        assert cbuild.prebuild() == []
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot write to" in err[0] and "$LLMLAB_CACHE" in err[0], err
        assert "set $LLMLAB_CACHE to a writable directory" in cbuild.load(SMALL).error
    finally:
        cbuild.load.cache_clear()


ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp{sve}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: {variant}
CPU part\t: {part}
CPU revision\t: 1

processor\t: 1
Features\t: fp asimd
CPU part\t: 0xfff
"""
X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme avx512f avx512_bf16
vmx flags\t: x

processor\t: 1
model name\t: other
flags\t\t: fpu
"""


def test_the_cache_key_tells_arm_cpus_apart(tmp_path, monkeypatch):
    """Arm's /proc/cpuinfo has no "model name" or "flags": every Arm CPU had one key, so a home shared by a
    Graviton3 (SVE) and a Graviton2 loaded the other's -march=native library (an illegal instruction)."""
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(cbuild, "_CPUINFO", info)
    seen = set()
    for sve, variant, part in (("", "0x3", "0xd0c"), (" sve", "0x1", "0xd40"), ("", "0x1", "0xd40")):
        info.write_text(ARM.format(sve=sve, variant=variant, part=part))
        sig = cbuild._cpu_signature()
        assert part in sig and "0xfff" not in sig
        seen.add((sig, cbuild._paths("cc", SMALL)[0].name, cbuild.signature(SMALL)["cpu_digest"]))
    assert len({s[0] for s in seen}) == len({s[1] for s in seen}) == len({s[2] for s in seen}) == 3
    info.write_text(X86)  # x86 keys as before: a model name and flags, the first processor's
    assert cbuild._cpu_signature() == "model name\t: AMD EPYC 9R14\nflags\t\t: fpu vme avx512f avx512_bf16"
    assert cbuild.signature(SMALL)["cpu"] == "AMD EPYC 9R14"


@pytest.mark.parametrize("value,retune", [("", False), ("0", False), ("false", False), ("No", False), ("off", False),
                                          ("1", True), ("true", True), ("yes", True)])
def test_retune_reads_the_usual_spellings(monkeypatch, value, retune):
    monkeypatch.setenv(tuning_cache.RETUNE_ENV, value)
    assert tuning_cache.retuning() is retune


@pytest.mark.skipif(torch.float32 not in cl.kernel_dtypes(), reason="no CPU linear kernel to tune here")
def test_a_kept_table_with_a_time_that_is_no_number_is_timed_again(monkeypatch, _own_tuning_cache):
    """A null time (a hand edit, another version) passed the check and crashed the engine's start in min()."""
    from llmlab import ModelConfig, Transformer

    cfg = ModelConfig(model_type="llama", vocab_size=300, hidden_size=256, intermediate_size=512, num_layers=1,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=64)
    model = Transformer(cfg).eval()
    assert cl.pack_linears(model) > 0
    measured = []

    def measure(layers, rows, *a):
        measured.append(rows)
        return [{"rows": r, "f_linear_ms": 1.0, "packed_ms": 2.0} for r in sorted(rows)]

    monkeypatch.setattr(cl, "_measure", measure)
    cl.tune_packing(model, rows=(1, 2), cache=True)
    (entry,) = _own_tuning_cache.iterdir()
    for bad in (None, "fast", True, float("nan"), -1.0):
        kept = json.loads(entry.read_text())
        kept["value"][0]["packed_ms"] = bad
        entry.write_text(json.dumps(kept))
        table = cl.tune_packing(model, rows=(1, 2), cache=True)
        assert table[0]["packed_ms"] == 2.0
    assert len(measured) == 6
    cl.tune_packing(model, rows=(1, 2), cache=True)  # a sound table is read back
    assert len(measured) == 6


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
@pytest.mark.parametrize("stderr,cause", [
    ("/usr/bin/ld: final link failed: No space left on device\ncollect2: error: ld returned 1 exit status",
     "No space left on device"),
    ("/usr/bin/ld: cannot find -lomp: No such file or directory\nclang: error: linker command failed with exit code 1",
     "cannot find -lomp"),
    ("k.c:3:1: error: unknown type name 'x'\ncollect2: error: ld returned 1 exit status", "unknown type name")])
def test_a_failed_build_names_its_cause_not_the_drivers_summary(cache, tmp_path, monkeypatch, stderr, cause):
    """A full disk was reported as "collect2: error: ld returned 1 exit status"."""
    (tmp_path / "msg").write_text(stderr + "\n")
    script = tmp_path / "cc"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'msg'} >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    built = cbuild.load(SMALL)
    assert built.lib is None and cause in built.error, built.error


def test_cache_directories_expand_a_quoted_tilde(tmp_path, monkeypatch):
    """LLMLAB_CACHE='~/c' (quoted, so the shell left the ~) made a directory named '~' in the working directory."""
    from llmlab import artifacts
    from llmlab.kernels import tuning_cache

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LLMLAB_CACHE", "~/c")
    monkeypatch.setenv(tuning_cache.DIR_ENV, "~/t")
    assert artifacts.cache_dir() == tmp_path / "c"
    assert tuning_cache.path_for("x", {"a": 1}).parent == tmp_path / "t"
