"""Offline throughput: nano-vllm's workload — llmlab's engine vs transformers, same random weights.

Workload (as nano-vllm's bench.py): `random.seed(0)`; 256 sequences; each prompt is
randint(100, 1024) random ids in [0, 10000]; each output is randint(100, 1024) tokens,
temperature 0.6, ignore_eos. Model: a Qwen3-0.6B shape with random weights, bf16 on CUDA.

Reported: output tokens/s (all requested output tokens / wall time, prefill included), the
engine's counters (steps, graph replays, steps launched ahead, host time vs waiting for the GPU),
and on CUDA the GPU's own time for one decode step's graph at 256 / 128 / ... sequences of the
run's mean context beside that step's bandwidth roofline (`decode_step_gpu_ms`).
The transformers references are its continuous-batching `generate_batch` (when it exists and
runs) and `generate` in padded batches of --hf-batch-size; the ratio is against the faster of
them. Both take one max_new_tokens for
all sequences, so transformers generates max(output lengths) for every sequence: two ratios are
reported, against every token it produced (flatters it) and against wall time for the same
requested work.

Target (issue 6): >= 10,000 output tok/s on one H100 (nano-vllm reports ~8,600 on an A100).
On a CPU the same script runs a scaled-down workload (defaults below) to show the comparison.

    .venv/bin/python benchmarks/throughput.py                        # CUDA defaults
    .venv/bin/python benchmarks/throughput.py --model tiny --num-seqs 32 --max-len 128   # CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import signal
import time

import torch
from engine_common import (
    DTYPES,
    at_least,
    check_model,
    check_writable,
    fill_decode_step,
    hf_twin,
    kv_bytes_per_token,
    load_model,
    peak_bandwidth,
    replay_ms,
    result_path,
    run_hf_generate,
    run_hf_generate_batch,
    sync,
    table,
    weight_bytes,
    write_result,
)

from llmlab import LLM
from llmlab.artifacts import ARTIFACTS
from llmlab.engine import SamplingParams


def workload(num_seqs: int, min_len: int, max_len: int, vocab: int) -> tuple[list[list[int]], list[int]]:
    random.seed(0)
    hi = min(10000, vocab - 1)
    prompts = [[random.randint(0, hi) for _ in range(random.randint(min_len, max_len))] for _ in range(num_seqs)]
    outputs = [random.randint(min_len, max_len) for _ in range(num_seqs)]
    return prompts, outputs


def run_stats(before: dict, after: dict) -> dict:
    """The timed run's engine counters: steps, CUDA-graph replays, steps launched ahead (async scheduling),
    preemptions, and where the step time went (host work vs waiting for the device's sampled ids; see
    LLMEngine.stats)."""
    d = {k: after[k] - before[k] for k in ("steps", "graph_steps", "async_steps", "preemptions", "step_seconds",
                                           "sync_wait_seconds")}
    d["host_seconds"] = d["step_seconds"] - d["sync_wait_seconds"]
    d = {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}
    return {**d, "host_ms_per_step": round(1e3 * d["host_seconds"] / max(1, d["steps"]), 3),
            "num_blocks": after["num_blocks"]}


def decode_step_ms(llm: LLM, model, dtype: torch.dtype, context: int) -> dict:
    """The GPU's own time for one decode step's CUDA graph at the batch buckets the run goes through, every row
    at `context` tokens (the run's mean: mean prompt + half the mean output), beside the bandwidth roofline of
    that step (all weights + every row's K/V read once): where the decode steps' time goes."""
    bw, source = peak_bandwidth("cuda")
    kv = kv_bytes_per_token(model.cfg, dtype)
    out = {"context": context, "bandwidth_source": source}
    for b in (256, 128, 64, 32, 16, 1):
        graph = fill_decode_step(llm.engine.runner, b, context)
        if graph is None:
            continue
        ms = replay_ms(graph, iters=20)
        step_bytes = weight_bytes(model) + b * context * kv
        out[f"batch {b}"] = {"ms": round(ms, 3), "tok_s": round(b / ms * 1e3, 1),
                             "roofline_ms": round(step_bytes / bw * 1e3, 3) if bw else None}
    return out


class _Timeout(BaseException):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise _Timeout in this (main) thread after `seconds` (0: no limit); transformers' generation
    loops are Python, so the alarm lands between steps."""
    if seconds <= 0:
        yield
        return

    def alarm(signum, frame):
        raise _Timeout  # a BaseException: the references' own `except Exception` cannot swallow it

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def main() -> int:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-0.6b" if cuda else "tiny")
    ap.add_argument("--dtype", default="bfloat16" if cuda else "float32", choices=DTYPES)
    ap.add_argument("--num-seqs", type=at_least(1), default=256 if cuda else 32)
    ap.add_argument("--min-len", type=at_least(1), default=100 if cuda else 16)
    ap.add_argument("--max-len", type=at_least(1), default=1024 if cuda else 128)
    ap.add_argument("--max-num-seqs", type=at_least(1), default=256)
    ap.add_argument("--max-num-batched-tokens", type=at_least(1), default=16384 if cuda else 2048)
    ap.add_argument("--hf", nargs="*", choices=["generate_batch", "generate"], default=["generate_batch", "generate"],
                    help="transformers references to run (none: pass the flag with no value)")
    ap.add_argument("--hf-batch-size", type=at_least(1), default=64 if cuda else 32)
    ap.add_argument("--hf-timeout", type=at_least(0), default=0,
                    help="seconds each transformers reference may take before it is stopped and recorded as "
                         "unfinished (0: no limit)")
    ap.add_argument("--compile-decode", action="store_true", help="torch.compile the engine's decode step")
    ap.add_argument("--out", default=f"engine_throughput_{'cuda' if cuda else 'cpu'}",
                    help="result name under benchmarks/results/ (LLMLAB_BENCH_RESULTS when set), or a path with a "
                         "folder, from the working directory (default: engine_throughput_<device>)")
    args = ap.parse_args()
    if args.min_len > args.max_len:
        ap.error(f"--min-len {args.min_len} is above --max-len {args.max_len}")
    check_model(ap, args.model)
    check_writable(ap, result_path(args.out))
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, args.dtype)

    model = load_model(args.model, dtype, device)
    prompts, outputs = workload(args.num_seqs, args.min_len, args.max_len, model.cfg.vocab_size)
    llm = LLM(model, device=device, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
              max_model_len=2 * args.max_len + 16, compile_decode=args.compile_decode)
    # warm-up on prompts of its own (the workload's would sit in the prefix cache for the timed run)
    llm.generate([[7 + i] * (20 + i) for i in range(4)], SamplingParams(max_tokens=8), use_tqdm=False)
    params = [SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True) for n in outputs]
    load_before = os.getloadavg()[0]
    before = llm.engine.stats()
    sync(device)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)  # timed: no progress bar
    sync(device)
    dt = time.perf_counter() - t0
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    assert n_out == sum(outputs)
    result = {"benchmark": "engine_throughput", "model": args.model, "random_weights": args.model not in ARTIFACTS,
              "dtype": args.dtype, "device": device, "num_seqs": args.num_seqs, "len_range": [args.min_len, args.max_len],
              "prompt_tokens": sum(map(len, prompts)), "output_tokens": n_out,
              "llmlab": {"seconds": round(dt, 2), "output_tok_s": round(n_out / dt, 1),
                         **run_stats(before, llm.engine.stats())},
              "target_output_tok_s": {"H100": 10000}}
    rows = [["llmlab", n_out, round(dt, 2), result["llmlab"]["output_tok_s"]]]
    st = result["llmlab"]
    print(f"llmlab: {n_out} output tokens in {dt:.2f} s = {n_out / dt:,.1f} tok/s; {st['steps']} steps "
          f"({st['graph_steps']} graph replays, {st['async_steps']} launched ahead), host {st['host_seconds']:.2f} s ({st['host_ms_per_step']} ms a step), "
          f"waiting for the device {st['sync_wait_seconds']:.2f} s", flush=True)
    if device == "cuda":
        result["decode_step_gpu_ms"] = decode_step_ms(llm, model, dtype, (args.min_len + args.max_len) * 3 // 4)
    write_result(args.out, result)  # kept even if a slow reference is stopped before it finishes
    if args.hf:
        del llm, outs  # the engine's KV cache holds most of the GPU: give it back for the references
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        hf = hf_twin(model, dtype, device)
        longest = max(outputs)
        result["transformers"] = {}
        for api in args.hf:
            if api == "generate":
                api = f"generate, padded batches of {args.hf_batch_size}"
            try:
                with time_limit(args.hf_timeout):
                    if api == "generate_batch":
                        ran = run_hf_generate_batch(hf, prompts, longest)
                    else:
                        ran = run_hf_generate(hf, prompts, longest, batch_size=args.hf_batch_size)
            except _Timeout:  # (generate_batch's worker thread then logs "Tried to perform a generation step
                #               before the batch processor was initialized": its manager was stopped under it)
                ran = f"did not finish within {args.hf_timeout} s"
                if device == "cuda":
                    torch.cuda.empty_cache()
            if isinstance(ran, str):
                result["transformers"][api] = ran
                continue
            hf_dt, hf_ids = ran
            hf_out = sum(len(x) for x in hf_ids)
            result["transformers"][api] = {"seconds": round(hf_dt, 2), "tokens_generated": hf_out,
                                           "output_tok_s": round(hf_out / hf_dt, 1),
                                           "requested_tok_s": round(n_out / hf_dt, 1)}
            rows.append([f"transformers {api}", hf_out, round(hf_dt, 2), round(hf_out / hf_dt, 1)])
            write_result(args.out, result)
        done = [r for r in result["transformers"].values() if isinstance(r, dict)]
        if done:  # vs every token it generated (flatters it), and vs the same requested work (wall time)
            result["ratio_vs_best_transformers"] = round((n_out / dt) / max(r["output_tok_s"] for r in done), 2)
            result["ratio_vs_best_transformers_same_work"] = round(min(r["seconds"] for r in done) / dt, 2)
        elif any(isinstance(r, str) and r.startswith("did not finish") for r in result["transformers"].values()):
            # every reference stopped by the time limit: the same requested work took it longer than that
            result["ratio_vs_best_transformers_same_work_at_least"] = round(args.hf_timeout / dt, 2)
    result["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    print(f"\n{args.model} ({args.dtype}) on {device}: {args.num_seqs} sequences, prompt and output "
          f"lengths in [{args.min_len}, {args.max_len}]")
    table(rows, ["engine", "output tokens", "seconds", "output tok/s"])
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
