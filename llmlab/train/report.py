"""Metrics on disk: a JSONL log of every logged step and eval, and loss-curve plots."""

from __future__ import annotations

import json
from pathlib import Path

from llmlab.errors import LlmlabError


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (a process killed while appending it) is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise LlmlabError(f"{path} line {i + 1} is not JSON: the metrics log is damaged; move it aside "
                                  "to keep training (only its plot and records are lost).") from None
            continue
        # (a resume, the plot and an already-complete run read these fields: an edited line is named here, not a
        # KeyError there)
        needs = _FIELDS.get(record.get("kind"), ("step",)) if isinstance(record, dict) else ("step",)
        if not isinstance(record, dict) or not all(isinstance(record.get(k), (int, float)) for k in needs):
            raise LlmlabError(f"{path} line {i + 1} is not a metrics record (a JSON object with a numeric "
                              f"{', '.join(needs)}): the metrics log is damaged; move it aside to keep training (only "
                              "its plot and records are lost).")
        records.append(record)
    return records


_FIELDS = {"train": ("step", "loss", "tokens_per_s"), "eval": ("step", "val_loss")}  # what a record must hold


class MetricsLog:
    """Append-only JSONL for one run. A new run starts the file afresh; a resumed run keeps the records
    up to its resume step and drops later ones (they will be redone)."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step is not None else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        return read_metrics(self.path)


def plot_loss_curves(records: list[dict], out_png: str | Path, *, baselines: dict[str, float] | None = None,
                     title: str = "training") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5, ms=3)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 2}", label=f"{name} ({value:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
