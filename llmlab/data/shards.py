"""Token shards: a corpus tokenized once into flat memmap files that training reads by window.

    out/
      train.bin   uint16 (vocab <= 65,536) or uint32 token ids, documents separated by EOS (and each started by
                  BOS where the tokenizer adds one, as Llama's and Mistral's do)
      val.bin     the validation split, same layout
      meta.json   dtype, vocab size, EOS id, token counts, documents, the tokenizer's fingerprint
      tokenizer.json, tokenizer_config.json   the tokenizer used (incl. special-token roles and chat
                  template), so the shards — and checkpoints trained on them — are self-describing

The validation split is the tail `val_fraction` of every text file (cut at a line break), so each
work or module contributes to both splits and a one-file corpus still gets a validation set; of record files
(JSONL, Parquet: many short documents) whole records are held out instead, `val_fraction` of them spread evenly
(record i when floor((i + 1) f) > floor(i f)), so no document is cut mid-sentence. Token ids are written as they
are produced (memory stays flat whatever the corpus' size) into temporary files that replace the shards only when
the whole corpus is done.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llmlab.data.corpora import Corpus, CorpusError
from llmlab.errors import LlmlabError, is_int
from llmlab.tokenizer.train import safe_chunks


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    dtype: str
    vocab_size: int
    eos_id: int
    train_tokens: int
    val_tokens: int
    documents: int
    tokenizer_sha256: str

    @classmethod
    def load(cls, path: str | Path) -> ShardInfo:
        """The shards under `path`, checked before any work: meta.json and both .bin files, sizes included."""
        path = Path(path)
        d = _read_meta(path)
        info = cls(path=path, **{k: d[k] for k in _META_TYPES})
        for split in ("train", "val"):
            info._check_bin(split)
        return info

    def _check_bin(self, split: str) -> None:
        f = self.path / f"{split}.bin"
        if not f.is_file():
            raise LlmlabError(f"{f} is missing; run `llmlab data prepare` again to rewrite the shards.")
        size, itemsize = f.stat().st_size, np.dtype(self.dtype).itemsize
        if size % itemsize:
            raise LlmlabError(f"{f} is truncated or damaged ({size} bytes is not a whole number of {self.dtype} "
                              "tokens); run llmlab data prepare again.")
        recorded = getattr(self, f"{split}_tokens")
        if size // itemsize != recorded:
            raise LlmlabError(f"{f} holds {size // itemsize} tokens but meta.json records {recorded}, so the "
                              "shards are truncated or damaged; run llmlab data prepare again.")

    def windows(self, split: str, seq_len: int) -> int:
        """How many disjoint (seq_len + 1)-token windows (inputs and shifted targets) `split` holds."""
        n = self.train_tokens if split == "train" else self.val_tokens
        return max(0, (n - 1) // seq_len)

    def tokens(self, split: str) -> np.ndarray:
        path = self.path / f"{split}.bin"
        if path.is_file() and path.stat().st_size == 0:  # an empty split (e.g. --val-fraction 0): mmap refuses it
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(path, dtype=self.dtype, mode="r")


_DTYPES = ("uint16", "uint32")
_META_TYPES = {"dtype": str, "vocab_size": int, "eos_id": int, "train_tokens": int, "val_tokens": int,
               "documents": int, "tokenizer_sha256": str}


def _read_meta(path: Path) -> dict:
    """meta.json under `path` as a dict with every ShardInfo field of the right type, or a clear error."""
    meta = path / "meta.json"
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise LlmlabError(f"{path} {what}; pass the --out directory of `llmlab data prepare` (or create shards there).")
    if not meta.is_file():
        raise LlmlabError(f"{path} has no meta.json; create shards with `llmlab data prepare` first.")
    try:
        d = json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LlmlabError(f"{meta} is not valid JSON; run llmlab data prepare again to rewrite it.") from None
    if not isinstance(d, dict):
        raise LlmlabError(f"{meta} holds a JSON {type(d).__name__}, not an object; run llmlab data prepare "
                          "again to rewrite it.")
    missing = [k for k in _META_TYPES if k not in d]
    if missing:
        raise LlmlabError(f"{meta} lacks {', '.join(missing)}; run llmlab data prepare again to rewrite it.")
    for k, t in _META_TYPES.items():
        ok = (is_int(d[k]) and d[k] >= 0) if t is int else isinstance(d[k], str)
        if not ok:
            raise LlmlabError(f"{meta} has {k} = {d[k]!r}, not a {'non-negative integer' if t is int else 'string'}; "
                              "run llmlab data prepare again to rewrite it.")
    if d["dtype"] not in _DTYPES:
        raise LlmlabError(f"{meta} has unknown dtype {d['dtype']!r} (expected {' or '.join(_DTYPES)}); run llmlab "
                          "data prepare again to rewrite it.")
    return d


def split_document(text: str, val_fraction: float) -> tuple[str, str]:
    """(train, val): val is at most the last `val_fraction` of the text, starting at a line when there is one."""
    if val_fraction <= 0:
        return text, ""
    cut = int(len(text) * (1 - val_fraction))
    nl = text.find("\n", cut)
    cut = nl + 1 if nl >= 0 else cut
    return text[:cut], text[cut:]


def prepare_shards(corpus: Corpus, tokenizer, out_dir: str | Path, *, val_fraction: float = 0.05,
                   progress: bool = True, workers: int = 1) -> ShardInfo:
    """Tokenize `corpus` into train/val shards under `out_dir`. With `workers` > 1 that many processes encode
    (each warms a word cache of its own: it pays on large corpora and many cores); the shards are the same."""
    eos = tokenizer.eos_id
    if eos is None:
        raise LlmlabError("the tokenizer has no EOS token to separate documents; train or load one that "
                          "defines an end-of-text special token.")
    if not 0 <= val_fraction < 1:
        raise LlmlabError(f"val_fraction (--val-fraction) must be in [0, 1), got {val_fraction}.")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise LlmlabError(f"workers (--workers) must be a whole number >= 1, got {workers!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    eos_bytes, total = np.asarray([eos], dtype=dtype).tobytes(), corpus.num_bytes  # (num_bytes stats every file)
    # A tokenizer whose add_special_tokens puts a BOS first (Llama, Mistral) gets one at the start of every document,
    # as its models were trained and as the engine encodes prompts; llmlab's own and GPT-2-style ones add none.
    bos = tokenizer.bos_id if tokenizer.template[0] == [tokenizer.bos_token] else None
    bos_bytes = np.asarray([bos], dtype=dtype).tobytes() if bos is not None else b""
    starts = {"train": True, "val": True}
    partial = {split: out / f".{split}.bin.partial" for split in ("train", "val")}
    counts = {"train": 0, "val": 0}
    docs = [0]
    bar = None
    files = {split: open(path, "wb") for split, path in partial.items()}  # closed below, also on an error
    try:  # the bar is closed before any error, so the message starts on its own line
        with contextlib.ExitStack() as stack:
            pieces = _pieces(corpus, val_fraction, docs)
            if workers > 1:  # each worker gets the tokenizer once (inherited by fork; spawn pickles its arguments)
                pool = stack.enter_context(_context().Pool(workers, initializer=_start_worker, initargs=(tokenizer,)))
                encoded = _in_order(pool, functools.partial(_encode_batch, dtype), _batches(pieces), 4 * workers)
            else:
                encoded = (_encode_with(tokenizer, dtype, piece) for piece in pieces)
            # Progress in bytes, and each document encoded in ~1M-character pieces that no pre-split piece crosses
            # (the same ids as the whole text): one large file moves the bar, and its ids never sit in one Python
            # list. (Made after the workers fork: tqdm starts a monitor thread, and a fork should copy no threads.)
            bar = tqdm(total=total, desc="tokenize", unit="B", unit_scale=True, disable=not progress)
            for split, ids, ends_document, nbytes in encoded:
                if ids:  # (blank documents and byte-count remainders come as empty pieces: no BOS for those)
                    if starts[split] and bos_bytes:
                        files[split].write(bos_bytes)
                        counts[split] += 1
                    starts[split] = ends_document
                files[split].write(ids)
                counts[split] += len(ids) // dtype.itemsize
                if ends_document:
                    files[split].write(eos_bytes)
                    counts[split] += 1
                bar.update(nbytes)
        for f in files.values():
            f.close()
        if not counts["train"]:
            raise CorpusError(f"corpus {corpus.name} has no text to train on; every file or record is empty or "
                              "blank.")
        (out / "meta.json").unlink(missing_ok=True)  # an older run's, which no longer describes the shards
        for split, path in partial.items():
            os.replace(path, out / f"{split}.bin")
    finally:
        if bar is not None:
            bar.close()
        for f in files.values():
            f.close()
        for path in partial.values():
            path.unlink(missing_ok=True)
    tokenizer.save(out)  # a directory: tokenizer.json + tokenizer_config.json
    meta = {"dtype": dtype.name, "vocab_size": tokenizer.vocab_size, "eos_id": eos, "bos_id": bos,
            "train_tokens": counts["train"], "val_tokens": counts["val"], "documents": docs[0],
            "tokenizer_sha256": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest(),
            "corpus": corpus.name, "bytes": total, "val_fraction": val_fraction}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ShardInfo.load(out)


def _pieces(corpus: Corpus, val_fraction: float, docs: list[int]) -> Iterator[tuple[str, str, bool, int]]:
    """(split, text, ends a document, file bytes it accounts for) in shard order: each document's train part then
    its validation part, in pieces of ~1M characters; counts the documents into docs[0]."""
    records = 0
    for doc in corpus.documents():
        if not doc.text.strip():
            yield "train", "", False, doc.nbytes
            continue
        docs[0] += 1
        if doc.record:  # whole records to validation, val_fraction of them spread evenly
            held = math.floor((records + 1) * val_fraction) > math.floor(records * val_fraction)
            parts = ("", doc.text) if held else (doc.text, "")
            records += 1
        else:
            parts = split_document(doc.text, val_fraction)
        left = doc.nbytes  # file bytes still to report for this document
        for split, part in zip(("train", "val"), parts, strict=True):
            chunks = list(safe_chunks(part)) if part else []
            for i, chunk in enumerate(chunks):
                step = left if doc.record else min(left, len(chunk.encode("utf-8")))
                left -= step
                yield split, chunk, i == len(chunks) - 1, step
        if left:
            yield "train", "", False, left


def _encode_with(tokenizer, dtype, piece: tuple[str, str, bool, int]) -> tuple[str, bytes, bool, int]:
    split, text, ends_document, nbytes = piece
    return split, tokenizer.encode_to_numpy(text, dtype=dtype).tobytes() if text else b"", ends_document, nbytes


def _context():
    """fork where there is one (Linux): a worker then starts in milliseconds and never re-runs the caller's script,
    which spawn does unless it is guarded by `if __name__ == "__main__"`; the workers use no threads or torch."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods and sys.platform != "darwin" else "spawn")


def _batches(pieces: Iterator[tuple], max_chars: int = 1 << 20, max_pieces: int = 256) -> Iterator[list[tuple]]:
    """Pieces grouped into tasks of about a million characters (or 256 pieces: many short records)."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece[1])
        if size >= max_chars or len(batch) >= max_pieces:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _in_order(pool, fn, tasks: Iterator, window: int) -> Iterator:
    """fn over tasks in the pool, results in order, at most `window` tasks in flight (Pool.imap would read the whole
    corpus into its queue ahead of the workers)."""
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= window:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


_WORKER: dict = {}  # a worker process's tokenizer, set once by _start_worker


def _start_worker(tokenizer) -> None:
    # Ctrl-C reaches the workers too: they ignore it (no traceback each) and the parent ends the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["tokenizer"] = tokenizer


def _encode_batch(dtype, batch: list[tuple]) -> list[tuple[str, bytes, bool, int]]:
    """In a worker process: the pieces encoded with the tokenizer it started with."""
    tokenizer = _WORKER["tokenizer"]
    return [_encode_with(tokenizer, dtype, piece) for piece in batch]
