"""`llmlab explain`: the interview questions of ../shared/seeds/ answered by running llmlab's own code.

    from llmlab import explain
    t = explain.get_topic("kv-cache-7b"); r = t.run()
    r.verdict, r.numbers                                 # "wrong", {"kv_gib": 4.0, ...}
    explain.write_handbook("out/")                       # handbook.en.md, handbook.zh.md, plots/*.png
                                                         # (rewritten as each topic finishes)

Layout: `registry.py` (Topic, Claim, Result, `@topic`), one module per theme (numerics, attention,
positions, normalization, memory, training, tokenization, sampling, architecture, serving),
`render.py` (text, Markdown, plots), `cli.py`. Topics that need capabilities llmlab does not have
yet (LoRA/P-Tuning, quantization, tensor parallelism, speculative decoding) are absent, not stubs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from llmlab.explain.registry import (VERDICTS, Claim, Context, Result, Topic, TopicInfo, all_topics, get_topic,
                                     topic_index)
from llmlab.explain.render import LANGS, render_handbook, write_plots

# progress(done, total, topic, result, seconds): called as each topic of a handbook is written
Progress = Callable[[int, int, Topic, Result, float], None]


def run_all(ctx: Context | None = None, topics: list[Topic] | None = None,
            on_result: Callable[[Topic, Result], None] | None = None) -> list[tuple[Topic, Result]]:
    """Run the topics in order; `on_result(topic, result)` is called as each one finishes."""
    ctx = ctx or Context()
    results = []
    for t in topics or all_topics():
        results.append((t, t.run(ctx)))
        if on_result is not None:
            on_result(*results[-1])
    return results


def write_handbook(out: str | Path, langs: tuple[str, ...] = LANGS,
                   results: list[tuple[Topic, Result]] | None = None, *, ctx: Context | None = None,
                   progress: Progress | None = None) -> list[Path]:
    """Write out/handbook.<lang>.md plus out/plots/*.png; returns the Markdown paths.

    Without `results` it runs every topic and rewrites the handbook after each one (marked partial
    until the last), so an interrupted run keeps every topic that finished."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    topics = all_topics() if results is None else [t for t, _ in results]
    paths = [out / f"handbook.{lang}.md" for lang in langs]
    done: list[tuple[Topic, Result]] = []
    plot_files: dict[str, str] = {}
    last = time.perf_counter()

    def add(t: Topic, r: Result) -> None:
        nonlocal last
        for name, path in write_plots(r, out / "plots").items():
            plot_files[name] = f"plots/{path.name}"
        done.append((t, r))
        if results is None or len(done) == len(topics):
            for lang, path in zip(langs, paths):
                tmp = path.with_suffix(".md.tmp")  # never leave a half-written handbook behind
                tmp.write_text(render_handbook(done, lang, plot_files, total=len(topics)), encoding="utf-8")
                tmp.replace(path)
        if progress is not None:
            progress(len(done), len(topics), t, r, time.perf_counter() - last)
        last = time.perf_counter()

    if results is None:
        run_all(ctx, topics, on_result=add)
    else:
        for t, r in results:
            add(t, r)
    return paths


__all__ = ["VERDICTS", "Claim", "Context", "Result", "Topic", "TopicInfo", "all_topics", "get_topic", "run_all",
           "topic_index", "write_handbook"]
