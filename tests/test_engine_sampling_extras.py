"""vLLM's min_tokens, include_stop_str_in_output, logit_bias and allowed_token_ids: against a reference decode loop
over the model's own logits (greedy with the same masks and biases), in a batch with rows that use none of them,
through the async engine (emulated CUDA-graph replays) as through the waiting one, and their input checks."""

from __future__ import annotations

import pytest
import torch
from test_engine_async import drain
from test_engine_async import engine as make_engine

from llmlab import ModelConfig, Transformer
from llmlab.engine import LLM, RequestError, SamplingParams
from llmlab.engine.output import Detokenizer
from llmlab.engine.sampler import SamplingBatch, sample
from llmlab.tokenizer import train_bpe

CFG = ModelConfig(vocab_size=64, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                  max_position_embeddings=128)
PROMPT = [3, 9, 27, 17]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(CFG).eval()


@torch.no_grad()
def reference(model, prompt, n, *, stop=(), min_tokens=0, bias=None, allowed=None):
    """Greedy over the model's logits with min_tokens' stop ids at -inf, the bias added, only `allowed` ids; ends
    at a stop id (from min_tokens on) or after n tokens."""
    ids, out = list(prompt), []
    while len(out) < n:
        logits = model(torch.tensor([ids]))[0, -1].float()
        if allowed is not None:
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep[list(allowed)] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        if len(out) < min_tokens:
            logits[list(stop)] = float("-inf")
        for t, b in (bias or {}).items():
            logits[t] += b
        t = int(logits.argmax())
        out.append(t)
        ids.append(t)
        if t in stop and len(out) >= min_tokens:
            break
    return out


def greedy_first(model, prompt, k):
    return reference(model, prompt, k)


def test_min_tokens_keeps_stop_tokens_out_until_then(model):
    llm = LLM(model)
    first = greedy_first(model, PROMPT, 1)[0]  # the stop id greedy picks at once
    stop = SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[first])
    assert llm.generate([PROMPT], stop)[0].outputs[0].token_ids == [first]
    for m in (1, 3, 10):
        params = SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[first], min_tokens=m)
        out = llm.generate([PROMPT], params)[0].outputs[0]
        want = reference(model, PROMPT, 10, stop={first}, min_tokens=m)
        assert out.token_ids == want and first not in want[:m]
        assert out.finish_reason == ("stop" if want[-1] == first else "length")


def test_logit_bias_and_allowed_token_ids_equal_the_reference(model):
    llm = LLM(model)
    bias = {5: 4.0, 11: -50.0, 40: 2.5}
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8, logit_bias=bias))[0].outputs[0]
    assert out.token_ids == reference(model, PROMPT, 8, bias=bias)
    allowed = [2, 7, 19, 33]
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8, allowed_token_ids=allowed,
                                                logprobs=0))[0].outputs[0]
    assert out.token_ids == reference(model, PROMPT, 8, allowed=allowed)
    # logprobs stay those of the model's raw distribution (vLLM's default), not of the masked one
    with torch.no_grad():
        raw = model(torch.tensor([PROMPT]))[0, -1].float().log_softmax(-1)
    assert out.logprobs[0][out.token_ids[0]].logprob == pytest.approx(float(raw[out.token_ids[0]]), abs=1e-5)
    sampled = llm.generate([PROMPT], SamplingParams(temperature=1.5, max_tokens=30, seed=0,
                                                    allowed_token_ids=allowed))[0].outputs[0].token_ids
    assert set(sampled) <= set(allowed) and len(set(sampled)) > 1
    forced = llm.generate([PROMPT], SamplingParams(temperature=1.0, max_tokens=6, seed=1,
                                                   logit_bias={13: 100.0}))[0].outputs[0].token_ids
    assert forced == [13] * 6


def test_rows_with_and_without_them_share_a_batch(model):
    llm = LLM(model)
    first = greedy_first(model, PROMPT, 1)[0]
    params = [SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[first], min_tokens=4),
              SamplingParams(temperature=0, max_tokens=6),
              SamplingParams(temperature=0, max_tokens=6, logit_bias={9: 3.0}),
              SamplingParams(temperature=0, max_tokens=6, allowed_token_ids=[1, 2, 3]),
              SamplingParams(temperature=0.8, max_tokens=6, seed=5)]
    prompts = [PROMPT, [1, 2, 3], PROMPT, [4, 5], [6, 7, 8]]
    together = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    alone = [llm.generate([p], q)[0].outputs[0].token_ids for p, q in zip(prompts, params, strict=True)]
    assert together == alone
    assert together[0] == reference(model, PROMPT, 6, stop={first}, min_tokens=4)


def test_async_engine_gives_the_waiting_engines_outputs(model):
    first = greedy_first(model, PROMPT, 1)[0]
    requests = [("m", PROMPT, SamplingParams(temperature=0, max_tokens=9, stop_token_ids=[first], min_tokens=5)),
                ("b", [8, 9, 10], SamplingParams(temperature=0, max_tokens=9, logit_bias={20: 5.0, 21: 5.0})),
                ("a", [11, 12], SamplingParams(temperature=0.9, seed=3, max_tokens=9, allowed_token_ids=[4, 5, 6])),
                ("p", PROMPT, SamplingParams(temperature=0, max_tokens=9, min_tokens=2, repetition_penalty=1.3,
                                             stop_token_ids=[first]))]
    results = []
    for async_on in (False, True):
        e = make_engine(model, async_on)
        for rid, prompt, params in requests:
            e.add_request(rid, prompt, params)
        results.append(drain(e))
    assert results[0] == results[1]
    assert results[0]["m"][0][0] == reference(model, PROMPT, 9, stop={first}, min_tokens=5)


def test_sampler_applies_them_before_the_penalties_and_greedy_pick():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [0.0, 3.0, 1.0, 2.0]])
    params = [SamplingParams(temperature=0, logit_bias={2: 2.5}), SamplingParams(temperature=0,
                                                                                 allowed_token_ids=[0, 3])]
    sb = SamplingBatch.build(params, [[0], [0]], [1, 1], [None, None], 4, torch.device("cpu"), short=[(0, {2})])
    tokens, _, _ = sample(logits, sb)
    assert tokens.tolist() == [1, 3]  # row 0: token 2 (1 + 2.5) suppressed by min_tokens; row 1: 3 of {0, 3}
    sb = SamplingBatch.build(params, [[0], [0]], [1, 1], [None, None], 4, torch.device("cpu"), short=[])
    assert sample(logits, sb)[0].tolist() == [2, 3]


def test_stop_strings_from_min_tokens_on_and_kept_with_include_stop_str():
    tok = train_bpe(["the cat sat on the mat. " * 20], vocab_size=300, progress=False)
    ids = tok.encode("the cat sat on the mat. the cat")
    per_token = [tok.decode(ids[:i + 1]) for i in range(len(ids))]
    first_hit = next(i for i, t in enumerate(per_token) if "mat" in t) + 1  # tokens until "mat" is complete

    def run(**kw):
        d = Detokenizer(tok, SamplingParams(stop=["mat", "cat"], **kw))
        for n, t in enumerate(ids, 1):
            if d.add(t):
                return n, d.text
        return None, d.text

    assert run()[1] == "the "  # "cat" completes first: cut before it
    n, text = run(include_stop_str_in_output=True)
    assert text == "the cat" and n < first_hit
    assert run(min_tokens=first_hit - 1)[1] == "the cat sat on the "  # "mat" ends at token min_tokens + 1
    for m in (first_hit, first_hit + 1):  # "cat" and "mat" end within the first min_tokens: the next "cat" stops
        n, text = run(min_tokens=m)
        assert text == "the cat sat on the mat. the " and n == len(ids)


def test_end_to_end_text_keeps_the_stop_string(model):
    tok = train_bpe(["hello there, how are you? fine thanks. " * 10], vocab_size=300, progress=False)
    torch.manual_seed(1)
    m = Transformer(CFG.replace(vocab_size=tok.vocab_size)).eval()
    llm = LLM(m, tokenizer=tok)
    plain = llm.generate("hello", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0].text
    if len(plain) < 3:
        pytest.skip("the random model's greedy text is too short to hold a stop string")
    stop = plain[1:3]
    cut = llm.generate("hello", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop]))
    kept = llm.generate("hello", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop],
                                                include_stop_str_in_output=True))
    i = plain.index(stop)
    assert cut[0].outputs[0].text == plain[:i] and kept[0].outputs[0].text == plain[:i + len(stop)]
    assert kept[0].outputs[0].stop_reason == stop == cut[0].outputs[0].stop_reason


def test_bad_values_are_one_sentence_errors(model):
    for kw, message in ((dict(min_tokens=-1), "min_tokens must be >= 0"),
                        (dict(min_tokens=5, max_tokens=3), r"min_tokens \(5\) must be at most max_tokens \(3\)"),
                        (dict(min_tokens=1.5), "min_tokens must be an integer"),
                        (dict(logit_bias={"x": 1}), "logit_bias takes token ids"),
                        (dict(logit_bias={1: float("inf")}), "logit_bias takes token ids"),
                        (dict(logit_bias={1: 1e39}), r"numbers in \[-100, 100\]"),
                        (dict(logit_bias={"²": 1}), "logit_bias takes token ids"),
                        (dict(logit_bias=[1, 2]), "logit_bias must be a dict"),
                        (dict(allowed_token_ids=[]), "allowed_token_ids is empty"),
                        (dict(allowed_token_ids=[-1]), "allowed_token_ids must be a list of token ids"),
                        (dict(include_stop_str_in_output="yes"), "include_stop_str_in_output must be True or False")):
        with pytest.raises(RequestError, match=message):
            SamplingParams(**kw)
    assert SamplingParams(logit_bias={"7": 1}).logit_bias == {7: 1.0}  # JSON object keys are strings
    llm = LLM(model)
    for kw in (dict(logit_bias={64: 1.0}), dict(allowed_token_ids=[3, 64])):
        with pytest.raises(RequestError, match="names token 64, outside this model's vocabulary"):
            llm.generate([PROMPT], SamplingParams(**kw))
    assert not llm.llm_engine.has_unfinished_requests()


def test_a_stop_token_is_sampled_again_from_min_tokens_on(model):
    """With its logit raised far above the rest, the stop id is the first token min_tokens allows: the mask is
    lifted at once (a step reusing the last step's sampling tensors must not keep it)."""
    llm = LLM(model)
    for m in (1, 4):
        params = SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[13], min_tokens=m,
                                logit_bias={13: 100.0})
        out = llm.generate([PROMPT], params)[0].outputs[0]
        assert len(out.token_ids) == m + 1 and out.token_ids[-1] == 13 and 13 not in out.token_ids[:m]
        assert out.finish_reason == "stop" and out.stop_reason == 13


def test_the_scheduler_does_not_stop_on_a_stop_token_before_min_tokens():
    from llmlab.engine.block_manager import BlockManager
    from llmlab.engine.scheduler import Scheduler
    from llmlab.engine.sequence import Sequence

    s = Scheduler(BlockManager(16, 4), max_num_seqs=2, max_num_batched_tokens=64, max_model_len=64)
    seq = Sequence("r", [1, 2], SamplingParams(max_tokens=8, stop_token_ids=[5], min_tokens=2))
    s.add(seq)
    assert not s._stops(seq, 5, 3)  # the first output token
    assert s._stops(seq, 5, 4) and seq.finish_reason == "stop"  # the second


def test_bias_comes_before_the_repetition_penalty_as_in_vllm():
    logits = torch.tensor([[1.0, 1.2]])
    params = [SamplingParams(temperature=0, logit_bias={0: 1.0}, repetition_penalty=2.0)]
    sb = SamplingBatch.build(params, [[0]], [1], [None], 2, torch.device("cpu"))  # token 0 seen (the prompt)
    assert sample(logits, sb)[0].tolist() == [1]  # (1 + 1) / 2 = 1.0 < 1.2; penalty first would give 1.5


def test_a_kept_stop_token_is_part_of_the_text_as_in_vllm():
    tok = train_bpe(["hello there, how are you? fine thanks. " * 10], vocab_size=300, progress=False)
    torch.manual_seed(1)
    llm = LLM(Transformer(CFG.replace(vocab_size=tok.vocab_size)).eval(), tokenizer=tok)
    plain = llm.generate("hello", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0]
    stop = plain.token_ids[3]
    if stop in tok.special_tokens.values() or plain.token_ids[:3].count(stop):
        pytest.skip("the random model's greedy ids do not make a clean stop token here")
    outs = [llm.generate("hello", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, stop_token_ids=[stop],
                                                 include_stop_str_in_output=keep))[0].outputs[0] for keep in (False, True)]
    assert [o.token_ids for o in outs] == [plain.token_ids[:4]] * 2
    assert outs[0].text == tok.decode(plain.token_ids[:3]) and outs[1].text == tok.decode(plain.token_ids[:4])


def test_a_stop_string_that_begins_in_the_first_min_tokens_tokens_does_not_stop():
    class Pieces:  # a byte-level tokenizer of three tokens
        special_tokens, byte_level = {}, True

        def token_bytes(self, i):
            return [b"ab", b"cd", b"bc"][i]

    def run(min_tokens):
        d = Detokenizer(Pieces(), SamplingParams(stop=["bc"], min_tokens=min_tokens))
        return [d.add(t) for t in (0, 1, 2)], d.text

    assert run(0) == (["bc" if i == 1 else None for i in range(2)] + [None], "a")  # "abcd": "bc" at token 2
    assert run(1) == ([None, None, "bc"], "abcd")  # vLLM's v1: only text after the first token's is searched


def test_min_tokens_with_only_stop_tokens_allowed_is_refused(model):
    llm = LLM(model)
    with pytest.raises(RequestError, match=r"allowed_token_ids holds only stop tokens \(\[5, 9\]\), which min_tokens=2"):
        llm.generate([PROMPT], SamplingParams(min_tokens=2, stop_token_ids=[5, 9], allowed_token_ids=[5, 9]))
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=3, stop_token_ids=[5], logit_bias={5: 100},
                                                allowed_token_ids=[5, 9], min_tokens=2))[0].outputs[0]
    assert out.token_ids == [9, 9, 5] and out.finish_reason == "stop"
    assert not llm.llm_engine.has_unfinished_requests()
