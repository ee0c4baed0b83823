"""Where benchmark results go and what each records of its run, without torch (tokenizer.py imports this, not
engine_common): the results folder, the command line, the commit and whether the tree was edited, and argparse
checks that refuse a bad value before a run of minutes."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def results_dir() -> Path:
    """Where results go: LLMLAB_BENCH_RESULTS (tests point it at a temporary directory so smoke runs leave the
    committed results alone), else benchmarks/results/."""
    return Path(os.environ.get("LLMLAB_BENCH_RESULTS") or Path(__file__).parent / "results")


def git_state() -> dict:
    """The commit, and whether tracked files differ from it: a run of an edited tree is not a run of the commit
    (results files left out: the scripts write their default --out there, so one run would mark the next)."""
    here = Path(__file__).parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=here).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                              ":(top,exclude)benchmarks/results"], capture_output=True,
                             text=True, cwd=here).stdout.strip()
    return {"git": commit, "git_uncommitted_changes": bool(commit and changed)}


def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model and whether it has AVX-512 (a VM's "AMD EPYC"
    alone does not say Zen 3 from Zen 4), else platform.processor()."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor()
    fields: dict[str, str] = {}
    for line in info.read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.processor()
    flags = fields.get("flags", "").split()
    wide = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}, {wide})"


def command() -> str:
    """The command line that produced a result, as a shell would take it back (script path as given)."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def check_writable(parser: argparse.ArgumentParser, path: Path, flag: str = "--out") -> Path:
    """Refuse, before a run of minutes, an output the run could not write at its end (argparse's one-line error,
    exit 2): a directory given as the file, or a folder that cannot be created or written."""
    if path.is_dir():
        parser.error(f"{flag} {path} is a directory; give a file name, e.g. {path / 'result.json'}")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):  # the real test (permission bits say nothing to root, nor about /proc)
            pass
    except OSError as e:
        parser.error(f"{flag} {path}: cannot write there ({e.strerror or e}); give another path")
    if not existed:
        path.unlink()
    return path


def at_least(low: int):
    """An argparse type: an integer >= low, refused with argparse's one-line error otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse
