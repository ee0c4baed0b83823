"""The panel linear kernel (kernels/cpu_panel_linear.c) against F.linear in fp32 arithmetic, and its place in
PackedLinear's routing and the engine."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, SamplingParams
from llmlab.kernels.cpu_linear import ROWS_ANY, PackedLinear, packed_layers, packing_supported
from llmlab.kernels.cpu_panel_linear import pack_panels, panel_linear, panel_supported

needs_panel = pytest.mark.skipif(not panel_supported(torch.float32),
                                 reason="no panel kernel (AVX-512 or AVX2) on this CPU")
DTYPES = [torch.float32, torch.bfloat16]


def tiny_model() -> Transformer:
    """Two llama layers whose q/k/v, o, gate/up, down and head are all large enough to pack (9 PackedLinears)."""
    cfg = ModelConfig(model_type="llama", vocab_size=300, hidden_size=256, intermediate_size=512, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def model_greedy(model: Transformer, prompts: list[list[int]], n: int) -> list[list[int]]:
    """The model's own greedy continuations: what every engine configuration must reproduce."""
    return [model.generate(torch.tensor([p]), max_new_tokens=n)[0, len(p):].tolist() for p in prompts]


def reference(x, w, b):
    """fp32 products and sums, rounded once to the dtype: what the kernel computes, up to the order of the sums."""
    return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)


def check(got, x, w, b):
    want = reference(x, w, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    if x.dtype == torch.float32:  # sums of up to 576 unit products: a few fp32 steps of ~30 apart
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    else:  # another summation order flips a rounding now and then, by one bf16 step
        torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=8e-3)
        assert (got == want).float().mean() > 0.98


@needs_panel
@pytest.mark.parametrize("dtype", DTYPES)
# row blocks of 8 (AVX-512) or 6 (AVX2): whole, partial, several
@pytest.mark.parametrize("M", [1, 2, 3, 6, 8, 9, 12, 16, 37])
@pytest.mark.parametrize("N,K", [(80, 64), (50, 34), (145, 576), (7, 2)])  # 5 panels: a tile of 3 + 2; 4: 3 + 1; a tail
@pytest.mark.parametrize("bias", [False, True])
def test_panel_linear_equals_f_linear(dtype, M, N, K, bias):
    if not panel_supported(dtype):
        pytest.skip(f"no {dtype} panel kernel on this CPU")
    torch.manual_seed(M * 1000 + N + K)
    x, w = torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype)
    b = torch.randn(N, dtype=dtype) if bias else None
    check(panel_linear(x, pack_panels(w), N, b), x, w, b)


@needs_panel
@pytest.mark.parametrize("dtype", DTYPES)
def test_panel_linear_many_rows_3d_input_and_zero_rows(dtype):
    if not panel_supported(dtype):
        pytest.skip(f"no {dtype} panel kernel on this CPU")
    torch.manual_seed(0)
    w, b = torch.randn(200, 96, dtype=dtype), torch.randn(200, dtype=dtype)
    packed = pack_panels(w)
    x = torch.randn(3, 150, 96, dtype=dtype)  # 450 rows: a prefill chunk
    check(panel_linear(x, packed, 200, b), x, w, b)
    assert panel_linear(x[:, :0], packed, 200, b).shape == (3, 0, 200)


@pytest.mark.skipif(not panel_supported(torch.bfloat16), reason="no bf16 panel kernel on this CPU")
def test_bf16_sums_round_to_nearest_even_once_and_keep_nan_and_inf():
    """Exact products whose fp32 sums lie on or past a halfway point between bf16 neighbours: truncating, or
    rounding twice, gives another answer (VDPBF16PS rounds in the CPU; the widened path rounds in code)."""
    e = 2.0 ** -8
    x = torch.tensor([[1 + 2 * e, e], [1.0, e], [1.0, e + e / 2], [float("nan"), 0.0], [float("inf"), 0.0],
                      [-1 - 2 * e, -e]], dtype=torch.bfloat16)
    w = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.bfloat16)
    got = panel_linear(x, pack_panels(w), 2).float()
    want = reference(x, w, None).float()
    assert got[:, 0].tolist()[:3] == [1 + 4 * e, 1.0, 1 + 2 * e] and got[5, 0] == -1 - 4 * e
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@needs_panel
def test_panel_linear_does_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    x, w = torch.randn(16, 576), torch.randn(1000, 576)  # 63 panels, 21 tiles: uneven over 2 and 3 threads
    packed = pack_panels(w)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(panel_linear(x, packed, 1000))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])  # each column summed by one thread


@needs_panel
def test_panel_linear_refuses_bad_input():
    w = torch.randn(20, 8)
    with pytest.raises(ValueError, match="width 8"):
        panel_linear(torch.randn(2, 9), pack_panels(w), 20)
    with pytest.raises(ValueError, match="weight's dtype"):
        panel_linear(torch.randn(2, 8, dtype=torch.float64), pack_panels(w), 20)
    with pytest.raises(ValueError, match="even input width"):
        pack_panels(torch.randn(4, 7, dtype=torch.bfloat16))
    assert not panel_supported(torch.bfloat16, 7) and not panel_supported(torch.float16)


@needs_panel
@pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN weight packing here")
def test_panel_route_packs_one_copy_and_follows_weight_changes():
    torch.manual_seed(0)
    lin = PackedLinear.from_linear(nn.Linear(64, 100))
    lin.routes = ((ROWS_ANY, "panel"),)
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        assert set(lin._copies) == {"panel"}  # no oneDNN copy
        lin.weight.add_(1.0)  # in place, as an optimizer step: packed again
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-4, rtol=1e-5)
        lin.drop_copies()
        assert not lin._copies
    odd = PackedLinear.from_linear(nn.Linear(7, 20).bfloat16(), (torch.bfloat16,))
    odd.routes = ((ROWS_ANY, "panel"),)
    # bf16 with an odd width: oneDNN instead where it packs bf16, else F.linear
    assert odd.kernel_for(4) == ("packed" if packing_supported(torch.bfloat16) else "f_linear")


@needs_panel
@pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN weight packing here")
def test_engine_on_panel_routes_is_greedy_identical():
    plain = tiny_model()
    prompts = [[5, 17, 42, 9], list(range(20, 45)), [7] * 3, list(range(100, 160))]
    refs = model_greedy(plain, prompts, 12)
    llm = LLM(copy.deepcopy(plain), block_size=4)
    layers = packed_layers(llm.model)
    assert len(layers) == 2 * 4 + 1
    for m in layers:
        m.routes = ((ROWS_ANY, "panel"),)  # every count, the 60-token prefill included
        m.drop_copies()  # the start-up timing may have packed oneDNN copies where it found them faster
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12))
    assert [o.outputs[0].token_ids for o in outs] == refs
    assert all(set(m._copies) == {"panel"} for m in layers)


@needs_panel
@pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN weight packing here")
def test_compiled_engine_traces_the_panel_op(monkeypatch):
    """An engine of more than 4 sequences with compile_decode runs its linears through llmlab::panel_linear inside
    the one compiled graph; the tokens stay those of the model's own generate."""
    import llmlab.kernels.cpu_panel_linear as cpl

    plain = tiny_model()
    prompts = [[5, 17, 42, 9], list(range(20, 45)), [7] * 3]
    refs = model_greedy(plain, prompts, 10)
    torch._dynamo.reset()  # a fresh compile: earlier engines in this process may have used up the recompile limit
    calls = []
    real = cpl.panel_linear
    monkeypatch.setattr(cpl, "panel_linear", lambda x, *a: calls.append(x.shape[0]) or real(x, *a))
    llm = LLM(copy.deepcopy(plain), block_size=4, max_num_seqs=8, compile_decode=True)
    assert llm.engine.runner.traced_panels == 2 * 4 + 1
    assert all(m.traced == "panel" and "panel" in m._copies for m in packed_layers(llm.model))
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=10))
    assert [o.outputs[0].token_ids for o in outs] == refs
    assert 3 in calls  # the compiled decode step of 3 rows called the kernel


@pytest.mark.skipif(not panel_supported(torch.bfloat16), reason="no bf16 panel kernel here")
@pytest.mark.parametrize("widened", [False, True])
def test_a_small_compiled_engine_traces_the_panel_op_only_for_widened_bf16(monkeypatch, widened):
    """Engines of at most 4 sequences keep Inductor's GEMM template, except in bf16 on a CPU without bf16
    instructions, where the panel kernel was faster (compiled_decode.panel_beats_template); fp32 never."""
    import llmlab.engine.compiled_decode as cd

    monkeypatch.setattr(cd, "bf16_widened", lambda: widened)
    for dtype, traced in ((torch.bfloat16, widened), (torch.float32, False)):
        llm = LLM(tiny_model().to(dtype), block_size=4, max_num_seqs=1, compile_decode=True)
        assert (llm.engine.runner.traced_panels == 2 * 4 + 1) == traced, dtype


@needs_panel
@pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN weight packing here")
def test_compiled_engine_packs_weights_changed_before_its_first_step():
    """Weights written after the engine started but before the decode step compiles must be the ones traced."""
    plain = tiny_model()
    torch._dynamo.reset()
    llm = LLM(copy.deepcopy(plain), block_size=4, max_num_seqs=8, compile_decode=True)
    for m in packed_layers(llm.model):
        m.routes = ((ROWS_ANY, "packed"),)  # eager prefill through oneDNN: only the compile can refresh the panels
    prompts = [[5, 17, 42, 9], [7] * 3]
    before = model_greedy(plain, prompts, 8)
    with torch.no_grad():
        noise = torch.randn_like(plain.blocks[1].ffn.down.weight)
        for m in (plain, llm.model):
            m.blocks[1].ffn.down.weight.add_(noise)  # in place, after the panels were packed
    refs = model_greedy(plain, prompts, 8)
    assert refs != before  # the change shows in the tokens
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8))
    assert [o.outputs[0].token_ids for o in outs] == refs


@pytest.mark.skipif(not packing_supported(torch.float32), reason="no oneDNN weight packing here")
def test_without_the_panel_kernel_tuning_and_the_engine_use_the_others(monkeypatch):
    """A CPU without AVX-512 (or a compiler without the intrinsics): no panel timings, no panel routes, no panel
    op in the compiled graph, and the engine's tokens unchanged."""
    import llmlab.kernels.cpu_linear as cl

    monkeypatch.setattr(cl, "panel_supported", lambda *a: False)
    plain = tiny_model()
    prompts = [[5, 17, 42, 9], list(range(20, 45))]
    refs = model_greedy(plain, prompts, 8)
    llm = LLM(copy.deepcopy(plain), block_size=4, max_num_seqs=8)
    layers = packed_layers(llm.model)
    assert layers and all({k for _, k in m.routes} <= {"f_linear", "packed", "skinny"} for m in layers)
    assert all(m.prepare_for_compile() is False and m.traced == "f_linear" for m in layers)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8))
    assert [o.outputs[0].token_ids for o in outs] == refs
    assert all("panel" not in m._copies for m in layers)


@pytest.mark.skipif(not panel_supported(torch.bfloat16), reason="no bf16 panel kernel here")
def test_bf16_without_onednn_packing_runs_on_llmlabs_kernels(monkeypatch):
    """An AVX2-only CPU (Zen 3): oneDNN packs no bf16 and torch's bf16 matmul crawls (1 GFLOP/s), so the engine
    must still swap in PackedLinear for a bf16 model, time only F.linear, the panel and the 1-4 row kernel, and
    never route to oneDNN; every route computes F.linear's result."""
    import llmlab.kernels.cpu_linear as cl

    monkeypatch.setattr(cl, "packing_supported", lambda dtype: dtype == torch.float32)
    assert torch.bfloat16 in cl.kernel_dtypes()
    plain = tiny_model().to(torch.bfloat16)
    llm = LLM(copy.deepcopy(plain), block_size=4, max_num_seqs=4)
    layers = packed_layers(llm.model)
    assert len(layers) == 2 * 4 + 1
    table = llm.engine.runner.packing_report
    assert table and all("packed_ms" not in t and "panel_ms" in t for t in table)
    assert all({k for _, k in m.routes} <= {"f_linear", "panel", "skinny"} and "packed" not in m._copies
               for m in layers)
    lin = layers[0]
    lin.routes = ((ROWS_ANY, "packed"),)  # a stale route to oneDNN: F.linear instead, never a crash
    assert lin.kernel_for(3) == "f_linear"
    x = torch.randn(5, lin.in_features, dtype=torch.bfloat16)
    for route in ("panel", "skinny", "f_linear"):
        lin.routes = ((4, route), (ROWS_ANY, "panel"))
        with torch.inference_mode():
            check(lin(x[:3]), x[:3], lin.weight, lin.bias)
            check(lin(x), x, lin.weight, lin.bias)


@needs_panel
def test_route_choices_follow_new_routes_and_dtypes():
    """kernel_for remembers its answer per (rows, dtype): setting routes (tune_packing, a user) forgets them, and
    a dtype change asks again; a wrong input width gets F.linear's error, never the C kernel's out-of-bounds read."""
    torch.manual_seed(0)
    lin = PackedLinear.from_linear(nn.Linear(64, 40, bias=False), (torch.float32, torch.bfloat16))
    assert lin._parameters["bias"] is None and list(lin.state_dict()) == ["weight"]  # as nn.Linear(bias=False)
    lin.routes = ((ROWS_ANY, "panel"),)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        check(lin(x), x, lin.weight, None)
        assert lin.kernel_for(3) == "panel" and set(lin._copies) == {"panel"}
        lin.routes = ((ROWS_ANY, "f_linear"),)
        lin.drop_copies()
        check(lin(x), x, lin.weight, None)
        assert lin.kernel_for(3) == "f_linear" and not lin._copies  # the remembered "panel" was dropped
        with pytest.raises(RuntimeError):
            lin(torch.randn(3, 66))
    lin.routes = ((ROWS_ANY, "panel"),)
    lin.to(torch.bfloat16)
    with torch.inference_mode():
        check(lin(x.bfloat16()), x.bfloat16(), lin.weight, None)
    assert lin.kernel_for(3) == "panel" and lin._copies["panel"][1].dtype == torch.bfloat16
