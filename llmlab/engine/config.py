"""EngineConfig: every knob of the serving engine, validated once (vLLM's names where they exist)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from llmlab.errors import ConfigError, is_bool, is_int, is_number


@dataclass(slots=True)
class EngineConfig:
    max_num_seqs: int = 256  # sequences running at once
    max_num_batched_tokens: int = 4096  # tokens per step (prefill chunks + decodes)
    max_model_len: int | None = None  # None -> the model's max_position_embeddings
    block_size: int = 16  # token slots per KV block
    num_blocks: int | None = None  # KV blocks; None -> sized from kv_cache_memory / gpu_memory_utilization
    # bytes for the KV cache; on CUDA it wins over gpu_memory_utilization; CPU default: 1 GiB or what
    # max_num_seqs needs
    kv_cache_memory: int | None = None
    gpu_memory_utilization: float = 0.9  # CUDA: fraction of the card for weights + activations + KV
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False  # CUDA: no graphs for decode steps
    cuda_graph_max_bs: int = 256  # largest decode batch that replays a CUDA graph
    seed: int | None = 0  # generator for requests without their own seed (None, as vLLM's default: 0)
    max_logprobs: int | None = None  # most logprobs a request may ask for (vLLM's option; None or -1: the vocabulary)
    cpu_pack_linears: bool = True  # CPU: packed linear weights, fastest kernel per row count (kernels/cpu_linear.py;
    # timed at the first start on a machine, then read back from $LLMLAB_CACHE/tuning: LLMLAB_RETUNE=1 times again)
    cpu_fast_norms: bool = True  # CPU: RMSNorm in one C call (kernels/cpu_norm.py) when a C compiler is found
    cpu_fused_rope: bool = True  # CPU: RoPE and the KV write in one C call a layer (kernels/cpu_rope_cache.py)
    cpu_fast_swiglu: bool = True  # CPU: SiLU(gate) * up in one C call (kernels/cpu_swiglu.py) when a compiler is found
    # CPU: decode-only steps as one loop of direct C calls, no module calls or allocations (kernels/cpu_decode.py;
    # bitwise the forward's logits); with the kernels above and paged_kernel "cpu", eager steps
    cpu_direct_decode: bool = True
    fuse_projections: bool = True  # q/k/v and gate/up as one matmul each (model/transformer.py fuse_projections)
    # torch.compile the decode step (fuses norms, RoPE, residuals: fewer kernels). On CPU the weights are frozen
    # into the graph (Inductor packs the linears; one compile per engine, ~1 min for SmolLM2-135M on 2 cores)
    compile_decode: bool = False
    # decode attention reading the pages in place: "triton" (kernels/paged_attention.py), "cpu" (the C kernel of
    # kernels/cpu_paged_attention.py, which on CPU takes prefill rows too), "gather" (copy the keys out, then
    # SDPA), "auto" = triton on CUDA, cpu on CPU
    paged_kernel: str = "auto"
    # CUDA: one-sequence decode matmuls through kernels/gemv.py for the weight shapes where it beats cuBLAS,
    # timed on the card when the engine starts (kernels/cuda_linear.py; a few seconds)
    cuda_gemv: bool = False
    # CUDA: a decode step of one sequence as five Triton launches a layer, the norms, RoPE, cache write, SiLU and
    # residual adds fused into the matmuls' kernels (kernels/cuda_decode.py; tile sizes timed at start-up)
    cuda_fused_decode: bool = False
    # launch each decode step before the last one's sampled ids reach the host, so the host's work overlaps the
    # device's (llm_engine.py); None = where decode steps replay CUDA graphs
    async_scheduling: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "cuda_graph_max_bs"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:  # True is not a count (it failed deep inside the CPU decode)
                raise ConfigError(f"EngineConfig.{name} must be a positive integer, got {value!r}.")
            setattr(self, name, int(value))  # numpy's too, as Python ints
        for name in ("max_model_len", "num_blocks", "kv_cache_memory"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ConfigError(f"EngineConfig.{name} must be a positive integer or None, got {value!r}.")
            if value is not None:
                setattr(self, name, int(value))
        for f in fields(self):
            if f.type == "bool":  # the on/off options: "no" or "false" would switch one on
                value = getattr(self, f.name)
                if not is_bool(value):
                    raise ConfigError(f"EngineConfig.{f.name} must be True or False, got {value!r}.")
                setattr(self, f.name, bool(value))
        if self.seed is None:
            self.seed = 0
        if not is_int(self.seed) or not -(2**63) <= self.seed < 2**64:  # what torch.Generator.manual_seed takes
            raise ConfigError(f"EngineConfig.seed must be an integer in [-2**63, 2**64) or None, got {self.seed!r}.")
        self.seed = int(self.seed)
        if self.max_logprobs == -1 and is_int(self.max_logprobs):  # vLLM's "no cap"
            self.max_logprobs = None
        if self.max_logprobs is not None and (not is_int(self.max_logprobs) or self.max_logprobs < 0):
            raise ConfigError(f"EngineConfig.max_logprobs must be a non-negative integer or None, got "
                              f"{self.max_logprobs!r}.")
        if self.paged_kernel not in ("auto", "triton", "cpu", "gather"):
            raise ConfigError(f"paged_kernel must be 'auto', 'triton', 'cpu' or 'gather', got {self.paged_kernel!r}.")
        if self.async_scheduling is not None and not isinstance(self.async_scheduling, bool):  # (1 == True)
            raise ConfigError(f"async_scheduling must be True, False or None (auto), got {self.async_scheduling!r}.")
        if not is_number(self.gpu_memory_utilization) or not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be a number in (0, 1], got "
                              f"{self.gpu_memory_utilization!r}.")
