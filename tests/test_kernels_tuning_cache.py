"""Kernel timings kept between starts (kernels/tuning_cache.py) and read back by tune_packing / the engine."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import llmlab.kernels.cpu_linear as cl
from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, SamplingParams
from llmlab.kernels import tuning_cache
from llmlab.kernels.cpu_linear import ROWS_ANY, kernel_dtypes, pack_linears, packed_layers, tune_packing

needs_kernels = pytest.mark.skipif(torch.float32 not in kernel_dtypes(), reason="no CPU linear kernel to tune here")


def tiny_model(intermediate: int = 512) -> Transformer:
    cfg = ModelConfig(model_type="llama", vocab_size=300, hidden_size=256, intermediate_size=intermediate,
                      num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def packed(intermediate: int = 512) -> Transformer:
    m = tiny_model(intermediate)
    assert pack_linears(m) > 0
    return m


def no_measuring(monkeypatch) -> None:
    def fail(*a, **k):
        raise AssertionError("timed again: the cached table was not read back")

    monkeypatch.setattr(cl, "_measure", fail)


def test_entries_round_trip_and_miss_on_other_fields(monkeypatch, _own_tuning_cache):
    fields = {"cpu": "x", "rows": [1, 2]}
    assert tuning_cache.load("k", fields) is None
    path = tuning_cache.save("k", fields, [{"rows": 1}])
    assert path.parent == _own_tuning_cache and json.loads(path.read_text())["fields"] == fields
    assert tuning_cache.load("k", fields) == [{"rows": 1}]
    assert tuning_cache.load("k", {**fields, "rows": [1]}) is None and tuning_cache.load("other", fields) is None
    monkeypatch.setenv(tuning_cache.RETUNE_ENV, "1")
    assert tuning_cache.load("k", fields) is None  # re-time on request
    monkeypatch.setenv(tuning_cache.RETUNE_ENV, "0")
    assert tuning_cache.load("k", fields) == [{"rows": 1}]
    path.write_text("{not json")
    assert tuning_cache.load("k", fields) is None  # a damaged entry is absent, not an error
    path.write_text(json.dumps({"kind": "k", "fields": {"cpu": "y"}, "value": 1}))
    assert tuning_cache.load("k", fields) is None  # an entry for other fields under this name (edited by hand)


def test_the_directory_follows_the_environment_into_subprocesses(monkeypatch, _own_tuning_cache, tmp_path):
    """$LLMLAB_TUNING_DIR names the directory (the suite's own per test, inherited by the CLI commands tests run in
    subprocesses, which used to leave their timings in the user's ~/.cache/llmlab/tuning); unset, it is
    $LLMLAB_CACHE/tuning."""
    import subprocess
    import sys

    code = "from llmlab.kernels import tuning_cache; print(tuning_cache.directory())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(_own_tuning_cache) == str(tuning_cache.directory())
    monkeypatch.delenv(tuning_cache.DIR_ENV)
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    assert tuning_cache.directory() == tmp_path / "tuning"


def test_an_unwritable_cache_warns_and_leaves_nothing(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(tuning_cache.DIR_ENV, str(blocker / "tuning"))  # under a file: mkdir fails
    with pytest.warns(UserWarning, match=r"could not keep the kernel timings.*set \$LLMLAB_TUNING_DIR to a writable"):
        assert tuning_cache.save("k", {"a": 1}, 1) is None
    monkeypatch.delenv(tuning_cache.DIR_ENV)
    monkeypatch.setenv("LLMLAB_CACHE", str(blocker))
    with pytest.warns(UserWarning, match=r"could not keep the kernel timings.*set \$LLMLAB_CACHE to a writable"):
        assert tuning_cache.save("k", {"a": 1}, 1) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@needs_kernels
def test_tune_packing_reads_back_the_table_it_kept(monkeypatch, _own_tuning_cache, capsys):
    import llmlab.kernels.cpu_linear as cpu_linear

    size = sum(m.weight.nbytes for m in packed_layers(packed()))
    monkeypatch.setattr(cpu_linear, "ANNOUNCE_BYTES", size)
    tune_packing(packed(), rows=(1, 2), repeats=1)  # not the engine's (no cache): nothing said
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cpu_linear, "ANNOUNCE_BYTES", size + 1)  # a smaller model than that: quick, nothing said
    tune_packing(packed(), rows=(1, 8), repeats=1, cache=True)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cpu_linear, "ANNOUNCE_BYTES", size)
    first = packed()
    table = tune_packing(first, rows=(1, 2), repeats=1, cache=True)
    assert len(list(_own_tuning_cache.iterdir())) == 2
    err = capsys.readouterr().err  # the wait of a first start is said, with how long it took
    assert "timing the CPU matmul kernels at 2 row counts" in err and "once per machine" in err and "timed in" in err
    routes = {m.routes for m in packed_layers(first)}
    no_measuring(monkeypatch)
    second = packed()
    assert tune_packing(second, rows=(1, 2), repeats=1, cache=True) == table
    assert capsys.readouterr().err == ""  # read back: nothing to say
    assert {m.routes for m in packed_layers(second)} == routes
    ids = torch.randint(0, 300, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(second(ids), tiny_model()(ids), atol=1e-4, rtol=1e-4)
    # Anything the timings depend on is part of the key: each of these would be timed again.
    threads = torch.get_num_threads()
    for change in ("rows", "shapes", "threads", "retune", "dtype"):
        m, rows = packed(), (1, 2)
        if change == "rows":
            rows = (1, 4)
        elif change == "shapes":
            m = packed(intermediate=768)
        elif change == "threads":
            torch.set_num_threads(threads + 1)
        elif change == "retune":
            monkeypatch.setenv(tuning_cache.RETUNE_ENV, "1")
        elif torch.bfloat16 in kernel_dtypes():
            m = packed().to(torch.bfloat16)
        else:
            continue
        try:
            with pytest.raises(AssertionError, match="timed again"):
                tune_packing(m, rows=rows, repeats=1, cache=True)
        finally:
            torch.set_num_threads(threads)
            monkeypatch.delenv(tuning_cache.RETUNE_ENV, raising=False)
    assert tune_packing(packed(), rows=(1, 2), repeats=1, cache=True) == table  # and back to the kept one


@needs_kernels
def test_a_table_read_back_routes_and_packs_as_a_measurement_would(monkeypatch):
    """The cached path holds exactly the copies its routes use (packed now, not in the first step), as the
    measured path does; a damaged or mismatched table is measured again."""
    m = packed()
    layers = packed_layers(m)
    dtype = layers[0].weight.dtype
    kernels = {"skinny": cl.skinny_supported(dtype), "packed": cl.packing_supported(dtype),
               "panel": all(cl.panel_supported(dtype, x.in_features) for x in layers)}
    fields = cl._tuning_fields(layers, (1, 16), 1, kernels)
    runs = [k for k in ("panel", "packed") if kernels[k]] + ["f_linear"]
    for winner in runs:
        table = [{"rows": r, **{f"{k}_ms": (1.0 if k == winner else 2.0) for k in runs}} for r in (1, 16)]
        tuning_cache.save("cpu-linear", fields, table)
        with monkeypatch.context() as mp:
            no_measuring(mp)
            assert tune_packing(m, rows=(1, 16), repeats=1, cache=True) == table
        assert {x.routes for x in layers} == {((ROWS_ANY, winner),)}
        assert all(set(x._copies) == ({winner} - {"f_linear"}) for x in layers), winner
    for bad in ([{"rows": 1, "f_linear_ms": 1.0}], [{"rows": 1, "f_linear_ms": 1.0}, {"rows": 16, "mystery_ms": 1}],
                [{"rows": 1, "f_linear_ms": 1.0}, {"rows": 16, "f_linear_ms": 1.0, "mystery_ms": 0.5}],
                [{"rows": 1, "skinny_ms": 1.0}, {"rows": 16, "skinny_ms": 1.0}], {"rows": 1}):
        tuning_cache.save("cpu-linear", fields, bad)
        with monkeypatch.context() as mp:
            calls = []
            mp.setattr(cl, "_measure", lambda *a, calls=calls: calls.append(1) or [
                {"rows": 1, "f_linear_ms": 1.0}, {"rows": 16, "f_linear_ms": 1.0}])
            tune_packing(m, rows=(1, 16), repeats=1, cache=True)
            assert calls == [1], bad
    # a given timer is a test's fake: never read back, never kept
    kept = [{"rows": r, **{f"{k}_ms": (1.0 if k == runs[0] else 2.0) for k in runs}} for r in (1, 16)]
    path = tuning_cache.save("cpu-linear", fields, kept)
    before = path.read_text()
    tune_packing(m, rows=(1, 16), repeats=1, cache=True, timer=lambda layers, r, k: 1.0 if k == "f_linear" else 2.0)
    assert {x.routes for x in layers} == {((ROWS_ANY, "f_linear"),)}
    assert path.read_text() == before and len(list(path.parent.iterdir())) == 1
    with pytest.raises(ValueError, match="at least one row count"):
        tune_packing(m, rows=(), cache=True)


@needs_kernels
def test_the_second_engine_start_reads_the_first_ones_timings(monkeypatch):
    model = tiny_model()
    params = SamplingParams(temperature=0, max_tokens=6)
    first = LLM(copy.deepcopy(model), block_size=4, max_num_seqs=4)
    want = first.generate([[1, 2, 3]], params)[0].outputs[0].token_ids
    report = first.engine.runner.packing_report
    with monkeypatch.context() as mp:
        no_measuring(mp)
        second = LLM(copy.deepcopy(model), block_size=4, max_num_seqs=4)
        assert second.engine.runner.packing_report == report
        assert second.generate([[1, 2, 3]], params)[0].outputs[0].token_ids == want
        with pytest.raises(AssertionError, match="timed again"):
            LLM(copy.deepcopy(model), block_size=4, max_num_seqs=8)  # other decode batch sizes: timed for them
    eight = LLM(copy.deepcopy(model), block_size=4, max_num_seqs=8).engine.runner.packing_report
    with monkeypatch.context() as mp:
        no_measuring(mp)  # each set of batch sizes keeps its own entry: neither start times again
        assert LLM(copy.deepcopy(model), block_size=4, max_num_seqs=4).engine.runner.packing_report == report
        assert LLM(copy.deepcopy(model), block_size=4, max_num_seqs=8).engine.runner.packing_report == eight
