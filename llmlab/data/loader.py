"""Batches of (x, y) windows from token shards: deterministic by (seed, step), resumable exactly.

Training batches are random contiguous windows: the offsets of batch `step` come from a generator
seeded with (seed, step) alone, so the stream does not depend on history — saving the loader is
saving `step`, and a resumed run reads exactly the batches an uninterrupted one would.
Evaluation uses fixed, non-overlapping windows from the start of the validation split.

x, y are int64 (B, T) with y[t] = x[t + 1].
"""

from __future__ import annotations

import numpy as np
import torch

from llmlab.data.shards import ShardInfo
from llmlab.errors import LlmlabError


class TokenLoader:
    def __init__(self, shards: ShardInfo, *, batch_size: int, seq_len: int, seed: int = 0, split: str = "train"):
        self.data = shards.tokens(split)
        self.batch_size, self.seq_len, self.seed, self.split = batch_size, seq_len, seed, split
        if len(self.data) < seq_len + 1:
            raise LlmlabError(f"the {split} split has {len(self.data)} tokens, too few for windows of "
                              f"{seq_len} + 1; use more text or a shorter seq_len.")
        self.step = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        # a window is seq_len + 1 tokens: it starts anywhere in [0, len - seq_len - 1], the last token a target too
        starts = torch.randint(0, len(self.data) - self.seq_len, (self.batch_size,), generator=g)
        self.step += 1
        return self._windows(starts.tolist())

    def _windows(self, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.seq_len
        rows = np.stack([self.data[s:s + T + 1].astype(np.int64) for s in starts])  # (B, T + 1)
        xy = torch.from_numpy(rows)
        return xy[:, :-1], xy[:, 1:]

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise LlmlabError(f"checkpointed data seed {state['seed']} differs from this run's seed {self.seed}; "
                              "resume with the same seed.")
        self.step = int(state["step"])


def eval_batches(shards: ShardInfo, *, batch_size: int, seq_len: int, max_batches: int | None = None,
                 split: str = "val"):
    """Non-overlapping (x, y) windows from the start of `split`; the same every time."""
    data = shards.tokens(split)
    n_windows = (len(data) - 1) // seq_len
    if n_windows == 0:
        raise LlmlabError(f"the {split} split has {len(data)} tokens, fewer than one window of {seq_len}.")
    if max_batches is not None:
        n_windows = min(n_windows, max_batches * batch_size)
    for first in range(0, n_windows, batch_size):
        starts = range(first * seq_len, min(first + batch_size, n_windows) * seq_len, seq_len)
        rows = np.stack([data[s:s + seq_len + 1].astype(np.int64) for s in starts])
        xy = torch.from_numpy(rows)
        yield xy[:, :-1], xy[:, 1:]
