"""AdamW against torch.optim.AdamW, parameter groups, the schedule, the fp16 loss scaler."""

from __future__ import annotations

import math

import pytest
import torch

from llmlab import ModelConfig, Transformer
from llmlab.train.optim import AdamW, LossScaler, lr_at, param_groups

CFG = ModelConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                  norm="layernorm", norm_bias=True, position="learned", qkv_bias=True)


def test_param_groups_decay_only_matrices():
    model = Transformer(CFG.replace(tie_word_embeddings=False))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "blocks.0.attn.q.weight" in decayed and "lm_head.weight" in decayed
    assert {"embed.weight", "pos_embed.weight", "blocks.0.norm1.weight", "blocks.0.norm1.bias",
            "blocks.0.attn.q.bias", "norm_f.weight"} <= kept
    assert not decayed & kept
    assert len(decayed | kept) == len(list(model.parameters()))


def test_tied_head_is_not_decayed_twice():
    model = Transformer(CFG.replace(tie_word_embeddings=True))
    decay, no_decay = param_groups(model, 0.1)
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) and id(model.embed.weight) in {id(p) for p in no_decay["params"]}


def test_adamw_matches_torch_step_for_step():
    torch.manual_seed(0)
    a = Transformer(CFG)
    b = Transformer(CFG)
    b.load_state_dict(a.state_dict())
    ours = AdamW(param_groups(a, 0.1), lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    ref = torch.optim.AdamW(param_groups(b, 0.1), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    ids = torch.randint(0, 40, (3, 9))
    for step in range(6):
        for model, opt in ((a, ours), (b, ref)):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr=3e-3, warmup_steps=2, max_steps=6)
            loss = model.loss(ids[:, :-1], ids[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad()
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), (step, n)  # same formula, same order of operations: bitwise


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_clip_and_step_matches_clip_grad_norm_then_step(compiled):
    """AdamW.clip_and_step (clipping fused into the update; torch.compile'd when compiled=True) against
    torch's clip_grad_norm_ followed by the plain step, with a changing lr and clipping that bites."""
    torch.manual_seed(0)
    cfg = CFG.replace(qkv_bias=False)  # a key bias has a zero gradient up to rounding, which Adam amplifies
    a = Transformer(cfg)
    b = Transformer(cfg)
    b.load_state_dict(a.state_dict())
    fused = AdamW(param_groups(a, 0.1), lr=3e-3, betas=(0.9, 0.95), compiled=compiled)
    plain = AdamW(param_groups(b, 0.1), lr=3e-3, betas=(0.9, 0.95))
    ids = torch.randint(0, 40, (3, 9))
    for step in range(4):
        for opt in (fused, plain):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr=3e-3, warmup_steps=2, max_steps=4)
        a.loss(ids[:, :-1], ids[:, 1:]).backward()
        b.loss(ids[:, :-1], ids[:, 1:]).backward()
        norm = fused.clip_and_step(0.5)
        ref = torch.nn.utils.clip_grad_norm_(list(b.parameters()), 0.5)
        plain.step()
        assert ref > 0.5  # the clip is active
        torch.testing.assert_close(norm, ref, rtol=1e-5, atol=0)
        for opt in (fused, plain):
            opt.zero_grad()
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=f"step {step}: {n}")


def test_clip_and_step_traces_to_multi_tensor_ops():
    """clip_and_step's traced graph has the same ops whatever the number of parameters (one `_foreach` op
    per line of AdamW per group): on CUDA Inductor fuses each such chain into a few kernels for all tensors,
    where a per-tensor loop became a kernel per tensor (~400 launches a step for GPT-2 small)."""
    counts = []
    for layers in (1, 3):
        torch.manual_seed(0)
        model = Transformer(CFG.replace(num_layers=layers))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt = AdamW(param_groups(model, 0.1), lr=1e-3)
        nodes = []

        def backend(gm, example_inputs, nodes=nodes):
            nodes.extend(n for n in gm.graph.nodes if n.op == "call_function")
            return gm.forward

        opt._update_fn = None
        opt.clip_and_step(1.0)  # builds the eager function; trace that one with a recording backend
        opt._update_fn = torch.compile(opt._update_fn, backend=backend, fullgraph=True)
        torch._dynamo.reset()
        opt.clip_and_step(1.0)
        counts.append(sum(1 for n in nodes if "foreach" not in str(n.target) and "getitem" not in str(n.target)))
        assert any("foreach" in str(n.target) for n in nodes)
    assert counts[0] == counts[1], counts  # nothing per tensor outside the multi-tensor ops


def test_schedule_warmup_then_cosine_to_floor():
    kw = dict(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(x >= y for x, y in zip(values, values[1:]))


def test_loss_scaler_skips_overflow_and_regrows():
    p = torch.nn.Parameter(torch.zeros(3))
    s = LossScaler(init_scale=8.0, growth_interval=2)
    p.grad = torch.tensor([8.0, 16.0, float("inf")])
    assert not s.unscale_and_check([p]) and s.scale == 4.0 and s.skipped == 1
    for _ in range(2):
        p.grad = torch.tensor([4.0, 8.0, 12.0])
        assert s.unscale_and_check([p])
        assert torch.equal(p.grad, torch.tensor([1.0, 2.0, 3.0]))  # divided by the scale in force (4)
    assert s.scale == 8.0  # grew after growth_interval clean steps


def test_fp16_gradients_underflow_without_scaling():
    tiny = torch.tensor([1e-8], dtype=torch.float16)
    assert tiny.item() == 0.0  # below fp16's smallest subnormal (~6e-8)
    assert (torch.tensor([1e-8]) * 2**16).half().float().item() == pytest.approx(1e-8 * 2**16, rel=1e-3)
    assert math.isinf(torch.tensor([70000.0]).half().item())  # and overflow past 65504


def test_multi_tensor_path_matches_per_parameter_path():
    torch.manual_seed(0)
    a, b = Transformer(CFG), Transformer(CFG)
    b.load_state_dict(a.state_dict())
    oa, ob = AdamW(param_groups(a, 0.1), lr=1e-2), AdamW(param_groups(b, 0.1), lr=1e-2)
    ids = torch.randint(0, 40, (2, 9))
    for _ in range(3):
        for model, opt, foreach in ((a, oa, False), (b, ob, True)):
            model.loss(ids[:, :-1], ids[:, 1:]).backward()
            if foreach:  # what step() runs for CUDA parameters, exercised here on the CPU
                for group in opt.param_groups:
                    for p in group["params"]:
                        st = opt.state[p]
                        if not st:
                            st.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                        st["step"] += 1
                    with torch.no_grad():
                        opt._update_foreach(group, group["params"])
            else:
                opt.step()
            opt.zero_grad()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-7), n
