"""Where a batch-1 decode step and a training step spend their GPU time (CUDA only).

    python3 benchmarks/gpu_profile.py [decode] [kernel] [train] > benchmarks/results/gpu_profile_cuda.log
    python3 benchmarks/gpu_profile.py graph   # only the kernels of the compiled step's CUDA graph

decode: the engine on a Llama-3.2-1B shape (random bf16 weights), batch 1, 128-token prompt, 256 new
tokens — ms per step, each CUDA graph's replay time alone, a cProfile of the host side, the eager
step's kernels (torch.profiler), and the same with compile_decode=True. kernel: the paged decode
kernel alone inside a CUDA graph (GB/s of K/V read). train: the GPT-2-small step of
benchmarks/train.py (batch 16, model + loss and clip + AdamW compiled), optimizer and clipping alone, its kernels.
The log of 2026-11-23 (H100 80GB HBM3, torch 2.11, Triton 3.6) is benchmarks/results/gpu_profile_cuda.log;
it ran before fuse_projections existed and shows the compile_decode failure fixed since (fp64 scale).
"""
import cProfile
import io
import pstats
import sys
import time
import traceback

sys.path.insert(0, "benchmarks")
import torch
from engine_common import load_model, random_prompts

from llmlab import LLM
from llmlab.engine import SamplingParams


def gpu_time(fn, n=100):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n): fn()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / n

def decode_diag(model, compile_decode):
    print(f"\n===== decode, compile_decode={compile_decode}", flush=True)
    prompt = random_prompts(1, 128, model.cfg.vocab_size)[0]
    sp = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True)
    t = time.perf_counter()
    llm = LLM(model, device="cuda", max_num_seqs=8, max_num_batched_tokens=512, max_model_len=400,
              compile_decode=compile_decode)
    llm.generate([prompt], sp)
    print(f"init+warm-up {time.perf_counter() - t:.1f} s", flush=True)
    for _ in range(2):
        out = llm.generate([prompt], sp)[0]
        m = out.metrics
        print(f"decode ms/step {(m.finished_time - m.first_token_time) / 255 * 1e3:.3f}", flush=True)
    r = llm.engine.runner
    for key, (g, _) in sorted(r.graphs.graphs.items()):
        print(f"graph {key}: replay {gpu_time(g.replay):.3f} ms", flush=True)
    pr = cProfile.Profile(); pr.enable()
    llm.generate([prompt], sp)
    pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue()[:6000])
    del llm, r

def compiled_graph_kernels(model):
    """The kernels of one compiled batch-1 decode step, read from replays of its CUDA graph (what runs per token)."""
    print("\n===== compiled decode step: kernels inside its CUDA graph (torch.profiler, 20 replays)", flush=True)
    prompt = random_prompts(1, 128, model.cfg.vocab_size)[0]
    llm = LLM(model, device="cuda", max_num_seqs=1, max_num_batched_tokens=512, max_model_len=400,
              compile_decode=True, enable_prefix_caching=False)
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    graph = next(iter(llm.engine.runner.graphs.graphs.values()))[0]
    print(f"replay {gpu_time(graph.replay):.3f} ms", flush=True)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=80))
    del llm

def eager_kernel_profile(model):
    print("\n===== eager decode kernels (torch.profiler, 20 steps)", flush=True)
    prompt = random_prompts(1, 128, model.cfg.vocab_size)[0]
    llm = LLM(model, device="cuda", max_num_seqs=8, max_num_batched_tokens=512, max_model_len=400, enforce_eager=True)
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate([prompt], SamplingParams(temperature=0, max_tokens=21, ignore_eos=True))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    del llm

def kernel_alone():
    print("\n===== paged kernel alone in a CUDA graph (32 q / 8 kv heads, hd 64, bf16)", flush=True)
    from llmlab.kernels.paged_attention import paged_decode
    for B, ctx in [(1, 384), (1, 2048), (16, 512), (64, 2048), (256, 1024)]:
        bs = 16; nb = ctx // bs
        k = torch.randn(B * nb * bs + bs, 8, 64, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
        q = torch.randn(B, 32, 64, device="cuda", dtype=torch.bfloat16)
        tables = torch.randperm(B * nb, device="cuda").view(B, nb); lens = torch.full((B,), ctx, device="cuda")
        paged_decode(q, k, v, tables, lens, block_size=bs)
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s): paged_decode(q, k, v, tables, lens, block_size=bs)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g): paged_decode(q, k, v, tables, lens, block_size=bs)
        ms = gpu_time(g.replay, 200)
        gb = 2 * B * ctx * 8 * 64 * 2 / 1e9
        print(f"B={B} ctx={ctx}: {ms * 1e3:.1f} us, {gb / ms * 1e3:.0f} GB/s", flush=True)

def train_profile():
    print("\n===== train step profile (gpt2-small, batch 16, compiled model+loss)", flush=True)
    from train import GPT2, SHAPES

    from llmlab import ModelConfig, Transformer
    from llmlab.train.loop import compiled_lm_loss, train_step
    from llmlab.train.optim import AdamW, LossScaler, param_groups
    cfg = ModelConfig(**SHAPES["gpt2-small"], **GPT2)
    model = Transformer(cfg).cuda().train()
    loss_fn = compiled_lm_loss(model)
    opt = AdamW(param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), compiled=True)  # as train.py
    x = torch.randint(0, cfg.vocab_size, (16, 1025), device="cuda")
    xy = (x[:, :-1], x[:, 1:])
    step = lambda: train_step(model, model, [xy], opt, LossScaler(enabled=False), device=torch.device("cuda"),
                              precision="bf16", grad_clip=1.0, loss_fn=loss_fn)
    for _ in range(4): step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10): step()
    torch.cuda.synchronize()
    print(f"step {(time.perf_counter() - t) / 10 * 1e3:.2f} ms", flush=True)
    params = [p for p in model.parameters()]
    for p in params: p.grad = torch.randn_like(p)
    eager = AdamW(param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95))
    clip = gpu_time(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), 10)
    print(f"eager optimizer.step {gpu_time(eager.step, 10):.2f} ms; clip {clip:.2f} ms; "
          f"compiled clip_and_step {gpu_time(lambda: opt.clip_and_step(1.0), 10):.2f} ms")
    fused = torch.optim.AdamW(param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), fused=True)
    print(f"torch fused AdamW step {gpu_time(fused.step, 10):.2f} ms", flush=True)
    opt.zero_grad(set_to_none=True)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3): step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))

if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Where a batch-1 decode step and a training step spend their GPU time.")
    ap.add_argument("what", nargs="*", choices=["decode", "kernel", "train", "graph"],
                    help="what to profile (default: decode kernel train; graph: the compiled step's kernels alone)")
    what = ap.parse_args().what or ["decode", "kernel", "train"]
    if what == ["graph"]:  # the compiled step's kernels alone (gpu_all.sh main)
        compiled_graph_kernels(load_model("llama-3.2-1b", torch.bfloat16, "cuda"))
        sys.exit(0)
    model = load_model("llama-3.2-1b", torch.bfloat16, "cuda") if "decode" in what else None
    if "decode" in what:
        for f in (lambda: decode_diag(model, False), lambda: eager_kernel_profile(model), lambda: decode_diag(model, True),
                  lambda: compiled_graph_kernels(model)):
            try: f()
            except Exception:  # noqa: BLE001 - a diagnostic: report it, go on
                traceback.print_exc()
    if "kernel" in what:
        try: kernel_alone()
        except Exception:  # noqa: BLE001 - a diagnostic: report it, go on
            traceback.print_exc()
    if "train" in what:
        try: train_profile()
        except Exception:  # noqa: BLE001 - a diagnostic: report it, go on
            traceback.print_exc()
