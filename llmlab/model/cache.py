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
from llmlab.kernels.cpu_rope_cache import rope_cache_cpu
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

    fuses_rope = False  # RoPE and the write stay separate ops (PagedKVCache.rope_update fuses them on CPU)

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
    k: list[Tensor]  # per layer (num_slots, Hkv, hd), num_slots = num_blocks * block_size
    v: list[Tensor]
    block_size: int
    meta: PagedMetadata | None = None  # this forward's slots; set by the engine's model runner

    @classmethod
    def allocate(cls, cfg: ModelConfig, num_blocks: int, block_size: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> PagedKVCache:
        shape = (num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        # One tensor per layer and per K/V, not views of one big tensor: traced by torch.compile, the write
        # below then mutates a graph input, which Inductor keeps in place. Into a view, it was functionalised
        # into a copy of the whole pool per layer and step (compiled decode time grew with the cache size).
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)],
                    [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)], block_size)

    @staticmethod
    def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * dtype.itemsize

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0] // self.block_size

    def with_meta(self, meta: PagedMetadata) -> PagedKVCache:
        """The same pools with one forward's metadata attached (no copy)."""
        return PagedKVCache(self.k, self.v, self.block_size, meta)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @property
    def fuses_rope(self) -> bool:
        """Whether this forward's RoPE and KV write go through `rope_update` (the runner set meta.rope_kernel)."""
        return self.meta is not None and self.meta.rope_kernel and not torch.compiler.is_compiling()

    def rope_update(self, layer: int, q: Tensor, k: Tensor, v: Tensor, cos: Tensor,
                    sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """RoPE on q and k and the write of k and v at `meta.slot_mapping`, in one C call
        (kernels/cpu_rope_cache.py; bitwise `apply_rope` then `update`): q (1, N, H, hd), k and v (1, N, Hkv, hd)
        as the projections give them, cos/sin (1, 1, N, hd) -> q roped (1, H, N, hd) and the layer's pools."""
        k_pages, v_pages = self.k[layer], self.v[layer]
        q = rope_cache_cpu(q, k, v, cos, sin, k_pages, v_pages, self.meta.slot_mapping)  # (N, H, hd)
        return q[None].transpose(1, 2), k_pages, v_pages

    def update(self, layer: int, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """Write (1, Hkv, N, hd) at `meta.slot_mapping`; return the layer's pools (num_slots, Hkv, hd)."""
        k_pages, v_pages = self.k[layer], self.v[layer]
        k_pages.index_copy_(0, self.meta.slot_mapping, k_new[0].transpose(0, 1).to(k_pages.dtype))  # (N, Hkv, hd)
        v_pages.index_copy_(0, self.meta.slot_mapping, v_new[0].transpose(0, 1).to(v_pages.dtype))
        return k_pages, v_pages
