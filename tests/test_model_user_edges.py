"""Model loading edges a user audit met: saving over a sharded checkpoint, GPT-2 with an untied head, GGUF RoPE
scaling llmlab cannot read (YaRN, Llama 3's rope_freqs), older checkpoints with rotary_emb.inv_freq buffers, bad
RoPE / norm values in config.json, dtype="auto" and transformers' keyword names, the missing-head hint, and the
chat CLI's history when a message is refused."""

from __future__ import annotations

import argparse
import json

import gguf
import numpy as np
import pytest
import torch
from conftest import randomize_
from safetensors.torch import load_file, save_file
from test_model_gguf import write_llama_gguf

import llmlab
from llmlab.engine.sequence import RequestError
from llmlab.errors import CheckpointError, ConfigError, LlmlabError

transformers = pytest.importorskip("transformers")


def tiny_hf_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return randomize_(transformers.LlamaForCausalLM(cfg), seed=seed).eval()


IDS = torch.tensor([[5, 9, 33, 2, 17, 40, 8]])


def max_diff(ours, hf):
    with torch.no_grad():
        return (ours(IDS) - hf(IDS).logits).abs().max().item()


def test_saving_over_a_sharded_checkpoint_replaces_it(tmp_path):
    hf = tiny_hf_llama()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = llmlab.from_pretrained(tmp_path)
    with torch.no_grad():
        model.embed.weight.mul_(2.0)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists() and not list(tmp_path.glob("model-*-of-*"))
    again = llmlab.from_pretrained(tmp_path)
    assert torch.equal(again.embed.weight, model.embed.weight)
    assert max_diff(again, transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()) < 1e-5


def test_model_safetensors_is_read_before_an_index_as_transformers_does(tmp_path):
    hf = tiny_hf_llama()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    tiny_hf_llama(seed=1).save_pretrained(tmp_path / "other")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    ours = llmlab.from_pretrained(tmp_path)
    assert max_diff(ours, transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()) < 1e-5
    assert max_diff(ours, tiny_hf_llama(seed=1)) < 1e-5


@pytest.mark.parametrize("index", ['{"weight_map": ["a.safetensors"]}', '{"weight_map": {"w": 3}}', "[]",
                                   '{"metadata": {}}', "{not json"])
def test_a_malformed_shard_index_is_named_and_saving_over_it_replaces_it(tmp_path, index):
    tiny_hf_llama().save_pretrained(tmp_path / "hf")
    model = llmlab.from_pretrained(tmp_path / "hf")
    tiny_hf_llama(seed=1).save_pretrained(tmp_path, max_shard_size="20KB")
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match="model.safetensors.index.json is not a valid safetensors index"):
        llmlab.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("model-*-of-*.safetensors"))
    assert torch.equal(llmlab.from_pretrained(tmp_path).embed.weight, model.embed.weight)


def test_gpt2_with_an_untied_head(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=64,
                                  tie_word_embeddings=False)
    hf = randomize_(transformers.GPT2LMHeadModel(cfg)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = llmlab.from_pretrained(tmp_path / "hf")
    assert not ours.cfg.tie_word_embeddings and max_diff(ours, hf) < 1e-5
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert not back.config.tie_word_embeddings and max_diff(ours, back) < 1e-5
    tied = llmlab.from_pretrained(tmp_path / "hf").cfg.replace(tie_word_embeddings=True)
    assert tied.hf_model_type == "gpt2"  # both are GPT-2 for export


def _with_metadata(monkeypatch, extra):
    real = gguf.GGUFWriter.write_header_to_file

    def header(self, *a, **kw):
        extra(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(gguf.GGUFWriter, "write_header_to_file", header)


def test_gguf_yarn_scaling_is_refused_not_ignored(tmp_path, monkeypatch):
    def yarn(w):
        w.add_string("llama.rope.scaling.type", "yarn")
        w.add_float32("llama.rope.scaling.factor", 4.0)

    _with_metadata(monkeypatch, yarn)
    write_llama_gguf(tiny_hf_llama(), tmp_path / "yarn.gguf", gguf.GGMLQuantizationType.F32)
    with pytest.raises(CheckpointError, match=r"yarn.gguf: RoPE scaling 'yarn' .* is not supported"):
        llmlab.from_pretrained(tmp_path / "yarn.gguf")


def test_older_checkpoints_with_rotary_inv_freq_buffers_load(tmp_path):
    hf = tiny_hf_llama()
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    for i in range(2):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(4)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert max_diff(llmlab.from_pretrained(tmp_path), hf) < 1e-5


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "needs low_freq_factor"),
    (lambda c: c.update(rope_scaling={"rope_type": "linear"}), "linear needs factor"),
    (lambda c: c.update(rope_scaling={"rope_type": "linear", "factor": "2"}), "got '2'"),
    (lambda c: c.update(rope_theta=None, rope_parameters={"rope_type": "default", "rope_theta": None}),
     "rope_theta must be a positive number"),
    (lambda c: c.update(rms_norm_eps="1e-6"), "norm_eps must be a positive number"),
])
def test_bad_rope_and_norm_values_are_one_line_errors_naming_the_file(tmp_path, edit, message):
    tiny_hf_llama().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    edit(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"config.json: .*{message}"):
        llmlab.from_pretrained(tmp_path)


def test_dtype_auto_and_transformers_keyword(tmp_path):
    tiny_hf_llama().save_pretrained(tmp_path)
    assert next(llmlab.from_pretrained(tmp_path, dtype="auto").parameters()).dtype == torch.float32  # CPU
    with pytest.raises(ConfigError, match=r"unknown keyword 'torch_dtype'; pass dtype=\.\.\."):
        llmlab.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)


def test_a_missing_head_suggests_tying_it(tmp_path):
    hf = tiny_hf_llama()
    hf.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="set tie_word_embeddings true in config.json"):
        llmlab.from_pretrained(tmp_path)


def test_generate_names_transformers_keywords_and_refuses_unknown_ones():
    model = llmlab.Transformer(llmlab.ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4))
    with pytest.raises(LlmlabError, match="no 'do_sample' .* use temperature > 0"):
        model.generate(IDS, do_sample=True)
    with pytest.raises(LlmlabError, match="no 'max_length' .* use max_new_tokens"):
        model.generate(IDS, max_length=20)
    with pytest.raises(LlmlabError, match="no keyword 'foo'; its keywords are max_new_tokens"):
        model.generate(IDS, foo=1)


class _Tok:
    chat_template = "x"

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return [0] * sum(len(m["content"].split()) + 2 for m in messages)


class _LLM:
    tokenizer = _Tok()

    class engine:  # noqa: N801
        max_model_len = 40


def test_a_refused_chat_message_leaves_the_conversation_as_it_was(capsys):
    from llmlab.engine.cli import _fit_history

    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi " * 5},
               {"role": "assistant", "content": "hello " * 5}]
    messages = [*history, {"role": "user", "content": "word " * 50}]
    with pytest.raises(RequestError, match="send a shorter message"):
        _fit_history(_LLM, messages)
    assert messages[:3] == history and "dropped" not in capsys.readouterr().err
    messages = [*history, {"role": "user", "content": "word " * 22}]  # fits once the old turn goes
    _fit_history(_LLM, messages)
    assert messages == [history[0], {"role": "user", "content": "word " * 22}]
    assert "dropped the 2 oldest messages" in capsys.readouterr().err


def test_chat_refuses_an_empty_message_and_seeds_each_chat(monkeypatch):
    from llmlab.engine import cli

    args = argparse.Namespace(temperature=None, top_p=None, max_tokens=8, message=[""], seed=None, system=None,
                              model="x", dtype=None, compile=False)
    with pytest.raises(RequestError, match="--message is empty"):
        cli.run(args)

    class Defaults:
        _sampling_defaults = {}

        def get_default_sampling_params(self):
            return llmlab.SamplingParams()

    seeds = {cli._sampling(Defaults(), args).seed for _ in range(4)}
    assert None not in seeds and len(seeds) > 1  # a new chat samples anew, as llama.cpp's
    assert cli._sampling(Defaults(), argparse.Namespace(**{**vars(args), "seed": 7})).seed == 7


def llama_cpp_rope_freqs(scaling: dict, theta: float, head_dim: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py writes as rope_freqs.weight for HF's llama3 scaling."""
    import math

    f, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(f)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / f + smooth))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("scaling, blended", [
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}, 3),
    ({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
      "original_max_position_embeddings": 128}, 3),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 1.5,
      "original_max_position_embeddings": 64}, 1),
    ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 1.1,
      "original_max_position_embeddings": 50}, 0)])
def test_a_llama3_gguf_with_rope_freqs_matches_transformers(tmp_path, monkeypatch, scaling, blended):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   rope_scaling=scaling, rope_theta=10000.0, bos_token_id=None, eos_token_id=None,
                                   pad_token_id=0)
    hf = randomize_(transformers.LlamaForCausalLM(cfg)).eval()
    freqs = llama_cpp_rope_freqs(scaling, 10000.0, 32)
    assert ((freqs > 1) & (freqs < scaling["factor"])).sum() == blended
    _with_metadata(monkeypatch, lambda w: w.add_tensor("rope_freqs.weight", freqs))
    write_llama_gguf(hf, tmp_path / "l3.gguf", gguf.GGMLQuantizationType.F32)
    ours = llmlab.from_pretrained(tmp_path / "l3.gguf")
    assert ours.cfg.rope_scaling["rope_type"] == "llama3"
    ids = torch.randint(0, 64, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4
    ours.save_pretrained(tmp_path / "hf")  # and written back as HF's llama3 scaling
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max().item() < 1e-4


def test_rope_freqs_that_are_not_llama3_scaling_are_refused(tmp_path, monkeypatch):
    _with_metadata(monkeypatch, lambda w: w.add_tensor("rope_freqs.weight", np.linspace(1, 3, 4, dtype=np.float32)
                                                       [[0, 3, 1, 2]]))
    write_llama_gguf(tiny_hf_llama(), tmp_path / "odd.gguf", gguf.GGMLQuantizationType.F32)
    with pytest.raises(CheckpointError, match="rope_freqs.weight holds RoPE divisors that are not Llama 3's"):
        llmlab.from_pretrained(tmp_path / "odd.gguf")


def test_an_unknown_gguf_tensor_is_named_without_a_config_json(tmp_path, monkeypatch):
    _with_metadata(monkeypatch, lambda w: w.add_tensor("blk.0.ffn_gate_exps.weight", np.ones((2, 4), np.float32)))
    write_llama_gguf(tiny_hf_llama(), tmp_path / "moe.gguf", gguf.GGMLQuantizationType.F32)
    with pytest.raises(CheckpointError, match="ffn_gate_exps.weight has no place in a llama model as this GGUF's "
                                              "metadata describes it; a llama variant"):
        llmlab.from_pretrained(tmp_path / "moe.gguf")


def test_every_llama3_scaling_with_one_blended_frequency_is_fitted():
    """One in-between frequency leaves old_ctx free; the first choice of it refused some valid scalings (theta 1e6,
    head_dim 128, factor 4, high 1.1, old 4096: old / high fell below the longest unscaled wavelength)."""
    import random

    from llmlab.model.convert import llama3_from_factors
    from llmlab.model.layers import llama3_inv_freq, rope_base_inv_freq

    rng, fitted = random.Random(0), 0
    cases = [(1e6, 128, 4.0, 1.0, 1.1, 4096)] + [
        (rng.choice([1e4, 5e5, 1e6]), rng.choice([64, 128]), rng.choice([2.0, 4.0, 8.0, 32.0]),
         low := rng.choice([1.0, 2.0]), low + rng.uniform(0.05, 4.0), rng.choice([2048, 4096, 8192]))
        for _ in range(600)]
    for theta, head_dim, factor, low, high, old in cases:
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                   "original_max_position_embeddings": old}
        inv = rope_base_inv_freq(theta, head_dim)
        factors = (inv / llama3_inv_freq(inv, scaling)).tolist()
        if sum(1 + 1e-6 < d < factor * (1 - 1e-6) for d in factors) != 1:
            continue
        fit = llama3_from_factors(factors, theta, head_dim, "x.gguf")
        torch.testing.assert_close(inv / llama3_inv_freq(inv, fit), torch.tensor(factors), rtol=1e-4, atol=0)
        fitted += 1
    assert fitted > 40
