"""Packed linear layers for CPU inference: the same `nn.Linear`, multiplied by oneDNN from a
weight reordered once into its blocked layout.

Why. On x86, `F.linear` in fp32 goes to MKL's sgemm, which re-reads the plain row-major weight
on every call; at decode shapes (a few rows per step) that is bandwidth-bound and slow. oneDNN's
`_reorder_linear_weight` lays the weight out once for its own kernels and `_linear_pointwise`
multiplies with it — what `torch.compile`'s CPU "freezing" pass does, here without compiling.
`benchmarks/cpu_linear.py` times SmolLM2-135M's 210 linear shapes per decode step (weights
streamed from memory) on a 2-core AMD EPYC (Zen 4), results in `benchmarks/results/cpu_linear.json`:

    fp32, 1 row:   F.linear 43.8 ms  packed 27.6 ms  (1.59x)     bf16, 1 row:   28.6 -> 19.1 ms (1.49x)
    fp32, 16 rows: F.linear 82.6 ms  packed 45.4 ms  (1.82x)     bf16, 16 rows: 42.7 -> 28.1 ms (1.52x)

`PackedLinear` *is* an `nn.Linear` (same parameters, same state-dict names, `isinstance` holds),
so checkpoints, conversion and later module swaps see nothing new. It packs lazily on its first
inference call and packs again whenever the weight changes — its version counter (optimizer
steps, `load_state_dict`, any in-place write) or its storage (`.to()`) — so it never multiplies by
a stale copy. It falls back to `F.linear` while autograd records, off CPU, and for dtypes other
than fp32 (and bf16 where the CPU has bf16 instructions) — also after a later `.half()` or
`.to("cuda")`. Cost: one packed copy of each weight.

    pack_linears(model)   # swap every nn.Linear (and fused projection) in place; returns how many
    tune_packing(model)   # time F.linear, packed and the C kernel per row count on this CPU; route each count
    skinny_linear(x, w, b)  # the C kernel (cpu_skinny_linear.c) for 1-4 rows: weights streamed at the bandwidth

Reference: PyTorch inductor `fx_passes/mkldnn_fusion.py` (the packing that freezing applies).
"""

from __future__ import annotations

import ctypes
import functools
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.kernels import cbuild
from llmlab.model.layers import FusedProjections

SKINNY_MAX_ROWS = 4  # the C kernel's limit (cpu_skinny_linear.c)


@functools.cache
def _skinny_functions() -> dict[torch.dtype, ctypes._CFuncPtr]:
    """The C kernel's entry points by dtype; empty where it cannot be built (no compiler)."""
    args = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    return cbuild.dtype_functions("cpu_skinny_linear.c", "skinny_linear", args, "llmlab_skinny_has_f16")


def skinny_supported(dtype: torch.dtype) -> bool:
    """Whether the C kernel for 1-4 rows (cpu_skinny_linear.c) is built here for `dtype`."""
    return dtype in _skinny_functions()


def skinny_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear for at most SKINNY_MAX_ROWS rows of x through the C kernel: CPU tensors of one dtype that
    `skinny_supported` accepts; x (..., K), weight (N, K) -> (..., N)."""
    N, K = weight.shape
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    if not 1 <= M <= SKINNY_MAX_ROWS:
        raise ValueError(f"skinny_linear takes 1 to {SKINNY_MAX_ROWS} rows, got {M}; use F.linear.")
    w = weight.contiguous()
    b = None if bias is None else bias.contiguous()
    y = torch.empty(M, N, dtype=w.dtype)
    status = _skinny_functions()[w.dtype](x2.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(),
                                          y.data_ptr(), M, N, K, torch.get_num_threads())
    if status != 0:
        raise MemoryError("the skinny linear kernel could not allocate its scratch space.")
    return y.view(*x.shape[:-1], N)


def packing_supported(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build and CPU can pack `dtype` weights (tried on a tiny weight)."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        try:
            if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return False
        except (AttributeError, RuntimeError):
            return False
    elif dtype != torch.float32:
        return False
    try:
        w = torch.ones(4, 8, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8, dtype=dtype), packed, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return bool((y == 8).all())


def _packable_dtypes() -> tuple[torch.dtype, ...]:
    return tuple(d for d in (torch.float32, torch.bfloat16) if packing_supported(d))


class PackedLinear(nn.Linear):
    """nn.Linear whose inference forward multiplies by a oneDNN-packed copy of the weight."""

    batch_hint: int = 16  # the row count oneDNN lays the weight out for (decode batches)
    min_rows: int = 1  # fewer rows than this go to F.linear (tune_packing: where MKL's GEMV wins on this CPU)
    skinny_rows: int = 0  # at most this many rows go to the C kernel (tune_packing: where it wins on this CPU)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 dtypes: tuple[torch.dtype, ...] | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._packed = None
        self._packed_from = None
        self._dtypes = _packable_dtypes() if dtypes is None else dtypes

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> PackedLinear:
        """A PackedLinear sharing `linear`'s parameters (no copy until the first packed call); it packs
        weights of `dtypes` (what `packing_supported` allows here) and multiplies others with F.linear."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new._packed = None
        new._packed_from = None
        new._dtypes = dtypes
        return new

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if (torch.is_grad_enabled() and w.requires_grad or w.device.type != "cpu" or x.dtype != w.dtype
                or torch.compiler.is_compiling()  # traced: Inductor's freezing packs the weight itself
                or w.dtype not in self._dtypes):
            return F.linear(x, w, self.bias)
        if x.numel() <= self.skinny_rows * self.in_features and x.numel() and skinny_supported(w.dtype):
            return skinny_linear(x, w, self.bias)
        if x.numel() < self.min_rows * self.in_features:
            return F.linear(x, w, self.bias)
        key = (w.data_ptr(), None if w.is_inference() else w._version, w.dtype)
        if self._packed_from != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.batch_hint)
            self._packed_from = key
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def __getstate__(self) -> dict:
        # The packed copy is an opaque oneDNN tensor: deepcopy and pickling drop it, the copy repacks lazily.
        return {**self.__dict__, "_packed": None, "_packed_from": None}

    def extra_repr(self) -> str:
        return super().extra_repr() + ", packed=oneDNN"


def pack_linears(model: nn.Module, *, min_numel: int = 256 * 256) -> int:
    """Swap every plain nn.Linear of `model` with at least `min_numel` weights for a PackedLinear in
    place, and likewise the fused projections of `transformer.fuse_projections` (fuse first: one packed
    q/k/v call instead of three); return the number swapped. The parts of a fused group stay plain: the
    fused Linear is what inference runs, and packing both would keep two packed copies.

    Small weights stay plain: oneDNN's call costs about 20 us against F.linear's 6 us, which only
    pays off once the weight no longer sits in cache (measured: 64x64 6.8 vs 21.8 us; 256x256 at
    16 rows 51 vs 38 us; 576x576 155 vs 99 us). Returns 0 when the model's dtype cannot be packed
    on this machine.
    """
    params = next(model.parameters(), None)
    if params is None or params.device.type != "cpu" or not packing_supported(params.dtype):
        return 0
    dtypes = _packable_dtypes()  # all of them: the model may be converted later
    swapped = 0
    for parent in list(model.modules()):
        skip: tuple[str, ...] = ()
        if isinstance(parent, FusedProjections) and parent.fused is not None:
            skip = parent._fused_parts
            if type(parent.fused) is nn.Linear and parent.fused.weight.numel() >= min_numel:
                parent.set_fused(PackedLinear.from_linear(parent.fused, dtypes))
                swapped += 1
        for name, child in list(parent.named_children()):
            if name not in skip and type(child) is nn.Linear and child.weight.numel() >= min_numel:
                setattr(parent, name, PackedLinear.from_linear(child, dtypes))
                swapped += 1
    return swapped


def packed_layers(model: nn.Module) -> list[PackedLinear]:
    """Every PackedLinear `model` runs: its submodules and its fused projections."""
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    layers += [m.fused for m in model.modules()
               if isinstance(m, FusedProjections) and isinstance(m.fused, PackedLinear)]
    return layers


def tune_packing(model: nn.Module, rows: tuple[int, ...] = (1, 2, 4, 8, 16), repeats: int = 3,
                 timer=None) -> list[dict]:
    """Time the model's packed linears three ways at each row count (weights streamed, as in a decode step):
    F.linear, oneDNN-packed, and the C kernel for at most SKINNY_MAX_ROWS rows (where it is built). Sets every
    PackedLinear's `skinny_rows` to the largest count up to which the C kernel beats both at every measured
    count, and `min_rows` to the smallest count from which packing beats F.linear at every larger measured
    count; returns the timings. Which kernel wins depends on the CPU: on a 2-core Intel Xeon MKL's fp32 GEMV
    beat oneDNN at 1-2 rows (17.1 vs 23.7 ms per SmolLM2 step), on a Zen 4 EPYC oneDNN beat MKL at every
    count and the C kernel beat both at 1-2 rows (benchmarks/results/cpu_linear*.json).
    `timer(layers, rows, kernel) -> ms`, kernel one of "f_linear", "packed", "skinny", replaces the
    measurement (tests)."""
    layers = [m for m in packed_layers(model) if m.weight.dtype in m._dtypes and m.weight.device.type == "cpu"]
    if not layers:
        return []
    timer = timer or _time_layers
    skinny = skinny_supported(layers[0].weight.dtype)
    table = []
    with torch.inference_mode():
        for r in rows:
            kernels = ["f_linear", "packed"] + (["skinny"] if skinny and r <= SKINNY_MAX_ROWS else [])
            best = dict.fromkeys(kernels, float("inf"))
            for _ in range(repeats):  # alternate, keep the best: other jobs share the cores
                for k in kernels:
                    best[k] = min(best[k], timer(layers, r, k))
            table.append({"rows": r, **{f"{k}_ms": round(v, 3) for k, v in best.items()}})
    min_rows = max(rows) + 1  # never packed, unless it wins from some count on
    for entry in reversed(table):
        if entry["packed_ms"] >= entry["f_linear_ms"]:
            break
        min_rows = entry["rows"]
    skinny_rows = 0
    for entry in table:  # ascending row counts
        if "skinny_ms" not in entry or entry["skinny_ms"] >= min(entry["packed_ms"], entry["f_linear_ms"]):
            break
        skinny_rows = entry["rows"]
    for m in layers:
        m.min_rows, m.skinny_rows = min_rows, skinny_rows
    return table


def _time_layers(layers: list[PackedLinear], rows: int, kernel: str) -> float:
    dtype = layers[0].weight.dtype
    xs = {m.in_features: torch.randn(rows, m.in_features, dtype=dtype) for m in layers}
    for m in layers:
        m.min_rows = 1 if kernel == "packed" else rows + 1
        m.skinny_rows = rows if kernel == "skinny" else 0
    t0 = time.perf_counter()
    for m in layers:
        m(xs[m.in_features])
    return (time.perf_counter() - t0) * 1e3
