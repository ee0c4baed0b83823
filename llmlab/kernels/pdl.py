"""Programmatic dependent launch (PDL, Hopper and later) for chains of Triton kernels.

    if pdl.supported(device): kernel[grid](..., PDL=True, **pdl.launch(True))

Why it exists: a batch-1 decode step is ~100 short kernels in a row, and between two of them the card
idles: the next kernel is launched only once the last one has finished and flushed, and its first
weight loads are issued only after that. With PDL (CUDA's programmatic stream serialisation) a kernel
may be launched while the one before it still runs. Each kernel of such a chain:

    trigger(PDL)   first thing: lets the next kernel of the stream launch once all of this kernel's
                   programs have started (the next one then sits in free SM slots);
    ...            loads that do not depend on the kernel before (its weights: the first tile);
    wait(PDL)      blocks until the kernel before has completed and its writes are visible;
    ...            everything that reads what earlier kernels wrote, and every store.

Every program of a PDL-launched kernel must reach `wait` before it ends and before it stores anything:
the kernel after it waits only for this one, so the chain is ordered only if each link waited. A kernel
launched without the attribute waits for the whole kernel before it, as usual. Both instructions are
no-ops in a kernel launched without it, and CUDA graphs keep the dependency as a programmatic edge.

The engine measures it rather than assuming it: `FusedDecode.tune` times the whole step with and without
PDL on the card at start-up, checks that both give bitwise the same logits, and keeps the faster.
Triton's CPU interpreter has no grid-dependency instructions, so there PDL stays off (the tests stand
no-ops in for them); `compile_for_cuda` in gemv.py and cuda_decode.py builds the PDL variants for sm_90.
Reference: CUDA C++ Programming Guide, "Programmatic Dependent Launch and Synchronization"; Triton's
tutorial 11-programmatic-dependent-launch.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def supported(device: torch.device) -> bool:
    """Whether kernels on `device` can be launched with PDL: a CUDA card of compute capability 9.0 or later and
    a Triton that has the grid-dependency instructions (3.3 and later)."""
    if triton is None or device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:
        from triton.language.extra import cuda as tl_cuda
    except ImportError:
        return False
    return hasattr(tl_cuda, "gdc_wait") and hasattr(tl_cuda, "gdc_launch_dependents")


def launch(pdl: bool) -> dict:
    """The launch keyword for a kernel call: {"launch_pdl": True} with PDL, else none (so a Triton without the
    option, or the interpreter, sees the call it always did)."""
    return {"launch_pdl": True} if pdl else {}


if triton is not None:

    @triton.jit
    def trigger(PDL: tl.constexpr):
        """Let the next kernel in the stream launch (once every program of this one has called this)."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def wait(PDL: tl.constexpr):
        """Block until the kernel before has completed and its memory is visible."""
        if PDL:
            tl.extra.cuda.gdc_wait()
