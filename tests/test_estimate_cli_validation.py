"""`llmlab estimate`: bad flag values, ignored options and impossible setups are refused or noted.

Every refusal is one stderr line `llmlab estimate WHAT: error: ...` with exit status 2, given before
any estimate is printed; an option that changes nothing in the given setup gets a `note:` on stderr.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmlab import estimate
from llmlab.cli import main
from llmlab.errors import ConfigError


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["estimate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", (argv, out)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"llmlab estimate {argv[0]}: error: "), err
    assert message in err, err


@pytest.mark.parametrize("argv,message", [
    # a GPU count of 0 divided by zero, a negative one made a negative MFU
    (["flops", "gpt2", "--tokens-per-s", "1000", "--gpu", "A100", "--n-gpus", "0"], "--n-gpus must be at least 1, got 0"),
    (["flops", "gpt2", "--tokens-per-s", "1000", "--gpu", "A100", "--n-gpus", "-2"], "--n-gpus must be at least 1, got -2"),
    (["time", "gpt2", "--tokens", "1e9", "--gpu", "A100", "--n-gpus", "0"], "--n-gpus must be at least 1, got 0"),
    # 0 used to mean "the model's context"; negatives made negative FLOPs
    (["flops", "gpt2", "--seq-len", "0"], "--seq-len must be at least 1, got 0"),
    (["flops", "gpt2", "--seq-len", "-100"], "--seq-len must be at least 1, got -100"),
    (["infer-memory", "gpt2", "--context", "0"], "--context must be at least 1, got 0"),
    (["train-memory", "gpt2", "--seq-len", "0"], "--seq-len must be at least 1, got 0"),
    (["train-memory", "gpt2", "--seq-len", "-5"], "--seq-len must be at least 1, got -5"),
    (["train-memory", "gpt2", "--dp", "0"], "--dp must be at least 1, got 0"),
    # 0 silently dropped the training-run and MFU rows
    (["flops", "gpt2", "--tokens", "0"], "--tokens must be positive, got 0"),
    (["flops", "gpt2", "--tokens-per-s", "0", "--gpu", "A100"], "--tokens-per-s must be positive, got 0"),
    (["time", "gpt2", "--tokens", "0", "--gpu", "A100"], "--tokens must be positive, got 0"),
    (["time", "gpt2", "--tokens", "1e9", "--gpu", "A100", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["time", "gpt2", "--tokens", "1e9", "--gpu", "A100", "--context", "-5"], "--context must be at least 1, got -5"),
    (["time", "gpt2", "--tokens", "1e9", "--gpu", "A100", "--mfu", "0"], "--mfu is a fraction of the peak in (0, 1]"),
    (["infer-memory", "gpt2", "--batch", "0"], "--batch must be at least 1, got 0"),
])
def test_non_positive_values_are_refused(capsys, argv, message):
    refused(capsys, argv, message)


@pytest.mark.parametrize("extra,named", [
    (["--gpu", "A100"], "--gpu sets the peak for MFU"),
    (["--n-gpus", "8"], "--n-gpus sets the peak for MFU"),
    (["--gpu", "A100", "--n-gpus", "8", "--dtype", "fp16"], "--gpu, --n-gpus and --dtype set the peak for MFU"),
])
def test_mfu_options_without_a_throughput_are_refused(capsys, extra, named):
    refused(capsys, ["flops", "gpt2", *extra], named)
    _, _, err = run(capsys, "flops", "gpt2", *extra)
    assert "add --tokens-per-s" in err


def test_mfu_with_n_gpus_and_defaults(capsys):
    code, out, _ = run(capsys, "flops", "gpt2", "--tokens-per-s", "1e5", "--gpu", "A100", "--json")
    one = next(s["value"] for s in json.loads(out)["steps"] if s["name"] == "MFU")
    code2, out, _ = run(capsys, "flops", "gpt2", "--tokens-per-s", "1e5", "--gpu", "A100", "--n-gpus", "2", "--json")
    two = next(s["value"] for s in json.loads(out)["steps"] if s["name"] == "MFU")
    assert code == code2 == 0 and one == pytest.approx(2 * two)
    assert one == pytest.approx(1e5 * 6 * estimate.count_params("gpt2") / 312e12)


@pytest.mark.parametrize("tp", ["3", "64"])
def test_tensor_parallel_degree_must_split_the_heads(capsys, tp):
    refused(capsys, ["train-memory", "llama-7b", "--tp", tp, "--activations", "megatron"],
            f"tensor-parallel degree {tp} does not split this model evenly")
    _, _, err = run(capsys, "train-memory", "llama-7b", "--tp", tp, "--activations", "megatron")
    assert "attention heads (32)" in err and "choose tp from 1, 2, 4, 8, 16, 32." in err


def test_tensor_parallel_degree_must_split_the_kv_heads():
    # llama2-70b: 64 heads but 8 KV heads (query groups): tp 16 would split a KV head
    with pytest.raises(ConfigError, match=r"KV heads \(8\).*choose tp from 1, 2, 4, 8\."):
        estimate.training_memory("llama2-70b", tp=16, activations="megatron")
    assert estimate.training_memory("llama2-70b", tp=8, activations="megatron").total > 0


def test_llmlab_formula_error_names_the_flag(capsys):
    refused(capsys, ["train-memory", "gpt2", "--tp", "2"], "--activations megatron")


@pytest.mark.parametrize("argv,note", [
    (["train-memory", "llama-7b", "--zero", "3"],
     "note: --zero 3 shards model states across data-parallel ranks; with --dp 1 it changes nothing"),
    (["train-memory", "llama-7b", "--dp", "8"], "note: --dp 8 without --zero changes nothing per device"),
    (["train-memory", "llama-7b", "--activations", "megatron", "--sequence-parallel"],
     "note: --sequence-parallel splits activations across tensor-parallel ranks; with --tp 1 it changes nothing"),
])
def test_options_that_change_nothing_are_noted(capsys, argv, note):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0 and note in err
    json.loads(out)  # the note stays off stdout


def test_sharded_setups_have_no_note(capsys):
    code, _, err = run(capsys, "train-memory", "llama-7b", "--zero", "3", "--dp", "8")
    assert code == 0 and err == ""


def test_a_model_that_does_not_fit_gets_no_speed(capsys):
    code, out, err = run(capsys, "infer-memory", "gpt3-175b", "--gpu", "T4")
    assert code == 0 and "does not fit a T4 (16 GiB) even at batch 1" in err
    assert "decode ceiling" not in out and "largest batch" not in out
    code, out, err = run(capsys, "infer-memory", "gpt3-175b", "--gpu", "T4", "--json")
    data = json.loads(out)
    assert data["fits"] is False and data["max_batch"] == 0 and data["decode_tokens_per_s"] is None


def test_a_batch_that_does_not_fit_names_the_largest_that_does(capsys):
    code, out, err = run(capsys, "infer-memory", "llama-7b", "--gpu", "T4", "--batch", "64", "--json")
    data = json.loads(out)
    assert code == 0 and data["fits"] is False and data["decode_tokens_per_s"] is None and data["max_batch"] >= 1
    assert f"the largest batch that fits at this context is {data['max_batch']}" in err
    code, out, err = run(capsys, "infer-memory", "llama-7b", "--gpu", "A100", "--json")
    data = json.loads(out)
    assert code == 0 and err == "" and data["fits"] is True and data["decode_tokens_per_s"] > 0


def test_time_reports_no_single_gpu_decode_ceiling_for_a_model_it_cannot_hold(capsys):
    code, out, err = run(capsys, "time", "gpt3-175b", "--tokens", "300B", "--gpu", "A100", "--n-gpus", "1000")
    assert code == 0 and "training time" in out and "decode ceiling" not in out
    assert "gpt3-175b at --batch 1 does not fit one A100-80GB" in err
    code, out, err = run(capsys, "time", "llama-7b", "--tokens", "1T", "--gpu", "A100")
    assert code == 0 and "decode ceiling" in out and err == ""


def _gguf(path, **uint32):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in uint32.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("keep", [4, 100])
def test_truncated_gguf_is_one_line(capsys, tmp_path, keep):
    full = tmp_path / "full.gguf"
    _gguf(full, vocab_size=4, embedding_length=4, block_count=1, **{"attention.head_count": 1})
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(full.read_bytes()[:keep])
    refused(capsys, ["params", str(trunc)], "trunc.gguf is not a readable GGUF file")


def test_gguf_with_zero_heads_is_one_line(capsys, tmp_path):
    path = tmp_path / "zero.gguf"
    _gguf(path, vocab_size=4, embedding_length=4, block_count=1, **{"attention.head_count": 0})
    refused(capsys, ["params", str(path)], "zero.gguf has unusable GGUF metadata")


def test_json_that_is_not_an_object_is_one_line(capsys, tmp_path):
    path = tmp_path / "l.json"
    path.write_text("[1, 2]")
    refused(capsys, ["params", str(path)], "l.json holds a JSON list, not an object of config keys")


def test_library_refuses_what_the_cli_refuses():
    with pytest.raises(ConfigError, match="n_gpus must be at least 1, got 0"):
        estimate.mfu("gpt2", 1000, "A100", n_gpus=0)
    with pytest.raises(ConfigError, match="seq_len must be at least 1, got 0"):
        estimate.training_memory("gpt2", seq_len=0)
    with pytest.raises(ConfigError, match="batch and context must be at least 1, got 1 and 0"):
        estimate.inference_memory("gpt2", context=0)
    with pytest.raises(ConfigError, match="decode batch and context must be at least 1"):
        estimate.decode_tokens_per_s("gpt2", "A100", batch=0)
    with pytest.raises(ConfigError, match="tokens .* must be positive"):
        estimate.training_time("gpt2", 0, gpu="A100")


@pytest.mark.parametrize("argv, flag", [
    (["flops", "gpt2", "--seq-len", "100000"], "--seq-len 100000"),
    (["infer-memory", "gpt2", "--context", "2048"], "--context 2048"),
    (["train-memory", "gpt2", "--seq-len", "4096"], "--seq-len 4096"),
    (["time", "gpt2", "--tokens", "1e9", "--gpu", "A100", "--context", "4096"], "--context 4096"),
])
def test_lengths_past_the_models_positions_get_a_note(capsys, argv, flag):
    rc, out, err = run(capsys, *argv)
    assert rc == 0 and f"note: {flag} is past the model's 1024 positions" in err and out


def test_lengths_within_the_context_get_no_note(capsys):
    rc, _, err = run(capsys, "flops", "gpt2", "--seq-len", "1024")
    assert rc == 0 and "past the model" not in err


BIG = "1" + "0" * 400  # an int argparse accepts, too large for a float


@pytest.mark.parametrize("argv", [
    # OverflowError tracebacks from int -> float conversions deep in the estimators
    ["infer-memory", "gpt2", "--batch", BIG],
    ["time", "gpt2", "--tokens", "1e9", "--gpu", "A100", "--n-gpus", BIG],
    ["train-memory", "gpt2", "--zero", "3", "--dp", BIG],
    # finite inputs whose results overflowed: the tables printed 'inf FLOP' and 'MFU inf'
    ["flops", "gpt2", "--tokens", "5e300"],
    ["flops", "gpt2", "--tokens-per-s", "5e300", "--gpu", "A100"],
    ["time", "gpt2", "--tokens", "5e300", "--gpu", "A100"],
])
def test_numbers_too_large_to_compute_are_one_line(capsys, argv):
    refused(capsys, argv, "too large to compute")


def test_a_huge_negative_size_is_refused_as_negative(capsys):
    refused(capsys, ["flops", "gpt2", "--seq-len", "-" + BIG], "--seq-len must be at least 1, got -1000")


def test_a_count_that_overflows_a_float_is_refused(capsys):
    with pytest.raises(SystemExit) as e:  # '1e400' parsed to inf: 'training run, D = inf tokens  inf FLOP'
        main(["estimate", "flops", "gpt2", "--tokens", "1e400"])
    assert e.value.code == 2 and "'1e400' overflows a float" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["flops", "gpt2", "--tokens", "abc"], "'abc' is not a count"),
    (["flops", "gpt2", "--seq-len", "1e9"], "argument --seq-len: invalid int value: '1e9'"),
    (["train-memory", "gpt2", "--zero", "5"], "argument --zero: invalid choice: 5"),
])
def test_argparse_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as e:  # argparse printed its usage block (5 lines for flops) first
        main(["estimate", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"llmlab estimate {argv[0]}: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
