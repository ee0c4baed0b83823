"""The batch-1 GEMV kernel (kernels/gemv.py) and its routing (kernels/cuda_linear.py): against the fp32
reference through Triton's interpreter on CPU (conftest sets TRITON_INTERPRET=1), compiled for Hopper
without a GPU, and in the engine (greedy tokens unchanged)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab import LLM, ConfigError, ModelConfig, Transformer
from llmlab.engine import SamplingParams
from llmlab.kernels import cuda_linear
from llmlab.kernels import gemv as gv

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_kernel = pytest.mark.skipif(not cuda_linear.available(DEVICE), reason="needs Triton (CUDA or TRITON_INTERPRET=1)")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,K,block_n,block_k,split_k,bias", [
    (64, 256, 16, 128, 1, False),   # even tiles, one program per 16 features
    (70, 300, 16, 128, 1, True),    # ragged N and K, bias
    (64, 1024, 8, 128, 4, True),    # split K: partial sums added in fp32, bias after
    (33, 1000, 16, 256, 3, False),  # split K with a short last split
    (48, 512, 32, 512, 8, False),   # more splits than tiles: clamped to one tile each
])
def test_gemv_matches_reference(dtype, N, K, block_n, block_k, split_k, bias):
    g = torch.Generator().manual_seed(N * K)
    w = torch.randn(N, K, generator=g).to(dtype).to(DEVICE)
    x = torch.randn(1, 1, K, generator=g).to(dtype).to(DEVICE)
    b = torch.randn(N, generator=g).to(dtype).to(DEVICE) if bias else None
    got = gv.gemv(x, w, b, block_n=block_n, block_k=block_k, split_k=split_k)
    want = gv.gemv_reference(x, w, b)
    assert got.shape == (1, 1, N) and got.dtype == dtype
    # fp32 sums in another order; bf16 outputs may round to the neighbouring value
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-2)
    torch.testing.assert_close(got.float(), want.float(), **tol)


@needs_kernel
def test_gemv_rejects_bad_input():
    w = torch.randn(32, 64, device=DEVICE)
    with pytest.raises(ValueError, match="one row"):
        gv.gemv(torch.randn(2, 64, device=DEVICE), w)
    with pytest.raises(ValueError, match=r"weight \(N, K\)"):
        gv.gemv(torch.randn(1, 63, device=DEVICE), w)
    with pytest.raises(ValueError, match="contiguous along K"):
        gv.gemv(torch.randn(1, 32, device=DEVICE), w.t())
    with pytest.raises(ValueError, match="bias must have shape"):
        gv.gemv(torch.randn(1, 64, device=DEVICE), w, torch.randn(31, device=DEVICE))


def test_gemv_compiles_for_hopper_with_vector_loads(tmp_path):
    """Build the kernel as a CUDA launch would (not the interpreter) down to sm_90 cubins, with no GPU: the
    weight loads must be 16-byte vector loads (a scalar-load layout would run at a fraction of the bandwidth)."""
    if gv.triton is None:
        pytest.skip("no Triton")
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this Triton has no NVIDIA backend")
    script = """
import torch
from llmlab.kernels.gemv import compile_for_cuda
cases = [dict(), dict(block_n=32, block_k=256, num_warps=8), dict(block_n=8, block_k=256, split=True, bias=True),
         dict(even=False, bias=True)]
for dtype in (torch.bfloat16, torch.float32):
    for kw in cases:
        asm = compile_for_cuda(90, dtype, **kw)
        loads = [ln for ln in asm["ptx"].splitlines() if "ld.global" in ln]
        assert asm["cubin"] and any(".v4." in ln for ln in loads), (dtype, kw, loads[:3])
print("compiled", 2 * len(cases))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0 and "compiled 8" in proc.stdout, proc.stderr[-4000:]


def tiny(bias: bool = False) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(model_type="qwen2" if bias else "llama", vocab_size=512, hidden_size=256,  # qwen2: q/k/v biases
                      intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=256,
                      qkv_bias=bias)
    return Transformer(cfg).eval()


def fake_timer(preferred: dict | None):
    """A timer under which `preferred` (None = cuBLAS) is fastest for every shape."""
    return lambda layers, config: 1.0 if config == preferred else 5.0


def test_use_gemv_swaps_fused_and_head_and_shares_weights():
    from llmlab.model.transformer import fuse_projections

    model = tiny(bias=True)
    fuse_projections(model)
    swapped = cuda_linear.use_gemv(model)
    layers = cuda_linear.gemv_layers(model)
    # per layer: q/k/v fused, o, gate/up fused, down (the parts stay plain); plus the LM head
    assert swapped == len(layers) == 2 * 4 + 1
    attn = model.blocks[0].attn
    assert type(attn.q) is torch.nn.Linear and isinstance(attn.qkv, cuda_linear.GemvLinear)
    assert attn.q.weight.data_ptr() == attn.qkv.weight.data_ptr()  # views of one tensor, nothing copied
    assert isinstance(model.lm_head, cuda_linear.GemvLinear)


def test_tune_gemv_routes_each_shape_to_the_fastest():
    model = tiny()
    cuda_linear.use_gemv(model)
    cfg = dict(block_n=16, block_k=256, split_k=2, num_warps=4)
    report = cuda_linear.tune_gemv(model, timer=fake_timer(cfg), repeats=1)
    assert {(r["N"], r["K"]) for r in report} == {(m.out_features, m.in_features)
                                                   for m in cuda_linear.gemv_layers(model)}
    assert all(r["chosen"] == cfg and len(r["gemv_us"]) == len(cuda_linear.GEMV_CONFIGS) for r in report)
    assert all(m.gemv_config == cfg for m in cuda_linear.gemv_layers(model))
    cuda_linear.tune_gemv(model, timer=fake_timer(None), repeats=1)
    assert all(m.gemv_config is None for m in cuda_linear.gemv_layers(model))


@needs_kernel
def test_gemv_linear_runs_the_kernel_for_one_inference_row_only(monkeypatch):
    lin = cuda_linear.GemvLinear.from_linear(torch.nn.Linear(256, 300).to(DEVICE))
    lin.gemv_config = dict(block_n=16, block_k=128, split_k=1, num_warps=4)
    calls = []
    monkeypatch.setattr(gv, "gemv", lambda *a, **k: calls.append(k) or F.linear(a[0], a[1], a[2]))
    with torch.no_grad():
        lin(torch.randn(1, 256, device=DEVICE))
        lin(torch.randn(3, 256, device=DEVICE))  # more rows: cuBLAS
    lin(torch.randn(1, 256, device=DEVICE))  # gradients on: cuBLAS
    assert calls == [lin.gemv_config]


@needs_kernel
def test_engine_with_gemv_keeps_greedy_tokens(monkeypatch):
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    sp = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    base = [o.outputs[0].token_ids for o in LLM(tiny(bias=True).to(DEVICE), max_num_seqs=1).generate(prompts, sp)]
    cfg = dict(block_n=16, block_k=256, split_k=2, num_warps=4)  # one of GEMV_CONFIGS
    monkeypatch.setattr(cuda_linear, "_graph_us", fake_timer(cfg))
    calls = []
    real = gv.gemv
    monkeypatch.setattr(gv, "gemv", lambda *a, **k: calls.append(1) or real(*a, **k))
    llm = LLM(tiny(bias=True).to(DEVICE), max_num_seqs=1, cuda_gemv=True)
    assert all(r["chosen"] == cfg for r in llm.engine.runner.gemv_report)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, sp)]
    assert got == base and calls  # decode rows (one sequence) went through the kernel


def test_engine_refuses_cuda_gemv_where_the_kernel_cannot_run(monkeypatch):
    monkeypatch.setattr(cuda_linear, "available", lambda device: False)
    with pytest.raises(ConfigError, match="cuda_gemv needs Triton"):
        LLM(tiny(), cuda_gemv=True)
