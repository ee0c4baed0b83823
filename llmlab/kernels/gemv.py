"""Matrix-vector product for batch-1 decode on CUDA: y = W x (+ b), one row of x, W read once.

    gemv(x, weight, bias=None, block_n=16, block_k=512, split_k=1, num_warps=4) -> (..., N) in x's dtype

x (..., K) holding exactly one row; weight (N, K) contiguous in K, as nn.Linear stores it.

Why it exists: a decode step of one sequence is a chain of matrix-vector products, so its speed is
the rate at which the weights stream from memory. cuBLAS picks a GEMM tile built for M >= 8 at
M = 1 (the H100 profile in benchmarks/results/gpu_profile_cuda.log: 0.4-2.8 TB/s per shape of a
3.35 TB/s card). Here each program owns BLOCK_N output features and walks K in BLOCK_K-wide tiles,
multiplying in fp32 into a (BLOCK_N, BLOCK_K) register tile that is summed once at the end; the
weight loads are marked evict-first (read once, they should not push anything else out of L2).
With split_k > 1 the K range is divided over that many programs per feature block, which add
their partial sums into an fp32 vector (more programs in flight when N is small).

`gemv_reference` is the same maths in PyTorch (fp32 products and sums). The tests compare the two
on CPU through Triton's interpreter (TRITON_INTERPRET=1), and `compile_for_cuda` builds the kernel
to a cubin for a given compute capability on any machine. benchmarks/gemv.py times it against
cuBLAS on the Llama-3.2-1B decode shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: callers keep F.linear
    triton = None

from llmlab.kernels import pdl as _pdl


def gemv_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    y = x.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _check(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if triton is None:
        raise RuntimeError("gemv needs Triton; install it or use torch.nn.functional.linear.")
    if weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"gemv needs x (..., K) and weight (N, K); got {tuple(x.shape)} and {tuple(weight.shape)}.")
    if x.numel() != x.shape[-1]:
        raise ValueError(f"gemv takes one row of x; got {x.numel() // max(x.shape[-1], 1)} (use F.linear for more).")
    if weight.stride(1) != 1:
        raise ValueError("gemv needs the weight contiguous along K (call .contiguous() on it).")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"gemv's bias must have shape ({weight.shape[0]},); got {tuple(bias.shape)}.")


def gemv(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, block_n: int = 16, block_k: int = 512,
         split_k: int = 1, num_warps: int = 4) -> Tensor:
    """y = weight @ x (+ bias) for one row of x with the Triton kernel (see the module docstring)."""
    _check(x, weight, bias)
    N, K = weight.shape
    xv = x.reshape(K)
    if xv.stride(0) != 1:
        xv = xv.contiguous()
    split_k = max(1, min(split_k, triton.cdiv(K, block_k)))
    k_span = triton.cdiv(triton.cdiv(K, split_k), block_k) * block_k  # each split a whole number of tiles
    split_k = triton.cdiv(K, k_span)
    out_dtype = x.dtype
    if split_k == 1:
        y = torch.empty(N, dtype=out_dtype, device=x.device)
    else:
        y = torch.zeros(N, dtype=torch.float32, device=x.device)
    _gemv_kernel[(triton.cdiv(N, block_n), split_k)](
        xv, weight, bias if bias is not None else weight, y, N, K, weight.stride(0), k_span,
        BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split_k > 1, HAS_BIAS=bias is not None,
        EVEN=(N % block_n == 0) and (K % k_span == 0), PDL=False, num_warps=num_warps,
    )
    if split_k > 1:
        y = (y + bias.float()).to(out_dtype) if bias is not None else y.to(out_dtype)
    return y.view(*x.shape[:-1], N)


def compile_for_cuda(arch: int, dtype: torch.dtype, *, block_n: int = 16, block_k: int = 512, split: bool = False,
                     bias: bool = False, even: bool = True, num_warps: int = 4, pdl: bool = False) -> dict:
    """Compile the kernel for CUDA compute capability `arch` (90 = Hopper) down to a cubin on any machine
    (Triton's NVIDIA backend and its bundled ptxas; no GPU); `pdl` builds the variant for programmatic dependent
    launch (kernels/pdl.py). Returns the compiled asm by stage. Run it in a process without TRITON_INTERPRET=1
    (Triton reads that flag at import)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}[dtype]
    consts = {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT": split, "HAS_BIAS": bias, "EVEN": even, "PDL": pdl}
    sig = {"X": ptr, "W": ptr, "Bias": ptr, "Y": "*fp32" if split else ptr, "N": "i32", "K": "i32",
           "stride_wn": "i32", "k_span": "i32"}
    sig.update({name: "constexpr" for name in consts})
    if list(sig) != _gemv_kernel.arg_names:
        raise RuntimeError(f"compile_for_cuda's signature {list(sig)} is out of date with the kernel's arguments")
    # As a launch on 16-byte-aligned tensors with K a multiple of 16 specialises them (vector loads follow).
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if name not in consts and name != "N"}
    compiled = triton.compile(ASTSource(_gemv_kernel, sig, consts, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "launch_pdl": pdl})
    return dict(compiled.asm)


if triton is not None:

    @triton.jit
    def _weights(w_rows, n_ok, k, K, EVEN: tl.constexpr):
        """The weight tile at columns k (evict-first: read once), masked unless EVEN."""
        if EVEN:
            w = tl.load(w_rows + k[None, :], eviction_policy="evict_first")
        else:
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & (k < K)[None, :], other=0.0,
                        eviction_policy="evict_first")
        return w

    @triton.jit
    def _x(X, k, K, EVEN: tl.constexpr):
        if EVEN:
            x = tl.load(X + k)
        else:
            x = tl.load(X + k, mask=k < K, other=0.0)
        return x

    @triton.jit
    def _gemv_kernel(X, W, Bias, Y, N, K, stride_wn, k_span,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     EVEN: tl.constexpr, PDL: tl.constexpr):
        _pdl.trigger(PDL)
        pid_n = tl.program_id(0)
        k_lo = tl.program_id(1) * k_span
        n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        w_rows = W + n.to(tl.int64)[:, None] * stride_wn
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        # The first tile's weights are asked for before waiting on the kernel before (with PDL; they do not depend
        # on it), then x, which may be its output. Same sums in the same order as the loop.
        k = k_lo + tl.arange(0, BLOCK_K)
        w = _weights(w_rows, n_ok, k, K, EVEN)
        _pdl.wait(PDL)
        acc += w.to(tl.float32) * _x(X, k, K, EVEN).to(tl.float32)[None, :]
        for k0 in range(k_lo + BLOCK_K, k_lo + k_span, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            acc += _weights(w_rows, n_ok, k, K, EVEN).to(tl.float32) * _x(X, k, K, EVEN).to(tl.float32)[None, :]
        y = tl.sum(acc, 1)
        if SPLIT:
            tl.atomic_add(Y + n, y, mask=n_ok, sem="relaxed")
        else:
            if HAS_BIAS:
                y += tl.load(Bias + n, mask=n_ok, other=0.0).to(tl.float32)
            tl.store(Y + n, y.to(Y.dtype.element_ty), mask=n_ok)
