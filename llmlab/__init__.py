"""llmlab: a complete, hackable LLM stack on PyTorch.

The public surface is small; each capability lives in its own subpackage (see README's layout).
"""

from llmlab.config import ModelConfig
from llmlab.engine import LLM, SamplingParams
from llmlab.errors import ArtifactError, CheckpointError, ConfigError, LlmlabError
from llmlab.model.cache import KVCache
from llmlab.model.pretrained import from_pretrained
from llmlab.model.transformer import Transformer
from llmlab.tokenizer import load_tokenizer

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
