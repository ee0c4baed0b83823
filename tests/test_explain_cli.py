"""`llmlab explain` command line: progress and incremental writes of --all, and --plot/--out/--seed checks.

--all runs on three small fake topics here (the real ones run once, in test_explain.py).
"""

from __future__ import annotations

import pytest

import llmlab.explain
from llmlab.cli import main
from llmlab.explain.registry import SEED_001, Claim, Plot, Result, Table, Topic


def fake_topic(id: str, run=None, plots: bool = False) -> Topic:
    def run_fn(ctx) -> Result:
        if run is not None:
            run()
        drawn = [Plot(f"{id}-line", "a line", "一条线", lambda fig: fig.add_subplot().plot([0, 1]))] if plots else []
        return Result({"c": "confirmed"}, {}, "", "", f"{id} holds.", f"{id} 成立。",
                      [Table("t", "表", ["x"], [[1]])], drawn)

    return Topic(id, "test", f"{id}?", f"{id}?", (Claim("c", SEED_001, "quote"),), "yes", "是", run_fn)


def explain(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2 and out == "" and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_all_reports_and_writes_each_topic_as_it_finishes(capsys, monkeypatch, tmp_path):
    seen_during_b = {}

    def during_b():  # topic a is printed and written before topic b starts
        seen_during_b["stdout"] = capsys.readouterr().out
        seen_during_b["handbook"] = (tmp_path / "handbook.en.md").read_text(encoding="utf-8")

    topics = [fake_topic("fake-a", plots=True), fake_topic("fake-b", during_b), fake_topic("fake-c")]
    monkeypatch.setattr(llmlab.explain, "all_topics", lambda: topics)
    code, out, err = explain(capsys, "--all", "--out", str(tmp_path), "--lang", "en")
    assert code == 0 and err == ""
    assert seen_during_b["stdout"].startswith("[1/3] fake-a ") and "confirmed" in seen_during_b["stdout"]
    assert "fake-a holds." in seen_during_b["handbook"]
    assert "Partial handbook: 1 of 3 topics" in seen_during_b["handbook"]
    assert out.splitlines()[0].startswith("[2/3] fake-b ") and out.splitlines()[1].startswith("[3/3] fake-c ")
    assert "(3 topics," in out.splitlines()[2]
    book = (tmp_path / "handbook.en.md").read_text(encoding="utf-8")
    assert "Partial" not in book and all(f"{t} holds." in book for t in ("fake-a", "fake-b", "fake-c"))
    assert "plots/fake-a-line.png" in book and (tmp_path / "plots" / "fake-a-line.png").is_file()
    assert not (tmp_path / "handbook.zh.md").exists()


def test_interrupted_all_keeps_the_topics_that_finished(capsys, monkeypatch, tmp_path):
    def interrupt():
        raise KeyboardInterrupt

    topics = [fake_topic("fake-a", plots=True), fake_topic("fake-b", interrupt), fake_topic("fake-c")]
    monkeypatch.setattr(llmlab.explain, "all_topics", lambda: topics)
    code, out, err = explain(capsys, "--all", "--out", str(tmp_path))
    assert code == 130 and out.startswith("[1/3] fake-a ")
    assert f"interrupted before all topics ran: the handbook in {tmp_path} holds the 1 that finished." in err
    for lang, partial in (("en", "Partial handbook: 1 of 3 topics"), ("zh", "目前已运行 1 / 3 个主题")):
        book = (tmp_path / f"handbook.{lang}.md").read_text(encoding="utf-8")
        assert partial in book and "fake-a" in book and "fake-b" not in book
    assert (tmp_path / "plots" / "fake-a-line.png").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_plot_without_a_topic_is_an_error(capsys, tmp_path):
    one_line_error(*explain(capsys, "--plot", str(tmp_path / "p")), "--plot is for running a topic")
    one_line_error(*explain(capsys, "--seed", "3"), "--seed is for running a topic")
    one_line_error(*explain(capsys, "--all", "--out", str(tmp_path / "o"), "--plot", str(tmp_path / "p")),
                   "--all writes its plots into --out DIR/plots")
    assert not (tmp_path / "p").exists() and not (tmp_path / "o").exists()


def test_an_empty_plot_directory_is_an_error(capsys):
    # --plot '' ran the topic and wrote no plots without a word (Path('') would be the current directory)
    one_line_error(*explain(capsys, "scaled-dot-product", "--plot", ""), "--plot is empty: name a directory")
    one_line_error(*explain(capsys, "--plot", ""), "--plot is for running a topic")


def test_plot_on_a_topic_without_plots_is_noted_and_creates_nothing(capsys, tmp_path):
    code, out, err = explain(capsys, "kv-cache-7b", "--plot", str(tmp_path / "p"))
    assert code == 0 and "kv-cache-7b" in out
    assert err.strip() == f"note: kv-cache-7b has no plots; nothing was written to {tmp_path / 'p'}."
    assert not (tmp_path / "p").exists()


def test_plot_writes_the_topics_plots(capsys, tmp_path):
    code, out, err = explain(capsys, "scaled-dot-product", "--plot", str(tmp_path / "p"))
    assert code == 0 and err == "" and f"plot: {tmp_path / 'p' / 'scaled-dot-product.png'}" in out
    assert (tmp_path / "p" / "scaled-dot-product.png").is_file()


@pytest.mark.parametrize("argv,message", [
    (["kv-cache-7b", "--plot", "{file}"], "--plot {file} is a file: name a directory"),
    (["kv-cache-7b", "--plot", "{file}/sub"], "--plot {file}/sub lies under {file}, which is a file"),
    (["--all", "--out", "{file}"], "--out {file} is a file: name a directory"),
])
def test_output_directory_that_is_a_file_is_one_line(capsys, tmp_path, argv, message):
    file = tmp_path / "corpus.txt"
    file.write_text("text")
    argv = [a.format(file=file) for a in argv]
    one_line_error(*explain(capsys, *argv), message.format(file=file))
    assert file.read_text() == "text"


@pytest.mark.parametrize("argv,message", [
    (["--lang", "fr"], "argument --lang: invalid choice: 'fr'"),
    (["kv-cache-7b", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
])
def test_argparse_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as e:  # argparse printed its 3-line usage block before the error
        main(["explain", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("llmlab explain: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "--help" in err


def test_the_topic_index_read_from_source_matches_the_registry(monkeypatch):
    """The list comes from the `@topic(...)` declarations parsed, not imported: it must say what importing says,
    in the same order; where the source cannot be read the modules are imported for it."""
    from llmlab.explain.registry import all_topics, topic_index

    def fields(t, module):
        return (t.id, t.theme, t.question_en, t.question_zh, t.answer_en, t.answer_zh, module)

    registered = [fields(t, t.run_fn.__module__.rsplit(".", 1)[-1]) for t in all_topics()]
    assert [fields(t, t.module) for t in topic_index()] == registered and len(registered) >= 40
    with monkeypatch.context() as m:
        m.setattr("llmlab.explain.registry._declared", lambda source, module: None)  # a non-literal declaration
        assert [fields(t, t.module) for t in topic_index()] == registered


def test_listing_and_an_unknown_topic_import_no_torch():
    """`llmlab explain` lists the topics in 0.6-0.8 s; importing the theme modules (and torch) took 5.1-5.7 s
    on 2 cores.
    A named topic imports only its own module, and the full list keeps its theme order after that."""
    import subprocess
    import sys

    code = ("import sys, io, contextlib\n"
            "from llmlab.cli import main\n"
            "from llmlab.explain.registry import topic_index\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    assert main(['explain']) == 0 and main(['explain', '--lang', 'zh']) == 0\n"
            "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
            "    assert main(['explain', 'kv-cach-7b']) == 2\n"
            "assert \"did you mean kv-cache-7b\" in err.getvalue(), err.getvalue()\n"
            "index = topic_index()\n"
            "assert all(t.id in out.getvalue() and t.question_zh in out.getvalue() for t in index)\n"
            "assert 'torch' not in sys.modules and not any(m.startswith('llmlab.explain.') and m.split('.')[-1]\n"
            "    not in ('registry', 'render', 'cli') for m in sys.modules), sorted(sys.modules)\n"
            "from llmlab.explain import all_topics, get_topic\n"
            "last = index[-1]\n"
            "assert get_topic(last.id).id == last.id and f'llmlab.explain.{index[0].module}' not in sys.modules\n"
            "assert [t.id for t in all_topics()] == [t.id for t in index]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
