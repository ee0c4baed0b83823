"""fuse_projections: q/k/v and gate/up as single matmuls for inference, nothing else changed."""

import torch

from llmlab import ModelConfig, Transformer
from llmlab.model.transformer import fuse_projections


def _model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_position_embeddings=64, **kw)
    return Transformer(cfg).eval()


def test_fused_model_gives_the_same_logits_and_state_dict():
    for kw in ({}, {"qkv_bias": True, "mlp_bias": True}):
        model = _model(**kw)
        x = torch.randint(0, 97, (2, 9))
        with torch.no_grad():
            ref = model(x)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        assert fuse_projections(model) == 4  # 2 layers x (qkv, gate_up)
        assert model.blocks[0].attn.qkv is not None and model.blocks[0].ffn.gate_up is not None
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
        after = model.state_dict()
        assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)


def test_fused_model_still_trains_and_updates_show_in_the_fused_weight():
    model = _model().train()
    fuse_projections(model)
    x = torch.randint(0, 97, (2, 9))
    model(x).sum().backward()  # gradients on: the unfused path runs, every projection gets a gradient
    attn = model.blocks[0].attn
    assert attn.q.weight.grad is not None and model.blocks[0].ffn.gate.weight.grad is not None
    with torch.no_grad():
        attn.k.weight.add_(1.0)  # an in-place update (optimizer, load_state_dict) reaches the fused copy
    assert torch.equal(attn.qkv.weight[attn.q.weight.shape[0]:][:attn.k.weight.shape[0]], attn.k.weight)


def test_moving_the_model_drops_the_fusion():
    model = _model()
    fuse_projections(model)
    model.to(torch.float64)
    assert model.blocks[0].attn.qkv is None and model.blocks[0].ffn.gate_up is None
    with torch.no_grad():
        assert model(torch.randint(0, 97, (1, 5))).dtype == torch.float64


def test_swapping_a_projection_drops_the_fusion():
    model = _model()
    fuse_projections(model)
    attn, ffn = model.blocks[0].attn, model.blocks[0].ffn
    attn.k = torch.nn.Linear(attn.k.in_features, attn.k.out_features, bias=False)  # as LoRA or quantization would
    ffn.up = torch.nn.Linear(ffn.up.in_features, ffn.up.out_features, bias=False)
    assert attn.qkv is None and ffn.gate_up is None
    assert model.blocks[1].attn.qkv is not None  # the other layer keeps its fusion
