"""Every benchmark script runs end to end at a tiny size on the CPU and writes a sane result.

The GPU measurements the open issues need come from these scripts on a borrowed machine with a
30-minute budget; a script that breaks there (an import renamed, an argument dropped) costs the
whole run. These smoke runs catch that here. Results go to a temporary directory
(LLMLAB_BENCH_RESULTS), never over the committed ones in benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(tmp_path: Path, script: str, *args: str, env: dict | None = None) -> str:
    full_env = {**os.environ, "LLMLAB_BENCH_RESULTS": str(tmp_path), **(env or {})}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def result(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_train_benchmark_smoke(tmp_path):
    out = tmp_path / "train.json"
    run(tmp_path, "train.py", "--shape", "tiny", "--device", "cpu", "--batch", "2", "--steps", "2", "--warmup", "1",
        "--out", str(out))
    r = json.loads(out.read_text())
    assert r["llmlab_tokens_per_s"] > 0 and r["transformers_tokens_per_s"] > 0
    assert 0 < r["llmlab_mfu"] < 1 and r["speedup_vs_transformers"] > 0


def test_latency_benchmark_smoke(tmp_path):
    run(tmp_path, "latency.py", "--model", "tiny", "--prompt-len", "16", "--new-tokens", "8", "--repeats", "1",
        "--async-scheduling", "on", "--out", "lat")
    r = result(tmp_path, "lat")
    assert r["greedy_identical"] is True  # same weights, greedy: the engines agree token for token
    # async scheduling asked for: the same engine also runs without it (on CPU its eager steps are not
    # graph-shaped, so none is launched ahead here; tests/test_engine_async.py covers the engine)
    assert r["llmlab"]["async_scheduling"] is True and r["llmlab_waiting_each_step"]["same_tokens_as_llmlab"]
    assert r["llmlab_waiting_each_step"]["async_gain"] > 0
    assert r["llmlab"]["decode_tok_s"] > 0 and r["decode_ratio_vs_transformers"] > 0
    assert r["roofline_tok_s"] > 0 and r["versions"]["torch"]


def test_latency_benchmark_fused_step_smoke(tmp_path):
    """--fused: a second engine with cuda_fused_decode, alternating with the first (on CPU through Triton's
    interpreter): same greedy tokens, its own row."""
    import torch

    from llmlab.kernels import cuda_decode

    if not cuda_decode.available(torch.device("cpu")):  # conftest sets TRITON_INTERPRET=1 on CPU-only machines
        pytest.skip("needs Triton >= 3.7 and TRITON_INTERPRET=1 (on CUDA machines the real benchmark runs)")
    out = run(tmp_path, "latency.py", "--model", "micro", "--prompt-len", "8", "--new-tokens", "3", "--repeats", "1",
              "--skip-hf", "--fused", "--out", "lat", env={"TRITON_INTERPRET": "1"})
    r = result(tmp_path, "lat")["llmlab_fused"]
    assert r["same_tokens_as_llmlab"] is True and r["decode_tok_s"] > 0 and r["vs_llmlab"] >= 0
    assert "llmlab fused" in out


def test_throughput_benchmark_smoke(tmp_path):
    run(tmp_path, "throughput.py", "--model", "tiny", "--num-seqs", "4", "--min-len", "8", "--max-len", "24",
        "--hf", "generate", "--out", "tp")
    r = result(tmp_path, "tp")
    assert r["num_seqs"] == 4 and r["llmlab"]["output_tok_s"] > 0 and r["llmlab"]["preemptions"] >= 0
    assert r["ratio_vs_best_transformers"] > 0


def test_throughput_benchmark_reference_time_limit(tmp_path):
    """A transformers reference stopped by --hf-timeout is recorded as unfinished, and the ratio becomes a bound:
    the same work took it longer than the limit."""
    run(tmp_path, "throughput.py", "--model", "tiny", "--num-seqs", "2", "--min-len", "300", "--max-len", "400",
        "--hf", "generate", "--hf-batch-size", "1", "--hf-timeout", "1", "--out", "tp")
    r = result(tmp_path, "tp")
    assert list(r["transformers"].values()) == ["did not finish within 1 s"]
    assert "ratio_vs_best_transformers" not in r
    assert r["ratio_vs_best_transformers_same_work_at_least"] == pytest.approx(1 / r["llmlab"]["seconds"], rel=0.05)


def test_engine_cpu_benchmark_smoke(tmp_path):
    """The default engine only: the `compiled` variant is the same loop over an engine built with compile_decode
    (its compiles took ~50 of this test's ~65 s; test_engine_decode_paths.py covers that engine's tokens)."""
    run(tmp_path, "engine_cpu.py", "--model", "tiny", "--batches", "1", "3", "--prompt-len", "16", "--new-tokens", "6",
        "--repeats", "1", "--skip-generate-batch", "--variants", "default", "--out", "ecpu")
    res = result(tmp_path, "ecpu")
    runs = res["runs"]
    assert res["random_weights"] is True and [r["batch"] for r in runs] == [1, 3]
    for r in runs:
        assert set(r["llmlab"]) == {"default"}
        assert all(e["greedy_identical_vs_hf"] == 1.0 and e["ratio_vs_hf_generate"] > 0 for e in r["llmlab"].values())
        # nothing beats the physical limit (a little slack: the bandwidth and peak are measured, not datasheet)
        assert r["roofline_tok_s"] > 0 and all(e["of_roofline"] < 1.2 for e in r["llmlab"].values())


def test_cpu_linear_benchmark_smoke(tmp_path):
    run(tmp_path, "cpu_linear.py", "--layers", "1", "--repeats", "1", "--rows", "1", "--out", "lin")
    import torch

    from llmlab.kernels.cpu_linear import packing_supported

    runs = result(tmp_path, "lin")["runs"]
    assert {r["dtype"] for r in runs} == {"float32", "bfloat16"}  # bf16 too where oneDNN cannot pack it (AVX2)
    assert all(r["f_linear_ms"] > 0 and r.get("packed_ms", 1) > 0 for r in runs)
    assert all(("packed_ms" in r) == packing_supported(getattr(torch, r["dtype"])) for r in runs)


def test_estimate_memory_benchmark_smoke(tmp_path):
    run(tmp_path, "estimate_memory.py")
    r = result(tmp_path, "estimate_memory_cpu")
    assert len(r["activations"]) >= 5
    assert 0.9 <= r["llmlab_ratio_min"] <= r["llmlab_ratio_max"] <= 1.1  # the estimator's own claim, re-checked
    assert r["adamw"]["held"] == r["adamw"]["estimate"]


def test_paged_attention_benchmark_smoke(tmp_path):
    import torch

    from llmlab.kernels import paged_attention as pa

    if not pa.available(torch.device("cpu")):  # conftest sets TRITON_INTERPRET=1 on CPU-only machines
        pytest.skip("needs Triton >= 3.7 and TRITON_INTERPRET=1 (on CUDA machines the real benchmark runs)")
    run(tmp_path, "paged_attention.py", "--device", "cpu", "--batches", "1", "3", "--contexts", "200", "--heads", "4",
        "2", "16", "--iters", "1", "--sms", "8", "--out", "pa", env={"TRITON_INTERPRET": "1"})
    r = result(tmp_path, "pa")
    assert "smoke" in r["note"] and len(r["runs"]) == 2
    assert all(x["max_abs_diff"] < 3e-2 for x in r["runs"])  # the kernel agreed with gather + SDPA
    assert [x["splits"] for x in r["runs"]] == [4, 1]  # batch 1: 2 programs of 8 SMs -> keys in 4 parts


def test_paged_attention_benchmark_cpu_kernel_smoke(tmp_path):
    from llmlab.kernels import cpu_paged_attention as cpa

    if not cpa.available():
        pytest.skip(f"no CPU kernel: {cpa.build_error()}")
    run(tmp_path, "paged_attention.py", "--device", "cpu", "--kernel", "cpu", "--batches", "1", "3", "--contexts",
        "40", "--heads", "6", "2", "16", "--iters", "2", "--out", "pa_cpu")
    r = result(tmp_path, "pa_cpu")
    assert r["kernel"] == "cpu" and "note" not in r and len(r["runs"]) == 2
    assert all(x["max_abs_diff"] < 3e-2 and x["kernel_us"] > 0 for x in r["runs"])


def test_engine_host_benchmark_smoke(tmp_path):
    run(tmp_path, "engine_host.py", "--num-seqs", "8", "--max-num-seqs", "3", "--repeats", "1", "--host-only",
        "--async-scheduling", "--out", "host")
    r = result(tmp_path, "host")
    assert r["num_seqs"] == 8 and r["max_num_seqs"] == 3 and r["steps"] > 0 and r["ms_per_step"] > 0
    assert r["host_only"] and r["async_steps"] == r["steps"] - 1  # requests queued: every step after the first
    #                                                               launched ahead, through the replaced replay


def test_gemv_benchmark_shapes_and_cpu_refusal(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from gemv import step_shapes
    finally:
        sys.path.remove(str(BENCH))
    # Llama-3.2-1B: q/k/v fused (32 + 2 x 8 heads of 64), o, gate/up fused, down, the LM head; 2.47 GB a step
    shapes = step_shapes("llama-3.2-1b")
    assert [s[:3] for s in shapes] == [("qkv", 3072, 2048), ("o", 2048, 2048), ("gate_up", 16384, 2048),
                                       ("down", 2048, 8192), ("lm_head", 128256, 2048)]
    assert sum(n * k * 2 * times for _, n, k, times in shapes) == 2_471_493_632
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, str(BENCH / "gemv.py")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode != 0 and "machine with a GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_decode_step_timing_inputs_write_only_the_scratch_block():
    """throughput.py times the captured decode graph of each batch bucket on inputs of its own: those must read
    distinct real blocks and write nothing but the scratch block (on CPU, with replays emulated)."""
    import torch

    from llmlab import LLM, ModelConfig, Transformer
    from llmlab.engine.emulated_graphs import emulate_cuda_graphs

    sys.path.insert(0, str(BENCH))
    try:
        from engine_common import fill_decode_step
    finally:
        sys.path.remove(str(BENCH))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_position_embeddings=128)
    llm = LLM(Transformer(cfg).eval(), max_num_seqs=8, num_blocks=40, block_size=4, cpu_pack_linears=False)
    runner = llm.engine.runner
    assert fill_decode_step(runner, 8, 20) is None  # no graphs captured
    emulate_cuda_graphs(runner)
    for k in runner.kv.k:
        k.normal_()
    before = [k.clone() for k in runner.kv.k]
    graph = fill_decode_step(runner, 8, 20)  # 8 rows x 5 blocks of the 40
    graph.replay()
    assert torch.isfinite(graph.out).all() and graph.out.shape[0] == 8
    real = runner.scratch * runner.block_size  # slots before the scratch block's
    for k, k0 in zip(runner.kv.k, before):  # (slots, KV heads, head dim)
        assert torch.equal(k[:real], k0[:real]) and not torch.equal(k[real:], k0[real:])
    assert fill_decode_step(runner, 8, 41) is None  # 8 x 11 blocks: more than the cache holds


def test_gpu_all_commands_parse(tmp_path):
    """benchmarks/gpu_all.sh is the one call a device lease gets: every benchmark command in it must parse with its
    script's own argparse (checked by running each script up to its parse_args, in one process) and every test
    file it names must exist."""
    import re
    import shlex

    root = BENCH.parent
    text = re.sub(r"\\\n\s*", " ", (BENCH / "gpu_all.sh").read_text())  # continued lines joined
    commands = [shlex.split(m) for m in re.findall(r"python3 (benchmarks/\S+\.py[^\n]*)", text)]
    assert len(commands) >= 10 and {c[0] for c in commands} >= {"benchmarks/latency.py", "benchmarks/throughput.py",
                                                                  "benchmarks/train.py"}
    tests = set(re.findall(r"\btests/\S+\.py\b", text))
    assert tests and all((root / t).is_file() for t in tests), tests
    commands = [[str(root / c[0]), *(a.replace("$LLMLAB_BENCH_RESULTS", str(tmp_path)) for a in c[1:])]
                for c in commands]
    checker = f"""
import argparse, runpy, sys
class Parsed(Exception):
    pass
original = argparse.ArgumentParser.parse_args
def parse_then_stop(self, args=None, namespace=None):
    original(self, args, namespace)  # exits 2 with argparse's message on a bad argument
    raise Parsed
argparse.ArgumentParser.parse_args = parse_then_stop
for argv in {commands!r}:
    sys.argv, sys.path[0] = argv, argv[0].rsplit("/", 1)[0]  # as `python3 benchmarks/x.py` sets them
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except Parsed:
        continue
    except SystemExit as e:  # argparse's error (its message is on stderr), or a script that parses no arguments
        raise SystemExit(f"exit {{e.code}} before its arguments were parsed: " + " ".join(argv)) from None
    raise SystemExit("did not reach parse_args: " + " ".join(argv))
"""
    proc = subprocess.run([sys.executable, "-c", checker], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LLMLAB_BENCH_RESULTS": str(tmp_path)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


class _FakeBatchModel:
    """Stands in for a transformers model's generate_batch as 5.17 behaves: it switches to a paged attention and
    back only once started, and returns only the requests that finished (errors caught inside)."""

    device = "cpu"

    def __init__(self, behaviour: str):
        from types import SimpleNamespace

        self.config = SimpleNamespace(_attn_implementation="sdpa")
        self.behaviour = behaviour

    def set_attn_implementation(self, name: str) -> None:
        self.config._attn_implementation = name

    def generate_batch(self, inputs, generation_config, progress_bar):
        from types import SimpleNamespace

        self.set_attn_implementation("paged|sdpa")
        if self.behaviour == "fails at start":
            raise ValueError("")  # no message: the report must not fail on it
        out = {f"req_{i}": SimpleNamespace(request_id=f"req_{i}", generated_tokens=[i] * 2, error=None)
               for i in range(len(inputs))}
        if self.behaviour == "drops one":
            del out["req_1"]
        if self.behaviour == "one failed":
            out["req_0"].error = "out of blocks"
        self.set_attn_implementation("sdpa")
        return out


@pytest.mark.parametrize("behaviour, expected", [
    ("finishes", None),
    ("drops one", "generate_batch finished 2 of 3 requests"),
    ("one failed", "generate_batch finished 2 of 3 requests; first error: out of blocks"),
    ("fails at start", "generate_batch failed: ValueError: "),
])
def test_generate_batch_reference_reports_unfinished_work_and_restores_the_model(behaviour, expected):
    """throughput.py's transformers reference: requests generate_batch did not finish are not timed as the work,
    and a failure before its manager started leaves the model on its own attention for the next reference."""
    sys.path.insert(0, str(BENCH))
    try:
        from engine_common import run_hf_generate_batch
    finally:
        sys.path.remove(str(BENCH))
    model = _FakeBatchModel(behaviour)
    got = run_hf_generate_batch(model, [[1], [2], [3]], 2)
    assert model.config._attn_implementation == "sdpa"
    if expected is None:
        assert isinstance(got, tuple) and got[1] == [[0, 0], [1, 1], [2, 2]]
    else:
        assert got == expected
