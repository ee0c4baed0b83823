"""Edges of `llmlab train` that a first-time-user audit met: a trainer_state.json that lacks what a resume reads back
(a KeyError traceback before)."""

from __future__ import annotations

import json

import pytest
from test_train_loop import cfg_for
from test_train_resume_edges import copy_run, finished, two_shards  # noqa: F401 (fixtures)

from llmlab.errors import CheckpointError
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.loop import train


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
