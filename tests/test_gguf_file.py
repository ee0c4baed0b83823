"""open_gguf: gguf-py's reader over a plain ndarray view of the mapping gives the same fields and tensors as
GGUFReader itself, and its slices are not memmaps (each memmap slice runs Python: the slow parse it avoids)."""

import warnings

import numpy as np
import pytest
import torch

from llmlab.gguf_file import open_gguf

gguf = pytest.importorskip("gguf")


def assert_same_fields(ours, ref) -> None:
    assert list(ours.fields) == list(ref.fields)
    for key, f in ours.fields.items():
        g = ref.fields[key]
        assert (f.offset, f.name, f.types, f.data) == (g.offset, g.name, g.types, g.data), key
        assert len(f.parts) == len(g.parts), key
        for a, b in zip(f.parts, g.parts, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), key
    assert ours.data_offset == ref.data_offset


def test_same_fields_and_tensors_as_gguf_reader(tmp_path):
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_token_list([f"tok{i}".encode() for i in range(300)] + ["é😀".encode(), b""])
    w.add_token_merges([f"t o{i}" for i in range(200)])
    w.add_token_scores([float(i) / 3 for i in range(302)])
    w.add_array("test.nested", [[1, 2], [3]])  # arrays of arrays: the reader's own walk
    w.add_array("test.bools", [True, False, True])
    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"):
        kind = getattr(gguf.GGUFValueType, name.upper())
        w.add_key_value(f"test.{name}", list(range(1, 6)), gguf.GGUFValueType.ARRAY, sub_type=kind)
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((8, 32)).astype(np.float32),
               "b.weight": rng.standard_normal((64,)).astype(np.float16)}
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours, ref = open_gguf(path), gguf.GGUFReader(str(path))
    assert type(ours.data) is np.ndarray and isinstance(ref.data, np.memmap)
    assert_same_fields(ours, ref)
    assert ours.fields["test.int16"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT16]
    tokens = ours.fields["tokenizer.ggml.tokens"]
    assert [bytes(tokens.parts[i]) for i in tokens.data][-2:] == ["é😀".encode(), b""]
    for t, u in zip(ours.tensors, ref.tensors, strict=True):
        assert t.name == u.name and np.array_equal(t.data, u.data) and np.array_equal(t.data, tensors[t.name])


def test_empty_arrays_are_the_readers(tmp_path):
    """GGUFWriter refuses empty arrays, other writers do not: a file of two, written by hand (GGUF v3)."""
    import struct

    def kv(key: str, item_type: int) -> bytes:  # key, type ARRAY, item type, length 0
        return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IIQ", 9, item_type, 0)

    path = tmp_path / "empty.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv("test.ints", 5) + kv("test.strings", 8))
    ours, ref = open_gguf(path), gguf.GGUFReader(str(path))
    assert_same_fields(ours, ref)
    assert ours.fields["test.strings"].types == [gguf.GGUFValueType.ARRAY] and ours.fields["test.ints"].data == []


@pytest.mark.artifact
def test_smollm2_fields_are_the_readers(tmp_path):
    """The real file (49,152 tokens and 48,900 merges): the same parts as gguf-py's own walk of the metadata (over
    a plain view, as the reader over its memmap is the test above; ~5 s slower)."""
    from llmlab.artifacts import fetch

    class PlainWalk(gguf.GGUFReader):  # gguf-py's parse, only without memmap slices
        data = property(lambda self: self._plain, lambda self, v: setattr(self, "_plain", v.view(type=np.ndarray)))

    path = fetch("smollm2-135m")
    assert_same_fields(open_gguf(path), PlainWalk(str(path)))


@pytest.mark.parametrize("cut", ["garbage", "in a string array", "in a scalar array"])
def test_a_corrupt_file_gives_what_gguf_reader_gives(tmp_path, cut):
    path = tmp_path / "broken.gguf"
    if cut == "garbage":
        path.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    else:  # a file cut short inside its metadata arrays
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_token_list([f"token{i}".encode() for i in range(100)])
        w.add_token_scores([float(i) for i in range(100)])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        raw = path.read_bytes()
        end = raw.index(b"token50") if cut == "in a string array" else len(raw) - 200
        path.write_bytes(raw[:end])
    try:
        ref = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - whatever the reader raises, ours must raise too
        with pytest.raises(type(e)):
            open_gguf(path)
    else:  # gguf-py reads a scalar array cut at the end as a shorter one, without an error: so must ours
        assert cut == "in a scalar array"
        assert_same_fields(open_gguf(path), ref)


def test_the_last_file_is_parsed_once_until_it_changes(tmp_path):
    path = tmp_path / "t.gguf"

    def write(n):
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_block_count(n)
        w.add_token_list([b"x"] * n)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    write(3)
    first = open_gguf(path)
    assert open_gguf(str(path)) is first  # model, then tokenizer: one parse
    write(5)  # rewritten: a new parse
    again = open_gguf(path)
    assert again is not first and int(again.fields["llama.block_count"].parts[-1][0]) == 5


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q5_0", "F16"])
def test_dequantize_is_bitwise_gguf_py(qtype):
    """The torch decoders of Q4_0 / Q4_1 / Q8_0 give gguf-py's fp32 values bit for bit; other types go to it."""
    from llmlab.model.gguf_quants import dequantize

    kind = getattr(gguf.GGMLQuantizationType, qtype)
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((6, 96)) * np.array([[1.0], [0.01], [100.0], [0.0], [1.0], [3.0]])).astype(np.float32)
    w[4, ::7] = [np.finfo(np.float16).max / 4] * len(w[4, ::7])  # large scales
    raw = gguf.quants.quantize(w, kind) if qtype != "F16" else w.astype(np.float16)
    ref = gguf.quants.dequantize(raw, kind)
    raw.setflags(write=False)  # as a GGUFReader's memory map: read-only, and no warning about it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = dequantize(raw, kind)
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape == (6, 96)
    assert np.array_equal(got.numpy().view(np.uint32), ref.astype(np.float32).view(np.uint32))
    before = raw.copy()
    got.fill_(7.0)  # writable, and not a view of the file's bytes
    assert np.array_equal(raw, before)
