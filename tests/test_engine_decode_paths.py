"""The engine's optional decode paths give the same greedy tokens: fused projections, compiled decode step
(on CPU: Inductor with frozen weights, one graph for every batch size and context length)."""

import pytest
import torch

from llmlab import ModelConfig, Transformer
from llmlab.engine import SamplingParams
from llmlab.engine.config import EngineConfig
from llmlab.engine.llm_engine import LLMEngine

PROMPTS = [list(range(1, 1 + n)) for n in (5, 17, 40)]


@pytest.fixture(scope="module")
def cfg():
    return ModelConfig(vocab_size=101, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=96, max_position_embeddings=256)


def greedy(cfg, seed: int = 0, max_tokens=(12, 12, 12), setup=None, **options) -> dict[str, list[int]]:
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()  # a fresh copy each time: fusion changes the module in place
    engine = LLMEngine(model, None, EngineConfig(block_size=4, cpu_pack_linears=False, **options), pad_decode=True)
    if setup is not None:
        setup(engine)
    for i, (p, m) in enumerate(zip(PROMPTS, max_tokens)):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
    out = {}
    while engine.has_unfinished_requests():
        out |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
    return out


def test_fused_projections_give_the_same_tokens(cfg):
    assert greedy(cfg, fuse_projections=True) == greedy(cfg, fuse_projections=False)


@pytest.mark.parametrize("max_num_seqs", [4, 256])  # Inductor's own GEMM kernels (<= 4 sequences), oneDNN
def test_compiled_cpu_decode_is_one_graph_for_every_batch_and_context(cfg, max_num_seqs):
    """The batch shrinks 3 -> 2 -> 1 (padded to 2) while contexts cross block boundaries: on the real model each
    recompile would cost minutes on two cores, so exactly one graph may be compiled."""
    from torch._dynamo.utils import counters

    if max_num_seqs <= 4:  # Inductor times a C++ GEMM kernel per weight shape and builds one per linear (each a
        # C++ compile of ~5 s on two cores): one layer whose five linears have two shapes (q/k/v, gate/up and the LM
        # head 64->128, o and down 64->64), not two layers of five shapes: 80 -> ~30 s
        cfg = cfg.replace(num_layers=1, intermediate_size=cfg.hidden_size, vocab_size=128)
    before = counters["stats"]["unique_graphs"]
    lengths = (3, 9, 30)
    compiled = greedy(cfg, max_tokens=lengths, compile_decode=True, max_num_seqs=max_num_seqs)
    assert compiled == greedy(cfg, max_tokens=lengths)
    assert counters["stats"]["unique_graphs"] - before == 1


def test_every_compiled_engine_compiles_past_dynamos_recompile_limit(cfg):
    """Dynamo stops compiling a code object after recompile_limit variants and runs it eagerly with only a log
    line; each engine's decode step has a code object of its own, so a limit of 1 still compiles both. The two
    engines (different weights) also share the compiled function's code: each must run its own weights."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(cache_size_limit=1):  # recompile_limit's older name: both torch versions
        a, b = greedy(cfg, seed=3, compile_decode=True), greedy(cfg, seed=4, compile_decode=True)
    assert counters["stats"]["unique_graphs"] - before == 2
    assert a == greedy(cfg, seed=3) and b == greedy(cfg, seed=4) and a != b


def test_changing_weights_after_a_frozen_compile_is_refused(cfg):
    from llmlab.errors import ConfigError

    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    engine = LLMEngine(model, None, EngineConfig(block_size=4, compile_decode=True))
    engine.add_request("0", [1, 2, 3], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    for _ in range(3):  # prefill, then compiled decode steps
        engine.step()
    with torch.no_grad():
        model.blocks[0].ffn.down.weight.mul_(2.0)  # as an RL trainer would between rollouts
    with pytest.raises(ConfigError, match="weights changed after compile_decode"):
        engine.step()


def test_compiled_decode_writes_the_cache_in_place(cfg):
    """Traced, an in-place write into a view of one big KV tensor became a copy of the whole pool per layer and
    step (decode time grew with the cache: 0.5 -> 19 ms per step at 8192 blocks); each layer's pool is its own
    tensor now, so a compiled step costs about the same with a small and a 64x larger cache."""
    import time

    def step_ms(num_blocks: int) -> float:
        torch.manual_seed(0)
        engine = LLMEngine(Transformer(cfg).eval(), None, EngineConfig(
            block_size=16, cpu_pack_linears=False, compile_decode=True, num_blocks=num_blocks), pad_decode=True)
        engine.add_request("0", [1, 2, 3], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        for _ in range(5):  # prefill, compile, warm
            engine.step()
        best = float("inf")
        for _ in range(10):
            t0 = time.perf_counter()
            engine.step()
            best = min(best, time.perf_counter() - t0)
        return best * 1e3

    small, large = step_ms(128), step_ms(128 * 64)  # pools of 0.5 MB and 33 MB per K and V
    assert large < 3 * small + 1.0, f"compiled decode step {large:.2f} ms with a 64x cache vs {small:.2f} ms"


@pytest.mark.parametrize("kernel", ["cpu", "gather"])
def test_graph_replay_path_gives_the_same_tokens(cfg, kernel):
    """The CUDA-graph bookkeeping, run on the CPU with replays emulated: with the paged kernel every batch
    bucket is captured up front at the full table width (scratch inputs) and steps copy only the columns they
    use, so rows hold stale columns as sequences finish and rows shift; the gather path captures per (batch,
    width) bucket as steps need them. Tokens must match the plain padded path."""
    from llmlab.engine.emulated_graphs import emulate_cuda_graphs

    if kernel == "cpu":
        from llmlab.kernels import cpu_paged_attention as cpa

        if not cpa.supports(torch.float32):
            pytest.skip("no C compiler for the CPU paged kernel")
    graphs = {}

    def emulate_graphs(engine):
        graphs["runner"], graphs["engine"] = engine.runner, engine
        graphs["at start"] = sorted(emulate_cuda_graphs(engine.runner).graphs)

    lengths = (12, 30, 6)  # sequences finish at different steps: the batch goes 3 -> 2 -> 1 rows
    want = greedy(cfg, max_tokens=lengths, paged_kernel=kernel, max_num_seqs=3)
    got = greedy(cfg, max_tokens=lengths, setup=emulate_graphs, paged_kernel=kernel, max_num_seqs=3)
    assert got == want
    stats = graphs["engine"].stats()  # the prefill step runs eagerly, every decode-only step replays
    assert stats["graph_steps"] == stats["steps"] - 1 == max(lengths) - 1
    assert stats["step_seconds"] >= stats["sync_wait_seconds"] >= 0
    keys = sorted(graphs["runner"].graphs.graphs)
    if kernel == "cpu":  # buckets 4, 2, 1 at full width, all captured before the first request
        assert graphs["at start"] == keys == sorted((b, graphs["runner"].graphs.max_nb) for b in (1, 2, 4))
    else:  # a (batch, width) bucket each, as the steps came
        assert len({b for b, _ in keys}) == 3 and len({nb for _, nb in keys}) > 1
