"""Host-to-device copies that do not make the host wait for the GPU.

    to_device(cpu_tensor, device)            # like .to(device)
    device_tensor(values, dtype, device)     # like torch.tensor(values, dtype=dtype, device=device)
    copy_to_device(dst, cpu_tensor)          # like dst.copy_(cpu_tensor)

A copy from pageable host memory to a CUDA device waits for every kernel already queued on the
stream: PyTorch follows a blocking host-to-device copy with a stream sync, and with non_blocking=True
the driver may still stage pageable memory synchronously ("API synchronization behavior" in the CUDA
runtime docs). Where the host is meant to run ahead of the GPU — the engine launching a decode step
while the one before still runs (async scheduling), the training loop queueing its next step — such a
copy silently drains the queue and the host's work lands on the critical path again. Staged in pinned
memory and copied with non_blocking=True, the call returns at once; PyTorch's caching host allocator
keeps the pinned block until the copy's stream event has passed, so the source can be reused at once.

On a CPU device these are plain copies (and pinning needs an accelerator).
Reference: the PyTorch tutorial "A guide on good usage of non_blocking and pin_memory()"; vLLM keeps
its step inputs in pinned buffers for the same reason.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _staged(t: Tensor) -> Tensor:
    return t if t.is_pinned() else t.pin_memory()


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """`t.to(device)`; from the CPU to CUDA through pinned memory, without waiting for the stream."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return _staged(t).to(device, non_blocking=True)


def device_tensor(values, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """`torch.tensor(values, dtype=dtype, device=device)` without waiting for the stream on CUDA."""
    return to_device(torch.tensor(values, dtype=dtype), device)


def copy_to_device(dst: Tensor, src: Tensor) -> Tensor:
    """`dst.copy_(src)`; a CPU `src` into a CUDA `dst` through pinned memory, without waiting for the stream."""
    if dst.device.type == "cuda" and src.device.type == "cpu":
        return dst.copy_(_staged(src), non_blocking=True)
    return dst.copy_(src)
