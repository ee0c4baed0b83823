"""Batch-1 decode linears on CUDA: each weight shape to the faster of cuBLAS and kernels/gemv.py, timed on the card.

    use_gemv(model)   # swap nn.Linear (and the fused q/k/v, gate/up of transformer.fuse_projections) for GemvLinear
    tune_gemv(model)  # time cuBLAS and a few tile configurations per weight shape; route each shape to the fastest

A GemvLinear shares its parameters with the Linear it replaces (no copy). Its forward runs the Triton
kernel only for one row of inference input on the device the kernel runs on, with the configuration
`tune_gemv` chose for its shape (`gemv_config`, None = cuBLAS); everything else is F.linear. So
prefill, batches of more than one sequence and training are unchanged.

Timing is the same as the step's: a CUDA graph of one call per layer of that shape (each layer's own
weight, so the bytes come from memory rather than L2), replayed; the best of a few replays counts.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.kernels import gemv as _gemv
from llmlab.model.layers import FusedProjections, swap_linears

# (block_n, block_k, split_k, num_warps) tried per weight shape; benchmarks/gemv.py sweeps more.
GEMV_CONFIGS = ((8, 512, 1, 4), (16, 512, 1, 4), (32, 256, 1, 4), (16, 256, 2, 4), (16, 256, 4, 4))


def available(device: torch.device) -> bool:
    """Whether the kernel runs on `device`: CUDA with Triton, or the CPU under TRITON_INTERPRET=1 (tests)."""
    import os

    if _gemv.triton is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


class GemvLinear(nn.Linear):
    """nn.Linear whose one-row inference forward runs kernels/gemv.py (see the module docstring)."""

    gemv_config: dict | None = None  # tile configuration for this shape; None -> cuBLAS (F.linear)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> GemvLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        cfg, w = self.gemv_config, self.weight
        if (cfg is None or x.numel() != self.in_features or x.dtype != w.dtype or x.device != w.device
                or (torch.is_grad_enabled() and w.requires_grad)):
            return F.linear(x, w, self.bias)
        return _gemv.gemv(x, w, self.bias, **cfg)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gemv={self.gemv_config or 'cublas'}"


def use_gemv(model: nn.Module, *, min_numel: int = 256 * 256) -> int:
    """Swap every plain nn.Linear of `model` with at least `min_numel` weights, and the fused projections,
    for a GemvLinear in place (the parts of a fused group stay: the fused Linear is what inference runs);
    return the number swapped. They run cuBLAS until `tune_gemv` routes them."""
    return swap_linears(model, GemvLinear.from_linear, min_numel=min_numel)


def gemv_layers(model: nn.Module) -> list[GemvLinear]:
    """Every GemvLinear `model` runs: its submodules and its fused projections (tied weights once per module)."""
    layers = [m for m in model.modules() if isinstance(m, GemvLinear)]
    layers += [m.fused for m in model.modules() if isinstance(m, FusedProjections) and isinstance(m.fused, GemvLinear)]
    return layers


def tune_gemv(model: nn.Module, configs=GEMV_CONFIGS, repeats: int = 3, timer=None) -> list[dict]:
    """Route each weight shape of the model's GemvLinears to the fastest of cuBLAS and `configs`, timed with
    `timer(layers, config) -> us per call` (config None = cuBLAS; default: a CUDA graph of the layers, replayed);
    returns one entry per shape with its timings and choice."""
    timer = timer or _graph_us
    groups: dict[tuple, list[GemvLinear]] = {}
    for m in gemv_layers(model):
        groups.setdefault((m.out_features, m.in_features, m.weight.dtype, m.bias is not None), []).append(m)
    report = []
    with torch.no_grad():
        for (N, K, dtype, _), layers in groups.items():
            candidates: list[dict | None] = [None] + [
                dict(block_n=bn, block_k=bk, split_k=sk, num_warps=nw) for bn, bk, sk, nw in configs]
            times = [min(timer(layers, c) for _ in range(repeats)) for c in candidates]
            best = min(range(len(candidates)), key=times.__getitem__)
            for m in layers:
                m.gemv_config = candidates[best]
            report.append({"N": N, "K": K, "dtype": str(dtype).removeprefix("torch."), "layers": len(layers),
                           "cublas_us": round(times[0], 2), "gemv_us": [round(t, 2) for t in times[1:]],
                           "chosen": candidates[best]})
    return report


def graph_us(calls, iters: int = 5) -> float:
    """Microseconds for one replay of a CUDA graph of `calls()` (warmed up on a side stream first, so lazy
    compilation happens outside the graph), the mean of `iters` replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        calls()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        calls()
    return replay_us(graph, iters)


def replay_us(graph: torch.cuda.CUDAGraph, iters: int = 50) -> float:
    """Microseconds per replay of a captured CUDA graph (the GPU's time, no host work in between): one replay,
    then the mean of `iters` between CUDA events."""
    graph.replay()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        graph.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) * 1e3 / iters


def _graph_us(layers: list[GemvLinear], config: dict | None) -> float:
    w0 = layers[0].weight
    x = torch.randn(1, w0.shape[1], dtype=w0.dtype, device=w0.device)
    for m in layers:
        m.gemv_config = config

    def calls():
        for m in layers:
            m(x)

    if w0.device.type != "cuda":  # the interpreter (tests): wall time, one pass
        t0 = time.perf_counter()
        calls()
        return (time.perf_counter() - t0) * 1e6 / len(layers)
    return graph_us(calls) / len(layers)
