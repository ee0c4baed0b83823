"""WordPiece: BERT's normalizer and pre-split, and greedy longest-match-first encoding.

BPE and WordPiece differ in two places. Training: BPE merges the most *frequent* adjacent pair;
WordPiece merges the pair with the highest likelihood gain, count(ab) / (count(a) * count(b)),
so it prefers pairs whose parts rarely occur apart (see `train.py`). Encoding: BPE replays its
merges; WordPiece ignores how the vocabulary was made and, inside each word, repeatedly takes the
longest vocabulary entry that matches at the current position, writing non-initial pieces with a
`##` prefix. If any position of a word cannot be matched the whole word becomes `[UNK]` — there
is no byte fallback, so WordPiece (unlike byte-level BPE) cannot round-trip arbitrary text.

The normalizer and pre-split reproduce BERT's uncased pipeline as Hugging Face `tokenizers`
implements it (`normalizers/bert.rs`, `pre_tokenizers/bert.rs`): remove control characters,
map whitespace to ' ', put spaces around CJK ideographs (one token each), strip accents (NFD,
drop non-spacing marks), lowercase; then split on whitespace and isolate every punctuation mark.

References: Schuster & Nakajima 2012 (WordPiece); Devlin et al. 2019 (BERT);
google-research/bert `tokenization.py`; huggingface/tokenizers `models/wordpiece/mod.rs`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import regex

from llmlab.tokenizer.rebuild import Rebuilt

# Rust's char::is_whitespace (the Unicode White_Space property) and tokenizers' BERT punctuation:
# ASCII punctuation (which includes symbols such as $ + < = > ^ ` |) or Unicode category P*.
_PUNCT = r"\p{P}!-/:-@\[-`{-~"
BERT_SPLIT = regex.compile(rf"[^\p{{White_Space}}{_PUNCT}]+|[{_PUNCT}]")

_CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
_CJK = regex.compile("([" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _CJK_RANGES) + "])")
# Characters clean_text deletes: NUL, U+FFFD, and control/format/private-use characters except
# \t \n \r (tokenizers keeps unassigned code points, so Cn is not in the list).
_CONTROL = regex.compile(r"[\x00\ufffd]|(?![\t\n\r])[\p{Cc}\p{Cf}\p{Co}]")
_WHITESPACE = regex.compile(r"[\t\n\r\p{White_Space}]")
_NONSPACING = regex.compile(r"\p{Mn}")


@dataclass(frozen=True)
class BertNormalizer:
    """BERT's text normalizer; `strip_accents=None` means 'same as lowercase', as in BERT."""

    clean_text: bool = True
    handle_chinese_chars: bool = True
    strip_accents: bool | None = None
    lowercase: bool = True

    def __call__(self, text: str) -> str:
        if self.clean_text:
            text = _WHITESPACE.sub(" ", _CONTROL.sub("", text))
        if self.handle_chinese_chars:
            text = _CJK.sub(r" \1 ", text)
        if self.lowercase if self.strip_accents is None else self.strip_accents:
            text = _NONSPACING.sub("", unicodedata.normalize("NFD", text))
        if self.lowercase:  # per character, like Rust: no final-sigma rule (Python's lower() has one)
            text = text.replace("\u03a3", "\u03c3").lower()
        return text

    def to_json(self) -> dict:
        return {"type": "BertNormalizer", "clean_text": self.clean_text,
                "handle_chinese_chars": self.handle_chinese_chars,
                "strip_accents": self.strip_accents, "lowercase": self.lowercase}


@dataclass
class WordPieceModel(Rebuilt):
    """Greedy longest-match-first WordPiece over a `{token: id}` vocabulary."""

    vocab: dict[str, int]
    unk_token: str = "[UNK]"
    prefix: str = "##"
    max_input_chars_per_word: int = 100
    cleanup: bool = True  # decoder: undo spaces before punctuation (tokenizers' WordPiece decoder)

    def __post_init__(self) -> None:
        if self.unk_token not in self.vocab:
            raise KeyError(f"unk token {self.unk_token!r} is not in the vocabulary")
        self.unk_id = self.vocab[self.unk_token]
        self.max_len = max(map(len, self.vocab), default=1)

    def encode_word(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-split word; `[UNK]` alone if any part of it cannot be matched."""
        n = len(word)
        if n > self.max_input_chars_per_word:
            return (self.unk_id,)
        vocab, out, start = self.vocab, [], 0
        while start < n:
            end = min(n, start + self.max_len)
            while end > start:
                sub = word[start:end] if start == 0 else self.prefix + word[start:end]
                tok = vocab.get(sub)
                if tok is not None:
                    out.append(tok)
                    break
                end -= 1
            else:
                return (self.unk_id,)
            start = end
        return tuple(out)

    def decode(self, tokens: list[str]) -> str:
        """Join tokens as tokenizers' WordPiece decoder does: '##x' glues to the previous token,
        others get a leading space, and cleanup runs on each token (so " ' s" stays as is)."""
        parts = []
        for i, t in enumerate(tokens):
            if i and t.startswith(self.prefix):
                t = t[len(self.prefix):]
            elif i:
                t = " " + t
            parts.append(cleanup_spaces(t) if self.cleanup else t)
        return "".join(parts)


def cleanup_spaces(text: str) -> str:
    """tokenizers' `cleanup`: undo the spaces a whitespace join puts before punctuation."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text
