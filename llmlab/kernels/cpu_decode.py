"""The CPU decode step as one loop of direct C calls: no module calls, allocations or argument checks per step.

    step = DirectDecode(model, kv, max_rows=16, max_blocks=64, scratch_block=kv.num_blocks - 1, max_positions=2048)
    vec, tables = step.inputs(rows)  # numpy views to fill: (4, rows) ids, positions, slots, contexts; (rows, blocks)
    logits = step.run(rows)          # (rows, V) fp32, valid until the next run

Why: with every kernel of the engine's CPU decode step in C (kernels/cpu_*.py), the model's forward still spent a
third of the step in Python around them: module calls, argument checks, output allocations, views (SmolLM2-135M,
bf16, one sequence, 2-core EPYC: 22.5-24.1 ms a step through the forward against 14.1-15.8 ms for the same kernels
called directly, bitwise the same logits). Here each layer is the list of calls the forward makes — RMSNorm, q/k/v,
RoPE + KV write, paged attention, o, residual add + RMSNorm (one call), gate/up, SiLU(gate) * up, down, residual
add + the next RMSNorm — with
their arguments (pointers into buffers allocated once) built once per row count. Each linear runs the kernel
`PackedLinear.kernel_for` routes that row count to: the panel or 1-4 row C kernel directly, oneDNN or F.linear
through the module. The same kernels in the same order as the forward, on the same values: the logits are bitwise
the forward's (tests).

Supports what the forward computes with those kernels: pre-RMSNorm blocks, RoPE, SwiGLU, q/k/v biases, q/k norms
(Qwen3), sliding windows, tied or scaled embeddings (`unsupported` says what a model lacks), in a dtype the norm,
RoPE and attention kernels are built for. Weights written in place or replaced are picked up: the call
lists are rebuilt when a parameter's version or storage changes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llmlab.kernels import cpu_linear, cpu_norm, cpu_panel_linear, cpu_swiglu
from llmlab.kernels import cpu_paged_attention as cpu_paged
from llmlab.kernels import cpu_rope_cache as cpu_rope
from llmlab.model.layers import RMSNorm, rope_cos_sin


def unsupported(model, dtype: torch.dtype) -> str | None:
    """None if DirectDecode mirrors this model's forward in `dtype`, else a sentence naming what is missing."""
    cfg = model.cfg
    needs = [(cfg.norm == "rmsnorm" and cfg.norm_position == "pre" and cfg.final_norm, "pre-RMSNorm blocks"),
             (cfg.position == "rope", "RoPE positions"),
             (cfg.gated_ffn and cfg.activation == "silu", "a SwiGLU feed-forward"),
             (not cfg.o_bias and not cfg.mlp_bias, "no o-projection or MLP biases"),
             (all(isinstance(m, RMSNorm) for b in model.blocks for m in (b.norm1, b.norm2, b.attn.q_norm or b.norm1,
                                                                        b.attn.k_norm or b.norm1)),
              "plain RMSNorm modules"),
             (all(b.attn.qkv is not None and b.ffn.gate_up is not None for b in model.blocks), "fused projections"),
             (cpu_norm.supported(dtype) and cpu_rope.supports(dtype) and cpu_paged.supports(dtype),
              f"C kernels built for {dtype}")]
    missing = [what for ok, what in needs if not ok]
    return f"the direct CPU decode step needs {', '.join(missing)}" if missing else None


def _swiglu(g: Tensor, u: Tensor, out: Tensor) -> None:
    torch.mul(F.silu(g), u, out=out)  # as FeedForward.forward: act(g) * u, each rounded to the dtype


def _module(m, x: Tensor, y: Tensor) -> None:
    y.copy_(m(x))


class DirectDecode:
    """The decode step of up to `max_rows` sequences as direct kernel calls (see the module docstring)."""

    def __init__(self, model, kv, *, max_rows: int, max_blocks: int, scratch_block: int, max_positions: int):
        dtype = kv.k[0].dtype
        why = unsupported(model, dtype)
        if why:
            raise ValueError(f"{why}.")
        cfg = self.cfg = model.cfg
        self.model, self.kv, self.max_rows = model, kv, max_rows
        d, H, Hkv, hd, inter = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size

        def buf(*shape):
            return torch.zeros(*shape, dtype=dtype)

        R = max_rows
        self.h, self.xn, self.o, self.dn = buf(R, d), buf(R, d), buf(R, d), buf(R, d)
        self.qkv, self.q, self.att = buf(R, (H + 2 * Hkv) * hd), buf(R, H, hd), buf(R, H, hd)
        self.gu, self.act, self.logits = buf(R, 2 * inter), buf(R, inter), buf(R, cfg.vocab_size)
        self.cos, self.sin = buf(R, hd), buf(R, hd)
        cos, sin = rope_cos_sin(model.inv_freq, torch.arange(max_positions)[None], dtype)  # what the forward computes
        self.cos_table, self.sin_table = cos[0, 0].contiguous(), sin[0, 0].contiguous()
        self.vec = np.zeros((4, R), dtype=np.int64)  # ids, positions, slots, context lengths
        self.vec_t = torch.from_numpy(self.vec)
        self.tables_np = np.full((R, max_blocks), scratch_block, dtype=np.int64)
        self.tables = torch.from_numpy(self.tables_np)
        self.fns = {"norm": cpu_norm._functions()[dtype], "add_norm": cpu_norm._add_functions()[dtype],
                    "rope": cpu_rope._functions()[dtype],
                    "attn": cpu_paged._functions()[dtype], "panel": cpu_panel_linear._functions().get(dtype),
                    "skinny": cpu_linear._skinny_functions().get(dtype), "swiglu": cpu_swiglu._functions().get(dtype)}
        self.params = list(model.parameters())
        self.versioned = [p for p in self.params if not p.is_inference()]
        self.calls: dict[tuple[int, int], tuple[tuple, list]] = {}  # (rows, threads) -> (weights stamp, calls)

    def inputs(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Views to fill for a step of `rows` sequences: (4, rows) ids, positions, slots and context lengths, and
        block tables (rows, max_blocks), whose columns past a row's blocks may hold any block of the pool."""
        if not 1 <= rows <= self.max_rows:
            raise ValueError(f"DirectDecode takes 1 to {self.max_rows} rows, got {rows}.")
        return self.vec[:, :rows], self.tables_np[:rows]

    def run(self, rows: int) -> Tensor:
        """Logits (rows, V) fp32 of the step whose inputs were filled; the K/V of its tokens written to the pages."""
        model, M = self.model, rows
        ids, pos = self.vec_t[0, :M], self.vec_t[1, :M]
        torch.index_select(model.embed.weight, 0, ids, out=self.h[:M])
        if self.cfg.embedding_scale:
            self.h[:M].mul_(math.sqrt(self.cfg.hidden_size))
        torch.index_select(self.cos_table, 0, pos, out=self.cos[:M])
        torch.index_select(self.sin_table, 0, pos, out=self.sin[:M])
        for fn, args in self._calls(M):
            status = fn(*args)
            if status:
                raise RuntimeError(f"the CPU kernel {fn.__name__} failed in the direct decode step (status {status}); "
                                   "build the engine with cpu_direct_decode=False to bypass it.")
        return self.logits[:M].float()

    # ---- the call lists ----------------------------------------------------------------------------------

    def _stamp(self) -> tuple:
        """Changes when a parameter is written in place (versions only grow: their sum moves) or gets new storage
        (`p.data = ...` keeps the version); ~50 us for SmolLM2's 272 parameters, where a tuple of (pointer,
        version) pairs took ~200."""
        return sum(p._version for p in self.versioned), tuple(p.data_ptr() for p in self.params)

    def _calls(self, M: int) -> list:
        threads = torch.get_num_threads()
        stamp = self._stamp()
        held = self.calls.get((M, threads))
        if held is None or held[0] != stamp:
            self.versioned = [p for p in self.params if not p.is_inference()]  # inference tensors keep no version
            held = self.calls[(M, threads)] = (self._stamp(), self._build(M, threads))
        return held[1]

    def _build(self, M: int, T: int) -> list:
        cfg, kv, fns = self.cfg, self.kv, self.fns
        H, Hkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        width = (H + 2 * Hkv) * hd
        h, xn, qkv, q, att = self.h[:M], self.xn[:M], self.qkv[:M], self.q[:M], self.att[:M]
        es = qkv.element_size()
        q0 = qkv.data_ptr()
        slots, ctx = self.vec_t[2], self.vec_t[3]
        window = cfg.sliding_window or 0

        def norm(module, x, y):
            return fns["norm"], (x.data_ptr(), module.weight.data_ptr(), y.data_ptr(), M, x.shape[-1],
                                 module.eps, T)

        def add_norm(r, module):  # the residual add (h += r) and the norm after it (xn = module(h)), one call
            return fns["add_norm"], (h.data_ptr(), r.data_ptr(), module.weight.data_ptr(), xn.data_ptr(), M,
                                     h.shape[-1], module.eps, T)

        blocks = self.model.blocks
        after = [b.norm1 for b in blocks[1:]] + [self.model.norm_f]  # the norm each block's output goes to
        calls = [norm(blocks[0].norm1, h, xn)]
        for i, block in enumerate(blocks):
            attn, ffn, kp, vp = block.attn, block.ffn, kv.k[i], kv.v[i]
            calls += [self._linear(attn.qkv, xn, qkv, M, T)]
            if attn.q_norm is not None:  # Qwen3: each head's q and k normalised in place, a row's q heads at once
                for m in range(M):
                    row = q0 + m * width * es
                    calls += [(fns["norm"], (row, attn.q_norm.weight.data_ptr(), row, H, hd, attn.q_norm.eps, T)),
                              (fns["norm"], (row + H * hd * es, attn.k_norm.weight.data_ptr(), row + H * hd * es, Hkv,
                                             hd, attn.k_norm.eps, T))]
            calls += [(fns["rope"], (q0, q0 + H * hd * es, q0 + (H + Hkv) * hd * es, self.cos.data_ptr(),
                                     self.sin.data_ptr(), q.data_ptr(), kp.data_ptr(), vp.data_ptr(), slots.data_ptr(),
                                     M, H, Hkv, hd, width, width, width, hd, kp.shape[0], T)),
                      (fns["attn"], (q.data_ptr(), kp.data_ptr(), vp.data_ptr(), self.tables.data_ptr(),
                                     ctx.data_ptr(), att.data_ptr(), M, H, Hkv, hd, self.tables.shape[1],
                                     kv.block_size, window, hd ** -0.5, kp.shape[0], T)),
                      self._linear(attn.o, att.view(M, H * hd), self.o[:M], M, T), add_norm(self.o[:M], block.norm2),
                      self._linear(ffn.gate_up, xn, self.gu[:M], M, T),
                      self._swiglu_call(ffn, M, T),
                      self._linear(ffn.down, self.act[:M], self.dn[:M], M, T), add_norm(self.dn[:M], after[i])]
        calls += [self._linear(self.model.lm_head, xn, self.logits[:M], M, T)]
        return calls

    def _swiglu_call(self, ffn, M: int, T: int) -> tuple:
        """SiLU(gate) * up into act as the forward computes it: the C kernel where the model's FeedForward takes it
        (a FastFeedForward, kernels/cpu_swiglu.py), else PyTorch's two ops."""
        inter = self.cfg.intermediate_size
        if isinstance(ffn, cpu_swiglu.FastFeedForward) and self.fns["swiglu"] is not None:
            return self.fns["swiglu"], (self.gu.data_ptr(), self.act.data_ptr(), M, inter, T)
        return _swiglu, (self.gu[:M, :inter], self.gu[:M, inter:], self.act[:M])

    def _linear(self, m, x: Tensor, y: Tensor, M: int, T: int) -> tuple:
        """The call that computes y = m(x) as the module's forward would: its routed C kernel, else the module."""
        kernel = m.kernel_for(M) if isinstance(m, cpu_linear.PackedLinear) else "module"
        bias = m.bias.data_ptr() if m.bias is not None else None
        if kernel == "panel" and self.fns["panel"] is not None:
            packed = m._copy("panel")
            return self.fns["panel"], (x.data_ptr(), packed.data_ptr(), bias, y.data_ptr(), M, m.out_features,
                                       m.in_features, T)
        if kernel == "skinny" and self.fns["skinny"] is not None and m.weight.is_contiguous():
            return self.fns["skinny"], (x.data_ptr(), m.weight.data_ptr(), bias, y.data_ptr(), M, m.out_features,
                                        m.in_features, T)
        return _module, (m, x, y)
