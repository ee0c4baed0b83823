"""A contiguous KV cache: per-layer K and V buffers preallocated for `max_len` positions.

The model writes the new keys/values of each layer at positions [length, length + T) and attends
over [0, length + T); after a forward pass over all layers the caller advances `length` by T
(`Transformer.forward` does this). This is the simple cache for `generate` and the parity tests;
the serving engine's paged cache (engine/) replaces it without touching the model's maths.

Memory: 2 (K and V) * layers * batch * max_len * kv_heads * head_dim * bytes per element —
exactly what `llmlab.estimate.kv_cache_bytes` computes.

`PagedKVCache` is the serving engine's cache: one pool of fixed-size blocks per layer, shared by
all sequences, addressed by slot (block_id * block_size + offset). The engine owns which blocks
belong to which sequence (engine/block_manager.py); per forward it attaches a `PagedMetadata`
(where to write each new token, which slots each query reads) and passes the cache as
`Transformer.forward(ids, position_ids=..., cache=paged)`. The model's maths does not change:
`update` writes K/V into the pool and returns the pool, `attend(..., paged=meta)` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.model.attention import PagedMetadata


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


@dataclass
class PagedKVCache:
    k: Tensor  # (layers, num_slots, Hkv, hd), num_slots = num_blocks * block_size
    v: Tensor
    block_size: int
    meta: PagedMetadata | None = None  # this forward's slots; set by the engine's model runner

    @classmethod
    def allocate(cls, cfg: ModelConfig, num_blocks: int, block_size: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> PagedKVCache:
        shape = (cfg.num_layers, num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        # Two separate tensors, not views of one: the compiled write below then mutates graph inputs in place.
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device),
                   block_size)

    @staticmethod
    def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * dtype.itemsize

    @property
    def num_blocks(self) -> int:
        return self.k.shape[1] // self.block_size

    def with_meta(self, meta: PagedMetadata) -> PagedKVCache:
        """The same pools with one forward's metadata attached (no copy)."""
        return PagedKVCache(self.k, self.v, self.block_size, meta)

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def update(self, layer: int, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Write (1, Hkv, N, hd) at `meta.slot_mapping`; return the layer's pools (num_slots, Hkv, hd)."""
        k_rows = k_new[0].transpose(0, 1).to(self.k.dtype)  # (N, Hkv, hd)
        v_rows = v_new[0].transpose(0, 1).to(self.v.dtype)
        if torch.compiler.is_compiling():
            # Traced, an in-place write into a slice of the pools is functionalised into a copy of the
            # whole pool per layer and step (measured: compiled decode time grew with the cache size).
            # As an opaque op that declares what it mutates, Inductor keeps it in place.
            torch.ops.llmlab.paged_kv_write(self.k, self.v, layer, self.meta.slot_mapping, k_rows, v_rows)
        else:
            _write(self.k, self.v, layer, self.meta.slot_mapping, k_rows, v_rows)
        return self.k[layer], self.v[layer]


def _write(k_pages: Tensor, v_pages: Tensor, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
    k_pages[layer].index_copy_(0, slots, k)
    v_pages[layer].index_copy_(0, slots, v)


@torch.library.custom_op("llmlab::paged_kv_write", mutates_args=("k_pages", "v_pages"))
def paged_kv_write(k_pages: Tensor, v_pages: Tensor, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
    """Write one layer's new K/V rows (N, Hkv, hd) at `slots` of the (layers, num_slots, Hkv, hd) pools."""
    _write(k_pages, v_pages, layer, slots, k, v)
