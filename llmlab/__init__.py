"""llmlab: a complete, hackable LLM stack on PyTorch.

The public surface is small; each capability lives in its own subpackage (see README's layout).
Names that need torch load on first use (llmlab/lazy.py), so `import llmlab` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmlab.errors import ArtifactError, CheckpointError, ConfigError, LlmlabError
from llmlab.lazy import lazy_exports

if TYPE_CHECKING:
    from llmlab.config import ModelConfig
    from llmlab.engine import LLM, SamplingParams
    from llmlab.model.cache import KVCache
    from llmlab.model.pretrained import from_pretrained
    from llmlab.model.transformer import Transformer
    from llmlab.tokenizer import load_tokenizer

__getattr__, __dir__ = lazy_exports(__name__, {
    "KVCache": "llmlab.model.cache",
    "LLM": "llmlab.engine.llm",
    "ModelConfig": "llmlab.config",
    "SamplingParams": "llmlab.engine.sequence",
    "Transformer": "llmlab.model.transformer",
    "from_pretrained": "llmlab.model.pretrained",
    "load_tokenizer": "llmlab.tokenizer",
})

__all__ = [
    "ArtifactError",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "LLM",
    "LlmlabError",
    "ModelConfig",
    "SamplingParams",
    "Transformer",
    "from_pretrained",
    "load_tokenizer",
]
__version__ = "0.1.0"
