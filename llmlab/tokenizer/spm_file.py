"""SentencePiece `tokenizer.model` files (Llama 1/2, Mistral 7B, TinyLlama), read without sentencepiece.

The file is a protobuf `ModelProto`; the fields read here (numbers from sentencepiece_model.proto):

    ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
    SentencePiece   1 piece, 2 score (float), 3 type (1 normal, 2 unknown, 3 control, 4 user-defined,
                    5 unused, 6 byte)
    TrainerSpec     3 model_type (1 unigram, 2 bpe, 3 word, 4 char), 24 treat_whitespace_as_suffix,
                    35 byte_fallback, 40-43 unk/bos/eos/pad ids
    NormalizerSpec  1 name, 2 precompiled_charsmap, 3 add_dummy_prefix, 4 remove_extra_whitespaces,
                    5 escape_whitespaces

BPE models with the identity normalizer are read (what Llama and Mistral ship); others are refused with a
reason. The tokenizer is written as Hugging Face's Llama layout (normalizer: prepend "▁" and replace
spaces; decoder: "▁" -> " ", byte fallback, strip the dummy space), so `save` gives a tokenizer.json
that `tokenizers` encodes identically. Control pieces become special tokens (recognised in text only
where allowed). User-defined pieces are matched whole in the normalized text, after the dummy prefix, as
SentencePiece matches them; a saved tokenizer.json lists them as added tokens, which `tokenizers` (and
llmlab reading that file) cut out of the raw text first, as transformers' own conversion does: around
them the two can differ by a "▁" (e.g. at the start of a text).
"""

from __future__ import annotations

import struct
from pathlib import Path

from llmlab.errors import TokenizerError
from llmlab.tokenizer.spm import SPACE, PieceBPEModel

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def _fields(buf: bytes, where: str) -> dict[int, list]:
    """Protobuf wire format -> {field number: [values]}: ints for varints, bytes for length-delimited
    fields, raw 4/8 bytes for fixed ones."""
    out: dict[int, list] = {}
    pos, n = 0, len(buf)

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= n or shift > 63:
                raise ValueError(f"truncated varint in {where}")
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    while pos < n:
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size = varint()
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unknown wire type {wire} in {where}")
        if pos > n:
            raise ValueError(f"field {num} of {where} runs past the end")
        out.setdefault(num, []).append(value)
    return out


def _last(f: dict[int, list], num: int, default):
    return f[num][-1] if num in f else default


def _int32(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def normalizer_spec(add_dummy_prefix: bool, remove_extra_whitespaces: bool) -> dict | None:
    """tokenizer.json normalizer doing what SentencePiece's identity normalizer does with these flags."""
    steps = []
    if remove_extra_whitespaces:  # the identity rule's whitespace is " ": leading spaces go, runs become one
        # (lookarounds, not ^ and $: in tokenizers' Oniguruma those match at every line break)
        steps += [{"type": "Replace", "pattern": {"Regex": "(?<![\\s\\S]) +"}, "content": ""},
                  {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
    if add_dummy_prefix:
        steps.append({"type": "Prepend", "prepend": SPACE})
    steps.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})
    if remove_extra_whitespaces:  # at the end SentencePiece drops trailing "▁", escaped spaces and literal ones alike
        steps.append({"type": "Replace", "pattern": {"Regex": SPACE + "+(?![\\s\\S])"}, "content": ""})
    return {"type": "Sequence", "normalizers": steps}


def decoder_spec(add_dummy_prefix: bool, remove_extra_whitespaces: bool = False) -> dict:
    """tokenizer.json decoder for a SentencePiece model, as Llama 2's on the Hub: "▁" -> " ", byte pieces joined,
    the dummy space stripped (every leading space with remove_extra_whitespaces). For the ids an encoder gives it
    decodes as SentencePiece; llmlab's own decode of a .model or GGUF follows SentencePiece for any ids."""
    steps = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
             {"type": "Fuse"}]
    if add_dummy_prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    if remove_extra_whitespaces:
        steps.append({"type": "Strip", "content": " ", "start": 1 << 20, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def load_sentencepiece(path: str | Path):
    """A `Tokenizer` from a SentencePiece BPE model file."""
    path = Path(path)
    try:
        model = _fields(path.read_bytes(), "ModelProto")
        pieces = []
        for raw in model.get(1, []):
            p = _fields(raw, "SentencePiece")
            score = struct.unpack("<f", _last(p, 2, b"\0\0\0\0"))[0]
            pieces.append((_last(p, 1, b"").decode("utf-8"), score, _last(p, 3, NORMAL)))
        trainer = _fields(_last(model, 2, b""), "TrainerSpec")
        norm = _fields(_last(model, 3, b""), "NormalizerSpec")
    except (ValueError, UnicodeDecodeError, struct.error, TypeError) as e:
        raise TokenizerError(f"{path} is not a readable SentencePiece model ({e}); the file is corrupt or not a "
                             "tokenizer.model: re-download it.") from None
    if not pieces:
        raise TokenizerError(f"{path} holds no pieces; it is not a SentencePiece tokenizer.model (or is truncated).")
    kind = _MODEL_TYPES.get(_last(trainer, 3, 1), "unknown")
    if kind != "bpe":
        raise TokenizerError(f"{path} is a SentencePiece {kind} model; llmlab reads SentencePiece BPE models "
                             "(Llama, Mistral), not unigram (T5, ALBERT, XLNet), char or word ones.")
    name = _last(norm, 1, b"").decode("utf-8", "replace")
    if _last(norm, 2, b"") or name not in ("", "identity"):
        raise TokenizerError(f"{path} normalizes text with SentencePiece's '{name or 'precompiled'}' rules, which "
                             "llmlab does not implement; it reads models with the identity normalizer "
                             "(Llama, Mistral). Use the model's tokenizer.json if it has one.")
    if _last(trainer, 24, 0) or not _last(norm, 5, 1):
        raise TokenizerError(f"{path} puts '▁' after words or does not escape spaces; llmlab reads the usual layout "
                             "(spaces as a leading '▁').")

    def role(num: int, default: int) -> str | None:
        i = _int32(_last(trainer, num, default))
        return pieces[i][0] if 0 <= i < len(pieces) and pieces[i][2] == CONTROL else None

    bos = role(41, 1)
    return sentencepiece_tokenizer(pieces, unk_id=_int32(_last(trainer, 40, 0)),
                                   byte_fallback=bool(_last(trainer, 35, 0)), add_dummy_prefix=bool(_last(norm, 3, 1)),
                                   remove_extra_whitespaces=bool(_last(norm, 4, 1)), bos_token=bos,
                                   eos_token=role(42, 2), pad_token=role(43, -1),
                                   template=([bos] if bos else [], []))  # add_special_tokens: BOS first, as Llama's


def sentencepiece_tokenizer(pieces: list[tuple[str, float, int]], *, unk_id: int | None, byte_fallback: bool,
                            add_dummy_prefix: bool, remove_extra_whitespaces: bool, **roles):
    """The Tokenizer of SentencePiece pieces (piece, score, type), from a .model file or a GGUF 'llama' vocabulary:
    control pieces become special tokens, normal and unused ones are made by merges, user-defined ones are matched
    whole; `roles` are Tokenizer keywords (bos/eos/pad token, template, chat template)."""
    from llmlab.tokenizer.tokenizer import Tokenizer

    vocab = {p: i for i, (p, _, ty) in enumerate(pieces) if ty != CONTROL}
    specials = {p: i for i, (p, _, ty) in enumerate(pieces) if ty == CONTROL}
    scores = {p: sc for p, sc, ty in pieces if ty in (NORMAL, UNUSED)}
    unk = pieces[unk_id][0] if unk_id is not None and 0 <= unk_id < len(pieces) and pieces[unk_id][2] == UNKNOWN \
        else None
    if unk is not None:  # tokenizers keeps the unknown piece among the special added tokens
        specials[unk] = vocab[unk]
    dummy, extra_ws = add_dummy_prefix, remove_extra_whitespaces
    m = PieceBPEModel(vocab, scores=scores, unk_token=unk, byte_fallback=byte_fallback,
                      unused=frozenset(p for p, _, ty in pieces if ty == UNUSED),
                      user_defined=frozenset(p for p, _, ty in pieces if ty == USER_DEFINED), spm_decode=(dummy, extra_ws))
    return Tokenizer(m, normalizer=normalizer_spec(dummy, extra_ws), special_tokens=specials,
                     decoder=decoder_spec(dummy, extra_ws), **roles)


def is_sentencepiece_name(name: str) -> bool:
    """tokenizer.model, spiece.model, or a versioned name such as tokenizer.model.v3."""
    name = name.lower()
    return name.endswith(".model") or ".model.v" in name
