"""GGUF weights to fp32 torch tensors, with the common llama.cpp block formats decoded in torch.

`gguf.quants.dequantize` decodes in numpy, one group of rows at a time, on one core: 1.8-2.2 s of the
~10 s `llmlab generate` spends on SmolLM2-135M's Q4_1 file (2-core Zen 3). Q4_0, Q4_1 and Q8_0 are
simple enough to decode as a few whole-tensor torch ops (threaded), with the same fp32 arithmetic in
the same order, so the result is bitwise gguf-py's (tests/test_gguf_file.py); every other type goes
to gguf-py.

    Q4_0  18 bytes / 32 weights: fp16 d, 16 bytes of nibbles     w = d * (q - 8)
    Q4_1  20 bytes / 32 weights: fp16 d, fp16 m, 16 bytes         w = d * q + m
    Q8_0  34 bytes / 32 weights: fp16 d, 32 int8                  w = q * d
A block's 16 nibble bytes hold weights 0-15 in their low halves and 16-31 in their high halves.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _blocks(raw: np.ndarray, nbytes: int) -> tuple[Tensor, Tensor]:
    """(n_blocks, nbytes) uint8 blocks of a row-major byte array, and each block's fp16 scale `d` as fp32."""
    b = torch.from_numpy(np.array(raw, dtype=np.uint8)).reshape(-1, nbytes)  # a copy: the file's map is read-only
    return b, b[:, :2].contiguous().view(torch.float16).float()


def _nibbles(qs: Tensor) -> Tensor:
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _q4_0(b: Tensor, d: Tensor) -> Tensor:
    return d * (_nibbles(b[:, 2:]).to(torch.int8) - 8).float()


def _q4_1(b: Tensor, d: Tensor) -> Tensor:
    m = b[:, 2:4].contiguous().view(torch.float16).float()
    return d * _nibbles(b[:, 4:]).float() + m


def _q8_0(b: Tensor, d: Tensor) -> Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float() * d


_DECODERS = {"Q4_0": (18, _q4_0), "Q4_1": (20, _q4_1), "Q8_0": (34, _q8_0)}  # bytes a block of 32 weights, decoder


def dequantize(data: np.ndarray, qtype) -> Tensor:
    """A GGUFReader tensor's `data` of `qtype` (a GGMLQuantizationType) as a new, writable fp32 tensor shaped as
    gguf.quants.dequantize shapes it."""
    entry = _DECODERS.get(getattr(qtype, "name", ""))
    if entry is None:
        import gguf

        return torch.from_numpy(np.array(gguf.quants.dequantize(data, qtype), dtype=np.float32))
    nbytes, decode = entry
    *rows, width = data.shape
    if width % nbytes:
        raise ValueError(f"a {qtype.name} row of {width} bytes is not whole blocks of {nbytes}.")
    return decode(*_blocks(data, nbytes)).reshape(*rows, width // nbytes * 32)
