"""Properties of the one Transformer across every configuration: cache == no cache, explicit == SDPA,
padding invariance, GQA semantics, generation, dropout and the textbook variants."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize_

from llmlab import KVCache, ModelConfig, Transformer
from llmlab.errors import ConfigError, LlmlabError
from llmlab.model.attention import attend

BASE = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
            max_position_embeddings=64)
VARIANTS = {
    "llama-gqa": dict(num_kv_heads=2),
    "gpt2-like": dict(norm="layernorm", norm_bias=True, activation="gelu_tanh", gated_ffn=False, position="learned",
                      qkv_bias=True, o_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "post-ln-sinusoidal-relu": dict(norm="layernorm", norm_position="post", final_norm=False, position="sinusoidal",
                                    activation="relu", gated_ffn=False, embedding_scale=True),
    "alibi-mqa": dict(position="alibi", num_kv_heads=1),
    "alibi-6-heads": dict(position="alibi", num_heads=6, hidden_size=36),
    "sliding-window": dict(num_kv_heads=2, sliding_window=4),
    "qk-norm": dict(qk_norm=True, num_kv_heads=2),
}


def make(name: str, **over) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**BASE, **VARIANTS[name], **over}))
    return randomize_(model).eval()


def ids_for(B=2, T=11, seed=0):
    return torch.randint(0, BASE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=list(VARIANTS))
def model(request):
    return make(request.param)


def test_explicit_equals_sdpa(model):
    ids = ids_for()
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    out = {}
    for backend in ("explicit", "sdpa"):
        model.set_attention_backend(backend)
        with torch.no_grad():
            out[backend] = (model(ids), model(ids, mask))
    assert torch.allclose(out["explicit"][0], out["sdpa"][0], atol=1e-5)
    assert torch.allclose(out["explicit"][1], out["sdpa"][1], atol=1e-5)


@pytest.mark.parametrize("chunks", [[11], [6, 1, 1, 1, 1, 1], [4, 3, 4], [1] * 11])
def test_cache_equals_full_sequence(model, chunks):
    ids = ids_for()
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.allocate(model.cfg, 2, 16)
        pieces, start = [], 0
        for n in chunks:
            pieces.append(model(ids[:, start:start + n], cache=cache))
            start += n
    assert cache.length == 11
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)


def test_cache_with_left_padding_equals_unpadded(model):
    ids = ids_for(B=1, T=8, seed=2)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], 1)
    with torch.no_grad():
        ref = model(ids)
        cache = KVCache.allocate(model.cfg, 1, 11)
        a = model(padded[:, :7], mask[:, :7], cache=cache)
        b = model(padded[:, 7:], mask, cache=cache)
    got = torch.cat([a, b], 1)[:, 3:]
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(model, side):
    ids = ids_for(B=1, T=7, seed=3)
    pad = torch.zeros(1, 4, dtype=torch.long)
    if side == "left":
        padded, mask = torch.cat([pad, ids], 1), torch.cat([pad, torch.ones_like(ids)], 1)
    else:
        padded, mask = torch.cat([ids, pad], 1), torch.cat([torch.ones_like(ids), pad], 1)
    with torch.no_grad():
        ref, got = model(ids), model(padded, mask)
    assert torch.allclose(got[mask.bool()], ref[0], atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = make("llama-gqa")
    cfg = gqa.cfg.replace(num_kv_heads=gqa.cfg.num_heads)
    mha = Transformer(cfg).eval()
    state = gqa.state_dict()
    g, hd = cfg.num_heads // gqa.cfg.num_kv_heads, cfg.head_dim
    for name in list(state):
        if name.endswith(("attn.k.weight", "attn.v.weight")):
            w = state[name].view(gqa.cfg.num_kv_heads, hd, -1)  # (Hkv, hd, d): each KV head serves g queries
            state[name] = w.repeat_interleave(g, dim=0).reshape(cfg.num_heads * hd, -1)
    mha.load_state_dict(state)
    ids = ids_for()
    with torch.no_grad():
        assert torch.allclose(gqa(ids), mha(ids), atol=1e-5)


def test_attend_matches_naive_softmax_with_bias_and_gqa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 5, 8, generator=g) for h in (4, 2, 2))
    bias = torch.randn(1, 4, 5, 5, generator=g)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = q @ kk.transpose(-1, -2) / math.sqrt(8) + bias
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    ref = scores.softmax(-1) @ vv
    for backend in ("explicit", "sdpa"):
        assert torch.allclose(attend(q, k, v, bias=bias, causal=True, backend=backend), ref, atol=1e-5)


def test_explicit_softmax_survives_huge_scores():
    q = torch.full((1, 1, 3, 4), 1e4)
    k = torch.full((1, 1, 3, 4), 1e4)
    v = torch.randn(1, 1, 3, 4)
    out = attend(q, k, v, causal=True, backend="explicit")
    assert torch.isfinite(out).all()


def test_embedding_scale_multiplies_by_sqrt_d():
    on, off = make("llama-gqa", embedding_scale=True), make("llama-gqa")
    seen = {}
    for name, m in (("on", on), ("off", off)):
        m.blocks[0].register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
        m(ids_for())
    assert torch.allclose(seen["on"], seen["off"] * math.sqrt(32))


def test_dropout_active_only_in_train_mode():
    m = make("llama-gqa", dropout=0.3)
    ids = ids_for()
    with torch.no_grad():
        assert torch.equal(m(ids), m(ids))
        m.train()
        assert not torch.allclose(m(ids), m(ids))


def test_greedy_generate_equals_argmax_loop_and_sampling_is_seeded():
    m = make("llama-gqa")
    ids = ids_for(B=1, T=5)
    out = m.generate(ids, max_new_tokens=6)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
    assert torch.equal(m.generate(ids, max_new_tokens=6, temperature=1.0, top_k=1), seq)  # top-1 == greedy
    a = m.generate(ids, max_new_tokens=8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = m.generate(ids, max_new_tokens=8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_generate_stops_at_eos_and_pads_finished_rows():
    m = make("llama-gqa")
    ids = ids_for(B=2, T=5)
    free = m.generate(ids, max_new_tokens=6)
    eos = int(free[0, 6])  # row 0's second generated token becomes "EOS"
    out = m.generate(ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    row0 = out[0, 5:].tolist()
    assert row0[:2] == free[0, 5:7].tolist() and set(row0[2:]) <= {0}


def test_cache_overflow_and_bad_mask_are_clear_errors():
    m = make("llama-gqa")
    cache = KVCache.allocate(m.cfg, 2, 4)
    with pytest.raises(LlmlabError, match="KV cache holds 4 positions"):
        m(ids_for(T=5), cache=cache)
    with pytest.raises(LlmlabError, match="attention_mask has shape"):
        m(ids_for(), torch.ones(2, 3))
    with pytest.raises(LlmlabError, match="learned position embeddings"):
        make("gpt2-like")(ids_for(T=65))


def test_generate_rejects_bad_sampling_and_overlong_requests():
    m = make("llama-gqa")
    ids = ids_for(T=5)
    with pytest.raises(LlmlabError, match=r"top_p must be in \(0, 1\]"):
        m.generate(ids, max_new_tokens=2, temperature=1.0, top_p=1.5)
    with pytest.raises(LlmlabError, match="top_k must be at least 1"):
        m.generate(ids, max_new_tokens=2, temperature=1.0, top_k=0)
    limit = m.cfg.max_position_embeddings
    with pytest.raises(LlmlabError, match=f"beyond the model's {limit} positions"):
        m.generate(ids, max_new_tokens=limit - 4)
    assert m.generate(ids, max_new_tokens=limit - 5).shape[1] == limit  # exactly the context: fine


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=30, num_heads=4), "not divisible by num_heads"),
    (dict(num_heads=4, num_kv_heads=3), "not a multiple of num_kv_heads"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(position="rope", head_dim=7), "even head_dim"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(dropout=1.5), "dropout must be in"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_scaling.rope_type must be one of"),
])
def test_config_errors_are_clear(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**BASE, **kwargs})


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown ModelConfig keys \\['hiden_size'\\]"):
        ModelConfig.from_dict({"hiden_size": 3})


def test_value_head_size_may_differ_from_query_head_size():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 4, 8, generator=g), torch.randn(1, 2, 4, 8, generator=g)
    v = torch.eye(4).expand(1, 2, 4, 4)  # V = I returns the attention matrix itself
    a = attend(q, k, v, causal=True, backend="explicit")
    b = attend(q, k, v, causal=True, backend="sdpa")
    assert a.shape == (1, 2, 4, 4) and torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a.sum(-1), torch.ones(1, 2, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rmsnorm_is_llamas_formula_bitwise(dtype):
    """RMSNorm's fused path equals LLaMA's written-out order: fp32 statistics, cast back, then the weight."""
    from llmlab.model.layers import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(96, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(3, 7, 96) * 4).to(dtype)
    x32 = x.float()
    want = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    assert torch.equal(norm(x), want)
