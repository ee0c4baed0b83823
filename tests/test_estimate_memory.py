"""Memory estimates against what PyTorch really holds: KV cache, optimizer state, saved activations."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab import estimate
from llmlab.config import ModelConfig
from llmlab.errors import ConfigError
from llmlab.estimate.measure import saved_activation_bytes
from llmlab.estimate.memory import activation_bytes, weight_bytes
from llmlab.model.cache import KVCache
from llmlab.model.transformer import Transformer

GB, GiB = 1e9, 2**30
BASE = dict(vocab_size=96, hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=2, intermediate_size=80,
            max_position_embeddings=64)
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("kv_heads,dtype", [(6, "fp32"), (2, "bf16"), (1, "fp16")])
def test_kv_cache_bytes_equal_the_real_allocation(kv_heads, dtype):
    cfg = ModelConfig(**BASE | {"num_kv_heads": kv_heads})
    cache = KVCache.allocate(cfg, batch_size=3, max_len=17, dtype=TORCH_DTYPE[dtype])
    assert estimate.kv_cache_bytes(cfg, batch=3, context=17, dtype=dtype) == cache.nbytes()
    per_token = estimate.kv_cache_bytes(cfg, batch=1, context=1, dtype=dtype)
    assert cache.nbytes() == 3 * 17 * per_token


def test_seed_note_7b_inference_example():
    # "7B FP16, batch 4, seq 2048": the note's KV "2048 × 32 × 4096 × 2 × 4 = 2GB" forgets the 2 bytes of fp16.
    kv = estimate.kv_cache_bytes("llama-7b", batch=4, context=2048, dtype="fp16")
    assert kv == 2 * 2 * 32 * 4 * 2048 * 4096 == 4 * GiB
    assert 2048 * 32 * 4096 * 2 * 4 == kv // 2
    m = estimate.inference_memory("llama-7b", batch=4, context=2048, weights="fp16", kv_dtype="fp16")
    assert m.weights == 6_738_415_616 * 2  # 13.48 GB, not "7B x 2 = 14GB"
    assert 18.0 * GB < m.total < 18.6 * GB
    with_scores = estimate.inference_memory("llama-7b", batch=4, context=2048, weights="fp16", flash=False)
    scores = 8 * 4 * 32 * 2048**2  # fp32 scores + weights, batch 4, 32 heads, 2048²: 4.3 GB more at prefill
    assert scores < with_scores.activations < scores + m.activations


def test_training_model_states_16_bytes_per_param_and_zero_paper():
    n = estimate.count_params("llama-7b")
    r = estimate.training_memory("llama-7b", seq_len=128)
    assert r.model_states == 16 * n
    # ZeRO paper (Rajbhandari et al. 2020), Figure 1: Ψ = 7.5B, K = 12, N_d = 64.
    psi = 7.5e9
    cfg = ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=1, intermediate_size=8)
    scale = psi / estimate.count_params(cfg)
    expected = {0: 120, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, gb in expected.items():
        states = estimate.training_memory(cfg, seq_len=8, zero=stage, dp=64).model_states * scale
        assert states / GB == pytest.approx(gb, abs=0.05), stage


def test_optimizer_variants_and_parallel_degrees():
    n = estimate.count_params("llama2-13b")
    t = lambda **kw: estimate.training_memory("llama2-13b", seq_len=256, activations="megatron", **kw)  # noqa: E731
    assert estimate.training_memory("llama2-13b", seq_len=256, precision="fp32").model_states == 16 * n
    assert t(precision="bf16").model_states == 8 * n
    assert t(optimizer="adamw-8bit").model_states == pytest.approx((2 + 2 + 4 + 2 + 8 / 2048) * n)
    assert t(optimizer="sgd").model_states == 8 * n
    assert t(tp=4, pp=2).model_states == pytest.approx(16 * n / 8)
    assert t(tp=4, sequence_parallel=True).activations < t(tp=4).activations < t().activations


def test_fp32_adamw_state_equals_what_torch_holds():
    cfg = ModelConfig(**BASE)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    model.loss(ids, ids).backward()
    opt.step()
    params = list(model.parameters())
    held = sum(p.numel() * p.element_size() + p.grad.numel() * p.grad.element_size() for p in params)
    held += sum(s[k].numel() * s[k].element_size() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    est = estimate.training_memory(cfg, seq_len=8, precision="fp32")
    assert est.model_states == held  # (plus one fp32 'step' scalar per tensor, not counted)


ACTIVATION_CASES = {
    "llama-gqa": {},
    "mqa-tied": {"num_kv_heads": 1, "tie_word_embeddings": True},
    "gpt2": {"num_kv_heads": 6, "norm": "layernorm", "norm_bias": True, "activation": "gelu_tanh", "gated_ffn": False,
             "position": "learned", "qkv_bias": True, "o_bias": True, "mlp_bias": True, "tie_word_embeddings": True},
    "qwen3": {"qk_norm": True, "head_dim": 16},
    "post-norm-relu": {"norm": "layernorm", "norm_position": "post", "final_norm": False, "activation": "relu",
                       "gated_ffn": False, "position": "sinusoidal"},
}


@pytest.mark.parametrize("name", ACTIVATION_CASES)
@pytest.mark.parametrize("dtype,backend,recompute", [("fp32", "sdpa", "none"), ("bf16", "sdpa", "none"),
                                                     ("fp32", "explicit", "none"), ("bf16", "sdpa", "full")])
def test_llmlab_activation_formula_matches_saved_tensors(name, dtype, backend, recompute):
    cfg = ModelConfig(**BASE | ACTIVATION_CASES[name])
    torch.manual_seed(0)
    model = Transformer(cfg, attn_backend=backend).to(TORCH_DTYPE[dtype])
    ids, labels = torch.randint(0, cfg.vocab_size, (2, 2, 20))
    measured = saved_activation_bytes(model, ids, labels, checkpoint_blocks=recompute == "full")
    est = activation_bytes(cfg, 2, 20, formula="llmlab", dtype=dtype, flash=backend == "sdpa",
                           recompute=recompute, device="cpu").total
    assert est == pytest.approx(measured, rel=1e-4, abs=8)  # exact but for autograd's 4-byte loss-weight scalar


def test_llmlab_activation_formula_cuda_counts_the_fused_fp32_rmsnorm():
    """On CUDA an fp32 RMSNorm keeps x and rsqrt only (one fused kernel); these numbers were measured on an
    H100 (benchmarks/results/estimate_memory_cuda.json) with the same configs, batch 2, seq 256."""
    cfg = ModelConfig(**BASE | {"vocab_size": 2048, "hidden_size": 256, "num_layers": 4, "num_heads": 8,
                                "num_kv_heads": 2, "intermediate_size": 688, "max_position_embeddings": 1024})
    measured_on_h100 = {"fp32": 44787780, "bf16": 29255748}
    for dtype, measured in measured_on_h100.items():
        est = activation_bytes(cfg, 2, 256, formula="llmlab", dtype=dtype, flash=True, device="cuda").total
        assert est == pytest.approx(measured, rel=1e-4)
    cpu = activation_bytes(cfg, 2, 256, formula="llmlab", dtype="fp32", flash=True, device="cpu").total
    assert cpu - measured_on_h100["fp32"] == pytest.approx(4 * 2 * 256 * 256 * (2 * 4 + 1), rel=1e-4)


def test_megatron_formula_reduces_to_korthikanti():
    s, b, h, a, _L, t = 2048, 1, 12288, 96, 96, 8
    cfg = "gpt3-175b"
    act = lambda **kw: activation_bytes(cfg, b, s, formula="megatron", flash=False, **kw).per_layer  # noqa: E731
    assert act() == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    assert act(tp=t) == pytest.approx(s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    assert act(tp=t, sequence_parallel=True) == pytest.approx(s * b * h / t * (34 + 5 * a * s / h))
    assert act(tp=t, sequence_parallel=True, recompute="selective") == pytest.approx(s * b * h * 34 / t)
    assert act(recompute="full") == 2 * s * b * h
    flash = activation_bytes(cfg, b, s, formula="megatron", flash=True).per_layer
    assert flash == pytest.approx(s * b * h * 34 + 4 * a * s * b)
    # 16-bit activations only; the llmlab formula refuses what it has not been measured on.
    with pytest.raises(ConfigError, match="16-bit"):
        activation_bytes(cfg, 1, 8, formula="megatron", dtype="fp32")
    with pytest.raises(ConfigError, match="tensor-parallel"):
        activation_bytes(cfg, 1, 8, formula="llmlab", tp=2)


def test_weight_formats():
    cfg = estimate.resolve("llama2-7b")
    n = estimate.count_params(cfg)
    assert weight_bytes(cfg, "bf16") == 2 * n and weight_bytes(cfg, "fp32") == 4 * n
    layer_mats = sum(t.numel for t in estimate.param_shapes(cfg) if t.matmul and t.per_layer) * 32
    rest = n - layer_mats
    assert weight_bytes(cfg, "q4_1") == layer_mats * 20 // 32 + 2 * rest  # 5 bits/weight in the layers
    assert weight_bytes(cfg, "int4") == layer_mats // 2 + layer_mats // 128 * 4 + 2 * rest
    with pytest.raises(ConfigError, match="unknown weight format 'int3'"):
        weight_bytes(cfg, "int3")


def test_what_fits_a_gpu():
    a100 = estimate.get_gpu("A100-80GB").memory_bytes
    b = estimate.max_fitting("llama2-7b", a100, vary="batch", context=4096)
    fits = lambda batch: estimate.inference_memory("llama2-7b", batch=batch, context=4096).total_with_overhead  # noqa: E731
    assert fits(b) <= a100 < fits(b + 1)
    assert estimate.max_fitting("llama2-70b", estimate.get_gpu("RTX-4090").memory_bytes, vary="batch") == 0
    assert estimate.max_fitting("smollm2-135m", a100, vary="context") == 8192  # capped at the model's context


def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown GPU 'B300'; known GPUs: A100-40GB, .*H100-SXM.*RTX-4090"):
        estimate.get_gpu("B300")
    assert estimate.get_gpu("a100").name == "A100-80GB" and estimate.get_gpu("h100 sxm").name == "H100-SXM"
    with pytest.raises(ConfigError, match="no bf16 tensor-core path"):
        estimate.get_gpu("V100").peak_flops("bf16")


@pytest.mark.parametrize("pp", [1, 8])
def test_activations_outside_layers_formula_matches_the_pipeline_stage(pp):
    """With pp > 1 the first stage holds no LM head: the value left out 4sbh/t (1 + v/h) but the formula showed it."""
    s, b, h, V, t = 2048, 1, 12288, 50257, 8
    r = estimate.training_memory("gpt3-175b", batch=b, seq_len=s, activations="megatron", tp=t, pp=pp,
                                 sequence_parallel=True)
    step = next(x for x in r.steps if x.name == "activations outside layers")
    head = 4 * s * b * h / t * (1 + V / h)
    assert step.value == pytest.approx(s * b * h * pp / t + (head if pp == 1 else 0))
    assert ("4sbh/t (1 + v/h)" in step.formula) == (pp == 1)
    r = estimate.training_memory("llama-7b", seq_len=2048, pp=pp)
    step = next(x for x in r.steps if x.name == "activations outside layers")
    assert (step.value == 0) == (pp > 1) and ("log-softmax" in step.formula) == (pp == 1)


def test_fp8_keeps_embeddings_in_16_bits_like_int8():
    """--weights fp8 counted every parameter at 1 byte, embeddings too, while int8 kept them in bf16. Rule: a format
    below 16 bits applies to the layer matrices; the two then differ by int8's per-output-channel fp16 scales only."""
    cfg = estimate.resolve("llama2-7b")
    layers = [t for t in estimate.param_shapes(cfg) if t.matmul and t.per_layer]
    layer_mats = sum(t.numel for t in layers) * cfg.num_layers
    rest = estimate.count_params(cfg) - layer_mats
    assert weight_bytes(cfg, "fp8") == layer_mats + 2 * rest
    assert weight_bytes(cfg, "int8") - weight_bytes(cfg, "fp8") == 2 * sum(t.shape[0] for t in layers) * cfg.num_layers


@pytest.mark.artifact
def test_gguf_weights_are_the_files_tensor_bytes(capsys):
    """`infer-memory SmolLM2.Q4_1.gguf --weights q4_1` counted bf16 embeddings (123,048,576 B); the file keeps
    token_embd in Q8_0 and norms in F32: 96,576,768 B, which a .gguf MODEL now gets by default."""
    import gguf

    from llmlab.artifacts import fetch
    from llmlab.cli import main

    path = str(fetch("smollm2-135m"))
    stored = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)
    assert weight_bytes(path, "gguf") == stored == 96_576_768
    assert estimate.inference_memory(path, context=2048, weights="gguf").weights == stored
    assert main(["estimate", "infer-memory", path, "--context", "2048", "--gpu", "T4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights"] == stored and data["max_batch"] == estimate.max_fitting(
        path, estimate.get_gpu("T4").memory_bytes, vary="batch", context=2048, weights="gguf")
    assert main(["estimate", "infer-memory", path, "--weights", "q4_1", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["weights"] == weight_bytes(path, "q4_1") and f"take {stored:,} B" in out.err
    with pytest.raises(ConfigError, match="llama2-7b is not a .gguf file"):
        weight_bytes("llama2-7b", "gguf")


def test_megatron_fp32_error_names_the_cli_flag(capsys):
    from llmlab.cli import main

    code = main(["estimate", "train-memory", "llama2-7b", "--precision", "fp32", "--activations", "megatron"])
    err = capsys.readouterr().err
    assert code == 2 and "--precision bf16-mixed" in err and "--activations llmlab" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name,table", [
    ("NVIDIA A100 80GB PCIe", "A100-80GB-PCIe"), ("nvidia a100 80gb", "A100-80GB"), ("H100 80GB HBM3", "H100-SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA A100-PCIE-40GB", "A100-40GB"), ("NVIDIA H100 PCIe", "H100-PCIe"),
    ("Tesla V100-PCIE-32GB", "V100-PCIe"), ("Tesla T4", "T4"), ("AMD Instinct MI300X", "MI300X"),
    ("A100 40 GB", "A100-40GB"),
])
def test_driver_reported_gpu_names_resolve(name, table):
    assert estimate.get_gpu(name).name == table


@pytest.mark.parametrize("name", ["NVIDIA H100 NVL", "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 3090 Ti"])
def test_gpu_names_the_table_cannot_place_are_refused_with_the_known_ones(name):
    from llmlab.estimate.hardware import gpu_from_device_name

    with pytest.raises(ConfigError, match=r"is none of the table's .* entries .*another known GPU: A100-40GB, "):
        estimate.get_gpu(name)
    assert gpu_from_device_name(name) is None  # the training loop then reports no MFU rather than a wrong one


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_every_substituted_training_memory_line_evaluates_to_its_value(recompute):
    """--explain printed the per-layer activations' formula with nothing substituted; each line with numbers
    must compute its value."""
    r = estimate.training_memory("llama-7b", batch=2, seq_len=2048, recompute=recompute)
    per_layer = next(x for x in r.steps if x.name.startswith("activations per layer"))
    assert per_layer.numbers
    for step in r.steps:
        if step.numbers and "/" not in step.numbers:
            expr = step.numbers.replace(",", "").replace("·", "*")
            assert eval(expr, {"__builtins__": {}}) == pytest.approx(step.value), step.name
