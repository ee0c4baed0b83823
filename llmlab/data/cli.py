"""`llmlab data prepare`: tokenize a corpus into train/val token shards."""

from __future__ import annotations

import argparse
import sys

from llmlab.data.corpora import RECORD_SUFFIXES, TEXT_SUFFIXES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare training data", description="Prepare training data.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    prep = dsub.add_parser(
        "prepare", help="tokenize text into memmap shards",
        description="Tokenize text files, JSON Lines or Parquet records (or a built-in corpus: shakespeare, "
                    "python-stdlib) into uint16/uint32 train.bin / val.bin shards with documents separated by EOS, "
                    "plus meta.json.")
    prep.add_argument("--input", nargs="+", required=True, metavar="FILE|DIR|NAME",
                      help=f"UTF-8 text files (each one document), record files ({', '.join(RECORD_SUFFIXES)}: each "
                           "record one document; Parquet needs pyarrow), directories (their "
                           f"{', '.join(TEXT_SUFFIXES)} and record files, any letter case, hidden ones skipped), or "
                           "one built-in corpus name")
    prep.add_argument("--text-field", default="text", metavar="NAME",
                      help="the field (Parquet: column) of each record that holds its text (default: text)")
    prep.add_argument("--tokenizer", required=True, metavar="PATH",
                      help="tokenizer.json, a directory holding one, a SentencePiece tokenizer.model, a .tiktoken or "
                           ".gguf file, or a registry name (e.g. smollm2-135m, mistral-7b-tokenizer)")
    prep.add_argument("--out", required=True, metavar="DIR", help="output directory for the shards")
    prep.add_argument("--val-fraction", type=float, default=0.05,
                      help="fraction held out for validation: the tail of every text file, and whole records of "
                           "record files, spread evenly (default 0.05)")
    prep.add_argument("--workers", type=int, default=1, metavar="N",
                      help="processes that tokenize, each with a word cache of its own: for corpora of many MB on "
                           "many cores (the shards are the same for any number; default 1)")
    prep.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from llmlab.data.corpora import is_record_file, resolve_corpus
    from llmlab.data.shards import prepare_shards
    from llmlab.tokenizer import load_tokenizer

    corpus = resolve_corpus(args.input, text_field=args.text_field)
    tokenizer = load_tokenizer(args.tokenizer)
    info = prepare_shards(corpus, tokenizer, args.out, val_fraction=args.val_fraction, workers=args.workers)
    docs = f"{info.documents} document{'' if info.documents == 1 else 's'}"
    print(f"{docs}, {corpus.num_bytes / 1e6:.1f} MB -> {info.train_tokens:,} train + {info.val_tokens:,} val tokens "
          f"({info.dtype}) in {info.path}")
    warning = small_split_warning(info, args.val_fraction, records=all(map(is_record_file, corpus.files)))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def small_split_warning(info, val_fraction: float, records: bool = False) -> str | None:
    """A warning when the train split, or else the validation split, is empty or shorter than one sequence of the
    smallest preset; `records`: the corpus is record files (whole records are held out, not tails)."""
    from llmlab.train.config import PRESETS

    preset, seq_len = min(((name, p["seq_len"]) for name, p in PRESETS.items()), key=lambda np_: np_[1])
    if info.windows("train", seq_len) == 0:  # first: train refuses these shards, with or without validation
        return (f"the train split has only {info.train_tokens} tokens, shorter than one sequence of {seq_len} + 1 "
                f"(preset {preset}), so `llmlab train` refuses these shards unless --seq_len is below "
                f"{info.train_tokens}; add text.")
    if info.val_tokens <= 1:
        why = ("--val-fraction is 0" if val_fraction == 0 else
               f"fewer than 1 / {val_fraction:g} = {1 / val_fraction:.0f} records, so none is held out" if records else
               "the text is too short for a tail to hold out")
        return (f"the validation split is {'empty' if info.val_tokens == 0 else 'one token'} ({why}), so "
                "`llmlab train` on these shards reports no validation loss; raise --val-fraction or add text.")
    if info.windows("val", seq_len) == 0:
        return (f"the validation split has only {info.val_tokens} tokens, shorter than one sequence of "
                f"{seq_len} + 1 (preset {preset}), so training reports no validation loss unless --seq_len is "
                f"below {info.val_tokens}; raise --val-fraction or add text.")
    return None
