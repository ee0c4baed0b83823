"""Training byte-level BPE and WordPiece from text, in pure Python, fast enough for ~10 MB.

Both trainers share one engine. The corpus is pre-split (the same regex the encoder uses) and
counted into a word-frequency table, so all later work is over *unique* words, not text. Adjacent
symbol pairs are counted once; after that a merge `(a, b) -> c` touches only the words that contain
the pair (an index kept per pair, grown but never pruned) and adjusts the counts of the neighbouring
pairs in place — no rescan of the corpus per merge. A max-heap with lazy invalidation picks the
next pair: a popped entry whose stored priority is stale is pushed back with the current one.

- **BPE** picks the most frequent pair (ties: the smallest pair of ids, so runs are deterministic).
  A pair's count can only grow in the step that creates its newer symbol, which is when it is
  pushed, so a stale entry is always too high and the lazy heap is exact.
- **WordPiece** picks the highest score count(ab) / (count(a) count(b)). Merging changes count(a)
  and count(b), hence the score of every pair containing a or b, so those are re-pushed each step.

References: Sennrich et al. 2016, Algorithm 1; huggingface/tokenizers `models/bpe/trainer.rs` (same
heap scheme); the Hugging Face course chapter on WordPiece training (the score).
"""

from __future__ import annotations

import heapq
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from llmlab.errors import TokenizerError
from llmlab.tokenizer.ascii_split import fast_findall
from llmlab.tokenizer.bpe import BPEModel
from llmlab.tokenizer.chat import DEFAULT_CHAT_TEMPLATE
from llmlab.tokenizer.io import compile_pattern, split_pre_tokenizer
from llmlab.tokenizer.tokenizer import Tokenizer, coarse_split
from llmlab.tokenizer.wordpiece import BERT_SPLIT, BertNormalizer, WordPieceModel

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CHUNK = 1 << 20  # characters per pre-split call; bounds the temporary list of pieces
# A cut here splits no piece of the usual patterns: after "\n" that follows a non-space, before a
# non-space other than "/" (o200k's punctuation piece " ?[^\s\p{L}\p{N}]+[\r\n/]*" runs on through it).
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=[^\s/])")


def safe_chunks(text: str, size: int | None = None) -> Iterator[str]:
    """`text` in consecutive pieces of about `size` (default 1M) characters or more, cut only where no pre-split piece of the
    usual patterns (GPT-2, cl100k, o200k, SmolLM2, BERT) crosses: encoding the pieces one by one gives the ids of
    the whole text. A text without such a place stays whole."""
    size = size or _CHUNK
    start = 0
    while start < len(text):
        m = _SAFE_CUT.search(text, start + size) if len(text) - start > size else None
        end = m.start() if m else len(text)
        yield text[start:end]
        start = end


def iter_texts(texts_or_files: str | Path | Iterable[str | Path]) -> Iterable[str]:
    """Yield texts: a `str` is text, a `Path` is a UTF-8 file (bad bytes: error naming the offset)."""
    if isinstance(texts_or_files, (str, Path)):
        texts_or_files = [texts_or_files]
    for item in texts_or_files:
        if isinstance(item, Path):
            try:
                data = item.read_bytes()
            except OSError as e:
                raise TokenizerError(f"cannot read training file {item} ({e.strerror}); check the path.") from None
            try:
                yield data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TokenizerError(f"training file {item} is not valid UTF-8 at byte offset {e.start}; "
                                     "convert it (e.g. iconv -t UTF-8) or leave it out.") from None
        else:
            yield item


def count_words(texts_or_files, split, specials: Iterable[str] = (), coarse=None) -> Counter:
    """Frequency of each pre-split piece; special tokens are cut out and not counted.

    With `coarse` (a cheap split whose chunks no piece crosses, see tokenizer.coarse_split) the
    text is counted in chunks first and only the unique chunks go through the slow `split`."""
    if coarse is not None:
        pieces: Counter = Counter()
        for chunk, f in count_words(texts_or_files, coarse, specials).items():
            for p in split(chunk):
                pieces[p] += f
        return pieces
    special_re = re.compile("|".join(map(re.escape, sorted(specials, key=len, reverse=True)))) if specials else None
    counts: Counter = Counter()
    for text in iter_texts(texts_or_files):
        for seg in (special_re.split(text) if special_re else [text]):
            for chunk in safe_chunks(seg):
                counts.update(split(chunk))
    return counts


class _PairStats:
    """Unique words as symbol-id lists with frequencies, adjacent-pair counts and a pair index."""

    def __init__(self, words: list[list[int]], freqs: list[int]):
        self.words, self.freqs = words, freqs
        self.counts: dict[tuple[int, int], int] = {}
        self.where: dict[tuple[int, int], set[int]] = {}
        counts, where = self.counts, self.where
        for wi, (w, f) in enumerate(zip(words, freqs)):
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + f
                s = where.get(pair)
                if s is None:
                    where[pair] = {wi}
                else:
                    s.add(wi)

    def merge(self, a: int, b: int, new: int) -> tuple[set[tuple[int, int]], int]:
        """Replace (a, b) by `new` in every word; return the pairs created and the total merged."""
        counts, where, words, freqs = self.counts, self.where, self.words, self.freqs
        created: set[tuple[int, int]] = set()
        total = 0
        for wi in where.pop((a, b), ()):
            w = words[wi]
            if a not in w:
                continue
            f, n, i, out = freqs[wi], len(w), 0, []
            while i < n:
                if w[i] == a and i + 1 < n and w[i + 1] == b:
                    total += f
                    if out:  # left neighbour p: (p, a) -> (p, new)
                        p = out[-1]
                        counts[p, a] -= f
                        k = (p, new)
                        counts[k] = counts.get(k, 0) + f
                        created.add(k)
                        where.setdefault(k, set()).add(wi)
                    if i + 2 < n:  # right neighbour q: (b, q) -> (new, q)
                        q = w[i + 2]
                        counts[b, q] -= f
                        k = (new, q)
                        counts[k] = counts.get(k, 0) + f
                        created.add(k)
                        where.setdefault(k, set()).add(wi)
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
        counts.pop((a, b), None)
        return created, total


def _checked_options(special_tokens: Iterable[str], min_frequency: int) -> list[str]:
    """The special tokens, deduplicated; refuse an empty one or a min_frequency below 1 before any work."""
    special_tokens = list(dict.fromkeys(special_tokens))
    if any(not isinstance(s, str) or not s for s in special_tokens):
        raise TokenizerError(f"special tokens must be non-empty strings, got {special_tokens!r}; drop the empty one.")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise TokenizerError(f"min_frequency must be an integer >= 1 (the fewest times a pair must occur to be "
                             f"merged), got {min_frequency!r}.")
    return special_tokens


def _no_text(counts: Counter) -> None:
    if not any(piece.strip() for piece in counts):
        raise TokenizerError("the training input has no text (the files are empty or blank, or hold only special "
                             "tokens); pass non-empty UTF-8 text.")


def _progress(total: int, progress: bool | None, desc: str) -> tqdm:
    show = progress if progress is not None else (total >= 2000 and sys.stderr.isatty())
    return tqdm(total=total, disable=not show, desc=desc, unit="merge")


def bpe_min_vocab(special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> int:
    """The smallest byte-level BPE vocabulary: the 256 bytes and the special tokens, before any merge."""
    return 256 + len(list(dict.fromkeys(special_tokens)))


def train_bpe(texts_or_files, vocab_size: int, *, special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
              pattern: str = "gpt2", min_frequency: int = 2, progress: bool | None = None) -> Tokenizer:
    """Train byte-level BPE; `vocab_size` counts the 256 bytes, the merges and the special tokens. The result is
    smaller when the merges run out (no pair occurs `min_frequency` times): compare its `vocab_size`."""
    special_tokens = _checked_options(special_tokens, min_frequency)
    n_merges = vocab_size - bpe_min_vocab(special_tokens)
    if n_merges < 0:
        raise TokenizerError(f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} special "
                             f"tokens; use at least {bpe_min_vocab(special_tokens)}.")
    compiled = compile_pattern(pattern)
    split = fast_findall(compiled.pattern, compiled)
    coarse = coarse_split(compiled.pattern)
    coarse = coarse.findall if coarse is not None else None
    counts = count_words(texts_or_files, split, special_tokens, coarse)
    _no_text(counts)
    words, freqs = [], []
    for piece, f in counts.items():
        b = piece.encode("utf-8")
        if len(b) > 1:  # a single byte can never take part in a merge
            words.append(list(b))
            freqs.append(f)
    stats = _PairStats(words, freqs)
    heap = [(-c, a, b) for (a, b), c in stats.counts.items()]
    heapq.heapify(heap)
    token_bytes = [bytes([i]) for i in range(256)]
    merges: list[tuple[bytes, bytes]] = []
    with _progress(n_merges, progress, "train bpe") as bar:
        while len(merges) < n_merges and heap:
            neg, a, b = heapq.heappop(heap)
            c = stats.counts.get((a, b), 0)
            if c != -neg:  # stale: counts only fall after a pair is pushed
                if c > 0:
                    heapq.heappush(heap, (-c, a, b))
                continue
            if c < min_frequency:
                break
            new = len(token_bytes)
            token_bytes.append(token_bytes[a] + token_bytes[b])
            merges.append((token_bytes[a], token_bytes[b]))
            created, _ = stats.merge(a, b, new)
            for k in created:
                if stats.counts[k] > 0:
                    heapq.heappush(heap, (-stats.counts[k], *k))
            bar.update()
    vocab = {t: i for i, t in enumerate(token_bytes)}
    specials = {s: len(token_bytes) + k for k, s in enumerate(special_tokens)}
    eot = special_tokens[0] if special_tokens else None
    return Tokenizer(BPEModel(vocab, merges), pre_tokenizer=split_pre_tokenizer(pattern), special_tokens=specials,
                     bos_token=eot, eos_token=eot, pad_token=eot,
                     chat_template=DEFAULT_CHAT_TEMPLATE if {"<|im_start|>", "<|im_end|>"} <= set(specials) else None)


def train_wordpiece(texts_or_files, vocab_size: int, *, special_tokens: Iterable[str] = BERT_SPECIAL_TOKENS,
                    lowercase: bool = True, min_frequency: int = 2, prefix: str = "##",
                    progress: bool | None = None) -> Tokenizer:
    """Train WordPiece (likelihood score) with BERT's normalizer and pre-split. The vocabulary starts as the
    special tokens and the input's characters (and their `prefix` continuations): `vocab_size` below that is an
    error; the result is smaller than `vocab_size` when the merges run out."""
    special_tokens = _checked_options(special_tokens, min_frequency)
    if "[UNK]" not in special_tokens:
        raise TokenizerError("WordPiece needs '[UNK]' among special_tokens; add it.")
    norm = BertNormalizer(lowercase=lowercase)
    counts = count_words(texts_or_files, lambda s: BERT_SPLIT.findall(norm(s)), special_tokens)
    _no_text(counts)
    alphabet = sorted({c if k == 0 else prefix + c for w in counts for k, c in enumerate(w)})
    symbols = special_tokens + [s for s in alphabet if s not in special_tokens]
    if vocab_size < len(symbols):
        raise TokenizerError(f"vocab_size {vocab_size} is below the {len(symbols)} symbols WordPiece starts from "
                             f"({len(special_tokens)} special tokens + {len(symbols) - len(special_tokens)} characters "
                             f"and {prefix}-continuations of this input); use at least {len(symbols)}.")
    sid = {s: i for i, s in enumerate(symbols)}
    words = [[sid[c if k == 0 else prefix + c] for k, c in enumerate(w)] for w in counts]
    freqs = list(counts.values())
    sym_count = [0] * len(symbols)
    for w, f in zip(words, freqs):
        for s in w:
            sym_count[s] += f
    stats = _PairStats(words, freqs)
    pairs_of: dict[int, set[tuple[int, int]]] = {}
    for a, b in stats.counts:
        pairs_of.setdefault(a, set()).add((a, b))
        pairs_of.setdefault(b, set()).add((a, b))

    def score(p: tuple[int, int]) -> float:
        return stats.counts.get(p, 0) / (sym_count[p[0]] * sym_count[p[1]])

    heap = [(-score(p), *p) for p in stats.counts]
    heapq.heapify(heap)
    with _progress(vocab_size - len(symbols), progress, "train wordpiece") as bar:
        while len(symbols) < vocab_size and heap:
            neg, a, b = heapq.heappop(heap)
            if stats.counts.get((a, b), 0) < min_frequency:
                continue
            if score((a, b)) != -neg:
                continue  # stale; the current score was pushed when it changed
            tok = symbols[a] + symbols[b][len(prefix):]
            if tok in sid:  # the same string reached by another split: reuse its id
                new = sid[tok]
            else:
                new = sid[tok] = len(symbols)
                symbols.append(tok)
                sym_count.append(0)
            created, total = stats.merge(a, b, new)
            sym_count[a] -= total
            sym_count[b] -= total
            sym_count[new] += total
            for k in created:
                pairs_of.setdefault(k[0], set()).add(k)
                pairs_of.setdefault(k[1], set()).add(k)
            for k in created | pairs_of.get(a, set()) | pairs_of.get(b, set()) | pairs_of.get(new, set()):
                if stats.counts.get(k, 0) >= min_frequency and sym_count[k[0]] and sym_count[k[1]]:
                    heapq.heappush(heap, (-score(k), *k))
            bar.update()
    vocab = {s: i for i, s in enumerate(symbols)}
    return Tokenizer(WordPieceModel(vocab, "[UNK]", prefix), normalizer=norm.to_json(),
                     pre_tokenizer={"type": "BertPreTokenizer"},
                     special_tokens={s: vocab[s] for s in special_tokens},
                     pad_token="[PAD]" if "[PAD]" in vocab else None,
                     template=(["[CLS]"], ["[SEP]"]) if {"[CLS]", "[SEP]"} <= set(vocab) else ([], []))
