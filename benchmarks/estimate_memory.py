"""Estimated vs measured memory for llmlab's Transformer: activations, KV cache, optimizer state.

For each config: build llmlab's Transformer, run one forward + loss and sum what autograd saves
(`llmlab.estimate.measure.saved_activation_bytes`, any device); on CUDA also the peak of
`torch.cuda.max_memory_allocated` over forward + backward beyond what was allocated before
(weights, gradients and optimizer state already exist: one warm-up step runs first). Each is
compared, as a ratio estimate / measured, with the 'llmlab' formula (derived for these ops) and
with Korthikanti et al.'s 'megatron' formula (GPT-style Megatron layers — shown for contrast, it
is not a formula for this implementation). Also: KV-cache bytes vs `KVCache.allocate`, and fp32
AdamW model states vs what `torch.optim.AdamW` holds.

    python benchmarks/estimate_memory.py            # CPU (and CUDA when present)
    python benchmarks/estimate_memory.py --reestimate benchmarks/results/estimate_memory_cuda.json
                                                    # today's formulas against recorded measurements
Results go to benchmarks/results/estimate_memory_<device>.json; the last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from engine_common import RESULTS, command, hardware, versions

from llmlab import estimate
from llmlab.config import ModelConfig
from llmlab.estimate.measure import peak_cuda_activation_bytes, saved_activation_bytes
from llmlab.model.cache import KVCache
from llmlab.model.transformer import Transformer

BASE = dict(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=8, intermediate_size=688,
            max_position_embeddings=1024)
CONFIGS = {
    "llama-gqa": BASE | {"num_kv_heads": 2},
    "llama-mqa-tied": BASE | {"num_kv_heads": 1, "tie_word_embeddings": True},
    "gpt2": BASE | {"norm": "layernorm", "norm_bias": True, "activation": "gelu_tanh", "gated_ffn": False,
                    "intermediate_size": 1024, "position": "learned", "qkv_bias": True, "o_bias": True,
                    "mlp_bias": True, "tie_word_embeddings": True},
    "qwen2-bias": BASE | {"num_kv_heads": 2, "qkv_bias": True, "tie_word_embeddings": True},
    "qwen3-qknorm": BASE | {"num_kv_heads": 4, "qk_norm": True, "head_dim": 64},
    "post-norm-relu": BASE | {"norm": "layernorm", "norm_position": "post", "final_norm": False,
                              "activation": "relu", "gated_ffn": False, "position": "sinusoidal"},
}
# (dtype, attention backend, recomputation)
SETTINGS = [("fp32", "sdpa", "none"), ("bf16", "sdpa", "none"), ("fp32", "explicit", "none"), ("bf16", "sdpa", "full")]
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}
BATCH, SEQ = 2, 256


def activation_rows(device: str) -> list[dict]:
    rows = []
    for name, kw in CONFIGS.items():
        cfg = ModelConfig(**kw)
        for dtype, backend, recompute in SETTINGS:
            torch.manual_seed(0)
            model = Transformer(cfg, attn_backend=backend).to(device=device, dtype=TORCH_DTYPE[dtype])
            ids, labels = torch.randint(0, cfg.vocab_size, (2, BATCH, SEQ), device=device)
            full = recompute == "full"
            saved = saved_activation_bytes(model, ids, labels, checkpoint_blocks=full)
            est = estimate.activation_bytes(cfg, BATCH, SEQ, formula="llmlab", dtype=dtype, flash=backend == "sdpa",
                                            recompute=recompute, device=device)
            est, est_peak = est.total, est.peak
            row = {"config": name, "dtype": dtype, "backend": backend, "recompute": recompute,
                   "measured_saved": saved, "llmlab_estimate": est, "ratio_llmlab": est / saved}
            if dtype == "bf16":  # Korthikanti's formula is for 16-bit activations
                meg = estimate.activation_bytes(cfg, BATCH, SEQ, formula="megatron", flash=backend == "sdpa",
                                                recompute=recompute).total
                row |= {"megatron_estimate": meg, "ratio_megatron": meg / saved}
            if device == "cuda":
                opt = torch.optim.AdamW(model.parameters(), lr=0.0)
                model.loss(ids, labels).backward()
                opt.step()  # grads and optimizer state now exist: the peak below is activations + transients
                peak = peak_cuda_activation_bytes(model, ids, labels, checkpoint_blocks=full)
                row |= {"measured_cuda_peak": peak, "llmlab_peak_estimate": est_peak,
                        "ratio_llmlab_vs_peak": est_peak / peak}
                del opt
            rows.append(row)
            del model
    return rows


def kv_rows(device: str) -> list[dict]:
    rows = []
    for name in ("llama-gqa", "qwen3-qknorm"):
        cfg = ModelConfig(**CONFIGS[name])
        for dtype in ("fp32", "bf16"):
            cache = KVCache.allocate(cfg, 3, 100, dtype=TORCH_DTYPE[dtype], device=device)
            est = estimate.kv_cache_bytes(cfg, 3, 100, dtype)
            rows.append({"config": name, "dtype": dtype, "allocated": cache.nbytes(), "estimate": est})
    return rows


def adamw_row() -> dict:
    cfg = ModelConfig(**CONFIGS["llama-gqa"])
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (1, 16))
    model.loss(ids, ids).backward()
    opt.step()
    held = sum(2 * p.numel() * p.element_size() for p in model.parameters())
    held += sum(s[k].numel() * s[k].element_size() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    est = estimate.training_memory(cfg, seq_len=16, precision="fp32").model_states
    return {"config": "llama-gqa", "precision": "fp32", "held": held, "estimate": est}


def reestimate(path: Path, parser: argparse.ArgumentParser | None = None) -> int:
    """Recompute the estimates of a results file's measured rows with the current formulas (pure arithmetic:
    no device needed) and write <name>_reestimated.json beside the results; the measurements are copied."""
    try:
        data = json.loads(path.read_text())
        device, rows = data["device"], []
        recorded = [(r, CONFIGS[r["config"]]) for r in data["activations"]]
        batch, seq_len = data["batch"], data["seq_len"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = e.strerror if isinstance(e, OSError) else f"not an estimate_memory results file ({type(e).__name__}: {e})"
        (parser or argparse.ArgumentParser(prog="estimate_memory.py")).error(f"--reestimate {path}: {why}")
    for r, config in recorded:
        est = estimate.activation_bytes(ModelConfig(**config), batch, seq_len,
                                        formula="llmlab", dtype=r["dtype"], flash=r["backend"] == "sdpa",
                                        recompute=r["recompute"], device=device)
        row = {k: r[k] for k in ("config", "dtype", "backend", "recompute", "measured_saved")}
        row |= {"llmlab_estimate": est.total, "ratio_llmlab": est.total / r["measured_saved"]}
        if "measured_cuda_peak" in r:
            row |= {"measured_cuda_peak": r["measured_cuda_peak"], "llmlab_peak_estimate": est.peak,
                    "ratio_llmlab_vs_peak": est.peak / r["measured_cuda_peak"]}
        rows.append(row)
        print(f"{row['config']:<16} {row['dtype']:<5} {row['backend']:<8} {row['recompute']:<6} "
              f"saved {row['ratio_llmlab']:.4f}  peak {row.get('ratio_llmlab_vs_peak', float('nan')):.4f}")
    out = {"benchmark": "estimate_memory (re-estimated)", "measured_in": path.name, "device": device,
           "hardware": data.get("hardware"), "measured_versions": data.get("versions", data.get("measured_versions")),
           "command": command(), "batch": batch, "seq_len": seq_len, "activations": rows,
           "llmlab_ratio_min": min(r["ratio_llmlab"] for r in rows),
           "llmlab_ratio_max": max(r["ratio_llmlab"] for r in rows)}
    peaks = [r["ratio_llmlab_vs_peak"] for r in rows if "ratio_llmlab_vs_peak" in r]
    if peaks:
        out |= {"peak_ratio_min": min(peaks), "peak_ratio_max": max(peaks)}
    dest = RESULTS / f"{path.stem}_reestimated.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "activations"}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="Estimated vs measured memory for llmlab's Transformer: activations, "
                                             "KV cache, optimizer state (CPU, and CUDA when present).")
    ap.add_argument("--reestimate", type=Path, metavar="RESULTS_JSON",
                    help="instead of measuring, apply today's formulas to the measurements recorded in this file")
    args = ap.parse_args()
    if args.reestimate is not None:
        return reestimate(args.reestimate, ap)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    act = activation_rows(device)
    print(f"activations, batch {BATCH} x seq {SEQ}, device {device}: estimate / measured (saved tensors)")
    head = f"{'config':<16} {'dtype':<5} {'backend':<8} {'recomp':<6} {'measured':>12} {'llmlab':>7} {'megatron':>9}"
    if device == "cuda":
        head += f" {'cuda peak':>12} {'llmlab/peak':>11}"
    print(head)
    for r in act:
        line = (f"{r['config']:<16} {r['dtype']:<5} {r['backend']:<8} {r['recompute']:<6} {r['measured_saved']:>12,} "
                f"{r['ratio_llmlab']:>7.4f} {r.get('ratio_megatron', float('nan')):>9.3f}")
        if device == "cuda":
            line += f" {r['measured_cuda_peak']:>12,} {r['ratio_llmlab_vs_peak']:>11.3f}"
        print(line)
    kv = kv_rows(device)
    for r in kv:
        print(f"KV cache {r['config']} {r['dtype']}: allocated {r['allocated']:,} B, estimate {r['estimate']:,} B")
    opt = adamw_row()
    print(f"fp32 AdamW model states: held {opt['held']:,} B, estimate {opt['estimate']:,.0f} B")
    ratios = [r["ratio_llmlab"] for r in act]
    summary = {
        "benchmark": "estimate_memory", "device": device,
        # the card's name on CUDA; the CPU by name (platform.processor() said only "x86_64")
        "hardware": torch.cuda.get_device_name() if device == "cuda" else hardware()["cpu"],
        "host": hardware(), "versions": versions(), "command": command(),
        "batch": BATCH, "seq_len": SEQ, "configs": CONFIGS, "activations": act, "kv_cache": kv, "adamw": opt,
        "llmlab_ratio_min": min(ratios), "llmlab_ratio_max": max(ratios),
    }
    out = RESULTS / f"estimate_memory_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("benchmark", "device", "hardware", "llmlab_ratio_min",
                                               "llmlab_ratio_max")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
