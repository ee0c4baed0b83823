"""`llmlab demo` end to end on a small corpus and a tiny time budget: every artifact of the report is written."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("argparse.py", "textwrap.py", "dataclasses.py", "enum.py", "functools.py", "pathlib.py"):
        if (stdlib / name).is_file():
            shutil.copy(stdlib / name, corpus / name)
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "llmlab", "demo", "--corpus", str(corpus), "--out", str(out),
                           "--steps", "40", "--vocab-size", "384"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] < math.log(summary["vocab_size"]) - 0.3  # learned beyond uniform in a few steps
    assert summary["bigram_loss"] < summary["unigram_loss"]
    report = (out / "report.md").read_text()
    assert "| bigram (interpolated" in report and "**llmlab Transformer**" in report and "```" in report
    assert (out / "loss.png").stat().st_size > 10_000
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert "Next steps:" in proc.stdout and "llmlab generate --model" in proc.stdout
