"""Bad training input is one clear error before any work starts: wrong types and out-of-range values in
TrainConfig (built directly, from TOML or from `--key value` flags), a resume onto another architecture, and
init_from with model settings or a seq_len its checkpoint cannot honour."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_loop import cfg_for, shards  # noqa: F401 (shards is a fixture)

from llmlab.config import ModelConfig
from llmlab.errors import CheckpointError, ConfigError
from llmlab.model.pretrained import from_pretrained
from llmlab.model.transformer import Transformer
from llmlab.train.checkpoint import latest_checkpoint, load_checkpoint
from llmlab.train.config import TrainConfig, build_config
from llmlab.train.loop import _init_model, train
from llmlab.train.optim import AdamW, param_groups


def quiet(*_):
    pass


@pytest.mark.parametrize("field, value, message", [
    ("log_every", 0, "log_every must be a positive integer, got 0"),
    ("eval_batches", 0, "eval_batches must be a positive integer, got 0"),
    ("grad_accum", 0, "grad_accum must be a positive integer"),
    ("warmup_steps", -5, r"warmup_steps must be >= 0 \(0: no warmup\), got -5"),
    ("eval_every", -1, "eval_every must be >= 0"),
    ("ckpt_every", -1, "ckpt_every must be >= 0"),
    ("lr", -1, "lr must be a positive learning rate, got -1.0"),
    ("lr", 0, "lr must be a positive learning rate"),
    ("lr", math.inf, "lr must be a positive learning rate, got inf"),
    ("min_lr_ratio", 5, r"min_lr_ratio must be in \[0, 1\]"),
    ("min_lr_ratio", -0.1, r"min_lr_ratio must be in \[0, 1\]"),
    ("weight_decay", -0.1, "weight_decay must be >= 0"),
    ("beta1", 1.0, r"beta1 must be in \[0, 1\)"),
    ("beta2", -0.5, r"beta2 must be in \[0, 1\)"),
    ("eps", 0, "eps must be positive"),
    ("grad_clip", -1, r"grad_clip must be a gradient norm >= 0 \(0: no clipping\)"),
    ("time_budget_s", -1, "time_budget_s must be >= 0 seconds"),
    ("time_budget_s", math.nan, "time_budget_s must be >= 0 seconds"),
])
def test_out_of_range_values_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})


def test_zero_means_off_where_documented_and_bounds_are_inclusive():
    cfg = TrainConfig(warmup_steps=0, eval_every=0, ckpt_every=0, time_budget_s=0, grad_clip=0, weight_decay=0,
                      min_lr_ratio=1, beta1=0, lr=1)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # an int is a number, kept as a float
    assert TrainConfig(min_lr_ratio=0).min_lr_ratio == 0.0


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", "4", "batch_size must be an integer, got the str '4'"),
    ("batch_size", True, "batch_size must be an integer, got the bool True"),
    ("max_steps", 1e3, "max_steps must be an integer, got the float 1000.0"),
    ("lr", "1e-3", "lr must be a number, got the str '1e-3'"),
    ("beta2", False, "beta2 must be a number, got the bool False"),
    ("progress", "false", "progress must be true or false, got the str 'false'"),
    ("precision", 16, "precision must be a string, got the int 16"),
    ("model", 3, "model must be a ModelConfig or a dict of its fields, got 3"),
])
def test_values_of_the_wrong_type_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})


def test_a_field_set_after_construction_is_checked_before_any_work(shards, tmp_path):  # noqa: F811
    cfg = cfg_for(shards, tmp_path, max_steps=2, eval_every=0)
    cfg.log_every = 0  # was: ZeroDivisionError at step 1
    with pytest.raises(ConfigError, match="log_every must be a positive integer"):
        train(cfg, log=quiet)
    cfg.log_every, cfg.eval_batches = 1, 0  # was: ZeroDivisionError in the final evaluation, before the save
    with pytest.raises(ConfigError, match="eval_batches must be a positive integer"):
        train(cfg, log=quiet)
    assert not any(tmp_path.iterdir())


def test_paths_are_kept_as_strings_so_the_config_saves_as_json(tmp_path):
    cfg = TrainConfig(data=tmp_path / "shards", out=tmp_path / "out")
    assert cfg.data == str(tmp_path / "shards") and cfg.to_dict()["out"] == str(tmp_path / "out")


def test_toml_values_of_the_wrong_type_name_the_key(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('batch_size = "4"\n')
    with pytest.raises(ConfigError, match="batch_size must be an integer, got the str '4'"):
        build_config(file=toml)
    toml.write_text('[model]\nrope_scaling = "linear"\n')  # was: AttributeError inside ModelConfig
    with pytest.raises(ConfigError, match=r"model.rope_scaling must be a table \(dict\) or none, got the str"):
        build_config(file=toml)
    toml.write_text('[model]\ndropout = "0.1"\n')  # was: TypeError inside ModelConfig
    with pytest.raises(ConfigError, match="model.dropout must be a number, got the str '0.1'"):
        build_config(file=toml)
    with pytest.raises(ConfigError, match="model.rope_scaling must be a table"):
        TrainConfig(model={"rope_scaling": "linear"})
    toml.write_text('model = 3\n')
    with pytest.raises(ConfigError, match=r"model in .*run.toml must be a \[model\] table"):
        build_config(file=toml)


def test_flags_parse_json_for_tables_and_lists():
    with pytest.raises(ConfigError, match="--model.rope_scaling expects JSON such as"):
        build_config(overrides={"model.rope_scaling": "linear"})
    with pytest.raises(ConfigError, match="model.rope_scaling must be a table"):
        build_config(overrides={"model.rope_scaling": '"linear"'})
    cfg = build_config(overrides={"model.rope_scaling": '{"rope_type": "linear", "factor": 2.0}',
                                  "model.eos_token_id": "[1, 2]", "model.head_dim": "none", "lr": "1e-3"})
    assert cfg.model.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert cfg.model.eos_token_id == [1, 2] and cfg.lr == 1e-3
    assert build_config(overrides={"model.rope_scaling": "none"}).model.rope_scaling is None


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):  # noqa: F811
    """A 2-step run's directory and its newest checkpoint (no test changes them)."""
    out = tmp_path_factory.mktemp("run")
    train(cfg_for(shards, out, max_steps=2, eval_every=0), log=quiet)
    return out, latest_checkpoint(out / "checkpoints")


def test_resume_onto_another_architecture_names_the_fields(shards, trained):  # noqa: F811
    out, _ = trained
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = cfg_for(shards, out, max_steps=4, eval_every=0, **{"model.num_layers": 3, "model.hidden_size": 48})
    with pytest.raises(CheckpointError, match=r"num_layers 2 vs 3.*checkpoint vs run\); resume with the "
                                              r"checkpoint's model settings, or start a fresh run"):
        train(changed, resume=True, log=quiet)  # was: load_state_dict's RuntimeError
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_uses_the_runs_optimizer_settings(shards, trained):  # noqa: F811
    _, ckpt = trained
    model = Transformer(cfg_for(shards, "/tmp/unused").model)
    optimizer = AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.8, 0.9), eps=1e-6)
    load_checkpoint(ckpt, model=model, optimizer=optimizer)  # saved with weight decay 0.1, betas (0.9, 0.95)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert decay["betas"] == (0.8, 0.9) and decay["eps"] == 1e-6
    assert all(optimizer.state[p]["exp_avg"].abs().sum() > 0 for p in decay["params"])  # moments restored


def test_init_from_takes_the_checkpoints_model_and_refuses_contradictions(shards, trained, tmp_path):  # noqa: F811
    _, ckpt = trained
    base = {"data": str(shards.path), "out": str(tmp_path / "ft"), "init_from": str(ckpt), "seq_len": "32",
            "batch_size": "2", "max_steps": "1", "eval_every": "0", "progress": "false"}
    cfg = build_config(overrides=base, default_vocab_size=shards.vocab_size)
    assert cfg.model == from_pretrained(ckpt).cfg
    assert build_config(overrides={**base, "model.num_layers": "2"}).model.num_layers == 2  # restating is fine
    with pytest.raises(ConfigError, match=r"contradict: model.num_layers=5 \(the checkpoint has 2\); drop them"):
        build_config(overrides={**base, "model.num_layers": "5"})  # was: silently trained the checkpoint's 2
    with pytest.raises(ConfigError, match="seq_len 128 is above the model's context of 64"):
        build_config(overrides={**base, "seq_len": "128"})  # was: trained past the RoPE context
    train(cfg, log=quiet)


def test_init_from_checks_a_directly_built_config(shards, trained, tmp_path):  # noqa: F811
    _, ckpt = trained
    saved = from_pretrained(ckpt).cfg
    wider = TrainConfig(init_from=str(ckpt), data=str(shards.path), seq_len=128,
                        model=saved.replace(max_position_embeddings=256))
    with pytest.raises(ConfigError, match=r"seq_len 128 is above the context of init_from .* \(64 positions\)"):
        _init_model(wider)
    other = TrainConfig(init_from=str(ckpt), data=str(shards.path), seq_len=32, model=saved.replace(num_layers=5))
    with pytest.raises(ConfigError, match=r"num_layers 5 vs 2: run vs checkpoint\); leave the model"):
        _init_model(other)


def test_init_from_with_dropout_keeps_the_weights(trained):
    _, ckpt = trained
    saved = from_pretrained(ckpt)
    model = _init_model(TrainConfig(init_from=str(ckpt), seq_len=32, model=saved.cfg.replace(dropout=0.1)))
    assert model.cfg.dropout == 0.1 and isinstance(model.cfg, ModelConfig)
    for (name, p), q in zip(saved.state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), name
