"""FLOPs and time: GPT-3's published compute, torch's FLOP counter, the seed note's training-time example."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmlab import estimate
from llmlab.config import ModelConfig
from llmlab.errors import ConfigError
from llmlab.model.transformer import Transformer


def test_gpt3_training_compute_and_time_on_1000_a100():
    flops = estimate.training_flops("gpt3-175b", 300e9)
    assert flops == 6 * 174_604_259_328 * 300e9
    assert round(flops / 1e23, 2) == 3.14  # Brown et al. 2020, Table D.1: 3.14e23
    # Seed note: 1000 A100 (312 TFLOP/s bf16 dense) at 30% utilisation -> "about 3-4 months". It is ~39 days.
    seconds = estimate.training_time("gpt3-175b", 300e9, gpu="A100-80GB", n_gpus=1000, mfu=0.3)
    assert seconds == pytest.approx(flops / (1000 * 312e12 * 0.3))
    assert 38.5 < seconds / 86400 < 39.5


@pytest.mark.parametrize("cfg", [
    ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48),
    ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, norm="layernorm", norm_bias=True,
                gated_ffn=False, activation="gelu_tanh", position="learned", qkv_bias=True, tie_word_embeddings=True,
                max_position_embeddings=32),
], ids=["llama", "gpt2"])
def test_forward_flops_match_torch_flop_counter(cfg):
    model = Transformer(cfg, attn_backend="explicit")  # einsums, which the counter sees (CPU flash it does not)
    s = 16
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, s, dtype=torch.long))
    # torch counts every matmul/bmm: the projections, the head, and all s x s scores (our convention).
    assert counter.get_total_flops() == s * estimate.flops_per_token(cfg, s).forward


def test_training_flops_with_attention_and_6n():
    cfg = estimate.resolve("llama2-7b")
    f = estimate.flops_per_token(cfg, 4096)
    assert f.train == 3 * f.forward and f.backward == 2 * f.forward
    assert estimate.training_flops(cfg, 1e9, seq_len=4096) == pytest.approx(1e9 * f.train)
    # 6N vs matmul-exact: embeddings cost no FLOPs, the untied head does; attention adds 4·L·s·d per token.
    assert f.matmul == 2 * (estimate.count_params(cfg) - 32000 * 4096 - 65 * 4096)
    assert f.attention == 4 * 32 * 4096 * 4096


def test_prefill_is_the_sum_of_decode_steps():
    cfg = "smollm2-135m"
    s = 12
    total = sum(estimate.decode_flops(cfg, 2, context=i + 1) for i in range(s))
    assert estimate.prefill_flops(cfg, 2, s) == pytest.approx(total)


def test_mfu_and_mbu_round_trip():
    gpu = estimate.get_gpu("H100-SXM")
    tps = 0.5 * gpu.peak_flops("bf16") * 8 / (6 * estimate.count_params("llama3-8b"))
    assert estimate.mfu("llama3-8b", tps, gpu, n_gpus=8) == pytest.approx(0.5)
    ceiling = estimate.decode_tokens_per_s("llama3-8b", gpu, batch=4, context=1024)
    assert estimate.mbu("llama3-8b", ceiling, gpu, batch=4, context=1024) == pytest.approx(1.0)
    # batch 1 at tiny context: bandwidth / weight bytes (16 GB of bf16 weights at 3.35 TB/s ≈ 209 tok/s)
    one = estimate.decode_tokens_per_s("llama3-8b", gpu, batch=1, context=1)
    assert 200 < one < 210


def test_bad_time_inputs():
    with pytest.raises(ConfigError, match="mfu is a fraction"):
        estimate.training_time("gpt2", 1e9, gpu="A100", mfu=40)


WINDOWED = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48,
                       max_position_embeddings=64, sliding_window=8)


@pytest.mark.parametrize("s", [1, 5, 8, 9, 40])
def test_sliding_window_flops_count_min_p_w_keys_per_query(s):
    """mistral-7b's FLOPs ignored its window (attention over all 32,768 keys): the query at position p sees
    min(p, W) keys (llmlab's mask keeps p - j < W). Checked against a sum over positions."""
    cfg, w = WINDOWED, WINDOWED.sliding_window
    m2, per_key = 2 * estimate.params.matmul_params(cfg), 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    keys = [min(p, w) for p in range(1, s + 1)]  # brute force: one entry per query position
    assert estimate.decode_flops(cfg, 2, s) == 2 * (m2 + per_key * keys[-1])
    assert estimate.prefill_flops(cfg, 3, s) == 3 * (m2 * s + per_key * sum(keys))
    assert estimate.training_flops(cfg, 1e6, seq_len=s, causal=True) == pytest.approx(
        3 * 1e6 * (m2 + per_key * sum(keys) / s))
    # training's MFU convention charges every query like the last one (no causal skipping), within the window
    assert estimate.training_flops(cfg, 1e6, seq_len=s) == pytest.approx(3 * 1e6 * (m2 + per_key * keys[-1]))


@pytest.mark.parametrize("s", [1, 8, 40])
def test_a_window_no_shorter_than_the_sequence_changes_no_flops(s):
    import dataclasses

    plain = dataclasses.replace(WINDOWED, sliding_window=None)
    for w in (s, s + 3):
        cfg = dataclasses.replace(WINDOWED, sliding_window=w)
        assert estimate.flops_per_token(cfg, s) == estimate.flops_per_token(plain, s)
        assert estimate.prefill_flops(cfg, 2, s) == estimate.prefill_flops(plain, 2, s)
        assert estimate.decode_flops(cfg, 2, s) == estimate.decode_flops(plain, 2, s)
        for causal in (False, True):
            assert (estimate.training_flops(cfg, 1e9, seq_len=s, causal=causal)
                    == estimate.training_flops(plain, 1e9, seq_len=s, causal=causal))


def test_mistral_flops_use_its_4096_window():
    """The QA hand figures for mistral-7b at its 32,768 context with c = min(s, W): 1.637e10 and 5.32e14."""
    assert estimate.flops_per_token("mistral-7b", 32768).forward == pytest.approx(1.637e10, rel=1e-3)
    assert estimate.prefill_flops("mistral-7b", 1, 32768) == pytest.approx(5.32e14, rel=1e-3)
    steps = {s.name: s for s in estimate.flops.flops_steps("mistral-7b")}
    assert "forward attention per token (s=32768, window W=4096)" in steps
