"""`llmlab explain`: the interview questions of ../shared/seeds/ answered by running llmlab's own code.

    from llmlab import explain
    t = explain.get_topic("kv-cache-7b"); r = t.run()
    r.verdict, r.numbers                                 # "wrong", {"kv_gib": 4.0, ...}
    explain.write_handbook("out/")                       # handbook.en.md, handbook.zh.md, plots/*.png

Layout: `registry.py` (Topic, Claim, Result, `@topic`), one module per theme (numerics, attention,
positions, normalization, memory, training, tokenization, sampling, architecture, serving),
`render.py` (text, Markdown, plots), `cli.py`. Topics that need capabilities llmlab does not have
yet (LoRA/P-Tuning, quantization, tensor parallelism, speculative decoding) are absent, not stubs.
"""

from __future__ import annotations

from pathlib import Path

from llmlab.explain.registry import VERDICTS, Claim, Context, Result, Topic, all_topics, get_topic
from llmlab.explain.render import LANGS, render_handbook, write_plots


def run_all(ctx: Context | None = None, topics: list[Topic] | None = None) -> list[tuple[Topic, Result]]:
    ctx = ctx or Context()
    return [(t, t.run(ctx)) for t in (topics or all_topics())]


def write_handbook(out: str | Path, langs: tuple[str, ...] = LANGS,
                   results: list[tuple[Topic, Result]] | None = None) -> list[Path]:
    """Run every topic once and write out/handbook.<lang>.md plus out/plots/*.png; returns the Markdown paths."""
    out = Path(out)
    results = results if results is not None else run_all()
    plot_files: dict[str, str] = {}
    for _, r in results:
        for name, path in write_plots(r, out / "plots").items():
            plot_files[name] = f"plots/{path.name}"
    paths = []
    for lang in langs:
        path = out / f"handbook.{lang}.md"
        path.write_text(render_handbook(results, lang, plot_files), encoding="utf-8")
        paths.append(path)
    return paths


__all__ = ["VERDICTS", "Claim", "Context", "Result", "Topic", "all_topics", "get_topic", "run_all",
           "write_handbook"]
