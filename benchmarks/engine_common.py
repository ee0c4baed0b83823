"""Shared pieces of the engine benchmarks (latency.py, throughput.py, engine_cpu.py).

- the model under test: SmolLM2-135M real weights (registry) or a named shape with random weights;
- the same weights as a `transformers` model (saved as an HF checkpoint, loaded back);
- timed runs: llmlab `LLM.generate`, transformers `generate` (padded batches) and, where it exists
  and runs, transformers' continuous-batching `generate_batch`;
- hardware, versions and the bandwidth roofline that results are written with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from results_io import at_least, check_writable, command, cpu_name, git_state, results_dir  # noqa: F401 (re-exported)

import llmlab
from llmlab import ModelConfig, Transformer

RESULTS = results_dir()

# Shapes from the issue that are not llmlab presets (random weights: speed depends only on shape).
SHAPES = {
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_layers=16, num_heads=32, num_kv_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0, tie_word_embeddings=True),
    "tiny": dict(model_type="llama", vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4,
                 num_heads=8, num_kv_heads=4, max_position_embeddings=4096),
    # for smoke tests of kernels run by Triton's interpreter, a program at a time
    "micro": dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_position_embeddings=512),
}


def load_model(name: str, dtype: torch.dtype, device: str) -> Transformer:
    """Real weights for registry names (smollm2-135m); random weights (std 0.02) for shapes and presets."""
    from llmlab import artifacts

    if name in artifacts.ARTIFACTS:
        return llmlab.from_pretrained(name, dtype=dtype, device=device)
    if name in SHAPES:
        cfg = ModelConfig(**SHAPES[name])
    else:
        from llmlab.estimate.presets import resolve

        cfg = resolve(name)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(cfg)
    return model.to(dtype).eval()


def hf_twin(model: Transformer, dtype: torch.dtype, device: str, attn: str = "sdpa"):
    """The same weights as a transformers model."""
    import transformers

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation=attn)
    return hf.to(device).eval()


def random_prompts(n: int, lengths: list[int] | int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [lengths] * n if isinstance(lengths, int) else lengths
    return [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lengths]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_llmlab(llm, prompts: list[list[int]], max_tokens: list[int] | int) -> tuple[float, list[list[int]], list]:
    """(seconds, output ids, RequestOutputs) for greedy generation with ignore_eos."""
    from llmlab import SamplingParams

    max_tokens = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else max_tokens
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    device = str(next(llm.model.parameters()).device)
    sync(device)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)  # a timed region: no progress bar
    sync(device)
    return time.perf_counter() - t0, [o.outputs[0].token_ids for o in outs], outs


@torch.inference_mode()
def run_hf_generate(hf, prompts: list[list[int]], max_new: int, batch_size: int | None = None) -> tuple[float, list[list[int]]]:
    """transformers `generate`, greedy, left-padded batches of `batch_size` (default: all at once)."""
    device = str(hf.device)
    batch_size = batch_size or len(prompts)
    outs: list[list[int]] = []
    sync(device)
    t0 = time.perf_counter()
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        T = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, T - len(p):] = torch.tensor(p)
            mask[i, T - len(p):] = 1
        out = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new,
                          min_new_tokens=max_new, do_sample=False, pad_token_id=0, eos_token_id=None)
        outs += out[:, T:].tolist()
    sync(device)
    return time.perf_counter() - t0, outs


def run_hf_generate_batch(hf, prompts: list[list[int]], max_new: int) -> tuple[float, list[list[int]]] | str:
    """transformers' continuous-batching API (`generate_batch`), or why it could not run (or finish every request).

    generate_batch switches the model to a "paged|" attention and switches it back only once its manager has
    started; a failure or a time limit before that left the model unusable for the next reference, so the setting
    is restored here whatever happens. It also catches its own errors and returns the requests that finished
    (transformers 5.17 continuous_api.py): a short or failed result is reported as such, not timed as the work."""
    if not hasattr(hf, "generate_batch"):
        return "this transformers has no generate_batch"
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=-1, pad_token_id=0)
    attn = getattr(hf.config, "_attn_implementation", None)
    try:
        sync(str(hf.device))
        t0 = time.perf_counter()
        res = hf.generate_batch(inputs=prompts, generation_config=cfg, progress_bar=False)
        sync(str(hf.device))
        dt = time.perf_counter() - t0
    except Exception as e:  # an optional reference: report why, keep the benchmark running
        return f"generate_batch failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    finally:
        if attn is not None and getattr(hf.config, "_attn_implementation", attn) != attn:
            hf.set_attn_implementation(attn)
    failed = [r for r in res.values() if getattr(r, "error", None)]
    if len(res) != len(prompts) or failed:
        why = f"; first error: {str(failed[0].error)[:160]}" if failed else ""
        return f"generate_batch finished {len(res) - len(failed)} of {len(prompts)} requests{why}"
    ordered = sorted(res.values(), key=lambda r: int(str(r.request_id).split("_")[-1]))
    return dt, [list(r.generated_tokens) for r in ordered]


def same_fraction(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of sequences whose greedy outputs are identical token for token."""
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def weight_bytes(model: Transformer) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights once


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype.itemsize


def peak_bandwidth(device: str) -> tuple[float | None, str]:
    """Memory bandwidth in bytes/s: the datasheet figure on a known GPU, a measured copy on the CPU."""
    if device.startswith("cuda"):
        from llmlab.estimate.hardware import gpu_from_device_name

        name = torch.cuda.get_device_name()
        gpu = gpu_from_device_name(name)
        if gpu is None:
            return None, f"no datasheet entry for {name!r}"
        return gpu.bandwidth, f"{gpu.name} datasheet"
    x = torch.empty(64 << 20, dtype=torch.float32)  # 256 MiB, far beyond the caches
    y = torch.empty_like(x)
    y.copy_(x)
    t0 = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    dt = (time.perf_counter() - t0) / 5
    return 2 * x.numel() * 4 / dt, "measured tensor copy (read + write), 256 MiB"


def replay_ms(graph: torch.cuda.CUDAGraph, iters: int = 50) -> float:
    """Milliseconds per replay of a captured CUDA graph (the GPU's time, no host work in between)."""
    from llmlab.kernels.cuda_linear import replay_us

    return replay_us(graph, iters) / 1e3


def fill_decode_step(runner, batch: int, context: int):
    """Point the static inputs of the captured decode graph of `batch` rows at `context` tokens each, in distinct
    real KV blocks, with every new token written to the scratch block only; return that graph, or None when the
    engine has no such graph (no CUDA graphs, the gather path, a bucket not captured) or too few blocks. Replaying
    it times a decode step at that size without disturbing any cache contents (the K/V it reads are whatever the
    blocks hold)."""
    graphs = runner.graphs
    bs, nblk = runner.block_size, -(-context // runner.block_size)
    key = (batch, graphs.max_nb) if graphs is not None else None
    if key not in getattr(graphs, "graphs", {}) or not runner.decode_kernel or batch * nblk > runner.num_blocks \
            or nblk > graphs.max_nb:
        return None
    ids, pos, slot, ctx = graphs.vec[:, :batch]
    ids.fill_(0)
    pos.fill_(context - 1)
    slot.fill_(runner.scratch * bs)
    ctx.fill_(context)
    graphs.tables[:batch, :nblk] = torch.arange(batch * nblk, device=graphs.tables.device).view(batch, nblk)
    return graphs.graphs[key][0]


def read_bandwidth(nbytes: int = 2 << 30) -> float:
    """Bytes/s a CUDA card reads: a full-tensor sum of `nbytes` of bf16, in a CUDA graph, best of 10."""
    x = torch.ones(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    out = x.sum(dtype=torch.float32)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = x.sum(dtype=torch.float32)  # noqa: F841 - the graph holds the result
    ms = min(replay_ms(graph, 3) for _ in range(10))
    del x
    torch.cuda.empty_cache()
    return nbytes / (ms * 1e-3)


def cpu_peak_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured matmul FLOP/s on the CPU: the best of `repeats` (n x n) @ (n x n) products in `dtype`. A 16-bit
    dtype counts at least the fp32 rate: any kernel can widen its operands and multiply in fp32 (llmlab's panel
    kernel does on AVX-512 CPUs without bf16 instructions, where torch's bf16 matmul runs at a fraction of it)."""
    if dtype in (torch.bfloat16, torch.float16):
        fp32 = _matmul_flops(torch.float32, n, repeats)
        if _matmul_flops(dtype, 512, 2) < fp32 / 2:  # a slow 16-bit path (1 GFLOP/s on a Zen 3): skip the n^3 run
            return fp32
        return max(_matmul_flops(dtype, n, repeats), fp32)
    return _matmul_flops(dtype, n, repeats)


def _matmul_flops(dtype: torch.dtype, n: int, repeats: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # first call: oneDNN/MKL set-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def roofline_seconds(model: Transformer, batch: int, prompt_len: int, new_tokens: int, bandwidth: float,
                     peak_flops: float) -> float:
    """The least time any engine needs for `batch` prompts of `prompt_len` tokens and `new_tokens` each: the
    prefill at the machine's matmul peak (or one read of the weights, if longer), then every decode step at
    max(weights + KV read at `bandwidth`, its FLOPs at `peak_flops`). The first new token comes with the prefill.
    Norms, softmax and activations are not counted, so the real floor is a little higher."""
    from llmlab.estimate import decode_flops, prefill_flops

    cfg, dtype = model.cfg, next(model.parameters()).dtype
    weights = weight_bytes(model)
    # Only the last prompt token of each sequence needs logits: the LM head's FLOPs for the others are not work.
    prefill = prefill_flops(cfg, batch, prompt_len) - batch * (prompt_len - 1) * 2 * cfg.vocab_size * cfg.hidden_size
    total = max(prefill / peak_flops, weights / bandwidth)
    for ctx in range(prompt_len + 1, prompt_len + new_tokens):
        step_bytes = weights + batch * ctx * kv_bytes_per_token(cfg, dtype)
        total += max(step_bytes / bandwidth, decode_flops(cfg, batch, ctx) / peak_flops)
    return total


def hardware() -> dict:
    hw = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        hw["gpu"] = props.name
        hw["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return hw


def versions() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "llmlab": llmlab.__version__, **git_state()}


def result_path(name: str) -> Path:
    """Where `--out NAME` goes: a bare name (`engine_cpu`, or `engine_cpu.json`) into RESULTS (LLMLAB_BENCH_RESULTS
    when set); a path with a folder (`runs/lat.json`, `/tmp/x`) as given, from the working directory as train.py and
    tokenizer.py take theirs. `.json` is added once."""
    path = Path(name)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    return path if len(path.parts) > 1 else RESULTS / path


DTYPES = ("float32", "bfloat16", "float16")


def check_model(parser: argparse.ArgumentParser, name: str) -> str:
    """Refuse a --model that load_model cannot build, before any timing: a registry name, a shape of SHAPES, an
    llmlab preset or a config.json / model directory (random weights)."""
    from llmlab import artifacts
    from llmlab.errors import LlmlabError

    if name in artifacts.ARTIFACTS or name in SHAPES:
        return name
    from llmlab.estimate.presets import resolve

    try:
        resolve(name)
    except LlmlabError as e:
        parser.error(f"--model {name}: {e} (or a shape of engine_common.SHAPES: {', '.join(SHAPES)})")
    return name


def write_result(name: str, result: dict) -> Path:
    result = {**result, "command": command(), "hardware": hardware(), "versions": versions()}
    path = result_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return path


def table(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
