"""The engine's CUDA-graph decode path on a CPU, with each graph replay emulated.

On CUDA, decode steps replay graphs captured per batch bucket (cuda_graphs.DecodeGraphs): static input
buffers, full-width block tables of which a step copies only the columns it uses, every bucket captured at
start-up. That bookkeeping has no GPU in CI. `emulate_cuda_graphs(runner)` gives a CPU ModelRunner the same
path, where a "capture" records the decode call and its static inputs and a "replay" runs the call again on
the buffers' current contents into the same output tensor — what a real replay computes. Used by the tests
and benchmarks/engine_host.py; nothing else should need it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from llmlab.engine.cuda_graphs import DecodeGraphs
from llmlab.engine.model_runner import ModelRunner


class ReplayGraph:
    """Stands in for torch.cuda.CUDAGraph: replay() runs the captured call again on its static inputs."""

    def __init__(self, run: Callable[..., Tensor], static: list[Tensor]):
        self.run, self.static = run, static
        self.out = run(*static)

    def replay(self) -> None:
        with torch.inference_mode():  # a real replay runs no autograd; its output was made under inference mode
            self.out.copy_(self.run(*self.static))


def emulate_cuda_graphs(runner: ModelRunner) -> DecodeGraphs:
    """Switch a CPU runner's decode steps to the CUDA-graph path with emulated replays (captured as on CUDA:
    with a paged kernel, every batch bucket now); returns its graphs."""
    graphs = DecodeGraphs(runner)

    def capture(static: list[Tensor]) -> tuple[ReplayGraph, Tensor]:
        graph = ReplayGraph(runner.decode_call(static[0].shape[0]), static)
        return graph, graph.out

    graphs._capture = capture  # this instance only
    runner.graphs, runner.pad_decode = graphs, True
    if runner.decode_kernel:
        graphs.capture_all(min(runner.config.max_num_seqs, runner.config.cuda_graph_max_bs))
    return graphs
