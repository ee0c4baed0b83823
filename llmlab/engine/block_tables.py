"""The running sequences' block tables as rows of one numpy array, kept in step with their lists.

A step's inputs include every decode row's block table: (B, width) integers, padded with the scratch
block. Copying each sequence's list into a fresh array costs ~1-3 us a row in Python (a table of
a 2,000-token sequence is 125 entries at block size 16), ~0.5 ms a step at 256 sequences — host
time the GPU waits for. Here each sequence owns a row for as long as it runs; a step copies only
the blocks added since the last one (a new block every `block_size` steps) and gathers the batch's
rows with one numpy index (vLLM v1 keeps a persistent block table the same way).

The contract with the block manager: a sequence's `block_table` list only grows while it holds its
blocks, and is replaced by a new list when it releases them (preemption) or is admitted again, so
`row list is seq.block_table` and its length say what the row holds. `release(seq_id)` returns a
finished sequence's row.
"""

from __future__ import annotations

import numpy as np

from llmlab.engine.sequence import Sequence


class BlockTableRows:
    def __init__(self, width: int, fill: int, rows: int = 64):
        self.width, self.fill = width, fill
        self.array = np.full((rows, width), fill, dtype=np.int64)
        self.free = list(range(rows - 1, -1, -1))  # pop() hands out the lowest row first
        self.held: dict[int, list] = {}  # seq_id -> [row, the table list it mirrors, entries copied]
        self.widest = 0

    def rows(self, seqs: list[Sequence]) -> list[int]:
        """The row of each sequence, brought up to date with its block table; `widest` is then the longest of
        their tables."""
        out = []
        widest = 0
        held, array = self.held, self.array
        for s in seqs:
            e = held.get(s.seq_id)
            table = s.block_table
            if e is None or e[1] is not table or len(table) < e[2]:
                e = self._reset(s, e)
                array = self.array  # _reset may have grown it
            n = len(table)
            if e[2] != n:
                array[e[0], e[2]:n] = table[e[2]:n]
                e[2] = n
            if n > widest:  # noqa: PLR1730 (a compare, not a call: this loop runs per sequence per step)
                widest = n
            out.append(e[0])
        self.widest = widest
        return out

    def release(self, seq_id: int) -> None:
        e = self.held.pop(seq_id, None)
        if e is not None:
            self.free.append(e[0])

    def _reset(self, s: Sequence, e: list | None) -> list:
        if len(s.block_table) > self.width:
            raise ValueError(f"sequence {s.seq_id} holds {len(s.block_table)} blocks, more than the "
                             f"{self.width} a block table row has.")
        if e is None:
            if not self.free:  # grow: double the rows
                old = self.array
                self.array = np.full((2 * len(old), self.width), self.fill, dtype=np.int64)
                self.array[:len(old)] = old
                self.free = list(range(2 * len(old) - 1, len(old) - 1, -1))
            e = self.held[s.seq_id] = [self.free.pop(), None, 0]
        self.array[e[0]] = self.fill
        e[1], e[2] = s.block_table, 0
        return e
