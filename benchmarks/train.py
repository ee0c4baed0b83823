"""Training throughput: llmlab's loop step vs a plain transformers GPT2LMHeadModel loop, side by side.

Same shape (GPT-2 small, 124M, vocab 50304, seq 1024), same random batch, same optimizer
(AdamW, lr 6e-4, betas (0.9, 0.95), wd 0.1, multi-tensor on GPU), same precision (bf16 autocast
over fp32 master weights), same gradient clipping. Reports tokens/s and MFU against the measured
bf16 matmul peak of the card (and the datasheet peak when the card is known), using
`llmlab.estimate.flops_per_token(cfg, T).train` = 6·M + 12·L·H·hd·min(T, W) FLOPs per token (W: a sliding window; M = the matmul
weights, LM head included, as in PaLM). llmlab's loop prefers the SDPA backend that its own start-up timing
found fastest at this attention shape (TrainConfig.attention_backend = "auto"; `--attention` overrides);
transformers keeps PyTorch's order. The timings and the choice are in the JSON ("attention").

    python benchmarks/train.py                      # GPU: gpt2-small, batch 16, 30 timed steps
    python benchmarks/train.py --shape tiny --device cpu --steps 3   # smoke run on a CPU

Prints a table and ends with one JSON line; writes benchmarks/results/train_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from engine_common import RESULTS, at_least, check_writable, command, hardware, versions

from llmlab import ModelConfig, Transformer
from llmlab.estimate import flops_per_token
from llmlab.train.attention_backend import CHOICES, choose_backends, prefer
from llmlab.train.loop import compiled_lm_loss, train_step
from llmlab.train.optim import AdamW, LossScaler, param_groups
from llmlab.train.parallel import apply_activation_checkpointing

SHAPES = {
    "gpt2-small": dict(vocab_size=50304, hidden_size=768, num_layers=12, num_heads=12, max_position_embeddings=1024),
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=128),
}
GPT2 = dict(norm="layernorm", norm_bias=True, position="learned", activation="gelu_tanh", gated_ffn=False,
            qkv_bias=True, o_bias=True, mlp_bias=True, tie_word_embeddings=True, model_type="gpt2")


def measured_peak_tflops(device: torch.device, dtype=torch.bfloat16, n: int = 8192, iters: int = 20) -> float:
    if device.type != "cuda":
        n, iters = 1024, 3
        dtype = torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t) / 1e12


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_llmlab(cfg, batch, steps, warmup, device, precision, compile_, recompute, attention="auto"):
    """(tokens/s, the SDPA backend timings behind the training loop's attention choice)."""
    torch.manual_seed(0)
    model = Transformer(cfg).to(device).train()
    if recompute:
        apply_activation_checkpointing(model)
    loss_fn = compiled_lm_loss(model) if compile_ else None  # model + loss in one compiled graph
    opt = AdamW(param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), compiled=compile_)  # clip + update fused
    scaler = LossScaler(enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    order, times = choose_backends(attention, batch=batch, heads=cfg.num_heads, seq=cfg.max_position_embeddings,
                                   head_dim=cfg.head_dim, dtype=dtype, device=device)

    def step(xy):
        with prefer(order):  # as llmlab.train.loop: the backend the run's attention shape was fastest with
            return train_step(model, model, [xy], opt, scaler, device=device, precision=precision, grad_clip=1.0,
                              loss_fn=loss_fn)

    chosen = {"setting": attention, "preferred": order[0].name if order else "pytorch default", "timings_ms": times}
    return _time(step, cfg, batch, steps, warmup, device), chosen


def bench_transformers(cfg, batch, steps, warmup, device, precision) -> float:
    import transformers

    hf_cfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_layers,
                                     n_head=cfg.num_heads, n_positions=cfg.max_position_embeddings,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(hf_cfg).to(device).train()
    groups = param_groups(model, 0.1)
    opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), foreach=device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def step(xy):
        x, y = xy[0].to(device), xy[1].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, cfg, batch, steps, warmup, device)


def _time(step, cfg, batch, steps, warmup, device) -> float:
    seq = cfg.max_position_embeddings
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
    xy = (data[:, :-1].to(device), data[:, 1:].to(device))
    for _ in range(warmup):
        step(xy)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(xy)
    _sync(device)
    return batch * seq * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="gpt2-small")
    ap.add_argument("--batch", type=at_least(1), default=16)
    ap.add_argument("--steps", type=at_least(1), default=30)
    ap.add_argument("--warmup", type=at_least(0), default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda, cuda:N or cpu (default: cuda when present, else cpu)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--no-compile", action="store_true",
                    help="run llmlab eagerly (default: torch.compile on CUDA; on the CPU llmlab always runs eagerly)")
    ap.add_argument("--recompute", action="store_true", help="activation checkpointing in llmlab")
    ap.add_argument("--attention", choices=CHOICES, default="auto",
                    help="SDPA backend llmlab prefers (as TrainConfig.attention_backend; transformers keeps PyTorch's)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/train_<device>.json)")
    args = ap.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device {args.device}: not a device; use cuda, cuda:N or cpu")
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device {args.device}: this benchmark runs on cuda or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); use --device cpu")
    out = check_writable(ap, Path(args.out) if args.out else RESULTS / f"train_{device.type}.json")
    cfg = ModelConfig(**SHAPES[args.shape], **GPT2)
    seq = cfg.max_position_embeddings
    fpt = flops_per_token(cfg, seq).train
    peak = measured_peak_tflops(device)
    compile_ = not args.no_compile and device.type == "cuda"
    ours, attention = bench_llmlab(cfg, args.batch, args.steps, args.warmup, device, args.precision, compile_,
                                   args.recompute, args.attention)
    ref = bench_transformers(cfg, args.batch, args.steps, args.warmup, device, args.precision)
    rows = [("llmlab" + (" (compiled)" if compile_ else ""), ours), ("transformers GPT2LMHeadModel", ref)]
    print(f"{args.shape} batch {args.batch} x seq {seq}, {args.precision}, {device} "
          f"(measured matmul peak {peak:.3g} TFLOP/s); llmlab attention: {attention['preferred']} "
          f"{attention['timings_ms'] or ''}")
    print(f"{'loop':32s} {'tokens/s':>12s} {'MFU':>7s}")
    for name, tps in rows:
        print(f"{name:32s} {tps:12,.0f} {tps * fpt / (peak * 1e12):7.1%}")
    result = {
        "benchmark": "train", "shape": args.shape, "batch": args.batch, "seq_len": seq, "precision": args.precision,
        "steps": args.steps, "compile": compile_, "recompute": args.recompute, "attention": attention,
        "flops_per_token": fpt,
        "measured_peak_tflops": peak, "llmlab_tokens_per_s": ours, "transformers_tokens_per_s": ref,
        "speedup_vs_transformers": ours / ref, "llmlab_mfu": ours * fpt / (peak * 1e12),
        "transformers_mfu": ref * fpt / (peak * 1e12),
        "device": str(device), "measured_peak_dtype": "bf16" if device.type == "cuda" else "fp32",
        "command": command(),
        # the card's name on CUDA (as before); the CPU by name (platform.processor() said only "x86_64")
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else hardware()["cpu"],
        "host": hardware(), "versions": versions(),
    }
    if device.type == "cuda":
        from llmlab.estimate.hardware import gpu_from_device_name

        gpu = gpu_from_device_name(result["hardware"])
        if gpu is not None:
            datasheet = gpu.peak_flops("bf16") / 1e12
            result["datasheet_peak_tflops"] = datasheet
            result["llmlab_mfu_datasheet"] = ours * fpt / (datasheet * 1e12)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
