"""Tokenizer files: Hugging Face tokenizer.json (+ directory), tiktoken ranks, GGUF vocabularies.

`load_tokenizer(path, pattern=None)` dispatches on what `path` is:

- a directory: its `tokenizer.json`, else its `vocab.txt` (BERT WordPiece); the chat template and
  bos/eos/pad are read where transformers reads them (`tokenizer_config.json`, `chat_template.jinja`);
- `*.json`: a Hugging Face `tokenizer.json` (byte-level BPE or WordPiece);
- `*.tiktoken` / `*.tiktoken.gz`: tiktoken ranks (`base64 rank` lines). The file carries no split
  pattern and no special tokens: pass `pattern="gpt2" | "cl100k" | "o200k"` or a regex. Files under
  tiktoken's own names (gpt2, r50k_base, cl100k_base, o200k_base: the registry's
  gpt2/cl100k/o200k-tiktoken) get their encoding's pattern and special tokens, whatever the pattern;
  another file gets the special tokens of the named pattern's encoding if it has that encoding's
  number of ranks, else none. A special id that is also an ordinary rank is refused;
- `*.gguf`: the byte-level BPE vocabulary, merges, special tokens and chat template inside a
  llama.cpp GGUF model (`tokenizer.ggml.*` fields), read with the `gguf` package;
- `vocab.txt`: one WordPiece token per line (BERT uncased normalization).

`save_tokenizer` writes a `tokenizer.json` that `tokenizers.Tokenizer.from_file` loads (and a
`tokenizer_config.json` when given a directory). Errors name the file and the missing field.
"""

from __future__ import annotations

import base64
import gzip
import json
import warnings
from pathlib import Path

import regex

from llmlab.errors import TokenizerError
from llmlab.tokenizer.bpe import (
    PATTERNS,
    BPEModel,
    alphabet_strings,
    check_portable,
    resolve_pattern,
    unicode_to_bytes,
)
from llmlab.tokenizer.spm import PieceBPEModel
from llmlab.tokenizer.spm_file import decoder_spec, is_sentencepiece_name, load_sentencepiece, sentencepiece_tokenizer
from llmlab.tokenizer.tokenizer import TOKEN_OPTIONS, Tokenizer
from llmlab.tokenizer.wordpiece import BertNormalizer, WordPieceModel

TIKTOKEN_SPECIALS: dict[str, dict[str, int]] = {
    "gpt2": {"<|endoftext|>": 50256},
    "cl100k": {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
               "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276},
    "o200k": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}
# tiktoken's rank files by encoding name (openai_public.py) -> that encoding (its split pattern and special tokens).
# (p50k_base is left out: it shares GPT-2's pattern but has other special tokens.)
_TIKTOKEN_FILES = {"gpt2": "gpt2", "r50k_base": "gpt2", "cl100k_base": "cl100k", "o200k_base": "o200k"}
_TIKTOKEN_SIZES = {"gpt2": 50256, "cl100k": 100256, "o200k": 199998}  # ordinary ranks of each encoding
# llama.cpp `tokenizer.ggml.pre` names -> equivalent tokenizer.json pre-tokenizers.
_BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_BYTELEVEL_NOREGEX = {**_BYTELEVEL, "use_regex": False}
_LLAMA3 = PATTERNS["llama3"]
GGUF_PRE: dict[str, dict] = {
    "default": _BYTELEVEL, "gpt-2": _BYTELEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTELEVEL]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3}, "behavior": "Isolated", "invert": False},
        _BYTELEVEL_NOREGEX]},
}
GGUF_PRE["starcoder"] = GGUF_PRE["smollm"]


# Every character from space to U+2FFF (Latin to CJK radicals): a split pattern finds some text in it.
_PROBE = "".join(map(chr, range(0x20, 0x3000)))


def compile_pattern(pattern: str) -> regex.Pattern:
    """The pre-split regex that `pattern` (a name in PATTERNS or a regex) stands for; one clear error if invalid."""
    try:
        compiled = regex.compile(resolve_pattern(pattern))
    except regex.error as e:
        raise TokenizerError(f"pattern {pattern!r} is not a valid regex ({e}); use one of "
                             f"{', '.join(map(repr, PATTERNS))} or a valid regex.") from None
    if not any(m.group() for m in compiled.finditer(_PROBE)) and (compiled.search(_PROBE) or compiled.fullmatch("")):
        raise TokenizerError(f"pattern {pattern!r} matches only empty strings, so it splits text into nothing; use "
                             f"one of {', '.join(map(repr, PATTERNS))} or a regex that matches the pieces.")
    check_portable(compiled.pattern)  # here too: a --pattern is refused before training or loading, not after
    return compiled


def split_pre_tokenizer(pattern: str) -> dict:
    """tokenizer.json pre-tokenizer for 'regex split, then bytes' (what llmlab trains and saves)."""
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": resolve_pattern(pattern)}, "behavior": "Isolated", "invert": False},
        _BYTELEVEL_NOREGEX]}


def _tiktoken_encoding(path: str | Path) -> str | None:
    """The encoding a rank file holds by tiktoken's own file name ("cl100k_base.tiktoken" -> "cl100k"), else None."""
    return _TIKTOKEN_FILES.get(Path(path).name.lower().removesuffix(".gz").removesuffix(".tiktoken"))


def load_tokenizer(path: str | Path, pattern: str | None = None) -> Tokenizer:
    """Load a tokenizer from a tokenizer.json, a directory, a .tiktoken file, a GGUF or vocab.txt, or by a registry
    name such as 'gpt2-tiktoken' or 'smollm2-135m' (fetched and verified the first time)."""
    from llmlab import artifacts

    path = artifacts.resolve(path, kinds=("tokenizer", "model"))  # (not a corpus: 'shakespeare' is a path then)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model", "vocab.txt"):
            if (path / name).is_file():
                return load_tokenizer(path / name, pattern)
        raise TokenizerError(f"{path} has no tokenizer.json, tokenizer.model or vocab.txt; point at a tokenizer file.")
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {path} does not exist; check the path, or use a registry name: "
                             f"{', '.join(artifacts.names('tokenizer', 'model'))}.")
    name = path.name.lower()
    if name.endswith((".tiktoken", ".tiktoken.gz")):
        if pattern is None:  # tiktoken's own file names say which encoding (and so which pattern) they hold
            pattern = _tiktoken_encoding(path)
        if pattern is None:
            raise TokenizerError(f"{path} is a tiktoken rank file, which carries no split pattern; pass "
                                 "pattern='gpt2', 'cl100k', 'o200k' or a regex (--pattern on the command line).")
        return load_tiktoken(path, pattern)
    if pattern is not None:
        raise TokenizerError(f"pattern= applies only to .tiktoken files; {path.name} carries its own.")
    if name.endswith(".gguf"):
        return load_gguf(path)
    if name.endswith(".json"):
        tok = load_tokenizer_json(path)
    elif name.endswith(".txt"):
        tok = load_vocab_txt(path)
    elif is_sentencepiece_name(name):
        tok = load_sentencepiece(path)
    else:
        raise TokenizerError(f"{path} is not a tokenizer file llmlab reads; use tokenizer.json, a directory with "
                             "one, tokenizer.model (SentencePiece BPE), .tiktoken, .gguf or vocab.txt.")
    _read_hf_config(tok, path.parent)
    return tok


def _need(d: dict, key: str, path: Path, where: str):
    if not isinstance(d, dict) or key not in d:
        raise TokenizerError(f"{path} is missing the field '{where}{key}'; the file is corrupt or not a "
                             "Hugging Face tokenizer.json: re-export it.")
    return d[key]


def load_tokenizer_json(path: Path) -> Tokenizer:
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON ({e}); re-export the tokenizer.") from None
    model = _need(spec, "model", path, "")
    kind = model.get("type") if isinstance(model, dict) else None
    vocab = _need(model, "vocab", path, "model.")
    added = {t["content"]: t for t in spec.get("added_tokens") or []}
    special = {c: t["id"] for c, t in added.items() if t.get("special")}
    extra = {c: t["id"] for c, t in added.items() if not t.get("special")}
    options = {c: {k: bool(t.get(k)) for k in TOKEN_OPTIONS} for c, t in added.items()}
    if kind == "BPE" or (kind is None and "merges" in model):
        merges = _read_merges(model, path)
        m = _byte_bpe(model, vocab, added, merges, path) if _byte_level(spec) else \
            _piece_bpe(model, vocab, added, merges, path)
    elif kind == "WordPiece":
        unk = model.get("unk_token", "[UNK]")
        dec = spec.get("decoder") or {}
        m = WordPieceModel(dict(vocab), unk, model.get("continuing_subword_prefix", "##"),
                           model.get("max_input_chars_per_word", 100), dec.get("cleanup", True))
    else:
        raise TokenizerError(f"{path} has model type {kind!r}; llmlab reads BPE (byte-level or SentencePiece-style) "
                             "and WordPiece.")
    return Tokenizer(m, normalizer=spec.get("normalizer"), pre_tokenizer=spec.get("pre_tokenizer"),
                     special_tokens=special, added_tokens=extra, token_options=options,
                     template=_read_template(spec.get("post_processor"), path),
                     decoder=spec.get("decoder") if isinstance(m, PieceBPEModel) else None)


def _byte_level(spec: dict) -> bool:
    """A BPE tokenizer.json is byte-level (GPT-2's alphabet) when a ByteLevel step pre-tokenizes or decodes;
    otherwise it is SentencePiece-style (characters, "▁", byte fallback), as Llama's and Mistral's."""
    def has(node) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
        return isinstance(node, list) and any(has(v) for v in node)
    return has(spec.get("pre_tokenizer")) or has(spec.get("decoder"))


def _read_merges(model: dict, path: Path) -> list[tuple[str, str]]:
    """model.merges as pairs: "a b" strings (older files) or [a, b] lists."""
    raw = _need(model, "merges", path, "model.")
    try:
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw]
    except TypeError:  # an entry (or the field) that is no string or list
        merges = [()]
    if any(len(m) != 2 for m in merges):
        raise TokenizerError(f"{path} has a malformed 'model.merges' entry; each must be 'a b' or [a, b].")
    return merges


def _byte_bpe(model: dict, vocab: dict, added: dict, merges: list[tuple[str, str]], path: Path) -> BPEModel:
    try:
        return BPEModel({unicode_to_bytes(t): i for t, i in vocab.items() if t not in added},
                        [(unicode_to_bytes(a), unicode_to_bytes(b)) for a, b in merges],
                        ignore_merges=bool(model.get("ignore_merges")))
    except KeyError as e:
        raise TokenizerError(f"{path} is a BPE tokenizer that is not byte-level ({e.args[0]}); llmlab "
                             "reads byte-level BPE (GPT-2 alphabet) only.") from None


def _piece_bpe(model: dict, vocab: dict, added: dict, merges: list[tuple[str, str]], path: Path) -> PieceBPEModel:
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise TokenizerError(f"{path} is a BPE tokenizer with a subword prefix or word suffix, which llmlab does not "
                             "read; it reads byte-level BPE and SentencePiece-style BPE (Llama, Mistral).")
    unk = model.get("unk_token")
    try:
        return PieceBPEModel({t: i for t, i in vocab.items() if t not in added or t == unk}, merges,
                             unk_token=unk, byte_fallback=bool(model.get("byte_fallback")),
                             fuse_unk=bool(model.get("fuse_unk")), ignore_merges=bool(model.get("ignore_merges")))
    except KeyError as e:
        raise TokenizerError(f"{path}: {e.args[0]}; the file is corrupt: re-export it.") from None


def _read_template(post: dict | None, path: Path) -> tuple[list[str], list[str]]:
    if post is None or post.get("type") == "ByteLevel":
        return [], []
    kind = post.get("type")
    if kind == "Sequence":
        for p in post.get("processors", []):
            t = _read_template(p, path)
            if t != ([], []):
                return t
        return [], []
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [post["cls"][0]], [post["sep"][0]]
    if kind == "TemplateProcessing":
        pre, post_, seen = [], [], False
        for item in post["single"]:
            if "Sequence" in item:
                seen = True
            else:
                (post_ if seen else pre).append(item["SpecialToken"]["id"])
        return pre, post_
    raise TokenizerError(f"{path} has post_processor type {kind!r}, which llmlab does not read; "
                         "supported: TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel.")


def _token_name(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _read_hf_config(tok: Tokenizer, folder: Path) -> None:
    """bos/eos/pad and the chat template, from where transformers reads them."""
    cfg_path = folder / "tokenizer_config.json"
    cfg = {}
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"{cfg_path} is not valid JSON ({e}); fix or delete it.") from None
    for role in ("bos", "eos", "pad"):
        name = _token_name(cfg.get(f"{role}_token"))
        if name is not None and tok.token_to_id(name) is not None:
            setattr(tok, f"{role}_token", name)
    if isinstance(tok.model, PieceBPEModel):  # Llama's flags for add_special_tokens=True, as transformers reads them
        pre, suf = tok.template
        if isinstance(cfg.get("add_bos_token"), bool):
            pre = [tok.bos_token] if cfg["add_bos_token"] and tok.bos_token else []
        if isinstance(cfg.get("add_eos_token"), bool):
            suf = [tok.eos_token] if cfg["add_eos_token"] and tok.eos_token else []
        tok.template = (pre, suf)
    tpl = cfg.get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        tpl = next((t["template"] for t in tpl if t.get("name") == "default"), None)
    if (folder / "chat_template.jinja").is_file():
        tpl = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if tpl is not None:
        tok.chat_template = tpl


def load_vocab_txt(path: Path, lowercase: bool = True) -> Tokenizer:
    cfg_path = path.parent / "tokenizer_config.json"
    if cfg_path.is_file():
        lowercase = bool(json.loads(cfg_path.read_text(encoding="utf-8")).get("do_lower_case", lowercase))
    try:
        tokens = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise TokenizerError(f"{path} is not UTF-8 text, so it is no WordPiece vocab.txt (the kind of tokenizer a .txt "
                             "file is read as); pass a tokenizer.json, tokenizer.model, .tiktoken, .gguf or a model "
                             "directory.") from None
    vocab = {t: i for i, t in enumerate(tokens) if t}
    if "[UNK]" not in vocab:
        raise TokenizerError(f"{path} was read as a WordPiece vocab.txt (one token a line) and has no [UNK] token; a "
                             "BERT vocab.txt lists [PAD], [UNK], [CLS], [SEP], [MASK]: pass a tokenizer file, not a "
                             "corpus.")
    special = {t: vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab}
    return Tokenizer(WordPieceModel(vocab), normalizer=BertNormalizer(lowercase=lowercase).to_json(),
                     pre_tokenizer={"type": "BertPreTokenizer"}, special_tokens=special,
                     template=(["[CLS]"], ["[SEP]"]) if "[CLS]" in vocab and "[SEP]" in vocab else ([], []),
                     pad_token="[PAD]" if "[PAD]" in vocab else None)


def load_tiktoken(path: Path, pattern: str, special_tokens: dict[str, int] | None = None) -> Tokenizer:
    """Ranks from a .tiktoken file, split with `pattern`. The special tokens are `special_tokens`, else those of the
    encoding the file holds: known by its tiktoken name, or by a named pattern whose encoding has this many ranks."""
    compile_pattern(pattern)  # a bad regex is named before the file is read
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(raw.splitlines(), 1):
        if not line:
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(f"{path} line {n} is not 'base64 rank'; the rank file is corrupt.") from None
    if special_tokens is None:
        named = next((n for n in TIKTOKEN_SPECIALS if PATTERNS[n] == resolve_pattern(pattern)), None)
        encoding = _tiktoken_encoding(path) or (named if len(ranks) == _TIKTOKEN_SIZES.get(named) else None)
        special_tokens = TIKTOKEN_SPECIALS.get(encoding, {})
    specials = dict(special_tokens)
    taken = set(ranks.values())
    for s, i in specials.items():
        if i in taken:
            raise TokenizerError(f"special token {s!r} has id {i}, which {Path(path).name} already gives an ordinary "
                                 "token; pass special tokens whose ids the rank file leaves free.")
    eot = "<|endoftext|>" if "<|endoftext|>" in specials else None
    return Tokenizer(BPEModel(ranks), pre_tokenizer=split_pre_tokenizer(pattern), special_tokens=specials,
                     bos_token=eot, eos_token=eot)


def load_gguf(path: Path) -> Tokenizer:
    import gguf

    from llmlab.gguf_file import open_gguf

    try:
        reader = open_gguf(path)
    except Exception as e:  # the gguf package raises bare ValueError/struct errors on bad files
        raise TokenizerError(f"{path} is not a readable GGUF file ({e}); re-download it.") from None
    f = reader.fields

    def get(key: str, default=...):
        if key not in f:
            if default is ...:
                raise TokenizerError(f"{path} has no '{key}' field; it carries no byte-level BPE vocabulary.")
            return default
        field = f[key]
        if len(field.types) > 1 and field.types[0] == gguf.GGUFValueType.ARRAY:
            if field.types[1] == gguf.GGUFValueType.STRING:
                return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            if field.types[1] in (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64):
                return [float(field.parts[i][0]) for i in field.data]
            return [int(field.parts[i][0]) for i in field.data]
        return field.contents()

    if (kind := get("tokenizer.ggml.model")) == "llama":
        return _gguf_sentencepiece(get)
    if kind != "gpt2":
        raise TokenizerError(f"{path} has a '{kind}' tokenizer; llmlab reads GGUF byte-level BPE ('gpt2') and "
                             "SentencePiece BPE ('llama').")
    pre_name = get("tokenizer.ggml.pre", "default")
    if pre_name not in GGUF_PRE:
        raise TokenizerError(f"{path} uses pre-tokenizer '{pre_name}', which llmlab does not map yet; "
                             f"known: {', '.join(sorted(GGUF_PRE))}.")
    tokens, types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
    special = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3}  # CONTROL
    added = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 4}  # USER_DEFINED
    vocab = {unicode_to_bytes(t): i for i, t in enumerate(tokens) if t not in special and t not in added}
    bpe = BPEModel(vocab, [(unicode_to_bytes(a), unicode_to_bytes(b)) for a, b in merges])
    return Tokenizer(bpe, pre_tokenizer=GGUF_PRE[pre_name], special_tokens=special, added_tokens=added,
                     **_gguf_roles(get, tokens, add_bos=False))


def _gguf_roles(get, tokens: list[str], add_bos: bool) -> dict:
    """bos/eos/pad, the add_special_tokens template (as llama.cpp's add_bos/add_eos flags, `add_bos` when unset) and
    the chat template of a GGUF vocabulary, as Tokenizer keywords."""
    def role(key: str) -> str | None:
        i = get(key, None)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = role("tokenizer.ggml.bos_token_id"), role("tokenizer.ggml.eos_token_id")
    template = ([bos] if bos and get("tokenizer.ggml.add_bos_token", add_bos) else [],
                [eos] if eos and get("tokenizer.ggml.add_eos_token", False) else [])
    return {"bos_token": bos, "eos_token": eos, "pad_token": role("tokenizer.ggml.padding_token_id"),
            "template": template, "chat_template": get("tokenizer.chat_template", None)}


def _gguf_sentencepiece(get) -> Tokenizer:
    """A GGUF 'llama' vocabulary: SentencePiece BPE pieces with scores and types (llama.cpp's SPM tokenizer)."""
    tokens, types = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.token_type")
    scores = get("tokenizer.ggml.scores", None) or [0.0] * len(tokens)
    unk_id = get("tokenizer.ggml.unknown_token_id", None)
    if unk_id is None:  # the first UNKNOWN piece
        unk_id = next((i for i, ty in enumerate(types) if ty == 2), None)
    return sentencepiece_tokenizer(list(zip(tokens, scores, types)), unk_id=unk_id,
                                   byte_fallback=any(ty == 6 for ty in types),  # BYTE pieces
                                   add_dummy_prefix=bool(get("tokenizer.ggml.add_space_prefix", True)),
                                   remove_extra_whitespaces=bool(get("tokenizer.ggml.remove_extra_whitespaces", False)),
                                   **_gguf_roles(get, tokens, add_bos=True))  # SPM: BOS on unless said otherwise


# ---- save ---------------------------------------------------------------------------------------
def tokenizer_json(tok: Tokenizer) -> dict:
    """The `tokenizer.json` dict for `tok` (loadable by `tokenizers.Tokenizer.from_str`)."""
    ids = {**tok.added_tokens, **tok.special_tokens}
    if isinstance(tok.model, PieceBPEModel) and tok.model.user_defined:  # added tokens, as transformers has them
        ids.update({p: tok.model.vocab[p] for p in tok.model.user_defined})
        warnings.warn(f"this tokenizer has {len(tok.model.user_defined)} SentencePiece user-defined pieces (e.g. "
                      f"{min(tok.model.user_defined)!r}); tokenizer.json can only list them as added tokens, so text "
                      "around them can encode with one '▁' more or less than the .model/GGUF does (as transformers' "
                      "own conversion).", stacklevel=3)
    added = [{"id": i, "content": c, **{k: tok.token_options.get(c, {}).get(k, False) for k in TOKEN_OPTIONS},
              "special": c in tok.special_tokens} for c, i in sorted(ids.items(), key=lambda x: x[1])]
    if isinstance(tok.model, PieceBPEModel):
        pm: PieceBPEModel = tok.model
        vocab = {**pm.vocab, **ids}
        model = {"type": "BPE", "dropout": None, "unk_token": pm.unk_token, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": pm.fuse_unk, "byte_fallback": pm.byte_fallback,
                 "ignore_merges": pm.ignore_merges, "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
                 "merges": [[a, b] for a, b in pm.derive_merges()]}
        decoder = tok.decoder or decoder_spec(True)
    elif tok.byte_level:
        m: BPEModel = tok.model
        alpha = alphabet_strings(list(m.vocab))  # (merge parts are tokens too: BPEModel checks its merges)
        vocab = {alpha[b]: i for b, i in m.vocab.items()}
        vocab.update(ids)  # tokenizers renumbers added tokens that are missing from the model vocab
        model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                 # ranks mode returns a whole-token piece directly: tokenizers' ignore_merges
                 "ignore_merges": m.ranks_mode or m.ignore_merges, "vocab": vocab,
                 "merges": [[alpha[a], alpha[b]] for a, b in m.derive_merges()]}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    else:
        wp: WordPieceModel = tok.model
        model = {"type": "WordPiece", "unk_token": wp.unk_token, "continuing_subword_prefix": wp.prefix,
                 "max_input_chars_per_word": wp.max_input_chars_per_word, "vocab": wp.vocab}
        decoder = {"type": "WordPiece", "prefix": wp.prefix, "cleanup": wp.cleanup}
    pre, suf = tok.template
    post = None
    if pre or suf:
        item = lambda t, ty: {"SpecialToken": {"id": t, "type_id": ty}}  # noqa: E731
        seq = lambda s, ty: {"Sequence": {"id": s, "type_id": ty}}  # noqa: E731
        post = {"type": "TemplateProcessing",
                "single": [item(t, 0) for t in pre] + [seq("A", 0)] + [item(t, 0) for t in suf],
                "pair": [item(t, 0) for t in pre] + [seq("A", 0)] + [item(t, 0) for t in suf]
                        + [seq("B", 1)] + [item(t, 1) for t in suf],
                "special_tokens": {t: {"id": t, "ids": [tok.token_to_id(t)], "tokens": [t]} for t in {*pre, *suf}}}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": tok.normalizer, "pre_tokenizer": tok.pre_tokenizer, "post_processor": post,
            "decoder": decoder, "model": model}


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    path = Path(path)
    if path.suffix == ".json":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(tokenizer_json(tok), ensure_ascii=False), encoding="utf-8")
        return
    path.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, path / "tokenizer.json")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token,
           "eos_token": tok.eos_token, "pad_token": tok.pad_token, "clean_up_tokenization_spaces": False}
    if isinstance(tok.model, WordPieceModel):  # BERT's roles, which MLM tooling (data collators, fill-mask) needs
        cfg["unk_token"] = tok.model.unk_token
        cfg.update({f"{role}_token": t for role, t in (("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]"))
                    if t in tok.special_tokens})
    if tok.chat_template is not None:
        cfg["chat_template"] = tok.chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")


__all__ = ["PATTERNS", "compile_pattern", "load_tokenizer", "save_tokenizer", "tokenizer_json", "split_pre_tokenizer"]
