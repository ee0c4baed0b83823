"""`llmlab explain [TOPIC] [--plot DIR] [--lang en|zh]` and `llmlab explain --all --out DIR`.

Without arguments it lists the topics (id, question, one-line answer); with a TOPIC it runs that
experiment and prints the question, the notes' claims with verdicts, the measured tables, the
correction and the conclusion; `--all --out DIR` writes the handbook in both languages (or the one
`--lang` names) with its plots.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--seed", type=int, default=0, help="random seed of the experiments (default 0)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from llmlab.explain import Context, all_topics, get_topic, run_all, write_handbook
    from llmlab.explain.render import render_text, write_plots

    ctx = Context(seed=args.seed)
    lang = args.lang or "en"
    if args.all:
        if args.topic:
            raise ExplainError("give either a TOPIC or --all, not both.")
        if not args.out:
            raise ExplainError("--all writes a handbook: name its directory with --out DIR.")
        start = time.perf_counter()
        results = run_all(ctx)
        paths = write_handbook(args.out, (args.lang,) if args.lang else ("en", "zh"), results)
        for t, r in results:
            print(f"{t.id:<28} {r.verdict:<11} {r.seconds:6.2f} s")
        print(f"wrote {', '.join(map(str, paths))} ({len(results)} topics, {time.perf_counter() - start:.1f} s)")
        return 0
    if args.out:
        raise ExplainError("--out is for --all; for one topic use --plot DIR.")
    if not args.topic:
        for t in all_topics():
            zh = lang == "zh"
            print(f"{t.id:<26} {t.question_zh if zh else t.question_en}")
            print(f"{'':<26} → {t.answer_zh if zh else t.answer_en}")
        return 0
    t = get_topic(args.topic)
    r = t.run(ctx)
    print(render_text(t, r, lang))
    if args.plot:
        for path in write_plots(r, Path(args.plot)).values():
            print(f"plot: {path}")
    return 0
