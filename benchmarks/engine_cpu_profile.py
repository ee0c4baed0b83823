"""Where a CPU engine step's time goes: the prefill step, then the direct decode step's C calls timed one by one.

    python benchmarks/engine_cpu_profile.py [--dtype bfloat16] [--seqs 16] [--prompt-len 128] [--decoded 60]

SmolLM2-135M (real weights), greedy, the workload of engine_cpu.py: `--seqs` prompts of `--prompt-len` random
tokens prefilled in one step, then `--decoded` decode steps, after which the decode step (DirectDecode, the
engine's default on CPU) is timed whole and call by call, grouped by kernel (linears by weight shape). The
profiler of torch cannot see these calls (ctypes), hence this script. Results: benchmarks/results/<out>.json.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from engine_common import load_model, random_prompts, write_result

from llmlab.engine import LLMEngine, SamplingParams
from llmlab.engine.config import EngineConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decoded", type=int, default=60, help="decode steps before the timing (context grows)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(args.model, getattr(torch, args.dtype), "cpu")
    B = args.seqs
    engine = LLMEngine(model, None, EngineConfig(max_num_seqs=B, max_num_batched_tokens=max(2048, B * args.prompt_len),
                                                 enable_prefix_caching=False))

    def prefill(seed: int, max_tokens: int) -> float:
        for i, p in enumerate(random_prompts(B, args.prompt_len, model.cfg.vocab_size, seed=seed)):
            engine.add_request(f"{seed}-{i}", p, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        t = time.perf_counter()
        engine.step()
        return time.perf_counter() - t

    for seed in (100, 101):  # first-call costs, then one timed prefill
        prefill(seed, 1)
        while engine.has_unfinished_requests():
            engine.step()
    prefill_s = prefill(0, args.decoded + 2 * args.repeats + 10)
    for _ in range(args.decoded):
        engine.step()
    steps = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - t)
    direct = engine.runner.direct
    if direct is None:
        raise SystemExit("this engine has no direct decode step (a C compiler is needed); nothing to break down.")
    if B > direct.max_rows:
        raise SystemExit(f"the direct decode step takes at most {direct.max_rows} sequences; use --seqs "
                         f"{direct.max_rows} or fewer.")
    calls = direct._calls(B)  # on the inputs of the engine's last decode step
    names = []
    for fn, a in calls:
        name = getattr(fn, "__name__", str(fn))
        names.append(f"{name} {a[5]}x{a[6]}" if "linear" in name else name)
    total, count = collections.Counter(), collections.Counter()
    ids = direct.vec_t[0, :B]
    for _ in range(args.repeats):
        torch.index_select(model.embed.weight, 0, ids, out=direct.h[:B])  # as run() starts: the same values each time
        if model.cfg.embedding_scale:
            direct.h[:B].mul_(model.cfg.hidden_size ** 0.5)
        for (fn, a), name in zip(calls, names, strict=True):
            t = time.perf_counter()
            fn(*a)
            total[name] += time.perf_counter() - t
            count[name] += 1
    runs = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        direct.run(B)
        runs.append(time.perf_counter() - t)
    context = args.prompt_len + args.decoded + args.repeats  # the keys each sequence has at the breakdown
    kernels = {n: {"ms_per_step": round(v / args.repeats * 1e3, 3), "calls_per_step": count[n] // args.repeats}
               for n, v in sorted(total.items(), key=lambda kv: -kv[1])}
    result = {"benchmark": "engine_cpu_profile", "model": args.model, "dtype": args.dtype, "seqs": B,
              "prompt_len": args.prompt_len, "context_at_timing": context,
              "prefill_step_ms": round(prefill_s * 1e3, 1),
              "engine_decode_step_ms": _stats(steps), "direct_run_ms": _stats(runs),
              "kernels": kernels, "kernels_sum_ms": round(sum(k["ms_per_step"] for k in kernels.values()), 2)}
    print(f"{args.model} {args.dtype}, {B} sequences at ~{context} tokens: prefill step {result['prefill_step_ms']} ms;"
          " "
          f"decode step {result['engine_decode_step_ms']['median']} ms (engine), "
          f"{result['direct_run_ms']['median']} ms (its kernel loop)")
    for n, k in kernels.items():
        print(f"  {n:40s} {k['ms_per_step']:7.3f} ms  ({k['calls_per_step']} calls)")
    write_result(args.out or f"engine_cpu_profile_{args.dtype}", result)


def _stats(seconds: list[float]) -> dict[str, float]:
    return {"median": round(sorted(seconds)[len(seconds) // 2] * 1e3, 2), "min": round(min(seconds) * 1e3, 2)}


if __name__ == "__main__":
    main()
