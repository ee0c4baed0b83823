"""A demanding user of `llmlab chat` and of the CPU benchmark scripts: Ctrl-C during a reply, a system message longer
than the context, bad flag values and unusable --out paths refused before minutes of work (one line, exit 2), result
files where --out says and with the command, the CPU's name and the commit they came from.

Scripts run in this process (runpy) with the model loader replaced by one that fails: a refusal must come before it.
Nothing is written under benchmarks/results/ (RESULTS points at tmp_path)."""

from __future__ import annotations

import argparse
import json
import runpy
import signal
import sys
from pathlib import Path

import pytest
import torch

from llmlab import ModelConfig, Transformer
from llmlab.tokenizer import train_bpe

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A tiny random model with a BPE tokenizer and llmlab's default chat template (128 positions)."""
    d = tmp_path_factory.mktemp("chat_model")
    tok = train_bpe(["The quick brown fox says hello. Ünïcödé ok. " * 10], vocab_size=300, progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_position_embeddings=128)
    Transformer(cfg).eval().save_pretrained(d)
    tok.save(d)
    return d


@pytest.mark.parametrize("max_tokens", [6, 1])
def test_chat_ctrl_c_during_a_reply_stops_that_reply_not_the_chat(chat_dir, capsys, monkeypatch, max_tokens):
    """Ctrl-C while a reply streamed ended the whole conversation ("interrupted", exit 130), as at the prompt; as in
    llama.cpp's and ollama's chats it now stops the reply (the request aborted after the engine's step, its blocks
    freed) and the next message is answered."""
    import llmlab.engine.llm as llm_module
    from llmlab.cli import main
    from llmlab.engine.llm_engine import LLMEngine

    engines, real_llm, real_step = [], llm_module.LLM, LLMEngine.step

    def keep_engine(*args, **kwargs):
        llm = real_llm(*args, **kwargs)
        engines.append(llm.engine)
        return llm

    steps = []

    def step(self, **kwargs):
        out = real_step(self, **kwargs)
        steps.append(1)
        if len(steps) == 1:  # the user presses Ctrl-C while the first reply streams
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(LLMEngine, "step", step)
    monkeypatch.setattr(llm_module, "LLM", keep_engine)
    lines = iter(["hi", "hello", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(chat_dir), "--max-tokens", str(max_tokens), "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    # with one token the step Ctrl-C lands in finishes the reply: it was not stopped
    assert ("(reply stopped" in captured.err) == (max_tokens > 1) and "interrupted" not in captured.err
    assert len(captured.out.split("\n")) == 3  # two replies (the first cut short), each ended by a newline
    stats = engines[0].stats()
    assert not engines[0].has_unfinished_requests() and stats["free_blocks"] == stats["num_blocks"]
    assert len(steps) >= (3 if max_tokens > 1 else 2)  # the second message was answered
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C means "stop" again afterwards


def test_chat_refuses_a_system_message_that_fills_the_context(chat_dir, capsys):
    """A --system longer than the context refused every message in turn ("send a shorter message"), each blamed on
    the user's text, and the chat exited 0; it is now named once, before the first message."""
    from llmlab.cli import main

    long = "The quick brown fox says hello. " * 30  # ~300 tokens; the model has 128 positions
    assert main(["chat", "--model", str(chat_dir), "--system", long, "--message", "hi", "--max-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "--system makes a" in err and "give a shorter system message" in err and "send a shorter" not in err


# ---- benchmarks -------------------------------------------------------------------------------------------------

@pytest.fixture
def bench(tmp_path, monkeypatch):
    """Run a benchmark script's main in this process: (exit code, stderr). The model loader and the benchmarks'
    results folder are replaced: a script that went past its checks fails the test at once."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("LLMLAB_BENCH_RESULTS", str(tmp_path))
    import engine_common

    monkeypatch.setattr(engine_common, "RESULTS", tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("the benchmark started before its arguments were checked")

    monkeypatch.setattr(engine_common, "load_model", no_model)

    def run(script: str, *argv: str) -> int:
        monkeypatch.setattr(sys, "argv", [str(BENCH / script), *argv])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(BENCH / script), run_name="__main__")
        return e.value.code

    return run


TINY_TRAIN = ["--shape", "tiny", "--device", "cpu", "--batch", "1", "--steps", "1", "--warmup", "0", "--precision", "fp32"]


@pytest.mark.parametrize("script, argv, message", [
    ("latency.py", ["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),  # wrote ttft Infinity, rc 0
    ("latency.py", ["--new-tokens", "1"], "argument --new-tokens: must be at least 2"),  # ZeroDivisionError
    ("latency.py", ["--prompt-len", "0"], "argument --prompt-len: must be at least 1"),  # RequestError traceback
    ("latency.py", ["--dtype", "float64x"], "invalid choice: 'float64x'"),  # AttributeError: torch has no float64x
    ("latency.py", ["--model", "nonesuch"], "--model nonesuch: nonesuch is neither a preset"),  # ConfigError
    ("throughput.py", ["--min-len", "10", "--max-len", "5"], "--min-len 10 is above --max-len 5"),  # randint error
    ("throughput.py", ["--num-seqs", "0"], "argument --num-seqs: must be at least 1"),  # max() of nothing
    ("engine_cpu.py", ["--batches", "0"], "argument --batches: must be at least 1"),
    ("engine_cpu.py", ["--repeats", "0"], "argument --repeats: must be at least 1"),
    ("train.py", [*TINY_TRAIN, "--steps", "0"], "argument --steps: must be at least 1"),  # ZeroDivisionError after the run
    ("train.py", ["--shape", "tiny", "--device", "gpu"], "--device gpu: not a device"),  # RuntimeError traceback
    ("tokenizer.py", ["--vocab-size", "10", "--mb", "0.01"], "--vocab-size must be at least 257"),
    ("tokenizer.py", ["--mb", "0"], "--mb must be above 0"),
])
def test_bad_benchmark_flags_are_one_line_errors_before_any_work(bench, capsys, script, argv, message):
    assert bench(script, *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_train_benchmark_refuses_cuda_without_a_gpu(bench, capsys):
    assert bench("train.py", "--shape", "tiny", "--device", "cuda") == 2  # was: AssertionError, Torch not compiled...
    assert "no CUDA device here" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["latency.py", "throughput.py", "engine_cpu.py", "train.py", "tokenizer.py"])
def test_an_unwritable_out_is_refused_before_the_run(bench, capsys, tmp_path, script):
    """The results file was written only at the end: a typo'd or unwritable --out cost the whole run (minutes on a
    CPU) and ended in a FileNotFoundError traceback."""
    (tmp_path / "a_file").write_text("")
    out = str(tmp_path / "a_file" / "result.json")  # a folder that cannot exist: a file is in the way
    extra = TINY_TRAIN if script == "train.py" else ["--mb", "0.01"] \
        if script == "tokenizer.py" else ["--model", "tiny"]
    assert bench(script, *extra, "--out", out) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and "cannot write there" in err and "Traceback" not in err
    assert not (tmp_path / "a_file" / "result.json").exists()


def test_train_and_tokenizer_refuse_a_directory_as_out(bench, capsys, tmp_path):
    assert bench("train.py", *TINY_TRAIN, "--out", str(tmp_path)) == 2  # IsADirectoryError
    assert "is a directory; give a file name" in capsys.readouterr().err
    assert bench("tokenizer.py", "--mb", "0.01", "--out", str(tmp_path)) == 2
    assert "is a directory; give a file name" in capsys.readouterr().err


def parsed(script: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    """A script's parsed arguments (it stops at parse_args)."""

    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), *argv])
    with pytest.raises(Parsed) as e:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    return e.value.args[0]


def test_tokenizer_benchmark_honours_the_results_folder(tmp_path, monkeypatch):
    """tokenizer.py wrote benchmarks/results/tokenizer.json whatever LLMLAB_BENCH_RESULTS said (every other benchmark
    honours it): a smoke or CPU run overwrote the committed result."""
    monkeypatch.setenv("LLMLAB_BENCH_RESULTS", str(tmp_path))
    assert parsed("tokenizer.py", [], monkeypatch).out == tmp_path / "tokenizer.json"


def test_result_names_and_paths_and_what_a_result_records(tmp_path, monkeypatch):
    """`--out lat.json` wrote lat.json.json, `--out /abs/x.json` /abs/x.json.json, and `--out sub/x` failed at the end
    (its folder was not created); every result now records the command that made it and whether the tree had
    uncommitted changes."""
    monkeypatch.syspath_prepend(str(BENCH))
    import engine_common

    monkeypatch.setattr(engine_common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["benchmarks/latency.py", "--model", "tiny", "--out", "lat.json"])
    monkeypatch.chdir(tmp_path)
    assert engine_common.result_path("lat.json") == tmp_path / "results" / "lat.json"
    assert engine_common.result_path("lat") == tmp_path / "results" / "lat.json"
    assert engine_common.result_path(str(tmp_path / "x.json")) == tmp_path / "x.json"
    assert engine_common.result_path("runs/lat") == Path("runs/lat.json")  # a folder: from the working directory
    path = engine_common.write_result("sub/deeper/lat", {"benchmark": "t"})  # its folders made
    assert path.resolve() == tmp_path / "sub" / "deeper" / "lat.json"
    r = json.loads(path.read_text())
    assert r["command"].endswith("benchmarks/latency.py --model tiny --out lat.json")
    assert r["versions"]["git"] and isinstance(r["versions"]["git_uncommitted_changes"], bool)


def test_a_failed_generate_batch_repeat_does_not_hide_a_timed_one(monkeypatch):
    """engine_cpu.py kept the min over repeats with a failure's key 0.0: one failed repeat reported the reference as
    failed although another repeat was timed (and its ratio was dropped)."""
    monkeypatch.syspath_prepend(str(BENCH))
    fastest = runpy.run_path(str(BENCH / "engine_cpu.py"), run_name="engine_cpu")["fastest"]
    assert fastest(["generate_batch failed: X", (2.0, [[1]]), (1.5, [[1]])]) == (1.5, [[1]])
    assert fastest(["generate_batch failed: X", "generate_batch failed: Y"]) == "generate_batch failed: X"


def test_train_result_names_the_cpu_the_device_and_the_command(tmp_path, monkeypatch, capsys):
    """train.py's CPU result said "hardware": "x86_64" (platform.processor()), not which device ran, nor the command,
    the llmlab version or the commit; and its MFU on a CPU is against an fp32 peak, now labelled."""
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "train.json"
    monkeypatch.setattr(sys, "argv", [str(BENCH / "train.py"), "--shape", "tiny", "--device", "cpu", "--batch", "1",
                                      "--steps", "1", "--warmup", "0", "--precision", "fp32", "--out", str(out)])
    runpy.run_path(str(BENCH / "train.py"), run_name="__main__")
    r = json.loads(out.read_text())
    import engine_common

    assert r["device"] == "cpu" and r["hardware"] == engine_common.hardware()["cpu"]
    assert r["measured_peak_dtype"] == "fp32" and r["host"]["cores"] >= 1
    assert r["versions"]["llmlab"] and "git" in r["versions"] and "--steps 1" in r["command"]


def test_estimate_memory_reestimate_of_a_wrong_file_is_one_line(bench, capsys, tmp_path):
    """--reestimate of a missing file, or of another benchmark's results, ended in a FileNotFoundError / KeyError
    traceback."""
    assert bench("estimate_memory.py", "--reestimate", str(tmp_path / "missing.json")) == 2
    assert "No such file or directory" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "tokenizer"}))
    assert bench("estimate_memory.py", "--reestimate", str(tmp_path / "other.json")) == 2
    err = capsys.readouterr().err
    assert "not an estimate_memory results file" in err and "Traceback" not in err
