"""Measure what a training step really holds, to check the estimates against.

`saved_activation_bytes` runs one forward + loss under `torch.autograd.graph.saved_tensors_hooks`
and sums the distinct storages autograd keeps for backward, excluding parameters: the activation
memory a step holds at the forward/backward boundary, on any device (CPU included).
`peak_cuda_activation_bytes` is the GPU counterpart: `torch.cuda.max_memory_allocated` during
forward + backward minus what was allocated before (weights, gradients already there).

Not here: timing (benchmarks/), optimizer state (count it from `optimizer.state`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn


def saved_activation_bytes(model: nn.Module, input_ids: Tensor, labels: Tensor, *,
                           checkpoint_blocks: bool = False) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during `model.loss(input_ids, labels)`.

    With `checkpoint_blocks`, every block runs under non-reentrant `torch.utils.checkpoint` (full
    recomputation), as a training loop would apply it from outside the model."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with _checkpointed(model) if checkpoint_blocks else nullcontext():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model.loss(input_ids, labels)
    del loss
    return sum(seen.values())


def peak_cuda_activation_bytes(model: nn.Module, input_ids: Tensor, labels: Tensor, *,
                               checkpoint_blocks: bool = False) -> int:
    """Peak CUDA bytes allocated by forward + backward beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with _checkpointed(model) if checkpoint_blocks else nullcontext():
        model.loss(input_ids, labels).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


class _checkpointed:
    """Run each of `model.blocks` under torch.utils.checkpoint for the duration of a `with`."""

    def __init__(self, model: nn.Module):
        self.blocks = list(model.blocks)

    def __enter__(self):
        from torch.utils.checkpoint import checkpoint

        for block in self.blocks:
            forward = block.forward
            block.forward = lambda x, ctx, f=forward: checkpoint(f, x, ctx, use_reentrant=False)

    def __exit__(self, *exc):
        for block in self.blocks:
            del block.forward  # drop the instance attribute: the class method is back
