"""Edges of `llmlab train` that a first-time-user audit met: a trainer_state.json that lacks what a resume reads back
(a KeyError traceback before), a metrics.jsonl line that is JSON but no record (a KeyError or TypeError before), and
Ctrl-C in the training loop (every step since the last checkpoint was lost)."""

from __future__ import annotations

import json
import signal

import pytest
from test_train_loop import cfg_for
from test_train_resume_edges import copy_run, finished, two_shards  # noqa: F401 (fixtures)

from llmlab.cli import main
from llmlab.errors import CheckpointError, LlmlabError
from llmlab.train import loop as loop_mod
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.loop import TrainingInterrupted, train
from llmlab.train.report import read_metrics


@pytest.mark.parametrize("damage", [
    lambda s: s.pop("loader"),
    lambda s: s["loader"].pop("seed"),
    lambda s: s.pop("scaler"),
    lambda s: s.pop("optimizer_param_groups"),
    lambda s: s.update(config=[1]),
    lambda s: s.update(step=True),
    lambda s: s.update(step=-3),
], ids=["no-loader", "loader-without-seed", "no-scaler", "no-param-groups", "config-a-list", "step-a-bool",
        "negative-step"])
def test_a_trainer_state_that_lacks_what_resume_reads_is_one_clear_error(two_shards, finished, tmp_path,  # noqa: F811
                                                                         damage):
    run = copy_run(finished, tmp_path)
    ckpt = latest_checkpoint(run / "checkpoints")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    damage(state)
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=f"trainer_state.json (lacks|has no valid) .*damaged: delete {ckpt}"):
        train(cfg_for(two_shards[0], run, max_steps=10), resume=True, log=lambda *a: None)


@pytest.mark.parametrize("line", ['[1, 2]', '{"kind": "note"}', '{"kind": "train", "step": 3}',
                                  '{"kind": "eval", "step": 3, "val_loss": null}'])
def test_a_metrics_line_that_is_json_but_no_record_is_named_before_training(two_shards, finished, tmp_path,  # noqa: F811
                                                                            line):
    run = copy_run(finished, tmp_path)
    n = len((run / "metrics.jsonl").read_text().splitlines())
    with open(run / "metrics.jsonl", "a") as f:
        f.write(line + "\n")
    steps = []
    with pytest.raises(LlmlabError, match=f"metrics.jsonl line {n + 1} is not a metrics record .* move it aside"):
        train(cfg_for(two_shards[0], run, max_steps=10), resume=True, log=steps.append)
    assert not any("step 9" in s for s in steps) and latest_checkpoint(run / "checkpoints").name == "step-000008"


def test_resume_names_a_checkpoint_without_its_trainer_state_instead_of_finding_none(two_shards, finished,  # noqa: F811
                                                                                    tmp_path):
    run = copy_run(finished, tmp_path)
    (latest_checkpoint(run / "checkpoints") / "trainer_state.json").unlink()
    notes = []
    train(cfg_for(two_shards[0], run, max_steps=2), resume=True, log=notes.append)
    assert any("--resume found no complete checkpoint under" in n and "(step-000008 has no trainer_state.json)" in n
               and "new run from step 0" in n for n in notes), notes


@pytest.fixture
def ctrl_c_at(monkeypatch):
    """ctrl_c_at(step, times): SIGINT to this process, `times` times, as the loop starts step `step` (0-based), once;
    with Python's own handler in place, as in a terminal (a pytest worker may run with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    real = loop_mod.lr_at

    def arm(at: int, times: int = 1) -> None:
        fired = []

        def lr_at(step, **kw):
            if step == at and not fired:
                fired.append(step)
                for _ in range(times):
                    signal.raise_signal(signal.SIGINT)
            return real(step, **kw)

        monkeypatch.setattr(loop_mod, "lr_at", lr_at)

    yield arm
    signal.signal(signal.SIGINT, previous)


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"}


def test_ctrl_c_finishes_and_saves_the_step_and_resume_matches_an_uninterrupted_run(two_shards, tmp_path,  # noqa: F811
                                                                                   ctrl_c_at):
    whole = tmp_path / "whole"
    train(cfg_for(two_shards[0], whole), log=lambda *a: None)
    cut = tmp_path / "cut"
    ctrl_c_at(4)  # during the 5th of 8 steps; no checkpoint is due (ckpt_every 0: only at the end)
    with pytest.raises(KeyboardInterrupt) as e:  # (not TrainingInterrupted: a bare one must fail here, not end pytest)
        train(cfg_for(two_shards[0], cut), log=lambda *a: None)
    assert isinstance(e.value, TrainingInterrupted) and e.value.step == 5 and e.value.checkpoint == cut / "checkpoints" / "step-000005"
    assert latest_checkpoint(cut / "checkpoints") == e.value.checkpoint
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop puts Python's handler back
    train(cfg_for(two_shards[0], cut), resume=True, log=lambda *a: None)
    assert losses(cut) == losses(whole)  # nothing lost, and the resumed steps are those of the uninterrupted run


def test_a_second_ctrl_c_stops_at_once_and_the_cli_says_where_to_resume(two_shards, tmp_path, ctrl_c_at,  # noqa: F811
                                                                        capsys):
    ctrl_c_at(2, times=2)
    with pytest.raises(KeyboardInterrupt) as e:
        train(cfg_for(two_shards[0], tmp_path / "twice"), log=lambda *a: None)
    assert not isinstance(e.value, TrainingInterrupted)
    assert latest_checkpoint(tmp_path / "twice" / "checkpoints") is None
    ctrl_c_at(2)
    assert main(["train", "--preset", "tiny-cpu", "--data", str(two_shards[0].path), "--out", str(tmp_path / "cli"),
                 "--max_steps", "8", "--batch_size", "2", "--seq_len", "16", "--progress", "false",
                 "--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2",
                 "--model.intermediate_size", "64", "--model.max_position_embeddings", "32"]) == 130
    err = capsys.readouterr().err
    ckpt = tmp_path / "cli" / "checkpoints" / "step-000003"
    assert f"interrupted at step 3; saved {ckpt}, which --resume continues from." in err
    assert "Ctrl-C again to stop without it" in err and "Traceback" not in err
