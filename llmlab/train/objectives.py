"""Objectives as functions: (logits, targets, ...) -> scalar loss. The loop never special-cases a stage.

Later stages (SFT, reward, DPO, PPO, GRPO, MLM) add their functions here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def causal_lm_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean next-token cross-entropy in fp32. logits (B, T, V), targets (B, T) already shifted."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
