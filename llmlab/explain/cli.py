"""`llmlab explain [TOPIC] [--plot DIR] [--lang en|zh]` and `llmlab explain --all --out DIR`.

Without arguments it lists the topics (id, question, one-line answer); with a TOPIC it runs that
experiment and prints the question, the notes' claims with verdicts, the measured tables, the
correction and the conclusion; `--all --out DIR` writes the handbook in both languages (or the one
`--lang` names) with its plots, printing one line per topic as it finishes and rewriting the handbook
after each, so an interrupted run keeps what finished. Options that would change nothing are refused
(`--plot` without a TOPIC) or noted (`--plot` on a topic without plots).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llmlab.errors import LlmlabError


class ExplainError(LlmlabError, ValueError):
    """A bad combination of `llmlab explain` arguments."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="answer the interview notes' questions by experiment",
                              description="List the topics, run one, or write the whole handbook.")
    p.add_argument("topic", nargs="?", help="topic id (omit to list them)")
    p.add_argument("--lang", choices=("en", "zh"), default=None, help="language (default en; --all writes both)")
    p.add_argument("--plot", metavar="DIR", help="write the topic's PNG plots into DIR")
    p.add_argument("--all", action="store_true", help="run every topic and write the handbook (needs --out)")
    p.add_argument("--out", metavar="DIR", help="handbook directory for --all")
    p.add_argument("--seed", type=int, help="random seed of the experiments (default 0)")
    p.set_defaults(func=_main)


def _directory(flag: str, value: str) -> Path:
    """The directory `flag` names, refused before any work when it (or a folder above it) is a file."""
    if not value.strip():  # Path('') is '.': an unset shell variable would write into the current directory
        raise ExplainError(f"{flag} is empty: name a directory (it is created if missing).")
    path = Path(value)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under {p}, which is a file"
                raise ExplainError(f"{flag} {value} {what}: name a directory (it is created if missing).")
            break
    return path


def _main(args) -> int:
    from llmlab.explain import Context, get_topic, topic_index
    from llmlab.explain.render import render_text, write_plots

    ctx = Context(seed=0 if args.seed is None else args.seed)
    lang = args.lang or "en"
    if args.all:
        if args.topic:
            raise ExplainError("give either a TOPIC or --all, not both.")
        if not args.out:
            raise ExplainError("--all writes a handbook: name its directory with --out DIR.")
        if args.plot is not None:
            raise ExplainError("--all writes its plots into --out DIR/plots; drop --plot.")
        return _write_all(_directory("--out", args.out), args.lang, ctx)
    if args.out is not None:
        raise ExplainError("--out is for --all; for one topic use --plot DIR.")
    if not args.topic:
        if args.plot is not None or args.seed is not None:
            flag = "--plot" if args.plot is not None else "--seed"
            raise ExplainError(f"{flag} is for running a topic: `llmlab explain TOPIC {flag} ...` "
                               "(without a TOPIC, `llmlab explain` only lists the topics).")
        for t in topic_index():  # read from the modules' source: listing imports no torch
            zh = lang == "zh"
            print(f"{t.id:<26} {t.question_zh if zh else t.question_en}")
            print(f"{'':<26} → {t.answer_zh if zh else t.answer_en}")
        return 0
    t = get_topic(args.topic)
    plot_dir = _directory("--plot", args.plot) if args.plot is not None else None
    r = t.run(ctx)
    print(render_text(t, r, lang))
    if plot_dir is not None:
        if not r.plots:
            print(f"note: {t.id} has no plots; nothing was written to {plot_dir}.", file=sys.stderr)
        for path in write_plots(r, plot_dir).values():
            print(f"plot: {path}")
    return 0


def _write_all(out: Path, lang: str | None, ctx) -> int:
    """Run every topic, printing one line as each finishes; the handbook is rewritten after each one."""
    from llmlab.explain import write_handbook

    start = time.perf_counter()
    written, total = 0, 0

    def report(i: int, n: int, t, r, seconds: float) -> None:
        nonlocal written, total
        written, total = i, n
        print(f"[{i}/{n}] {t.id:<28} {r.verdict:<11} {seconds:6.2f} s", flush=True)

    try:
        paths = write_handbook(out, (lang,) if lang else ("en", "zh"), ctx=ctx, progress=report)
    except KeyboardInterrupt:
        kept = f"the handbook in {out} holds the {written} that finished" if written else "nothing was written"
        print(f"interrupted before all topics ran: {kept}.", file=sys.stderr)
        return 130
    print(f"wrote {', '.join(map(str, paths))} ({total} topics, {time.perf_counter() - start:.1f} s)")
    return 0
