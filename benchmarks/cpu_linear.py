"""CPU linears: `F.linear` vs oneDNN-packed `PackedLinear` vs the panel kernel vs the C kernel for 1-4 rows.

The kernels of kernels/cpu_linear.py and kernels/cpu_panel_linear.py on the 210 linear layers of one
SmolLM2-135M decode step (30 layers x q, k, v, o, gate, up, down; random weights of those shapes, the LM
head apart), timed back to back for 1, 2, 4, 8, 16, 64 and 512 rows (a prefill chunk), fp32 and bf16
(oneDNN where it packs the dtype). The weights total 425 MB in fp32, far beyond the caches, so
each call streams its weight from memory as a decode step does. The kernels alternate and the best
of --repeats counts (other jobs share these cores). Reported: ms per step, speed-ups over F.linear,
achieved GB/s (weight bytes / time) and GFLOP/s, and the physical limits: the read bandwidth of summing the
same weights with torch (`Tensor.sum` streams them once; bf16 weights are read as fp32 words, as a bf16 sum is
compute-bound on some CPUs), measured in the same loop, and the rate of a large torch matmul in the dtype, at
least the fp32 rate (engine_common.cpu_peak_flops; a measured rate, not the datasheet peak).

    .venv/bin/python benchmarks/cpu_linear.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from engine_common import cpu_peak_flops, table, write_result
from torch import nn

from llmlab.kernels.cpu_linear import SKINNY_MAX_ROWS, PackedLinear, packing_supported, skinny_linear, skinny_supported
from llmlab.kernels.cpu_panel_linear import pack_panels, panel_linear, panel_supported

SMOLLM2_LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # (out, in)


def step_ms(layers: list[nn.Linear], x: dict[int, torch.Tensor], kind: str) -> float:
    t0 = time.perf_counter()
    for m in layers:
        if kind == "packed":
            m(x[m.in_features])
        elif kind == "panel":
            panel_linear(x[m.in_features], m.panels, m.out_features)
        elif kind == "skinny":
            skinny_linear(x[m.in_features], m.weight)
        elif kind == "read":  # the same bytes read as fp32: a bf16 sum converts as it goes and is slower than memory
            m.weight.view(torch.float32).sum()
        else:
            F.linear(x[m.in_features], m.weight)
    return (time.perf_counter() - t0) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64, 512])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="cpu_linear")
    args = ap.parse_args()
    rows_out, runs = [], []
    for dtype in (torch.float32, torch.bfloat16):
        onednn = packing_supported(dtype)  # an AVX2-only CPU packs no bf16: F.linear and llmlab's kernels only
        torch.manual_seed(0)
        plain = [nn.Linear(i, o, bias=False).to(dtype) for _ in range(args.layers) for o, i in SMOLLM2_LAYER]
        packed = [PackedLinear.from_linear(m, (dtype,)) for m in plain]  # routes: oneDNN at every count
        panel = panel_supported(dtype)
        for m in plain if panel else []:
            m.panels = pack_panels(m.weight)
        nbytes = sum(m.weight.numel() * m.weight.element_size() for m in plain)
        macs = sum(m.weight.numel() for m in plain)
        peak = cpu_peak_flops(dtype) / 1e9
        with torch.inference_mode():
            for rows in args.rows:
                x = {576: torch.randn(rows, 576, dtype=dtype), 1536: torch.randn(rows, 1536, dtype=dtype)}
                for m in packed[:7] if onednn else []:  # equal outputs before timing (and the packing done)
                    torch.testing.assert_close(m(x[m.in_features]).float(), F.linear(x[m.in_features], m.weight).float(),
                                               atol=1e-4 if dtype == torch.float32 else 5e-2, rtol=1e-3)
                kinds = {"f_linear": plain, "read": plain} | ({"packed": packed} if onednn else {})
                if panel:
                    kinds["panel"] = plain
                    torch.testing.assert_close(panel_linear(x[576], plain[0].panels, 576).float(),
                                               F.linear(x[576], plain[0].weight).float(),
                                               atol=1e-4 if dtype == torch.float32 else 5e-2, rtol=1e-3)
                if rows <= SKINNY_MAX_ROWS and skinny_supported(dtype):
                    kinds["skinny"] = plain
                    torch.testing.assert_close(skinny_linear(x[576], plain[0].weight).float(),
                                               F.linear(x[576], plain[0].weight).float(),
                                               atol=1e-4 if dtype == torch.float32 else 5e-2, rtol=1e-3)
                best = {}
                for kind, layers in kinds.items():
                    step_ms(layers, x, kind)
                    best[kind] = float("inf")
                for _ in range(args.repeats):
                    for kind, layers in kinds.items():
                        best[kind] = min(best[kind], step_ms(layers, x, kind))
                run = {"dtype": str(dtype).split(".")[-1], "rows": rows, "read_limit_gb_s": round(nbytes / best["read"] / 1e6, 1),
                       "matmul_gflop_s": round(peak)}
                for kind in ("f_linear", "packed", "panel", "skinny"):
                    if kind in best:
                        run[f"{kind}_ms"] = round(best[kind], 2)
                        run[f"{kind}_gb_s"] = round(nbytes / best[kind] / 1e6, 1)
                        run[f"{kind}_gflop_s"] = round(2 * macs * rows / best[kind] / 1e6)
                        run[f"{kind}_speedup"] = round(best["f_linear"] / best[kind], 2)
                runs.append(run)
                print(run, flush=True)
                rows_out.append([run["dtype"], rows, run["f_linear_ms"], run.get("packed_ms", "-"),
                                 run.get("panel_ms", "-"), run.get("skinny_ms", "-"), run.get("panel_gb_s", "-"),
                                 run["read_limit_gb_s"], run.get("panel_gflop_s", "-"), run["matmul_gflop_s"]])
    print(f"\n{len(SMOLLM2_LAYER) * args.layers} SmolLM2-135M linear shapes per step, CPU")
    table(rows_out, ["dtype", "rows", "F.linear ms", "oneDNN ms", "panel ms", "C 1-4 rows ms", "panel GB/s",
                     "read limit GB/s", "panel GFLOP/s", "torch matmul GFLOP/s"])
    write_result(args.out, {"benchmark": "cpu_linear", "shapes_per_layer": SMOLLM2_LAYER, "layers": args.layers,
                            "repeats": args.repeats, "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
