"""Speed and scale applied to the one model from outside.

For now: activation checkpointing (recompute each block's activations in the backward pass instead
of storing them: memory per layer drops from all intermediates to the block input, for about one
extra forward). The Distributed issue adds DDP / FSDP2 / TP / PP here, in the torchtitan order
TP -> activation checkpointing -> compile -> FSDP.
"""

from __future__ import annotations

import types

from torch.utils.checkpoint import checkpoint

from llmlab.model.transformer import Block, Transformer


def apply_activation_checkpointing(model: Transformer) -> Transformer:
    for block in model.blocks:
        if getattr(block, "_checkpointed", False):
            continue
        inner = Block.forward

        def forward(self, x, ctx, _inner=inner):
            if not self.training:
                return _inner(self, x, ctx)
            return checkpoint(_inner, self, x, ctx, use_reentrant=False)  # dropout RNG is replayed

        block.forward = types.MethodType(forward, block)
        block._checkpointed = True
    return model
