"""Linear layers for CPU inference: the same `nn.Linear`, multiplied from a weight packed once by whichever
kernel is fastest on this CPU for the number of rows at hand.

Why. On x86, `F.linear` goes to MKL/ATen, which re-reads the plain row-major weight on every call; at decode
shapes (a few rows per step) that is bandwidth-bound and slow. Four kernels, chosen per row count:
  - "packed": oneDNN's `_linear_pointwise` on a weight `_reorder_linear_weight` laid out once (what
    `torch.compile`'s CPU freezing pass does, here without compiling);
  - "panel": llmlab's register-tiled kernel on 16-column panels (kernels/cpu_panel_linear.py; AVX-512 or AVX2);
  - "skinny": llmlab's C kernel for 1-4 rows on the plain weight (cpu_skinny_linear.c; any CPU with a compiler);
  - "f_linear": plain `F.linear` (on a 2-core Intel Xeon MKL's fp32 GEMV won at 1-2 rows).
`benchmarks/cpu_linear.py` times SmolLM2-135M's 210 linear shapes per decode step (weights streamed from
memory; `benchmarks/results/cpu_linear.json`). On a 2-core AMD EPYC (Zen 4), bf16, F.linear / oneDNN / panel:
1 row 17.4 / 14.9 / 7.9 ms, 16 rows 26.1 / 19.1 / 11.0 ms, 512 rows 265 / 259 / 241 ms.

`PackedLinear` *is* an `nn.Linear` (same parameters, same state-dict names, `isinstance` holds),
so checkpoints, conversion and later module swaps see nothing new. It packs lazily on its first
inference call and packs again whenever the weight changes — its version counter (optimizer
steps, `load_state_dict`, any in-place write) or its storage (`.to()`) — so it never multiplies by
a stale copy. It falls back to `F.linear` while autograd records, off CPU, and for dtypes other
than fp32 and bf16 (bf16 only where one of the kernels takes it: oneDNN packs it on AVX-512 CPUs, the
panel kernel runs it on AVX2 and AVX-512) — also after a later `.half()` or `.to("cuda")`. Cost: one
packed copy of each weight per kernel in use (`tune_packing` frees the others).

    pack_linears(model)   # swap every nn.Linear (and fused projection) in place; returns how many
    tune_packing(model)   # time every kernel per row count on this CPU; route each count to the fastest
    skinny_linear(x, w, b)  # the C kernel (cpu_skinny_linear.c) for 1-4 rows: weights streamed at the bandwidth

Reference: PyTorch inductor `fx_passes/mkldnn_fusion.py` (the packing that freezing applies).
"""

from __future__ import annotations

import ctypes
import functools
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.kernels import cbuild, tuning_cache
from llmlab.kernels.cpu_panel_linear import pack_panels, panel_linear_checked, panel_linear_op, panel_supported
from llmlab.model.layers import FusedProjections, swap_linears

SKINNY_MAX_ROWS = 4  # the C kernel's limit (cpu_skinny_linear.c)
ROWS_ANY = 1 << 62  # a route's bound that takes every row count
SAMPLED_ROWS = 64  # tune_packing times counts from here on one layer of each shape (compute-bound)
ANNOUNCE_BYTES = 32 << 20  # a first timing of at least this much weight is said on stderr (tiny models: 0.1 s)


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


@functools.cache
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


def kernel_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes (of fp32 and bf16) for which some kernel here beats a plain F.linear call: oneDNN packs them, or
    llmlab's panel or 1-4 row kernel is built for them. On an AVX2-only CPU (a Zen 3 EPYC) oneDNN packs no bf16
    and torch's bf16 matmul ran at 1 GFLOP/s (fp32: 164), so only llmlab's kernels serve bf16 there."""
    return tuple(d for d in (torch.float32, torch.bfloat16)
                 if packing_supported(d) or panel_supported(d) or skinny_supported(d))


class PackedLinear(nn.Linear):
    """nn.Linear whose inference forward multiplies by a packed copy of the weight (see the module docstring)."""

    batch_hint: int = 16  # the row count oneDNN lays the weight out for (decode batches)
    # Which kernel takes how many rows: ascending (up to rows, kernel) pairs, the last one for every larger count.
    # Kernels: "packed" (oneDNN), "panel" (cpu_panel_linear.c), "skinny" (the C kernel, <= SKINNY_MAX_ROWS rows),
    # "f_linear" (MKL/ATen). tune_packing measures them on this CPU and sets this per layer.
    default_routes: tuple[tuple[int, str], ...] = ((ROWS_ANY, "packed"),)
    # What a torch.compile trace runs: "f_linear" (Inductor packs and fuses it; with freezing, oneDNN) or "panel"
    # (the custom op llmlab::panel_linear on the panel copy, which `prepare_for_compile` packs first).
    traced: str = "f_linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 dtypes: tuple[torch.dtype, ...] | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._copies: dict[str, tuple[tuple, Tensor]] = {}
        self._dtypes = kernel_dtypes() if dtypes is None else dtypes

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> PackedLinear:
        """A PackedLinear sharing `linear`'s parameters (no copy until the first packed call); it packs
        weights of `dtypes` (what `kernel_dtypes` allows here) and multiplies others with F.linear."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.register_parameter("bias", linear.bias)  # None included, as nn.Linear does (forward reads _parameters)
        new._copies = {}
        new._dtypes = dtypes
        return new

    @property
    def routes(self) -> tuple[tuple[int, str], ...]:
        return self.__dict__.get("_routes", self.default_routes)

    @routes.setter
    def routes(self, value: tuple[tuple[int, str], ...]) -> None:
        self.__dict__["_routes"] = tuple(value)
        self.__dict__["_kernels"] = {}  # kernel_for's answers were for the old routes

    def kernel_for(self, rows: int) -> str:
        """The kernel `routes` names for `rows` rows, if it runs for this layer here; else oneDNN's, where oneDNN
        packs this dtype, else F.linear. Remembered per (rows, dtype) for decode-sized counts: a decode step asks
        ~120 times."""
        dtype = self._parameters["weight"].dtype
        kernels = self.__dict__.setdefault("_kernels", {})
        kernel = kernels.get((rows, dtype))
        if kernel is None:
            kernel = self._choose(rows, dtype)
            if rows <= 256:
                kernels[(rows, dtype)] = kernel
        return kernel

    def _choose(self, rows: int, dtype: torch.dtype) -> str:
        kernel = next((k for up_to, k in self.routes if rows <= up_to), self.routes[-1][1])
        if (kernel == "skinny" and not (rows <= SKINNY_MAX_ROWS and skinny_supported(dtype))
                or kernel == "panel" and not panel_supported(dtype, self.in_features)
                or kernel == "packed" and not packing_supported(dtype)):
            return "packed" if kernel != "packed" and packing_supported(dtype) else "f_linear"
        return kernel

    def forward(self, x: Tensor) -> Tensor:
        # Parameters read from _parameters, not through nn.Module.__getattr__ (~1 us each): this runs ~120 times a
        # decode step, and its Python cost (27 us a call before, 2.4 ms of a 30 ms SmolLM2 step) is the step's.
        params = self._parameters
        w, bias = params["weight"], params["bias"]  # both registered (nn.Linear.__init__, from_linear)
        if torch.compiler.is_compiling():  # traced: the panel op on the copy packed beforehand, else Inductor's own
            held = self._copies.get("panel") if self.traced == "panel" and x.dtype == w.dtype else None
            if held is None:
                return F.linear(x, w, bias)
            return panel_linear_op(x, held[1], self.out_features, bias)
        K = self.in_features
        if (torch.is_grad_enabled() and w.requires_grad or w.device.type != "cpu" or x.dtype != w.dtype
                or w.dtype not in self._dtypes or x.shape[-1] != K or not x.numel()):
            return F.linear(x, w, bias)  # (a wrong input width gets F.linear's own error)
        kernel = self.kernel_for(x.numel() // K)
        if kernel == "panel":
            return panel_linear_checked(x, self._copy("panel"), self.out_features, bias)
        if kernel == "skinny":
            return skinny_linear(x, w, bias)
        if kernel == "f_linear":
            return F.linear(x, w, bias)
        return torch.ops.mkldnn._linear_pointwise(x, self._copy("packed"), bias, "none", [], "")

    def _copy(self, kind: str) -> Tensor:
        """The weight packed for `kind`, packed again whenever the weight changed (version counter, storage)."""
        w = self._parameters["weight"]
        key = (w.data_ptr(), None if w.is_inference() else w._version, w.dtype)
        held = self._copies.get(kind)
        if held is None or held[0] != key:
            with torch.no_grad():
                packed = (pack_panels(w) if kind == "panel"
                          else torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.batch_hint))
            held = self._copies[kind] = (key, packed)
        return held[1]

    def prepare_for_compile(self) -> bool:
        """Trace the panel kernel from now on (packed here, before tracing); False where it cannot run."""
        if not panel_supported(self.weight.dtype, self.in_features) or self.weight.device.type != "cpu":
            return False
        self._copy("panel")
        self.traced = "panel"
        return True

    def drop_copies(self, keep: set[str] | None = None) -> None:
        """Free the packed copies of kernels other than `keep` (none given: all); they pack again when used."""
        self._copies = {k: v for k, v in self._copies.items() if keep and k in keep}

    def __getstate__(self) -> dict:
        # oneDNN's copy is an opaque tensor: deepcopy and pickling drop the copies, which pack again lazily.
        return {**self.__dict__, "_copies": {}}

    def extra_repr(self) -> str:
        return super().extra_repr() + ", routes=" + ",".join(f"{k}<={r}" for r, k in self.routes[:-1]) + (
            ("," if len(self.routes) > 1 else "") + self.routes[-1][1])


def pack_linears(model: nn.Module, *, min_numel: int = 256 * 256) -> int:
    """Swap every plain nn.Linear of `model` with at least `min_numel` weights for a PackedLinear in
    place, and likewise the fused projections of `transformer.fuse_projections` (fuse first: one packed
    q/k/v call instead of three); return the number swapped. The parts of a fused group stay plain: the
    fused Linear is what inference runs, and packing both would keep two packed copies.

    Small weights stay plain: oneDNN's call costs about 20 us against F.linear's 6 us, which only
    pays off once the weight no longer sits in cache (measured: 64x64 6.8 vs 21.8 us; 256x256 at
    16 rows 51 vs 38 us; 576x576 155 vs 99 us). Returns 0 when no kernel here takes the model's dtype
    (`kernel_dtypes`).
    """
    params = next(model.parameters(), None)
    dtypes = kernel_dtypes()  # all of them: the model may be converted later
    if params is None or params.device.type != "cpu" or params.dtype not in dtypes:
        return 0
    return swap_linears(model, lambda linear: PackedLinear.from_linear(linear, dtypes), min_numel=min_numel)


def packed_layers(model: nn.Module) -> list[PackedLinear]:
    """Every PackedLinear `model` runs: its submodules and its fused projections."""
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    layers += [m.fused for m in model.modules()
               if isinstance(m, FusedProjections) and isinstance(m.fused, PackedLinear)]
    return layers


def tune_packing(model: nn.Module, rows: tuple[int, ...] = (1, 2, 4, 8, 16, 128), repeats: int = 3,
                 timer=None, cache: bool = False) -> list[dict]:
    """Time the model's packed linears at each row count (weights streamed, as in a decode step) with every
    kernel that runs here: F.linear, oneDNN-packed, the panel kernel (cpu_panel_linear.c) and, up to
    SKINNY_MAX_ROWS rows, the C kernel for a few rows. Routes each measured count, and the counts up to it from
    the one below, to its fastest kernel, and every count above the largest to the fastest there without a row
    limit (measure a prefill-sized count last); frees the packed copies no route uses; returns the timings.
    Counts from SAMPLED_ROWS up are timed on one layer of each shape, scaled to the model ("layers_timed"); a
    kernel that takes over twice the best after two rounds is not timed again.
    Which kernel wins depends on the CPU: on a 2-core Intel Xeon MKL's fp32 GEMV beat oneDNN at 1-2 rows
    (17.1 vs 23.7 ms per SmolLM2 step); on a Zen 4 EPYC the panel kernel beat oneDNN at every count
    (benchmarks/results/cpu_linear*.json). `timer(layers, rows, kernel) -> ms`, kernel one of "f_linear",
    "packed", "panel", "skinny", replaces the measurement (tests).
    cache=True (the engine's setting): the table of an earlier measurement on this machine with the same CPU,
    threads, torch, kernel sources, model shapes and row counts is read back instead of timing again, and a new
    measurement is kept (kernels/tuning_cache.py; $LLMLAB_RETUNE=1 times again). SmolLM2-135M's engine then starts
    in ~0.5 s instead of ~2.5 s (2-core Zen 3, fp32). A given `timer` is never cached."""
    if not rows:
        raise ValueError("tune_packing needs at least one row count to time.")
    layers = [m for m in packed_layers(model) if m.weight.dtype in m._dtypes and m.weight.device.type == "cpu"]
    if not layers:
        return []
    dtype = layers[0].weight.dtype
    skinny, packed = skinny_supported(dtype), packing_supported(dtype)
    panel = all(panel_supported(dtype, m.in_features) for m in layers)
    fields = table = None
    if cache and timer is None:
        fields = _tuning_fields(layers, rows, repeats, {"skinny": skinny, "packed": packed, "panel": panel})
        table = tuning_cache.load("cpu-linear", fields)
    if not _valid_table(table, rows):
        # an engine's first start with these shapes on this machine: a wait worth a line, from SmolLM2-135M's ~2 s
        announce = fields is not None and sum(m.weight.nbytes for m in layers) >= ANNOUNCE_BYTES
        if announce:
            print(f"llmlab: timing the CPU matmul kernels at {len(rows)} row counts for this model (once per machine "
                  "and model shape) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        table = _measure(layers, rows, repeats, timer or _time_layers, skinny, packed, panel)
        if fields is not None:
            tuning_cache.save("cpu-linear", fields, table)
        if announce:
            print(f"llmlab: timed in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    routes: list[tuple[int, str]] = []
    for entry in table:
        fastest = min((k[:-3] for k in entry if k.endswith("_ms")), key=lambda k: entry[f"{k}_ms"])
        routes = _extend(routes, entry["rows"], fastest)
    last = table[-1]
    beyond = min((k[:-3] for k in last if k.endswith("_ms") and k != "skinny_ms"), key=lambda k: last[f"{k}_ms"])
    routes = _extend(routes, ROWS_ANY, beyond)
    keep = {k for _, k in routes}
    for m in layers:
        m.routes = tuple(routes)
        m.drop_copies(keep=keep)
        for k in keep & {k for k, runs in (("panel", panel), ("packed", packed)) if runs}:
            m._copy(k)  # packed now, as a measurement leaves them (a table read back too): not in the first step
    return table


def _measure(layers: list[PackedLinear], rows: tuple[int, ...], repeats: int, timer, skinny: bool, packed: bool,
             panel: bool) -> list[dict]:
    """tune_packing's table: ms per kernel at each row count (see there)."""
    # Prefill-sized counts are compute-bound: whether the weights stream from memory barely matters there, so one
    # layer of each shape is timed and the sum scaled to the model (SmolLM2-135M in bf16 on a 2-core Zen 3: 9.1 s
    # of a 15.9 s tuning went to 128 rows through every layer).
    shapes: dict[tuple, list[PackedLinear]] = {}
    for m in layers:
        shapes.setdefault((m.in_features, m.out_features), []).append(m)
    sample = [group[0] for group in shapes.values()]
    scale = sum(m.weight.numel() for m in layers) / sum(m.weight.numel() for m in sample)
    table = []
    with torch.inference_mode():
        for r in sorted(rows):
            kernels = ["f_linear"] + (["packed"] if packed else []) + (["panel"] if panel else []) + (
                ["skinny"] if skinny and r <= SKINNY_MAX_ROWS else [])
            timed, factor = (sample, scale) if r >= SAMPLED_ROWS and len(sample) < len(layers) else (layers, 1.0)
            best = dict.fromkeys(kernels, float("inf"))
            for i in range(repeats):  # alternate, keep the best: other jobs share the cores
                if i == 2:  # over twice the best after two rounds (the first may be cold): not timed again
                    kernels = [k for k in kernels if best[k] <= 2 * min(best.values())]
                for k in kernels:
                    best[k] = min(best[k], timer(timed, r, k) * factor)
            entry = {"rows": r, **{f"{k}_ms": round(v, 3) for k, v in best.items()}}
            if timed is sample:
                entry["layers_timed"] = len(sample)
            table.append(entry)
    return table


def _tuning_fields(layers: list[PackedLinear], rows: tuple[int, ...], repeats: int, kernels: dict) -> dict:
    """Everything a tune_packing table depends on: the key of its cache entry."""
    shapes: dict[str, int] = {}
    for m in layers:
        shape = f"{m.in_features}x{m.out_features}{'+b' if m.bias is not None else ''}"
        shapes[shape] = shapes.get(shape, 0) + 1
    return {"format": 1, **cbuild.signature("cpu_panel_linear.c", "cpu_skinny_linear.c"),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": str(layers[0].weight.dtype),
            "kernels": kernels, "rows": sorted(rows), "repeats": repeats, "shapes": dict(sorted(shapes.items()))}


def _valid_table(table, rows: tuple[int, ...]) -> bool:
    """Whether a table read back has an entry per row count, in order, each with a time for some known kernel and
    every time a number (a null or a string, from a hand edit or another version, would fail tune_packing's min)."""
    kernels = {"f_linear_ms", "packed_ms", "panel_ms", "skinny_ms"}

    def is_time(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v >= 0

    return (isinstance(table, list) and [e.get("rows") if isinstance(e, dict) else None for e in table] == sorted(rows)
            and all(any(k in e for k in kernels) and all(is_time(e[k]) for k in kernels & set(e))
                    and set(e) <= kernels | {"rows", "layers_timed"} for e in table)
            and any(k != "skinny_ms" for k in table[-1] if k in kernels))


def _extend(routes: list[tuple[int, str]], up_to: int, kernel: str) -> list[tuple[int, str]]:
    """routes plus (up_to, kernel), merged into the last route when that is the same kernel."""
    if routes and routes[-1][1] == kernel:
        return routes[:-1] + [(up_to, kernel)]
    return routes + [(up_to, kernel)]


def _time_layers(layers: list[PackedLinear], rows: int, kernel: str) -> float:
    dtype = layers[0].weight.dtype
    xs = {m.in_features: torch.randn(rows, m.in_features, dtype=dtype) for m in layers}
    for m in layers:
        m.routes = ((ROWS_ANY, kernel),)
    t0 = time.perf_counter()
    for m in layers:
        m(xs[m.in_features])
    return (time.perf_counter() - t0) * 1e3
