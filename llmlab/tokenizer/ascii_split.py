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

Text with some non-ASCII characters is cut into lines for the patterns where that is safe (`line_safe`: the cl100k
family): the lines around each non-ASCII run go to `regex`, the ASCII stretches between them to the twin. The tests
check every shipped pattern's twin, and the cutting, against `regex` on random text.
"""

from __future__ import annotations

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
_LINE_SAFE = frozenset(PATTERNS[k] for k in ("cl100k", "o200k", "llama3", "qwen2"))


def line_safe(pattern: str) -> bool:
    """Whether no piece of `pattern` crosses a line break followed by a non-space, so that text may be cut there.

    True for the cl100k family as written here (cl100k, o200k, Llama 3, Qwen2): in each, only whitespace-only
    alternatives and a trailing `[\\r\\n]*` after punctuation hold a line break, the optional character before a word
    excludes \\r and \\n, and a whitespace run ending in a line break matches `\\s*[\\r\\n]` (listed before
    `\\s+(?!\\S)`), whatever follows it. GPT-2's pattern is not: there `\\s+(?!\\S)` would end such a run one character
    earlier than at the end of a text (GPT-2 tokenizers cut text their own way, see `tokenizer.py`).
    """
    return pattern in _LINE_SAFE


def split_mixed(text: str, findall, findall_ascii) -> list[str]:
    """`findall(text)` for a line-safe pattern (see `line_safe`) on text that is not all ASCII: the lines around
    each non-ASCII run go to `findall`, the ASCII stretches between them to `findall_ascii` (the twin)."""
    out: list[str] = []
    start, n = 0, len(text)
    for m in _NON_ASCII.finditer(text):
        a = m.start()
        if a < start:  # inside the stretch just given to `findall`
            continue
        j = text.rfind("\n", start, a)  # the last cut before the run: a line break followed by a non-space
        while j >= 0 and text[j + 1] in WHITE_SPACE:
            j = text.rfind("\n", start, j)
        cut = j + 1 if j >= 0 else start
        k = text.find("\n", m.end())  # the first cut after it
        while k >= 0 and (k + 1 == n or text[k + 1] in WHITE_SPACE):
            k = text.find("\n", k + 1)
        end = k + 1 if k >= 0 else n
        if cut > start:
            out += findall_ascii(text[start:cut])
        out += findall(text[cut:end])
        start = end
    if start < n:
        out += findall_ascii(text[start:])
    return out


def fast_findall(pattern: str, compiled) -> Callable[[str], list[str]]:
    """`compiled.findall` (compiled = regex.compile(pattern)), through the ASCII twin wherever the text allows."""
    twin = ascii_twin(pattern)
    if twin is None:
        return compiled.findall
    slow, fast = compiled.findall, twin.findall
    if line_safe(pattern):
        return lambda text: fast(text) if text.isascii() else split_mixed(text, slow, fast)
    return lambda text: fast(text) if text.isascii() else slow(text)
