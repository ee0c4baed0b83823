"""The block manager: which KV-cache blocks are free, who holds each one, and the prefix cache.

The KV cache is `num_blocks` blocks of `block_size` token slots. A sequence's block table lists
its blocks in order: token t lives in block `block_table[t // block_size]`, offset
`t % block_size`. Blocks are reference counted, so several sequences can share one.

Prefix caching. Every *full* block of a sequence is named by a chained hash,
h_i = H(h_{i-1}, tokens of block i), so equal hashes mean equal whole prefixes. As soon as a
block is scheduled to be filled (`commit`), its hash is registered; a later sequence whose prefix
hashes match (`lookup`) takes those blocks with ref_count += 1 instead of recomputing them. That
is safe even within the same step: in one forward every layer writes all new K/V before any
query of that layer reads, so sequences admitted together share a common prompt. A block whose
ref count falls to 0 goes back on the free list but *keeps* its hash and contents: it is still a
cache hit until it is handed out again (free list in LRU order: evict the longest-unused first).

The last prompt token is never taken from the cache (hits are capped at len - 1 tokens): the
engine needs that token's logits, and recomputing into a private block means a shared block is
never written. So an exact multiple of block_size that is fully cached reuses all blocks but the
last, which it recomputes.

Invariants (tested as properties): free + used == num_blocks; a block's ref count equals the
number of block tables holding it; ref count 0 <=> on the free list.

Not here: torch (pure Python), scheduling policy (scheduler.py).
Reference: Kwon et al. 2023 (PagedAttention / vLLM); nano-vllm `engine/block_manager.py`.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from llmlab.engine.sequence import Sequence


def block_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """Chained hash of one full block: 128-bit BLAKE2b of the parent hash and the token ids."""
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # hash -> block holding that prefix's K/V
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # front = evict first
        self.num_hits = 0  # tokens served from the prefix cache (stats)
        self.num_queries = 0  # prompt tokens looked up

    # ---- queries --------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def hashes(self, seq: Sequence, num_tokens: int | None = None) -> list[bytes]:
        """Chained hashes of seq's full blocks (of its first num_tokens tokens: those known, under async
        scheduling), memoised on the sequence as it grows."""
        bs, memo, n = self.block_size, seq.block_hashes, len(seq.token_ids)
        for i in range(len(memo), (n if num_tokens is None else min(num_tokens, n)) // bs):
            memo.append(block_hash(memo[-1] if memo else b"", seq.token_ids[i * bs:(i + 1) * bs]))
        return memo

    def lookup(self, seq: Sequence) -> list[int]:
        """Blocks holding the longest cached prefix of seq (whole blocks, at most len - 1 tokens)."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        for h in self.hashes(seq)[:(len(seq) - 1) // self.block_size]:
            b = self.cached.get(h)
            if b is None:
                break
            hits.append(b)
        return hits

    def can_admit(self, hits: list[int], num_tokens: int) -> bool:
        """Could a new sequence reuse `hits` and get blocks for its first num_tokens tokens?"""
        reclaimed = sum(1 for b in hits if self.ref_count[b] == 0)  # cached but free: leaves the free list
        return len(self.free) - reclaimed >= self.blocks_for(num_tokens) - len(hits)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return len(self.free) >= self.blocks_for(num_tokens) - len(seq.block_table)

    # ---- changes --------------------------------------------------------------------------------

    def admit(self, seq: Sequence, hits: list[int], num_tokens: int) -> None:
        """Give a waiting sequence its cached prefix blocks and fresh blocks up to num_tokens."""
        assert not seq.block_table, "admit() is for sequences that hold no blocks"
        for b in hits:
            if self.ref_count[b] == 0:
                del self.free[b]
            self.ref_count[b] += 1
        seq.block_table = list(hits)
        seq.num_cached_tokens = seq.num_computed_tokens = len(hits) * self.block_size
        self.num_hits += seq.num_cached_tokens
        self.num_queries += len(seq)
        self.grow(seq, num_tokens)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Append fresh blocks until seq's block table covers num_tokens tokens."""
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take_free())

    def commit(self, seq: Sequence, num_tokens: int) -> None:
        """Register the hashes of the blocks that seq's first num_tokens tokens fill, from its computed ones on."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(num_tokens // bs, len(seq.block_table))
        hashes = self.hashes(seq, num_tokens)
        for i in range(seq.num_computed_tokens // bs, full):
            self._register(seq.block_table[i], hashes[i])

    def commit_block(self, seq: Sequence, i: int) -> None:
        """Register the hash of seq's full block i (async scheduling: once the step that filled it is done and
        its tokens are known)."""
        self._register(seq.block_table[i], self.hashes(seq, (i + 1) * self.block_size)[i])

    def _register(self, b: int, h: bytes) -> None:
        """Block b holds the prefix hashed h: a cache entry, unless b has one or h is held elsewhere."""
        if self.hash_of[b] is None and h not in self.cached:
            self.cached[h] = b
            self.hash_of[b] = h

    def release(self, seq: Sequence) -> None:
        """Drop seq's hold on its blocks (finish, abort or preemption); tail blocks are evicted first."""
        for b in reversed(seq.block_table):
            self.ref_count[b] -= 1
            assert self.ref_count[b] >= 0, f"block {b} released more often than taken"
            if self.ref_count[b] == 0:
                self.free[b] = None
        seq.block_table = []
        seq.num_computed_tokens = 0

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix (after the model's weights change, its K/V no longer match the model);
        blocks in use stay with their sequences. Returns how many blocks were forgotten."""
        n = len(self.cached)
        self.cached.clear()
        self.hash_of = [None] * self.num_blocks
        return n

    def _take_free(self) -> int:
        b, _ = self.free.popitem(last=False)
        h = self.hash_of[b]
        if h is not None:  # evict: its contents are about to be overwritten
            if self.cached.get(h) == b:
                del self.cached[h]
            self.hash_of[b] = None
        self.ref_count[b] = 1
        return b

    def check_invariants(self, live: list[Sequence]) -> None:
        """Assert the accounting is consistent with the block tables of `live` sequences (tests)."""
        holders = [0] * self.num_blocks
        for seq in live:
            for b in seq.block_table:
                holders[b] += 1
        assert holders == self.ref_count, "ref counts disagree with block tables"
        assert all((self.ref_count[b] == 0) == (b in self.free) for b in range(self.num_blocks))
        assert len(self.free) + sum(1 for r in self.ref_count if r > 0) == self.num_blocks
        assert all(self.hash_of[b] == h for h, b in self.cached.items())
