"""CPU inference paths: oneDNN-packed linears and the C kernel for 1-4 rows (kernels/cpu_linear.py), and the
bf16 decode attention of the paged path — each against the plain PyTorch computation it replaces."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, SamplingParams
from llmlab.kernels.cpu_linear import (ROWS_ANY, SAMPLED_ROWS, PackedLinear, pack_linears, packed_layers,
                                       packing_supported, skinny_linear, skinny_supported, tune_packing)
from llmlab.kernels.cpu_norm import FastRMSNorm, use_fast_norms
from llmlab.kernels.cpu_norm import supported as fast_norm_supported
from llmlab.model.attention import PagedMetadata, PagedSegment, paged_attend
from llmlab.model.layers import RMSNorm
from llmlab.model.transformer import fuse_projections

needs_packing = pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN weight packing here")


def cfg(**kw) -> ModelConfig:
    base = dict(model_type="llama", vocab_size=300, hidden_size=256, intermediate_size=512, num_layers=2,
                num_heads=4, num_kv_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return ModelConfig(**{**base, **kw})


def model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(cfg(**kw)).eval()


@needs_packing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 256), (16, 256), (3, 7, 256)])
def test_packed_linear_equals_f_linear(dtype, shape):
    if not packing_supported(dtype):
        pytest.skip(f"no {dtype} packing on this CPU")
    torch.manual_seed(0)
    lin = nn.Linear(256, 384).to(dtype)
    packed = PackedLinear.from_linear(lin, (dtype,))
    x = torch.randn(shape, dtype=dtype)
    with torch.inference_mode():
        got, want = packed(x), F.linear(x.float(), lin.weight.float(), lin.bias.float())
    assert got.shape == (*shape[:-1], 384) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    assert "packed" in packed._copies  # the packed path ran, not the fallback


@needs_packing
def test_packed_linear_built_directly_packs():
    torch.manual_seed(0)
    packed = PackedLinear(256, 384)  # like nn.Linear(256, 384), not through from_linear
    x = torch.randn(4, 256)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), F.linear(x, packed.weight, packed.bias), atol=1e-5, rtol=1e-5)
    assert "packed" in packed._copies


@needs_packing
def test_pack_keeps_parameters_names_and_ties():
    m = model()
    before = {k: v.data_ptr() for k, v in m.state_dict().items()}
    n_big = sum(1 for x in m.modules() if type(x) is nn.Linear and x.weight.numel() >= 256 * 256)
    assert pack_linears(m) == n_big > 0
    assert {k: v.data_ptr() for k, v in m.state_dict().items()} == before  # same tensors, same names
    assert m.lm_head.weight is m.embed.weight and isinstance(m.lm_head, PackedLinear)
    small = m.blocks[0].attn.k  # 256 -> 128: below the threshold, stays a plain nn.Linear
    assert type(small) is nn.Linear and isinstance(m.blocks[0].ffn.up, nn.Linear)


@needs_packing
def test_packed_copy_follows_weight_changes():
    torch.manual_seed(0)
    lin = PackedLinear.from_linear(nn.Linear(256, 256))
    x = torch.randn(2, 256)
    with torch.no_grad():
        lin(x)
        lin.weight.add_(1.0)  # in place, as an optimizer step: version counter moves
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-4, rtol=1e-5)
        lin.load_state_dict({"weight": torch.randn(256, 256), "bias": torch.zeros(256)})
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-4, rtol=1e-5)
        lin.weight = nn.Parameter(torch.randn(256, 256))  # a new tensor: new storage
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-4, rtol=1e-5)


@needs_packing
def test_training_through_packed_layers_uses_autograd():
    plain = model().train()
    packed = copy.deepcopy(plain)
    pack_linears(packed)
    ids = torch.randint(0, 300, (2, 12))
    for m in (plain, packed):
        m.loss(ids[:, :-1], ids[:, 1:]).backward()
    for (name, p), q in zip(plain.named_parameters(), packed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


@needs_packing
def test_packed_model_converted_later_still_runs():
    m = model()
    pack_linears(m)
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        for dtype in (torch.float16, torch.bfloat16, torch.float32):  # fp16 cannot pack: F.linear takes over
            m.to(dtype)
            plain = copy.deepcopy(m)
            for parent in plain.modules():
                for name, child in parent.named_children():
                    if isinstance(child, PackedLinear):
                        plain_lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                        plain_lin.weight, plain_lin.bias = child.weight, child.bias
                        setattr(parent, name, plain_lin)
            tol = 1e-5 if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(m(ids).float(), plain(ids).float(), atol=tol, rtol=tol)


def test_pack_refuses_what_it_cannot_pack():
    assert pack_linears(model().half()) == 0  # fp16: F.linear stays
    assert all(type(x) is not PackedLinear for x in model().half().modules())


@needs_packing
def test_engine_packs_on_cpu_and_greedy_is_unchanged():
    prompts = [[5, 17, 42, 9], list(range(20, 45)), [7] * 3]
    plain = model()
    refs = [plain.generate(torch.tensor([p]), max_new_tokens=10)[0, len(p):].tolist() for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=10)
    packed_llm = LLM(model(), block_size=4)
    unpacked_llm = LLM(model(), block_size=4, cpu_pack_linears=False)
    attn = packed_llm.model.blocks[0].attn
    assert isinstance(attn.qkv, PackedLinear) and isinstance(attn.o, PackedLinear)  # fused first, then packed
    assert type(attn.q) is nn.Linear  # the parts stay plain: one packed copy per weight
    assert type(unpacked_llm.model.blocks[0].attn.qkv) is nn.Linear
    for llm in (packed_llm, unpacked_llm):
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == refs


@needs_packing
def test_fused_projections_are_packed_and_follow_weight_updates():
    m = model()
    ids = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        ref = m(ids)
        assert fuse_projections(m) == 4 and pack_linears(m) == 2 * 4 + 1  # per layer qkv, o, gate_up, down; lm_head
        ffn = m.blocks[0].ffn
        assert isinstance(ffn.gate_up, PackedLinear) and type(ffn.gate) is nn.Linear
        assert len(packed_layers(m)) == 2 * 4 + 1 and len(tune_packing(m, rows=(1,), repeats=1)) == 1
        torch.testing.assert_close(m(ids), ref, atol=1e-5, rtol=1e-5)
        ffn.up.weight.mul_(2.0)  # an in-place update of a part (a view of the fused weight) must repack
        plain = model()
        plain.blocks[0].ffn.up.weight.mul_(2.0)
        torch.testing.assert_close(m(ids), plain(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_paged_decode_attention_matches_dense(dtype):
    """Decode rows over gathered pages (bf16/fp16 on CPU: K/V upcast, fp32 SDPA) vs dense SDPA in fp32."""
    torch.manual_seed(0)
    S, H, Hkv, hd, slots = 5, 6, 2, 16, 64
    k_pages, v_pages = (torch.randn(slots, Hkv, hd).to(dtype) for _ in range(2))
    q = torch.randn(1, H, S, hd).to(dtype)
    lengths = torch.tensor([1, 9, 17, 30, 12])
    key_slots = torch.stack([torch.randperm(slots)[:32] for _ in range(S)])  # (S, Lk): scattered pages
    mask = (torch.arange(32)[None, :] < lengths[:, None])[:, None, None, :]
    out = paged_attend(q, k_pages, v_pages, PagedMetadata(torch.arange(S), [PagedSegment(0, S, 1, key_slots, mask)]))
    for r in range(S):
        k = k_pages[key_slots[r, :lengths[r]]].float().transpose(0, 1).repeat_interleave(H // Hkv, 0)
        v = v_pages[key_slots[r, :lengths[r]]].float().transpose(0, 1).repeat_interleave(H // Hkv, 0)
        want = F.scaled_dot_product_attention(q[0, :, r:r + 1].float(), k, v)  # (H, 1, hd)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out[0, :, r:r + 1].float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_paged_decode_attention_matches_eager(dtype):
    """Traced on CPU, decode rows take the broadcast-products form (attention._decode_products) that Inductor fuses;
    it must give what eager SDPA over the gathered keys gives, padded keys and a sliding window included."""
    torch.manual_seed(0)
    S, H, Hkv, hd, slots = 3, 6, 2, 16, 64
    k_pages, v_pages = (torch.randn(slots, Hkv, hd).to(dtype) for _ in range(2))
    q = torch.randn(1, H, S, hd).to(dtype)
    lengths = torch.tensor([1, 17, 30])
    key_slots = torch.stack([torch.randperm(slots)[:32] for _ in range(S)])
    offs = torch.arange(32)[None, :]
    mask = ((offs < lengths[:, None]) & (offs > lengths[:, None] - 1 - 8))[:, None, None, :]  # window of 8 keys
    meta = PagedMetadata(torch.arange(S), [PagedSegment(0, S, 1, key_slots, mask)])
    eager = paged_attend(q, k_pages, v_pages, meta)
    compiled = torch.compile(paged_attend, fullgraph=True)(q, k_pages, v_pages, meta)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(compiled.float(), eager.float(), atol=tol, rtol=tol)


@needs_packing
def test_routes_send_small_batches_to_f_linear():
    torch.manual_seed(0)
    lin = PackedLinear.from_linear(nn.Linear(256, 256))
    lin.routes = ((3, "f_linear"), (ROWS_ANY, "packed"))
    with torch.no_grad():
        one = torch.randn(1, 256)
        torch.testing.assert_close(lin(one), F.linear(one, lin.weight, lin.bias))
        assert not lin._copies  # 1 row: F.linear, nothing packed
        four = torch.randn(4, 256)
        torch.testing.assert_close(lin(four), F.linear(four, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        assert set(lin._copies) == {"packed"}


@needs_packing
def test_tune_packing_picks_the_rows_from_which_packing_wins():
    m = model()
    pack_linears(m)
    packed = [x for x in m.modules() if isinstance(x, PackedLinear)]
    # fake timings: MKL wins at 1 and 2 rows, oneDNN from 4 rows on (as measured on a 2-core Xeon in fp32)
    wins_from = {1: False, 2: False, 4: True, 8: True}
    table = tune_packing(m, rows=(1, 2, 4, 8), repeats=1,
                         timer=lambda layers, r, k: {"packed": 1.0 if wins_from[r] else 2.0,
                                                     "f_linear": 2.0 if wins_from[r] else 1.0}.get(k, 3.0))
    assert [t["rows"] for t in table] == [1, 2, 4, 8]
    assert {x.routes for x in packed} == {((2, "f_linear"), (ROWS_ANY, "packed"))}
    tune_packing(m, rows=(1, 16), repeats=1, timer=lambda layers, r, k: 1.0 if k == "packed" else 2.0)
    assert {x.routes for x in packed} == {((ROWS_ANY, "packed"),)}  # packing always wins
    tune_packing(m, rows=(1, 16), repeats=1, timer=lambda layers, r, k: 1.0 if k == "f_linear" else 2.0)
    assert {x.routes for x in packed} == {((ROWS_ANY, "f_linear"),)}  # never
    assert all(not x._copies for x in packed)  # no route packs: the copies made while timing are freed
    table = tune_packing(m, rows=(1, 2), repeats=2)  # the real measurement runs and routes every count
    assert len(table) == 2 and all(t["f_linear_ms"] > 0 and t["packed_ms"] > 0 for t in table)
    assert all(x.routes[-1][0] == ROWS_ANY and x.routes[-1][1] != "skinny" for x in packed)
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), model()(ids), atol=1e-4, rtol=1e-4)


@needs_packing
def test_tune_packing_samples_prefill_counts_and_stops_timing_clear_losers():
    m = model()
    pack_linears(m)
    layers = packed_layers(m)
    shapes = {(x.in_features, x.out_features) for x in layers}
    assert len(shapes) < len(layers)  # the model repeats shapes, so prefill counts can be sampled
    calls = []

    def timer(timed, r, k):
        calls.append((r, k, len(timed)))
        first = sum(1 for c in calls if c[:2] == (r, k)) == 1
        if k == "packed":
            return 50.0 if first else 1.0  # cold in its first round only: must still win
        return {"f_linear": 1.5, "panel": 10.0, "skinny": 10.0}[k] * len(timed)

    table = tune_packing(m, rows=(1, SAMPLED_ROWS), repeats=3, timer=timer)
    assert {n for r, _, n in calls if r == 1} == {len(layers)}  # decode counts stream every layer
    assert {n for r, _, n in calls if r == SAMPLED_ROWS} == {len(shapes)}
    assert table[1]["layers_timed"] == len(shapes) and "layers_timed" not in table[0]
    numel = sum(x.weight.numel() for x in layers)
    sample_numel = sum({(x.in_features, x.out_features): x.weight.numel() for x in layers}.values())
    assert table[1]["f_linear_ms"] == pytest.approx(1.5 * len(shapes) * numel / sample_numel, rel=1e-3)
    for r in (1, SAMPLED_ROWS):  # panel (and skinny) over twice the best after two rounds: no third round
        rounds = {k: sum(1 for c in calls if c[:2] == (r, k)) for k in ("f_linear", "packed", "panel")}
        assert rounds["packed"] == 3 and rounds["panel"] == 2, rounds
    assert {x.routes for x in layers} == {((ROWS_ANY, "packed"),)}


needs_skinny = pytest.mark.skipif(not skinny_supported(torch.float32), reason="the C kernel is not built here")


@needs_skinny
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 576), (2, 100), (3, 33), (1, 4, 1536)], ids=["1", "2-odd-K", "3", "4-rows-3d"])
@pytest.mark.parametrize("bias", [False, True])
def test_skinny_linear_equals_f_linear(dtype, shape, bias):
    if not skinny_supported(dtype):
        pytest.skip(f"no {dtype} in this build")
    torch.manual_seed(0)
    lin = nn.Linear(shape[-1], 77, bias=bias).to(dtype)  # 77 outputs: uneven split over the threads
    x = torch.randn(*shape).to(dtype)
    got = skinny_linear(x, lin.weight, lin.bias)
    want = F.linear(x.float(), lin.weight.float(), None if lin.bias is None else lin.bias.float())
    assert got.shape == (*shape[:-1], 77) and got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@needs_skinny
def test_skinny_linear_refuses_five_rows():
    with pytest.raises(ValueError, match="1 to 4 rows, got 5"):
        skinny_linear(torch.randn(5, 8), torch.randn(3, 8))


@needs_packing
@needs_skinny
def test_tune_packing_routes_small_batches_to_the_c_kernel(monkeypatch):
    m = model()
    ref = copy.deepcopy(m)
    pack_linears(m)
    packed = packed_layers(m)
    # fake timings: the C kernel wins at 1 and 2 rows, MKL at 4, oneDNN from 8 on
    fast = {1: "skinny", 2: "skinny", 4: "f_linear", 8: "packed"}
    tune_packing(m, rows=(1, 2, 4, 8), repeats=1, timer=lambda layers, r, k: 1.0 if fast[r] == k else 2.0)
    assert {x.routes for x in packed} == {((2, "skinny"), (4, "f_linear"), (ROWS_ANY, "packed"))}
    calls = []
    import llmlab.kernels.cpu_linear as cl

    real = cl.skinny_linear
    monkeypatch.setattr(cl, "skinny_linear", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        for n in (1, 2, 3):
            ids = torch.randint(0, 300, (1, n))
            torch.testing.assert_close(m(ids), ref(ids), atol=1e-4, rtol=1e-4)
    assert calls and all(shape[-2] <= 2 for shape in calls)  # 3 rows went to F.linear
    tune_packing(m, rows=(1, 2), repeats=1, timer=lambda layers, r, k: 1.0 if k == "skinny" else 2.0)
    assert {x.routes[-1][1] for x in packed} != {"skinny"}  # above 2 rows: never the 4-row kernel
    tune_packing(m, rows=(1, 2), repeats=1)  # the real measurement: a valid routing, same logits
    with torch.no_grad():
        torch.testing.assert_close(m(ids), ref(ids), atol=1e-4, rtol=1e-4)


needs_norm = pytest.mark.skipif(not fast_norm_supported(torch.float32), reason="the C norm kernel is not built here")


@needs_norm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 576), (16, 576), (2, 3, 5, 64), (300, 1024)], ids=["1", "16", "qk-norm", "parallel"])
def test_fast_rms_norm_equals_rms_norm(dtype, shape):
    if not fast_norm_supported(dtype):
        pytest.skip(f"no {dtype} in this build")
    torch.manual_seed(0)
    plain = RMSNorm(shape[-1], 1e-5).to(dtype)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(shape[-1]))
    holder = nn.Sequential(copy.deepcopy(plain))
    assert use_fast_norms(holder) == 1 and isinstance(holder[0], FastRMSNorm) and isinstance(holder[0], RMSNorm)
    assert holder.state_dict().keys() == nn.Sequential(plain).state_dict().keys()
    x = (torch.randn(*shape) * 3).to(dtype)
    with torch.no_grad():
        got, want = holder[0](x), plain(x)
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    else:  # fp32 statistics rounded once to the dtype, then the weight: at most a rare one-ulp flip
        torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=1e-2)
        assert (got == want).float().mean() > 0.999


@needs_norm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 16])  # 16 x 576: the threaded path
def test_add_rms_norm_is_the_add_then_the_norm_bitwise(dtype, rows):
    """The direct decode step's residual add + RMSNorm call: h after it is PyTorch's h + r, and the normalised rows
    are the norm kernel's output for that h, bit for bit (that step's logits must equal the forward's)."""
    from llmlab.kernels.cpu_norm import add_rms_norm_cpu, rms_norm_cpu

    if not fast_norm_supported(dtype):
        pytest.skip(f"no {dtype} in this build")
    torch.manual_seed(0)
    h, r = (torch.randn(rows, 576) * 3).to(dtype), torch.randn(rows, 576).to(dtype)
    w = torch.randn(576).to(dtype)
    want_h = h + r
    y = add_rms_norm_cpu(h, r, w, 1e-5)
    assert torch.equal(h, want_h) and torch.equal(y, rms_norm_cpu(want_h, w, 1e-5))
    with pytest.raises(ValueError, match="contiguous h and r of one shape"):
        add_rms_norm_cpu(h, r[:, :64], w, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 16, 300])  # 16 and 300 x 1536: the threaded path
def test_swiglu_kernel_matches_silu_times_up(dtype, rows):
    from llmlab.kernels import cpu_swiglu

    if not cpu_swiglu.supported(dtype):
        pytest.skip(f"no {dtype} swiglu kernel in this build")
    torch.manual_seed(0)
    gu = (torch.randn(rows, 2 * 1536) * 4).to(dtype)
    gu[0, :6] = torch.tensor([0.0, -0.0, 30.0, -30.0, 100.0, -100.0])  # saturated sigmoids, signed zeros
    got = cpu_swiglu.swiglu_cpu(gu, 1536)
    g, u = gu.chunk(2, dim=-1)
    want = F.silu(g) * u
    assert got.dtype == dtype and got.shape == (rows, 1536)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    else:  # silu within a few fp32 ulps of PyTorch's: after rounding to the dtype, almost always the same value
        torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)
        assert (got == want).float().mean() > 0.99
    with pytest.raises(ValueError, match="contiguous"):
        cpu_swiglu.swiglu_cpu(gu[:, :100], 1536)


def test_fast_feed_forward_takes_the_kernel_for_cpu_inference_only(monkeypatch):
    from llmlab.kernels import cpu_swiglu

    if not cpu_swiglu.supported(torch.float32):
        pytest.skip("no swiglu kernel in this build")
    torch.manual_seed(0)
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
    model = Transformer(ModelConfig(**shape)).eval()
    ref = copy.deepcopy(model)
    fuse_projections(model)
    assert cpu_swiglu.use_fast_swiglu(model) == 2
    assert all(type(b.ffn) is cpu_swiglu.FastFeedForward for b in model.blocks)
    assert cpu_swiglu.use_fast_swiglu(Transformer(ModelConfig(**shape, gated_ffn=False, activation="gelu"))) == 0
    calls = []
    real = cpu_swiglu.swiglu_cpu
    monkeypatch.setattr(cpu_swiglu, "swiglu_cpu", lambda *a: calls.append(1) or real(*a))
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), atol=1e-5, rtol=1e-5)
    assert len(calls) == 2  # one per layer
    calls.clear()
    model.train()
    model(ids).sum().backward()  # training: the plain forward, gradients flow
    assert not calls and all(p.grad is not None for p in model.parameters() if p.requires_grad)


@needs_norm
def test_fast_rms_norm_steps_aside_for_autograd_and_mixed_dtypes():
    plain = RMSNorm(64)
    fast = nn.Sequential(copy.deepcopy(plain))
    use_fast_norms(fast)
    x = torch.randn(3, 64, requires_grad=True)
    y = fast[0](x)  # training: the plain forward, gradients flow
    y.sum().backward()
    assert x.grad is not None and fast[0].weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(fast[0](x.detach().bfloat16()), plain(x.detach().bfloat16()))  # fp32 weight


@needs_norm
def test_a_compiled_engine_runs_its_eager_prefill_through_the_norm_kernel(monkeypatch):
    """compile_decode compiles the decode step only: the prefill is eager and takes the C norm (the graph traces
    the plain forward), and the greedy tokens stay the model's own."""
    import llmlab.kernels.cpu_norm as cn

    plain = model()
    prompts = [[5, 17, 42], list(range(20, 41))]
    refs = [plain.generate(torch.tensor([p]), max_new_tokens=6)[0, len(p):].tolist() for p in prompts]
    torch._dynamo.reset()
    llm = LLM(copy.deepcopy(plain), max_num_batched_tokens=64, compile_decode=True)
    assert any(isinstance(m, FastRMSNorm) for m in llm.model.modules())
    calls = []
    real = cn.rms_norm_cpu
    monkeypatch.setattr(cn, "rms_norm_cpu", lambda x, *a: calls.append(x.numel() // x.shape[-1]) or real(x, *a))
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6))
    assert [o.outputs[0].token_ids for o in outs] == refs
    assert calls and max(calls) > 2  # the prefill's rows went through the kernel


@needs_norm
def test_engine_swaps_norms_on_cpu_and_keeps_greedy_outputs():
    prompts = [[5, 17, 42], list(range(20, 41))]
    params = SamplingParams(temperature=0, max_tokens=10)
    fast = LLM(model(), max_num_batched_tokens=64)
    assert any(isinstance(m, FastRMSNorm) for m in fast.model.modules())
    plain = LLM(model(), max_num_batched_tokens=64, cpu_fast_norms=False)
    assert not any(isinstance(m, FastRMSNorm) for m in plain.model.modules())
    assert ([o.outputs[0].token_ids for o in fast.generate(prompts, params)]
            == [o.outputs[0].token_ids for o in plain.generate(prompts, params)])
