"""The compiled CPU decode step (`compile_decode=True`).

Eager decode of a small model on a CPU spends a third
of each step dispatching ~2,000 small ops (norms, RoPE, residuals, cache writes). The decode step is
then one Inductor graph with the weights frozen in (`FrozenDecode`): Inductor packs the linears
and fuses the rest into a few C++ loops; for engines of at most 4 sequences it also generates its
own GEMM kernels, which stream the weights near the memory bandwidth where oneDNN reaches ~60% of
it. One graph serves every batch size and context length (both symbolic, padded to at least 2); it
compiles once per engine, in about a minute for SmolLM2-135M on two cores (Inductor's disk cache
cannot hold frozen oneDNN weights); weights changed in place afterwards are refused with an error.
Since the eager engine's decode steps became direct C calls (`cpu_direct_decode`), the compiled step is the slower
one on the 2-core Zen 3 EPYC (SmolLM2-135M, bf16, end to end: 35.0 against 46.4 tok/s at one sequence, 170.0
against 176.1 at 16; benchmarks/results/engine_cpu_zen3_bf16.json).
"""

from __future__ import annotations

import sys
import time
import types

import torch
from torch import Tensor

from llmlab.errors import ConfigError
from llmlab.kernels.cpu_linear import packed_layers
from llmlab.kernels.cpu_panel_linear import bf16_widened
from llmlab.model.transformer import Transformer

# Up to this many rows per decode step, Inductor's own C++ GEMM kernels (max-autotune, CPP template) beat
# oneDNN on the CPU: they stream the weights at the memory bandwidth. On 2 EPYC cores, 16 frozen
# 576x3072 + 3072x576 pairs took, at 2 / 4 / 8 / 16 rows, bf16 4.4 / 4.8 / 18.3 / 34.3 ms vs oneDNN
# 6.5 / 6.6 / 8.4 / 9.2 ms, and fp32 7.2 / 7.4 / 15.0 / 26.5 vs 13.6 / 12.5 / 14.3 / 17.1 ms.
CPU_GEMM_TEMPLATE_MAX_SEQS = 4


def panel_beats_template(dtype: torch.dtype) -> bool:
    """Whether a small compiled engine should trace the panel kernel anyway: bf16 on a CPU without bf16
    instructions, where Inductor's template widens bf16 less well than the panel kernel (2-core Ice Lake Xeon,
    SmolLM2-135M, one sequence: 19.9-20.8 against 24.5-25.0 ms a decode step; fp32 there: the template, 27.9-29.4
    against 31.4-32.9)."""
    return dtype == torch.bfloat16 and bf16_widened()


class FrozenDecode:
    """The CPU decode step compiled with Inductor's freezing: the weights become constants of the graph, so
    Inductor packs the linears itself and fuses the rest. With `small_batch` (an engine of at most
    CPU_GEMM_TEMPLATE_MAX_SEQS sequences) Inductor also autotunes its C++ GEMM template against oneDNN for
    each linear. Dynamo reads these flags while tracing, so they are set around each call rather than passed
    as compile options. Sizes are marked dynamic, not `dynamic=True`, which would also trace float
    attributes (eps, dropout p) as inputs and restart the analysis. A weight changed in place after the
    first compile would be silently ignored: that is refused."""

    def __init__(self, fn, model: Transformer, small_batch: bool):
        # No guards on the model's modules: ~270 parameter guards cost 0.76 ms of a 22.5 ms step (SmolLM2, 16
        # rows, bf16); their weights are constants of the graph anyway, and changes to them are refused below.
        skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
        self.compiled = torch.compile(fn, options={"guard_filter_fn": skip} if skip else None)
        self.model = model
        self.params = list(model.parameters())
        self.version: int | None = None
        self.inductor = {"freezing": True}
        if small_batch:
            self.inductor |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}

    def __call__(self, *inputs: Tensor) -> Tensor:
        version = sum(p._version for p in self.params)  # bumped by every in-place write (optimizer, load)
        if self.version is not None and version != self.version:
            raise ConfigError("the model's weights changed after compile_decode compiled them into the CPU decode "
                              "step; build a new LLM after changing weights, or use compile_decode=False.")
        first, self.version = self.version is None, version
        for t in inputs:  # batch and block-table width symbolic from the first compile on (sizes >= 2)
            torch._dynamo.mark_dynamic(t, tuple(range(t.dim())))
        if first:
            for m in packed_layers(self.model):  # weights changed since the engine started: the panel copies too
                if m.traced == "panel":
                    m.prepare_for_compile()
            # a long silent pause otherwise; the frozen oneDNN weights keep it out of Inductor's disk cache
            print("llmlab: compiling the decode step (once per engine; about a minute for a 135M model on 2 CPU "
                  "cores) ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
        with torch._inductor.config.patch(self.inductor):
            out = self.compiled(*inputs)
        if first:
            print(f"llmlab: decode step compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        return out


def own_code(method):
    """`method` bound to a copy of its function with a code object of its own. Dynamo keeps compiled graphs per
    code object and, past `recompile_limit` (8) variants of one, runs it eagerly with only a log line: engines
    sharing ModelRunner._decode_logits would silently stop compiling from the ninth in a process."""
    fn = method.__func__
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    return types.MethodType(copy, method.__self__)
