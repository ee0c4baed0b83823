"""`llmlab estimate`: tables, --json, --explain with substituted numbers, and one-line errors."""

from __future__ import annotations

import json

import pytest

from llmlab.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["estimate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_params_table_and_json(capsys):
    code, out, _ = run(capsys, "params", "gpt3-175b")
    assert code == 0 and "174,604,259,328" in out and "attention (all layers)" in out
    code, out, _ = run(capsys, "params", "llama2-7b", "--json")
    assert json.loads(out)["params"]["total"] == 6_738_415_616


def test_model_as_a_flag_is_the_same_as_positional(capsys):
    assert run(capsys, "params", "--model", "gpt2", "--json") == run(capsys, "params", "gpt2", "--json")


def test_infer_memory_explain_substitutes_numbers(capsys):
    code, out, _ = run(capsys, "infer-memory", "llama-7b", "--batch", "4", "--context", "2048", "--weights", "fp16",
                       "--kv-dtype", "fp16", "--gpu", "A100-40GB", "--explain")
    assert code == 0
    assert "2 · bytes · layers · batch · context · kv_heads · head_dim" in out
    assert "2 · 2 · 32 · 4 · 2048 · 32 · 128" in out and "4.00 GiB" in out
    assert "largest batch at context 2048 on A100-40GB" in out and "decode ceiling" in out


def test_time_and_flops(capsys):
    code, out, _ = run(capsys, "time", "gpt3-175b", "--tokens", "300B", "--gpu", "A100", "--n-gpus", "1000",
                       "--mfu", "0.3", "--json")
    assert code == 0 and 38.5 < json.loads(out)["seconds"] / 86400 < 39.5
    code, out, _ = run(capsys, "flops", "gpt3-175b", "--tokens", "3e11", "--explain")
    assert code == 0 and "6 · 174,604,259,328 · 3e+11" in out and "3.143e+23 FLOP" in out


def test_train_memory(capsys):
    code, out, _ = run(capsys, "train-memory", "llama2-7b", "--seq-len", "4096", "--zero", "3", "--dp", "8",
                       "--recompute", "full", "--gpu", "H100", "--json")
    data = json.loads(out)
    assert code == 0 and data["model_states"] == pytest.approx(16 * 6_738_415_616 / 8)
    code, out, _ = run(capsys, "train-memory", "gpt3-175b", "--activations", "megatron", "--no-flash", "--explain")
    assert code == 0 and "5as²b" in out


def test_gpus_table(capsys):
    code, out, _ = run(capsys, "gpus")
    assert code == 0 and "H100-SXM" in out and "989.5" in out


def test_l40s_peaks_are_the_datasheets_dense_figures():
    from llmlab.estimate.hardware import GPUS

    # the datasheet prints dense BF16 362.05 beside 733 with sparsity; 733 / 2 = 366.5 overstated it
    assert {k: GPUS["L40S"].tflops[k] for k in ("tf32", "bf16", "fp16", "fp8")} == \
        {"tf32": 183, "bf16": 362.05, "fp16": 362.05, "fp8": 733}


@pytest.mark.parametrize("argv,message", [
    (["time", "gpt2", "--tokens", "1e9", "--gpu", "B300"], "unknown GPU 'B300'; known GPUs: A100-40GB"),
    (["params", "llama-9000b"], "neither a preset nor an existing file"),
    (["train-memory", "gpt2", "--tp", "2"], "use the megatron formula"),
    (["params"], "needs one model"),
    (["params", ""], "needs one model"),  # was 'cannot estimate from a NoneType: pass a ModelConfig, ...'
    (["params", "--model", ""], "needs one model"),
    (["params", "gpt2", "--model", "gpt2-xl"], "two models given"),
])
def test_errors_are_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_heads_not_dividing_hidden_is_a_clear_error(capsys, tmp_path):
    bad = {"model_type": "llama", "vocab_size": 10, "hidden_size": 30, "intermediate_size": 8,
           "num_hidden_layers": 1, "num_attention_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps(bad))
    code, _, err = run(capsys, "params", str(tmp_path))
    assert code == 2 and "hidden_size 30 is not divisible by num_heads 4" in err


def test_gpu_from_driver_reported_names():
    from llmlab.estimate.hardware import gpu_from_device_name

    assert gpu_from_device_name("NVIDIA H100 80GB HBM3").name == "H100-SXM"
    assert gpu_from_device_name("NVIDIA H100 PCIe").name == "H100-PCIe"
    assert gpu_from_device_name("NVIDIA A100-SXM4-40GB").name == "A100-40GB"
    assert gpu_from_device_name("NVIDIA A10").name == "A10"
    assert gpu_from_device_name("NVIDIA L4").name == "L4"
    assert gpu_from_device_name("NVIDIA GeForce RTX 4090").name == "RTX-4090"
    assert gpu_from_device_name("Some Future Accelerator") is None


def test_a_weights_file_in_place_of_config_json_is_a_clear_error(capsys, tmp_path):
    """A model.safetensors given where config.json belongs raised a raw UnicodeDecodeError traceback."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(4, 4)}, str(tmp_path / "model.safetensors"))
    code, _, err = run(capsys, "params", str(tmp_path / "model.safetensors"))
    assert code == 2 and "is not a text file, so not a config.json" in err and "Traceback" not in err


def _substituted(numbers: str) -> float | None:
    """The value of a step's substituted formula, or None when it abbreviates ('max(...)', '...')."""
    if not numbers or "..." in numbers:
        return None
    return eval(numbers.replace("·", "*").replace(",", "").replace("²", "**2"), {"__builtins__": {}})


@pytest.mark.parametrize("argv", [
    # training per token printed '= 6N = 1.048e+12' above its value 1.076e+12
    ["flops", "gpt3-175b", "--tokens", "300B"],
    ["flops", "llama-7b", "--tokens-per-s", "3000", "--gpu", "A100", "--n-gpus", "8"],
    ["train-memory", "llama-7b", "--seq-len", "2048", "--zero", "3", "--dp", "8"],
    # parameters printed '= 174,604,259,328 / (8 · 8)' then '= 174,604,259,328'
    ["train-memory", "gpt3-175b", "--activations", "megatron", "--tp", "8", "--pp", "8", "--dp", "16", "--zero", "1"],
    ["infer-memory", "llama-7b", "--batch", "4", "--context", "2048", "--gpu", "A100-40GB"],
    ["time", "gpt3-175b", "--tokens", "300B", "--gpu", "A100", "--n-gpus", "1000", "--mfu", "0.3"],
    ["flops", "mistral-7b", "--tokens", "1T"],  # the sliding window in every formula
    ["time", "llama2-7b", "--tokens", "2T", "--gpu", "L4", "--batch", "4", "--context", "4096"],
])
def test_explain_substitutions_equal_their_values(capsys, argv):
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    for step in json.loads(out)["steps"]:
        value = _substituted(step["numbers"])
        assert value is None or value == pytest.approx(step["value"], rel=1e-3), step


@pytest.mark.parametrize("batch", [3, 4, 5, 6])
def test_time_shows_a_decode_ceiling_only_for_a_batch_infer_memory_says_fits(capsys, batch):
    """`time` showed 61.95 tok/s for llama2-7b at batch 5 on an L4, a batch that infer-memory says does not fit:
    it tested weights + KV only. Both now use inference_memory's total + overhead."""
    common = ["llama2-7b", "--gpu", "L4", "--batch", str(batch), "--context", "4096", "--json"]
    code, out, _ = run(capsys, "infer-memory", *common)
    fits = json.loads(out)["fits"]
    code, out, err = run(capsys, "time", "--tokens", "2T", *common)
    steps = {s["name"]: s for s in json.loads(out)["steps"]}
    assert code == 0 and steps[f"decode batch {batch} at context 4096 fits L4 (24 GiB)?"]["value"] == float(fits)
    assert (f"decode ceiling, batch {batch} at context 4096" in steps) == fits
    assert ("does not fit one L4" in err) == (not fits)
    assert json.loads(run(capsys, "infer-memory", *common[:-1], "--batch", "4", "--json")[1])["fits"]  # 4 fits, 5 not
    assert not json.loads(run(capsys, "infer-memory", *common[:-1], "--batch", "5", "--json")[1])["fits"]


@pytest.mark.parametrize("argv", [
    ["train-memory", "llama2-7b", "--gpu", "A100"], ["train-memory", "smollm2-135m", "--gpu", "A100"],
    ["infer-memory", "llama2-7b", "--gpu", "T4"], ["infer-memory", "llama2-7b", "--gpu", "A100"],
    ["time", "llama2-7b", "--tokens", "1T", "--gpu", "A100"],
])
def test_fits_rows_say_yes_or_no(capsys, argv):
    code, out, _ = run(capsys, *argv)
    rows = [line for line in out.splitlines() if line.startswith(("fits", "decode batch"))]
    assert code == 0 and len(rows) == 1 and rows[0].split()[-1] in ("yes", "no"), rows


def test_gpu_flag_takes_driver_reported_names(capsys):
    code, out, _ = run(capsys, "infer-memory", "llama2-7b", "--gpu", "NVIDIA A100 80GB PCIe")
    assert code == 0 and "fits A100-80GB-PCIe (80 GiB)" in out
    code, _, err = run(capsys, "infer-memory", "llama2-7b", "--gpu", "NVIDIA H100 NVL")
    assert code == 2 and "is none of the table's H100 entries (H100-SXM, H100-PCIe)" in err
