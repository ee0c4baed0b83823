"""vLLM's SamplingParams.prompt_logprobs: each prompt token's logprob, rank and top alternatives equal a
log_softmax of the model's own full-prompt logits — whole or in chunks (chunked prefill), through the C paged
kernel's rows and the gather path, with n > 1, after a preemption (computed once), with prefix caching on (no hits
taken for such a request; others still hit), through the async engine, and -1 as the whole vocabulary."""

from __future__ import annotations

import pytest
import torch
from test_engine_async import engine as make_engine

from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, RequestError, SamplingParams

CFG = ModelConfig(vocab_size=64, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                  max_position_embeddings=128)
PROMPT = [3, 9, 27, 17, 5, 6, 7, 8, 9, 10, 11, 12, 13, 40, 41, 2, 1, 60]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(CFG).eval()


@torch.no_grad()
def reference(model, prompt, k):
    """[None] + per token j >= 1: {its id: (logprob, rank)} and the top k {id: (logprob, rank 1..k)}."""
    lp = model(torch.tensor([prompt]))[0].float().log_softmax(-1)
    out = [None]
    for j in range(1, len(prompt)):
        row, t = lp[j - 1], prompt[j]
        alts = {t: (float(row[t]), int((row >= row[t]).sum()))}
        top = row.topk(k) if k else None
        for n, (i, v) in enumerate(zip(top.indices.tolist(), top.values.tolist()) if k else [], 1):
            alts.setdefault(i, (v, n))
        out.append(alts)
    return out


def finished_outputs(e) -> dict:
    """Step the engine until it is done; each request's final RequestOutput by id."""
    done = {}
    while e.has_unfinished_requests():
        for o in e.step():
            if o.finished:
                done[o.request_id] = o
    return done


def plain(prompt_logprobs):
    return [None if d is None else {i: (lp.logprob, lp.rank) for i, lp in d.items()} for d in prompt_logprobs]


def assert_close(got, want):
    assert len(got) == len(want) and got[0] is None and want[0] is None
    for g, w in zip(got[1:], want[1:], strict=True):
        assert g.keys() == w.keys()
        for i in g:
            assert g[i][1] == w[i][1] and g[i][0] == pytest.approx(w[i][0], abs=2e-5)


@pytest.mark.parametrize("kernel", ["auto", "gather"])
@pytest.mark.parametrize("budget", [8, 64])
def test_prompt_logprobs_equal_the_models_own(model, kernel, budget):
    llm = LLM(model, max_num_batched_tokens=budget, block_size=4, paged_kernel=kernel)
    for k in (0, 3):
        out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=k))[0]
        assert_close(plain(out.prompt_logprobs), reference(model, PROMPT, k))
    assert llm.generate([PROMPT], SamplingParams(max_tokens=2))[0].prompt_logprobs is None  # not asked for


def test_n_samples_and_a_batch_with_other_requests(model):
    llm = LLM(model, max_num_batched_tokens=16, block_size=4)
    other = [7, 8, 9, 10, 11]
    outs = llm.generate([PROMPT, other, PROMPT[:5]],
                        [SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=4, prompt_logprobs=1),
                         SamplingParams(temperature=0, max_tokens=4),
                         SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=2)])
    assert_close(plain(outs[0].prompt_logprobs), reference(model, PROMPT, 1))
    assert outs[1].prompt_logprobs is None
    assert_close(plain(outs[2].prompt_logprobs), reference(model, PROMPT[:5], 2))


def test_prefix_caching_takes_no_hits_for_them_and_keeps_serving_others(model):
    llm = LLM(model, block_size=4, enable_prefix_caching=True)
    params = SamplingParams(temperature=0, max_tokens=2)
    llm.generate([PROMPT], params)  # its full blocks are now cached
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=1))[0]
    assert out.num_cached_tokens == 0
    assert_close(plain(out.prompt_logprobs), reference(model, PROMPT, 1))
    assert llm.generate([PROMPT], params)[0].num_cached_tokens > 0  # others still hit (its blocks too)


def test_a_preempted_request_keeps_its_prompt_logprobs_once(model):
    e = LLM(model, block_size=4, num_gpu_blocks_override=20, max_num_batched_tokens=32).llm_engine  # 2 x 15 needed
    e.add_request("a", PROMPT, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, prompt_logprobs=2))
    e.add_request("b", PROMPT[::-1], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                                    prompt_logprobs=2))
    done = finished_outputs(e)
    assert e.scheduler.num_preemptions > 0
    assert_close(plain(done["a"].prompt_logprobs), reference(model, PROMPT, 2))
    assert_close(plain(done["b"].prompt_logprobs), reference(model, PROMPT[::-1], 2))


def test_the_async_engine_gives_the_same(model):
    results = []
    for async_on in (False, True):
        e = make_engine(model, async_on, max_num_batched_tokens=8)
        e.add_request("p", PROMPT, SamplingParams(temperature=0, max_tokens=5, prompt_logprobs=2))
        e.add_request("q", [5, 6, 7], SamplingParams(temperature=0, max_tokens=5))
        got = {}
        while e.has_unfinished_requests():
            for o in e.step():
                if o.finished:
                    got[o.request_id] = (o.outputs[0].token_ids, plain(o.prompt_logprobs or []))
        results.append(got)
    assert results[0] == results[1]
    assert_close(results[0]["p"][1], reference(model, PROMPT, 2))


def test_minus_one_is_the_whole_vocabulary_and_the_cap_applies(model):
    out = LLM(model).generate([PROMPT[:4]], SamplingParams(max_tokens=1, prompt_logprobs=-1))[0]
    assert [None if d is None else len(d) for d in out.prompt_logprobs] == [None, 64, 64, 64]
    with pytest.raises(RequestError, match="prompt_logprobs=3 is more than this engine's max_logprobs=2"):
        LLM(model, max_logprobs=2).generate([PROMPT], SamplingParams(prompt_logprobs=3))
    with pytest.raises(RequestError, match="prompt_logprobs must be None, >= 0, or -1"):
        SamplingParams(prompt_logprobs=-3)
    with pytest.raises(RequestError, match="prompt_logprobs must be None or an integer"):
        SamplingParams(prompt_logprobs=1.5)


@pytest.mark.parametrize("blocks,budget", [(7, 8), (9, 4), (10, 12)])
def test_a_request_preempted_mid_prompt_recomputes_but_records_each_token_once(model, blocks, budget):
    """Blocks so few that sequences are preempted between the chunks of their prompts (7 to 17 of the 18 tokens
    known): the recompute from token 0 adds only the entries not yet there."""
    e = LLM(model, block_size=4, num_gpu_blocks_override=blocks, max_num_batched_tokens=budget,
            max_num_seqs=3).llm_engine
    prompts = {"a": PROMPT, "b": PROMPT[::-1], "c": PROMPT[3:] + PROMPT[:3]}
    for rid, p in prompts.items():
        e.add_request(rid, p, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, prompt_logprobs=1))
    done = finished_outputs(e)
    assert e.scheduler.num_preemptions > 0
    for rid, p in prompts.items():
        assert_close(plain(done[rid].prompt_logprobs), reference(model, p, 1))


@pytest.mark.parametrize("mode", [dict(), dict(graphs=True), dict(graphs=True, async_on=True)])
def test_one_token_prompt_chunks_in_decode_steps_keep_their_logprobs(model, mode):
    """A prompt admitted beside a decoding request with one token of budget left gets 1-token chunks: steps of
    1-token rows only, which the direct and graph decode paths run, without the chunk's hidden states."""
    e = make_engine(model, mode.get("async_on", False), graphs=mode.get("graphs", False), max_num_batched_tokens=2)
    e.add_request("a", [1, 2], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    e.step()
    e.add_request("b", PROMPT[:6], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=1))
    assert_close(plain(finished_outputs(e)["b"].prompt_logprobs), reference(model, PROMPT[:6], 1))


def test_prompt_ids_outside_the_samplers_vocabulary_are_refused_for_them(model):
    llm = LLM(model)
    llm.llm_engine.runner.sample_vocab = 60  # a model vocabulary padded past its tokenizer's 60 ids
    with pytest.raises(RequestError, match="prompt_logprobs needs prompt ids .* the prompt has 62"):
        llm.generate([[3, 62, 5]], SamplingParams(max_tokens=2, prompt_logprobs=1))
    assert len(llm.generate([[3, 62, 5]], SamplingParams(max_tokens=2))[0].outputs[0].token_ids) == 2
