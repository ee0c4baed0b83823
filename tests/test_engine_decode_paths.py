"""The engine's optional decode paths give the same greedy tokens: fused projections, compiled decode step."""

import pytest
import torch

from llmlab import ModelConfig, Transformer
from llmlab.engine import SamplingParams
from llmlab.engine.config import EngineConfig
from llmlab.engine.llm_engine import LLMEngine

PROMPTS = [list(range(1, 1 + n)) for n in (5, 17, 40)]


@pytest.fixture(scope="module")
def cfg():
    return ModelConfig(vocab_size=101, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=96, max_position_embeddings=256)


def greedy(cfg, **options) -> dict[str, list[int]]:
    torch.manual_seed(0)
    model = Transformer(cfg).eval()  # a fresh copy each time: fusion changes the module in place
    engine = LLMEngine(model, None, EngineConfig(block_size=4, cpu_pack_linears=False, **options), pad_decode=True)
    for i, p in enumerate(PROMPTS):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    out = {}
    while engine.has_unfinished_requests():
        out |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
    return out


def test_fused_projections_give_the_same_tokens(cfg):
    assert greedy(cfg, fuse_projections=True) == greedy(cfg, fuse_projections=False)


def test_compiled_decode_step_gives_the_same_tokens(cfg):
    assert greedy(cfg, compile_decode=True) == greedy(cfg, fuse_projections=False)
