"""Loading a checkpoint builds the model without weight init and without importing torch._dynamo (on the meta
device the first init or RoPE op runs a Python decomposition that imports it: ~3 s of every `llmlab generate`), and
a CPU engine never imports Triton (~0.5 s)."""

import subprocess
import sys

import pytest
import torch

from llmlab.model.pretrained import _no_init

SCRIPT = """
import sys, torch, llmlab
from llmlab import ModelConfig, Transformer
from llmlab.model.pretrained import save_pretrained
torch.manual_seed(0)
cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48,
                  max_position_embeddings=64)
src = Transformer(cfg).eval()
save_pretrained(src, sys.argv[1])
assert "torch._dynamo" not in sys.modules, "imported before loading"
m = llmlab.from_pretrained(sys.argv[1])
assert "torch._dynamo" not in sys.modules, "loading imported torch._dynamo"
assert torch.equal(m.inv_freq, src.inv_freq) and not m.inv_freq.is_meta
ids = torch.tensor([[1, 2, 3, 4]])
assert torch.equal(m(ids), src(ids))
from llmlab.engine import LLM, SamplingParams
out = LLM(m).generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=3))
assert len(out[0].outputs[0].token_ids) == 3
assert "triton" not in sys.modules, "a CPU engine imported triton"
print("ok")
"""


def test_loading_imports_no_dynamo_and_gives_the_same_model_and_a_cpu_engine_no_triton(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_no_init_restores_torch_init_even_on_error():
    before = torch.nn.init.normal_
    with pytest.raises(RuntimeError), _no_init():
        w = torch.zeros(3)
        assert torch.nn.init.normal_(w) is w and torch.equal(w, torch.zeros(3))
        raise RuntimeError
    assert torch.nn.init.normal_ is before
