"""Edges a user audit of tokenizer train / data prepare / train met: init_from a GGUF with another tokenizer's
shards, copies beside the checkpoints, a checkpoint directory that cannot be written (before training, and a save
that fails after it), bare yes/no flags, a resume with another tokenizer's shards, the end-of-text token of a
trained tokenizer, a preset with init_from, --resume without a checkpoint, the loader's last window, a local
directory named like a built-in corpus, and smaller notes (tokens/s without the first step, a torn
model.safetensors, blank tokenizer input, CUDA-only attention backends, TOML key suggestions)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_train_loop import TEXT, cfg_for
from test_train_resume_edges import copy_run, finished, two_shards  # noqa: F401 (fixtures)

from llmlab.cli import main
from llmlab.data.corpora import CorpusError, resolve_corpus
from llmlab.data.loader import TokenLoader
from llmlab.data.shards import prepare_shards
from llmlab.errors import CheckpointError, ConfigError, TokenizerError
from llmlab.tokenizer import train_bpe
from llmlab.train import checkpoint as ckpt_mod
from llmlab.train import loop as loop_mod
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.cli import parse_overrides
from llmlab.train.config import TrainConfig, build_config
from llmlab.train.loop import train


def quiet(*_):
    pass


def write_gguf(tokenizer_dir, path):
    """A llama GGUF's metadata (no tensors) with the vocabulary of the tokenizer.json in `tokenizer_dir`."""
    gguf = pytest.importorskip("gguf")
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    added = {t["id"]: t["content"] for t in spec["added_tokens"]}
    n = max(len(vocab), max(added) + 1)
    tokens = [None] * n
    for text, i in vocab.items():
        tokens[i] = text
    for i, text in added.items():
        tokens[i] = text
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in {"vocab_size": n, "embedding_length": 32, "block_count": 1, "feed_forward_length": 64,
                       "attention.head_count": 4, "attention.head_count_kv": 2, "context_length": 64}.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in added else 1 for i in range(n)])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    w.add_eos_token_id(min(added))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_init_from_a_gguf_compares_its_vocabulary_with_the_shards(two_shards, tmp_path):  # noqa: F811
    a, b = two_shards
    gguf_a = write_gguf(a.path, tmp_path / "a.gguf")
    assert ckpt_mod.same_vocabulary(gguf_a, a.path) is True
    assert ckpt_mod.same_vocabulary(gguf_a, b.path) is False
    cfg = build_config(overrides={"data": str(b.path), "out": str(tmp_path / "ft"), "init_from": str(gguf_a),
                                  "seq_len": "32", "max_steps": "2", "progress": "false"})
    with pytest.raises(ConfigError, match="another tokenizer than init_from"):
        train(cfg, log=quiet)
    assert not (tmp_path / "ft" / "metrics.jsonl").exists()


def test_copies_beside_the_checkpoints_are_neither_resumed_nor_pruned(two_shards, finished, tmp_path):  # noqa: F811
    run = copy_run(finished, tmp_path)
    root = run / "checkpoints"
    newest = latest_checkpoint(root)
    copies = [root / f"{newest.name}.bak", root / "step-best", root / "step-000004-keep"]
    for c in copies:
        shutil.copytree(newest, c)
    assert latest_checkpoint(root) == newest
    train(cfg_for(two_shards[0], run, max_steps=11, ckpt_every=1), resume=True, log=quiet)
    assert latest_checkpoint(root).name == "step-000011"
    assert all(c.is_dir() for c in copies)  # the user's copies are kept
    assert sorted(d.name for d in root.glob("step-0*") if d not in copies) == ["step-000010", "step-000011"]


def test_a_checkpoint_directory_that_cannot_be_written_is_refused_before_training(two_shards, tmp_path):  # noqa: F811
    (tmp_path / "checkpoints").write_text("not a directory")
    with pytest.raises(ConfigError, match="checkpoints cannot be written under"):
        train(cfg_for(two_shards[0], tmp_path), log=quiet)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained


def test_a_save_that_fails_after_training_keeps_the_checkpoint_elsewhere(two_shards, tmp_path,  # noqa: F811
                                                                         monkeypatch):
    real = loop_mod.save_checkpoint
    out = tmp_path / "run"

    def full_disk(root, *a, **kw):
        if root == out / "checkpoints":
            raise OSError(28, "No space left on device")
        return real(root, *a, **kw)

    monkeypatch.setattr(loop_mod, "save_checkpoint", full_disk)
    with pytest.raises(CheckpointError, match="could not be written under .*No space left on device.*saved to") as e:
        train(cfg_for(two_shards[0], out), log=quiet)
    rescued = e.value.args[0].split("saved to ")[1].split(" instead")[0]
    assert ckpt_mod.read_trainer_state(rescued)["step"] == 8
    # moved into place, the run resumes from it as complete
    monkeypatch.setattr(loop_mod, "save_checkpoint", real)
    shutil.move(rescued, out / "checkpoints" / "step-000008")
    assert train(cfg_for(two_shards[0], out), resume=True, log=quiet).already_complete


def test_yes_no_keys_can_be_given_bare_and_a_missing_value_names_the_next_argument():
    assert parse_overrides(["--compile", "--max_steps", "2"]) == {"compile": "true", "max_steps": "2"}
    assert parse_overrides(["--max_steps", "2", "--activation-checkpointing"]) == {
        "max_steps": "2", "activation-checkpointing": "true"}
    assert parse_overrides(["--progress", "false"]) == {"progress": "false"}
    with pytest.raises(ConfigError, match=r"--lr needs a value \(the next argument is --max_steps\)"):
        parse_overrides(["--lr", "--max_steps", "2"])
    with pytest.raises(ConfigError, match="--resume takes no value"):
        parse_overrides(["true"])


@pytest.fixture(scope="module")
def other_vocab_shards(tmp_path_factory):
    """Shards of the same text by a tokenizer of another vocabulary size."""
    d = tmp_path_factory.mktemp("corpus-other")
    (d / "doc.txt").write_text(TEXT * 3)
    corpus = resolve_corpus([d])
    tok = train_bpe(corpus.files, vocab_size=300, progress=False)
    return prepare_shards(corpus, tok, tmp_path_factory.mktemp("other"), val_fraction=0.1, progress=False)


def test_resuming_with_another_tokenizers_shards_names_the_tokenizer(finished, other_vocab_shards,  # noqa: F811
                                                                     tmp_path):
    run = copy_run(finished, tmp_path)
    with pytest.raises(ConfigError, match="made with another tokenizer than the one"):
        train(cfg_for(other_vocab_shards, run, max_steps=10), resume=True, log=quiet)


def test_tokenizer_train_says_which_token_ends_documents(tmp_path, capsys):
    (tmp_path / "doc.txt").write_text(TEXT)
    argv = ["tokenizer", "train", "--input", str(tmp_path / "doc.txt"), "--vocab-size", "280"]
    assert main([*argv, "--out", str(tmp_path / "t"), "--special-tokens", "<pad>", "</s>"]) == 0
    assert "end-of-text token (BOS/EOS/PAD, the first of --special-tokens): <pad>" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "none"), "--special-tokens"]) == 0
    assert "no end-of-text token" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--help"])
    assert "the first is the end-of-text token" in " ".join(capsys.readouterr().out.split())


def test_a_preset_with_init_from_gives_its_run_keys_and_the_checkpoints_model(two_shards, finished,  # noqa: F811
                                                                              tmp_path):
    ckpt = latest_checkpoint(finished / "checkpoints")
    base = {"data": str(two_shards[0].path), "out": str(tmp_path / "ft"), "init_from": str(ckpt), "seq_len": "32"}
    cfg = build_config(preset="tiny-cpu", overrides=base)
    saved = build_config(overrides=base).model
    assert cfg.model == saved and cfg.lr == 3e-3  # the preset's lr, the checkpoint's model (not 192 wide)
    with pytest.raises(ConfigError, match="model.hidden_size=192"):  # a model key the user gives still counts
        build_config(preset="tiny-cpu", overrides={**base, "model.hidden_size": "192"})
    with pytest.raises(ConfigError, match=r"shorten seq_len to at most 64 \(init_from's checkpoint fixes"):
        TrainConfig(init_from=str(ckpt), seq_len=128, model=saved).validate()


def test_resume_without_a_checkpoint_says_it_is_a_new_run(two_shards, tmp_path):  # noqa: F811
    notes = []
    result = train(cfg_for(two_shards[0], tmp_path / "typo", max_steps=2), resume=True, log=notes.append)
    assert result.steps == 2
    assert any("found no complete checkpoint" in n and "new run from step 0" in n for n in notes)


class _Shards:
    def __init__(self, n: int):
        self.data = np.arange(n, dtype=np.uint16)

    def tokens(self, split):
        return self.data


def test_the_loader_takes_a_split_of_exactly_one_window_and_its_last_token_as_a_target():
    x, y = TokenLoader(_Shards(11), batch_size=2, seq_len=10).next_batch()
    assert x.tolist() == [list(range(10))] * 2 and y.tolist() == [list(range(1, 11))] * 2
    loader = TokenLoader(_Shards(12), batch_size=4, seq_len=10)
    last = {int(loader.next_batch()[1][:, -1].max()) for _ in range(10)}
    assert last == {11}  # window 1..11 is drawn: the split's last token is a target
    with pytest.raises(Exception, match="10 tokens, too few for windows of 10 \\+ 1"):
        TokenLoader(_Shards(10), batch_size=1, seq_len=10)


def test_a_local_directory_named_like_a_built_in_corpus_is_said_to_be_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shakespeare").mkdir()
    (tmp_path / "shakespeare" / "meta.json").write_text("{}")  # e.g. shards written with --out shakespeare
    with pytest.raises(CorpusError, match="read as the local path ./shakespeare, not as the built-in corpus"):
        resolve_corpus("shakespeare")


def test_tokens_per_s_leaves_out_the_first_step(two_shards, tmp_path, monkeypatch):  # noqa: F811
    import time

    real, calls = loop_mod.train_step, []

    def slow_first(*a, **kw):  # a compile or warm-up on the first step
        calls.append(1)
        if len(calls) == 1:
            time.sleep(2.0)
        return real(*a, **kw)

    monkeypatch.setattr(loop_mod, "train_step", slow_first)
    cfg = cfg_for(two_shards[0], tmp_path, max_steps=3, eval_every=0)
    result = train(cfg, log=quiet)
    assert result.tokens_per_s > 3 * cfg.tokens_per_step  # 2 steps in under 0.67 s; with the first: < 1.5 a s


def test_a_torn_model_file_says_how_to_resume(finished, two_shards, tmp_path):  # noqa: F811
    run = copy_run(finished, tmp_path)
    f = latest_checkpoint(run / "checkpoints") / "model.safetensors"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="the checkpoint is damaged: delete .* to resume from the one before"):
        train(cfg_for(two_shards[0], run, max_steps=10), resume=True, log=quiet)


def test_tokenizer_training_on_blank_text_is_refused(tmp_path):
    (tmp_path / "blank.txt").write_text("   \n\n\t  \n")
    with pytest.raises(TokenizerError, match="has no text"):
        train_bpe([tmp_path / "blank.txt"], vocab_size=300, progress=False)


def test_a_cuda_attention_backend_on_the_cpu_is_noted(two_shards, tmp_path):  # noqa: F811
    notes = []
    train(cfg_for(two_shards[0], tmp_path, max_steps=1, attention_backend="flash"), log=notes.append)
    assert any("attention_backend flash is a CUDA kernel" in n for n in notes)


def test_an_unknown_key_in_a_config_file_names_the_close_one(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("lr = 0.001\n[model]\nnum_layer = 2\n")
    with pytest.raises(ConfigError, match="did you mean --model.num_layers"):
        build_config(file=f)


def test_one_document_and_one_step_read_as_singular(two_shards, tmp_path, capsys):  # noqa: F811
    (tmp_path / "doc.txt").write_text(TEXT)
    assert main(["data", "prepare", "--input", str(tmp_path / "doc.txt"), "--tokenizer", str(two_shards[0].path),
                 "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.startswith("1 document, ")
    assert main(["train", "--preset", "tiny-cpu", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "r"),
                 "--max_steps", "1", "--batch_size", "2", "--seq_len", "16", "--progress", "false",
                 "--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2",
                 "--model.intermediate_size", "64"]) == 0
    assert "done: 1 step, " in capsys.readouterr().out
