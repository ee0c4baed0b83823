"""Tokenizer benchmark: llmlab vs tiktoken vs tokenizers, side by side in one run.

Corpus: the Python standard library source of the running interpreter (always present, no download),
files in sorted order: the first >= 10 MB train, the next ~1 MB is held out.

1. Training byte-level BPE at the same vocab size (GPT-2 split pattern, min_frequency 2):
   llmlab `train_bpe` vs `tokenizers` BpeTrainer (Rust; one thread here, see RAYON_NUM_THREADS). Compression: UTF-8 bytes
   per token of each trained tokenizer on the held-out text.
2. Encoding with the real GPT-2 ranks (fetched through llmlab.artifacts), one call per file,
   single thread: tiktoken `encode_ordinary`, tokenizers (the same vocabulary written by llmlab as
   tokenizer.json, RAYON_NUM_THREADS=1), llmlab cold (fresh word cache, first pass) and warm.
   All ids are checked to be identical.
3. SentencePiece BPE (Mistral 7B's tokenizer.model, fetched through llmlab.artifacts): llmlab cold and warm vs
   `sentencepiece` on the same file and `tokenizers` on the tokenizer.json llmlab writes from it (Llama 2's layout:
   no pre-tokenizer, so tokenizers merges each file as one word). Skipped, and said so, without sentencepiece.
4. The cl100k and o200k ranks (GPT-4 / GPT-4o; Llama 3 and Qwen2 split text as cl100k does): llmlab cold and warm
   vs tiktoken, ids checked identical.
5. Text in other scripts: the translated strings of Django's 1,130 .po files (99 languages, 3.1 MB; fetched through
   llmlab.artifacts as `django-locale`), one call per file, all languages and five scripts alone (CJK, Cyrillic,
   Latin with accents, Arabic, Indic), with the GPT-2, cl100k and o200k ranks: llmlab cold and warm vs tiktoken, and
   with Mistral 7B's tokenizer.model vs sentencepiece; ids checked identical. Each llmlab tokenizer first encodes the
   held-out Python source, so its C encoder is built (it starts after 64 KB): cold is a fresh piece cache's first pass
   over the language.
6. Many documents at once: each library's batch call on threads (one per usable core), cold and warm, and one
   document's ids as a NumPy array (`encode_to_numpy`, what `data prepare` writes), GPT-2 / cl100k / o200k ranks,
   llmlab vs tiktoken; ids checked identical.

Targets (issue 4): encode >= 0.5x tiktoken; training <= 5x tokenizers; compression within 1%.
Prints a table and ends with one JSON line; writes benchmarks/results/tokenizer.json (in
LLMLAB_BENCH_RESULTS when set; --out to choose).

    .venv/bin/python benchmarks/tokenizer.py [--vocab-size 8192] [--mb 10]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # single-thread comparison; must precede the import
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from results_io import check_writable, command, cpu_name, git_state, results_dir  # noqa: E402 (after the thread settings)


def load_corpus(mb: float) -> tuple[list[str], list[str]]:
    std = Path(sysconfig.get_paths()["stdlib"])
    train, held, n = [], [], 0
    for f in sorted(std.rglob("*.py")):
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if n < mb * 1e6:
            train.append(text)
        elif sum(len(t) for t in held) < 1e6:
            held.append(text)
        else:
            break
        n += len(text.encode("utf-8"))
    return train, held


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def sentencepiece_section(train: list[str], train_bytes: int) -> dict | None:
    """Encoding with Mistral 7B's SentencePiece BPE: llmlab (cold, warm) vs sentencepiece vs tokenizers."""
    try:
        import sentencepiece
    except ImportError:
        print("sentencepiece is not installed: the SentencePiece BPE comparison is skipped (pip install sentencepiece)")
        return None
    import tokenizers

    from llmlab import artifacts, load_tokenizer

    path = artifacts.fetch("mistral-7b-tokenizer")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    t_sp, ids_sp = timed(lambda: [sp.encode(t) for t in train], repeat=2)
    ours = load_tokenizer(path)
    with tempfile.TemporaryDirectory() as d:
        ours.save(Path(d) / "tokenizer.json")
        hf = tokenizers.Tokenizer.from_file(str(Path(d) / "tokenizer.json"))
    hf.encode_special_tokens = True  # "<s>" in the text is text, as for sentencepiece and llmlab's encode
    t_hf, ids_hf = timed(lambda: [hf.encode(t, add_special_tokens=False).ids for t in train])
    t_cold, ids_cold = timed(lambda: [ours.encode(t) for t in train])  # a fresh word cache: the first pass
    t_warm, ids_warm = timed(lambda: [ours.encode(t) for t in train], repeat=2)
    mbs = lambda t: round(train_bytes / 1e6 / t, 3)  # noqa: E731
    return {"file": "mistral-7b-tokenizer (tokenizer.model.v1, 32,000 pieces)",
            "encode_mb_s": {"llmlab_cold": mbs(t_cold), "llmlab_warm": mbs(t_warm), "sentencepiece": mbs(t_sp),
                            "tokenizers": mbs(t_hf)},
            "ratio_vs_sentencepiece": {"cold": round(t_sp / t_cold, 3), "warm": round(t_sp / t_warm, 3)},
            "ids_identical": ids_sp == ids_hf == ids_cold == ids_warm, "tokens": sum(map(len, ids_sp)),
            "sentencepiece_version": sentencepiece.__version__}


def ranks_pair(name: str):
    """(loader of a fresh llmlab tokenizer, tiktoken's Encoding) for the `name` ranks (gpt2, cl100k, o200k), both on
    the ranks file fetched through llmlab.artifacts, without special tokens."""
    import tiktoken

    from llmlab import artifacts, load_tokenizer
    from llmlab.tokenizer import PATTERNS

    path = artifacts.fetch(f"{name}-tiktoken")
    load = lambda: load_tokenizer(path, pattern=name)  # noqa: E731
    return load, tiktoken.Encoding(name, pat_str=PATTERNS[name], mergeable_ranks=load().model.vocab,
                                   special_tokens={})


def ranks_section(train: list[str], train_bytes: int) -> dict:
    """Encoding with the cl100k and o200k ranks: llmlab (cold, warm) vs tiktoken, per encoding."""
    out = {}
    for name in ("cl100k", "o200k"):
        load, enc = ranks_pair(name)
        ours = load()
        t_tk, ids_tk = timed(lambda e=enc: [e.encode_ordinary(t) for t in train], repeat=2)
        t_cold, ids_cold = timed(lambda o=ours: [o.encode(t) for t in train])
        t_warm, ids_warm = timed(lambda o=ours: [o.encode(t) for t in train], repeat=2)
        mbs = lambda t: round(train_bytes / 1e6 / t, 3)  # noqa: E731
        out[name] = {"encode_mb_s": {"llmlab_cold": mbs(t_cold), "llmlab_warm": mbs(t_warm), "tiktoken": mbs(t_tk)},
                     "ratio_vs_tiktoken": {"cold": round(t_tk / t_cold, 3), "warm": round(t_tk / t_warm, 3)},
                     "ids_identical": ids_tk == ids_cold == ids_warm, "tokens": sum(map(len, ids_tk))}
    return out


def batch_section(train: list[str], train_bytes: int) -> dict:
    """Many documents at once on the usable cores (threads: each library's batch call), and one document's ids as a
    NumPy array (what `data prepare` writes), with the GPT-2, cl100k and o200k ranks: llmlab vs tiktoken."""
    import numpy as np

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out = {"threads": threads}
    for name in ("gpt2", "cl100k", "o200k"):
        load, enc = ranks_pair(name)
        ours = load()
        t_tk, ids_tk = timed(lambda e=enc: e.encode_ordinary_batch(train, num_threads=threads), repeat=2)
        t_cold, ids_cold = timed(lambda o=ours: o.encode_ordinary_batch(train, num_threads=threads))
        t_warm, ids_warm = timed(lambda o=ours: o.encode_ordinary_batch(train, num_threads=threads), repeat=2)
        one = load()  # the same on one thread, a fresh tokenizer
        t_one, _ = timed(lambda o=one: o.encode_ordinary_batch(train, num_threads=1))
        t_np_tk, np_tk = timed(lambda e=enc: [e.encode_to_numpy(t) for t in train], repeat=2)
        t_np, np_ours = timed(lambda o=ours: [o.encode_to_numpy(t) for t in train], repeat=2)  # warm
        t_list, _ = timed(lambda o=ours: [o.encode_ordinary(t) for t in train], repeat=2)  # warm, one thread
        mbs = lambda t: round(train_bytes / 1e6 / t, 3)  # noqa: E731
        out[name] = {
            "batch_mb_s": {"llmlab_cold": mbs(t_cold), "llmlab_warm": mbs(t_warm), "tiktoken": mbs(t_tk)},
            "batch_ratio_vs_tiktoken": {"cold": round(t_tk / t_cold, 3), "warm": round(t_tk / t_warm, 3)},
            "one_thread_mb_s": {"llmlab_cold": mbs(t_one), "llmlab_warm": mbs(t_list)},
            "to_numpy_mb_s": {"llmlab_warm": mbs(t_np), "tiktoken": mbs(t_np_tk), "llmlab_list_warm": mbs(t_list)},
            "to_numpy_ratio_vs_tiktoken": round(t_np_tk / t_np, 3),
            "ids_identical": ids_tk == ids_cold == ids_warm and all(
                np.array_equal(a, b) for a, b in zip(np_tk, np_ours, strict=True))}
    return out


# Django's locale folders by script (languages in none of these count in "all" only)
SCRIPTS = {"CJK": ("zh_Hans", "zh_Hant", "ja", "ko"),
           "Cyrillic": ("ru", "uk", "be", "bg", "sr", "mk", "mn", "ky", "kk", "tt", "udm", "os", "tg"),
           "Latin, accented": ("fr", "de", "es", "pt", "pt_BR", "it", "pl", "cs", "sk", "tr", "vi", "hu", "ro", "is"),
           "Arabic": ("ar", "ar_DZ", "fa", "ur", "ckb", "ug"),
           "Indic": ("hi", "mr", "ml", "bn", "ta", "te", "kn", "pa", "ne")}


def po_strings(text: str) -> list[str]:
    """The translations (msgstr, msgstr[n], with their continuation lines) of a .po file."""
    out, cur = [], None
    for line in text.splitlines():
        if line.startswith("msgstr"):
            cur = [line.split(" ", 1)[1]] if " " in line else []
            out.append(cur)
        elif line.startswith('"') and cur is not None:
            cur.append(line)
        else:
            cur = None
    return [s for s in ("".join(ast.literal_eval(part) for part in parts) for parts in out) if s]


def scripts_section(warm_up: list[str]) -> dict:
    """Encoding text in other scripts (Django's translations): llmlab (cold, warm) vs tiktoken with the GPT-2, cl100k
    and o200k ranks, and vs sentencepiece with Mistral 7B's tokenizer.model (when sentencepiece is installed)."""
    from llmlab import artifacts, load_tokenizer

    root = artifacts.fetch("django-locale")
    docs: dict[str, list[str]] = {"all": []}
    for f in sorted(root.rglob("django.po")):
        lang, text = f.parts[-3], "\n".join(po_strings(f.read_text(encoding="utf-8")))
        docs["all"].append(text)
        for script, langs in SCRIPTS.items():
            if lang in langs:
                docs.setdefault(script, []).append(text)
    refs = []  # (name, our tokenizer's loader, reference name, its encode)
    for name in ("gpt2", "cl100k", "o200k"):
        load, enc = ranks_pair(name)
        refs.append((name, load, "tiktoken", enc.encode_ordinary))
    try:
        import sentencepiece
    except ImportError:
        print("sentencepiece is not installed: Mistral's tokenizer.model is left out of the other scripts")
    else:
        path = artifacts.fetch("mistral-7b-tokenizer")
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        refs.append(("mistral", lambda p=path: load_tokenizer(p), "sentencepiece", sp.encode))
    out = {"corpus": f"django-locale: msgstr of {len(docs['all'])} .po files, one call a file", "encodings": {}}
    for name, load, ref_name, ref in refs:
        rows = out["encodings"][name] = {}
        for script, texts in docs.items():
            mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
            ours = load()
            for t in warm_up:
                ours.encode(t)
            t_ref, ids_ref = timed(lambda ts=texts, r=ref: [r(t) for t in ts], repeat=2)
            t_cold, ids_cold = timed(lambda o=ours, ts=texts: [o.encode(t) for t in ts])
            t_warm, ids_warm = timed(lambda o=ours, ts=texts: [o.encode(t) for t in ts], repeat=2)
            rows[script] = {"mb": round(mb, 3), "files": len(texts), "reference": ref_name,
                            "encode_mb_s": {"llmlab_cold": round(mb / t_cold, 3), "llmlab_warm": round(mb / t_warm, 3),
                                            ref_name: round(mb / t_ref, 3)},
                            "ratio_vs_reference": {"cold": round(t_ref / t_cold, 3), "warm": round(t_ref / t_warm, 3)},
                            "ids_identical": ids_ref == ids_cold == ids_warm, "tokens": sum(map(len, ids_ref))}
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary to train, >= 257 (default 8192)")
    ap.add_argument("--mb", type=float, default=10.0, help="training/encoding corpus size in MB, > 0 (default 10)")
    ap.add_argument("--out", type=Path, default=results_dir() / "tokenizer.json",
                    help="results JSON (default: tokenizer.json in benchmarks/results/, or in LLMLAB_BENCH_RESULTS "
                         "when set)")
    return ap


def main() -> int:
    ap = build_parser()
    args = ap.parse_args()
    if args.vocab_size < 257:  # 256 bytes + <|endoftext|>
        ap.error(f"--vocab-size must be at least 257 (256 bytes + <|endoftext|>), got {args.vocab_size}")
    if not args.mb > 0:
        ap.error(f"--mb must be above 0, got {args.mb}")
    check_writable(ap, args.out)  # before the run, not after it

    import regex
    import tiktoken
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    import llmlab
    from llmlab import artifacts, load_tokenizer
    from llmlab.tokenizer import train_bpe

    train, held = load_corpus(args.mb)
    train_bytes = sum(len(t.encode("utf-8")) for t in train)
    held_bytes = sum(len(t.encode("utf-8")) for t in held)
    print(f"corpus: {len(train)} stdlib files, {train_bytes / 1e6:.2f} MB train, {held_bytes / 1e6:.2f} MB held out")

    # ---- 1. training --------------------------------------------------------------------------
    specials = ["<|endoftext|>"]
    t_ours, ours = timed(lambda: train_bpe(train, args.vocab_size, special_tokens=specials, progress=False))

    def hf_train():
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(train, trainers.BpeTrainer(
            vocab_size=args.vocab_size, min_frequency=2, special_tokens=specials, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return tok
    t_hf, hf = timed(hf_train)
    bpt_ours = held_bytes / sum(len(ours.encode(t)) for t in held)
    bpt_hf = held_bytes / sum(len(hf.encode(t).ids) for t in held)

    # ---- 2. encoding with the GPT-2 ranks -----------------------------------------------------
    ranks_path = artifacts.fetch("gpt2-tiktoken")
    gpt2 = load_tokenizer(ranks_path, pattern="gpt2")
    tk_pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    enc = tiktoken.Encoding("gpt2", pat_str=tk_pat, mergeable_ranks=gpt2.model.vocab,
                            special_tokens=gpt2.special_tokens)
    with tempfile.TemporaryDirectory() as d:
        gpt2.save(Path(d) / "gpt2.json")
        hf_gpt2 = tokenizers.Tokenizer.from_file(str(Path(d) / "gpt2.json"))
    t_tk, ids_tk = timed(lambda: [enc.encode_ordinary(t) for t in train], repeat=3)
    t_hfe, ids_hf = timed(lambda: [hf_gpt2.encode(t, add_special_tokens=False).ids for t in train], repeat=2)
    fresh = load_tokenizer(ranks_path, pattern="gpt2")
    t_cold, ids_cold = timed(lambda: [fresh.encode(t) for t in train])
    t_warm, ids_warm = timed(lambda: [fresh.encode(t) for t in train], repeat=2)
    identical = ids_tk == ids_hf == ids_cold == ids_warm
    n_tokens = sum(map(len, ids_tk))
    spm = sentencepiece_section(train, train_bytes)
    identical = identical and (spm is None or spm["ids_identical"])
    more = ranks_section(train, train_bytes)
    identical = identical and all(r["ids_identical"] for r in more.values())
    scripts = scripts_section(held)
    identical = identical and all(r["ids_identical"] for rows in scripts["encodings"].values() for r in rows.values())
    batch = batch_section(train, train_bytes)
    identical = identical and all(r["ids_identical"] for k, r in batch.items() if k != "threads")

    mbs = lambda t: train_bytes / 1e6 / t  # noqa: E731
    rows = [
        ("train bpe, seconds", f"{t_ours:.2f}", "-", f"{t_hf:.2f}", f"{t_ours / t_hf:.2f}x tokenizers (target <= 5x)"),
        ("held-out bytes/token", f"{bpt_ours:.3f}", "-", f"{bpt_hf:.3f}",
         f"{100 * (bpt_ours / bpt_hf - 1):+.2f}% vs tokenizers (target within 1%)"),
        ("encode GPT-2 MB/s, cold", f"{mbs(t_cold):.2f}", f"{mbs(t_tk):.2f}", f"{mbs(t_hfe):.2f}",
         f"{t_tk / t_cold:.2f}x tiktoken (target >= 0.5x)"),
        ("encode GPT-2 MB/s, warm", f"{mbs(t_warm):.2f}", f"{mbs(t_tk):.2f}", f"{mbs(t_hfe):.2f}",
         f"{t_tk / t_warm:.2f}x tiktoken"),
    ]
    print(f"\n{'':26}{'llmlab':>10}{'tiktoken':>10}{'tokenizers':>12}   ratio")
    for name, a, b, c, r in rows:
        print(f"{name:26}{a:>10}{b:>10}{c:>12}   {r}")
    print(f"GPT-2 ids identical across tiktoken / tokenizers / llmlab: {ids_tk == ids_hf == ids_cold == ids_warm} "
          f"({n_tokens} tokens)")
    if spm is not None:
        m, r = spm["encode_mb_s"], spm["ratio_vs_sentencepiece"]
        print(f"\n{'Mistral 7B tokenizer.model':26}{'llmlab':>10}{'sentencepiece':>15}{'tokenizers':>12}   ratio")
        for kind in ("cold", "warm"):
            print(f"{'encode MB/s, ' + kind:26}{m['llmlab_' + kind]:>10.2f}{m['sentencepiece']:>15.2f}"
                  f"{m['tokenizers']:>12.2f}   {r[kind]:.2f}x sentencepiece")
        print(f"SentencePiece ids identical across sentencepiece / tokenizers / llmlab: {spm['ids_identical']} "
              f"({spm['tokens']} tokens)")
    print(f"\n{'ranks':26}{'llmlab':>10}{'tiktoken':>10}   ratio")
    for name, r in more.items():
        for kind in ("cold", "warm"):
            print(f"{f'encode {name} MB/s, {kind}':26}{r['encode_mb_s']['llmlab_' + kind]:>10.2f}"
                  f"{r['encode_mb_s']['tiktoken']:>10.2f}   {r['ratio_vs_tiktoken'][kind]:.2f}x tiktoken")
        print(f"{name} ids identical across tiktoken / llmlab: {r['ids_identical']} ({r['tokens']} tokens)")
    print(f"\nother scripts ({scripts['corpus']}): MB/s, llmlab cold / warm vs the reference (tiktoken; sentencepiece "
          "for mistral), cold ratio")
    print(f"{'':28}" + "".join(f"{name:>30}" for name in scripts["encodings"]))
    for script in scripts["encodings"]["gpt2"]:
        cells = [scripts["encodings"][name][script] for name in scripts["encodings"]]
        print(f"{script + ' (' + str(cells[0]['mb']) + ' MB)':28}" + "".join(
            f"{c['encode_mb_s']['llmlab_cold']:>7.1f} /{c['encode_mb_s']['llmlab_warm']:>5.1f} vs"
            f"{c['encode_mb_s'][c['reference']]:>5.1f} ({c['ratio_vs_reference']['cold']:.1f}x)" for c in cells))
    print("other scripts: ids identical across the references / llmlab: "
          f"{all(r['ids_identical'] for rows in scripts['encodings'].values() for r in rows.values())}")
    print(f"\n{'batch, ' + str(batch['threads']) + ' threads':26}{'llmlab':>10}{'tiktoken':>10}   ratio")
    for name in ("gpt2", "cl100k", "o200k"):
        r = batch[name]
        for kind in ("cold", "warm"):
            print(f"{f'{name} batch MB/s, {kind}':26}{r['batch_mb_s']['llmlab_' + kind]:>10.2f}"
                  f"{r['batch_mb_s']['tiktoken']:>10.2f}   {r['batch_ratio_vs_tiktoken'][kind]:.2f}x tiktoken "
                  f"(llmlab on one thread: {r['one_thread_mb_s']['llmlab_' + kind]:.2f})")
        print(f"{f'{name} to_numpy MB/s, warm':26}{r['to_numpy_mb_s']['llmlab_warm']:>10.2f}"
              f"{r['to_numpy_mb_s']['tiktoken']:>10.2f}   {r['to_numpy_ratio_vs_tiktoken']:.2f}x tiktoken "
              f"(llmlab as a list: {r['to_numpy_mb_s']['llmlab_list_warm']:.2f})")

    cpu = cpu_name()
    result = {
        "benchmark": "tokenizer", "corpus": "python stdlib *.py (sorted)", "train_mb": round(train_bytes / 1e6, 3),
        "heldout_mb": round(held_bytes / 1e6, 3), "vocab_size": args.vocab_size,
        "train_s": {"llmlab": round(t_ours, 3), "tokenizers": round(t_hf, 3)},
        "train_ratio_vs_tokenizers": round(t_ours / t_hf, 3),
        "bytes_per_token": {"llmlab": round(bpt_ours, 4), "tokenizers": round(bpt_hf, 4)},
        "compression_diff_pct": round(100 * (bpt_ours / bpt_hf - 1), 3),
        "encode_mb_s": {"llmlab_cold": round(mbs(t_cold), 3), "llmlab_warm": round(mbs(t_warm), 3),
                        "tiktoken": round(mbs(t_tk), 3), "tokenizers": round(mbs(t_hfe), 3)},
        "encode_ratio_vs_tiktoken": {"cold": round(t_tk / t_cold, 3), "warm": round(t_tk / t_warm, 3)},
        "ids_identical": identical, "gpt2_tokens": n_tokens,
        "sentencepiece_bpe": spm if spm is not None else "skipped: sentencepiece is not installed",
        "ranks": more,
        "other_scripts": scripts,
        "batch": batch,
        "hardware": {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine()},
        "command": command(),
        "versions": {"python": platform.python_version(), "llmlab": llmlab.__version__, "git": git_state()["git"],
                     "tiktoken": tiktoken.__version__, "tokenizers": tokenizers.__version__,
                     "regex": regex.__version__, "sentencepiece": spm["sentencepiece_version"] if spm else None},
        "notes": "one thread everywhere: RAYON_NUM_THREADS=1 also limits tokenizers' training; llmlab's byte-level "
                 "BPE and SentencePiece-style BPE encode text in C after their first 64 KB (split, piece cache and "
                 "merges, tokenizer/cencode.py), the first 64 KB in Python with a C merge loop for word-cache misses "
                 "(kernels/cpu_bpe.c). Cold = fresh caches (C's and Python's), first pass over the corpus; the "
                 "compiled C library is cached per machine, like the torch kernels.",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
