"""`llmlab <command>`: the command-line entry point (also `python -m llmlab`).

Thin by design: each subpackage that offers commands has a `cli.py` with
`register(subparsers) -> None`, which adds its sub-parser and sets `func` to a handler
`(args) -> int`. Adding a command is one line in `COMMAND_MODULES`. Errors caused by input
(`LlmlabError`), and paths the OS refuses (`OSError` naming a file), are printed as one line without a
traceback (LLMLAB_TRACEBACK=1 shows it) and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from llmlab import __version__
from llmlab.errors import LlmlabError

COMMAND_MODULES = [
    "llmlab.model.cli",
    "llmlab.data.cli",
    "llmlab.train.cli",
    "llmlab.tokenizer.cli",
    "llmlab.estimate.cli",
    "llmlab.engine.cli",
    "llmlab.explain.cli",
    "llmlab.demo",
]


class _Parser(argparse.ArgumentParser):
    """argparse's own errors (a bad choice, a value that is not a number) as one line, like every other llmlab
    error, instead of a usage block first; sub-commands inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}{_close_choice(message)} (`{self.prog} --help` lists the "
                     "options)\n")


def _close_choice(message: str) -> str:
    """"; did you mean 'X'?" for argparse's "invalid choice: 'Y' (choose from ...)" when a choice is close to Y
    (a typo), else "" (also where argparse already suggests one, as Python 3.14's does)."""
    import difflib
    import re

    found = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)", message)
    if not found or "maybe you meant" in message:
        return ""
    choices = [c.strip().strip("'\"") for c in found.group(2).split(",")]
    close = difflib.get_close_matches(found.group(1), choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmlab",
        description="llmlab: tokenize, pretrain (or continue training a checkpoint), generate and chat through a "
                    "paged-KV engine, estimate and explain LLMs, in one PyTorch codebase.",
    )
    parser.add_argument("--version", action="version", version=f"llmlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Commands that take free `--key value` overrides (e.g. `llmlab train`) set accepts_overrides.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        prog = f"llmlab {args.command}" if getattr(args, "command", None) else "llmlab"
        hint = "; a value goes after its option's name" if not extra[0].startswith("-") else ""
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extra)}{hint} (`{prog} --help` lists "
                       "the options)\n")
    args.overrides = extra
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2  # a command is required (`llmlab --help` exits 0)
    try:
        return int(args.func(args) or 0)
    except LlmlabError as e:
        print(f"llmlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `llmlab ... | head` closed the pipe: stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as e:  # a path that cannot be used: an output onto a file, a directory given as a file, ...
        if os.environ.get("LLMLAB_TRACEBACK") or e.filename is None:
            raise
        print(f"llmlab {args.command}: error: {e.strerror or e}: {e.filename}; give a path that can be used here "
              "(outputs: a new or existing directory; inputs: an existing file). LLMLAB_TRACEBACK=1 shows where.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
