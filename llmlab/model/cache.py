"""A contiguous KV cache: per-layer K and V buffers preallocated for `max_len` positions.

The model writes the new keys/values of each layer at positions [length, length + T) and attends
over [0, length + T); after a forward pass over all layers the caller advances `length` by T
(`Transformer.forward` does this). This is the simple cache for `generate` and the parity tests;
the serving engine's paged cache (engine/) replaces it without touching the model's maths.

Memory: 2 (K and V) * layers * batch * max_len * kv_heads * head_dim * bytes per element —
exactly what `llmlab.estimate.kv_cache_bytes` computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError


@dataclass
class KVCache:
    k: list[Tensor]  # per layer (B, Hkv, max_len, hd)
    v: list[Tensor]
    length: int = 0  # positions already written (same for every row; padding is masked, not skipped)

    @classmethod
    def allocate(cls, cfg: ModelConfig, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> KVCache:
        shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        return cls(k, v)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def check_room(self, new_tokens: int) -> None:
        if self.length + new_tokens > self.max_len:
            raise LlmlabError(
                f"KV cache holds {self.max_len} positions but {self.length} + {new_tokens} were requested; "
                "allocate a larger cache (max_len) or generate fewer tokens."
            )

    def update(self, layer: int, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, Hkv, T, hd) at the current position; return the layer's keys/values so far."""
        end = self.length + k_new.shape[2]
        self.k[layer][:, :, self.length:end] = k_new
        self.v[layer][:, :, self.length:end] = v_new
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
