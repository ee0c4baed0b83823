"""Batch-1 decode matmuls: llmlab's Triton GEMV vs cuBLAS (F.linear), side by side, at the Llama-3.2-1B shapes.

One decode step of one sequence multiplies a single activation row by every weight matrix, so it is
bound by how fast the weights stream from memory. For each weight shape of the step (q/k/v fused,
o, gate/up fused, down, the LM head) this times F.linear (cuBLAS) and kernels/gemv.py over a sweep of
tile configurations, each inside a CUDA graph whose calls cycle through enough weight copies to
exceed the L2 cache (so every byte comes from HBM, as in a real step), and reports microseconds,
achieved GB/s, and the step total (16 layers + head) against the card's read bandwidth, measured
here as a full-tensor sum of 2 GiB, and its datasheet figure. Outputs are checked against the fp32
reference before timing.

    python benchmarks/gemv.py [--shape llama-3.2-1b] [--iters 20]   # CUDA; writes results/gemv_cuda.json
"""

from __future__ import annotations

import argparse

import torch
from engine_common import SHAPES, peak_bandwidth, read_bandwidth, table, write_result

from llmlab.kernels.cuda_linear import graph_us
from llmlab.kernels.gemv import gemv, gemv_reference

# (block_n, block_k, num_warps); each also with split_k 2 and 4 where N <= 4096.
CONFIGS = [(8, 512, 4), (16, 256, 4), (16, 512, 4), (32, 256, 4), (32, 512, 8), (64, 256, 8)]
L2_BYTES = 64 << 20


def step_shapes(name: str) -> list[tuple[str, int, int, int]]:
    """(what, N, K, times per step) for each matmul of a batch-1 decode step (projections fused as the engine does)."""
    s = SHAPES[name]
    h, f, L = s["hidden_size"], s["intermediate_size"], s["num_layers"]
    hd = h // s["num_heads"]
    qkv = (s["num_heads"] + 2 * s["num_kv_heads"]) * hd
    return [("qkv", qkv, h, L), ("o", h, s["num_heads"] * hd, L), ("gate_up", 2 * f, h, L), ("down", h, f, L),
            ("lm_head", s["vocab_size"], h, 1)]


def weights_us(call, weights: list[torch.Tensor], iters: int) -> float:
    """Microseconds per call: a CUDA graph of one call per weight copy, replayed `iters` times."""

    def calls():
        for w in weights:
            call(w)

    return graph_us(calls, iters) / len(weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3.2-1b", choices=[k for k in SHAPES if k != "tiny"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default="gemv_cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gemv.py times CUDA kernels; run it on a machine with a GPU.")
    torch.manual_seed(0)
    read_bw = read_bandwidth()
    sheet_bw, sheet_src = peak_bandwidth("cuda")
    rows, shapes, totals = [], [], {"cublas": 0.0, "triton": 0.0}
    step_bytes = 0
    for what, N, K, times in step_shapes(args.shape):
        nbytes = N * K * 2
        copies = max(1, -(-2 * L2_BYTES // nbytes))
        weights = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        want = gemv_reference(x, weights[0])
        cublas = weights_us(lambda w, x=x: torch.nn.functional.linear(x, w), weights, args.iters)
        runs = []
        for bn, bk, warps in CONFIGS:
            for split in (1, 2, 4) if N <= 4096 else (1,):
                kw = dict(block_n=bn, block_k=bk, split_k=split, num_warps=warps)
                got = gemv(x, weights[0], **kw)
                torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
                runs.append((weights_us(lambda w, x=x, kw=kw: gemv(x, w, **kw), weights, args.iters), kw))
        best_us, best = min(runs, key=lambda r: r[0])
        shapes.append({"what": what, "N": N, "K": K, "per_step": times, "bytes": nbytes, "cublas_us": round(cublas, 2),
                       "triton_us": round(best_us, 2), "triton_config": best,
                       "sweep": [{"us": round(us, 2), **kw} for us, kw in runs]})
        rows.append([what, f"{N}x{K}", f"{cublas:.1f}", f"{nbytes / cublas / 1e3:.0f}", f"{best_us:.1f}",
                     f"{nbytes / best_us / 1e3:.0f}", f"{cublas / best_us:.2f}", str(tuple(best.values()))])
        totals["cublas"] += times * cublas
        totals["triton"] += times * min(best_us, cublas)
        step_bytes += times * nbytes
        del weights
        torch.cuda.empty_cache()
    table(rows, ["matmul", "N x K", "cuBLAS us", "GB/s", "Triton us", "GB/s", "speed-up", "(bn, bk, split, warps)"])
    for k, us in totals.items():
        print(f"step matmuls, {k if k == 'cublas' else 'best of the two per shape'}: {us:.0f} us = "
              f"{step_bytes / us / 1e3:.0f} GB/s ({step_bytes / us / 1e3 / (read_bw / 1e9):.0%} of the measured "
              f"read bandwidth {read_bw / 1e9:.0f} GB/s)")
    write_result(args.out, {
        "benchmark": "gemv", "shape": args.shape, "dtype": "bfloat16", "iters": args.iters,
        "measured_read_gb_s": round(read_bw / 1e9, 1), "datasheet_gb_s": sheet_bw and round(sheet_bw / 1e9, 1),
        "datasheet_source": sheet_src, "step_weight_bytes": step_bytes,
        "step_matmul_us": {k: round(v, 1) for k, v in totals.items()}, "shapes": shapes})


if __name__ == "__main__":
    main()
