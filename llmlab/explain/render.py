"""Rendering of topics and their results: terminal text, Markdown sections, the handbook, PNG plots.

Every string a reader sees exists in English and Chinese (`lang` is "en" or "zh"); numbers,
formulas and the notes' quotes are shared. Plots are drawn with matplotlib's Agg backend, and only
when a directory is given.

Not here: the experiments (the theme modules) or argument parsing (cli.py).
"""

from __future__ import annotations

from pathlib import Path

from llmlab.explain.registry import VERDICT_ZH, Result, Table, Topic

LANGS = ("en", "zh")
_LABELS = {
    "en": {"question": "Question", "notes": "The notes say", "measured": "Measured", "verdict": "Verdict",
           "corrected": "Correction", "conclusion": "Conclusion", "plots": "Plots", "index": "Index of verdicts",
           "topic": "topic", "answer": "answer", "title": "llmlab explain: the interview notes, checked by experiment",
           "time": "ran in", "partial": "Partial handbook: {done} of {total} topics have run so far.",
           "intro": "Each section quotes the notes (file in ../shared/seeds/), runs an experiment "
           "on llmlab's own modules, and classifies every claim as confirmed, incomplete or wrong."},
    "zh": {"question": "问题", "notes": "笔记原文", "measured": "实测", "verdict": "结论判定",
           "corrected": "更正", "conclusion": "结论", "plots": "图", "index": "判定索引",
           "topic": "主题", "answer": "答案", "title": "llmlab explain:用实验检验面试笔记",
           "time": "运行耗时", "partial": "未完成的手册:目前已运行 {done} / {total} 个主题。",
           "intro": "每一节引用笔记原文(../shared/seeds/ 中的文件),用 llmlab 自己的模块做实验,"
           "并把每条说法判定为 正确 / 不完整 / 错误。"},
}


def verdict_label(verdict: str, lang: str) -> str:
    return verdict if lang == "en" else VERDICT_ZH[verdict]


def fmt(x) -> str:
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}" if abs(x) >= 10000 else str(x)
    if not isinstance(x, float):
        return str(x)
    if x == 0 or x != x or abs(x) == float("inf"):
        return str(x)
    if abs(x) >= 1e6 or abs(x) < 1e-3:
        return f"{x:.4g}"
    return f"{x:,.4f}".rstrip("0").rstrip(".") if abs(x) < 100 else f"{x:,.1f}"


def _text_table(t: Table, lang: str) -> list[str]:
    cells = [t.headers] + [[fmt(c) for c in row] for row in t.rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(t.headers))]
    title = t.title_en if lang == "en" else t.title_zh
    out = [f"  {title}"]
    for k, row in enumerate(cells):
        out.append("    " + "  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths)))
        if k == 0:
            out.append("    " + "  ".join("-" * w for w in widths))
    return out


def _width(s: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if "\u2e80" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef" else 1 for ch in s)


def render_text(t: Topic, r: Result, lang: str = "en") -> str:
    L = _LABELS[lang]
    zh = lang == "zh"
    lines = [f"{t.id}  [{verdict_label(r.verdict, lang)}]", "=" * (len(t.id) + 4 + len(r.verdict)),
             f"{L['question']}: {t.question_zh if zh else t.question_en}", f"{L['notes']}:"]
    for c in t.claims:
        lines.append(f"  [{verdict_label(r.verdicts[c.id], lang)}] 「{c.quote}」 ({c.seed})")
    lines.append(f"{L['measured']}:")
    for table in r.tables:
        lines += _text_table(table, lang)
    corrected = r.corrected_zh if zh else r.corrected_en
    if corrected:
        lines.append(f"{L['corrected']}: {corrected}")
    lines.append(f"{L['conclusion']}: {r.conclusion_zh if zh else r.conclusion_en}")
    lines.append(f"({L['time']} {r.seconds:.2f} s)")
    return "\n".join(lines)


def _md_table(t: Table, lang: str) -> list[str]:
    out = [f"**{t.title_en if lang == 'en' else t.title_zh}**", "",
           "| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
    out += ["| " + " | ".join(fmt(c).replace("|", "\\|") for c in row) + " |" for row in t.rows]
    return out + [""]


def render_markdown(t: Topic, r: Result, lang: str = "en", plot_files: dict[str, str] | None = None) -> str:
    L = _LABELS[lang]
    zh = lang == "zh"
    lines = [f"## {t.id}: {t.question_zh if zh else t.question_en}", "",
             f"**{L['verdict']}: {verdict_label(r.verdict, lang)}** — {t.answer_zh if zh else t.answer_en}", "",
             f"**{L['notes']}:**", ""]
    for c in t.claims:
        lines.append(f"- [{verdict_label(r.verdicts[c.id], lang)}] 「{c.quote}」 — `{c.seed}`")
    lines += ["", f"**{L['measured']}:**", ""]
    for table in r.tables:
        lines += _md_table(table, lang)
    corrected = r.corrected_zh if zh else r.corrected_en
    if corrected:
        lines += [f"**{L['corrected']}:** {corrected}", ""]
    lines += [f"**{L['conclusion']}:** {r.conclusion_zh if zh else r.conclusion_en}", ""]
    for p in r.plots:
        if plot_files and p.name in plot_files:
            lines += [f"![{p.caption_zh if zh else p.caption_en}]({plot_files[p.name]})", "",
                      f"*{p.caption_zh if zh else p.caption_en}*", ""]
    lines += [f"*{L['time']} {r.seconds:.2f} s*", ""]
    return "\n".join(lines)


def write_plots(r: Result, directory: Path) -> dict[str, Path]:
    """Draw each of the result's plots to directory/<name>.png; returns name -> path.

    A result without plots writes nothing and leaves `directory` alone (it is not created)."""
    if not r.plots:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for p in r.plots:
        fig = plt.figure(figsize=(6.4, 4.0), dpi=100)
        try:
            p.draw(fig)
            fig.tight_layout()
            path = directory / f"{p.name}.png"
            fig.savefig(path)
            written[p.name] = path
        finally:
            plt.close(fig)
    return written


def render_handbook(results: list[tuple[Topic, Result]], lang: str, plot_files: dict[str, str],
                    total: int | None = None) -> str:
    """The handbook of `results`; given `total` topics of which fewer have run, it says it is partial."""
    L = _LABELS[lang]
    zh = lang == "zh"
    lines = [f"# {L['title']}", "", L["intro"], ""]
    if total is not None and len(results) < total:
        lines += [f"**{L['partial'].format(done=len(results), total=total)}**", ""]
    lines += [f"## {L['index']}", "",
              f"| {L['topic']} | {L['question']} | {L['verdict']} | {L['answer']} |", "|---|---|---|---|"]
    for t, r in results:
        q = (t.question_zh if zh else t.question_en).replace("|", "\\|")
        a = (t.answer_zh if zh else t.answer_en).replace("|", "\\|")
        lines.append(f"| [{t.id}](#{t.id}) | {q} | {verdict_label(r.verdict, lang)} | {a} |")
    counts = {v: sum(r.verdict == v for _, r in results) for v in ("confirmed", "incomplete", "wrong")}
    lines += ["", ", ".join(f"{verdict_label(v, lang)}: {n}" for v, n in counts.items()), ""]
    for t, r in results:
        lines += [f'<a id="{t.id}"></a>', "", render_markdown(t, r, lang, plot_files)]
    return "\n".join(lines)
