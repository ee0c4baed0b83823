"""The fused one-sequence decode step (kernels/cuda_decode.py): against the model's own paged decode step through
Triton's interpreter on CPU (conftest sets TRITON_INTERPRET=1; compiled on CUDA), in the engine (greedy tokens
unchanged), its refusals, its tile tuning, and its kernels compiled for Hopper without a GPU."""

from __future__ import annotations

import pytest
import torch

from llmlab import ConfigError, ModelConfig, Transformer
from llmlab.engine import SamplingParams
from llmlab.engine.config import EngineConfig
from llmlab.engine.llm_engine import LLMEngine
from llmlab.engine.model_runner import decode_segment
from llmlab.kernels import cuda_decode as cd
from llmlab.model.attention import PagedMetadata, PagedSegment
from llmlab.model.cache import PagedKVCache
from llmlab.model.transformer import fuse_projections

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_kernel = pytest.mark.skipif(not cd.available(DEVICE),
                                  reason="needs Triton (CUDA, or >= 3.7 with TRITON_INTERPRET=1)")
GPT2 = dict(model_type="gpt2", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, norm="layernorm",
            norm_bias=True, position="learned", activation="gelu_tanh", gated_ffn=False, qkv_bias=True, o_bias=True,
            mlp_bias=True, tie_word_embeddings=True)
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
            max_position_embeddings=128)
VARIANTS = {
    "llama": dict(model_type="llama"),
    "qwen2 (q/k/v biases)": dict(model_type="qwen2", qkv_bias=True),
    "qwen3 (q/k norms, head_dim 32)": dict(model_type="qwen3", qk_norm=True, head_dim=32),
    "mistral (window 5, tied)": dict(model_type="mistral", sliding_window=5, tie_word_embeddings=True),
    "ragged sizes, scaled embedding": dict(hidden_size=72, intermediate_size=100, head_dim=16, embedding_scale=True),
}


def random_model(dtype: torch.dtype, **overrides) -> Transformer:
    """Weights of std 0.1 (norm weights around 1): logits spread enough that a wrong term shows."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**(BASE | overrides))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.ndim == 1 else 0.1 * torch.randn_like(p))
    model = model.to(DEVICE, dtype)
    fuse_projections(model)
    return model


@needs_kernel
@pytest.mark.parametrize("variant,dtype", [(v, torch.float32) for v in VARIANTS] + [
    ("llama", torch.bfloat16), ("qwen3 (q/k norms, head_dim 32)", torch.bfloat16)])  # bf16: the rounding points
def test_fused_step_matches_the_models_decode_step(variant, dtype):
    """After a 9-token prefill into the pages, two decode steps: the fused step's logits and the K/V it writes
    at the new slot match the model's paged decode step (same pages, Triton paged attention) — to fp32 rounding
    in fp32; in bf16 within a few bf16 steps (its residual stream stays fp32)."""
    model = random_model(dtype, **VARIANTS[variant])
    cfg, bs, T = model.cfg, 4, 9
    ref = PagedKVCache.allocate(cfg, 8, bs, dtype=dtype, device=DEVICE)
    slots = torch.arange(T, device=DEVICE)
    prefill = PagedMetadata(slots, [PagedSegment(0, 1, T, slots[None], None)])
    with torch.no_grad():
        model.hidden_states(torch.randint(0, cfg.vocab_size, (1, T), device=DEVICE), position_ids=slots[None],
                            cache=ref.with_meta(prefill))
    kv = PagedKVCache([t.clone() for t in ref.k], [t.clone() for t in ref.v], bs)
    fused = cd.FusedDecode(model, kv)
    tables = torch.arange(8, device=DEVICE)[None]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.03, atol=0.1)
    for step in range(2):
        p = T + step
        tok, pos, ctx = (torch.tensor([v], device=DEVICE) for v in (7 + 31 * step, p, p + 1))
        meta = PagedMetadata(pos.clone(), [decode_segment(0, tables, ctx, bs, cfg.sliding_window, gather=False)],
                             decode_kernel="triton")
        with torch.no_grad():
            want = model.lm_head(model.hidden_states(tok[None], position_ids=pos[None], cache=ref.with_meta(meta))[0])
            got = fused(tok, pos, pos.clone(), tables, ctx)
        assert got.shape == (1, cfg.vocab_size) and got.dtype == torch.float32
        torch.testing.assert_close(got, want.float(), **tol)
        for layer in range(cfg.num_layers):
            torch.testing.assert_close(kv.k[layer][p].float(), ref.k[layer][p].float(), **tol)
            torch.testing.assert_close(kv.v[layer][p].float(), ref.v[layer][p].float(), **tol)
    assert torch.equal(kv.k[0][:T], ref.k[0][:T])  # the prefill's slots untouched


@needs_kernel
def test_every_tile_choice_computes_the_same_step():
    """Tiles only regroup the work: each output's sum runs over K in the same order whatever the programs (the
    q/k/v split, rows per program), so every CONFIGS choice gives bitwise the same logits and K/V in the interpreter.
    Compiled for a card, `tl.sum`'s reduction tree (the RMSNorm's sum of squares) follows each tile's thread
    layout, so there they agree to fp32 rounding."""
    model = random_model(torch.float32, head_dim=32)
    outs = []
    for i in range(max(len(c) for c in cd.CONFIGS.values())):
        configs = {name: choices[min(i, len(choices) - 1)] for name, choices in cd.CONFIGS.items()}
        kv = PagedKVCache.allocate(model.cfg, 4, 4, device=DEVICE)
        one = torch.ones(1, dtype=torch.long, device=DEVICE)
        logits = cd.FusedDecode(model, kv, configs=configs)(one * 5, one * 0, one * 0, one[None] * 0, one).clone()
        outs.append((logits, kv.k[1][0].clone(), kv.v[1][0].clone()))
    for got in outs[1:]:
        if DEVICE.type == "cpu":
            assert all(torch.equal(a, b) for a, b in zip(got, outs[0]))
        for a, b in zip(got, outs[0]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unsupported_names_what_the_model_lacks():
    assert cd.unsupported(ModelConfig(**BASE)) is None
    gpt2 = ModelConfig(**GPT2)
    why = cd.unsupported(gpt2)
    assert why.startswith("the fused decode step needs") and "RMSNorm" in why and "RoPE" in why and "SwiGLU" in why
    assert "head_dim" in cd.unsupported(ModelConfig(**BASE | dict(hidden_size=96, num_heads=4)))  # head_dim 24


def greedy(setup=None, **options) -> tuple[dict[str, list[int]], LLMEngine]:
    model = random_model(torch.float32)
    engine = LLMEngine(model, None, EngineConfig(block_size=4, cpu_pack_linears=False, max_num_seqs=3, **options),
                       pad_decode=True)
    if setup is not None:
        setup(engine)
    for i, (n, m) in enumerate(zip((5, 17, 40), (6, 12, 4))):  # the batch goes 3 -> 2 -> 1 rows
        engine.add_request(str(i), list(range(1, 1 + n)), SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
    out = {}
    while engine.has_unfinished_requests():
        out |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
    return out, engine


@needs_kernel
def test_engine_runs_the_fused_step_for_one_sequence_and_gives_the_same_tokens():
    """With cuda_fused_decode the batch-1 graph (replays emulated on the CPU) runs the fused step, larger
    buckets the usual one; greedy tokens equal the engine without it."""
    from llmlab.engine.emulated_graphs import emulate_cuda_graphs

    calls = []

    def setup(engine):
        fused = engine.runner.fused
        engine.runner.fused = lambda *a: calls.append(a[0].shape) or fused(*a)
        emulate_cuda_graphs(engine.runner)

    want, _ = greedy(setup=lambda engine: emulate_cuda_graphs(engine.runner))
    got, engine = greedy(setup=setup, cuda_fused_decode=True)
    assert got == want
    # captured once for bucket 1 at start-up, then one replay per step with one sequence left (12 - 6 of them)
    assert len(calls) == 1 + 12 - 6 and engine.stats()["graph_steps"] == 12 - 1


def test_engine_refuses_the_fused_step_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a plain CPU: no Triton interpreter
    if DEVICE.type == "cpu":
        with pytest.raises(ConfigError, match="needs Triton and a model on a CUDA device"):
            greedy(cuda_fused_decode=True)


@needs_kernel
def test_fused_step_refuses_models_it_does_not_compute():
    gpt2 = Transformer(ModelConfig(**GPT2))
    kv = PagedKVCache.allocate(gpt2.cfg, 4, 4)
    with pytest.raises(ConfigError, match="needs RMSNorm.*drop cuda_fused_decode"):
        cd.FusedDecode(gpt2, kv)
    llama = Transformer(ModelConfig(**BASE)).eval()  # projections not fused
    with pytest.raises(ConfigError, match="fuse_projections=True"):
        cd.FusedDecode(llama, PagedKVCache.allocate(llama.cfg, 4, 4))


@needs_kernel
def test_tune_keeps_the_fastest_tiles_of_each_kernel():
    model = random_model(torch.float32)
    fused = cd.FusedDecode(model, PagedKVCache.allocate(model.cfg, 4, 4, device=DEVICE))
    ran = []

    def timer(calls):  # the last choice of each kernel is the fastest
        if not ran:
            calls()  # once: the interpreter is slow, and the tile test runs every choice
        ran.append(1)
        return -sum(cd.CONFIGS[name].index(fused.configs[name]) for name in cd.CONFIGS)

    report = fused.tune(timer=timer, repeats=1)
    assert fused.configs == {name: choices[-1] for name, choices in cd.CONFIGS.items()} == report["chosen"]
    assert len(ran) == sum(len(c) for c in cd.CONFIGS.values())
    assert set(report) == set(cd.CONFIGS) | {"chosen"}
    assert not fused.residual.any()


def test_fused_kernels_compile_for_hopper_with_vector_weight_loads(tmp_path):
    """Build the step's kernels as a CUDA launch would (not the interpreter) down to sm_90 cubins, no GPU needed;
    the weight loads must be 16-byte vector loads, with the evict-first hint."""
    import importlib.util
    import os
    import subprocess
    import sys

    if cd.triton is None or importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("no Triton with an NVIDIA backend")
    script = """
import torch
from llmlab.kernels.cuda_decode import compile_for_cuda
n = 0
for dtype in (torch.bfloat16, torch.float32):
    for kw in (dict(), dict(head_dim=128, bias=True, qk_norm=True)):
        for name, asm in compile_for_cuda(90, dtype, **kw).items():
            assert asm["cubin"], name
            weights = [ln for ln in asm["ptx"].splitlines() if "ld.global.L1::evict_first" in ln]
            assert name == "embed" or (weights and all(".v4." in ln for ln in weights)), (name, dtype, kw, weights[:2])
            n += 1
print("compiled", n)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0 and "compiled 16" in proc.stdout, proc.stderr[-4000:]
