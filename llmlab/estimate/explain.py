"""Steps, numbers and their rendering: every estimate is a list of named steps with its formula.

An estimator returns a result whose `steps` say how each number was made: the formula in symbols,
the same formula with this model's numbers substituted, and the value. `render_table` prints the
values; `render_explain` prints formula, substitution and value, so `llmlab estimate … --explain`
shows the arithmetic an interview answer needs (and where the usual shortcuts go wrong).

Not here: the estimates themselves (params.py, flops.py, memory.py, time.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GB, GiB = 1e9, 2**30


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    value: float
    unit: str  # "B" (bytes), "params", "FLOP", "FLOP/s", "s", "tok/s", "yes/no" (1 or 0), "" (a plain number)
    formula: str = ""
    numbers: str = ""  # the formula with this model's numbers substituted

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def num(x: float) -> str:
    """A number as it appears in a substituted formula: ints with separators, floats short."""
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"


def human(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value:,.0f} B = {value / GB:,.2f} GB = {value / GiB:,.2f} GiB"
    if unit == "params":
        return f"{value:,.0f} ({value / 1e9:,.3f} B)" if value >= 1e8 else f"{value:,.0f}"
    if unit == "s":
        days = value / 86400
        return f"{value:,.0f} s = {value / 3600:,.1f} h = {days:,.1f} days" if value >= 3600 else f"{value:.4g} s"
    if unit == "yes/no":
        return "yes" if value else "no"
    if unit in ("FLOP", "FLOP/s"):
        return f"{value:.4g} {unit}"
    if unit == "":
        return f"{int(value):,}" if float(value).is_integer() else f"{value:.4g}"
    return f"{value:,.4g} {unit}"


def render_table(title: str, steps: list[Step]) -> str:
    width = max(len(s.name) for s in steps)
    lines = [title, "-" * len(title)]
    lines += [f"{s.name:<{width}}  {human(s.value, s.unit)}" for s in steps]
    return "\n".join(lines)


def render_explain(title: str, steps: list[Step]) -> str:
    lines = [title, "=" * len(title)]
    for s in steps:
        lines.append(f"{s.name}")
        if s.formula:
            lines.append(f"    = {s.formula}")
        if s.numbers and s.numbers != s.formula:
            lines.append(f"    = {s.numbers}")
        lines.append(f"    = {human(s.value, s.unit)}")
    return "\n".join(lines)
