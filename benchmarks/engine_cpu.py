"""CPU engine benchmark: SmolLM2-135M (real weights) — llmlab's engine vs transformers, same weights.

Two workloads, side by side in one run, greedy with ignore_eos, random prompt ids (seed 0):
  - batch 1: one 128-token prompt, --new-tokens new tokens;
  - 16 concurrent sequences: 16 distinct 128-token prompts, --new-tokens each.
References on the same weights and dtype: transformers `generate` (one padded batch; SDPA
attention) and, if it runs here, transformers' continuous-batching `generate_batch`.
Reported: output tokens/s (end to end, prefill included), llmlab / transformers ratios, and the
fraction of sequences whose greedy outputs are identical token for token.

Targets (issue 6): >= 2x transformers at batch 1 and >= 5x at 16 sequences. Where the cores are
shared with other jobs, absolute numbers move a lot between runs (an OpenMP barrier waits for a
descheduled thread), so the engines alternate, the best of --repeats counts, and the 1-minute
load average is recorded; the ratios, taken in one run, are the result.

    .venv/bin/python benchmarks/engine_cpu.py [--new-tokens 128] [--dtypes float32 bfloat16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os

import torch
from engine_common import (hf_twin, load_model, random_prompts, run_hf_generate, run_hf_generate_batch, run_llmlab,
                           same_fraction, table, write_result)

from llmlab import LLM


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--dtypes", nargs="+", default=["float32"], help="e.g. float32 bfloat16")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per engine; the best counts")
    ap.add_argument("--skip-generate-batch", action="store_true", help="do not try transformers' generate_batch")
    ap.add_argument("--out", default="engine_cpu")
    args = ap.parse_args()

    rows, runs = [], []
    load_before = os.getloadavg()
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        model = load_model(args.model, dtype, "cpu")
        hf = hf_twin(model, dtype, "cpu")
        llm = LLM(model, max_num_seqs=max(args.batches), max_num_batched_tokens=2048)
        warm = random_prompts(2, 16, model.cfg.vocab_size, seed=1)
        run_llmlab(llm, warm, 4)  # first-call costs (allocator, kernels) out of the timings
        run_hf_generate(hf, warm, 4)
        for B in args.batches:
            prompts = random_prompts(B, args.prompt_len, model.cfg.vocab_size, seed=0)
            n_out = B * args.new_tokens
            t_ours = t_hf = float("inf")
            for _ in range(args.repeats):  # alternate, keep the best: other jobs share these cores
                t, ids_ours, _ = run_llmlab(llm, prompts, args.new_tokens)
                t_ours = min(t_ours, t)
                t, ids_hf = run_hf_generate(hf, prompts, args.new_tokens)
                t_hf = min(t_hf, t)
            run = {"dtype": dtype_name, "batch": B, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                   "llmlab_tok_s": round(n_out / t_ours, 2), "hf_generate_tok_s": round(n_out / t_hf, 2),
                   "ratio_vs_hf_generate": round(t_hf / t_ours, 3),
                   "greedy_identical_vs_hf": same_fraction(ids_ours, ids_hf)}
            if B > 1 and not args.skip_generate_batch:
                cb = min((run_hf_generate_batch(hf, prompts, args.new_tokens) for _ in range(args.repeats)),
                         key=lambda r: r[0] if isinstance(r, tuple) else 0.0)
                if isinstance(cb, str):
                    run["hf_generate_batch"] = cb
                else:
                    run["hf_generate_batch_tok_s"] = round(n_out / cb[0], 2)
                    run["ratio_vs_hf_generate_batch"] = round(cb[0] / t_ours, 3)
            runs.append(run)
            print(run, flush=True)
            rows.append([dtype_name, B, run["llmlab_tok_s"], run["hf_generate_tok_s"], run["ratio_vs_hf_generate"],
                         run.get("hf_generate_batch_tok_s", "-"), run.get("ratio_vs_hf_generate_batch", "-"),
                         run["greedy_identical_vs_hf"]])
        del llm, hf, model
    print(f"\n{args.model}, prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, CPU")
    table(rows, ["dtype", "seqs", "llmlab tok/s", "hf generate tok/s", "ratio", "hf generate_batch tok/s", "ratio",
                 "same greedy"])
    write_result(args.out, {"benchmark": "engine_cpu", "model": args.model, "repeats": args.repeats, "runs": runs,
                            "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
                            "targets": {"batch1_ratio": 2.0, "batch16_ratio": 5.0}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
