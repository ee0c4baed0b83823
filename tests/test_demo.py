"""`llmlab demo` end to end on a small corpus and a tiny time budget: every artifact of the report is written."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


def test_demo_runs_end_to_end(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("argparse.py", "textwrap.py", "dataclasses.py", "enum.py", "functools.py", "pathlib.py"):
        if (stdlib / name).is_file():
            shutil.copy(stdlib / name, corpus / name)
    out = tmp_path / "demo"
    earlier = out / "train" / "checkpoints" / "step-009999"  # a previous demo run, with more steps than this one
    earlier.mkdir(parents=True)
    (earlier / "trainer_state.json").write_text('{"step": 9999}')
    proc = subprocess.run([sys.executable, "-m", "llmlab", "demo", "--corpus", str(corpus), "--out", str(out),
                           "--steps", "20", "--vocab-size", "384"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] < math.log(summary["vocab_size"]) - 0.3  # learned beyond uniform in a few steps
    assert summary["bigram_loss"] < summary["unigram_loss"]
    report = (out / "report.md").read_text()
    assert "| bigram (interpolated" in report and "**llmlab Transformer**" in report and "```" in report
    assert (out / "loss.png").stat().st_size > 10_000
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert "Next steps:" in proc.stdout and "llmlab generate --model" in proc.stdout
    assert "warmup_steps" not in proc.stdout + proc.stderr  # a short run's warmup fits it (the demo has no flag)
    assert sorted(d.name for d in (out / "train" / "checkpoints").iterdir()) == ["step-000020"]


def test_demo_refuses_a_corpus_too_small_for_a_validation_split(tmp_path, capsys):
    from llmlab.cli import main

    small = tmp_path / "small.txt"
    small.write_text("one line here\nanother line\nthird line\n")
    assert main(["demo", "--corpus", str(small), "--steps", "1", "--vocab-size", "300",
                 "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "is too small for the demo" in err and "at least 129" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "train").exists()  # refused before training


def test_demo_refuses_a_seed_out_of_range(tmp_path, capsys):
    from llmlab.cli import main

    assert main(["demo", "--seed", str(10**20), "--steps", "1", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--seed must be in [0, 2**32)" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--vocab-size", "258"], "--vocab-size must be at least 259 (256 bytes + 3 special tokens), got 258"),
    (["--minutes", "inf"], "--minutes must be a positive number of minutes, got inf"),
    (["--corpus", "no-such-file.txt"], "corpus input no-such-file.txt does not exist"),
])
def test_demo_refuses_bad_arguments_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    from llmlab.cli import main
    from llmlab.data import corpora

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(corpora, "_builtin", lambda name: pytest.fail(f"the {name} corpus was read"))
    assert main(["demo", *argv, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # nothing written


def test_report_states_the_comparison_with_the_bigram_by_its_sign(tmp_path):
    from llmlab.demo import _write_report

    s = {"corpus": "c", "bytes": 1000, "vocab_size": 300, "train_tokens": 900, "val_tokens": 100, "params": 1e6,
         "steps": 3, "tokens_per_s": 100.0, "seconds": 1.0, "unigram_loss": 5.0, "bigram_loss": 1.408,
         "val_loss": 4.928, "val_ppl": math.exp(4.928), "beats_bigram_by": 1.408 - 4.928}
    _write_report(tmp_path, s, [], tmp_path / "ckpt")
    report = (tmp_path / "report.md").read_text()
    assert "3.520 nats/token above (worse than) the bigram baseline" in report and "-3.520" not in report
    _write_report(tmp_path, dict(s, val_loss=1.0, val_ppl=math.e, beats_bigram_by=0.408), [], tmp_path / "ckpt")
    assert "0.408 nats/token below (better than) the bigram baseline" in (tmp_path / "report.md").read_text()


def test_calibration_plans_from_the_fastest_step(monkeypatch):
    """Another process slowing some of the timed steps (ten-fold on two cores) must not shrink the demo's plan:
    the step time is the fastest timed step, not the median."""
    from types import SimpleNamespace

    import torch

    import llmlab.demo as demo
    from llmlab import ModelConfig

    class Loader:
        def __init__(self, *args, **kwargs):
            pass

        def next_batch(self):
            return torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)

    monkeypatch.setattr("llmlab.data.loader.TokenLoader", Loader)
    durations = iter([9.0, 5.0, 0.5, 6.0, 0.6, 7.0])  # the warm-up step, then five timed ones, three of them slowed
    clock, reads = [0.0], [0]

    def perf_counter():
        reads[0] += 1
        if reads[0] % 2 == 0:  # each step reads the clock before and after
            clock[0] += next(durations)
        return clock[0]

    cfg = SimpleNamespace(model=ModelConfig(vocab_size=16, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                                            intermediate_size=32, max_position_embeddings=16),
                          batch_size=1, seq_len=8, grad_accum=2)
    monkeypatch.setattr(demo.time, "perf_counter", perf_counter)
    step_s = demo._calibrate(cfg, shards=None)
    assert step_s == 1.1 * 2 * 0.5


def test_a_run_planned_on_a_busy_machine_trains_again_with_the_rest_of_the_budget(monkeypatch, tmp_path, capsys):
    """Load over the whole step timing (every step slow) plans too few steps; the run then ends well inside its
    budget, and the demo times the step again and trains afresh for what the rest of the budget holds."""
    from types import SimpleNamespace

    import llmlab.demo as demo
    import llmlab.train.loop as loop

    runs = []
    monkeypatch.setattr(loop, "train", lambda cfg: runs.append((cfg.max_steps, cfg.time_budget_s)) or "second run")
    monkeypatch.setattr(demo, "_calibrate", lambda cfg, shards: 0.5)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    cfg = SimpleNamespace(max_steps=85, time_budget_s=480.0, eval_every=50)
    out = demo._train_again_if_timed_busy(cfg, None, "first run", budget=480.0, used=45.0, step_s=5.18,
                                          checkpoints=ckpts)
    assert out == "second run" and runs == [(int(0.92 * 435 / 0.5), 435.0)] and not ckpts.exists()
    assert "training again for 800 steps" in capsys.readouterr().out
    # a run that used most of its budget, or whose re-timed plan is not much longer, is kept
    assert demo._train_again_if_timed_busy(cfg, None, "kept", budget=480.0, used=300.0, step_s=0.5,
                                           checkpoints=ckpts) == "kept"
    cfg.max_steps = 352  # the rest (280 s) holds 515 steps: under 1.5 times as many
    assert demo._train_again_if_timed_busy(cfg, None, "kept", budget=480.0, used=200.0, step_s=0.5,
                                           checkpoints=ckpts) == "kept"
    assert len(runs) == 1


def test_sample_prompts_fit_the_corpus(tmp_path):
    from llmlab.data.corpora import Corpus
    from llmlab.demo import PROMPTS, _next_steps, prompts_for

    assert prompts_for(Corpus("shakespeare", [])) == PROMPTS["shakespeare"]
    assert prompts_for(Corpus("python-stdlib", []))[0] == "def "
    a, b = tmp_path / "a.txt", tmp_path / "b.md"
    a.write_text("\n\n  Call me Ishmael. Some years ago\n")
    b.write_text("# It's a title\n")
    assert prompts_for(Corpus("mine", [a, b])) == ["Call me Ishmael.", "# It's a"]
    line = dict(_next_steps(tmp_path / "ckpt", "# It's a"))["generate"]
    assert "--prompt='# It'\"'\"'s a'" in line
    assert "--prompt='--- x'" in dict(_next_steps(tmp_path / "ckpt", "--- x"))["generate"]  # not an option
