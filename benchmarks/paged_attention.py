"""Paged decode attention: a kernel that reads the pages in place vs the gather + SDPA path, side by side.

One layer's decode attention for a batch of sequences whose K/V sit in scattered pages, by default at
the Llama-3.2-1B head shape (32 query heads, 8 KV heads, head_dim 64), bf16, block size 16:
  - gather: the engine's gather path — `pages.index_select` of every row's slots, then SDPA;
  - kernel: `--kernel triton` (CUDA, kernels/paged_attention.py) or `--kernel cpu` (the C kernel of
    kernels/cpu_paged_attention.py), each one work item per (sequence, KV head); the Triton kernel also
    splits each row's keys into parts when batch x KV heads are too few programs for the card
    (`auto_splits`), and then the single-pass launch is timed beside it ("1 pass us").
Reported per (batch, context): microseconds per call (on the GPU from CUDA graphs of 10 calls, so no
launch gaps; on the CPU the median wall time of --iters), the kernel's speed-up, and its achieved bandwidth (K/V bytes read once) against the
card's datasheet bandwidth or, on the CPU, a measured 256 MiB copy (read + write counted). Outputs are
checked equal (bf16 tolerance) before timing.

    python benchmarks/paged_attention.py [--batches 1 16 64 256] [--contexts 512 2048] [--iters 50]
    python benchmarks/paged_attention.py --device cpu --kernel cpu --heads 9 3 64 --batches 1 16 --contexts 256 2048

`--device cpu --kernel triton` with TRITON_INTERPRET=1 runs the Triton kernel through its interpreter
as a smoke run (the tests do this): those times are not measurements of anything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from engine_common import peak_bandwidth, table, write_result

from llmlab.engine.model_runner import decode_segment
from llmlab.kernels import cpu_paged_attention as cpa
from llmlab.kernels import paged_attention as pa
from llmlab.model.attention import PagedMetadata, paged_attend


def gather_meta(tables, lens, block_size) -> PagedMetadata:
    """The gather path's metadata (per-key slots and mask), built once per step by the engine, so outside the
    timed call."""
    return PagedMetadata(lens, [decode_segment(0, tables, lens, block_size, None)])  # slot_mapping: writes only


def gather_sdpa(q, k_pages, v_pages, meta):
    """The engine's own gather path (model/attention.paged_attend without a decode kernel)."""
    return paged_attend(q.transpose(0, 1)[None], k_pages, v_pages, meta)[0].transpose(0, 1)


def time_us(fn, iters: int, device: torch.device) -> float:
    """Microseconds per call: on CUDA the GPU's own time, from a CUDA graph of 10 calls replayed (no launch gaps:
    a batch-1 call is a few microseconds, less than its Python launch), else the median of `iters` wall times."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        from llmlab.kernels.cuda_linear import graph_us

        return graph_us(lambda: [fn() for _ in range(10)], iters) / 10
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--heads", type=int, nargs=3, default=[32, 8, 64], metavar=("H", "HKV", "HD"))
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu")
    ap.add_argument("--kernel", choices=["triton", "cpu"], default="triton",
                    help="triton (CUDA; on CPU only under TRITON_INTERPRET=1, a smoke run) or cpu (the C kernel)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--sms", type=int, default=None,
                    help="SM count the Triton kernel's split choice assumes (default: the card's)")
    ap.add_argument("--out", default=None, help="result name (default paged_attention_<device>)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.kernel == "cpu":
        if dev.type != "cpu" or not cpa.available():
            print(f"--kernel cpu needs --device cpu and a C compiler ({cpa.build_error()}); nothing measured.")
            return 0
        kernel = cpa.paged_decode_cpu
    elif (dev.type == "cuda" and not torch.cuda.is_available()) or not pa.available(dev):
        print(f"--kernel triton needs Triton and CUDA (or TRITON_INTERPRET=1 with --device cpu); "
              f"nothing measured on {args.device}.")
        return 0
    else:
        kernel = pa.paged_decode
    H, Hkv, hd = args.heads
    bs, dtype = args.block_size, getattr(torch, args.dtype)
    bandwidth, source = peak_bandwidth(dev.type)
    rows, runs = [], []
    g = torch.Generator(device=dev).manual_seed(0)
    for ctx in args.contexts:
        for B in args.batches:
            width = -(-ctx // bs)
            num_blocks = B * width + 1
            k_pages = torch.randn(num_blocks * bs, Hkv, hd, device=dev, dtype=dtype, generator=g)
            v_pages = torch.randn_like(k_pages)
            # int64 tables and lengths, as the engine passes them (another dtype compiles another variant)
            tables = torch.randperm(num_blocks - 1, device=dev, generator=g)[:B * width].view(B, width)
            lens = torch.full((B,), ctx, dtype=torch.int64, device=dev)
            q = torch.randn(B, H, hd, device=dev, dtype=dtype, generator=g)
            meta = gather_meta(tables, lens, bs)
            ref = gather_sdpa(q, k_pages, v_pages, meta)
            splits, kw = 1, {}
            if kernel is pa.paged_decode:  # the count the engine's launch picks (or for --sms)
                splits = pa.auto_splits(B, Hkv, tables.shape[1] * bs, args.sms or pa._num_sms(dev))
                kw = {"num_splits": splits}
            got = kernel(q, k_pages, v_pages, tables, lens, block_size=bs, **kw)
            err = (got.float() - ref.float()).abs().max().item()
            if err > 3e-2:
                print(f"kernel disagrees with gather+SDPA at batch {B}, context {ctx}: max |diff| {err}")
                return 1
            inputs = (q, k_pages, v_pages, tables, lens)
            t_gather = time_us(lambda: gather_sdpa(q, k_pages, v_pages, meta), args.iters, dev)
            t_kernel = time_us(lambda x=inputs, kw=kw: kernel(*x, block_size=bs, **kw), args.iters, dev)
            t_one = t_kernel
            if splits > 1:
                t_one = time_us(lambda x=inputs: kernel(*x, block_size=bs, num_splits=1), args.iters, dev)
            kv_bytes = 2 * B * ctx * Hkv * hd * dtype.itemsize
            gbs = kv_bytes / (t_kernel * 1e-6) / 1e9
            run = {"batch": B, "context": ctx, "gather_sdpa_us": round(t_gather, 1), "kernel_us": round(t_kernel, 1),
                   "speedup": round(t_gather / t_kernel, 2), "kernel_gb_s": round(gbs, 1), "splits": splits,
                   "single_pass_us": round(t_one, 1), "split_speedup": round(t_one / t_kernel, 2),
                   "fraction_of_bandwidth": round(gbs * 1e9 / bandwidth, 3) if bandwidth else None,
                   "max_abs_diff": err}
            runs.append(run)
            print(run, flush=True)
            rows.append([B, ctx, run["gather_sdpa_us"], run["kernel_us"], run["speedup"], run["kernel_gb_s"],
                         run["fraction_of_bandwidth"], splits, run["single_pass_us"]])
    table(rows, ["batch", "context", "gather+SDPA us", "kernel us", "speed-up", "kernel GB/s", "of bandwidth",
                 "splits", "1 pass us"])
    smoke = dev.type == "cpu" and args.kernel == "triton"
    note = {"note": "Triton interpreter on CPU: a smoke run, the times mean nothing"} if smoke else {}
    write_result(args.out or f"paged_attention_{dev.type}", {
                            "benchmark": "paged_attention", **note, "kernel": args.kernel,
                            "heads": {"q": H, "kv": Hkv, "head_dim": hd}, "dtype": args.dtype, "block_size": bs, "bandwidth_gb_s": bandwidth and bandwidth / 1e9,
                            "bandwidth_source": source, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
