"""`llmlab train` / `llmlab data prepare` at their edges: no validation split, no preset, a resume at or past
max_steps, throughput without the pauses, the run keys in --help, misspelt keys, a directory as --config, a
built-in corpus mixed with files."""

from __future__ import annotations

import dataclasses
import time

import pytest
from test_train_loop import TEXT, cfg_for, shards  # noqa: F401 (shards is a fixture)

from llmlab.cli import main
from llmlab.data.corpora import CorpusError, resolve_corpus
from llmlab.data.shards import ShardInfo, prepare_shards
from llmlab.errors import ConfigError
from llmlab.tokenizer import load_tokenizer
from llmlab.train import loop
from llmlab.train.config import FIELD_DOCS, TrainConfig, build_config
from llmlab.train.loop import train

TINY = ["--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2", "--model.num_kv_heads", "2",
        "--model.intermediate_size", "64", "--model.max_position_embeddings", "32", "--batch_size", "2",
        "--seq_len", "16", "--progress", "false"]


def quiet(*_):
    pass


def train_argv(data, out, *more: str) -> list[str]:
    return ["train", "--preset", "tiny-cpu", *TINY, "--data", str(data), "--out", str(out), *more]


@pytest.fixture(scope="module")
def no_val_shards(shards, tmp_path_factory):  # noqa: F811
    corpus_dir = tmp_path_factory.mktemp("corpus-noval")
    (corpus_dir / "doc.txt").write_text(TEXT)
    corpus = resolve_corpus([corpus_dir])
    return prepare_shards(corpus, load_tokenizer(shards.path), tmp_path_factory.mktemp("noval"), val_fraction=0,
                          progress=False)


def test_training_without_a_validation_split_says_so_and_finishes(no_val_shards, tmp_path, capsys):
    assert no_val_shards.val_tokens == 0 and len(no_val_shards.tokens("val")) == 0  # an empty split reads as empty
    notes = []
    result = train(cfg_for(no_val_shards, tmp_path / "lib", max_steps=2), log=notes.append)
    assert result.val_loss is None and result.steps == 2
    assert sum("no validation split" in n for n in notes) == 1
    assert main(train_argv(no_val_shards.path, tmp_path / "cli", "--max_steps", "2")) == 0
    out = capsys.readouterr().out
    assert "done: 2 steps" in out and "no val loss (the shards have no validation split)" in out


def test_data_prepare_warns_when_the_validation_split_is_empty_or_short(shards, tmp_path, capsys):  # noqa: F811
    (tmp_path / "doc.txt").write_text(TEXT)
    argv = ["data", "prepare", "--input", str(tmp_path / "doc.txt"), "--tokenizer", str(shards.path)]
    assert main([*argv, "--out", str(tmp_path / "s0"), "--val-fraction", "0"]) == 0
    err = capsys.readouterr().err
    assert "warning: the validation split is empty (--val-fraction is 0)" in err
    assert main([*argv, "--out", str(tmp_path / "s1"), "--val-fraction", "0.04"]) == 0
    err = capsys.readouterr().err
    val = ShardInfo.load(tmp_path / "s1").val_tokens
    assert 0 < val <= 128 and f"the validation split has only {val} tokens" in err
    assert main([*argv, "--out", str(tmp_path / "s2"), "--val-fraction", "0.5"]) == 0
    assert "warning" not in capsys.readouterr().err
    (tmp_path / "short.txt").write_text("hi\n")  # train then refuses the shards: said now, not only about validation
    assert main([*argv[:3], str(tmp_path / "short.txt"), *argv[4:], "--out", str(tmp_path / "s3")]) == 0
    train_tokens = ShardInfo.load(tmp_path / "s3").train_tokens
    assert (f"warning: the train split has only {train_tokens} tokens, shorter than one sequence of 128 + 1 (preset "
            f"tiny-cpu), so `llmlab train` refuses these shards unless --seq_len is below {train_tokens}; add text."
            in capsys.readouterr().err)


def test_train_without_preset_or_config_is_refused_before_any_work(shards, tmp_path, capsys):  # noqa: F811
    assert main(["train", "--data", str(shards.path), "--max_steps", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pass --preset NAME (one of tiny-cpu, gpt2-small) or --config FILE.toml" in err
    assert not any(tmp_path.iterdir())


def test_resume_at_max_steps_writes_nothing_and_past_it_is_an_error(shards, tmp_path, capsys):  # noqa: F811
    assert main(train_argv(shards.path, tmp_path, "--max_steps", "2")) == 0
    done = capsys.readouterr().out
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(train_argv(shards.path, tmp_path, "--max_steps", "2", "--resume")) == 0
    out = capsys.readouterr().out
    train_loss = done.split("train loss ")[1].split(",")[0]
    val_loss = done.split("val loss ")[1].split(",")[0]
    assert "already complete" in out and "step 2 = max_steps" in out
    assert f"train loss {train_loss}" in out and f"val loss {val_loss}" in out and "nan" not in out
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files  # nothing rewritten
    assert main(train_argv(shards.path, tmp_path, "--max_steps", "1", "--resume")) == 2
    err = capsys.readouterr().err
    assert "is at step 2, past max_steps 1; raise --max_steps to train further" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_an_interrupted_run_says_what_resume_continues_from(shards, tmp_path, capsys, monkeypatch):  # noqa: F811
    def interrupted(cfg, resume=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    assert main(train_argv(shards.path, tmp_path, "--max_steps", "9")) == 130
    err = capsys.readouterr().err
    assert "interrupted before the run saved a checkpoint, so --resume would start over; set --ckpt_every" in err
    newest = tmp_path / "checkpoints" / "step-000004"
    newest.mkdir(parents=True)
    (newest / "trainer_state.json").write_text('{"step": 4}')
    assert main(train_argv(shards.path, tmp_path, "--max_steps", "9", "--resume")) == 130
    assert f"interrupted; --resume continues from {newest}" in capsys.readouterr().err


def test_tokens_per_s_counts_the_training_steps_only(shards, tmp_path, monkeypatch):  # noqa: F811
    pause = 1.5  # seconds each eval and the plot take here; 2 steps of this model take far less
    evaluate, plot = loop.evaluate, loop.plot_loss_curves

    def slow_evaluate(*a, **kw):
        time.sleep(pause)
        return evaluate(*a, **kw)

    def slow_plot(*a, **kw):
        time.sleep(pause)
        return plot(*a, **kw)

    monkeypatch.setattr(loop, "evaluate", slow_evaluate)
    monkeypatch.setattr(loop, "plot_loss_curves", slow_plot)
    cfg = cfg_for(shards, tmp_path, max_steps=2, eval_every=1)
    result = train(cfg, log=quiet)
    assert result.tokens_per_s > 2 * cfg.tokens_per_step / pause  # the pauses (>= 3 pause) are not counted
    resumed = train(cfg_for(shards, tmp_path, max_steps=3, eval_every=1), resume=True, log=quiet)
    assert resumed.steps == 3 and resumed.tokens_per_s > cfg.tokens_per_step / pause


def test_help_lists_every_run_key_with_its_default_and_the_presets(capsys):
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert set(FIELD_DOCS) == set(names)  # a new field without a doc fails here
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for name in names:
        if name != "model":
            assert f"--{name} " in out, name
    assert "(default 1000)" in out and "model keys (--model.KEY VALUE): vocab_size" in out
    assert "presets: tiny-cpu, gpt2-small" in out


def test_an_unknown_key_names_the_close_ones_or_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"has no field 'lrr'; did you mean --lr\?"):
        build_config(overrides={"lrr": "1"})
    with pytest.raises(ConfigError, match=r"did you mean --model.num_layers"):
        build_config(overrides={"model.num_layer": "1"})
    with pytest.raises(ConfigError, match=r"has no field 'zzzz'; valid run keys: data, out, .*max_steps"):
        build_config(overrides={"zzzz": "1"})


def test_a_directory_as_config_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="is a directory; pass a TOML file to --config"):
        build_config(file=tmp_path)
    assert main(["train", "--config", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "is a directory; pass a TOML file" in capsys.readouterr().err


def test_a_built_in_corpus_must_be_the_only_input(tmp_path):
    (tmp_path / "a.txt").write_text("text\n")
    with pytest.raises(CorpusError, match="the built-in corpus shakespeare must be the only input"):
        resolve_corpus(["shakespeare", tmp_path / "a.txt"])


def test_a_trained_checkpoint_stops_at_the_shards_eos(shards, tmp_path, capsys):  # noqa: F811
    """config.json had eos_token_id null, so `llmlab generate`, Transformer.generate and transformers' generate never
    stopped at <|endoftext|> (the separator the model was trained on) while LLM/chat did (they add the tokenizer's)."""
    import json

    from llmlab import from_pretrained

    assert main(train_argv(shards.path, tmp_path / "run", "--max_steps", "1")) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step-000001"
    assert json.loads((ckpt / "config.json").read_text())["eos_token_id"] == shards.eos_id
    assert from_pretrained(ckpt).cfg.eos_token_id == shards.eos_id
    assert build_config(preset="tiny-cpu", overrides={"model.eos_token_id": "3"}, default_vocab_size=shards.vocab_size,
                        default_eos_token_id=shards.eos_id).model.eos_token_id == 3  # an explicit one wins

    # a run written before (eos_token_id null in its trainer state) still resumes
    state_file = ckpt / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["config"]["model"]["eos_token_id"] = None
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(train_argv(shards.path, tmp_path / "run", "--max_steps", "2", "--resume")) == 0
    assert "done: 2 steps" in capsys.readouterr().out
