"""The decode step of one sequence on CUDA in five kernel launches a layer.

    fused = FusedDecode(model, kv)                 # checks the model, keeps references to its weights
    logits = fused(ids, pos, slot, tables, ctx)    # (1, V) fp32, what ModelRunner._decode_logits returns

Why it exists: a batch-1 decode step is a chain of weight reads, yet on an H200 the compiled step of a
Llama-3.2-1B shape replayed in 1.42 ms while its matmuls alone took 0.87 ms (benchmarks/results/
gpu_run_h200.txt): the rest went to ~100 small kernels a step (norms, RoPE, cache writes, SiLU, residual
adds), each a few microseconds on a nearly idle card. Here every small op rides on a matmul's kernel:

    1. RMSNorm -> q/k/v GEMV (+ biases) -> (q/k RMSNorm) -> RoPE -> K and V into their page slots  (_qkv_kernel)
    2. paged attention (kernels/paged_attention.py; plus its merge launch when the keys are split)
    3. o GEMV, added into the residual (kernels/gemv.py's atomic-add path)
    4. RMSNorm -> gate/up GEMV -> SiLU(gate) * up                                               (_swiglu_kernel)
    5. down GEMV, added into the residual
and the step ends with the final RMSNorm inside the LM head's GEMV (_head_kernel, fp32 logits). Each GEMV
program recomputes the RMS of the residual (a few KB, from L2) instead of waiting for a norm kernel.

Numerics: the residual stream is fp32 for the whole step (eager rounds it to the model's dtype after every
add); everything else is rounded to the model's dtype where the eager step rounds it (normalised inputs,
projection outputs, RoPE tables and products, SiLU), so in bf16 the logits differ from the eager step's by
about what one bf16 rounding of the residual makes. The tests compare both through Triton's interpreter on
CPU, and `compile_for_cuda` builds every kernel for sm_90 on any machine.

Supports what the engine serves of the LLaMA family: pre-RMSNorm blocks, RoPE (any scaling: the model's
inverse frequencies are read), SwiGLU, q/k/v biases (Qwen2), q/k norms (Qwen3), sliding windows (Mistral),
tied embeddings; `unsupported(cfg)` says what a model lacks. The engine runs it for decode steps of one
sequence (its CUDA graph of batch 1) when `EngineConfig.cuda_fused_decode` is set; `tune` picks each
kernel's tile sizes on the card at start-up, then whether to chain the launches with programmatic dependent
launch (kernels/pdl.py, Hopper and later): each kernel then starts while the one before finishes, loads its
first weight tile, and waits for that kernel's output only where it reads it. PDL is kept only if the whole
step is faster with it and its logits are bitwise the same.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from llmlab.errors import ConfigError
from llmlab.kernels import gemv as _gemv
from llmlab.kernels import paged_attention as _pa
from llmlab.kernels import pdl as _pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the engine keeps its usual decode step
    triton = None

# Tile choices per kernel, (block_n, block_k, num_warps), the first the default; `tune` times them on the card.
# For _qkv_kernel the first number is how many programs share a head (each takes head_dim / 2 / it RoPE pairs):
# a Llama-3.2-1B step has only 48 heads of q, k and v for 132 SMs. Models with q/k norms take 1 (a norm needs
# the whole head).
CONFIGS = {
    "qkv": ((4, 256, 4), (2, 256, 4), (8, 512, 4), (1, 128, 4)),
    "o": ((8, 512, 4), (16, 256, 4), (4, 512, 4)),
    "swiglu": ((8, 512, 4), (4, 512, 4), (8, 256, 4), (16, 256, 8)),
    "down": ((8, 512, 4), (16, 256, 4), (16, 512, 8)),
    "head": ((16, 256, 4), (32, 256, 8), (8, 512, 4)),
}


def available(device: torch.device) -> bool:
    """Whether the fused step runs on `device`: CUDA with Triton, or the CPU under TRITON_INTERPRET=1 (tests;
    the paged attention kernel's interpreter needs Triton >= 3.7)."""
    if triton is None or not _pa.available(device):
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def unsupported(cfg) -> str | None:
    """None if the fused step computes this model (a ModelConfig), else a sentence naming what it lacks."""
    hd = cfg.head_dim
    needs = [(cfg.norm == "rmsnorm", "RMSNorm"), (cfg.norm_position == "pre", "pre-norm blocks"),
             (cfg.final_norm, "a final norm"), (cfg.position == "rope", "RoPE positions"),
             (cfg.gated_ffn and cfg.activation == "silu", "a SwiGLU feed-forward"),
             (not cfg.o_bias and not cfg.mlp_bias, "no o-projection or MLP biases"),
             (hd >= 4 and hd & (hd - 1) == 0, "a power-of-two head_dim")]
    missing = [what for ok, what in needs if not ok]
    return f"the fused decode step needs {', '.join(missing)}" if missing else None


@dataclass
class _Layer:
    norm1: Tensor
    qkv: Tensor
    qkv_bias: Tensor | None
    q_norm: Tensor | None
    k_norm: Tensor | None
    o: Tensor
    norm2: Tensor
    gate_up: Tensor
    down: Tensor


class FusedDecode:
    """A model's decode step for one sequence as the kernels of the module docstring. It holds references to
    the model's weights (no copies: in-place updates show) and the paged cache's pools, plus four small work
    buffers, and returns the same logits buffer every call (sample it before the next call)."""

    def __init__(self, model, kv, *, configs: dict[str, tuple[int, int, int]] | None = None):
        cfg = model.cfg
        why = unsupported(cfg)
        if why:
            raise ConfigError(f"{why}; drop cuda_fused_decode for this model.")
        self.cfg, self.kv = cfg, kv
        self.layers = []
        for block in model.blocks:
            attn, ffn = block.attn, block.ffn
            if attn.qkv is None or ffn.gate_up is None:
                raise ConfigError("cuda_fused_decode reads the fused q/k/v and gate/up weights: keep "
                                  "fuse_projections=True (and no LoRA or quantized projections).")
            self.layers.append(_Layer(
                block.norm1.weight, attn.qkv.weight, attn.qkv.bias,
                attn.q_norm.weight if attn.q_norm is not None else None,
                attn.k_norm.weight if attn.k_norm is not None else None,
                attn.o.weight, block.norm2.weight, ffn.gate_up.weight, ffn.down.weight))
        self.embed, self.norm_f, self.head = model.embed.weight, model.norm_f.weight, model.lm_head.weight
        self.eps = float(cfg.norm_eps)
        self.embed_scale = math.sqrt(cfg.hidden_size) if cfg.embedding_scale else 1.0
        self.inv_freq = model.inv_freq.float().contiguous()
        dev, dt = self.embed.device, self.embed.dtype
        H, hd = cfg.num_heads, cfg.head_dim
        self.residual = torch.zeros(cfg.hidden_size, dtype=torch.float32, device=dev)
        self.q = torch.zeros(H * hd, dtype=dt, device=dev)
        self.act = torch.zeros(cfg.intermediate_size, dtype=dt, device=dev)
        self.logits = torch.zeros(1, cfg.vocab_size, dtype=torch.float32, device=dev)
        self.configs = {name: c[0] for name, c in CONFIGS.items()} | (configs or {})
        # Programmatic dependent launch (kernels/pdl.py): each launch may start while the one before still runs,
        # asking for its first weights early. Off until `tune` has timed it and checked its logits on the card.
        self.pdl = False

    def __call__(self, ids: Tensor, pos: Tensor, slot: Tensor, tables: Tensor, ctx: Tensor) -> Tensor:
        """ids, pos, slot, ctx (1,) long and tables (1, nb): one decode token -> (1, V) fp32 logits."""
        cfg, kv, res = self.cfg, self.kv, self.residual
        d, H, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        _embed_kernel[(triton.cdiv(d, 1024),)](ids, self.embed, res, d, self.embed_scale, BLOCK=1024, PDL=self.pdl,
                                               **_pdl.launch(self.pdl))
        for i, L in enumerate(self.layers):
            self.qkv(L, i, pos, slot)
            attn = _pa.paged_decode(self.q.view(1, H, hd), kv.k[i], kv.v[i], tables, ctx, block_size=kv.block_size,
                                    window=cfg.sliding_window, pdl=self.pdl)  # keys split as the card needs
            self.add_gemv(attn.view(-1), L.o, self.configs["o"])
            self.swiglu(L)
            self.add_gemv(self.act, L.down, self.configs["down"])
        return self.head_logits()

    # ---- the launches, one per kernel (tune times them one by one) ------------------------------------------

    def qkv(self, L: _Layer, i: int, pos: Tensor, slot: Tensor) -> None:
        cfg, kp, vp = self.cfg, self.kv.k[i], self.kv.v[i]
        H, Hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        split, bk, warps = self.configs["qkv"]
        split = 1 if L.q_norm is not None else min(split, hd // 2)  # both powers of two: it divides hd / 2
        qn = L.q_norm if L.q_norm is not None else L.norm1
        kn = L.k_norm if L.k_norm is not None else L.norm1
        _qkv_kernel[(H + 2 * Hkv, split)](
            self.residual, L.norm1, L.qkv, L.qkv_bias if L.qkv_bias is not None else L.qkv, qn, kn, self.q, kp, vp,
            pos, slot, self.inv_freq, cfg.hidden_size, L.qkv.stride(0), kp.stride(0), kp.stride(1), H, Hkv, self.eps,
            HD=hd, HALF=hd // 2, PAIRS=hd // 2 // split, BLOCK_K=bk, HAS_BIAS=L.qkv_bias is not None,
            QK_NORM=L.q_norm is not None, PDL=self.pdl, num_warps=warps, **_pdl.launch(self.pdl))

    def add_gemv(self, x: Tensor, w: Tensor, config: tuple[int, int, int]) -> None:
        """residual += w @ x, one atomic fp32 add per output (kernels/gemv.py's split-K path, with one split)."""
        bn, bk, warps = config
        N, K = w.shape
        _gemv._gemv_kernel[(triton.cdiv(N, bn), 1)](
            x, w, w, self.residual, N, K, w.stride(0), triton.cdiv(K, bk) * bk, BLOCK_N=bn, BLOCK_K=bk, SPLIT=True,
            HAS_BIAS=False, EVEN=N % bn == 0 and K % bk == 0, PDL=self.pdl, num_warps=warps, **_pdl.launch(self.pdl))

    def head_logits(self) -> Tensor:
        bn, bk, warps = self.configs["head"]
        V = self.head.shape[0]
        _head_kernel[(triton.cdiv(V, bn),)](self.residual, self.norm_f, self.head, self.logits, self.cfg.hidden_size,
                                            V, self.head.stride(0), self.eps, BLOCK_N=bn, BLOCK_K=bk, PDL=self.pdl,
                                            num_warps=warps, **_pdl.launch(self.pdl))
        return self.logits

    def swiglu(self, L: _Layer) -> None:
        bn, bk, warps = self.configs["swiglu"]
        inter = self.act.shape[0]
        _swiglu_kernel[(triton.cdiv(inter, bn),)](
            self.residual, L.norm2, L.gate_up, self.act, self.cfg.hidden_size, inter, L.gate_up.stride(0), self.eps,
            BLOCK_N=bn, BLOCK_K=bk, PDL=self.pdl, num_warps=warps, **_pdl.launch(self.pdl))

    # ---- tile sizes ----------------------------------------------------------------------------------------

    def tune(self, timer=None, repeats: int = 3, pdl: bool | None = None, table_width: int = 1) -> dict:
        """Time each kernel over all layers with every tile choice of CONFIGS (`timer(calls) -> us`, default a
        CUDA graph of the calls, replayed) and keep the fastest; returns {kernel: {config: us}, "chosen": ...}.
        Then, where the card can (`pdl` None: kernels/pdl.py's `supported`), the whole step with and without
        programmatic dependent launch: PDL is kept if it is faster and gives bitwise the same logits (it changes
        when kernels start, not what they compute: a difference would be a missing wait), under "pdl". The step
        is timed with block tables `table_width` wide, as the engine's batch-1 graph has them, so its attention
        splits the keys (and merges them) as the captured step will.
        The K/V it writes go to slot 0, which the engine's block manager has not handed out yet at start-up."""
        from llmlab.kernels.cuda_linear import graph_us

        timer = timer or graph_us
        dev = self.residual.device
        zero = torch.zeros(1, dtype=torch.long, device=dev)
        self.residual.normal_()
        self.q.normal_()
        self.act.normal_()
        calls = {
            "qkv": lambda: [self.qkv(L, i, zero, zero) for i, L in enumerate(self.layers)],
            "o": lambda: [self.add_gemv(self.q, L.o, self.configs["o"]) for L in self.layers],
            "swiglu": lambda: [self.swiglu(L) for L in self.layers],
            "down": lambda: [self.add_gemv(self.act, L.down, self.configs["down"]) for L in self.layers],
            "head": self.head_logits,
        }
        report: dict = {}
        with torch.no_grad(), _zeroed(self.residual):
            for name, run in calls.items():
                times = {}
                for config in CONFIGS[name]:
                    self.configs[name] = config
                    times[config] = min(timer(run) for _ in range(repeats))
                self.configs[name] = min(times, key=times.__getitem__)
                report[name] = {str(c): round(t, 2) for c, t in times.items()}
            report["chosen"] = dict(self.configs)
            if pdl if pdl is not None else _pdl.supported(dev):
                report["pdl"] = self._tune_pdl(timer, repeats, zero, table_width)
        return report

    def _tune_pdl(self, timer, repeats: int, zero: Tensor, table_width: int) -> dict:
        """The whole step (token 0 at position 0 in slot 0, a context of 1, tables `table_width` wide) with PDL off
        and on: the faster is kept if both give the same logits."""
        tables = torch.zeros(1, table_width, dtype=torch.long, device=zero.device)
        ctx = torch.ones(1, dtype=torch.long, device=zero.device)
        times, logits = {}, {}
        for on in (False, True):
            self.pdl = on
            try:
                times[on] = min(timer(lambda: self(zero, zero, zero, tables, ctx)) for _ in range(repeats))
            except Exception as e:  # a Triton, driver or capture that cannot take PDL: keep it off
                self.pdl = False
                if not on:
                    raise
                return {"off_us": round(times[False], 2), "error": f"{type(e).__name__}: {e}"[:300], "chosen": False}
            logits[on] = self.logits.clone()
        same = torch.equal(logits[False], logits[True])
        self.pdl = same and times[True] < times[False]
        return {"off_us": round(times[False], 2), "on_us": round(times[True], 2), "same_logits": same,
                "chosen": self.pdl}


@contextlib.contextmanager
def _zeroed(t: Tensor):
    """Zero `t` on the way out, also when the body raises (tune fills the residual with noise)."""
    try:
        yield
    finally:
        t.zero_()


def compile_for_cuda(arch: int, dtype: torch.dtype, *, head_dim: int = 64, bias: bool = False,
                     qk_norm: bool = False, pdl: bool = False) -> dict[str, dict]:
    """Compile the step's own kernels (embedding, q/k/v, SwiGLU, LM head; the GEMV and attention kernels have
    theirs) for CUDA compute capability `arch` down to cubins on any machine, with the default tiles and
    16-byte-aligned pointers and strides as a launch on real weights gets; `pdl` builds the variants for
    programmatic dependent launch. Returns {kernel: asm by stage}. Run it in a process without
    TRITON_INTERPRET=1 (Triton reads that flag at import)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}[dtype]
    fixed = {"Res": "*fp32", "InvFreq": "*fp32", "Ids": "*i64", "Pos": "*i64", "Slot": "*i64", "eps": "fp32",
             "scale": "fp32", "Out": "*fp32"}
    (qs, qk, _), (bn, bk, _), (hn, hk, _) = CONFIGS["qkv"][0], CONFIGS["swiglu"][0], CONFIGS["head"][0]
    pairs = head_dim // 2 if qk_norm else head_dim // 2 // min(qs, head_dim // 2)
    kernels = {"embed": (_embed_kernel, {"BLOCK": 1024, "PDL": pdl}),
               "qkv": (_qkv_kernel, {"HD": head_dim, "HALF": head_dim // 2, "PAIRS": pairs, "BLOCK_K": qk,
                                     "HAS_BIAS": bias, "QK_NORM": qk_norm, "PDL": pdl}),
               "swiglu": (_swiglu_kernel, {"BLOCK_N": bn, "BLOCK_K": bk, "PDL": pdl}),
               "head": (_head_kernel, {"BLOCK_N": hn, "BLOCK_K": hk, "PDL": pdl})}
    out = {}
    for name, (kernel, consts) in kernels.items():
        sig = {}
        for arg in kernel.arg_names:
            sig[arg] = ("constexpr" if arg in consts else fixed.get(arg) or
                        ("i32" if arg in ("K", "N", "D") or arg[0].islower() else ptr))
        attrs = {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(kernel.arg_names)
                 if sig[arg][0] == "*" or arg.startswith("stride") or arg == "K"}
        compiled = triton.compile(ASTSource(kernel, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                                  options={"launch_pdl": pdl})
        out[name] = dict(compiled.asm)
    return out


if triton is not None:

    @triton.jit
    def _rstd(Res, K, eps, BLOCK_K: tl.constexpr):
        """1 / sqrt(mean(res^2) + eps) over the fp32 residual of length K."""
        acc = tl.zeros([BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(Res + k, mask=k < K, other=0.0)
            acc += x * x
        return tl.rsqrt(tl.sum(acc, 0) / K + eps)

    @triton.jit
    def _normed(Res, NormW, k, k_ok, rstd, DT: tl.constexpr):
        """The RMSNorm output at k as the eager step rounds it: (res * rstd) in DT, times the weight, in DT."""
        x = (tl.load(Res + k, mask=k_ok, other=0.0) * rstd).to(DT).to(tl.float32)
        w = tl.load(NormW + k, mask=k_ok, other=0.0).to(tl.float32)
        return (x * w).to(DT).to(tl.float32)

    @triton.jit
    def _two_tiles(wa, wb, k, mask):
        """Weight tiles at columns k of two row sets (evict-first: read once)."""
        a = tl.load(wa + k[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
        b = tl.load(wb + k[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
        return a, b

    @triton.jit
    def _embed_kernel(Ids, E, Res, D, scale, BLOCK: tl.constexpr, PDL: tl.constexpr):
        _pdl.trigger(PDL)
        _pdl.wait(PDL)  # Res may still be read by the kernel before (the last step's LM head)
        d = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tok = tl.load(Ids).to(tl.int64)
        x = tl.load(E + tok * D + d, mask=d < D, other=0.0).to(tl.float32)
        if scale != 1.0:
            x = (x * scale).to(E.dtype.element_ty).to(tl.float32)
        tl.store(Res + d, x, mask=d < D)

    @triton.jit
    def _qkv_kernel(Res, NormW, W, Bias, QNormW, KNormW, Q, KP, VP, Pos, Slot, InvFreq, K, stride_w, stride_ps,
                    stride_ph, n_heads, n_kv, eps, HD: tl.constexpr, HALF: tl.constexpr, PAIRS: tl.constexpr,
                    BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr, QK_NORM: tl.constexpr, PDL: tl.constexpr):
        """Program (p, r): PAIRS of RoPE's pairs (i, i + HALF) of output head p (q heads, then k, then v), from
        i = r * PAIRS, the two halves as two accumulators, so each pair meets in registers. With q/k norms one
        program takes the whole head (PAIRS == HALF, FusedDecode.qkv sees to it): the norm's statistics need it."""
        DT: tl.constexpr = W.dtype.element_ty
        _pdl.trigger(PDL)
        p = tl.program_id(0)
        j = tl.program_id(1) * PAIRS + tl.arange(0, PAIRS)
        rows = p * HD + j
        acc1 = tl.zeros([PAIRS, BLOCK_K], tl.float32)
        acc2 = tl.zeros([PAIRS, BLOCK_K], tl.float32)
        w1 = W + rows.to(tl.int64)[:, None] * stride_w
        w2 = w1 + HALF * stride_w
        # the first K tile's weights before waiting on the kernel before (PDL), then the loop's first step
        k = tl.arange(0, BLOCK_K)
        k_ok = k < K
        t1, t2 = _two_tiles(w1, w2, k, k_ok[None, :])
        _pdl.wait(PDL)
        rstd = _rstd(Res, K, eps, BLOCK_K)
        x = _normed(Res, NormW, k, k_ok, rstd, DT)[None, :]
        acc1 += t1 * x
        acc2 += t2 * x
        for k0 in range(BLOCK_K, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            x = _normed(Res, NormW, k, k_ok, rstd, DT)[None, :]
            t1, t2 = _two_tiles(w1, w2, k, k_ok[None, :])
            acc1 += t1 * x
            acc2 += t2 * x
        a1 = tl.sum(acc1, 1)
        a2 = tl.sum(acc2, 1)
        if HAS_BIAS:
            a1 += tl.load(Bias + rows).to(tl.float32)
            a2 += tl.load(Bias + rows + HALF).to(tl.float32)
        a1 = a1.to(DT).to(tl.float32)
        a2 = a2.to(DT).to(tl.float32)
        roped = p < n_heads + n_kv  # q and k heads; v heads are stored as they are
        if QK_NORM:
            r = tl.rsqrt((tl.sum(a1 * a1, 0) + tl.sum(a2 * a2, 0)) / HD + eps)
            is_q = p < n_heads
            g1 = tl.where(is_q, tl.load(QNormW + j).to(tl.float32), tl.load(KNormW + j).to(tl.float32))
            g2 = tl.where(is_q, tl.load(QNormW + j + HALF).to(tl.float32), tl.load(KNormW + j + HALF).to(tl.float32))
            n1 = ((a1 * r).to(DT).to(tl.float32) * g1).to(DT).to(tl.float32)
            n2 = ((a2 * r).to(DT).to(tl.float32) * g2).to(DT).to(tl.float32)
            a1 = tl.where(roped, n1, a1)
            a2 = tl.where(roped, n2, a2)
        angle = tl.load(Pos).to(tl.float32) * tl.load(InvFreq + j)
        c = tl.cos(angle).to(DT).to(tl.float32)
        s = tl.sin(angle).to(DT).to(tl.float32)
        o1 = ((a1 * c).to(DT).to(tl.float32) - (a2 * s).to(DT).to(tl.float32)).to(DT)
        o2 = ((a2 * c).to(DT).to(tl.float32) + (a1 * s).to(DT).to(tl.float32)).to(DT)
        o1 = tl.where(roped, o1, a1.to(DT))
        o2 = tl.where(roped, o2, a2.to(DT))
        slot = tl.load(Slot).to(tl.int64)
        if p < n_heads:
            out = Q + p * HD + j
        elif p < n_heads + n_kv:
            out = KP + slot * stride_ps + (p - n_heads) * stride_ph + j
        else:
            out = VP + slot * stride_ps + (p - n_heads - n_kv) * stride_ph + j
        tl.store(out, o1)
        tl.store(out + HALF, o2)

    @triton.jit
    def _swiglu_kernel(Res, NormW, W, Act, K, inter, stride_w, eps, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       PDL: tl.constexpr):
        """act[n] = silu(gate[n]) * up[n] for BLOCK_N features; W is the fused (2 * inter, K) gate/up weight."""
        DT: tl.constexpr = W.dtype.element_ty
        _pdl.trigger(PDL)
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < inter
        wg = W + n.to(tl.int64)[:, None] * stride_w
        wu = wg + inter.to(tl.int64) * stride_w
        acc_g = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        k = tl.arange(0, BLOCK_K)  # the first K tile's weights before the wait (PDL), then the loop's first step
        k_ok = k < K
        tg, tu = _two_tiles(wg, wu, k, n_ok[:, None] & k_ok[None, :])
        _pdl.wait(PDL)
        rstd = _rstd(Res, K, eps, BLOCK_K)
        x = _normed(Res, NormW, k, k_ok, rstd, DT)[None, :]
        acc_g += tg * x
        acc_u += tu * x
        for k0 in range(BLOCK_K, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            x = _normed(Res, NormW, k, k_ok, rstd, DT)[None, :]
            tg, tu = _two_tiles(wg, wu, k, n_ok[:, None] & k_ok[None, :])
            acc_g += tg * x
            acc_u += tu * x
        g = tl.sum(acc_g, 1).to(DT).to(tl.float32)
        u = tl.sum(acc_u, 1).to(DT).to(tl.float32)
        h = (g * tl.sigmoid(g)).to(DT).to(tl.float32)
        tl.store(Act + n, (h * u).to(DT), mask=n_ok)

    @triton.jit
    def _head_kernel(Res, NormW, W, Out, K, N, stride_w, eps, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PDL: tl.constexpr):
        """fp32 logits of BLOCK_N vocabulary rows from the final-normed residual."""
        DT: tl.constexpr = W.dtype.element_ty
        _pdl.trigger(PDL)
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        w_rows = W + n.to(tl.int64)[:, None] * stride_w
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        k = tl.arange(0, BLOCK_K)  # the first K tile's weights before the wait (PDL), then the loop's first step
        k_ok = k < K
        t = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0, eviction_policy="evict_first")
        _pdl.wait(PDL)
        rstd = _rstd(Res, K, eps, BLOCK_K)
        acc += t * _normed(Res, NormW, k, k_ok, rstd, DT)[None, :]
        for k0 in range(BLOCK_K, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K
            x = _normed(Res, NormW, k, k_ok, rstd, DT)[None, :]
            acc += tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0,
                           eviction_policy="evict_first") * x
        tl.store(Out + n, tl.sum(acc, 1).to(DT).to(tl.float32), mask=n_ok)
