"""Programmatic dependent launch in the fused decode chain (kernels/pdl.py): the PDL variants of the kernels compute
bitwise what the plain ones do (Triton's interpreter has no grid-dependency instructions: no-ops stand in), `tune`
keeps PDL only when it is faster and the logits are unchanged, and the variants compile for sm_90 with the wait
after the first weight load and before any read of the kernel before's output."""

from __future__ import annotations

import pytest
import torch
from test_kernels_cuda_decode import DEVICE, needs_kernel, random_model

from llmlab.kernels import cuda_decode as cd
from llmlab.kernels import paged_attention as pa
from llmlab.kernels import pdl
from llmlab.model.cache import PagedKVCache


@pytest.fixture
def gdc_no_ops(monkeypatch):
    """On CPU, the interpreter runs kernels as Python: the grid-dependency calls become no-ops (on a card, real)."""
    if DEVICE.type == "cpu":
        from triton.language.extra import cuda as tl_cuda

        monkeypatch.setattr(tl_cuda, "gdc_wait", lambda *a, **k: None)
        monkeypatch.setattr(tl_cuda, "gdc_launch_dependents", lambda *a, **k: None)


def test_supported_only_on_a_card_that_has_it():
    assert not pdl.supported(torch.device("cpu"))
    assert pdl.launch(False) == {} and pdl.launch(True) == {"launch_pdl": True}


def _step(fused, token=5):
    one = torch.ones(1, dtype=torch.long, device=DEVICE)
    tables = torch.tensor([[0, 1]], device=DEVICE)
    logits = fused(one * token, one * 4, one * 4, tables, one * 5).clone()
    return logits, fused.kv.k[1][4].clone(), fused.kv.v[1][4].clone()


@needs_kernel
@pytest.mark.parametrize("dtype,overrides", [(torch.float32, dict(hidden_size=72, intermediate_size=100, head_dim=16)),
                                              (torch.bfloat16, dict(model_type="qwen3", qk_norm=True, head_dim=32))])
def test_pdl_variants_compute_the_same_step(gdc_no_ops, dtype, overrides):
    """The PDL kernels only move the first weight tile's load ahead of the wait and add the two instructions: the
    same logits and K/V, bit for bit (ragged sizes take the masked loads)."""
    model = random_model(dtype, **overrides)
    outs = []
    for on in (False, True):
        kv = PagedKVCache.allocate(model.cfg, 4, 4, dtype=dtype, device=DEVICE)
        fused = cd.FusedDecode(model, kv)
        fused.pdl = on
        for token in (3, 9, 5):  # context positions 0-3 hold earlier steps' K/V, then the step at position 4
            _step(fused, token)
        outs.append(_step(fused))
    assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))


@needs_kernel
def test_pdl_split_attention_and_merge_match(gdc_no_ops):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 16, generator=g).to(DEVICE)
    k, v = (torch.randn(40, 2, 16, generator=g).to(DEVICE) for _ in range(2))
    tables = torch.tensor([[3, 1, 7, 5], [0, 2, 4, 6]], device=DEVICE)
    lens = torch.tensor([13, 19], device=DEVICE)
    plain = pa.paged_decode(q, k, v, tables, lens, block_size=5, block_n=16, num_splits=2)
    chained = pa.paged_decode(q, k, v, tables, lens, block_size=5, block_n=16, num_splits=2, pdl=True)
    assert torch.equal(plain, chained)
    torch.testing.assert_close(chained, pa.paged_decode_reference(q, k, v, tables, lens, block_size=5))


@needs_kernel
@pytest.mark.parametrize("case", ["faster", "slower", "different logits", "cannot launch"])
def test_tune_keeps_pdl_only_if_faster_and_identical(gdc_no_ops, case):
    model = random_model(torch.float32)
    fused = cd.FusedDecode(model, PagedKVCache.allocate(model.cfg, 4, 4, device=DEVICE))
    tiles = sum(len(c) for c in cd.CONFIGS.values())
    ran = []

    def timer(calls):
        ran.append(fused.pdl)
        if len(ran) <= tiles:  # the tile timings: not run (the interpreter is slow; test_kernels_cuda_decode runs them)
            return 1.0
        if fused.pdl and case == "cannot launch":
            raise RuntimeError("no PDL here")
        calls()
        if fused.pdl and case == "different logits":
            fused.logits[0, 0] += 1  # as a missing wait would show
        return {"faster": 5.0, "slower": 20.0, "different logits": 5.0}[case] if fused.pdl else 10.0

    report = fused.tune(timer=timer, repeats=1, pdl=True)
    assert ran == [False] * (tiles + 1) + [True]  # tiles without PDL, then the whole step off and on
    if case == "cannot launch":
        assert report["pdl"] == {"off_us": 10.0, "error": "RuntimeError: no PDL here", "chosen": False}
        assert fused.pdl is False
        return
    assert report["pdl"] == {"off_us": 10.0, "on_us": 20.0 if case == "slower" else 5.0,
                             "same_logits": case != "different logits", "chosen": case == "faster"}
    assert fused.pdl is (case == "faster")
    assert "pdl" not in fused.tune(timer=lambda calls: 1.0, repeats=1, pdl=False)


def test_pdl_variants_compile_for_hopper_with_the_wait_after_the_first_weights(tmp_path):
    """Compiled as a card launches them (no interpreter) to sm_90: every kernel of the chain has both instructions,
    each GEMV-shaped kernel issues its first evict-first weight load before the wait and reads nothing else before
    it; the plain variant has neither instruction."""
    import importlib.util
    import os
    import subprocess
    import sys

    if cd.triton is None or importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("no Triton with an NVIDIA backend")
    script = """
import torch
from llmlab.kernels import cuda_decode, gemv, paged_attention
ptx = {"gemv": gemv.compile_for_cuda(90, torch.bfloat16, block_n=8, split=True, pdl=True)["ptx"]}
for name, asm in cuda_decode.compile_for_cuda(90, torch.bfloat16, pdl=True).items():
    ptx[name] = asm["ptx"]
asm = paged_attention.compile_for_cuda(90, torch.bfloat16, 4, 64, num_splits=4, pdl=True)
ptx["attention"], ptx["merge"] = asm["ptx"], asm["merge"]["ptx"]
for name, text in ptx.items():
    body = text[text.index(".entry"):]
    wait, trigger = body.find("griddepcontrol.wait"), body.find("griddepcontrol.launch_dependents")
    assert 0 <= trigger < wait, (name, trigger, wait)
    if name in ("gemv", "qkv", "swiglu", "head"):
        loads = [i for i in range(len(body)) if body.startswith("ld.global", i)]
        first_weights = body.find("ld.global.L1::evict_first")
        assert 0 <= first_weights < wait, name
        assert all(body.startswith("ld.global.L1::evict_first", i) for i in loads if i < wait), name
plain = gemv.compile_for_cuda(90, torch.bfloat16, block_n=8, split=True)["ptx"]
assert "griddepcontrol" not in plain
print("checked", len(ptx))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0 and "checked 7" in proc.stdout, proc.stderr[-4000:]


@needs_kernel
def test_tune_pdl_times_the_engines_table_width_and_raises_an_off_failure(gdc_no_ops, monkeypatch):
    """The A/B runs the step with tables as wide as the engine's batch-1 graph (so attention splits and merges as
    captured); a failure with PDL off is the real error (not a KeyError), and the residual is zeroed anyway."""
    model = random_model(torch.float32)
    fused = cd.FusedDecode(model, PagedKVCache.allocate(model.cfg, 8, 4, device=DEVICE))
    widths, real = [], cd._pa.paged_decode
    monkeypatch.setattr(cd._pa, "paged_decode", lambda q, k, v, tables, *a, **kw: widths.append(tables.shape[1])
                        or real(q, k, v, tables, *a, **kw))
    fused._tune_pdl(lambda calls: (calls(), 1.0)[1], 1, torch.zeros(1, dtype=torch.long, device=DEVICE), 8)
    assert set(widths) == {8}

    def broken(calls):
        fused.residual.fill_(3.0)
        raise RuntimeError("the card is gone")

    with pytest.raises(RuntimeError, match="the card is gone"):
        fused.tune(timer=broken, repeats=1, pdl=True)
    assert not fused.residual.any() and fused.pdl is False
