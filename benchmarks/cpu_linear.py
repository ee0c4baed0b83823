"""CPU linears: `F.linear` vs oneDNN-packed `PackedLinear` (kernels/cpu_linear.py), side by side.

The 210 linear layers of one SmolLM2-135M decode step (30 layers x q, k, v, o, gate, up, down;
random weights of those shapes, the LM head apart), timed back to back for 1 and 16 rows, fp32
and bf16 (where the CPU packs bf16). The weights total 425 MB in fp32, far beyond the caches, so
each call streams its weight from memory as a decode step does. Engines alternate and the best
of --repeats counts (other jobs share these cores). Reported: ms per step, the speed-up, and
achieved GB/s (weight bytes / time).

    .venv/bin/python benchmarks/cpu_linear.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from engine_common import table, write_result
from torch import nn

from llmlab.kernels.cpu_linear import PackedLinear, packing_supported

SMOLLM2_LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # (out, in)


def step_ms(layers: list[nn.Linear], x: dict[int, torch.Tensor], packed: bool) -> float:
    t0 = time.perf_counter()
    for m in layers:
        (m(x[m.in_features]) if packed else F.linear(x[m.in_features], m.weight))
    return (time.perf_counter() - t0) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="cpu_linear")
    args = ap.parse_args()
    rows_out, runs = [], []
    for dtype in (torch.float32, torch.bfloat16):
        if not packing_supported(dtype):
            print(f"{dtype}: this CPU cannot pack it; skipped")
            continue
        torch.manual_seed(0)
        plain = [nn.Linear(i, o, bias=False).to(dtype) for _ in range(args.layers) for o, i in SMOLLM2_LAYER]
        packed = [PackedLinear.from_linear(m, (dtype,)) for m in plain]
        nbytes = sum(m.weight.numel() * m.weight.element_size() for m in plain)
        with torch.inference_mode():
            for rows in args.rows:
                x = {576: torch.randn(rows, 576, dtype=dtype), 1536: torch.randn(rows, 1536, dtype=dtype)}
                for m in packed[:7]:  # equal outputs before timing (and the packing done)
                    torch.testing.assert_close(m(x[m.in_features]).float(), F.linear(x[m.in_features], m.weight).float(),
                                               atol=1e-4 if dtype == torch.float32 else 5e-2, rtol=1e-3)
                step_ms(packed, x, True), step_ms(plain, x, False)
                t_plain = t_packed = float("inf")
                for _ in range(args.repeats):
                    t_plain = min(t_plain, step_ms(plain, x, False))
                    t_packed = min(t_packed, step_ms(packed, x, True))
                run = {"dtype": str(dtype).split(".")[-1], "rows": rows, "f_linear_ms": round(t_plain, 2),
                       "packed_ms": round(t_packed, 2), "speedup": round(t_plain / t_packed, 2),
                       "f_linear_gb_s": round(nbytes / t_plain / 1e6, 1), "packed_gb_s": round(nbytes / t_packed / 1e6, 1)}
                runs.append(run)
                print(run, flush=True)
                rows_out.append([run["dtype"], rows, run["f_linear_ms"], run["packed_ms"], run["speedup"],
                                 run["f_linear_gb_s"], run["packed_gb_s"]])
    print(f"\n{len(SMOLLM2_LAYER) * args.layers} SmolLM2-135M linear shapes per step, CPU")
    table(rows_out, ["dtype", "rows", "F.linear ms", "packed ms", "speed-up", "F.linear GB/s", "packed GB/s"])
    write_result(args.out, {"benchmark": "cpu_linear", "shapes_per_layer": SMOLLM2_LAYER, "layers": args.layers,
                            "repeats": args.repeats, "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
