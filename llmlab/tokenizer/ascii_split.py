"""An ASCII twin of a pre-split regex: the same pattern for the stdlib `re` engine, used on ASCII-only text.

Split patterns are written for the `regex` module (Unicode properties such as \\p{L}, possessive quantifiers). On
text that is all ASCII every property class reduces to a few ASCII ranges, and stdlib `re` (Python 3.11 has
possessive quantifiers and atomic groups) runs the pattern 2-3x faster than `regex` does; that split was most of a
warm encode. `ascii_twin(pattern)` rewrites the pattern for `re` with re.ASCII, or returns None when it holds anything
whose meaning it cannot carry over exactly; the caller then keeps `regex`.

    split = fast_findall(pattern, regex.compile(pattern))   # what Tokenizer and train_bpe call
    split(text)   # the twin when text.isascii() (O(1) for a str), else `regex`, or both (below)

Rewritten: \\p{..} / \\P{..} of the general categories in _CATEGORIES (in and out of character classes; \\P only
outside), a class left with no ASCII member, and \\z (end of text in `regex`, \\Z in `re`). Carried as they are,
because on ASCII text under re.ASCII they mean what `regex` means: literals, escaped punctuation, \\s \\S \\d \\D
\\w \\W \\b \\B \\A \\Z, control escapes, quantifiers (greedy, lazy, possessive), groups, lookarounds, atomic
groups, inline i/m/s flags. Anything else (other properties, POSIX classes, named groups, `regex`-only syntax such as
fuzzy matching or set operations) gives None, as do \\p{Lu} / \\p{Ll} / \\p{Lt} under (?i) (which `regex` reads one way
alone and another inside a set) and non-ASCII characters in a pattern with (?i) (`regex` folds "\\u017f" to "s").
Found by fuzzing random patterns against `regex` (tests/test_tokenizer_ascii_split.py): `regex` 2026.11 itself
misreads some patterns with a scoped (?i:...) group (after one, [^\\p{Ll}] skips "Z"; beside one, [^.a] may skip "A");
the twin keeps their written meaning there (no shipped pattern is affected).

Text with some non-ASCII characters is cut where no piece can cross (`segments`): at the start of a line that goes
on to a non-space for the cl100k family (`line_safe`), before a space that follows a non-space for GPT-2. The part around
each non-ASCII run goes to `regex`, the ASCII stretches between them to the twin (the Python path: C, cencode.py, takes
whole texts in any script once a corpus is under way). The tests
check every shipped pattern's twin, and the cutting, against `regex` on random text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from llmlab.tokenizer.bpe import PATTERNS

# The ASCII members of Unicode general categories, as character-class contents ("" when there are none).
_CATEGORIES = {
    "L": "A-Za-z", "Lu": "A-Z", "Ll": "a-z", "Lt": "", "Lm": "", "Lo": "", "LC": "A-Za-z", "L&": "A-Za-z",
    "M": "", "Mn": "", "Mc": "", "Me": "",
    "N": "0-9", "Nd": "0-9", "Nl": "", "No": "",
}
_CATEGORIES.update({name.upper(): v for name, v in _CATEGORIES.items()})
# Under (?i) `regex` reads these differently alone and inside a set ((?i)\p{Lt} and (?i)[\p{Lt}] match "a",
# (?i)[\p{Lt} ] does not): not carried over there.
_CASED = {"Lu", "Ll", "Lt", "LU", "LL", "LT"}
# Escapes whose meaning on ASCII text is the same in `regex` (Unicode) and `re` (re.ASCII).
_SAME_ESCAPES = set("sSdDwWbBAZtnrfva0")
_GROUP_OPENERS = ("(?:", "(?=", "(?!", "(?<=", "(?<!", "(?>")
_FLAG_GROUP = re.compile(r"\(\?[ims]*(?:-[ims]+)?[:)]")  # not x: its comments would be read as pattern
_QUANTIFIER = re.compile(r"\{(\d*),?(\d*)\}")
_PROPERTY = re.compile(r"\\([pP])(?:\{\^?([A-Za-z&_ ]+)\}|([A-Za-z]))")


def ascii_twin(pattern: str) -> re.Pattern | None:
    """`pattern` rewritten for stdlib `re` on ASCII-only text, or None when it cannot be carried over exactly."""
    out: list[str] = []
    i, n, in_class, class_at, class_out = 0, len(pattern), False, 0, 0
    ci, scopes = False, []  # case-insensitive here; the enclosing groups' settings
    if re.search(r"\(\?[ims]*i", pattern) and not pattern.isascii():
        return None  # under (?i) `regex` folds some non-ASCII letters to ASCII ones ("\u017f" matches "s"); re.ASCII not
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                return None
            e = pattern[i + 1]
            if e in "pP":
                m = _PROPERTY.match(pattern, i)
                if m is None or "^" in m.group():
                    return None
                name = (m.group(2) or m.group(3)).replace(" ", "").replace("_", "")
                members = None if ci and name in _CASED else _CATEGORIES.get(name)
                if members is None or e == "P" and in_class:
                    return None
                if in_class:
                    out.append(members)
                elif e == "p":
                    out.append(f"[{members}]" if members else r"[^\s\S]")
                else:
                    out.append(f"[^{members}]" if members else r"[\s\S]")
                i = m.end()
                continue
            if e == "z":
                out.append(r"\Z")
            elif e == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", pattern[i + 2:i + 4]):
                out.append(pattern[i:i + 4])
                i += 4
                continue
            elif e in _SAME_ESCAPES or not e.isalnum():
                out.append(pattern[i:i + 2])
            else:
                return None  # \X, \m, \N{..}, \G, backreferences, ...: not carried over
            i += 2
            continue
        if in_class:
            if c == "[":  # a POSIX class ([:alpha:]) or a nested set: `regex`-only
                return None
            if c == "]" and i > class_at:  # a "]" first in the class is a member, in both engines
                members = "".join(out[class_out:])
                del out[class_out:]
                if not members:  # every member was a category with no ASCII characters
                    out[-1] = r"[\s\S]" if out[-1] == "[^" else r"[^\s\S]"
                else:
                    out.append(members + "]")
                in_class = False
            else:
                out.append("\\]" if c == "]" else c)
            i += 1
            continue
        if c == "[":
            in_class = True
            opener = "[^" if pattern.startswith("[^", i) else "["
            out.append(opener)
            i += len(opener)
            class_at, class_out = i, len(out)
            continue
        if c == "(" and pattern.startswith("(?", i):
            opener = next((g for g in _GROUP_OPENERS if pattern.startswith(g, i)), None)
            m = _FLAG_GROUP.match(pattern, i) if opener is None else None
            if opener is None and m is None:
                return None  # named groups, conditionals, (?V1), (?|...), comments, ...
            opener = opener or m.group()
            if opener.endswith(")"):  # (?i): flags for the whole pattern, where re allows them (its start)
                if i:
                    return None
                ci = "i" in opener.split("-")[0]
            else:
                scopes.append(ci)
                if m is not None:
                    on, _, off = opener[2:-1].partition("-")
                    ci = "i" in on or ci and "i" not in off
            out.append(opener)
            i += len(opener)
            continue
        if c == "(":
            scopes.append(ci)
        elif c == ")":
            if not scopes:
                return None
            ci = scopes.pop()
        if c == "{":
            m = _QUANTIFIER.match(pattern, i)
            if m is None or not (m.group(1) or m.group(2)):
                return None  # a brace that is not a plain quantifier: literal in one engine, fuzzy in the other
            out.append(m.group())
            i = m.end()
            continue
        out.append(c)
        i += 1
    if in_class:
        return None
    try:
        return re.compile("".join(out), re.ASCII)
    except re.error:
        return None


# Unicode White_Space: what `\s` means to `regex` (and to tokenizers' Oniguruma) in every pattern here.
WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(map(chr, range(0x2000, 0x200b))))
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
PART_CHARS = 256  # characters per part, on average, past which `segments` leaves a text whole
_LINE_SAFE = frozenset(PATTERNS[k] for k in ("cl100k", "o200k", "llama3", "qwen2"))


def line_safe(pattern: str) -> bool:
    """Whether `pattern` may be cut at line starts (`segments`): after a line break whose line goes on, past any
    indentation, to a non-space (for o200k: not a "/" right after the line break).

    True for the cl100k family as written here (cl100k, o200k, Llama 3, Qwen2). In each, the optional character
    before a word excludes \\r and \\n, so only two kinds of piece hold a line break: whitespace, where a run with a
    line break matches `\\s*[\\r\\n]` (cl100k) or `\\s*[\\r\\n]+` (listed before `\\s+(?!\\S)`) and so ends after
    its last line break, or at the end of the text by `\\s++\\z`, the same place when the run goes on to a non-space;
    and punctuation followed by `[\\r\\n]*`, which stops where the line breaks do, except that o200k's `[\\r\\n/]*` also
    takes a "/" (".\\n/" is one o200k piece: cut there, "// comment" lines would encode differently). GPT-2's
    pattern is not: there `\\s+(?!\\S)` would end such a run one character earlier than at the end of a text; it is
    cut before a space that follows a non-space instead.
    """
    return pattern in _LINE_SAFE


WS_CLASS = "".join(sorted(WHITE_SPACE))  # White_Space as character-class contents
_INDENT = re.compile("[" + "".join(sorted(WHITE_SPACE - {"\r", "\n"})) + "]*")
_SPACE_CUT = re.compile(f"(?<=[^{WS_CLASS}])[{WS_CLASS}]")  # a space after a non-space: GPT-2's pieces never cross it
_SPACE_CUT_BACK = re.compile(f"[{WS_CLASS}](?=[^{WS_CLASS}])")  # the same, searched in reversed text


def _line_start(text: str, p: int, slash: bool) -> bool:
    """Whether p (just after a "\\n") is a cut of line_safe: indentation without line breaks, then a non-space."""
    q = _INDENT.match(text, p).end()
    return q < len(text) and text[q] not in WHITE_SPACE and not (slash and q == p and text[q] == "/")


def _line_cuts(text: str, lo: int, a: int, b: int, slash: bool = False) -> tuple[int, int]:
    """The last cut at or before a (not before lo) and the first at or after b, at line starts (line_safe);
    `slash`: o200k, where a line starting with "/" continues the piece before it."""
    j = text.rfind("\n", lo, a)
    while j >= 0 and not _line_start(text, j + 1, slash):
        j = text.rfind("\n", lo, j)
    k = text.find("\n", b)
    while k >= 0 and not _line_start(text, k + 1, slash):
        k = text.find("\n", k + 1)
    return (j + 1 if j >= 0 else lo), (k + 1 if k >= 0 else len(text))


def _space_cuts(text: str, lo: int, a: int, b: int) -> tuple[int, int]:
    """The same for GPT-2's pattern: before a space that follows a non-space. Its pieces hold whitespace only as one
    leading space or as a whitespace-only piece, and only \\s+(?!\\S) looks ahead, from whitespace."""
    m = _SPACE_CUT_BACK.search(text[lo:a + 1][::-1])
    k = _SPACE_CUT.search(text, b)
    return (a - m.start() if m else lo), (k.start() if k else len(text))


def segments(text: str, pattern: str, most: int | None = None) -> list[tuple[int, int, bool]] | None:
    """Spans (start, end, all ASCII) covering `text`, cut where no piece of `pattern` crosses: the ASCII stretches
    and, around each non-ASCII run, the part that holds it. None for a pattern without such cuts, and for text
    whose non-ASCII characters are too dense to be worth it (past `most` parts, by default one per PART_CHARS:
    French or Russian prose, where a regex over the whole text is faster than the parts one by one)."""
    if line_safe(pattern):
        cuts = functools.partial(_line_cuts, slash=pattern == PATTERNS["o200k"])
    elif pattern == PATTERNS["gpt2"]:
        cuts = _space_cuts
    else:
        return None
    out: list[tuple[int, int, bool]] = []
    start, n = 0, len(text)
    if most is None:  # dense all through (UTF-8's extra bytes, counted in C): no try
        if len(text.encode("utf-8", "surrogatepass")) - n > 2 * (n // PART_CHARS) + 8:
            return None
        most = n // PART_CHARS + 4
    m = _NON_ASCII.search(text)
    while m is not None:  # (GPT-2's cut may fall inside a run, before U+3000: the search then starts there)
        cut, end = cuts(text, start, m.start(), m.end())
        if cut > start:
            out.append((start, cut, True))
        out.append((cut, end, False))
        if len(out) > most:
            return None
        start = end
        m = _NON_ASCII.search(text, start)
    if start < n:
        out.append((start, n, True))
    return out


def split_mixed(text: str, pattern: str, findall, findall_ascii) -> list[str]:
    """`findall(text)` on text that is not all ASCII, for a pattern with `segments`: the parts around each
    non-ASCII run go to `findall`, the ASCII stretches between them to `findall_ascii` (the twin); text too dense
    in non-ASCII characters to cut goes to `findall` whole."""
    cuts = segments(text, pattern)
    if cuts is None:
        return findall(text)
    out: list[str] = []
    for a, b, ascii in cuts:
        out += (findall_ascii if ascii else findall)(text[a:b])
    return out


def fast_findall(pattern: str, compiled) -> Callable[[str], list[str]]:
    """`compiled.findall` (compiled = regex.compile(pattern)), through the ASCII twin wherever the text allows."""
    twin = ascii_twin(pattern)
    if twin is None:
        return compiled.findall
    slow, fast = compiled.findall, twin.findall
    if line_safe(pattern) or pattern == PATTERNS["gpt2"]:
        return lambda text: fast(text) if text.isascii() else split_mixed(text, pattern, slow, fast)
    return lambda text: fast(text) if text.isascii() else slow(text)
