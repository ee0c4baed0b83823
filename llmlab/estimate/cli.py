"""`llmlab estimate …`: parameters, FLOPs, training/inference memory and time from the command line.

    llmlab estimate params llama2-7b
    llmlab estimate flops gpt3-175b --tokens 300B
    llmlab estimate train-memory llama-7b --seq-len 2048 --zero 3 --dp 8 --recompute full
    llmlab estimate infer-memory llama-7b --batch 4 --context 2048 --weights fp16 --gpu A100-40GB
    llmlab estimate time gpt3-175b --tokens 300B --gpu A100 --n-gpus 1000 --mfu 0.3
    llmlab estimate gpus

MODEL is a preset name, a config.json, a model directory or a .gguf file. Every command prints a
table; --json prints one JSON object; --explain prints each formula with its numbers substituted.
Bad input is one line on stderr (`llmlab estimate WHAT: error: ...`, exit status 2); an option that
changes nothing in the given setup is said so on stderr (`note: ...`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

from llmlab.errors import ConfigError, LlmlabError
from llmlab.estimate import flops, hardware, memory, params, presets, time
from llmlab.estimate.explain import Step, render_explain, render_table

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str) -> float:
    """'300e9', '300B', '1.4T', '2048' -> a number."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kmbgtKMBGT]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: write e.g. 300e9, 300B or 1.4T")
    try:
        value = float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1)
    except ValueError:  # '1.2.3' passes the pattern
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: write e.g. 300e9, 300B or 1.4T") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} overflows a float (above 1.8e308): give a finite count")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("estimate", help="parameters, FLOPs, memory and time of a model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    def command(name: str, help_: str, handler) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        if name != "gpus":
            c.add_argument("model", metavar="MODEL", nargs="?",
                           help=f"preset ({', '.join(presets.PRESETS)}), config.json, model directory or .gguf")
            c.add_argument("--model", dest="model_flag", metavar="MODEL",
                           help="the same, as a flag (as `llmlab generate --model`)")
        c.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        c.add_argument("--explain", action="store_true", help="print each formula with the numbers substituted")
        c.set_defaults(func=_one_line_errors(name, handler if name == "gpus" else _with_model(name, handler)))
        return c

    command("params", "parameter count with a breakdown by component", _params)

    c = command("flops", "FLOPs per token (forward/backward), prefill, decode and a training run; MFU", _flops)
    c.add_argument("--seq-len", type=int, help="sequence length for the attention term (default: model context)")
    c.add_argument("--tokens", type=parse_count, help="training tokens D (e.g. 300B) for the run total")
    c.add_argument("--tokens-per-s", type=parse_count, help="measured training throughput (all GPUs) for MFU")
    c.add_argument("--gpu", help="GPU type for MFU (with --tokens-per-s; see `llmlab estimate gpus`)")
    c.add_argument("--n-gpus", type=int, help="GPUs producing --tokens-per-s (default 1)")
    c.add_argument("--dtype", help="compute dtype for the MFU peak (default bf16)")

    c = command("train-memory", "training memory per device: model states (ZeRO/TP/PP) and activations",
                _train_memory)
    c.add_argument("--batch", type=int, default=1, help="micro-batch per device (default 1)")
    c.add_argument("--seq-len", type=int, help="sequence length (default: model context)")
    c.add_argument("--precision", default="bf16-mixed", choices=list(memory.PRECISIONS),
                   help="bf16-mixed: 16-bit weights/grads + fp32 master and Adam moments (default)")
    c.add_argument("--optimizer", default="adamw", choices=list(memory.OPTIMIZERS))
    c.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3], help="ZeRO stage (default 0)")
    c.add_argument("--dp", type=int, default=1, help="data-parallel size that ZeRO shards over")
    c.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    c.add_argument("--pp", type=int, default=1, help="pipeline-parallel degree (1F1B; first stage reported)")
    c.add_argument("--recompute", default="none", choices=list(memory.RECOMPUTE),
                   help="activation recomputation (default none)")
    c.add_argument("--no-flash", dest="flash", action="store_false",
                   help="attention without a fused kernel: keep the s x s scores (explicit backend)")
    c.add_argument("--sequence-parallel", action="store_true", help="Megatron sequence parallelism (with --tp)")
    c.add_argument("--activations", default="llmlab", choices=list(memory.ACTIVATION_FORMULAS),
                   help="llmlab: what llmlab's Transformer saves (measured); megatron: Korthikanti et al. 2022")
    c.add_argument("--gpu", help="also say whether it fits this GPU")

    c = command("infer-memory", "inference memory: weights, KV cache, activations; what fits a GPU", _infer_memory)
    c.add_argument("--batch", type=int, default=1, help="concurrent sequences (default 1)")
    c.add_argument("--context", type=int, help="tokens per sequence held in the KV cache (default: model context)")
    c.add_argument("--weights", choices=[*memory.WEIGHT_FORMATS, "gguf"],
                   help="weight format (default: a .gguf's own tensors as stored, bf16 for any other MODEL)")
    c.add_argument("--kv-dtype", default="bf16", choices=list(memory.DTYPE_BYTES), help="KV-cache dtype")
    c.add_argument("--no-flash", dest="flash", action="store_false", help="prefill without a fused attention kernel")
    c.add_argument("--gpu", help="report the largest batch and context that fit this GPU, and the decode ceiling")

    c = command("time", "training time on N GPUs at an assumed MFU; decode speed ceiling", _time)
    c.add_argument("--tokens", type=parse_count, required=True, help="training tokens D (e.g. 300B)")
    c.add_argument("--gpu", required=True, help="GPU type (see `llmlab estimate gpus`)")
    c.add_argument("--n-gpus", type=int, default=1)
    c.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation, a fraction (default 0.4)")
    c.add_argument("--dtype", default="bf16", help="compute dtype (default bf16)")
    c.add_argument("--batch", type=int, default=1, help="decode batch for the bandwidth ceiling")
    c.add_argument("--context", type=int, help="decode context for the bandwidth ceiling")

    command("gpus", "the GPU table: dense peak TFLOP/s, memory and bandwidth", _gpus)


def _one_line_errors(name: str, handler):
    """Input errors as one line naming the subcommand (`llmlab estimate flops: error: ...`), exit status 2."""
    def run(args):
        try:
            return handler(args)
        except LlmlabError as e:
            print(f"llmlab estimate {name}: error: {e}", file=sys.stderr)
            return 2
        except OverflowError:  # a size with hundreds of digits: int -> float conversion fails deep inside
            print(f"llmlab estimate {name}: error: {_TOO_LARGE}", file=sys.stderr)
            return 2

    return run


_TOO_LARGE = ("the numbers are too large to compute (past a float's 1.8e308); give sizes and counts that a real "
              "model and cluster can have.")


def _require_positive(args, *flags: str) -> None:
    """Refuse a given flag value that is not positive, naming the flag; None means "not given"."""
    for flag in flags:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value <= 0:
            need = "at least 1" if isinstance(value, int) else "positive"
            raise ConfigError(f"{flag} must be {need}, got {value if isinstance(value, int) else f'{value:g}'}.")


def _note(text: str) -> None:
    """Say on stderr that an option changes nothing here (stdout stays the table or the JSON)."""
    print(f"note: {text}", file=sys.stderr)


def _note_past_context(cfg, flag: str, value: int | None) -> None:
    """Say when a length is past the model's positions: the arithmetic extends, the model itself would not."""
    if value is not None and value > cfg.max_position_embeddings:
        _note(f"{flag} {value} is past the model's {cfg.max_position_embeddings} positions: the estimate extends "
              "the arithmetic to it, the model itself would need longer positions (RoPE scaling, a longer table).")


def _with_model(name: str, handler):
    """MODEL as the positional argument or as --model: exactly one of them."""
    def run(args):
        if args.model and args.model_flag:
            raise ConfigError(f"two models given ({args.model} and --model {args.model_flag}); pass one.")
        if not (args.model or args.model_flag):  # '' (an unset shell variable) names no model either
            raise ConfigError(f"`llmlab estimate {name}` needs one model: a preset, config.json, model directory or "
                              f".gguf, e.g. `llmlab estimate {name} smollm2-135m`.")
        args.model = args.model or args.model_flag
        return handler(args)

    return run


def _emit(args, title: str, steps: list[Step], data: dict | None = None) -> int:
    overflowed = [s.name for s in steps if not math.isfinite(s.value)]
    if overflowed:  # e.g. 6·N·D of a finite but absurd D: 'inf FLOP' is no estimate
        raise ConfigError(f"{overflowed[0].strip()}: {_TOO_LARGE}")
    if args.json:
        payload = {"title": title, **(data or {}), "steps": [s.as_dict() for s in steps]}
        print(json.dumps(payload))
    elif args.explain:
        print(render_explain(title, steps))
    else:
        print(render_table(title, steps))
    return 0


def _params(args) -> int:
    cfg = presets.resolve(args.model)
    b = params.param_breakdown(cfg)
    L, tot = cfg.num_layers, b.total
    h, hd, nh, nkv, f, V = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads,
                            cfg.intermediate_size, cfg.vocab_size)
    pct = lambda x: f"{100 * x / tot:.1f}% of total"  # noqa: E731
    ffn_mats = 3 if cfg.gated_ffn else 2
    steps = [
        Step("token embedding", b.embedding, "params", "vocab · h", f"{V} · {h}"),
        Step("position embedding", b.position, "params", "max_positions · h" if b.position else "none"),
        Step("attention (all layers)", b.attention, "params", "L · (h·(heads + 2·kv_heads)·head_dim + "
             "heads·head_dim·h + biases + qk norms)", f"{L} · ({h}·({nh} + 2·{nkv})·{hd} + {nh}·{hd}·{h} + ...)"),
        Step("FFN (all layers)", b.ffn, "params", f"L · {ffn_mats}·h·ffn (+ biases)", f"{L} · {ffn_mats}·{h}·{f}"),
        Step("norms", b.norm, "params", "(2L + final) · h (· 2 with bias)"),
        Step("LM head", b.lm_head, "params", "tied to the embedding" if b.tied else "vocab · h"),
        Step("per layer", b.per_layer, "params", pct(b.per_layer)),
        Step("non-embedding", b.non_embedding, "params", pct(b.non_embedding)),
        Step("total", tot, "params", "sum of the above = sum(p.numel())"),
    ]
    return _emit(args, f"parameters of {args.model}", steps, {"params": b.as_dict()})


def _flops(args) -> int:
    _require_positive(args, "--seq-len", "--tokens", "--tokens-per-s", "--n-gpus")
    if args.tokens_per_s is None:
        mfu_flags = (("--gpu", args.gpu), ("--n-gpus", args.n_gpus), ("--dtype", args.dtype))
        given = [flag for flag, value in mfu_flags if value is not None]
        if given:
            names = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
            raise ConfigError(f"{names} set{'s' if len(given) == 1 else ''} the peak for MFU, which "
                              "needs the measured training throughput: add --tokens-per-s (all GPUs together).")
    elif not args.gpu:
        raise ConfigError("--tokens-per-s needs --gpu to compute MFU against that GPU's peak.")
    cfg = presets.resolve(args.model)
    _note_past_context(cfg, "--seq-len", args.seq_len)
    steps = flops.flops_steps(cfg, seq_len=args.seq_len, tokens=args.tokens)
    if args.tokens_per_s is not None:
        gpu = hardware.get_gpu(args.gpu)
        n_gpus, dtype = args.n_gpus or 1, args.dtype or "bf16"
        value = flops.mfu(cfg, args.tokens_per_s, gpu, n_gpus=n_gpus, dtype=dtype)
        steps.append(Step("MFU", value, "", "tokens/s · 6N / (n_gpus · peak)",
                          f"{args.tokens_per_s:.4g} · {6 * params.count_params(cfg):.4g} / "
                          f"({n_gpus} · {gpu.peak_flops(dtype):.4g})"))
    return _emit(args, f"FLOPs of {args.model}", steps)


def _train_memory(args) -> int:
    _require_positive(args, "--batch", "--seq-len", "--dp", "--tp", "--pp")
    if args.zero and args.dp == 1:
        _note(f"--zero {args.zero} shards model states across data-parallel ranks; with --dp 1 it changes "
              "nothing (give --dp N).")
    if args.dp > 1 and not args.zero:
        _note(f"--dp {args.dp} without --zero changes nothing per device: plain data parallelism keeps a full "
              "copy of the model states on every rank (add --zero 1, 2 or 3 to shard them).")
    if args.sequence_parallel and args.tp == 1:
        _note("--sequence-parallel splits activations across tensor-parallel ranks; with --tp 1 it changes nothing.")
    cfg = presets.resolve(args.model)
    _note_past_context(cfg, "--seq-len", args.seq_len)
    r = memory.training_memory(cfg, batch=args.batch, seq_len=args.seq_len, precision=args.precision,
                               optimizer=args.optimizer, zero=args.zero, dp=args.dp, tp=args.tp, pp=args.pp,
                               recompute=args.recompute, flash=args.flash, sequence_parallel=args.sequence_parallel,
                               activations=args.activations)
    steps = list(r.steps)
    if args.gpu:
        gpu = hardware.get_gpu(args.gpu)
        steps.append(Step(f"fits {gpu.name} ({gpu.memory_gib:g} GiB)?", float(r.total_with_overhead <= gpu.memory_bytes),
                          "yes/no", f"total + overhead ≤ {gpu.memory_gib:g} GiB"))
    data = {k: v for k, v in r.as_dict().items() if k != "steps"}
    return _emit(args, f"training memory per device for {args.model}", steps, data)


def _weights(model: str, weights: str | None) -> str:
    """The weight format: as given, else a .gguf's own tensors, else bf16. A format given for a .gguf is a what-if."""
    if not memory.is_gguf(model):
        return weights or "bf16"
    if weights not in (None, "gguf"):
        stored = memory.weight_bytes(model, "gguf")
        _note(f"--weights {weights} estimates the weights re-stored as {weights}; the file's own tensors take "
              f"{stored:,} B (omit --weights to use them).")
    return weights or "gguf"


def _infer_memory(args) -> int:
    _require_positive(args, "--batch", "--context")
    gpu = hardware.get_gpu(args.gpu) if args.gpu else None
    cfg = presets.resolve(args.model)
    _note_past_context(cfg, "--context", args.context)
    weights = _weights(args.model, args.weights)
    ctx = cfg.max_position_embeddings if args.context is None else args.context
    if cfg.sliding_window is not None and ctx > cfg.sliding_window:
        _note(f"the KV cache counts all {ctx} positions, as llmlab's KVCache holds them; a rolling-buffer cache "
              f"(Mistral's reference code) keeps only the {cfg.sliding_window}-token window.")
    kw = dict(weights=weights, kv_dtype=args.kv_dtype, flash=args.flash)
    r = memory.inference_memory(args.model, batch=args.batch, context=args.context, **kw)
    steps = list(r.steps)
    data = {k: v for k, v in r.as_dict().items() if k != "steps"}
    if gpu is None:
        return _emit(args, f"inference memory for {args.model}", steps, data)
    cap = f"total + overhead ≤ {gpu.memory_gib:g} GiB"
    fits = r.total_with_overhead <= gpu.memory_bytes
    max_b = memory.max_fitting(args.model, gpu.memory_bytes, vary="batch", context=ctx, **kw)
    max_c = memory.max_fitting(args.model, gpu.memory_bytes, vary="context", batch=args.batch, **kw)
    steps.append(Step(f"fits {gpu.name} ({gpu.memory_gib:g} GiB) at batch {args.batch}, context {ctx}?",
                      float(fits), "yes/no", cap))
    # A batch, context or speed is reported only for a setup that fits: "largest batch 0" or the decode
    # speed of a model the GPU cannot hold would be numbers about nothing.
    if max_b:
        steps.append(Step(f"largest batch at context {ctx} on {gpu.name}", max_b, "", cap))
    if max_c:
        steps.append(Step(f"longest context at batch {args.batch} on {gpu.name}", max_c, "",
                          f"{cap}, at most max_position_embeddings {cfg.max_position_embeddings}"))
    tps = None
    if fits:
        tps = time.decode_tokens_per_s(args.model, gpu, batch=args.batch, context=ctx, weights=weights,
                                       kv_dtype=args.kv_dtype)
        steps.append(Step("decode ceiling (bandwidth)", tps, "tok/s", "batch · bandwidth / (weights + KV)",
                          f"{args.batch} · {gpu.bandwidth:.4g} / ({r.weights:,} + {r.kv_cache:,})"))
    else:
        gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
        if not max_b:
            _note(f"{args.model} does not fit a {gpu.name} ({gpu.memory_gib:g} GiB) even at batch 1, context {ctx} "
                  f"(the {weights} weights alone are {gib(r.weights)}): no decode speed is reported; try "
                  "smaller --weights, a shorter --context or a larger GPU.")
        else:
            _note(f"batch {args.batch} at context {ctx} does not fit a {gpu.name} ({gib(r.total_with_overhead)} with "
                  f"overhead > {gpu.memory_gib:g} GiB): no decode speed is reported; the largest batch that fits "
                  f"at this context is {max_b}.")
    data |= {"fits": fits, "max_batch": max_b, "max_context": max_c, "decode_tokens_per_s": tps}
    return _emit(args, f"inference memory for {args.model}", steps, data)


def _time(args) -> int:
    _require_positive(args, "--tokens", "--n-gpus", "--batch", "--context")
    if not 0 < args.mfu <= 1:
        raise ConfigError(f"--mfu is a fraction of the peak in (0, 1], got {args.mfu:g}; e.g. --mfu 0.4.")
    cfg = presets.resolve(args.model)
    _note_past_context(cfg, "--context", args.context)
    weights = _weights(args.model, None)
    steps = time.time_steps(args.model, args.tokens, gpu=args.gpu, n_gpus=args.n_gpus, mfu=args.mfu,
                            dtype=args.dtype, batch=args.batch, context=args.context, weights=weights)
    if not steps[-1].name.startswith("decode ceiling"):
        gpu = hardware.get_gpu(args.gpu)
        _note(f"{args.model} at --batch {args.batch} does not fit one {gpu.name} ({weights} weights + KV cache + "
              f"activations + overhead > {gpu.memory_gib:g} GiB), so no decode ceiling is reported; `llmlab estimate "
              "infer-memory ... --gpu` gives the largest batch that fits.")
    return _emit(args, f"training time for {args.model}", steps, {"seconds": steps[3].value})


def _gpus(args) -> int:
    rows = [{"name": g.name, "memory_gib": g.memory_gib, "bandwidth_gbs": g.bandwidth_gbs, **g.tflops,
             "source": g.source} for g in hardware.GPUS.values()]
    if args.json:
        print(json.dumps({"gpus": rows}))
        return 0
    head = f"{'GPU':<15} {'mem GiB':>7} {'GB/s':>6} {'fp32':>6} {'tf32':>6} {'bf16':>7} {'fp16':>7} {'fp8':>7}   (dense TFLOP/s)"
    print(head)
    print("-" * len(head))
    fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    for r in rows:
        print(f"{r['name']:<15} {r['memory_gib']:>7g} {r['bandwidth_gbs']:>6g} {fmt(r['fp32']):>6} {fmt(r['tf32']):>6} "
              f"{fmt(r['bf16']):>7} {fmt(r['fp16']):>7} {fmt(r['fp8']):>7}")
    if args.explain:
        print("\nSources:")
        for r in rows:
            print(f"  {r['name']}: {r['source']}")
    return 0
