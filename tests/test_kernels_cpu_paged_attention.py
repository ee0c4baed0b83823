"""The C paged decode kernel for the CPU (kernels/cpu_paged_attention.py) against the PyTorch reference, under
torch.compile, on bad input, and as the engine's CPU default (and its fallback without a compiler)."""

from __future__ import annotations

import pytest
import torch

from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, SamplingParams
from llmlab.errors import ConfigError
from llmlab.kernels import cbuild
from llmlab.kernels import cpu_paged_attention as cpu_paged
from llmlab.kernels.paged_attention import paged_decode_reference

needs_kernel = pytest.mark.skipif(not cpu_paged.available(), reason=f"no CPU kernel: {cpu_paged.build_error()}")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def case(dtype, H, Hkv, hd, block_size, lens, num_blocks=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = -(-max(lens) // block_size) + 1  # one spare column: rows need not fill their table
    num_blocks = max(num_blocks, 2 * width)
    k, v = (torch.randn(num_blocks * block_size, Hkv, hd, generator=g).to(dtype) for _ in range(2))
    q = torch.randn(len(lens), H, hd, generator=g).to(dtype)
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:width] for _ in lens])  # shuffled pages
    return q, k, v, tables, torch.tensor(lens)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("H,Hkv,hd,block_size,window", [
    (9, 3, 64, 16, None),   # SmolLM2: GQA 3 heads per KV head, the specialised hd=64 path
    (8, 1, 128, 4, None),   # MQA, hd=128 path
    (4, 4, 32, 1, None),    # MHA, generic hd, one position per block
    (6, 2, 80, 8, 5),       # sliding window, generic hd
    (10, 2, 64, 8, 5),      # 5 heads per KV head: the AVX-512 item one query head at a time, sliding window
    (16, 4, 128, 16, None), # 4 heads per KV head at hd=128: two passes of two query heads
], ids=["gqa-64", "mqa-128", "mha-32-bs1", "window-80", "gqa5-64-window", "gqa4-128"])
def test_matches_reference(dtype, H, Hkv, hd, block_size, window):
    if dtype == torch.float16 and not cpu_paged.supports(dtype):
        pytest.skip("this compiler has no _Float16")
    q, k, v, tables, lens = case(dtype, H, Hkv, hd, block_size, [1, 7, 33, block_size * 3, 50])
    got = cpu_paged.paged_decode_cpu(q, k, v, tables, lens, block_size=block_size, window=window)
    want = paged_decode_reference(q, k, v, tables, lens, block_size=block_size, window=window)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


@needs_kernel
def test_scale_threads_and_int32_tables():
    q, k, v, tables, lens = case(torch.float32, 9, 3, 64, 16, [100, 3, 64, 17])
    want = paged_decode_reference(q, k, v, tables, lens, block_size=16, scale=0.3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_paged.paged_decode_cpu(q, k, v, tables.int(), lens.int(), block_size=16, scale=0.3)
        torch.set_num_threads(2)
        two = cpu_paged.paged_decode_cpu(q, k, v, tables, lens, block_size=16, scale=0.3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # 12 (row, KV head) items >= threads: each is one thread's, no order changes
    torch.testing.assert_close(two, want, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [2, 3, 8])
# one pass of 4 query heads; four passes of two; SmolLM2's 3 KV heads, which the AVX2 item takes together (one
# work item per row) once there are as many rows as threads
@pytest.mark.parametrize("H,Hkv,hd", [(4, 1, 64), (8, 1, 128), (9, 3, 64)])
def test_small_batches_split_their_keys_over_the_threads(dtype, threads, H, Hkv, hd):
    # fewer work items than 4 a thread: each item's keys are split into parts (>= 128 keys each) and combined
    q, k, v, tables, lens = case(dtype, H, Hkv, hd, 16, [1000, 300, 1], num_blocks=160)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for rows, window in ((slice(0, 1), None), (slice(0, 2), None), (slice(0, 1), 700), (slice(1, 3), None)):
            got = cpu_paged.paged_decode_cpu(q[rows], k, v, tables[rows], lens[rows], block_size=16, window=window)
            want = paged_decode_reference(q[rows], k, v, tables[rows], lens[rows], block_size=16, window=window)
            torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])
    finally:
        torch.set_num_threads(saved)


@needs_kernel
def test_inside_torch_compile():
    q, k, v, tables, lens = case(torch.bfloat16, 9, 3, 64, 16, [20, 45])

    def step(q, k, v, tables, lens):
        return cpu_paged.paged_decode_cpu(q * 2, k, v, tables, lens, block_size=16) + 1

    compiled = torch.compile(step, fullgraph=True)  # the kernel is an opaque custom op in the graph
    torch.testing.assert_close(compiled(q, k, v, tables, lens), step(q, k, v, tables, lens))


@needs_kernel
def test_bad_input_is_refused_before_reading_memory():
    q, k, v, tables, lens = case(torch.float32, 4, 2, 32, 4, [5, 9])
    with pytest.raises(ValueError, match="longer than its block table"):
        cpu_paged.paged_decode_cpu(q, k, v, tables[:, :1], lens, block_size=4)
    with pytest.raises(ValueError, match="beyond the 40 blocks"):
        cpu_paged.paged_decode_cpu(q, k, v, tables + 40, lens, block_size=4)
    with pytest.raises(ValueError, match="must be contiguous"):
        cpu_paged.paged_decode_cpu(q, k.double(), v, tables, lens, block_size=4)


def clear_kernel_caches() -> None:
    """Forget every loaded C kernel, so the next use builds or loads it again under the current settings: an engine
    built without a compiler leaves every kernel module "unavailable" until this runs (later tests would quietly
    take the slower paths)."""
    from llmlab.kernels import cpu_argmax, cpu_linear, cpu_norm, cpu_panel_linear, cpu_rope_cache, cpu_swiglu

    cbuild.load.cache_clear()
    for cached in (cpu_paged._functions, cpu_argmax._function, cpu_linear._skinny_functions, cpu_norm._functions,
                   cpu_norm._add_functions, cpu_panel_linear._functions, cpu_rope_cache._functions,
                   cpu_swiglu._functions):
        cached.cache_clear()


def test_build_cache_and_missing_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    clear = clear_kernel_caches
    clear()
    try:
        if cbuild.compiler() is not None:
            assert cpu_paged.available() and cpu_paged.build_error() is None
            built = list((tmp_path / "kernels").glob("cpu_paged_attention-*.so"))
            assert len(built) == 1 and not list((tmp_path / "kernels").glob("*.tmp*"))  # renamed into place
        clear()
        monkeypatch.setattr(cbuild, "compiler", lambda: None)
        assert not cpu_paged.available() and "no C compiler" in cpu_paged.build_error()
        with pytest.raises(ConfigError, match="paged_kernel='cpu' is unavailable: no C compiler"):
            LLM(tiny(), paged_kernel="cpu")
        with pytest.warns(UserWarning, match="falls back to the slower gather path: no C compiler"):
            llm = LLM(tiny())  # auto: still serves, through the gather path
        assert llm.engine.runner.decode_kernel == ""
    finally:
        monkeypatch.undo()
        clear()


def test_unwritable_cache_is_reported_not_raised(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "file"))
    clear_kernel_caches()
    try:
        if cbuild.compiler() is None:
            pytest.skip("no C compiler")
        built = cbuild.load("cpu_paged_attention.c")
        assert built.lib is None and "set $LLMLAB_CACHE to a writable directory" in built.error
    finally:
        monkeypatch.undo()
        clear_kernel_caches()


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(model_type="llama", vocab_size=97, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=6,
               num_kv_heads=2, max_position_embeddings=128)
    return Transformer(ModelConfig(**{**cfg, **kw})).eval()


@needs_kernel
@pytest.mark.parametrize("kw", [{}, {"model_type": "mistral", "sliding_window": 6}], ids=["llama-gqa", "mistral-window"])
def test_engine_default_on_cpu_is_greedy_identical_to_gather(kw):
    prompts = [[5, 17, 42], list(range(20, 41)), [60, 61, 62, 63, 64, 65, 66, 67]]
    params = SamplingParams(temperature=0, max_tokens=12)
    llm = LLM(tiny(**kw), block_size=4, max_num_batched_tokens=16)
    assert llm.engine.runner.decode_kernel == "cpu"
    gather = LLM(tiny(**kw), block_size=4, max_num_batched_tokens=16, paged_kernel="gather")
    assert gather.engine.runner.decode_kernel == ""
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert got == [o.outputs[0].token_ids for o in gather.generate(prompts, params)]
    model = tiny(**kw)
    assert got == [model.generate(torch.tensor([p]), max_new_tokens=12)[0, len(p):].tolist() for p in prompts]
