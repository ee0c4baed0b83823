"""The CPU paged-attention kernel of this checkout against the one of another commit, as the engine's decode step
runs it: pages of 30 layers visited in turn (so read from memory, not cache), blocks shuffled over the pool.

    python benchmarks/cpu_paged_attention_ab.py --baseline eb62c43 [--dtype bfloat16] [--rounds 7] [--prefill]

Both kernels are built with llmlab's flags (kernels/cbuild.py: -O3 -march=native, OpenMP) from their own sources
(the baseline's from `git show`), called alternately on the same inputs, best of `--rounds`; their outputs are
compared. SmolLM2-135M's heads (9 query, 3 KV, head size 64), 16-token blocks. With --prefill the rows are prefill
chunks as the engine's CPU step hands them over (one row per prompt token, context lengths 1..n, each sequence's
table row repeated): `sequences x prompt length` cases of PREFILL_CASES, beside torch's CPU SDPA (causal, GQA) on the
same queries and contiguous K/V (no gather timed). Results: benchmarks/results/<out>.json.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from engine_common import write_result

from llmlab.kernels import cbuild
from llmlab.kernels import cpu_paged_attention as cpa

ROOT = Path(__file__).resolve().parent.parent
KERNELS = "llmlab/kernels"
CASES = [(16, 190), (16, 512), (1, 190), (1, 2048), (4, 512), (64, 256)]  # (sequences, context)
PREFILL_CASES = [(16, 128), (1, 512), (4, 512), (1, 2048)]  # (sequences, prompt length)


def build_baseline(rev: str, out_dir: Path) -> ctypes.CDLL:
    """cpu_paged_attention.c and the headers it includes, as of `rev`, compiled with cbuild's first flag set."""
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, f"{KERNELS}/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith((".c", ".h")):
            blob = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, check=True, capture_output=True).stdout
            (out_dir / Path(name).name).write_bytes(blob)
    lib = out_dir / "baseline.so"
    error = cbuild._compile(cbuild.compiler(), cbuild.FLAG_SETS[0], out_dir / "cpu_paged_attention.c", lib)
    if error:
        raise SystemExit(f"building the baseline kernel failed: {error}")
    return ctypes.CDLL(str(lib))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="a git revision whose kernel to compare against")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prefill", action="store_true", help="prefill-shaped rows (PREFILL_CASES) instead of decode rows")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype, suffix = getattr(torch, args.dtype), {"bfloat16": "bf16", "float32": "f32"}[args.dtype]
    with tempfile.TemporaryDirectory() as d:
        base = getattr(build_baseline(args.baseline, Path(d)), f"paged_decode_{suffix}")
        base.argtypes, base.restype = cpa._functions()[dtype].argtypes, ctypes.c_int
        kernels = {"this": cpa._functions()[dtype], "baseline": base}
        H, Hkv, hd, bs, L = 9, 3, 64, 16, args.layers
        torch.manual_seed(0)
        runs = []
        for S, ctx in PREFILL_CASES if args.prefill else CASES:
            nbps = -(-ctx // bs) + 1
            nblocks = S * nbps + 8
            tables = torch.randperm(nblocks)[:S * nbps].view(S, nbps).long().contiguous()
            lens = torch.full((S,), ctx, dtype=torch.long)
            if args.prefill:  # one row per prompt token: contexts 1..ctx, the sequence's table row on each
                tables = tables.repeat_interleave(ctx, dim=0).contiguous()
                lens = torch.arange(1, ctx + 1).repeat(S)
            kp = [torch.randn(nblocks * bs, Hkv, hd).to(dtype) for _ in range(L)]
            vp = [torch.randn(nblocks * bs, Hkv, hd).to(dtype) for _ in range(L)]
            N = lens.numel()  # query rows
            q = torch.randn(N, H, hd).to(dtype)
            outs = {k: torch.empty(N, H, hd, dtype=dtype) for k in kernels}
            best = dict.fromkeys(kernels, float("inf"))
            sdpa = float("inf")
            if args.prefill:  # the reference point: torch's CPU SDPA (flash), causal, on contiguous K/V of each layer
                qs = q.view(S, ctx, H, hd).transpose(1, 2).contiguous()
                kvs = [[p[:S * ctx].view(S, ctx, Hkv, hd).transpose(1, 2).contiguous() for p in (kp[i], vp[i])]
                       for i in range(L)]
            for _ in range(args.rounds):
                if args.prefill:
                    t = time.perf_counter()
                    for layer in range(L):
                        F.scaled_dot_product_attention(qs, *kvs[layer], is_causal=True, enable_gqa=True)
                    sdpa = min(sdpa, time.perf_counter() - t)
                for name, fn in kernels.items():
                    t = time.perf_counter()
                    for layer in range(L):
                        fn(q.data_ptr(), kp[layer].data_ptr(), vp[layer].data_ptr(), tables.data_ptr(),
                           lens.data_ptr(), outs[name].data_ptr(), N, H, Hkv, hd, nbps, bs, 0, hd ** -0.5,
                           nblocks * bs, torch.get_num_threads())
                    best[name] = min(best[name], time.perf_counter() - t)
            # decode: the K/V bytes read (GB/s); prefill: the scores' and weighted sums' FLOPs (GFLOP/s)
            work, unit = ((4 * H * hd * float(lens.sum()) * L / 1e9, "GFLOP/s") if args.prefill
                          else (S * ctx * Hkv * hd * 2 * dtype.itemsize * L / 1e9, "GB/s"))
            rate = "this_gflop_s" if args.prefill else "this_gb_s"
            run = {"seqs": S, "context": ctx, "this_us_per_layer": round(best["this"] / L * 1e6, 1),
                   "baseline_us_per_layer": round(best["baseline"] / L * 1e6, 1),
                   rate: round(work / best["this"], 1),
                   rate.replace("this", "baseline"): round(work / best["baseline"], 1),
                   "speedup": round(best["baseline"] / best["this"], 2),
                   "outputs_equal": bool(torch.equal(outs["this"], outs["baseline"])),
                   "max_abs_diff": float((outs["this"].float() - outs["baseline"].float()).abs().max())}
            if args.prefill:
                run["torch_sdpa_us_per_layer"] = round(sdpa / L * 1e6, 1)
                run["speedup_vs_torch_sdpa"] = round(sdpa / best["this"], 2)
            runs.append(run)
            print(f"{S:3d} x {ctx:5d}: this {run['this_us_per_layer']:8.1f} us/layer "
                  f"({work / best['this']:6.1f} {unit})"
                  f"  baseline {run['baseline_us_per_layer']:8.1f} ({work / best['baseline']:6.1f})  "
                  f"{run['speedup']:.2f}x  equal {run['outputs_equal']} (max diff {run['max_abs_diff']:.2g})"
                  + (f"  torch SDPA {run['torch_sdpa_us_per_layer']:.1f} ({run['speedup_vs_torch_sdpa']:.2f}x)"
                     if args.prefill else ""))
    write_result(args.out or f"cpu_paged_attention_ab_{args.dtype}",
                 {"benchmark": "cpu_paged_attention_ab", "baseline": args.baseline, "dtype": args.dtype,
                  "heads": [H, Hkv, hd], "block_size": bs, "layers": L, "rounds": args.rounds,
                  "rows": "prefill" if args.prefill else "decode", "runs": runs})


if __name__ == "__main__":
    main()
