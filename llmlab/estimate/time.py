"""Time: a training run on N GPUs at an assumed MFU, and the decode speed that memory bandwidth allows.

  training time = training FLOPs / (n_gpus · peak dense FLOP/s · MFU)
  decode ceiling = batch · bandwidth / (weight bytes + KV-cache bytes of the batch)   [tok/s]
Each decode step must stream every weight and the batch's whole KV cache from memory once, so no
kernel can beat the ceiling; at batch 1 it is also the per-user speed. MFU 0.3-0.5 is typical of
well-tuned large runs (GPT-3-era Megatron ~0.3-0.4, PaLM 0.46).
"""

from __future__ import annotations

from llmlab.errors import ConfigError
from llmlab.estimate.explain import Step, num
from llmlab.estimate.flops import training_flops
from llmlab.estimate.hardware import GPU, check_n_gpus, get_gpu
from llmlab.estimate.memory import inference_memory, kv_cache_bytes, weight_bytes
from llmlab.estimate.params import count_params
from llmlab.estimate.presets import ConfigLike, resolve


def training_time(cfg: ConfigLike, tokens: float, *, gpu: str | GPU, n_gpus: int = 1, mfu: float = 0.4,
                  dtype: str = "bf16", seq_len: int | None = None) -> float:
    """Seconds to train on `tokens` tokens (6·N·D FLOPs, or with attention when `seq_len` is given)."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"mfu is a fraction of peak in (0, 1], got {mfu}.")
    check_n_gpus(n_gpus)
    if tokens <= 0:
        raise ConfigError(f"tokens (the training run's D) must be positive, got {tokens:g}.")
    return training_flops(cfg, tokens, seq_len=seq_len) / (n_gpus * get_gpu(gpu).peak_flops(dtype) * mfu)


def decode_tokens_per_s(cfg: ConfigLike, gpu: str | GPU, *, batch: int = 1, context: int = 1,
                        weights: str = "bf16", kv_dtype: str = "bf16") -> float:
    """Bandwidth ceiling on decode throughput (tokens/s summed over the batch)."""
    _check_decode(batch, context)
    step_bytes = weight_bytes(cfg, weights) + kv_cache_bytes(cfg, batch, context, kv_dtype)
    return batch * get_gpu(gpu).bandwidth / step_bytes


def _check_decode(batch: int, context: int) -> None:
    if batch < 1 or context < 1:
        raise ConfigError(f"decode batch and context must be at least 1, got {batch} and {context}.")


def time_steps(cfg: ConfigLike, tokens: float, *, gpu: str, n_gpus: int, mfu: float, dtype: str = "bf16",
               batch: int = 1, context: int | None = None, weights: str = "bf16") -> list[Step]:
    """Training FLOPs, peak, cluster throughput and time; whether the decode batch fits one GPU (the test of
    `inference_memory`: weights + KV + activations + overhead); then the decode ceiling, only when it fits
    (otherwise it would be the speed of a setup that cannot run)."""
    model, cfg = cfg, resolve(cfg)
    g = get_gpu(gpu)
    context = cfg.max_position_embeddings if context is None else context
    _check_decode(batch, context)
    n, flops = count_params(cfg), training_flops(cfg, tokens)
    peak = g.peak_flops(dtype)
    seconds = training_time(cfg, tokens, gpu=g, n_gpus=n_gpus, mfu=mfu, dtype=dtype)
    mem = inference_memory(model, batch=batch, context=context, weights=weights)
    w, kv, fits = mem.weights, mem.kv_cache, mem.total_with_overhead <= g.memory_bytes
    steps = [
        Step("training FLOPs", flops, "FLOP", "6·N·D", f"6 · {num(n)} · {tokens:.4g}"),
        Step(f"peak per {g.name} ({dtype}, dense)", peak, "FLOP/s", g.source),
        Step("effective cluster throughput", n_gpus * peak * mfu, "FLOP/s", "n_gpus · peak · MFU",
             f"{n_gpus} · {peak:.4g} · {mfu}"),
        Step("training time", seconds, "s", "FLOPs / (n_gpus · peak · MFU)",
             f"{flops:.4g} / ({n_gpus} · {peak:.4g} · {mfu})"),
        Step(f"decode batch {batch} at context {context} fits {g.name} ({g.memory_gib:g} GiB)?", float(fits),
             "yes/no", f"weights + KV + activations + overhead ({mem.total_with_overhead / 2**30:,.1f} GiB) ≤ "
             f"{g.memory_gib:g} GiB"),
    ]
    if fits:
        steps.append(Step(f"decode ceiling, batch {batch} at context {context}", batch * g.bandwidth / (w + kv),
                          "tok/s", "batch · bandwidth / (weight bytes + KV bytes)",
                          f"{batch} · {g.bandwidth:.4g} / ({num(w)} + {num(kv)})"))
    return steps
