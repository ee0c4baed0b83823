"""The engine's host cost per step at many sequences: scheduling, input building, sampling, outputs.

On a GPU the step's Python runs while the GPU waits (the engine reads each step's tokens before it plans
the next), so at 256 sequences it bounds throughput as much as the kernels do. This measures it on the
CPU with the maths made negligible: a one-layer, 64-wide model, greedy sampling, the CUDA-graph path
taken (`pad_decode`, graphs captured at start-up) with each replay emulated by running the captured call
on its static inputs. Workload: N prompts of 100-300 random tokens, 100-300 new tokens each (--lengths 100 1024:
throughput.py's range, where block tables are up to 128 entries and the batch shrinks over ~1,000 steps).

    .venv/bin/python benchmarks/engine_host.py [--num-seqs 256] [--repeats 3] [--lengths 100 300]

Prints ms per step (best of --repeats); writes benchmarks/results/engine_host_cpu.json. The maths left
(one layer's linears and attention over 256 rows, and the Python of the forward an emulated replay runs, which a
real replay does not) is part of that figure, the same in any A/B of two commits. --host-only leaves it out: each
replay hands back the same zero logits (every row then samples token 0), so the figure is the host's work alone,
what a GPU decode step waits for.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings

import torch
from engine_common import write_result

from llmlab import LLM, ModelConfig, Transformer
from llmlab.engine import SamplingParams
from llmlab.engine.emulated_graphs import emulate_cuda_graphs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lengths", type=int, nargs=2, default=(100, 300), metavar=("LO", "HI"),
                    help="prompt and output lengths uniform in [LO, HI] (default 100 300)")
    ap.add_argument("--host-only", action="store_true",
                    help="replays return zero logits at once: the host's work per step without the maths")
    ap.add_argument("--async-scheduling", action="store_true",
                    help="launch decode steps ahead of their tokens as a CUDA engine does (EngineConfig."
                         "async_scheduling); on the CPU nothing overlaps, so this is its bookkeeping's cost")
    ap.add_argument("--max-num-seqs", type=int, default=None,
                    help="sequences running at once (default --num-seqs); fewer leaves requests queued, as in a "
                         "loaded server")
    ap.add_argument("--out", default="engine_host_cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(model_type="llama", vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=1,
                      num_heads=2, num_kv_heads=1, max_position_embeddings=4096)
    random.seed(0)
    n = args.num_seqs
    lo, hi = args.lengths
    if not 1 <= lo <= hi or 2 * hi > cfg.max_position_embeddings:
        ap.error(f"--lengths needs 1 <= LO <= HI <= {cfg.max_position_embeddings // 2}")
    prompts = [[random.randint(0, 1000) for _ in range(random.randint(lo, hi))] for _ in range(n)]
    params = [SamplingParams(temperature=0, max_tokens=random.randint(lo, hi), ignore_eos=True) for _ in range(n)]
    with warnings.catch_warnings():  # "no effect on this engine": true until the graphs are emulated below
        warnings.simplefilter("ignore")
        llm = LLM(Transformer(cfg).eval(), max_num_seqs=args.max_num_seqs or n, max_num_batched_tokens=16384,
                  cpu_pack_linears=False, async_scheduling=args.async_scheduling)
    graphs = emulate_cuda_graphs(llm.engine.runner)
    if args.host_only:
        zeros = torch.zeros(max(b for b, _ in graphs.graphs), cfg.vocab_size)
        graphs.replay = lambda b, width, vec, tables, ids=None: zeros[:b]
    llm.generate(prompts[:4], params[:4], use_tqdm=False)
    best, steps, ahead = float("inf"), 0, 0
    for _ in range(args.repeats):
        s0, a0 = llm.engine.num_steps, llm.engine.async_steps
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        steps, ahead = llm.engine.num_steps - s0, llm.engine.async_steps - a0
        best = min(best, dt / steps)
    what = "host only" if args.host_only else "maths included"
    print(f"{n} sequences ({what}): {best * 1e3:.2f} ms per step ({steps} steps, {ahead} launched ahead, best of "
          f"{args.repeats})")
    write_result(args.out, {"benchmark": "engine_host", "num_seqs": n, "max_num_seqs": args.max_num_seqs or n,
                            "lengths": [lo, hi], "steps": steps, "host_only": args.host_only,
                            "async_scheduling": args.async_scheduling, "async_steps": ahead, "repeats": args.repeats,
                            "ms_per_step": round(best * 1e3, 3)})


if __name__ == "__main__":
    main()
