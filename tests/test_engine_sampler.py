"""The batched sampler against references on fixed logits: transformers' logits processors, OpenAI penalties."""

from __future__ import annotations

import pytest
import torch

from llmlab.engine.sampler import SamplingBatch, apply_penalties, filter_logits, sample
from llmlab.engine.sequence import RequestError, SamplingParams

lp = pytest.importorskip("transformers.generation.logits_process")

V = 40


def fixed_logits(rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, V, generator=g) * 2  # distinct values: no ties at any threshold


def build(params, token_ids=None, num_prompt=None, generators=None):
    n = len(params)
    return SamplingBatch.build(params, token_ids or [[0]] * n, num_prompt or [1] * n, generators or [None] * n,
                               V, torch.device("cpu"))


ROWS = [  # (our params, the transformers warpers applied in generate's order)
    (SamplingParams(temperature=0.7, top_k=5), lambda: [lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(5)]),
    (SamplingParams(temperature=1.3, top_p=0.6), lambda: [lp.TemperatureLogitsWarper(1.3), lp.TopPLogitsWarper(0.6)]),
    (SamplingParams(min_p=0.2), lambda: [lp.MinPLogitsWarper(0.2)]),
    (SamplingParams(temperature=0.9, top_k=12, top_p=0.8, min_p=0.05),
     lambda: [lp.TemperatureLogitsWarper(0.9), lp.TopKLogitsWarper(12), lp.TopPLogitsWarper(0.8),
              lp.MinPLogitsWarper(0.05)]),
    (SamplingParams(), lambda: []),
]


def test_filters_match_transformers_warpers_row_by_row():
    logits = fixed_logits(len(ROWS))
    got = filter_logits(logits, build([p for p, _ in ROWS]))
    ids = torch.zeros(1, 1, dtype=torch.long)
    for r, (_, warpers) in enumerate(ROWS):
        ref = logits[r:r + 1].clone()
        for w in warpers():
            ref = w(ids, ref)
        torch.testing.assert_close(got[r:r + 1], ref, msg=f"row {r}")


def test_repetition_penalty_matches_transformers():
    logits = fixed_logits(2, seed=1)
    history = [[3, 7, 7, 11, 30], [0, 1, 2]]
    params = [SamplingParams(repetition_penalty=1.3), SamplingParams(repetition_penalty=0.8)]
    got = apply_penalties(logits, build(params, history, [2, 3]))
    for r, p in enumerate(params):
        ref = lp.RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(torch.tensor([history[r]]), logits[r:r + 1].clone())
        torch.testing.assert_close(got[r:r + 1], ref)


def test_presence_and_frequency_penalties_match_openai_formula():
    logits = fixed_logits(2, seed=2)
    history = [[5, 9, 9, 9, 4], [5, 5, 6]]  # prompts [5, 9] and [5]; outputs [9, 9, 4] and [5, 6]
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
              SamplingParams(presence_penalty=-1.0, frequency_penalty=1.5)]
    got = apply_penalties(logits, build(params, history, [2, 1]))
    ref = logits.clone()
    for r, (p, n) in enumerate(zip(params, [2, 1])):
        out = history[r][n:]
        for tok in set(out):  # mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence
            ref[r, tok] -= out.count(tok) * p.frequency_penalty + p.presence_penalty
    torch.testing.assert_close(got, ref)


def test_greedy_rows_take_the_argmax_in_a_mixed_batch():
    logits = fixed_logits(3, seed=3)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0), SamplingParams(temperature=0)]
    tokens, _, _ = sample(logits, build(params), torch.Generator().manual_seed(0))
    assert tokens[0] == logits[0].argmax() and tokens[2] == logits[2].argmax()


def test_sampling_follows_the_filtered_distribution():
    """Exponential race: empirical frequencies over many rows match softmax of the filtered logits."""
    rows = 6000
    logits = fixed_logits(1, seed=4).expand(rows, V).contiguous()
    params = [SamplingParams(temperature=0.8, top_k=6)] * rows
    sb = build(params)
    tokens, _, _ = sample(logits, sb, torch.Generator().manual_seed(1))
    expected = filter_logits(logits[:1], build(params[:1])).softmax(-1)[0]
    freq = torch.bincount(tokens, minlength=V).float() / rows
    assert set(tokens.tolist()) <= set(expected.nonzero().flatten().tolist())  # never a filtered token
    assert (freq - expected).abs().max() < 0.025


def test_seeded_row_ignores_the_rest_of_the_batch():
    logits = fixed_logits(4, seed=5)
    p = SamplingParams(temperature=1.0, seed=123)
    alone = [sample(logits[i:i + 1], build([p], generators=[torch.Generator().manual_seed(123)]))[0].item()
             for i in (1,)]
    mixed = sample(logits, build([SamplingParams()] + [p] + [SamplingParams(temperature=0.5)] * 2,
                                 generators=[None, torch.Generator().manual_seed(123), None, None]),
                   torch.Generator().manual_seed(99))[0]
    assert mixed[1].item() == alone[0]


def test_logprobs_are_the_raw_model_distribution():
    logits = fixed_logits(2, seed=6)
    params = [SamplingParams(temperature=0, logprobs=3), SamplingParams(temperature=0.5, top_k=2, logprobs=1)]
    tokens, chosen, (top_v, top_i) = sample(logits, build(params), torch.Generator().manual_seed(0))
    ref = logits.log_softmax(-1)
    torch.testing.assert_close(chosen[:, 0], ref.gather(-1, tokens[:, None])[:, 0])
    ranks = (ref >= ref.gather(-1, tokens[:, None])).sum(-1)  # vLLM's rank: ids at least as likely, itself included
    assert chosen[:, 1].tolist() == ranks.tolist() and chosen[0, 1] == 1  # greedy: the first
    torch.testing.assert_close(top_v, ref.topk(3).values)
    assert top_i[0].tolist() == ref[0].topk(3).indices.tolist()


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(n=0), "n must"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=2.0), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(stop=[""]), "stop"),
    (dict(seed="a"), "seed must be None or an integer"),
    (dict(seed=1.5), "seed must be None or an integer"),
])
def test_bad_sampling_params_are_clear_errors(kwargs, match):
    with pytest.raises(RequestError, match=match):
        SamplingParams(**kwargs)
