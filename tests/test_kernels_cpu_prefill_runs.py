"""The C paged decode kernel for the CPU (kernels/cpu_paged_attention.py) on prefill-shaped batches, against the
PyTorch reference. The engine runs a prefill chunk on CPU as one query row per prompt token: row i of a chunk that
starts after c cached tokens has context length c + i + 1 and the same block-table row as the chunk's other rows.
The kernel may compute such a "run" of rows (consecutive context lengths, equal table rows) together; every row
must still match the reference, wherever a run starts, however long it is, whatever rows surround it, and where a
neighbouring row only looks like the run's next one (another table, a gap in the context lengths)."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import pytest
import torch

from llmlab.kernels import cpu_paged_attention as cpu_paged
from llmlab.kernels.paged_attention import paged_decode_reference

needs_kernel = pytest.mark.skipif(not cpu_paged.available(), reason=f"no CPU kernel: {cpu_paged.build_error()}")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
HEADS = [(9, 3, 64), (4, 1, 64), (8, 8, 64), (16, 2, 128), (6, 3, 32)]  # hd=32: no specialised path
HEAD_IDS = ["gqa3-64", "mqa-64", "mha-64", "gqa8-128", "gqa2-32"]


def skip_unsupported(dtype: torch.dtype) -> None:
    if dtype == torch.float16 and not cpu_paged.supports(dtype):
        pytest.skip("this compiler has no _Float16")


@contextlib.contextmanager
def num_threads(n: int):
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(saved)


def batch(dtype, H, Hkv, hd, block_size, segments, seed=0, spare_blocks=6):
    """q, k, v, tables, lens for `segments`, each (sequence, start, rows): `rows` query rows of `sequence` with
    context lengths start + 1 .. start + rows (a prefill chunk after `start` cached tokens; a decode row is
    (sequence, ctx - 1, 1)). Each sequence owns distinct blocks scattered over the pool, and all its rows carry the
    same table row: its blocks, then (one spare column at least) random blocks that no row reaches. bf16 and fp16
    get the same values (randn rounded to bf16, flushed to 0 below fp16's normal range: exact in both)."""
    g = torch.Generator().manual_seed(seed)
    longest: dict[str, int] = {}
    for seq, start, rows in segments:
        longest[seq] = max(longest.get(seq, 0), start + rows)
    need = {seq: -(-n // block_size) for seq, n in longest.items()}
    width = max(need.values()) + 1
    num_blocks = sum(need.values()) + spare_blocks
    order = torch.randperm(num_blocks, generator=g)
    table, used = {}, 0
    for seq in sorted(longest):
        pad = torch.randint(num_blocks, (width - need[seq],), generator=g)
        table[seq] = torch.cat([order[used:used + need[seq]], pad])
        used += need[seq]

    def randn(*shape):
        x = torch.randn(*shape, generator=g)
        if dtype != torch.float32:
            x = x.bfloat16().float()
            x[x.abs() < 2**-14] = 0
        return x.to(dtype)

    k, v = randn(num_blocks * block_size, Hkv, hd), randn(num_blocks * block_size, Hkv, hd)
    q = randn(sum(rows for _, _, rows in segments), H, hd)
    tables = torch.stack([table[seq] for seq, _, rows in segments for _ in range(rows)])
    lens = torch.tensor([start + i + 1 for _, start, rows in segments for i in range(rows)])
    return q, k, v, tables, lens


def reference(q, k, v, tables, lens, block_size, window=0, scale=None):
    """paged_decode_reference on q, k, v's values in fp32, as an fp32 tensor: cast to q's dtype, this is what it
    returns for q's dtype (it computes in fp32). Run on one thread: on a small VM its small ops wait ~8 ms each at a
    barrier on 2+ threads, which would be most of this file's time."""
    with num_threads(1):
        return paged_decode_reference(q.float(), k.float(), v.float(), tables, lens, block_size=block_size,
                                      window=window or None, scale=scale)


@functools.lru_cache(maxsize=32)
def cached_reference(H, Hkv, hd, block_size, segments, seed, window, scale, half):
    """One batch's reference, shared by the thread counts of a test and by bf16 and fp16 (`half`: same values)."""
    q, k, v, tables, lens = batch(torch.bfloat16 if half else torch.float32, H, Hkv, hd, block_size, segments, seed)
    return reference(q, k, v, tables, lens, block_size, window, scale)


def check(q, k, v, tables, lens, block_size, window=0, scale=None, want=None):
    """The kernel against the reference (fp32, `want` if given) on every row; window 0: none (the kernel's way)."""
    got = cpu_paged.paged_decode_cpu(q, k, v, tables, lens, block_size=block_size, window=window, scale=scale)
    want = reference(q, k, v, tables, lens, block_size, window, scale) if want is None else want
    assert got.dtype == q.dtype and got.shape == q.shape
    tol = TOL[q.dtype]
    torch.testing.assert_close(got.float(), want.to(q.dtype).float(), atol=tol, rtol=tol,
                               msg=lambda m: f"window={window} scale={scale} lens={lens.tolist()}: {m}")


def check_batch(dtype, H, Hkv, hd, block_size, segments, seed=0, window=0, scale=None):
    want = cached_reference(H, Hkv, hd, block_size, segments, seed, window, scale, dtype != torch.float32)
    check(*batch(dtype, H, Hkv, hd, block_size, segments, seed), block_size, window, scale, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_the_fp32_reference_is_the_half_precision_reference(dtype):
    # what lets bf16 and fp16 share one reference (cached_reference); no kernel needed
    segments = (("A", 5, 17), ("d", 30, 1))
    q, k, v, tables, lens = batch(dtype, 9, 3, 64, 4, segments, seed=3)
    assert torch.equal(k.float(), batch(torch.bfloat16, 9, 3, 64, 4, segments, seed=3)[1].float())
    for window, scale in ((0, None), (5, 0.3)):
        want = paged_decode_reference(q, k, v, tables, lens, block_size=4, window=window or None, scale=scale)
        assert torch.equal(want, reference(q, k, v, tables, lens, 4, window, scale).to(dtype))


@needs_kernel
@DTYPES
@pytest.mark.parametrize("H,Hkv,hd", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("block_size", [16, 4], ids=["bs16", "bs4"])
@pytest.mark.parametrize("run", [1, 2, 7, 16, 17, 40, 130], ids=lambda n: f"run{n}")
def test_one_run_matches_reference(dtype, H, Hkv, hd, block_size, run):
    # a chunk of `run` prompt tokens alone in the batch, after 0 (a prompt's first chunk) or 5, 16, 33 cached
    # tokens, with no window and windows that cut into the run (5) or reach back into the cached prefix (20)
    skip_unsupported(dtype)
    for start in (0, 5, 16, 33):
        for window in (0, 5, 20):
            check_batch(dtype, H, Hkv, hd, block_size, (("A", start, run),), seed=start, window=window)


# decode rows first, then prefill runs of other sequences (from position 0 and after a cached prefix), a decode row
# between runs, a one-token prompt, a two-token chunk, a long chunk after a short prefix, a decode row last
MIXED = (("d1", 36, 1), ("d2", 0, 1), ("d3", 89, 1), ("A", 0, 40), ("B", 33, 17), ("d4", 16, 1), ("C", 16, 7),
         ("D", 5, 2), ("E", 0, 1), ("F", 5, 130), ("d5", 63, 1))


@needs_kernel
@DTYPES
@pytest.mark.parametrize("threads", [1, 2, 3], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("block_size", [16, 4], ids=["bs16", "bs4"])
@pytest.mark.parametrize("window", [0, 5, 20], ids=lambda n: f"window{n}")
def test_runs_mixed_with_decode_rows(dtype, threads, block_size, window):
    skip_unsupported(dtype)
    with num_threads(threads):
        for seed, (H, Hkv, hd) in enumerate(HEADS):
            for scale in (None, 0.3):
                check_batch(dtype, H, Hkv, hd, block_size, MIXED, seed=seed, window=window, scale=scale)


@needs_kernel
@DTYPES
def test_runs_with_one_position_per_block(dtype):
    skip_unsupported(dtype)
    segments = (("d1", 20, 1), ("A", 0, 17), ("B", 33, 40), ("C", 5, 7))
    for seed, (H, Hkv, hd) in enumerate(HEADS):
        for window in (0, 5, 20):
            check_batch(dtype, H, Hkv, hd, 1, segments, seed=seed, window=window)


def give_other_blocks(tables, rows, columns, seed):
    """Give `rows` (one sequence's rows) other blocks in `columns`: new ones, past every block the tables held."""
    fresh = int(tables.max()) + 1
    g = torch.Generator().manual_seed(seed)
    tables[rows, columns] = fresh + torch.randperm(tables[0, columns].numel(), generator=g)


# Rows ctx 1..10 of sequence A, then rows that continue its context lengths (ctx 11..20) but are not A's next rows:
# another sequence's table (all different; sharing A's first block, as a cached prefix would; differing from A's only
# in the block that holds positions 16..19; differing only in a column no row reaches), or A's own table with a gap
# in the context lengths (ctx 12..21) or starting them again (ctx 1..10).
NEIGHBOURS = ["other-table", "shared-first-block", "differs-in-last-block", "differs-beyond-context", "ctx-gap",
              "ctx-restart"]


@needs_kernel
@DTYPES
@pytest.mark.parametrize("block_size", [16, 4], ids=["bs16", "bs4"])
@pytest.mark.parametrize("case", NEIGHBOURS)
def test_neighbouring_rows_that_only_look_like_a_run_stay_apart(dtype, block_size, case):
    skip_unsupported(dtype)
    segments = {"other-table": (("A", 0, 10), ("B", 10, 10)), "ctx-gap": (("A", 0, 10), ("A", 11, 10)),
                "ctx-restart": (("A", 0, 10), ("A", 0, 10))}.get(case, (("A", 0, 20),))  # else: B's table below
    for seed, (H, Hkv, hd) in enumerate([(9, 3, 64), (16, 2, 128), (6, 3, 32)]):
        q, k, v, tables, lens = batch(dtype, H, Hkv, hd, block_size, segments, seed=seed)
        if len(segments) == 1:  # rows 10..19 become B's: A's table with other blocks in some columns
            last = 19 // block_size  # the column of positions 16..19
            columns = {"shared-first-block": slice(1, None), "differs-in-last-block": slice(last, last + 1),
                       "differs-beyond-context": slice(-1, None)}[case]
            give_other_blocks(tables, slice(10, 20), columns, seed)
            assert torch.equal(tables[0], tables[9]) and torch.equal(tables[10], tables[19])
            assert tables[10, 0] == tables[9, 0] and not torch.equal(tables[9], tables[10])
            extra = max(0, (int(tables.max()) + 1) * block_size - k.shape[0])  # the new blocks' own keys and values
            g = torch.Generator().manual_seed(100 + seed)
            k, v = (torch.cat([t, torch.randn(extra, Hkv, hd, generator=g).to(dtype)]) for t in (k, v))
        for window in (0, 5):
            want = reference(q, k, v, tables, lens, block_size, window)
            for threads in (1, 2, 3):
                with num_threads(threads):
                    check(q, k, v, tables, lens, block_size, window, want=want)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("threads", [2, 3], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("window", [0, 100], ids=["no-window", "window100"])
def test_a_long_chunk_beside_a_decode_row_that_splits_its_keys(dtype, threads, window):
    # the engine's usual mixed step: a long prefill chunk (tiles) and one decode row of 400 keys, which alone is
    # fewer items than threads, so its keys are split into parts whose softmaxes are combined (rows past the tiles)
    with num_threads(threads):
        check_batch(dtype, 9, 3, 64, 16, (("A", 300, 64), ("d", 399, 1), ("B", 0, 9)), seed=7, window=window)


def test_run_tiles_are_built_where_the_cpu_has_avx512():
    """The tile path is what the tests above check on CPUs with AVX-512 (elsewhere every row is an item)."""
    info = Path("/proc/cpuinfo")
    if not cpu_paged.available() or not info.exists() or " avx512f" not in info.read_text():
        pytest.skip("no AVX-512 here (or no kernel): rows are items, which the tests above check")
    assert cpu_paged.run_tiles()
