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
                                     str(src.parent), "-o", str(tmp_path / f"{src.stem}.so"), str(src), "-lm"],
                                    stderr=subprocess.PIPE, text=True)) for src in SOURCES]  # side by side
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
