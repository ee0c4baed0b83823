"""Every C kernel builds for each x86 instruction set it has a path for, whatever this machine's CPU is: a
kernel that only ever compiled with AVX-512 once failed to build on an AVX2-only EPYC (Zen 3), and the engine
silently lost its attention kernel there."""

import platform
import subprocess
from pathlib import Path

import pytest
import torch

from llmlab.kernels import cbuild

SOURCES = sorted(Path(cbuild.__file__).parent.glob("*.c"))
# plain x86-64 (SSE2), AVX2 + FMA (Zen 2/3, Intel client), AVX-512 without BF16 (Ice Lake), AVX-512 with BF16 (as Zen 4)
MARCHES = ["x86-64", "x86-64-v3", "icelake-server", "sapphirerapids"]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or cbuild.compiler() is None,
                    reason="needs an x86-64 C compiler")
@pytest.mark.parametrize("march", MARCHES)
def test_kernels_build_for_every_instruction_set(march, tmp_path):
    cc = cbuild.compiler()
    probe = subprocess.run([cc, f"-march={march}", "-x", "c", "-c", "-o", str(tmp_path / "p.o"), "-"],
                           input="int x;", capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"{cc} does not know -march={march}")
    procs = [(src, subprocess.Popen([cc, "-O1", f"-march={march}", "-fopenmp", "-Wall", "-shared", "-fPIC", "-I",
                                     str(src.parent), *cbuild._extra_flags(src.name), "-o",
                                     str(tmp_path / f"{src.stem}.so"), str(src), "-lm"],
                                    stderr=subprocess.PIPE, text=True))
             for src in SOURCES if src.name in cbuild.sources()]  # side by side; (cpu_pylist.c needs Python.h)
    for src, proc in procs:
        stderr = proc.communicate()[1]
        assert proc.returncode == 0, f"{src.name} with -march={march}:\n{stderr[-2000:]}"
        assert "warning" not in stderr, f"{src.name} with -march={march}:\n{stderr[-2000:]}"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or cbuild.compiler() is None
                    or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="needs an x86-64 C compiler and an AVX2 CPU")
@pytest.mark.parametrize("march,mode", [("x86-64-v3", 2), ("x86-64", 0)])
def test_panel_kernel_built_for_avx2_computes_f_linear(march, mode, tmp_path):
    """The AVX2 build of the panel kernel, run on any AVX2 machine (an AVX-512 one builds its own path natively),
    against F.linear: fp32 and widened bf16, tails of columns and row blocks; a plain x86-64 build says it has no
    kernel."""
    import ctypes

    import torch.nn.functional as F

    from llmlab.kernels.cpu_panel_linear import pack_panels

    src = Path(cbuild.__file__).with_name("cpu_panel_linear.c")
    so = tmp_path / f"panel-{march}.so"
    assert not cbuild._compile(cbuild.compiler(), ["-O2", f"-march={march}", "-fopenmp"], src, so)
    lib = ctypes.CDLL(str(so))
    assert lib.llmlab_panel_bf16_mode() == mode and lib.llmlab_panel_has(0) == (mode != 0)
    if not mode:
        return
    torch.manual_seed(0)
    for dtype, fn in ((torch.float32, lib.panel_linear_f32), (torch.bfloat16, lib.panel_linear_bf16)):
        fn.argtypes, fn.restype = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int], ctypes.c_int
        # 1-2 rows and a 6 + 2 block: the one- and two-row tile (odd and even k pair counts); 70 rows: widened once
        for M, N, K in ((1, 50, 34), (2, 145, 576), (8, 50, 34), (7, 145, 576), (16, 80, 64), (70, 33, 96)):
            x, w, b = torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype), torch.randn(N, dtype=dtype)
            y = torch.full((M, N), float("nan"), dtype=dtype)
            assert fn(x.data_ptr(), pack_panels(w).data_ptr(), b.data_ptr(), y.data_ptr(), M, N, K, 2) == 0
            want = F.linear(x.float(), w.float(), b.float()).to(dtype)
            tol = 1e-4 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(y.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.skipif(cbuild.compiler() is None, reason="needs a C compiler")
def test_prebuild_builds_the_missing_kernels_side_by_side_once(tmp_path, monkeypatch, capsys):
    """A first engine start on a machine builds every kernel (~16 s one after another on two cores): `prebuild`
    runs the compiler for the missing ones at once and says so; cached ones are not built again, and each then
    loads from the cache."""
    import shutil
    import threading
    import time

    real = {n: cbuild.load(n) for n in cbuild.sources()}  # built in the user's cache (or already there)
    if any(lib.lib is None for lib in real.values()):
        pytest.skip("a kernel does not build here")
    real_path = {n: next(p for p in cbuild._paths(cbuild.compiler(), n) if p.exists()) for n in real}
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    running, peak, built, lock = [0], [0], [], threading.Lock()

    def fake_compile(cc, flags, source, path):  # as long as a small build, then the real library in place
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_path[source.name], path)
        with lock:
            running[0] -= 1
            built.append(source.name)
        return ""

    monkeypatch.setattr(cbuild, "_compile", fake_compile)
    monkeypatch.setattr(cbuild.os, "cpu_count", lambda: 2)
    cbuild.load.cache_clear()
    try:
        cbuild.load("cpu_argmax.c")  # one already in this cache
        built.clear()
        names = cbuild.prebuild()
        assert sorted(names) == sorted(set(cbuild.sources()) - {"cpu_argmax.c"}) == sorted(built)
        assert peak[0] == 2  # side by side, one per core
        err = capsys.readouterr().err
        assert f"building {len(names)} C kernels for this CPU" in err and str(tmp_path / "kernels") in err
        assert "built in" in err and "failed" not in err
        assert all(cbuild.load(n).lib is not None for n in cbuild.sources())
        assert cbuild.prebuild() == [] and capsys.readouterr().err == ""  # all cached: silent
        cbuild.load.cache_clear()
        assert cbuild.prebuild() == []  # a new process finds them on disk
    finally:
        cbuild.load.cache_clear()


@pytest.mark.skipif(cbuild.compiler() is None, reason="needs a C compiler")
def test_prebuild_names_a_kernel_that_fails_to_build(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(cbuild, "_compile", lambda cc, flags, source, path: "error: no such instruction")
    cbuild.load.cache_clear()
    try:
        assert cbuild.prebuild(["cpu_swiglu.c"]) == ["cpu_swiglu.c"]
        assert "(cpu_swiglu.c failed; the slower paths take over)" in capsys.readouterr().err
        assert "no such instruction" in cbuild.load("cpu_swiglu.c").error
    finally:
        cbuild.load.cache_clear()


def test_prebuild_without_a_compiler_is_silent(monkeypatch, capsys):
    monkeypatch.setattr(cbuild, "compiler", lambda: None)
    assert cbuild.prebuild() == [] and capsys.readouterr().err == ""
