"""Resource estimates from a model config: parameters, FLOPs, memory (training and inference), time.

Every function takes `cfg` as a ModelConfig, an HF config dict, a path to a config.json / model
directory / .gguf file, or a preset name (`llmlab.estimate.PRESETS`). Sizes are bytes, time is
seconds, compute is FLOPs. The numbers are checked against what PyTorch really holds:
parameter counts against `transformers` and llmlab models, KV-cache bytes against
`KVCache.allocate`, activations against autograd's saved tensors (tests/test_estimate_*.py,
benchmarks/estimate_memory.py).

    >>> from llmlab import estimate
    >>> estimate.count_params("gpt3-175b")
    174604259328
    >>> estimate.kv_cache_bytes("llama-7b", batch=4, context=2048, dtype="fp16") / 2**30
    4.0
"""

from llmlab.estimate.flops import (FlopsPerToken, decode_flops, flops_per_token, mbu, mfu, prefill_flops,
                                   training_flops)
from llmlab.estimate.hardware import GPUS, get_gpu
from llmlab.estimate.memory import (InferenceMemory, TrainingMemory, activation_bytes, inference_memory,
                                    kv_cache_bytes, max_fitting, training_memory, weight_bytes)
from llmlab.estimate.params import ParamBreakdown, count_params, param_breakdown, param_shapes
from llmlab.estimate.presets import PRESETS, resolve
from llmlab.estimate.time import decode_tokens_per_s, training_time

__all__ = [
    "GPUS", "PRESETS", "FlopsPerToken", "InferenceMemory", "ParamBreakdown", "TrainingMemory",
    "activation_bytes", "count_params", "decode_flops", "decode_tokens_per_s", "flops_per_token", "get_gpu",
    "inference_memory", "kv_cache_bytes", "max_fitting", "mbu", "mfu", "param_breakdown", "param_shapes",
    "prefill_flops", "resolve", "training_flops", "training_memory", "training_time", "weight_bytes",
]
