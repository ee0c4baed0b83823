"""The engine end to end on tiny random models: greedy parity with model.generate and transformers,
invariance to engine settings (prefix cache, chunking, preemption, batch size, graph-shaped decode),
per-request sampling, stops, logprobs, abort, and errors that leave the engine serving."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_

import llmlab
from llmlab.engine import LLM, LLMEngine, RequestError, SamplingParams
from llmlab.engine.config import EngineConfig

transformers = pytest.importorskip("transformers")

V = 97
COMMON = dict(vocab_size=V, bos_token_id=None, eos_token_id=None, pad_token_id=0)


def llama_like(cls, heads, kv, **kw):
    return cls(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=heads,
               num_key_value_heads=kv, max_position_embeddings=96, **COMMON, **kw)


CASES = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=96, resid_pdrop=0.0,
                                            embd_pdrop=0.0, attn_pdrop=0.0, **COMMON),
    "llama-gqa": lambda: llama_like(transformers.LlamaConfig, 6, 2),
    "qwen3": lambda: llama_like(transformers.Qwen3Config, 4, 2, head_dim=16),
    "mistral-window": lambda: llama_like(transformers.MistralConfig, 4, 2, sliding_window=6),
}

PROMPTS = [[5, 17, 42], [8, 1, 2, 3, 4, 5, 6, 7, 9], list(range(20, 37)), [60, 61, 62, 63, 64, 65]]
NEW = 12


def build_pair(case, tmp_path_factory):
    torch.manual_seed(0)
    hf = randomize_(transformers.AutoModelForCausalLM.from_config(CASES[case](), attn_implementation="eager")).eval()
    d = tmp_path_factory.mktemp(case)
    hf.save_pretrained(d)
    return hf, llmlab.from_pretrained(d)


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    return (request.param, *build_pair(request.param, tmp_path_factory))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_pair("llama-gqa", tmp_path_factory)[1]


def reference(model, prompts, n=NEW):
    return [model.generate(torch.tensor([p]), max_new_tokens=n)[0, len(p):].tolist() for p in prompts]


def greedy(llm, prompts, n=NEW, **kw):
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=n, **kw))
    return [o.outputs[0].token_ids for o in outs]


def test_greedy_matches_generate_and_transformers(pair):
    case, hf, model = pair
    llm = LLM(model, block_size=4, max_num_batched_tokens=16)  # small budget: prompts are chunked
    got = greedy(llm, PROMPTS)
    assert got == reference(model, PROMPTS), case
    for p, g in zip(PROMPTS, got):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert g == ref[0, len(p):].tolist(), case
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


SHARED = [1, 2, 3, 4, 5, 6, 7, 8]  # two full blocks of 4: every prompt below shares them
CONFIG_PROMPTS = [SHARED + [9, 10], SHARED, SHARED + [11], [40, 41, 42], SHARED + [9, 10], list(range(50, 63))]

SETTINGS = {
    "default": dict(),
    "no-prefix-cache": dict(enable_prefix_caching=False),
    "no-chunking": dict(enable_chunked_prefill=False, max_num_batched_tokens=64),
    "tiny-budget": dict(max_num_batched_tokens=3),
    "one-at-a-time": dict(max_num_seqs=1),
    "preemption": dict(num_blocks=10, block_size=4),
    "graph-shaped-decode": dict(pad_decode=True),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_is_identical_under_every_engine_setting(llama, setting):
    opts = {"block_size": 4, "max_num_batched_tokens": 32, **SETTINGS[setting]}
    pad = opts.pop("pad_decode", False)
    engine = LLMEngine(llama, config=EngineConfig(**opts), pad_decode=pad)
    params = SamplingParams(temperature=0, max_tokens=NEW)
    for i, p in enumerate(CONFIG_PROMPTS):
        engine.add_request(str(i), p, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    got = [done[str(i)].outputs[0].token_ids for i in range(len(CONFIG_PROMPTS))]
    assert got == reference(llama, CONFIG_PROMPTS)
    stats = engine.stats()
    assert stats["free_blocks"] == stats["num_blocks"]
    if setting == "preemption":
        assert stats["preemptions"] > 0
    if setting == "default":
        assert stats["prefix_cache_hit_rate"] > 0.2
        assert done["1"].num_cached_tokens == 4  # exact multiple: all but the last block reused


def run_all(engine: LLMEngine) -> dict:
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def test_seeded_sampling_is_reproducible_alone_batched_and_preempted(llama):
    p = SamplingParams(temperature=1.0, top_k=20, max_tokens=NEW, seed=7)
    alone = LLM(llama, block_size=4).generate([PROMPTS[1]], p)[0].outputs[0].token_ids
    crowd = [PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    noisy = SamplingParams(temperature=1.0, max_tokens=NEW)
    batched = LLM(llama, block_size=4).generate(crowd, [noisy, p, noisy])[1].outputs[0].token_ids
    llm = LLM(llama, block_size=4, num_blocks=9)
    preempted = llm.generate(crowd, [noisy, p, noisy])[1].outputs[0].token_ids
    assert llm.engine.stats()["preemptions"] > 0
    assert alone == batched == preempted
    other = LLM(llama, block_size=4).generate([PROMPTS[1]], SamplingParams(temperature=1.0, top_k=20, max_tokens=NEW,
                                                                           seed=8))
    assert other[0].outputs[0].token_ids != alone


def test_n_gives_independent_samples(llama):
    out = LLM(llama).generate([PROMPTS[0]], SamplingParams(n=3, temperature=1.5, max_tokens=NEW, seed=1))[0]
    samples = [c.token_ids for c in out.outputs]
    assert [c.index for c in out.outputs] == [0, 1, 2] and all(len(s) == NEW for s in samples)
    assert len({tuple(s) for s in samples}) == 3


def test_per_request_parameters_in_one_batch(llama):
    llm = LLM(llama, block_size=4)
    params = [SamplingParams(temperature=0, max_tokens=5), SamplingParams(temperature=2.0, max_tokens=9, seed=3),
              SamplingParams(temperature=0, max_tokens=NEW, repetition_penalty=1.5)]
    outs = llm.generate(PROMPTS[:3], params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [5, 9, NEW]
    assert outs[0].outputs[0].token_ids == reference(llama, PROMPTS[:1], 5)[0]
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    # The penalty really applies: the penalised row repeats less than greedy on the same prompt.
    plain = reference(llama, PROMPTS[2:3])[0]
    assert outs[2].outputs[0].token_ids != plain


def test_penalties_over_many_steps_match_transformers(tmp_path_factory):
    """Penalised rows depend on the tokens so far: the engine rebuilds their sampling tensors every step (rows
    without penalties reuse the last step's), and each sequence matches transformers' greedy generate."""
    hf, model = build_pair("llama-gqa", tmp_path_factory)
    penalties = [dict(repetition_penalty=1.5), dict(frequency_penalty=0.0), dict(repetition_penalty=0.7)]
    outs = LLM(model, block_size=4).generate(PROMPTS[:3], [SamplingParams(temperature=0, max_tokens=2 * NEW, **p)
                                                           for p in penalties])
    for p, kw, out in zip(PROMPTS, penalties, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=2 * NEW, do_sample=False, pad_token_id=0,
                              eos_token_id=None, repetition_penalty=kw.get("repetition_penalty", 1.0))
        assert out.outputs[0].token_ids == ref[0, len(p):].tolist(), kw


def test_stop_token_ids_and_ignore_eos(llama):
    ref = reference(llama, PROMPTS[:1])[0]
    stop = ref[3]
    first = ref.index(stop)
    out = LLM(llama).generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=NEW, stop_token_ids=[stop]))
    c = out[0].outputs[0]
    assert c.token_ids == ref[:first + 1] and c.finish_reason == "stop" and c.stop_reason == stop
    llama.cfg.eos_token_id = stop  # EOS from the model's config ...
    try:
        eos = LLM(llama).generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=NEW))[0].outputs[0]
        ignored = LLM(llama).generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=NEW,
                                                                   ignore_eos=True))[0].outputs[0]
    finally:
        llama.cfg.eos_token_id = None
    assert eos.token_ids == ref[:first + 1] and eos.finish_reason == "stop"
    assert ignored.token_ids == ref and ignored.finish_reason == "length"  # ... unless ignore_eos


def test_logprobs_are_the_models(llama):
    out = LLM(llama).generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=4, logprobs=2))[0].outputs[0]
    ids = torch.tensor([PROMPTS[1] + out.token_ids])
    with torch.no_grad():
        ref = llama(ids)[0, len(PROMPTS[1]) - 1:-1].log_softmax(-1)  # predictions of the 4 output tokens
    assert len(out.logprobs) == 4
    for step, (tok, lps) in enumerate(zip(out.token_ids, out.logprobs)):
        assert lps[tok].logprob == pytest.approx(ref[step, tok].item(), abs=1e-4)
        assert set(lps) == {tok, *ref[step].topk(2).indices.tolist()}
        assert next(iter(lps)) == tok  # the sampled id first, as vLLM's
        for i, lp in lps.items():  # rank: how many ids are at least as likely (greedy: the chosen one is first)
            assert lp.rank == int((ref[step] >= ref[step, i]).sum()) and lp.decoded_token is None
    assert out.cumulative_logprob == pytest.approx(sum(lps[t].logprob for t, lps in zip(out.token_ids, out.logprobs)))


def test_logprobs_rank_and_text_of_a_sampled_token(llama, tmp_path):
    """A sampled (not greedy) token's rank is its place in the vocabulary, and each entry carries its text."""
    from llmlab.engine import Logprob
    from llmlab.tokenizer import train_bpe

    tok = train_bpe(["hello world, the engine speaks"] * 4, vocab_size=300, progress=False)  # ids 0-96: bytes
    llm = LLM(llama, tokenizer=tok)
    out = llm.generate([PROMPTS[0]], SamplingParams(temperature=5.0, seed=3, max_tokens=6, logprobs=1))[0].outputs[0]
    ids = torch.tensor([PROMPTS[0] + out.token_ids])
    with torch.no_grad():
        ref = llama(ids)[0, len(PROMPTS[0]) - 1:-1].float().log_softmax(-1)
    assert any(lps[t].rank > 1 for t, lps in zip(out.token_ids, out.logprobs))  # temperature 5 leaves the top
    for step, (t, lps) in enumerate(zip(out.token_ids, out.logprobs)):
        assert isinstance(lps[t], Logprob) and lps[t].rank == int((ref[step] >= ref[step, t]).sum())
        assert all(lp.decoded_token == tok.decode([i]) for i, lp in lps.items())


def test_step_streams_every_progressing_request_or_only_finished_ones(llama):
    engine = LLMEngine(llama, config=EngineConfig(block_size=4))
    for i, (p, n) in enumerate(zip(PROMPTS[:3], (3, NEW, 5))):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=n))
    first = engine.step()  # default: one output per request that progressed, finished or not
    assert sorted(o.request_id for o in first) == ["0", "1", "2"] and not any(o.finished for o in first)
    seen = []
    while engine.has_unfinished_requests():
        outs = engine.step(finished_only=True)
        assert all(o.finished for o in outs)
        seen += [(o.request_id, len(o.outputs[0].token_ids)) for o in outs]
    assert seen == [("0", 3), ("2", 5), ("1", NEW)]  # each once, when it finished, with all its tokens


def test_abort_frees_blocks_and_others_finish(llama):
    engine = LLMEngine(llama, config=EngineConfig(block_size=4))
    bm = engine.block_manager
    for i, p in enumerate(PROMPTS[:3]):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=NEW))
    for _ in range(3):
        engine.step()
    held = len(engine.requests["1"].seqs[0].block_table)
    used = bm.num_used_blocks
    assert engine.abort("1") and not engine.abort("1")
    assert bm.num_used_blocks == used - held
    done = run_all(engine)
    assert set(done) == {"0", "2"} and done["2"].outputs[0].token_ids == reference(llama, PROMPTS[2:3])[0]
    assert bm.num_free_blocks == bm.num_blocks and all(r == 0 for r in bm.ref_count)


@pytest.mark.parametrize("prompt, params, match", [
    ([], SamplingParams(), "empty"),
    (list(range(96)), SamplingParams(), "context"),
    ([1, V + 5], SamplingParams(), "vocabulary"),
    ([1, 2], SamplingParams(max_tokens=90), "blocks"),
    ("text", SamplingParams(), "tokenizer"),
])
def test_bad_requests_are_refused_and_the_engine_keeps_serving(llama, prompt, params, match):
    engine = LLMEngine(llama, config=EngineConfig(block_size=4, num_blocks=16))
    engine.add_request("good", PROMPTS[0], SamplingParams(temperature=0, max_tokens=NEW))
    engine.step()
    with pytest.raises(RequestError, match=match):
        engine.add_request("bad", prompt, params)
    assert "bad" not in engine.requests
    with pytest.raises(RequestError, match="already in use"):
        engine.add_request("good", PROMPTS[1])
    done = run_all(engine)
    assert done["good"].outputs[0].token_ids == reference(llama, PROMPTS[:1])[0]


def test_generate_is_all_or_nothing(llama):
    llm = LLM(llama, block_size=4)
    with pytest.raises(RequestError, match="empty"):
        llm.generate([PROMPTS[0], []], SamplingParams(temperature=0))
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks
    assert greedy(llm, PROMPTS[:1]) == reference(llama, PROMPTS[:1])


def test_batch_buckets_cover_every_batch_size():
    from llmlab.engine.cuda_graphs import batch_buckets, bucket_batch

    assert batch_buckets(1) == [1]
    assert batch_buckets(5) == [8, 4, 2, 1]
    assert batch_buckets(256) == [256 - 16 * i for i in range(15)] + [16, 8, 4, 2, 1]
    for n in range(1, 300):  # every batch replays a graph captured at start-up: its bucket is in the list
        assert bucket_batch(n) in batch_buckets(max(n, 17))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decode_matches_eager(llama):
    from llmlab.engine.cuda_graphs import batch_buckets

    model = llama.to("cuda")
    try:
        llm = LLM(model, device="cuda", block_size=4, max_num_seqs=20)
        runner = llm.engine.runner  # with the paged kernel: every batch bucket captured at start-up, full width
        assert sorted(runner.graphs.graphs) == sorted((b, runner.graphs.max_nb) for b in batch_buckets(20))
        graphs = greedy(llm, PROMPTS)
        assert len(runner.graphs.graphs) == len(batch_buckets(20))  # no capture while serving
        eager = greedy(LLM(model, device="cuda", block_size=4, enforce_eager=True), PROMPTS)
    finally:
        llama.to("cpu")
    assert graphs == eager == reference(llama, PROMPTS)


def test_kv_cache_is_sized_from_the_memory_budget(llama):
    from llmlab.model.cache import PagedKVCache

    per_block = PagedKVCache.bytes_per_block(llama.cfg, 8, torch.float32)
    assert per_block == 2 * 2 * 8 * 2 * 8 * 4  # K and V, 2 layers, 8 slots, 2 KV heads, head_dim 8, fp32
    llm = LLM(llama, block_size=8, kv_cache_memory=37 * per_block + 5)
    assert llm.engine.block_manager.num_blocks == 37
    assert llm.engine.runner.kv.nbytes() == 38 * per_block  # + the scratch block for padded rows
    with pytest.raises(llmlab.ConfigError, match="below one block"):
        LLM(llama, block_size=8, kv_cache_memory=per_block - 1)


def test_a_card_gives_no_more_blocks_than_the_sequences_can_use(llama):
    """On CUDA the free memory (gpu_memory_utilization) sizes the cache, capped at what max_num_seqs sequences of
    max_model_len hold: 90% of an H200 in a tiny model's blocks was ~10^8 blocks (seconds and GBs of host
    bookkeeping per engine), and a second engine in the same process found no memory left. An explicit
    kv_cache_memory is taken as given."""
    from types import SimpleNamespace

    from llmlab.engine.model_runner import ModelRunner
    from llmlab.model.cache import PagedKVCache

    per_block = PagedKVCache.bytes_per_block(llama.cfg, 8, torch.float32)
    runner = SimpleNamespace(cfg=llama.cfg, block_size=8, dtype=torch.float32, device=torch.device("cuda"),
                             max_blocks_per_seq=16, config=SimpleNamespace(kv_cache_memory=None, max_num_seqs=4),
                             _cuda_kv_budget=lambda: 10**6 * per_block)
    assert ModelRunner._blocks_from_memory(runner) == 4 * 16
    runner._cuda_kv_budget = lambda: 10 * per_block + 3  # less free memory than that: what is free
    assert ModelRunner._blocks_from_memory(runner) == 10


def test_a_cpu_engine_builds_its_c_kernels_before_it_needs_them(llama, monkeypatch):
    """On a machine's first start the C kernels build side by side, with a line on stderr (kernels/cbuild.py
    `prebuild`), instead of one after another in silence as each is first used."""
    from llmlab.kernels import cbuild

    calls = []
    monkeypatch.setattr(cbuild, "prebuild", lambda names=None: calls.append(names) or [])
    llm = LLM(llama, block_size=4)
    assert calls == [None]  # every kernel, before the start-up timings use them
    assert greedy(llm, PROMPTS[:1]) == reference(llama, PROMPTS[:1])


def test_dtype_auto_is_the_default_as_in_vllm(llama, tmp_path):
    """dtype="auto" (vLLM's spelling): bf16 on CUDA, fp32 on CPU for a checkpoint; a Transformer keeps its own."""
    llama.save_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    default = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    assert LLM(tmp_path / "m", dtype="auto").engine.runner.dtype == default
    half = llmlab.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert LLM(half, dtype="auto").engine.runner.dtype == torch.bfloat16
    with pytest.raises(llmlab.ConfigError, match="unknown dtype 'automatic'"):
        LLM(tmp_path / "m", dtype="automatic")


def test_progress_bar_by_default_only_at_a_terminal_for_several_prompts(llama, monkeypatch, capsys):
    """As vLLM's `use_tqdm`, but only where someone watches: a terminal, more than one prompt; False / True rule."""
    import sys

    llm = LLM(llama, block_size=4)
    p = SamplingParams(temperature=0, max_tokens=2)
    for tty, prompts, use_tqdm, shown in ((True, PROMPTS[:2], None, True), (True, PROMPTS[:1], None, False),
                                          (False, PROMPTS[:2], None, False), (True, PROMPTS[:2], False, False),
                                          (False, PROMPTS[:1], True, True)):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        llm.generate(prompts, p, use_tqdm=use_tqdm)
        assert ("generate: 100%" in capsys.readouterr().err) == shown, (tty, len(prompts), use_tqdm)
