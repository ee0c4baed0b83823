"""Every checkpoint problem is one clear CheckpointError naming the file (and tensor); the CLI shows it
as one line without a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import randomize_
from safetensors.torch import load_file, save_file

import llmlab
from llmlab import ModelConfig, Transformer
from llmlab.errors import CheckpointError

CFG = ModelConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=48, model_type="llama")


@pytest.fixture
def saved(tmp_path):
    d = tmp_path / "ckpt"
    Transformer(CFG).save_pretrained(d)
    return d


def test_saved_llama_config_is_hf_shaped(saved):
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]


def test_llmlab_only_variants_round_trip_as_llmlab_configs(tmp_path):
    cfg = CFG.replace(position="alibi", norm_position="post", model_type="llmlab")
    model = Transformer(cfg).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llmlab"
    again = llmlab.from_pretrained(tmp_path)
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="nope does not exist.*smollm2-135m"):
        llmlab.from_pretrained(tmp_path / "nope")


def test_missing_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json; a Hugging Face model directory needs one.$"):
        llmlab.from_pretrained(saved)


def test_a_training_run_given_as_a_model_names_its_newest_checkpoint(saved, tmp_path):
    import shutil

    run = tmp_path / "run"
    for step in ("step-000020", "step-000100", "step-1000000"):
        shutil.copytree(saved, run / "checkpoints" / step)
    (run / "checkpoints" / "step-2000000").mkdir()  # no config.json: not a checkpoint (a save in progress)
    newest = run / "checkpoints" / "step-1000000"
    for given in (run, run / "checkpoints"):
        with pytest.raises(CheckpointError, match=re.escape(f"(this looks like a training run: pass a checkpoint, "
                                                            f"the newest is {newest})")):
            llmlab.from_pretrained(given)


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        llmlab.from_pretrained(saved)


def test_pickle_weights_are_refused(saved):
    (saved / "model.safetensors").unlink()
    (saved / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(CheckpointError, match="never loads"):
        llmlab.from_pretrained(saved)


def test_wrong_model_type(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["model_type"] = "bert"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'bert' is not supported"):
        llmlab.from_pretrained(saved)


def test_shape_mismatch_names_file_and_tensor(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError,
                       match=r"model.safetensors: tensor model.layers.0.mlp.down_proj.weight has shape \(32, 48\) but config.json gives \(32, 64\)"):
        llmlab.from_pretrained(saved)


def test_missing_tensor(saved):
    f = saved / "model.safetensors"
    state = load_file(f)
    del state["model.layers.1.self_attn.v_proj.weight"]
    save_file(state, f)
    with pytest.raises(CheckpointError, match="missing 1 tensor.*blocks.1.attn.v.weight"):
        llmlab.from_pretrained(saved)


def test_unexpected_tensor(saved):
    f = saved / "model.safetensors"
    state = load_file(f)
    state["model.layers.9.self_attn.q_proj.weight"] = torch.zeros(1)
    save_file(state, f)
    with pytest.raises(CheckpointError, match="tensor model.layers.9.self_attn.q_proj.weight has no place"):
        llmlab.from_pretrained(saved)


def test_corrupt_safetensors(saved):
    (saved / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        llmlab.from_pretrained(saved)


def test_invalid_json_config(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        llmlab.from_pretrained(saved)


def test_cli_prints_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llmlab", "generate", "--model", str(tmp_path / "none"), "--ids", "1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--ids", "1,2", "--max-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--prompt", ""], "the prompt is empty"),
    (["--ids", ","], "--ids holds no token ids"),
    (["--ids", "1", "--temperature", "1", "--top-p", "0"], "top_p must be in"),
    (["--ids", "1", "--temperature", "1", "--top-k", "0"], "--top-k must be at least 1"),
    (["--ids", "1", "--temperature", "-0.5"], "--temperature must be a finite number >= 0 (0 is greedy), got -0.5"),
    (["--ids", "1", "--temperature", "inf"], "--temperature must be a finite number >= 0 (0 is greedy), got inf"),
    (["--ids", "1,2", "--max-new-tokens", "100000"], "a prompt of 2 tokens plus 100000 new ones is beyond the model's"),
    (["--ids", "1,99"], "prompt token 99 is not an id in this model's vocabulary (0..49)"),
])
def test_cli_generate_bad_input_is_one_line(saved, args, message):
    proc = subprocess.run([sys.executable, "-m", "llmlab", "generate", "--model", str(saved), *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_cli_generate_from_ids(saved):
    proc = subprocess.run([sys.executable, "-m", "llmlab", "generate", "--model", str(saved), "--ids", "1,2,3",
                           "--max-new-tokens", "4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()[0].split(",")) == 4


def test_cli_generate_prints_text_without_the_eos_token_and_says_it_stopped(tmp_path, capsys):
    from llmlab.cli import main
    from llmlab.tokenizer import train_bpe

    (tmp_path / "text.txt").write_text("the cat sat on the mat\n" * 20)
    tok = train_bpe([tmp_path / "text.txt"], vocab_size=270, progress=False)
    first = tok.encode("the")[0]
    model = Transformer(CFG.replace(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, tie_word_embeddings=False))
    with torch.no_grad():  # blocks add nothing, so the head sees the prompt's embedding: EOS wins after "the"
        for block in model.blocks:
            block.attn.o.weight.zero_()
            block.ffn.down.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_id] = model.embed.weight[first]
    model.save_pretrained(tmp_path / "m")
    tok.save(tmp_path / "m")
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "the"]) == 0
    text, stats = out_and_stats(capsys)
    assert text == "" and stats.startswith("[1 tokens in") and stats.endswith("; stopped at EOS]")
    assert main(["generate", "--model", str(tmp_path / "m"), "--ids", str(first)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(tok.eos_id)  # ids show every token


def out_and_stats(capsys) -> tuple[str, str]:
    """generate's text (stdout, alone: `> out.txt` keeps only it) and its stats line (stderr)."""
    captured = capsys.readouterr()
    (text,) = captured.out.splitlines() or [""]
    return text, captured.err.strip().splitlines()[-1]


def test_cli_generate_runs_the_engine_with_the_models_greedy_tokens(tmp_path, capsys, monkeypatch):
    """`llmlab generate` decodes through the engine (as `llmlab chat` does) and continues as the model's own
    generate would; seeded sampling repeats; an ALiBi model, which the engine refuses, runs the model's generate
    and the stats line says so."""
    import llmlab.engine.llm as engine_llm
    from llmlab.cli import main

    engines = []

    class Recorded(engine_llm.LLM):
        def __init__(self, *a, **k):
            engines.append(k)
            super().__init__(*a, **k)

    monkeypatch.setattr(engine_llm, "LLM", Recorded)
    torch.manual_seed(0)
    model = randomize_(Transformer(CFG.replace(eos_token_id=None)), std=0.5)
    model.save_pretrained(tmp_path / "rope")
    want = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=12)[0, 3:].tolist()
    assert main(["generate", "--model", str(tmp_path / "rope"), "--ids", "1,2,3", "--max-new-tokens", "12"]) == 0
    ids, stats = out_and_stats(capsys)
    assert [int(i) for i in ids.split(",")] == want
    assert stats.startswith("[12 tokens in") and "own generate" not in stats
    assert len(engines) == 1 and engines[0]["max_num_seqs"] == 1 and engines[0]["max_model_len"] == 15
    sampled = []
    for seed in (7, 7, 8):
        assert main(["generate", "--model", str(tmp_path / "rope"), "--ids", "1,2,3", "--temperature", "1",
                     "--seed", str(seed), "--top-k", "20", "--max-new-tokens", "12"]) == 0
        sampled.append(capsys.readouterr().out.splitlines()[0])
    assert sampled[0] == sampled[1] != sampled[2] and sampled[0] != ids and len(engines) == 4

    alibi = Transformer(CFG.replace(model_type="llmlab", position="alibi", eos_token_id=None))
    alibi.save_pretrained(tmp_path / "alibi")
    want = alibi.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5)[0, 3:].tolist()
    assert main(["generate", "--model", str(tmp_path / "alibi"), "--ids", "1,2,3", "--max-new-tokens", "5"]) == 0
    ids, stats = out_and_stats(capsys)
    assert [int(i) for i in ids.split(",")] == want and "the model's own generate (the engine has no ALiBi)" in stats
    assert len(engines) == 4


def test_cli_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "llmlab", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "generate" in proc.stdout


def test_cli_generate_prompt_without_a_tokenizer_points_at_ids(saved, capsys):
    from llmlab.cli import main

    assert main(["generate", "--model", str(saved), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prompt needs the model's tokenizer" in err and "with --ids instead" in err


def test_cli_paths_the_os_refuses_are_one_line(tmp_path, capsys):
    from llmlab.cli import main

    a_file = tmp_path / "corpus.txt"
    a_file.write_text("x")
    assert main(["tokenizer", "train", "--input", str(a_file), "--vocab-size", "260", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{a_file} is a file; pass a new or existing directory" in err  # before training


def test_cli_without_a_command_is_a_usage_error_and_has_a_version(capsys):
    from llmlab import __version__
    from llmlab.cli import main

    assert main([]) == 2 and "usage: llmlab" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"llmlab {__version__}"


def test_cli_generate_refuses_sampling_options_when_greedy(saved, capsys):
    from llmlab.cli import main

    assert main(["generate", "--model", str(saved), "--ids", "1,2", "--top-k", "5"]) == 2
    assert "set --temperature > 0 to sample" in capsys.readouterr().err
    assert main(["generate", "--model", str(saved), "--ids", "1,2", "--top-k", "5", "--temperature", "0.8",
                 "--max-new-tokens", "2"]) == 0


def test_cli_model_names_list_models_only(tmp_path, capsys):
    from llmlab.cli import main

    assert main(["generate", "--model", str(tmp_path / "nope"), "--ids", "1"]) == 2
    err = capsys.readouterr().err
    assert "one of: smollm2-135m." in err and "tiktoken" not in err and "shakespeare" not in err
