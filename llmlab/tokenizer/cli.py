"""`llmlab tokenizer train|encode|decode`: train a tokenizer from files, encode stdin to ids, decode ids to text.

    llmlab tokenizer train --input a.txt b.txt --vocab-size 8192 --out tok/
    echo "Hello world" | llmlab tokenizer encode --tokenizer tok/
    echo "Hello world" | llmlab tokenizer encode --tokenizer tok/ | llmlab tokenizer decode --tokenizer tok/
    llmlab tokenizer encode --tokenizer gpt2.tiktoken --pattern gpt2 < text.txt

Thin: arguments are parsed here and passed to `train_bpe` / `train_wordpiece` / `load_tokenizer`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="train a tokenizer, or encode / decode text with one",
                              description="Train byte-level BPE / WordPiece tokenizers; encode text, decode ids.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train a tokenizer on UTF-8 text files and save it to a directory",
                       description="Train a tokenizer; writes tokenizer.json + tokenizer_config.json to --out.")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE|DIR|NAME",
                   help="UTF-8 text files, record files (.jsonl, .jsonl.gz, .parquet: each record's --text-field), "
                        "directories (their .txt, .md, .py, .rst, .text and record files), or one built-in corpus "
                        "name (shakespeare, python-stdlib)")
    t.add_argument("--text-field", default="text", metavar="NAME",
                   help="the field (Parquet: column) of each record that holds its text (default: text)")
    t.add_argument("--vocab-size", type=int, required=True, help="total vocabulary incl. bytes and special tokens")
    t.add_argument("--out", type=Path, required=True, help="output directory")
    t.add_argument("--kind", choices=("bpe", "wordpiece"), default="bpe", help="algorithm (default: bpe)")
    t.add_argument("--pattern", default=None,
                   help="BPE pre-split: 'gpt2', 'cl100k' (alias 'gpt4'), 'o200k', 'llama3', 'qwen2' or a regex "
                        "(default: gpt2)")
    t.add_argument("--min-frequency", type=int, default=2,
                   help="stop when the best pair occurs fewer times than this, >= 1 (default: 2)")
    t.add_argument("--special-tokens", nargs="*", default=None, metavar="TOKEN",
                   help="special tokens; for BPE the first is the end-of-text token (BOS, EOS and PAD; "
                        "data prepare separates documents with it) (default: <|endoftext|> <|im_start|> "
                        "<|im_end|> for BPE, BERT's for WordPiece)")
    t.set_defaults(func=_train)

    e = sub.add_parser("encode", help="encode stdin and print token ids, one line per input line",
                       description="Read text from stdin and print its token ids (space-separated).")
    e.add_argument("--tokenizer", required=True,
                   help="tokenizer.json, a directory with one, a SentencePiece tokenizer.model, a .tiktoken file, a "
                        ".gguf, vocab.txt, or a registry name (e.g. smollm2-135m, cl100k-tiktoken, mistral-7b-tokenizer)")
    e.add_argument("--pattern", default=None, help="split pattern for .tiktoken files: 'gpt2', 'cl100k' (alias 'gpt4'), "
                   "'o200k', 'llama3', 'qwen2' or a regex (default: from tiktoken's file name)")
    e.add_argument("--allow-special", action="store_true", help="recognise special tokens written in the text")
    e.add_argument("--whole", action="store_true", help="encode all of stdin as one text (default: per line)")
    e.set_defaults(func=_encode)

    d = sub.add_parser("decode", help="decode token ids from stdin to text, one line per input line",
                       description="Read token ids from stdin (space- or comma-separated, one sequence per line, as "
                                   "`llmlab tokenizer encode` prints them) and print the text of each line.")
    d.add_argument("--tokenizer", required=True, help=e._option_string_actions["--tokenizer"].help)
    d.add_argument("--pattern", default=None, help=e._option_string_actions["--pattern"].help)
    d.add_argument("--skip-special", action="store_true", help="leave special tokens out of the text")
    d.set_defaults(func=_decode)


def _train(args: argparse.Namespace) -> int:
    from llmlab.data.corpora import resolve_corpus
    from llmlab.errors import TokenizerError
    from llmlab.tokenizer.train import train_bpe, train_wordpiece

    if args.kind == "wordpiece" and args.pattern is not None:
        raise TokenizerError("--pattern applies to --kind bpe; WordPiece always splits as BERT does: drop --pattern.")
    found = next(p for p in (args.out, *args.out.parents) if p.exists())  # "." at worst
    if not found.is_dir():  # refused now, not at the save after the training
        raise TokenizerError(f"--out {args.out} cannot be a directory: {found} is a file; pass a new or existing "
                             "directory for tokenizer.json.")
    # as `data prepare`: text or record files, directories or a built-in name, one document at a time
    texts = resolve_corpus(args.input, text_field=args.text_field).texts()
    kw = {} if args.special_tokens is None else {"special_tokens": args.special_tokens}
    t0 = time.perf_counter()
    if args.kind == "bpe":
        pattern = "gpt2" if args.pattern is None else args.pattern
        tok = train_bpe(texts, args.vocab_size, pattern=pattern, min_frequency=args.min_frequency, **kw)
    else:
        tok = train_wordpiece(texts, args.vocab_size, min_frequency=args.min_frequency, **kw)
    tok.save(args.out)
    print(f"trained {args.kind} vocab_size={tok.vocab_size} in {time.perf_counter() - t0:.1f}s -> {args.out}",
          file=sys.stderr)
    if args.kind == "bpe":
        eos = tok.eos_id
        print(f"end-of-text token (BOS/EOS/PAD, the first of --special-tokens): {tok.eos_token} (id {eos})"
              if eos is not None else "note: no special tokens, so no end-of-text token: `llmlab data prepare` "
              "needs one to separate documents (pass --special-tokens '<|endoftext|>').", file=sys.stderr)
    if tok.vocab_size < args.vocab_size:
        print(f"note: stopped at {tok.vocab_size} of the {args.vocab_size} asked: no pair occurs >= "
              f"{args.min_frequency} times (--min-frequency) after the last merge; add text or lower --min-frequency.",
              file=sys.stderr)
    return 0


def _encode(args: argparse.Namespace) -> int:
    from llmlab.tokenizer.io import load_tokenizer

    tok = load_tokenizer(args.tokenizer, pattern=args.pattern)
    if args.allow_special and not tok.special_tokens:
        print(f"note: {args.tokenizer} has no special tokens, so --allow-special changes nothing.", file=sys.stderr)
    allowed = "all" if args.allow_special else "none"
    text = _read_stdin()
    chunks = [text] if args.whole else _lines(text)
    for chunk in chunks:
        print(" ".join(map(str, tok.encode(chunk, allowed_special=allowed))))
    return 0


def _decode(args: argparse.Namespace) -> int:
    from llmlab.errors import TokenizerError
    from llmlab.tokenizer.io import load_tokenizer

    tok = load_tokenizer(args.tokenizer, pattern=args.pattern)
    for n, line in enumerate(_lines(_read_stdin()), 1):
        ids = []
        for word in line.replace(",", " ").split():
            try:
                ids.append(int(word))
            except ValueError:
                raise TokenizerError(f"line {n}: {word!r} is not a token id; decode reads integer ids separated by "
                                     "spaces or commas, as `llmlab tokenizer encode` prints them.") from None
        try:
            text = tok.decode(ids, skip_special_tokens=args.skip_special)
        except TokenizerError as e:
            raise TokenizerError(f"line {n}: {e}") from None
        print(text)
    return 0


def _read_stdin() -> str:
    """All of stdin, decoded as strict UTF-8 (a locale's error handler would turn bad bytes into U+FFFD silently)."""
    from llmlab.errors import TokenizerError

    if not hasattr(sys.stdin, "buffer"):  # a text stream (tests, embedding) holds decoded text already
        return sys.stdin.read()
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"stdin is not valid UTF-8 at byte offset {e.start}; convert it (e.g. iconv -t UTF-8) "
                             "first.") from None


def _lines(text: str) -> list[str]:
    """The lines of `text`, cut at line feeds only (a CRLF counts as one): str.splitlines also cuts at form feeds,
    U+2028 and other separators, and drops them."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]
