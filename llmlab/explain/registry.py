"""The topic registry: one interview question from the notes, one experiment, one verdict.

A topic is declared where its experiment lives (one module per theme), with `@topic(...)`:

    @topic("kv-cache-7b", theme="memory",
           question_en="...", question_zh="...",
           claims=[Claim("kv-7b", SEED_001, "KV缓存:2048 × 32层 × 4096维度 × 2 × 4 = 2GB", numeric=True)],
           answer_en="...", answer_zh="...")
    def kv_cache_7b(ctx: Context) -> Result: ...

Adding a topic is a one-file change: write the function in its theme module (or a new module
listed in `THEME_MODULES`). Every `Claim` quotes the notes verbatim (the seed file is named) and
every run gives each claim a verdict — confirmed / incomplete / wrong — with the measured numbers,
the corrected value and its arithmetic, and a conclusion in English and Chinese.

Not here: rendering (render.py), the command line (cli.py). Experiments call llmlab's modules;
they never re-implement them.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import LlmlabError

if TYPE_CHECKING:
    import torch

VERDICTS = ("confirmed", "incomplete", "wrong")
VERDICT_ZH = {"confirmed": "正确", "incomplete": "不完整", "wrong": "错误"}
THEME_MODULES = ("numerics", "attention", "positions", "normalization", "memory", "training", "tokenization",
                 "sampling", "architecture", "serving")

# The seed files (../shared/seeds/), by the names the claims cite.
SEED_000 = "000_c954e959f8352d6f.txt"
SEED_001 = "001_3e51f2b5132804a1.txt"
SEED_002 = "002_8a7f49e5e726486c.txt"
SEED_003 = "003_1d6c1e62189d349b.txt"
SEED_004 = "004_801fddf93243d484.txt"


class UnknownTopicError(LlmlabError, KeyError):
    """`llmlab explain TOPIC` named no registered topic."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


@dataclass(frozen=True, slots=True)
class Claim:
    """One statement of the notes, quoted verbatim (whitespace aside) from `seed`."""

    id: str
    seed: str
    quote: str
    numeric: bool = False  # a number, formula, shape or complexity that an experiment can check


@dataclass(slots=True)
class Table:
    title_en: str
    title_zh: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass(slots=True)
class Plot:
    """A figure drawn only when plots are asked for: `draw(fig)` fills a matplotlib Figure."""

    name: str  # file stem, unique across topics: "<topic>-<what>"
    caption_en: str
    caption_zh: str
    draw: Callable[[Any], None]


@dataclass(slots=True)
class Result:
    verdicts: dict[str, str]  # claim id -> confirmed | incomplete | wrong
    numbers: dict[str, float]  # the key measured / computed values (the tests assert these)
    corrected_en: str  # the corrected value and its arithmetic ("" when the notes are right)
    corrected_zh: str
    conclusion_en: str
    conclusion_zh: str
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        """The topic's verdict: the worst of its claims' verdicts."""
        return max(self.verdicts.values(), key=VERDICTS.index)


@dataclass(slots=True)
class Context:
    """What every experiment may use: a seed (each run is deterministic); `generator(k)` is the seeded stream k."""

    seed: int = 0

    def generator(self, offset: int = 0) -> torch.Generator:
        import torch

        return torch.Generator().manual_seed(self.seed + offset)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread. With more threads than free cores (a shared CPU), every op waits at a
    barrier for a descheduled thread: 60 ms per attention call whatever its size, and a 2-layer model's 576 engine
    steps took 18 s instead of 1 s. One thread keeps timings about the arithmetic and small experiments fast."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True, slots=True)
class Topic:
    id: str
    theme: str
    question_en: str
    question_zh: str
    claims: tuple[Claim, ...]
    answer_en: str  # the one-line answer `llmlab explain` lists
    answer_zh: str
    run_fn: Callable[[Context], Result]

    def run(self, ctx: Context | None = None) -> Result:
        import torch  # here, not at the top: `llmlab explain --help` imports this module

        ctx = ctx or Context()
        torch.manual_seed(ctx.seed)
        start = time.perf_counter()
        result = self.run_fn(ctx)
        result.seconds = time.perf_counter() - start
        ids = {c.id for c in self.claims}
        if set(result.verdicts) != ids or not set(result.verdicts.values()) <= set(VERDICTS):
            raise AssertionError(f"topic {self.id}: verdicts {result.verdicts} must cover claims {sorted(ids)}")
        return result


_TOPICS: dict[str, Topic] = {}


def topic(id: str, *, theme: str, question_en: str, question_zh: str, claims: list[Claim], answer_en: str,
          answer_zh: str) -> Callable[[Callable[[Context], Result]], Callable[[Context], Result]]:
    """Register the decorated experiment as topic `id`."""

    def register(fn: Callable[[Context], Result]) -> Callable[[Context], Result]:
        if id in _TOPICS:
            raise ValueError(f"topic {id!r} is registered twice")
        if id != id.lower():
            raise ValueError(f"topic {id!r}: ids are lower-case (get_topic matches them in any case)")
        if not claims:
            raise ValueError(f"topic {id!r} quotes no claim from the notes")
        _TOPICS[id] = Topic(id, theme, question_en, question_zh, tuple(claims), answer_en, answer_zh, fn)
        return fn

    return register


def all_topics() -> list[Topic]:
    """Every registered topic, in theme order, then in the order each module declares them."""
    for name in THEME_MODULES:
        importlib.import_module(f"llmlab.explain.{name}")
    order = {f"llmlab.explain.{name}": i for i, name in enumerate(THEME_MODULES)}
    # by theme even where get_topic imported one module first; sorted() keeps each module's own order
    return sorted(_TOPICS.values(), key=lambda t: order.get(t.run_fn.__module__, len(order)))


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What the topic list shows of a topic, known without running (or importing) its module."""

    id: str
    theme: str
    question_en: str
    question_zh: str
    answer_en: str
    answer_zh: str
    module: str  # the theme module that declares it


_INFO_FIELDS = ("theme", "question_en", "question_zh", "answer_en", "answer_zh")


def _declared(source: str, module: str) -> list[TopicInfo] | None:
    """The `@topic(...)` declarations of one theme module's source, in order; None if one is not all literals."""
    found = []
    for node in ast.parse(source).body:
        for deco in getattr(node, "decorator_list", []):
            if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == "topic"):
                continue
            try:
                kw = {k.arg: ast.literal_eval(k.value) for k in deco.keywords if k.arg in _INFO_FIELDS}
                found.append(TopicInfo(ast.literal_eval(deco.args[0]), module=module, **kw))
            except (ValueError, TypeError, IndexError):
                return None
    return found


def topic_index() -> list[TopicInfo]:
    """Every topic's id, theme, question and answer, in `all_topics()` order, read from the theme modules' source
    without importing them: listing the topics needs no torch (`llmlab explain` 0.6-0.8 s against 5.1-5.7 s on a
    2-core CPU). Where a module's source is missing or a declaration is not all literals, the modules are imported."""
    index = []
    for name in THEME_MODULES:
        try:
            source = (Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8")
        except OSError:
            source = None
        found = _declared(source, name) if source is not None else None
        if found is None:
            return [TopicInfo(t.id, t.theme, t.question_en, t.question_zh, t.answer_en, t.answer_zh,
                              t.run_fn.__module__.rsplit(".", 1)[-1]) for t in all_topics()]
        index.extend(found)
    return index


def get_topic(id: str) -> Topic:
    """The topic `id` (any case: 'KV-Cache-7B'), importing only the module that declares it; an unknown id is
    refused without importing any."""
    topics = {t.id: t for t in topic_index()}
    key = id.strip().lower()  # topic ids are lower-case (checked by @topic); estimate's preset names match the same way
    if key in topics:
        importlib.import_module(f"llmlab.explain.{topics[key].module}")
        return _TOPICS[key]
    close = difflib.get_close_matches(key, topics, n=3, cutoff=0.4) or [t for t in topics if key in t]
    hint = f"did you mean {', '.join(close)}?" if close else "run `llmlab explain` to list them."
    raise UnknownTopicError(f"no topic named {id!r}; {hint}")
