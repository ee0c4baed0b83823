"""Edges of resuming and configuring a run that an audit met: shards from another tokenizer, damaged optimizer/RNG
files, a torn metrics line, a config file with no model, seeds out of range, a time-budget stop on an eval and
checkpoint step, warmup past max_steps, a changed dropout, and the progress bar closed before an error."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_train_loop import TEXT, cfg_for

from llmlab.data.corpora import resolve_corpus
from llmlab.data.shards import prepare_shards
from llmlab.errors import CheckpointError, ConfigError, LlmlabError
from llmlab.tokenizer import train_bpe
from llmlab.train import checkpoint as ckpt_mod
from llmlab.train import loop as loop_mod
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.config import build_config
from llmlab.train.loop import train
from llmlab.train.report import read_metrics


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """Shards of one corpus by two tokenizers of the same vocabulary size (different merges)."""
    d = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (d / f"doc{i}.txt").write_text(TEXT)
    corpus = resolve_corpus([d])
    out = []
    for pattern in ("gpt2", "gpt4"):
        tok = train_bpe(corpus.files, vocab_size=320, pattern=pattern, progress=False)
        out.append(prepare_shards(corpus, tok, tmp_path_factory.mktemp(pattern), val_fraction=0.1, progress=False))
    return out


@pytest.fixture(scope="module")
def finished(two_shards, tmp_path_factory):
    """A finished 8-step run on the first shards."""
    out = tmp_path_factory.mktemp("run")
    train(cfg_for(two_shards[0], out), log=lambda *a: None)
    return out


def copy_run(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def test_resume_or_init_from_with_another_tokenizers_shards_is_refused(two_shards, finished, tmp_path):
    a, b = two_shards
    assert a.vocab_size == b.vocab_size
    assert ckpt_mod.same_vocabulary(a.path, b.path) is False and ckpt_mod.same_vocabulary(a.path, a.path) is True
    run = copy_run(finished, tmp_path)
    with pytest.raises(ConfigError, match="another tokenizer than the one"):
        train(cfg_for(b, run, max_steps=10), resume=True)
    newest = latest_checkpoint(run / "checkpoints")
    with pytest.raises(ConfigError, match="another tokenizer than init_from"):
        train(build_config(overrides={"data": str(b.path), "out": str(tmp_path / "ft"), "init_from": str(newest),
                                      "seq_len": "32", "max_steps": "2", "progress": "false"}))
    train(cfg_for(a, run, max_steps=10), resume=True, log=lambda *a: None)  # its own shards resume


@pytest.mark.parametrize("name", ["optimizer.safetensors", "rng.safetensors"])
@pytest.mark.parametrize("damage", ["missing", "torn"])
def test_damaged_optimizer_or_rng_file_is_a_clear_error(two_shards, finished, tmp_path, name, damage):
    run = copy_run(finished, tmp_path)
    f = latest_checkpoint(run / "checkpoints") / name
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=f"{name} is missing or damaged.*delete"):
        train(cfg_for(two_shards[0], run, max_steps=10), resume=True, log=lambda *a: None)


def test_a_torn_last_metrics_line_does_not_block_resume(two_shards, finished, tmp_path):
    run = copy_run(finished, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a process killed mid-append
    n = len(read_metrics(run / "metrics.jsonl"))
    train(cfg_for(two_shards[0], run, max_steps=10), resume=True, log=lambda *a: None)
    assert len(read_metrics(run / "metrics.jsonl")) > n
    (run / "metrics.jsonl").write_text('{"kind": "tr\n{"kind": "train", "step": 1}\n')  # damage mid-file: named
    with pytest.raises(LlmlabError, match="line 1 is not JSON"):
        read_metrics(run / "metrics.jsonl")


def test_a_config_file_without_a_model_is_refused(tmp_path):
    empty = tmp_path / "run.toml"
    empty.write_text('data = "x"\n')
    with pytest.raises(ConfigError, match="sets no model .* 114M default"):
        build_config(file=empty)
    empty.write_text('data = "x"\n[model]\ndropout = 0.1\n')  # no shape either
    with pytest.raises(ConfigError, match="sets no model"):
        build_config(file=empty)
    empty.write_text('data = "x"\n[model]\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\n')
    assert build_config(file=empty).model.num_layers == 1


@pytest.mark.parametrize("seed", [-1, 2**32, 20_000_000_000_000])
def test_seed_out_of_range_is_refused_before_any_work(two_shards, tmp_path, seed):
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 2\*\*32\)"):
        cfg_for(two_shards[0], tmp_path / "r", seed=seed)


def test_time_budget_stop_on_an_eval_and_save_step_evaluates_and_saves_once(two_shards, tmp_path, monkeypatch):
    saves = []
    real = loop_mod.save_checkpoint
    monkeypatch.setattr(loop_mod, "save_checkpoint", lambda root, step, **kw: saves.append(step) or real(root, step,
                                                                                                        **kw))
    clock = iter(range(10**6))
    monkeypatch.setattr(loop_mod.time, "perf_counter", lambda: float(next(clock)))  # one "second" per call
    out = tmp_path / "r"
    result = train(cfg_for(two_shards[0], out, max_steps=100, eval_every=1, ckpt_every=1, keep_last=1,
                           time_budget_s=6), log=lambda *a: None)
    assert result.stopped_early
    evals = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == len(set(evals)) and evals[-1] == result.steps
    assert len(saves) == len(set(saves)) and saves[-1] == result.steps
    assert result.val_loss is not None and result.checkpoint == latest_checkpoint(out / "checkpoints")


def test_warmup_past_max_steps_is_noted(two_shards, tmp_path):
    notes = []
    train(cfg_for(two_shards[0], tmp_path / "r", max_steps=3, warmup_steps=5, eval_every=0), log=notes.append)
    assert any("warmup_steps 5 >= max_steps 3" in n for n in notes)


def test_resume_with_another_dropout_continues_and_says_so(two_shards, finished, tmp_path):
    run = copy_run(finished, tmp_path)
    notes = []
    train(cfg_for(two_shards[0], run, max_steps=10, **{"model.dropout": 0.1}), resume=True, log=notes.append)
    assert any("model.dropout 0.0 -> 0.1" in n for n in notes)


def test_the_progress_bar_is_closed_before_an_error(two_shards, tmp_path, monkeypatch):
    closed = []

    class Bar:
        def __init__(self, *a, **k):
            pass

        def update(self, n):
            raise KeyboardInterrupt

        def close(self):
            closed.append(True)

        write = set_postfix = print

    monkeypatch.setattr(loop_mod, "tqdm", Bar)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(two_shards[0], tmp_path / "r"), log=lambda *a: None)
    assert closed == [True]


def test_precision_and_device_are_case_insensitive(two_shards, tmp_path):
    cfg = cfg_for(two_shards[0], tmp_path / "r", precision="FP32", device="CPU")
    assert (cfg.precision, cfg.device) == ("fp32", "cpu")
    assert torch.tensor(0).device.type == cfg.device


def test_init_from_a_model_whose_generation_config_adds_eos_ids(two_shards, finished, tmp_path):
    """Chat models list an end-of-turn id in generation_config.json (Qwen2.5-Instruct: [151645, 151643]);
    from_pretrained stops on it, and init_from must build the same model rather than refuse it as another."""
    import json

    src = tmp_path / "model"
    shutil.copytree(latest_checkpoint(finished / "checkpoints"), src)
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 5]}))
    cfg = build_config(overrides={"data": str(two_shards[0].path), "out": str(tmp_path / "ft"), "init_from": str(src),
                                  "seq_len": "32", "max_steps": "1", "warmup_steps": "0", "progress": "false"})
    assert {3, 5} <= cfg.model.eos_ids
    assert train(cfg, log=lambda *a: None).steps == 1
