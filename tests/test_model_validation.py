"""The model layer's guard rails: a checkpoint's config.json and tensor names describe one architecture;
`generate` refuses bad input before running the model, honours the config's EOS and runs in eval mode;
`from_pretrained` / `save_pretrained` turn bad files and arguments into one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import randomize_

import llmlab
from llmlab import ModelConfig, Transformer
from llmlab.errors import CheckpointError, ConfigError, LlmlabError

V = 97
BASE = dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64)
GPT2_SHAPE = dict(norm="layernorm", norm_bias=True, position="learned", gated_ffn=False, activation="gelu_tanh",
                  qkv_bias=True, o_bias=True, mlp_bias=True, tie_word_embeddings=True)
IDS = torch.randint(1, V, (2, 10), generator=torch.Generator().manual_seed(5))


def make(**kw) -> Transformer:
    torch.manual_seed(0)
    return randomize_(Transformer(ModelConfig(**{**BASE, **kw}))).eval()


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids)


# ---- save_pretrained: config.json and tensor names follow one architecture ---------------------


@pytest.mark.parametrize("kw, kind", [
    (GPT2_SHAPE, "gpt2"),  # model_type "llmlab" (the default) on a GPT-2 shape: written as gpt2
    ({}, "llama"),
    (dict(activation="gelu_tanh"), "llama"),  # hidden_act must be a name transformers knows
    (dict(qkv_bias=True, num_kv_heads=2), "qwen2"),
    (dict(qk_norm=True), "qwen3"),
], ids=["gpt2", "llama", "llama-gelu-tanh", "qwen2", "qwen3"])
def test_model_saves_as_the_architecture_its_shape_has(tmp_path, kw, kind):
    model = make(**kw)
    assert model.cfg.model_type == "llmlab" and model.cfg.hf_model_type == kind
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == kind
    assert torch.equal(logits(llmlab.from_pretrained(tmp_path)), logits(model))
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        assert (hf(IDS).logits - logits(model)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind, kw, field", [
    ("gpt2", {**GPT2_SHAPE, "position": "rope"}, "position"),
    ("gpt2", {**GPT2_SHAPE, "norm_position": "post"}, "norm_position"),
    ("gpt2", {**GPT2_SHAPE, "qkv_bias": False}, "qkv_bias"),
    ("gpt2", {**GPT2_SHAPE, "num_kv_heads": 2}, "num_kv_heads"),
    ("gpt2", {}, "norm"),
    ("llama", {"position": "alibi"}, "position"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("llama", {"qkv_bias": True}, "o_bias"),
    ("qwen2", {}, "qkv_bias"),
    ("qwen3", {}, "qk_norm"),
    ("mistral", {"qkv_bias": True, "o_bias": True}, "qkv_bias"),
])
def test_hf_model_type_that_cannot_express_the_shape_is_refused(kind, kw, field):
    with pytest.raises(ConfigError, match=rf"model_type '{kind}' cannot express {field}=.*set model_type='llmlab'"):
        ModelConfig(**BASE, **kw, model_type=kind)


def test_llama_gguf_with_qk_norm_reads_as_qwen3():
    from types import SimpleNamespace

    from llmlab.model.convert import config_from_gguf

    meta = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 64,
            "llama.embedding_length": 32, "llama.feed_forward_length": 64, "llama.attention.head_count": 4,
            "llama.attention.layer_norm_rms_epsilon": 1e-6, "llama.vocab_size": V}
    reader = SimpleNamespace(fields={k: SimpleNamespace(contents=lambda v=v: v) for k, v in meta.items()},
                             tensors=[SimpleNamespace(name=n) for n in ("blk.0.attn_q_norm.weight", "output.weight")])
    cfg = config_from_gguf(reader)
    assert cfg.qk_norm and cfg.model_type == cfg.hf_model_type == "qwen3"


def test_unknown_model_type_is_refused():
    with pytest.raises(ConfigError, match="model_type must be one of llmlab, gpt2"):
        ModelConfig(**BASE, model_type="bert")


def test_save_rechecks_a_config_changed_after_construction(tmp_path):
    model = make()
    model.cfg.model_type = "gpt2"  # assigned, so __post_init__ never saw it
    with pytest.raises(ConfigError, match="model_type 'gpt2' cannot express"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- generate: input checks, EOS from the config, eval mode ------------------------------------


@pytest.fixture(scope="module")
def guarded():
    """A model whose forward fails the test: every bad request must be refused before it runs."""
    model = make()
    model.register_forward_pre_hook(lambda *_: pytest.fail("generate ran the model on a bad request"))
    return model


@pytest.mark.parametrize("ids, kwargs, message", [
    (torch.tensor([[1, V]]), {}, rf"holds token {V}, which is not an id in this model's vocabulary \(0..{V - 1}\)"),
    (torch.tensor([[1, -1]]), {}, "holds token -1, which is not an id"),
    ([[1, 2], [3, V + 5]], {}, f"holds token {V + 5}"),
    (torch.tensor([[1.0, 2.0]]), {}, "must hold integer token ids, got a torch.float32 tensor"),
    ([[1, 2], [3]], {}, r"rows of input_ids have different lengths \(\[1, 2\]\)"),
    ([1, "a"], {}, "must be a tensor, a list of ints or a list of lists of ints"),
    ([1, True], {}, "must be a tensor, a list of ints or a list of lists of ints"),  # True is not a token id
    (np.float32(3.0), {}, "must be a tensor or a list of token ids, got float"),
    ([], {}, "non-empty"),
    ("1 2 3", {}, "must be a tensor or a list of token ids, got str"),
    (IDS, {"max_new_tokens": 2.5}, "max_new_tokens must be a non-negative integer, got 2.5"),
    (IDS, {"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer, got -1"),
    (IDS, {"temperature": -0.5}, "temperature must be a non-negative number"),
    (IDS, {"temperature": 1.0, "top_k": 2.5}, "top_k must be an integer"),
    (IDS, {"temperature": 1.0, "top_p": "0.9"}, r"top_p must be in \(0, 1\]"),
    (IDS, {"attention_mask": torch.ones(2, 3)}, r"attention_mask has shape \(2, 3\) but input_ids has \(2, 10\)"),
    (IDS, {"attention_mask": "all"}, "attention_mask must be a tensor on the model's cpu, got str"),
    (IDS, {"eos_token_id": "2"}, "eos_token_id must be an id or a list of ids"),
])
def test_generate_refuses_bad_input_before_running_the_model(guarded, ids, kwargs, message):
    with pytest.raises(LlmlabError, match=message):
        guarded.generate(ids, **kwargs)


def test_generate_takes_lists_of_ids():
    model = make()
    assert torch.equal(model.generate([5, 6, 7], max_new_tokens=4),
                       model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4))
    assert torch.equal(model.generate(np.array([5, 6, 7]), max_new_tokens=np.int64(4)),
                       model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4))
    assert torch.equal(model.generate([[5, 6, 7], [8, 9, 10]], [[0, 1, 1], [1, 1, 1]], max_new_tokens=4),
                       model.generate(torch.tensor([[5, 6, 7], [8, 9, 10]]),
                                      torch.tensor([[0, 1, 1], [1, 1, 1]]), max_new_tokens=4))


def test_generate_stops_at_the_configs_eos_like_the_engine():
    from llmlab.engine import LLM, SamplingParams

    prompt, n = [5, 6, 7], 10

    def new_tokens(model, **kw):
        return model.generate(torch.tensor([prompt]), max_new_tokens=n, **kw)[0, len(prompt):].tolist()

    free = new_tokens(make())
    stop = free[3]
    expected = free[:free.index(stop) + 1]
    assert len(expected) < n  # EOS must cut the run short, or this test proves nothing
    for eos in (stop, [V - 1, stop]):  # an id or a list of ids, as config.json allows
        model = make(eos_token_id=eos)  # the same weights (make seeds everything)
        assert new_tokens(model) == expected
    engine = LLM(model).generate([prompt], SamplingParams(temperature=0, max_tokens=n))[0].outputs[0]
    assert engine.token_ids == expected
    assert new_tokens(model, ignore_eos=True) == free
    other = next(t for t in free if t != stop)  # an explicit eos_token_id replaces the config's (transformers)
    assert new_tokens(model, eos_token_id=other) == free[:free.index(other) + 1]


def test_finished_rows_are_padded_with_the_configs_pad_id():
    free = make().generate(IDS, max_new_tokens=8)[:, IDS.shape[1]:]
    stop = int(free[0, 1])
    assert stop not in free[1, :3].tolist()  # row 1 runs on after row 0 stops, so padding shows
    out = make(eos_token_id=stop, pad_token_id=3).generate(IDS, max_new_tokens=8)[:, IDS.shape[1]:]
    assert out[0, :2].tolist() == free[0, :2].tolist() and set(out[0, 2:].tolist()) == {3}


def test_generate_runs_in_eval_mode_and_restores_each_modules_mode():
    model = make(dropout=0.5)
    ref = model.generate(IDS, max_new_tokens=6)
    model.train()
    model.blocks[0].eval()  # a part kept in eval (e.g. frozen) must stay so
    for _ in range(2):
        assert torch.equal(model.generate(IDS, max_new_tokens=6), ref)
    assert model.training and model.blocks[1].training and not model.blocks[0].training


# ---- from_pretrained / save_pretrained: files and arguments ------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = make()
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            del cfg[k]
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("kw, key", [({}, "num_attention_heads"), (GPT2_SHAPE, "n_head")], ids=["llama", "gpt2"])
def test_config_json_missing_a_required_key(tmp_path, kw, key):
    make(**kw).save_pretrained(tmp_path)
    _edit_config(tmp_path, **{key: None})
    with pytest.raises(CheckpointError, match=rf"config.json lacks the required key\(s\) {key}; .* must set them"):
        llmlab.from_pretrained(tmp_path)


def test_config_json_value_of_the_wrong_type_names_the_file(saved):
    _, d = saved
    _edit_config(d, num_hidden_layers="2")
    with pytest.raises(CheckpointError,
                       match="config.json: ModelConfig.num_layers must be a positive integer, got '2'"):
        llmlab.from_pretrained(d)


def test_config_json_that_is_not_an_object(saved):
    _, d = saved
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json holds a JSON list, not an object"):
        llmlab.from_pretrained(d)


@pytest.mark.parametrize("name", ["bfloat16", "bf16", torch.bfloat16])
def test_save_pretrained_takes_dtype_names(tmp_path, name):
    model = make()
    model.save_pretrained(tmp_path, dtype=name)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = llmlab.from_pretrained(tmp_path, dtype="bf16")
    for (n, a), b in zip(model.to(torch.bfloat16).state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("call", ["load", "save"])
@pytest.mark.parametrize("dtype, message", [(torch.int8, "torch.int8 is not a floating-point type"),
                                            ("int8", "unknown dtype 'int8'")])
def test_non_float_dtype_is_refused(saved, tmp_path, call, dtype, message):
    model, d = saved
    with pytest.raises(ConfigError, match=message):
        llmlab.from_pretrained(d, dtype=dtype) if call == "load" else model.save_pretrained(tmp_path / "o", dtype=dtype)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device, message", [
    pytest.param("cuda", "device 'cuda' was asked for but this machine has no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ("cuda:64", "device 'cuda:64' was asked for but this machine has"),
    ("gpu0", "device 'gpu0' is not a device name"),
])
def test_unusable_device_is_refused_before_reading(tmp_path, device, message):
    with pytest.raises(ConfigError, match=message):  # a ConfigError, not "does not exist": checked first
        llmlab.from_pretrained(tmp_path / "nope", device=device)


def test_save_pretrained_onto_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    for target in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        with pytest.raises(CheckpointError, match="a file is in the way of that directory"):
            make().save_pretrained(target)
