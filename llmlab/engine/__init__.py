"""The inference engine: paged KV cache, prefix caching, continuous batching, batched sampling.

    LLM / SamplingParams       offline batch generation (llm.py), vLLM-shaped
    LLMEngine                  add_request / step / abort, for servers (llm_engine.py)
    Scheduler, BlockManager    pure-Python policy and KV-block accounting
    ModelRunner, sampler       the torch side: one flattened forward per step, batched sampling

Data flow per step: scheduler.schedule -> model_runner.run (model over PagedKVCache, sampler)
-> scheduler.update -> detokenizer (stop strings) -> RequestOutput. With async scheduling (CUDA
graphs): scheduler.schedule_ahead -> model_runner.launch (the next step, its ids on the device)
-> model_runner.collect (this step's ids) -> scheduler.settle -> detokenizer -> RequestOutput.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmlab.lazy import lazy_exports

if TYPE_CHECKING:
    from llmlab.engine.config import EngineConfig
    from llmlab.engine.llm import LLM
    from llmlab.engine.llm_engine import LLMEngine
    from llmlab.engine.output import CompletionOutput, Logprob, RequestMetrics, RequestOutput
    from llmlab.engine.sequence import RequestError, SamplingParams

# loaded on first use: `llmlab chat --help` needs none of them (nor torch)
__getattr__, __dir__ = lazy_exports(__name__, {
    "EngineConfig": "llmlab.engine.config",
    "LLM": "llmlab.engine.llm",
    "LLMEngine": "llmlab.engine.llm_engine",
    "CompletionOutput": "llmlab.engine.output",
    "Logprob": "llmlab.engine.output",
    "RequestMetrics": "llmlab.engine.output",
    "RequestOutput": "llmlab.engine.output",
    "RequestError": "llmlab.engine.sequence",
    "SamplingParams": "llmlab.engine.sequence",
})

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "LLMEngine", "Logprob", "RequestError", "RequestMetrics",
           "RequestOutput", "SamplingParams"]
