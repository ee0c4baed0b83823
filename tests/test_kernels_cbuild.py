"""Every C kernel builds for each x86 instruction set it has a path for, whatever this machine's CPU is: a
kernel that only ever compiled with AVX-512 once failed to build on an AVX2-only EPYC (Zen 3), and the engine
silently lost its attention kernel there."""

import platform
import subprocess
from pathlib import Path

import pytest

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
    for src in SOURCES:
        proc = subprocess.run([cc, "-O1", f"-march={march}", "-fopenmp", "-Wall", "-shared", "-fPIC",
                               "-I", str(src.parent), "-o", str(tmp_path / f"{src.stem}.so"), str(src), "-lm"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{src.name} with -march={march}:\n{proc.stderr[-2000:]}"
        assert "warning" not in proc.stderr, f"{src.name} with -march={march}:\n{proc.stderr[-2000:]}"
