"""`llmlab train`: run the training loop from a preset or TOML file plus `--key value` overrides."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from llmlab.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    from llmlab.train.config import PRESETS, run_keys_help

    p = sub.add_parser(
        "train", help="train a model on prepared shards", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Train a model. Settings come from --preset or --config FILE.toml (one is required, or --init_from "
            "CHECKPOINT), then any number of --key value overrides: run keys (e.g. --max_steps 500 --lr 1e-3 "
            "--precision bf16) and model keys (e.g. --model.num_layers 6). model.vocab_size defaults to the "
            "shards' vocabulary.", 100),
        epilog=f"{run_keys_help()}\n\npresets: {', '.join(PRESETS)}\n\n"
               "example: llmlab train --preset tiny-cpu --data shards/ --out runs/tiny --max_steps 500")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file: run keys at top level, a [model] table")
    p.add_argument("--preset", metavar="NAME", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --out (a new run when --out has none, said "
                        "in a note)")
    p.set_defaults(func=run, accepts_overrides=True)


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """`--key value` / `--key=value` pairs; a yes/no key given bare (`--compile`) is true."""
    from llmlab.train.config import is_bool_key

    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            flag = " (--resume takes no value: write it alone)" if tok.lower() in ("true", "false", "1", "0") else ""
            raise ConfigError(f"expected --key value, got {tok!r}{flag}.")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            key, value = tok[2:], extra[i + 1]
            i += 2
        elif is_bool_key(tok[2:]):
            key, value = tok[2:], "true"
            i += 1
        else:
            nxt = f" (the next argument is {extra[i + 1]})" if i + 1 < len(extra) else ""
            raise ConfigError(f"{tok} needs a value{nxt}.")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from llmlab.data.shards import ShardInfo
    from llmlab.train.config import PRESETS, build_config, check_override_keys
    from llmlab.train.loop import TrainingInterrupted, no_validation_reason, train

    overrides = parse_overrides(args.overrides)
    check_override_keys(overrides)  # a misspelt key first: fixing one error must not reveal the next
    if not args.preset and not args.config and not any(k.replace("-", "_") == "init_from" for k in overrides):
        # without them the model would be ModelConfig's default (12 x 768): minutes per step on a CPU
        raise ConfigError(f"no model to train: pass --preset NAME (one of {', '.join(PRESETS)}) or --config "
                          "FILE.toml (or --init_from CHECKPOINT), and --data SHARD_DIR.")
    # every key and value checked first (an unknown key is reported before a missing --data)
    data = build_config(preset=args.preset, file=args.config, overrides=overrides).data
    if not data:
        raise ConfigError("no shards given: pass --data DIR (from `llmlab data prepare`).")
    shards = ShardInfo.load(data)
    cfg = build_config(preset=args.preset, file=args.config, overrides=overrides, default_vocab_size=shards.vocab_size,
                       default_eos_token_id=shards.eos_id)
    if not cfg.init_from and cfg.model.vocab_size > 2 * shards.vocab_size + 128:  # a preset's or file's vocab_size
        print(f"note: model.vocab_size is {cfg.model.vocab_size:,} but the shards' tokenizer has "
              f"{shards.vocab_size:,} tokens: the rows above are never trained, and the model can sample ids the "
              f"tokenizer cannot decode; pass --model.vocab_size {shards.vocab_size} unless that is meant.",
              file=sys.stderr)
    try:
        result = train(cfg, resume=args.resume)
    except TrainingInterrupted as e:  # Ctrl-C in the loop: the step under way was finished and saved
        print(f"interrupted at step {e.step}; saved {e.checkpoint}, which --resume continues from.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C before the loop, or a second one: say what --resume would continue from
        from llmlab.train.checkpoint import latest_checkpoint

        newest = latest_checkpoint(Path(cfg.out) / "checkpoints")
        if newest is not None:
            print(f"interrupted; --resume continues from {newest} (the steps after it are redone).", file=sys.stderr)
        else:
            print(f"interrupted before the run saved a checkpoint, so --resume would start over; set --ckpt_every N "
                  f"to save every N steps (now {cfg.ckpt_every}: only at the end).", file=sys.stderr)
        return 130
    val = (f"val loss {result.val_loss:.4f}" if result.val_loss is not None
           else f"no val loss ({no_validation_reason(shards, cfg.seq_len) or 'none recorded at that step'})")
    if result.already_complete:
        print(f"already complete: {result.checkpoint} is at step {result.steps} = max_steps (train loss "
              f"{result.train_loss:.4f}, {val}); nothing written. Raise --max_steps to train further.")
        return 0
    print(f"done: {result.steps} step{'' if result.steps == 1 else 's'}, train loss {result.train_loss:.4f}, {val}, "
          f"{result.tokens_per_s:,.0f} tokens/s; checkpoint {result.checkpoint}")
    return 0
