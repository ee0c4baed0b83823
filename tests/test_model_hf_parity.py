"""llmlab's Transformer against transformers on the same weights: logits, padding, greedy, round trip."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_

transformers = pytest.importorskip("transformers")

import llmlab  # noqa: E402

V = 97
COMMON = dict(vocab_size=V, bos_token_id=None, eos_token_id=None, pad_token_id=0)


def llama_like(cls, heads, kv, tie=False, **kw):
    return cls(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=heads,
               num_key_value_heads=kv, max_position_embeddings=128, tie_word_embeddings=tie, **COMMON, **kw)


CASES = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                                            embd_pdrop=0.0, attn_pdrop=0.0, **COMMON),
    "llama-mha": lambda: llama_like(transformers.LlamaConfig, 6, 6),
    "llama-gqa2-tied": lambda: llama_like(transformers.LlamaConfig, 6, 3, tie=True),
    "llama-gqa3-bias": lambda: llama_like(transformers.LlamaConfig, 6, 2, attention_bias=True),
    "llama-mqa": lambda: llama_like(transformers.LlamaConfig, 6, 1),
    "llama3-rope-scaling": lambda: llama_like(
        transformers.LlamaConfig, 4, 2, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}),
    "qwen2": lambda: llama_like(transformers.Qwen2Config, 6, 2),
    "qwen3": lambda: llama_like(transformers.Qwen3Config, 4, 2, head_dim=16),
    "mistral-window": lambda: llama_like(transformers.MistralConfig, 4, 2, sliding_window=5),
}


def hf_model(case: str):
    torch.manual_seed(0)
    cfg = CASES[case]()
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return randomize_(model).eval()


def padded_batch(lengths: list[int], T: int, side: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "left":
            mask[i, T - n:] = 1
        else:
            mask[i, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    hf = hf_model(request.param)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    return request.param, hf, llmlab.from_pretrained(d), d


@pytest.mark.parametrize("backend", ["explicit", "sdpa"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_padded_batch(pair, backend, side):
    case, hf, ours, _ = pair
    ours.set_attention_backend(backend)
    ids, mask = padded_batch([12, 7, 3], 12, side)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
        got = ours(ids, mask)
    valid = mask.bool()
    assert (got[valid] - ref[valid]).abs().max().item() <= 1e-4, case
    # and each row alone (no padding) gives the same logits as inside the padded batch
    for i in range(ids.shape[0]):
        alone = ids[i][valid[i]][None]
        with torch.no_grad():
            single = ours(alone)
        assert (single[0] - got[i][valid[i]]).abs().max().item() <= 1e-4


def test_greedy_generation_matches(pair):
    case, hf, ours, _ = pair
    ids, mask = padded_batch([9, 5], 9, "left", seed=3)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    got = ours.generate(ids, mask, max_new_tokens=20)
    assert got.tolist() == ref.tolist(), case


def test_round_trip_to_transformers(pair, tmp_path):
    case, _, ours, _ = pair
    ours.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(1, V, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (back(ids).logits - ours(ids)).abs().max().item() <= 1e-5, case
    again = llmlab.from_pretrained(tmp_path)
    for (n, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), n


def test_sharded_checkpoint_loads(pair, tmp_path):
    case, hf, ours, _ = pair
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    sharded = llmlab.from_pretrained(tmp_path)
    ids = torch.randint(1, V, (1, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(sharded(ids), ours(ids)), case
