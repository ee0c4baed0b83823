"""Paged decode attention: one query per sequence over its KV pages, read in place (no gather).

    paged_decode(q, k_pages, v_pages, block_tables, context_lens, block_size=16, scale=None, window=None)
        -> (B, H, hd) in q's dtype

q (B, H, hd); k_pages / v_pages (num_slots, Hkv, hd), one layer's pools, where a position's slot
is block_tables[b, pos // block_size] * block_size + pos % block_size; row b attends to its first
context_lens[b] positions (the newest is the token being decoded, already written), only the last
`window` of them when a sliding window is given (Mistral).

The Triton kernel runs one program per (sequence, KV head): the H / Hkv query heads that share a
KV head are its rows (GQA and MQA read K and V once per group, padded to the 16 rows `tl.dot`
needs), keys come in tiles of BLOCK_N positions whose slots it looks up in the block table, and
the softmax is online in fp32 (running max and sum, the accumulator rescaled per tile: Milakov &
Gimelshein 2018, as FlashAttention). fp32 inputs multiply in IEEE fp32 (no TF32); bf16/fp16 on
the tensor cores with fp32 accumulation.

Split keys (flash-decoding): when sequences x KV heads are too few programs to fill the GPU (batch-1
decode: 8 programs on 132 SMs), each row's keys are cut into `num_splits` parts, one program per
(sequence, KV head, part); each writes its unnormalised sum with its running max and sum, and a second
small kernel merges the parts (Dao et al., "Flash-Decoding for long-context inference", 2023). The
parts are cut per row from its own context length, so one launch shape serves every context (CUDA
graphs). `auto_splits` picks the count from the batch, KV heads and the card's SM count.

Why it exists: the gather path (model/attention.py) copies every row's whole context out of the
pools once per layer and step before SDPA reads it again. For a large decode batch of long
contexts that copy is most of the step; the kernel reads each K/V byte once.

`paged_decode_reference` is the same maths in plain PyTorch (gather, fp32 softmax). The tests
compare the two on CPU through Triton's interpreter (TRITON_INTERPRET=1) and compiled on CUDA;
`compile_for_cuda(90, torch.bfloat16, G, hd)` compiles the kernel to an sm_90 cubin on any machine,
so the compiled path is checked even where there is no GPU.
Reference: vLLM `attention/ops/paged_attn.py` and `triton_decode_attention.py`; Kwon et al. 2023.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the engine keeps the gather path
    triton = None

from llmlab.kernels import pdl as _pdl


def _version(v: str) -> tuple[int, int]:
    major, minor = (v.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def available(device: torch.device) -> bool:
    """Whether the kernel can run on `device`: CUDA with Triton, or CPU under TRITON_INTERPRET=1
    with Triton >= 3.7 (3.6's interpreter cannot take a loop bound loaded from memory)."""
    if triton is None:
        return False
    if device.type == "cuda":
        return True
    return (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
            and _version(triton.__version__) >= (3, 7))


def paged_decode_reference(q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, context_lens: Tensor,
                           block_size: int = 16, scale: float | None = None, window: int | None = None) -> Tensor:
    """The kernel's maths in plain PyTorch: gather each row's slots, fp32 scores, masked softmax."""
    B, H, hd = q.shape
    Hkv = k_pages.shape[1]
    L = block_tables.shape[1] * block_size
    pos = torch.arange(L, device=q.device)
    slots = block_tables.long().repeat_interleave(block_size, dim=1) * block_size + pos % block_size  # (B, L)
    k = k_pages[slots].float()  # (B, L, Hkv, hd)
    v = v_pages[slots].float()
    qg = q.float().view(B, Hkv, H // Hkv, hd)
    scores = torch.einsum("bkgd,blkd->bkgl", qg, k) * (hd**-0.5 if scale is None else scale)
    lens = context_lens.long()[:, None]
    visible = pos[None, :] < lens
    if window is not None:
        visible = visible & (pos[None, :] >= lens - window)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    out = torch.einsum("bkgl,blkd->bkgd", scores.softmax(-1), v)
    return out.reshape(B, H, hd).to(q.dtype)


MAX_SPLITS = 16


def auto_splits(batch: int, kv_heads: int, max_positions: int, num_sms: int, block_n: int = 64) -> int:
    """How many parts to cut each row's keys into: 1 while batch x KV heads programs already fill half the
    SMs, else enough parts to fill them, never more than there are key tiles nor MAX_SPLITS. Always a power of
    two (rounded down), so a server meets at most log2(MAX_SPLITS) + 1 variants of the kernel, each compiled
    once by Triton (`split_counts` lists them for a warm-up): an exact count would compile a new variant
    mid-run for each new batch size."""
    programs = batch * kv_heads
    if num_sms <= 0 or 2 * programs > num_sms:
        return 1
    best = max(1, min(MAX_SPLITS, -(-num_sms // programs), -(-max_positions // block_n)))
    return 1 << (best.bit_length() - 1)


def split_counts(kv_heads: int, num_sms: int) -> list[int]:
    """Every count `auto_splits` can return for a model with `kv_heads` KV heads on a card with `num_sms` SMs:
    the powers of two up to batch 1's count (larger batches and short contexts take smaller ones)."""
    top = auto_splits(1, kv_heads, MAX_SPLITS * 64, num_sms)
    return [1 << i for i in range(top.bit_length())]


def paged_decode(q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, context_lens: Tensor,
                 block_size: int = 16, scale: float | None = None, window: int | None = None,
                 block_n: int = 64, num_splits: int | None = None, pdl: bool = False) -> Tensor:
    """Decode attention over paged K/V with the Triton kernel (see the module docstring). `num_splits`
    None picks the count with `auto_splits` (1 off CUDA); 1 runs the single-pass kernel. `pdl` launches it for
    programmatic dependent launch (kernels/pdl.py: CUDA, compute capability 9+; the fused decode step's chain)."""
    if triton is None:
        raise RuntimeError("the paged decode kernel needs Triton; install it or use the gather path.")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    window = 0 if window is None else int(window)
    splits = 0 if num_splits is None else int(num_splits)
    if torch.compiler.is_compiling():  # opaque to Inductor: the split count is chosen from concrete shapes
        if pdl:
            raise ValueError("paged_decode(pdl=True) is for eager launch chains, not under torch.compile.")
        return _paged_decode_op(q, k_pages, v_pages, block_tables, context_lens, block_size, scale, window,
                                block_n, splits)
    H, Hkv = q.shape[1], k_pages.shape[1]
    if H % Hkv or k_pages.stride(-1) != 1 or v_pages.stride(-1) != 1:
        raise ValueError("paged_decode needs H divisible by Hkv and pages contiguous in head_dim.")
    if num_splits is not None and not 1 <= splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}] (or None to choose); got {num_splits}.")
    return _launch(q, k_pages, v_pages, block_tables, context_lens, block_size, scale, window, block_n, splits, pdl=pdl)


def warm_up(k_pages: Tensor, v_pages: Tensor, num_heads: int, block_size: int, scratch_block: int,
            window: int | None = None, pdl: bool = False) -> list[int]:
    """Launch the kernel once with every split count `auto_splits` can pick on this device (`split_counts`), on
    one query over the scratch block, so that Triton compiles each variant at start-up rather than when a step
    first needs it (a stall of about a second each); `pdl`: the variants for programmatic dependent launch (the
    fused step's). Returns the counts launched."""
    Hkv, hd = k_pages.shape[1], k_pages.shape[2]
    q = torch.zeros(1, num_heads, hd, dtype=k_pages.dtype, device=k_pages.device)
    tables = torch.full((1, 2), scratch_block, dtype=torch.long, device=k_pages.device)
    ctx = torch.ones(1, dtype=torch.long, device=k_pages.device)
    counts = split_counts(Hkv, _num_sms(k_pages.device))
    for n in counts:
        paged_decode(q, k_pages, v_pages, tables, ctx, block_size=block_size, window=window, num_splits=n, pdl=pdl)
    return counts


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


def _launch(q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, context_lens: Tensor,
            block_size: int, scale: float, window: int, block_n: int, splits: int, pdl: bool = False) -> Tensor:
    B, H, hd = q.shape
    Hkv = k_pages.shape[1]
    if q.stride(-1) != 1:
        q = q.contiguous()
    if splits <= 0:
        splits = auto_splits(B, Hkv, block_tables.shape[1] * block_size, _num_sms(q.device), block_n)
    out = torch.empty(B, H, hd, dtype=q.dtype, device=q.device)
    mid = ml = out  # the parts' sums and (max, sum) pairs; unused by the single-pass kernel
    if splits > 1:
        mid = torch.empty(B, H, splits, hd, dtype=torch.float32, device=q.device)
        ml = torch.empty(B, H, splits, 2, dtype=torch.float32, device=q.device)
    _paged_decode_kernel[(B, Hkv, splits)](
        q, k_pages, v_pages, out, mid, ml, block_tables, context_lens, scale, window,
        q.stride(0), q.stride(1), k_pages.stride(0), k_pages.stride(1), v_pages.stride(0), v_pages.stride(1),
        out.stride(0), out.stride(1), block_tables.stride(0),
        **launch_constants(q.dtype, q.device.type, H // Hkv, hd, block_size, block_n, window or None, splits, pdl),
        **_pdl.launch(pdl),
    )
    if splits > 1:
        _merge_splits_kernel[(B, H)](mid, ml, out, out.stride(0), out.stride(1), **merge_constants(hd, splits, pdl),
                                     **_pdl.launch(pdl))
    return out


@torch.library.custom_op("llmlab::paged_decode", mutates_args=())
def _paged_decode_op(q: Tensor, k_pages: Tensor, v_pages: Tensor, block_tables: Tensor, context_lens: Tensor,
                     block_size: int, scale: float, window: int, block_n: int, num_splits: int) -> Tensor:
    return _launch(q, k_pages, v_pages, block_tables, context_lens, block_size, scale, window, block_n,
                   num_splits)


@_paged_decode_op.register_fake
def _(q, k_pages, v_pages, block_tables, context_lens, block_size, scale, window, block_n, num_splits):
    return q.new_empty(q.shape)


def compile_for_cuda(arch: int, dtype: torch.dtype, G: int, hd: int, *, window: int | None = None,
                     index_type: str = "i64", scale_type: str = "fp32", block_size: int = 16,
                     block_n: int = 64, num_splits: int = 1, pdl: bool = False) -> dict:
    """Compile the kernel ahead of time for CUDA compute capability `arch` (90 = Hopper) down to a
    cubin, as `paged_decode` would launch it, on any machine (no GPU needed; Triton's NVIDIA backend
    and its bundled ptxas do the work). Returns the compiled asm by stage; with num_splits > 1 the
    merge kernel's too, under "merge". Run it in a process without TRITON_INTERPRET=1: Triton builds
    its kernels for the interpreter at import time then. `scale_type="fp64"` is how a Python float
    reaches a kernel traced by torch.compile (kept: the kernel must take either). `pdl` builds the variants
    for programmatic dependent launch (kernels/pdl.py).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}[dtype]
    part = "*fp32" if num_splits > 1 else ptr  # the single-pass launch passes `out` for the unused part buffers
    consts = launch_constants(dtype, "cuda", G, hd, block_size, block_n, window, num_splits, pdl)
    sig = {"Q": ptr, "K": ptr, "V": ptr, "Out": ptr, "Mid": part, "ML": part, "Tables": f"*{index_type}",
           "Lens": f"*{index_type}", "scale": scale_type, "window": "i32"}
    sig.update({name: "i32" for name in _paged_decode_kernel.arg_names if name.startswith("stride_")})
    sig.update({name: "constexpr" for name in consts})
    if list(sig) != _paged_decode_kernel.arg_names:
        raise RuntimeError(f"compile_for_cuda's signature {list(sig)} is out of date with the kernel's arguments")
    target = GPUTarget("cuda", arch, 32)
    options = {"launch_pdl": pdl}
    asm = dict(triton.compile(ASTSource(_paged_decode_kernel, sig, consts), target=target, options=options).asm)
    if num_splits > 1:
        mconsts = merge_constants(hd, num_splits, pdl)
        msig = {"Mid": "*fp32", "ML": "*fp32", "Out": ptr, "stride_ob": "i32", "stride_oh": "i32"}
        msig.update({name: "constexpr" for name in mconsts})
        asm["merge"] = dict(triton.compile(ASTSource(_merge_splits_kernel, msig, mconsts), target=target,
                                           options=options).asm)
    return asm


def launch_constants(dtype: torch.dtype, device_type: str, G: int, hd: int, block_size: int, block_n: int,
                     window: int | None, splits: int = 1, pdl: bool = False) -> dict:
    """The kernel's compile-time constants for one launch (also what the ahead-of-time compile test uses)."""
    return {
        "G": G, "G_PAD": max(16, triton.next_power_of_2(G)), "HD": hd, "HD_PAD": max(16, triton.next_power_of_2(hd)),
        "BLOCK_SIZE": block_size, "BLOCK_N": block_n, "USE_WINDOW": window is not None, "SPLITS": splits,
        # fp32 models multiply in IEEE fp32 (no TF32). Triton's CPU interpreter gets bf16 tl.dot wrong
        # (3.9), so there bf16 is multiplied in fp32 too; compiled, bf16/fp16 use the tensor cores.
        "DOT_FP32": dtype == torch.float32 or (device_type == "cpu" and dtype == torch.bfloat16),
        "PDL": pdl,
    }


def merge_constants(hd: int, splits: int, pdl: bool = False) -> dict:
    return {"HD": hd, "HD_PAD": max(16, triton.next_power_of_2(hd)), "SPLITS": splits,
            "S_PAD": max(2, triton.next_power_of_2(splits)), "PDL": pdl}


if triton is not None:

    # stride_tb is the step's block-table width, which changes from step to step outside CUDA graphs: Triton
    # would otherwise compile a variant per divisibility class of it (1, a multiple of 16, other) mid-run.
    @triton.jit(do_not_specialize=["stride_tb"])
    def _paged_decode_kernel(Q, K, V, Out, Mid, ML, Tables, Lens, scale, window,
                             stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
                             stride_ob, stride_oh, stride_tb,
                             G: tl.constexpr, G_PAD: tl.constexpr, HD: tl.constexpr, HD_PAD: tl.constexpr,
                             BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, USE_WINDOW: tl.constexpr,
                             SPLITS: tl.constexpr, DOT_FP32: tl.constexpr, PDL: tl.constexpr):
        _pdl.trigger(PDL)
        _pdl.wait(PDL)  # q and the newest K/V are the kernel before's output
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        length = tl.load(Lens + b).to(tl.int32)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, HD_PAD)
        heads = kvh * G + g
        q_mask = (g[:, None] < G) & (d[None, :] < HD)
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=q_mask, other=0.0)

        m = tl.full([G_PAD], float("-inf"), tl.float32)  # running max of each query row
        s_sum = tl.zeros([G_PAD], tl.float32)  # running sum of exp(score - max)
        acc = tl.zeros([G_PAD, HD_PAD], tl.float32)
        lo = 0
        if USE_WINDOW:
            lo = tl.maximum(length - window, 0)
            lo = (lo // BLOCK_N) * BLOCK_N  # the first tile then holds the oldest visible key
        hi = length
        if SPLITS > 1:  # this program's part of the row: whole tiles, so only the row's last tile is ragged
            chunk = tl.cdiv(tl.cdiv(length - lo, SPLITS), BLOCK_N) * BLOCK_N
            lo = lo + tl.program_id(2) * chunk
            hi = tl.minimum(lo + chunk, length)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            valid = n < length
            if USE_WINDOW:
                valid = valid & (n >= length - window)
            page = tl.load(Tables + b * stride_tb + n // BLOCK_SIZE, mask=n < length, other=0)
            slot = page.to(tl.int64) * BLOCK_SIZE + n % BLOCK_SIZE
            kv_mask = valid[:, None] & (d[None, :] < HD)
            k = tl.load(K + slot[:, None] * stride_ks + kvh * stride_kh + d[None, :], mask=kv_mask, other=0.0)
            if DOT_FP32:
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))  # (G_PAD, BLOCK_N), fp32 accumulation
            # fp32 even when `scale` arrives as fp64 (torch.compile passes Python floats so): m, s_sum and
            # acc are loop-carried and must keep one type.
            s = tl.where(valid[None, :], s * scale, float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            s_sum = s_sum * alpha + tl.sum(p, 1)
            v = tl.load(V + slot[:, None] * stride_vs + kvh * stride_vh + d[None, :], mask=kv_mask, other=0.0)
            if DOT_FP32:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        if SPLITS == 1:
            out = acc / s_sum[:, None]
            tl.store(Out + b * stride_ob + heads[:, None] * stride_oh + d[None, :], out.to(Out.dtype.element_ty),
                     mask=q_mask)
        else:  # an empty part (its row is shorter than the parts before it) leaves max -inf and sum 0
            part = (b.to(tl.int64) * tl.num_programs(1) * G + heads) * SPLITS + tl.program_id(2)  # (G_PAD,)
            tl.store(Mid + part[:, None] * HD + d[None, :], acc, mask=q_mask)
            tl.store(ML + part * 2, m, mask=g < G)
            tl.store(ML + part * 2 + 1, s_sum, mask=g < G)

    @triton.jit
    def _merge_splits_kernel(Mid, ML, Out, stride_ob, stride_oh, HD: tl.constexpr, HD_PAD: tl.constexpr,
                             SPLITS: tl.constexpr, S_PAD: tl.constexpr, PDL: tl.constexpr):
        """One program per (sequence, query head): out = sum_p e^(m_p - M) acc_p / sum_p e^(m_p - M) l_p."""
        _pdl.trigger(PDL)
        _pdl.wait(PDL)
        b = tl.program_id(0)
        h = tl.program_id(1)
        p = tl.arange(0, S_PAD)
        d = tl.arange(0, HD_PAD)
        part = (b.to(tl.int64) * tl.num_programs(1) + h) * SPLITS + p
        m = tl.load(ML + part * 2, mask=p < SPLITS, other=float("-inf"))
        w = tl.exp(m - tl.max(m, 0))  # 0 for empty and padding parts
        s_sum = tl.sum(tl.load(ML + part * 2 + 1, mask=p < SPLITS, other=0.0) * w, 0)
        acc = tl.load(Mid + part[:, None] * HD + d[None, :], mask=(p[:, None] < SPLITS) & (d[None, :] < HD), other=0.0)
        out = tl.sum(acc * w[:, None], 0) / s_sum
        tl.store(Out + b * stride_ob + h * stride_oh + d, out.to(Out.dtype.element_ty), mask=d < HD)
