"""Engine API edges a user audit met: LLM.generate stepping past another caller's requests (their finished
outputs were dropped), yes/no SamplingParams fields given non-bools, logprobs=-1 (vLLM: the whole vocabulary),
LLMEngine.get_tokenizer / get_num_unfinished_requests, and tuple conversations in chat()."""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_robustness import clean, tiny

from llmlab.engine import LLM, RequestError, SamplingParams
from llmlab.tokenizer import DEFAULT_CHAT_TEMPLATE, train_bpe

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


def test_generate_keeps_the_finished_outputs_of_requests_it_did_not_add():
    llm = LLM(tiny())
    engine = llm.llm_engine
    engine.add_request("mine", [1, 2, 3], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    outs = llm.generate([[4, 5, 6]], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    assert [o.request_id for o in outs] == ["gen-0"]
    assert engine.has_unfinished_requests() and engine.get_num_unfinished_requests() == 1  # owed to its caller
    got = []
    while engine.has_unfinished_requests():
        got += engine.step()
    assert [(o.request_id, o.finished, len(o.outputs[0].token_ids)) for o in got] == [("mine", True, 2)]
    alone = LLM(tiny()).generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    assert got[0].outputs[0].token_ids == alone[0].outputs[0].token_ids
    assert engine.step() == [] and clean(llm)


def test_yes_no_sampling_fields_take_only_bools():
    for name in ("ignore_eos", "skip_special_tokens"):
        for bad in ("false", "no", 1, None):
            with pytest.raises(RequestError, match=f"{name} must be True or False"):
                SamplingParams(**{name: bad})
        assert getattr(SamplingParams(**{name: np.bool_(False)}), name) is False


def test_logprobs_minus_one_returns_every_tokens_logprob():
    llm = LLM(tiny(vocab=101))
    every = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=3, logprobs=-1))[0].outputs[0]
    explicit = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=3, logprobs=101))[0].outputs[0]
    assert [len(d) for d in every.logprobs] == [101] * 3
    assert every.token_ids == explicit.token_ids
    assert [{i: lp.logprob for i, lp in d.items()} for d in every.logprobs] == \
        [{i: lp.logprob for i, lp in d.items()} for d in explicit.logprobs]
    with pytest.raises(RequestError, match=r"logprobs must be None, >= 0, or -1"):
        SamplingParams(logprobs=-2)
    capped = LLM(tiny(vocab=101), max_logprobs=20)
    with pytest.raises(RequestError, match="logprobs=101 is more than this engine's max_logprobs=20"):
        capped.generate([[5, 6, 7]], SamplingParams(logprobs=-1))
    assert clean(llm) and clean(capped)


def test_the_engine_has_vllms_tokenizer_and_count_methods():
    tok = train_bpe(["hello there, how are you? fine thanks. " * 10], vocab_size=300, progress=False)
    llm = LLM(tiny(vocab=tok.vocab_size, max_position_embeddings=256), tokenizer=tok)
    engine = llm.llm_engine
    assert engine.get_tokenizer() is tok and LLM(tiny()).llm_engine.get_tokenizer() is None
    assert engine.get_num_unfinished_requests() == 0
    engine.add_request("a", [1, 2], GREEDY)
    engine.add_request("b", [3, 4], GREEDY)
    assert engine.get_num_unfinished_requests() == 2
    engine.abort("a")
    assert engine.get_num_unfinished_requests() == 1


def test_chat_takes_tuples_as_generate_does():
    tok = train_bpe(["hello there, how are you? fine thanks. " * 10], vocab_size=300, progress=False)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    llm = LLM(tiny(vocab=tok.vocab_size, max_position_embeddings=256), tokenizer=tok)
    conv = [{"role": "user", "content": "hello"}]
    want = llm.chat(conv, GREEDY)[0].outputs[0].token_ids
    assert llm.chat(tuple(conv), GREEDY)[0].outputs[0].token_ids == want
    assert [o.outputs[0].token_ids for o in llm.chat((tuple(conv), conv), GREEDY)] == [want, want]
    assert clean(llm)


def test_metrics_follow_a_step_of_the_wall_clock(monkeypatch):
    """time.time() stepped (NTP) after the engine started: the stamps of a later request are on the new clock."""
    import time

    llm = LLM(tiny())
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 1000.0)
    out = llm.generate([[1, 2, 3]], GREEDY)[0]
    m = out.metrics
    assert abs(m.finished_time - time.time()) < 5 and abs(m.first_token_time - time.time()) < 5
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time


def test_a_numpy_seed_samples_as_its_int_and_breaks_no_other_request():
    """np.int64 seeds (a seed drawn with numpy) overflowed inside the step, which aborted every request in it."""
    llm = LLM(tiny())
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=4, ignore_eos=True, seed=5)
    want = llm.generate([[1, 2, 3]], params)[0].outputs[0].token_ids
    engine.add_request("other", [4, 5, 6], SamplingParams(max_tokens=4, ignore_eos=True, seed=1))
    engine.add_request("numpy", [1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True, seed=np.int64(5)))
    got = {}
    while engine.has_unfinished_requests():
        got.update((o.request_id, o.outputs[0].token_ids) for o in engine.step(finished_only=True))
    assert got["numpy"] == want and len(got["other"]) == 4
    assert type(SamplingParams(n=np.int64(2), top_k=np.int32(3), max_tokens=np.int64(4), min_tokens=np.int8(1),
                               logprobs=np.int64(2), seed=np.uint64(2**63)).seed) is int
    assert clean(llm)


def test_an_unhashable_request_id_or_a_template_not_text_is_one_sentence():
    """Both were raw TypeErrors: 'unhashable type: list' from the engine, 'expected string' from the renderer."""
    tok = train_bpe(["hello there, how are you? fine thanks. " * 10], vocab_size=300, progress=False)
    llm = LLM(tiny(vocab=tok.vocab_size, max_position_embeddings=256), tokenizer=tok)
    with pytest.raises(RequestError, match=r"request id \['a'\] is a list, which cannot key a request; give a string"):
        llm.llm_engine.add_request(["a"], [1, 2], GREEDY)
    with pytest.raises(RequestError, match="chat_template must be the template's Jinja text \\(a str\\), got int"):
        llm.chat([{"role": "user", "content": "hello"}], GREEDY, chat_template=5)
    assert clean(llm)
