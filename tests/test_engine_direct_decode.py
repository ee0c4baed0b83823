"""The CPU engine's direct decode step (kernels/cpu_decode.py): the same kernels as the model's forward called
directly, so tokens and logprobs (hence logits) must be bitwise those of the engine without it."""

from __future__ import annotations

import pytest
import torch

from llmlab import ModelConfig, Transformer
from llmlab.engine import SamplingParams
from llmlab.engine.config import EngineConfig
from llmlab.engine.llm_engine import LLMEngine
from llmlab.kernels import cpu_decode
from llmlab.kernels import cpu_paged_attention as cpa

pytestmark = pytest.mark.skipif(not cpa.supports(torch.float32), reason="no C compiler for the CPU kernels")

BASE = dict(vocab_size=301, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
            max_position_embeddings=256)
VARIANTS = {
    "llama": dict(model_type="llama"),
    "qwen2 (q/k/v biases)": dict(model_type="qwen2", qkv_bias=True),
    "mistral (window 6, tied)": dict(model_type="mistral", sliding_window=6, tie_word_embeddings=True),
    "scaled embedding, head_dim 32": dict(embedding_scale=True, head_dim=32),
    "qwen3 (q/k norms)": dict(model_type="qwen3", qk_norm=True, head_dim=32),
}


def model_of(dtype: torch.dtype, **overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**(BASE | overrides))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if p.ndim == 1 else 0.1 * torch.randn_like(p))
    return model.to(dtype)


def run(model: Transformer, prompts=((5, 9), (17, 14), (40, 4)), change=None, **options):
    """Greedy with logprobs for prompts of (length, max_tokens): the batch goes 3 -> 2 -> 1 rows. `change(model)`
    runs between two rounds (weights written in place); returns both rounds' outputs and the engine."""
    engine = LLMEngine(model, None, EngineConfig(block_size=4, max_num_batched_tokens=32, **options))
    rounds = []
    for r in range(2 if change else 1):
        if r:
            with torch.no_grad():
                change(model)
        for i, (n, m) in enumerate(prompts):
            engine.add_request(f"{r}-{i}", [(7 * i + j) % 300 + 1 for j in range(n)],
                               SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, logprobs=2))
        out = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished:
                    c = o.outputs[0]
                    out[o.request_id] = (c.token_ids, c.cumulative_logprob, c.logprobs)
        rounds.append(out)
    return rounds, engine


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_direct_steps_give_bitwise_the_forwards_tokens_and_logprobs(variant, dtype):
    want, _ = run(model_of(dtype, **VARIANTS[variant]), cpu_direct_decode=False)
    got, engine = run(model_of(dtype, **VARIANTS[variant]))
    assert got == want
    assert {rows for rows, _ in engine.runner.direct.calls} == {1, 2, 3}  # decode steps of 3, 2 and 1 sequences


def test_direct_step_is_used_for_decode_steps_only():
    model = model_of(torch.float32)
    engine = LLMEngine(model, None, EngineConfig(block_size=4, max_num_batched_tokens=32))
    rows = []
    run_direct = engine.runner.direct.run
    engine.runner.direct.run = lambda n: rows.append(n) or run_direct(n)
    engine.add_request("a", list(range(1, 41)), SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert rows == [1] * 5  # 40 prompt tokens in two 32-token chunks (the second samples), then 5 decode steps


def test_weights_written_in_place_are_picked_up():
    """An optimizer step or load_state_dict between rounds: the call lists (packed copies, pointers) are rebuilt."""

    def change(model):
        model.blocks[0].ffn.down.weight.mul_(1.7)
        model.lm_head.weight.add_(0.05)

    want, _ = run(model_of(torch.float32), change=change, cpu_direct_decode=False)
    got, _ = run(model_of(torch.float32), change=change)
    assert got == want and got[0] != got[1]


def test_larger_batches_and_unmirrored_models_take_the_forward():
    model = model_of(torch.float32)
    prompts = [(3 + i % 5, 2) for i in range(34)]
    want, _ = run(model_of(torch.float32), prompts=prompts, max_num_seqs=34, cpu_direct_decode=False)
    got, engine = run(model, prompts=prompts, max_num_seqs=34)
    assert got == want and engine.runner.direct.max_rows == 32
    with pytest.raises(ValueError, match="1 to 32 rows"):
        engine.runner.direct.inputs(33)
    gpt2 = Transformer(ModelConfig(model_type="gpt2", vocab_size=301, hidden_size=64, num_layers=2, num_heads=4,
                                   norm="layernorm", norm_bias=True, position="learned", activation="gelu_tanh",
                                   gated_ffn=False, qkv_bias=True, o_bias=True, mlp_bias=True,
                                   tie_word_embeddings=True)).eval()
    assert "pre-RMSNorm blocks, RoPE positions, a SwiGLU" in cpu_decode.unsupported(gpt2, torch.float32)
    assert LLMEngine(gpt2, None, EngineConfig(block_size=4)).runner.direct is None
    for off in (dict(cpu_fast_norms=False), dict(cpu_fused_rope=False), dict(paged_kernel="gather"),
                dict(cpu_direct_decode=False)):
        assert LLMEngine(model_of(torch.float32), None, EngineConfig(block_size=4, **off)).runner.direct is None
