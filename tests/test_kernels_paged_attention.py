"""The Triton paged decode kernel (kernels/paged_attention.py) against its PyTorch reference and
dense SDPA, and inside the engine. On CPU it runs in Triton's interpreter (conftest sets
TRITON_INTERPRET=1), on CUDA compiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, SamplingParams
from llmlab.errors import ConfigError
from llmlab.kernels import paged_attention as pa

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_kernel = pytest.mark.skipif(not pa.available(DEVICE), reason="needs Triton (CUDA, or >= 3.7 with TRITON_INTERPRET=1)")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def case(dtype, H, Hkv, hd, block_size, lens, num_blocks=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    slots = num_blocks * block_size
    k, v = (torch.randn(slots, Hkv, hd, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    q = torch.randn(len(lens), H, hd, generator=g).to(dtype).to(DEVICE)
    width = -(-max(lens) // block_size)
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:width] for _ in lens]).int().to(DEVICE)
    return q, k, v, tables, torch.tensor(lens, dtype=torch.int32, device=DEVICE)


SHAPES = [  # (H, Hkv, hd, block_size): MHA, GQA 3, MQA; head_dim not a power of two; small and large pages
    (4, 4, 16, 4),
    (6, 2, 40, 16),
    (9, 3, 64, 8),
    (8, 1, 64, 16),
]
LENS = [1, 16, 33, 64, 65, 100]  # one key, exact page and tile multiples, one past them


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", [None, 7])
def test_kernel_matches_reference(dtype, shape, window):
    H, Hkv, hd, bs = shape
    q, k, v, tables, lens = case(dtype, H, Hkv, hd, bs, LENS)
    got = pa.paged_decode(q, k, v, tables, lens, block_size=bs, window=window, block_n=32)
    want = pa.paged_decode_reference(q, k, v, tables, lens, block_size=bs, window=window)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


@needs_kernel
def test_kernel_ignores_table_columns_past_each_context():
    """CUDA graphs of the engine take the full table width and copy only the columns a step uses, so the
    columns past a row's context hold an earlier step's entries: the kernel must never read them."""
    H, Hkv, hd, bs = 6, 2, 16, 4
    q, k, v, tables, lens = case(torch.float32, H, Hkv, hd, bs, [1, 9, 30, 17])
    stale = torch.randint(0, 48, (len(lens), 40), generator=torch.Generator().manual_seed(1)).int().to(DEVICE)
    wide = torch.cat([tables, stale], dim=1)  # in-use columns first, then other (valid) block ids
    for window in (None, 5):
        narrow = pa.paged_decode(q, k, v, tables, lens, block_size=bs, window=window, block_n=16)
        got = pa.paged_decode(q, k, v, wide, lens, block_size=bs, window=window, block_n=16)
        assert torch.equal(got, narrow)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [2, 3, 5])
@pytest.mark.parametrize("window", [None, 7])
def test_split_keys_match_the_reference(dtype, splits, window):
    """Keys cut into parts per row and merged (flash-decoding): rows of 1 key (all parts but one empty), one
    tile, part boundaries mid-page, and longer than splits x tile."""
    H, Hkv, hd, bs = 6, 2, 40, 4
    q, k, v, tables, lens = case(dtype, H, Hkv, hd, bs, [1, 16, 33, 64, 65, 100, 150])
    got = pa.paged_decode(q, k, v, tables, lens, block_size=bs, window=window, block_n=16, num_splits=splits)
    want = pa.paged_decode_reference(q, k, v, tables, lens, block_size=bs, window=window)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])
    one = pa.paged_decode(q, k, v, tables, lens, block_size=bs, window=window, block_n=16, num_splits=1)
    torch.testing.assert_close(got.float(), one.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_auto_splits_fill_the_sms_only_when_batch_and_heads_cannot():
    assert pa.auto_splits(1, 8, 2048, num_sms=132) == 16  # batch-1 Llama-3.2-1B: 8 programs -> 128
    assert pa.auto_splits(4, 8, 2048, num_sms=132) == 4  # 5 parts would fill the SMs: rounded down to 4
    assert pa.auto_splits(16, 8, 2048, num_sms=132) == 1  # 128 programs: already one wave
    assert pa.auto_splits(256, 8, 2048, num_sms=132) == 1
    assert pa.auto_splits(1, 8, 100, num_sms=132) == 2  # never more parts than tiles of 64 keys
    assert pa.auto_splits(1, 8, 150, num_sms=132) == 2  # 3 tiles: 2 parts (a power of two)
    assert pa.auto_splits(1, 8, 2048, num_sms=0) == 1  # no GPU: one pass
    assert pa.auto_splits(1, 1, 1 << 20, num_sms=1000) == pa.MAX_SPLITS


@pytest.mark.parametrize("kv_heads, sms", [(8, 132), (2, 132), (1, 78), (3, 16), (8, 0), (32, 132)])
def test_split_counts_are_every_count_auto_splits_picks(kv_heads, sms):
    """The warm-up compiles `split_counts`: a count outside it would compile mid-run."""
    picked = {pa.auto_splits(b, kv_heads, n, sms) for b in range(1, 300) for n in range(1, 4096, 37)}
    assert picked == set(pa.split_counts(kv_heads, sms))
    assert all(c & (c - 1) == 0 for c in picked)  # powers of two: few variants


@needs_kernel
def test_warm_up_launches_every_split_count(monkeypatch):
    monkeypatch.setattr(pa, "_num_sms", lambda device: 132)  # as on an H100 / H200
    launched = []
    real = pa._launch
    monkeypatch.setattr(pa, "_launch", lambda *a, **k: launched.append(a[-1]) or real(*a, **k))
    k = torch.zeros(3 * 4, 2, 16, device=DEVICE)  # on a card Triton cannot read a CPU tensor
    assert pa.warm_up(k, k.clone(), num_heads=4, block_size=4, scratch_block=2) == [1, 2, 4, 8, 16]
    assert launched == [1, 2, 4, 8, 16]


@needs_kernel
def test_bad_split_count_is_a_clear_error():
    q, k, v, tables, lens = case(torch.float32, 4, 4, 16, 4, [5])
    with pytest.raises(ValueError, match="num_splits must be in"):
        pa.paged_decode(q, k, v, tables, lens, block_size=4, num_splits=0)


@needs_kernel
def test_kernel_under_torch_compile_is_one_opaque_op():
    """Compiled (the engine's compile_decode), the kernel is the custom op llmlab::paged_decode: the split
    count is chosen from concrete shapes at run time, and the result equals the eager call."""
    q, k, v, tables, lens = case(torch.float32, 6, 2, 16, 4, [3, 40, 9])

    def f(q, k, v, tables, lens):
        return pa.paged_decode(q * 1.0, k, v, tables, lens, block_size=4, block_n=16, num_splits=3) + 0.0

    targets = []

    def backend(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes)
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(f, backend=backend, fullgraph=True)(q, k, v, tables, lens)
    assert torch.ops.llmlab.paged_decode.default in targets
    torch.testing.assert_close(got, f(q, k, v, tables, lens))


@pytest.mark.parametrize("window", [None, 5])
def test_reference_is_dense_attention_row_by_row(window):
    H, Hkv, hd, bs = 6, 2, 16, 4
    q, k, v, tables, lens = case(torch.float32, H, Hkv, hd, bs, [1, 9, 30])
    out = pa.paged_decode_reference(q, k, v, tables, lens, block_size=bs, window=window)
    for r, n in enumerate(lens.tolist()):
        pos = torch.arange(n, device=DEVICE)
        if window is not None:
            pos = pos[pos >= n - window]
        slots = tables[r].long()[pos // bs] * bs + pos % bs
        kr = k[slots].transpose(0, 1).repeat_interleave(H // Hkv, 0)  # (H, n, hd)
        vr = v[slots].transpose(0, 1).repeat_interleave(H // Hkv, 0)
        want = F.scaled_dot_product_attention(q[r][:, None], kr, vr)[:, 0]
        torch.testing.assert_close(out[r], want, atol=1e-5, rtol=1e-5)


def tiny(**kw) -> Transformer:
    cfg = dict(model_type="llama", vocab_size=97, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=6,
               num_kv_heads=2, max_position_embeddings=96)
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**cfg, **kw})).to(DEVICE).eval()


def force_splits(monkeypatch, splits: int) -> None:
    """Every launch of the kernel cuts keys into `splits` parts, in short tiles (the interpreter takes 4 keys,
    tl.dot compiled needs 16) so that the engine's short rows span several parts."""
    launch, tile = pa._launch, 16 if DEVICE.type == "cuda" else 4  # _launch(..., window, block_n, splits)
    monkeypatch.setattr(pa, "_launch", lambda *a, **k: launch(*a[:8], tile, splits, **k))


PROMPTS = [[5, 17, 42], list(range(20, 41)), [60, 61, 62, 63, 64, 65, 66, 67]]


@needs_kernel
@pytest.mark.parametrize("kw", [{}, {"model_type": "mistral", "sliding_window": 6}], ids=["llama-gqa", "mistral-window"])
@pytest.mark.parametrize("splits", [None, 3], ids=["auto", "split-3"])
def test_engine_with_the_kernel_is_greedy_identical(kw, splits, monkeypatch):
    if splits is not None:  # as a GPU with more SMs than batch x KV heads would choose
        force_splits(monkeypatch, splits)
    model = tiny(**kw)
    refs = [model.generate(torch.tensor([p], device=DEVICE), max_new_tokens=10)[0, len(p):].tolist() for p in PROMPTS]
    llm = LLM(model, block_size=4, max_num_batched_tokens=16, paged_kernel="triton")
    assert llm.engine.runner.decode_kernel
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10))
    assert [o.outputs[0].token_ids for o in outs] == refs


@needs_kernel
def test_compiled_decode_with_the_kernel_is_greedy_identical(monkeypatch):
    """compile_decode traces the kernel as the opaque op llmlab::paged_decode (here with keys in 2 parts)."""
    force_splits(monkeypatch, 2)
    model = tiny()
    refs = [model.generate(torch.tensor([p], device=DEVICE), max_new_tokens=6)[0, len(p):].tolist() for p in PROMPTS]
    llm = LLM(model, block_size=4, max_num_batched_tokens=16, paged_kernel="triton", compile_decode=True)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6))
    assert [o.outputs[0].token_ids for o in outs] == refs


def test_kernel_choice_errors(monkeypatch):
    with pytest.raises(ConfigError, match="paged_kernel must be"):
        LLM(tiny(), paged_kernel="fast")
    if DEVICE.type == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ConfigError, match="needs Triton and a CUDA device"):
            LLM(tiny(), paged_kernel="triton")
        # auto on CPU: the C kernel (tests/test_kernels_cpu_paged_attention.py), never Triton's interpreter
        assert LLM(tiny()).engine.runner.decode_kernel in ("cpu", "")



def test_kernel_compiles_for_cuda_without_a_gpu(tmp_path):
    """Compile the kernel as CUDA launches it (not the interpreter) down to cubins for Hopper (sm_90)
    and Ampere (sm_80): type, shape and tl.dot errors of the compiled path show up here, with no GPU.
    In a subprocess without TRITON_INTERPRET (conftest sets it here, and Triton reads it at import)."""
    if pa.triton is None:
        pytest.skip("no Triton")
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this Triton has no NVIDIA backend")
    script = """
import torch
from llmlab.kernels.paged_attention import compile_for_cuda
# dtype, G, head_dim, window, ints, scale (fp64: how the kernel is launched inside torch.compile)
cases = [(torch.bfloat16, 3, 64, None, "i64", "fp32"), (torch.bfloat16, 4, 128, 256, "i32", "fp64"),
         (torch.float16, 8, 40, None, "i32", "fp32"), (torch.float32, 1, 64, 64, "i64", "fp64")]
arch = int(sys.argv[1])
for dtype, G, hd, window, ints, scale in cases:
    asm = compile_for_cuda(arch, dtype, G, hd, window=window, index_type=ints, scale_type=scale)
    assert asm["cubin"] and f".target sm_{arch}" in asm["ptx"], (arch, dtype, G, hd)
# split keys (batch-1 decode): the part kernel and the merge kernel
for dtype, G, hd, window, splits in [(torch.bfloat16, 4, 64, None, 16), (torch.float16, 3, 40, 64, 5)]:
    asm = compile_for_cuda(arch, dtype, G, hd, window=window, num_splits=splits)
    assert asm["cubin"] and asm["merge"]["cubin"] and f".target sm_{arch}" in asm["merge"]["ptx"], (dtype, splits)
print("compiled", len(cases) + 2)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = []
    for arch in (90, 80):  # side by side, each compiling for real into a cache of its own
        env["TRITON_CACHE_DIR"] = str(tmp_path / str(arch))
        procs.append(subprocess.Popen([sys.executable, "-c", "import sys\n" + script, str(arch)], env=dict(env),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "compiled 6" in out, err[-4000:]
