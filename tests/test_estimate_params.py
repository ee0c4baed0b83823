"""Parameter counts equal sum(p.numel()) of llmlab and transformers models built from the same config."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModelForCausalLM

from llmlab import estimate
from llmlab.config import ModelConfig
from llmlab.errors import ConfigError
from llmlab.model.transformer import Transformer


def hf_numel(hf_dict: dict) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_dict))
    return sum(p.numel() for p in model.parameters())


def llmlab_numel(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Transformer(cfg).parameters())


TINY = {
    "gpt2": {"model_type": "gpt2", "vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
    "llama-mha": {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 56,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4},
    "llama-gqa": {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 56,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "llama-mqa-tied": {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 56,
                       "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
                       "tie_word_embeddings": True},
    "llama-bias": {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 56,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "attention_bias": True},
    "qwen2-bias-tied": {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 56,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                        "tie_word_embeddings": True},
    "qwen2-untied": {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 56,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "tie_word_embeddings": False},
    "qwen3-headdim": {"model_type": "qwen3", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 56,
                      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
    "mistral": {"model_type": "mistral", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 56,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 8},
}


@pytest.mark.parametrize("name", TINY)
def test_tiny_configs_match_transformers_and_llmlab(name):
    d = TINY[name]
    n = estimate.count_params(d)
    assert n == hf_numel(d)
    assert n == llmlab_numel(estimate.resolve(d))


# Published totals (model cards / papers) and the ones transformers builds from the presets.
PUBLISHED = {"gpt2": 124_439_808, "gpt2-xl": 1_557_611_200, "llama2-7b": 6_738_415_616,
             "llama2-70b": 68_976_648_192, "llama3-8b": 8_030_261_248, "mistral-7b": 7_241_732_096,
             "qwen2.5-0.5b": 494_032_768, "qwen3-8b": 8_190_735_360, "smollm2-135m": 134_515_008}


@pytest.mark.parametrize("name", ["gpt2", "gpt3-175b", "llama2-70b", "llama3-8b", "mistral-7b", "qwen2.5-7b",
                                  "qwen3-0.6b", "smollm2-135m"])
def test_presets_match_transformers_on_meta(name):
    n = estimate.count_params(name)
    assert n == hf_numel(estimate.resolve(name).to_hf_dict())
    assert n == llmlab_numel(estimate.resolve(name))
    if name in PUBLISHED:
        assert n == PUBLISHED[name]


def test_published_values():
    for name, n in PUBLISHED.items():
        assert estimate.count_params(name) == n, name
    gpt3 = estimate.count_params("gpt3-175b")
    assert gpt3 == 174_604_259_328 and round(gpt3 / 1e9, 1) == 174.6


def test_breakdown_sums_and_tied_head():
    b = estimate.param_breakdown("llama2-7b")
    assert b.total == b.embedding + b.attention + b.ffn + b.norm + b.lm_head
    assert b.lm_head == b.embedding == 32000 * 4096 and b.position == 0
    assert b.per_layer * 32 == b.attention + b.ffn + (b.norm - 4096)
    tied = estimate.param_breakdown("gpt2")
    assert tied.lm_head == 0 and tied.position == 1024 * 768


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 3), heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 2, 4]),
       hd=st.sampled_from([4, 8]), ffn=st.integers(1, 40), vocab=st.integers(2, 50),
       norm=st.sampled_from(["rmsnorm", "layernorm", "layernorm+bias"]), gated=st.booleans(),
       position=st.sampled_from(["learned", "rope", "sinusoidal", "alibi", "none"]),
       flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans()))
def test_any_config_matches_llmlab_transformer(layers, heads, group, hd, ffn, vocab, norm, gated, position, flags):
    qkv_bias, o_bias, mlp_bias, qk_norm, tied, final_norm = flags
    cfg = ModelConfig(vocab_size=vocab, hidden_size=heads * group * hd, num_layers=layers, num_heads=heads * group,
                      num_kv_heads=heads, intermediate_size=ffn, max_position_embeddings=16,
                      norm=norm.split("+")[0], norm_bias=norm.endswith("bias"), gated_ffn=gated, position=position,
                      qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias, qk_norm=qk_norm, tie_word_embeddings=tied,
                      final_norm=final_norm)
    assert estimate.count_params(cfg) == llmlab_numel(cfg)


@pytest.mark.artifact
def test_gguf_file_count_equals_its_tensors():
    import gguf

    from llmlab.artifacts import fetch

    path = fetch("smollm2-135m")
    n = estimate.count_params(str(path))
    assert n == sum(int(t.n_elements) for t in gguf.GGUFReader(path).tensors) == PUBLISHED["smollm2-135m"]


def test_config_json_and_directory(tmp_path):
    cfg = estimate.resolve("qwen2.5-0.5b")
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg.to_hf_dict()))
    assert estimate.count_params(tmp_path) == estimate.count_params(tmp_path / "config.json") == 494_032_768


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset nor an existing file.*llama2-7b"):
        estimate.count_params("llama-9000b")
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        estimate.count_params(ModelConfig(hidden_size=100, num_heads=3))
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        estimate.count_params({"model_type": "llama", "vocab_size": 10, "hidden_size": 30, "intermediate_size": 8,
                               "num_hidden_layers": 1, "num_attention_heads": 4})
    with pytest.raises(ConfigError, match="does not exist"):
        estimate.count_params(tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match="cannot estimate from a int"):
        estimate.count_params(7)
