"""kernels/cpu_rope_cache.py: RoPE on q and k and the paged KV write in one C call, bitwise equal to
model.layers.apply_rope followed by PagedKVCache.update (the eager ops it replaces in the engine's CPU steps)."""

import pytest
import torch

from llmlab.kernels import cpu_rope_cache
from llmlab.kernels.cpu_rope_cache import rope_cache_cpu
from llmlab.model.layers import apply_rope, rope_cos_sin

pytestmark = pytest.mark.skipif(not cpu_rope_cache.supports(torch.float32), reason="no C compiler")

DTYPES = [d for d in (torch.float32, torch.bfloat16, torch.float16) if cpu_rope_cache.supports(d)]


def _inputs(n, H, Hkv, hd, dtype, slots_total=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(1, n, (H + 2 * Hkv) * hd, generator=g) * 3).to(dtype)  # the fused projection's output
    q, k, v = qkv.split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
    q, k, v = q.view(1, n, H, hd), k.view(1, n, Hkv, hd), v.view(1, n, Hkv, hd)
    positions = torch.randint(0, 4000, (1, n), generator=g)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    cos, sin = rope_cos_sin(inv_freq, positions, dtype)  # (1, 1, n, hd), as the model makes them
    slots = torch.randperm(slots_total, generator=g)[:n]
    return q, k, v, cos, sin, slots


def _eager(q, k, v, cos, sin, slots, k_pages, v_pages):
    """What Attention.forward runs without the kernel: transpose, apply_rope, PagedKVCache.update."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_pages.index_copy_(0, slots, k[0].transpose(0, 1))
    v_pages.index_copy_(0, slots, v[0].transpose(0, 1))
    return q[0].transpose(0, 1)  # (n, H, hd)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,H,Hkv,hd", [(1, 9, 3, 64), (16, 9, 3, 64), (5, 8, 1, 128), (3, 4, 4, 32),
                                        (300, 9, 3, 64)])  # 16 and 300 tokens: the threaded path
def test_matches_eager_bitwise(dtype, n, H, Hkv, hd):
    q, k, v, cos, sin, slots = _inputs(n, H, Hkv, hd, dtype)
    pools = [torch.zeros(512, Hkv, hd, dtype=dtype) for _ in range(4)]
    with torch.inference_mode():
        want = _eager(q, k, v, cos, sin, slots, pools[0], pools[1])
        got = rope_cache_cpu(q, k, v, cos, sin, pools[2], pools[3], slots)
    assert got.shape == (n, H, hd) and got.is_contiguous()
    assert torch.equal(got, want)  # bitwise: each product and the sum rounded as the eager ops round them
    assert torch.equal(pools[2], pools[0]) and torch.equal(pools[3], pools[1])


def test_separate_projections_and_squeezed_inputs():
    """Unfused q/k/v (each its own contiguous output) and inputs without the leading batch dimension."""
    n, H, Hkv, hd = 4, 6, 2, 16
    q, k, v, cos, sin, slots = _inputs(n, H, Hkv, hd, torch.float32)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    pools = [torch.zeros(512, Hkv, hd) for _ in range(4)]
    want = _eager(q, k, v, cos, sin, slots, pools[0], pools[1])
    got = rope_cache_cpu(q[0], k[0], v[0], cos[0, 0], sin[0, 0], pools[2], pools[3], slots.to(torch.int32))
    assert torch.equal(got, want) and torch.equal(pools[2], pools[0]) and torch.equal(pools[3], pools[1])


def test_bad_inputs_are_clear_errors_and_write_nothing():
    n, H, Hkv, hd = 3, 4, 2, 16
    q, k, v, cos, sin, slots = _inputs(n, H, Hkv, hd, torch.float32, slots_total=64)
    kp, vp = torch.zeros(64, Hkv, hd), torch.zeros(64, Hkv, hd)
    with pytest.raises(ValueError, match="outside the pools"):
        rope_cache_cpu(q, k, v, cos, sin, kp, vp, torch.tensor([1, 64, 2]))
    with pytest.raises(ValueError, match="outside the pools"):
        rope_cache_cpu(q, k, v, cos, sin, kp, vp, torch.tensor([1, -1, 2]))
    assert not kp.any() and not vp.any()  # slots are checked before anything is written
    with pytest.raises(ValueError, match="contiguous heads"):
        rope_cache_cpu(q.transpose(-1, -2), k, v, cos, sin, kp, vp, slots)
    with pytest.raises(ValueError, match="one dtype"):
        rope_cache_cpu(q, k, v, cos.double(), sin.double(), kp, vp, slots)
    with pytest.raises(ValueError, match="one slot per token"):
        rope_cache_cpu(q, k, v, cos, sin, kp, vp, slots[:2])
    with pytest.raises(ValueError, match="for pools of 1 heads"):
        rope_cache_cpu(q, k, v, cos, sin, torch.zeros(64, 1, hd), torch.zeros(64, 1, hd), slots)
    q5, k5, v5 = torch.ones(2, 2, 5), torch.ones(2, 1, 5), torch.ones(2, 1, 5)
    with pytest.raises(ValueError, match="even head size"):
        rope_cache_cpu(q5, k5, v5, torch.ones(2, 5), torch.ones(2, 5), torch.zeros(64, 1, 5), torch.zeros(64, 1, 5),
                       torch.tensor([0, 1]))


# ---- in the engine ---------------------------------------------------------------------------------------------


def _engine_run(cfg, dtype, fused: bool, **options):
    from llmlab import Transformer
    from llmlab.engine import SamplingParams
    from llmlab.engine.config import EngineConfig
    from llmlab.engine.llm_engine import LLMEngine

    torch.manual_seed(0)
    model = Transformer(cfg).to(dtype).eval()
    engine = LLMEngine(model, None, EngineConfig(block_size=4, cpu_fused_rope=fused, **options))
    assert engine.runner.rope_kernel is fused
    prompts = [list(range(3, 3 + n)) for n in (5, 23, 40)]
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=9, ignore_eos=True, logprobs=2))
    out = {}
    while engine.has_unfinished_requests():
        out |= {o.request_id: (o.outputs[0].token_ids, o.outputs[0].logprobs) for o in engine.step() if o.finished}
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["llama", "qwen3", "qwen2"])
def test_engine_tokens_and_logprobs_identical_with_the_kernel(monkeypatch, dtype, variant):
    """Prefill chunks, mixed steps and decode steps through the kernel give exactly the eager path's tokens and
    logprobs (q/k norms before RoPE: qwen3; q/k/v biases: qwen2)."""
    import llmlab.model.cache as cache
    from llmlab import ModelConfig

    if not cpu_rope_cache.supports(dtype):
        pytest.skip(f"kernel not built for {dtype}")
    extra = {"qwen3": {"qk_norm": True}, "qwen2": {"qkv_bias": True}}.get(variant, {})
    cfg = ModelConfig(vocab_size=101, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=96, max_position_embeddings=256, **extra)
    calls = []
    real = cache.rope_cache_cpu
    monkeypatch.setattr(cache, "rope_cache_cpu", lambda *a: calls.append(a[0].shape[-3]) or real(*a))
    options = {"max_num_batched_tokens": 32, "max_num_seqs": 3}  # the 40-token prompt prefills in two chunks
    fused = _engine_run(cfg, dtype, True, **options)
    assert calls and max(calls) > 1 and min(calls) >= 1  # prefill chunks and decode rows went through it
    calls.clear()
    assert _engine_run(cfg, dtype, False, **options) == fused
    assert not calls
