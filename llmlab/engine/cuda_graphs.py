"""CUDA graphs for the engine's decode steps.

A decode step's shapes depend on the batch size and the longest
context; graphs are captured per batch bucket — batch padded up to 1, 2, 4, 8, 16, 32, 48, ... — into
one shared memory pool, and replayed with the step's inputs copied into static buffers. With the paged
kernel every graph takes the full table width (the kernel stops at each row's context, so only the
columns in use are copied), and all of them are captured when the engine starts (largest first); on the
gather path the context is also padded to a power-of-two number of blocks, and each (batch, width)
bucket is captured when a step first needs it. Padded rows use the scratch block. The graphed function
is the same `_decode_logits` the eager path runs, so CPU tests cover its maths; `pad_decode=True` makes
the CPU take the padded (graph-shaped) path too, and engine/emulated_graphs.py the graph bookkeeping.
With `cuda_fused_decode` the batch-1 graph captures kernels/cuda_decode.py's fused step instead (five
launches a layer; `decode_call`), the other buckets the usual one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from llmlab.transfer import copy_to_device

if TYPE_CHECKING:
    from llmlab.engine.model_runner import ModelRunner


def bucket_batch(n: int) -> int:
    if n <= 16:
        return 1 << (n - 1).bit_length()  # 1, 2, 4, 8, 16
    return -(-n // 16) * 16  # then multiples of 16


def batch_buckets(max_batch: int) -> list[int]:
    """The padded decode batch sizes that serve every batch of 1..max_batch sequences, largest first."""
    return sorted({bucket_batch(n) for n in range(1, max_batch + 1)}, reverse=True)


def bucket_blocks(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class DecodeGraphs:
    """CUDA graphs for decode steps, one per (batch bucket, table width): with the paged kernel the width is
    always the largest, one graph per batch bucket, all captured at start-up (`capture_all`); on the gather path
    the width is the bucket of the longest row, each captured when a step first needs it."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        max_b = bucket_batch(runner.config.cuda_graph_max_bs)
        dev = runner.device
        self.max_nb = max_nb = bucket_blocks(runner.max_blocks_per_seq)
        self.vec = torch.zeros(4, max_b, dtype=torch.long, device=dev)  # rows: ids, positions, slots, contexts
        self.vec[3] = 1
        self.tables = torch.zeros(max_b, max_nb, dtype=torch.long, device=dev)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.pool = None

    def _static(self, b: int, nb: int) -> list[Tensor]:
        """The decode step's inputs for batch `b` and table width `nb`: views of the static buffers."""
        ids, pos, slot, ctx = self.vec[:, :b]
        return [ids, pos, slot, self.tables[:b, :nb], ctx]

    def replay(self, b: int, nb: int, vec: Tensor, tables: Tensor, ids: Tensor | None = None) -> Tensor:
        """Run the graph of batch `b` and table width `nb` on `vec` (4, b) (ids, positions, slots, contexts) and
        `tables` (b, <= nb): two copies to the device, then the replay. `ids` (on the device) replace the first
        len(ids) ids of vec."""
        copy_to_device(self.vec[:, :b], vec)  # (pinned: the host need not wait for the step before)
        if ids is not None:
            self.vec[0, :len(ids)].copy_(ids)
        copy_to_device(self.tables[:b, :tables.shape[1]], tables)
        if (b, nb) not in self.graphs:
            self.graphs[(b, nb)] = self._capture(self._static(b, nb))
        graph, out = self.graphs[(b, nb)]
        graph.replay()
        return out

    def capture_all(self, max_batch: int) -> None:
        """Capture the full-width graph of every batch bucket up to `max_batch` (the paged-kernel path), largest
        first so the smaller ones fit in its memory pool — at start-up, as vLLM does, so no request waits for a
        capture. The inputs point every row at the scratch block (context 1): nothing real is read or written.
        Under inference mode, as a capture inside a step is: with gradients on, a compiled step would trace a
        backward through the paged kernel's custom op (which has none: the engine failed to start) and the eager
        one would record the unfused q/k/v and gate/up projections and keep activations for autograd."""
        scratch = self.runner.scratch
        with torch.inference_mode():
            for b in batch_buckets(max_batch):
                if (b, self.max_nb) in self.graphs:
                    continue
                static = self._static(b, self.max_nb)
                for t, value in zip(static, (0, 0, scratch * self.runner.block_size, scratch, 1)):
                    t.fill_(value)
                self.graphs[(b, self.max_nb)] = self._capture(static)

    def _capture(self, static: list[Tensor]) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        run = self.runner.decode_call(static[0].shape[0])
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run(*static)  # warm-up outside the graph (allocator, kernels' lazy init)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = run(*static)
        if self.pool is None:
            self.pool = graph.pool()
        return graph, out
