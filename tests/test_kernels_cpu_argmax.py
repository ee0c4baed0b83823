"""kernels/cpu_argmax.py: the sampler's argmax in C for CPU fp32 logits, torch.argmax's answer in every case."""

import pytest
import torch

from llmlab.kernels import cpu_argmax
from llmlab.kernels.cpu_argmax import argmax_rows

pytestmark = pytest.mark.skipif(cpu_argmax._function() is None, reason="no C compiler")


@pytest.mark.parametrize("shape", [(1, 49152), (16, 49152), (3, 7), (2, 3, 1000), (1, 1), (5, 64), (4, 65), (2, 129)])
def test_matches_torch(shape):
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(3):
        x = torch.randn(shape, generator=g)
        assert torch.equal(argmax_rows(x), x.argmax(-1))


def test_ties_nan_and_infinities_as_torch():
    x = torch.zeros(6, 300)
    x[0, 70], x[0, 200] = 1.0, 1.0  # ties: the first
    x[1, 250], x[1, 90], x[1, 10] = float("nan"), float("nan"), 5.0  # a NaN wins, the first NaN
    x[2] = float("-inf")  # all -inf: index 0
    x[3, 299] = float("inf")
    x[4, :] = -1.0
    x[4, 64] = float("nan")  # NaN in the second 64-element chunk, the maximum before it
    x[5, 1:] = float("-inf")
    want = x.argmax(-1)
    assert torch.equal(argmax_rows(x), want)
    assert want.tolist() == [70, 90, 0, 299, 64, 0]


def test_other_inputs_fall_back_to_torch():
    x = torch.randn(4, 100)
    assert torch.equal(argmax_rows(x.t()), x.t().argmax(-1))  # not contiguous
    assert torch.equal(argmax_rows(x.bfloat16()), x.bfloat16().argmax(-1))
    assert argmax_rows(torch.randn(3, 0, 5)).shape == (3, 0)
    with pytest.raises((RuntimeError, IndexError)):
        argmax_rows(torch.randn(3, 0))  # torch's own error for an empty reduction
