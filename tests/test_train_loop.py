"""The training loop: accumulation, overfitting, bitwise resume, kill-during-save, precisions,
recompute, transformers interop of trained checkpoints, and the errors raised before work starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from llmlab.data.corpora import resolve_corpus
from llmlab.data.loader import TokenLoader
from llmlab.data.shards import prepare_shards
from llmlab.errors import ConfigError
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import train_bpe
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.config import build_config
from llmlab.train.loop import accumulate_gradients, compiled_lm_loss, train
from llmlab.train.parallel import apply_activation_checkpointing
from llmlab.train.report import read_metrics

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife.\n") * 40


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (d / f"doc{i}.txt").write_text(TEXT)
    corpus = resolve_corpus([d])
    tok = train_bpe(corpus.files, vocab_size=320, progress=False)
    return prepare_shards(corpus, tok, tmp_path_factory.mktemp("shards"), val_fraction=0.1, progress=False)


def cfg_for(shards, out, **over):
    model = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}
    overrides = {"data": str(shards.path), "out": str(out), "batch_size": "4", "seq_len": "32", "max_steps": "8",
                 "warmup_steps": "2", "eval_every": "4", "eval_batches": "2", "log_every": "1", "progress": "false"}
    overrides.update({k: str(v) for k, v in over.items()})
    overrides.update({f"model.{k}": str(v) for k, v in model.items() if f"model.{k}" not in overrides})
    return build_config(preset=None, overrides=overrides, default_vocab_size=shards.vocab_size)


def losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


def test_gradient_accumulation_equals_big_batch(shards):
    torch.manual_seed(0)
    model = Transformer(cfg_for(shards, "/tmp/unused").model)
    loader = TokenLoader(shards, batch_size=6, seq_len=16, seed=1)
    x, y = loader.next_batch()
    accumulate_gradients(model, [(x, y)], device=torch.device("cpu"), precision="fp32")
    big = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    micro = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 6, 2)]
    accumulate_gradients(model, micro, device=torch.device("cpu"), precision="fp32")
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, big[n], atol=1e-6, rtol=1e-5), n


def test_activation_checkpointing_gives_the_same_gradients(shards):
    torch.manual_seed(0)
    a = Transformer(cfg_for(shards, "/tmp/unused").model)
    b = Transformer(a.cfg)
    b.load_state_dict(a.state_dict())
    apply_activation_checkpointing(b)
    x, y = TokenLoader(shards, batch_size=2, seq_len=16, seed=1).next_batch()
    for m in (a, b):
        accumulate_gradients(m, [(x, y)], device=torch.device("cpu"), precision="fp32")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_compiled_model_and_loss_give_the_same_loss_and_gradients(shards):
    """`compiled_lm_loss` (the path `compile = true` and benchmarks/train.py take) against the eager loss."""
    torch.manual_seed(0)
    a = Transformer(cfg_for(shards, "/tmp/unused").model)
    b = Transformer(a.cfg)
    b.load_state_dict(a.state_dict())
    # the training runs' batch shape (cfg_for): the next test's compile of the same graphs hits Inductor's caches
    x, y = TokenLoader(shards, batch_size=4, seq_len=32, seed=1).next_batch()
    cpu = torch.device("cpu")
    eager = accumulate_gradients(a, [(x, y)], device=cpu, precision="fp32")
    compiled = accumulate_gradients(b, [(x, y)], device=cpu, precision="fp32", loss_fn=compiled_lm_loss(b))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_compiled_training_follows_the_eager_run(shards, tmp_path):
    """`compile = true`: model + loss and clip + AdamW each one torch.compile'd graph; the losses of the
    first steps match the eager run's (the GPU benchmark's path, here on the CPU)."""
    for name, extra in (("eager", {}), ("compiled", {"compile": "true"})):
        train(cfg_for(shards, tmp_path / name, max_steps=5, eval_every=0, **extra), log=lambda *a: None)
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(compiled) == len(eager) == 5
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_loss_drops_on_a_tiny_overfit_set(shards, tmp_path):
    result = train(cfg_for(shards, tmp_path, max_steps=60, lr=1e-2, eval_every=0), log=lambda *a: None)
    curve = losses(tmp_path)
    assert curve[0] > 5.0 and curve[-1] < 1.0, (curve[0], curve[-1])
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    assert result.val_loss is not None and result.val_loss < 1.5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(shards, tmp_path, precision):
    train(cfg_for(shards, tmp_path, precision=precision, max_steps=12, lr=1e-2, eval_every=0), log=lambda *a: None)
    curve = losses(tmp_path)
    assert curve[-1] < curve[0] - 1.0
    state = json.loads((latest_checkpoint(tmp_path / "checkpoints") / "trainer_state.json").read_text())
    if precision == "fp16":
        assert state["scaler"]["scale"] > 1.0  # dynamic loss scaling was active
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    header = json.loads((ckpt / "config.json").read_text())
    assert header["torch_dtype"] == "float32"  # fp32 master weights are what gets saved


def test_resume_is_bitwise_identical_with_dropout(shards, tmp_path):
    full = tmp_path / "full"
    train(cfg_for(shards, full, **{"model.dropout": 0.1}), log=lambda *a: None)
    part = tmp_path / "part"
    train(cfg_for(shards, part, ckpt_every=3, keep_last=5, **{"model.dropout": 0.1}), log=lambda *a: None)
    # Simulate an interruption after step 3: drop everything written later, then resume in this process.
    for d in (part / "checkpoints").glob("step-*"):
        if d.name != "step-000003":
            import shutil

            shutil.rmtree(d)
    torch.manual_seed(12345)  # garbage global RNG state: the checkpoint must restore it
    train(cfg_for(shards, part, ckpt_every=3, keep_last=5, **{"model.dropout": 0.1}), resume=True,
          log=lambda *a: None)
    assert losses(part) == losses(full)  # bitwise: floats compared with ==
    a = latest_checkpoint(full / "checkpoints")
    b = latest_checkpoint(part / "checkpoints")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import llmlab.train.checkpoint as ck
    from llmlab.train.config import build_config
    from llmlab.train.loop import train
    real = ck._fsync
    def slow(path):
        if ".tmp-step-000004" in str(path):
            print("SAVING", flush=True)
            time.sleep(60)
        real(path)
    ck._fsync = slow
    overrides = dict(arg.split("=", 1) for arg in sys.argv[2:])
    train(build_config(overrides=overrides, default_vocab_size=int(sys.argv[1])), log=lambda *a: None)
""")


def test_kill_during_save_leaves_previous_checkpoint_resumable(shards, tmp_path):
    full = tmp_path / "full"
    train(cfg_for(shards, full), log=lambda *a: None)
    out = tmp_path / "killed"
    cfg = cfg_for(shards, out, ckpt_every=2, keep_last=3)
    args = [f"{k}={v}" for k, v in {
        "data": cfg.data, "out": cfg.out, "batch_size": 4, "seq_len": 32, "max_steps": 8, "warmup_steps": 2,
        "eval_every": 4, "eval_batches": 2, "log_every": 1, "progress": "false", "ckpt_every": 2, "keep_last": 3,
        **{f"model.{k}": getattr(cfg.model, k) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                                                           "num_kv_heads", "intermediate_size",
                                                           "max_position_embeddings")}}.items()]
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(shards.vocab_size), *args],
                            stdout=subprocess.PIPE, text=True)
    lines = (line.strip() for line in iter(proc.stdout.readline, ""))
    assert "SAVING" in lines, "the child never reached the step-4 save"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    root = out / "checkpoints"
    assert list(root.glob(".tmp-step-000004-*")), "the interrupted save should have left its temp dir"
    assert latest_checkpoint(root).name == "step-000002"
    train(cfg, resume=True, log=lambda *a: None)
    assert losses(out) == losses(full)
    assert not list(root.glob(".tmp-step-*")), "stale temp dirs are swept by the next save"


def test_only_the_last_k_checkpoints_are_kept(shards, tmp_path):
    train(cfg_for(shards, tmp_path, ckpt_every=2, keep_last=2, eval_every=0), log=lambda *a: None)
    assert sorted(d.name for d in (tmp_path / "checkpoints").iterdir()) == ["step-000006", "step-000008"]


def test_a_fresh_run_refuses_an_out_that_holds_checkpoints(shards, tmp_path):
    # the new run's checkpoints would be pruned by the older, higher-step ones, and --resume would find those
    train(cfg_for(shards, tmp_path, max_steps=4, eval_every=0), log=lambda *a: None)
    with pytest.raises(ConfigError, match="already holds a run's checkpoints.*--resume"):
        train(cfg_for(shards, tmp_path, max_steps=2, eval_every=0), log=lambda *a: None)
    assert sorted(d.name for d in (tmp_path / "checkpoints").iterdir()) == ["step-000004"]
    assert losses(tmp_path) and len(losses(tmp_path)) == 4  # the first run's metrics are untouched


def test_a_resume_with_changed_settings_says_which(shards, tmp_path):
    train(cfg_for(shards, tmp_path, max_steps=4, eval_every=0), log=lambda *a: None)
    notes = []
    train(cfg_for(shards, tmp_path, max_steps=6, eval_every=0, batch_size=2, lr=0.01), resume=True, log=notes.append)
    changed = [n for n in notes if "differ from the checkpoint's" in n]
    assert len(changed) == 1 and "batch_size 4 -> 2" in changed[0] and "max_steps 4 -> 6" in changed[0]
    assert "lr 0.003 -> 0.01" in changed[0] and "seq_len" not in changed[0]
    notes.clear()
    train(cfg_for(shards, tmp_path, max_steps=8, eval_every=0, batch_size=2, lr=0.01), resume=True, log=notes.append)
    assert [n for n in notes if "differ from the checkpoint's" in n] == [
        "note: this run's settings differ from the checkpoint's (max_steps 6 -> 8); training continues with this "
        "run's, so its losses will not match an uninterrupted run."]


def test_trained_checkpoint_loads_in_transformers(shards, tmp_path):
    transformers = pytest.importorskip("transformers")
    result = train(cfg_for(shards, tmp_path, max_steps=3, eval_every=0), log=lambda *a: None)
    from llmlab.model.pretrained import from_pretrained

    ours = from_pretrained(result.checkpoint)
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.checkpoint).eval()
    ids = torch.randint(0, shards.vocab_size, (2, 12))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() < 1e-5
    from llmlab.tokenizer import load_tokenizer

    tok = load_tokenizer(result.checkpoint)  # tokenizer.json + tokenizer_config.json travel with the weights
    assert tok.vocab_size == shards.vocab_size and tok.eos_id == shards.eos_id and tok.chat_template


def test_errors_before_any_work(shards, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        cfg_for(shards, tmp_path, lrr=0.1)
    with pytest.raises(ConfigError, match="unknown config key 'model.hidden'"):
        cfg_for(shards, tmp_path, **{"model.hidden": 3})
    with pytest.raises(ConfigError, match="seq_len 128 is above the model's context of 64"):
        cfg_for(shards, tmp_path, seq_len=128)
    with pytest.raises(ConfigError, match="shards' tokenizer has 320 tokens but model.vocab_size is 100"):
        train(cfg_for(shards, tmp_path, **{"model.vocab_size": 100}), log=lambda *a: None)
    with pytest.raises(ConfigError, match="--max_steps expects an int value"):
        cfg_for(shards, tmp_path, max_steps="many")
    assert not (tmp_path / "checkpoints").exists()


def test_cli_train_end_to_end(shards, tmp_path):
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "llmlab", "train", "--preset", "tiny-cpu", "--data", str(shards.path),
                           "--out", str(tmp_path), "--max_steps", "3", "--batch_size", "2", "--seq_len", "16",
                           "--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2",
                           "--model.num_kv_heads", "2", "--model.intermediate_size", "64",
                           "--model.max_position_embeddings", "32", "--progress", "false", "--eval_every", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "done: 3 steps" in proc.stdout and time.time() - t < 60
    bad = subprocess.run([sys.executable, "-m", "llmlab", "train", "--data", str(shards.path), "--bogus", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown config key 'bogus'" in bad.stderr and "Traceback" not in bad.stderr
    # a bad key is named even before the missing --data (fixing one error must not reveal the other next)
    bad = subprocess.run([sys.executable, "-m", "llmlab", "train", "--preset", "tiny-cpu", "--bogus", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown config key 'bogus'" in bad.stderr, bad.stderr
