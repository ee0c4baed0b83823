"""open_gguf: gguf-py's reader over a plain ndarray view of the mapping gives the same fields and tensors as
GGUFReader itself, and its slices are not memmaps (each memmap slice runs Python: the slow parse it avoids)."""

import warnings

import numpy as np
import pytest
import torch

from llmlab.gguf_file import open_gguf

gguf = pytest.importorskip("gguf")


def test_same_fields_and_tensors_as_gguf_reader(tmp_path):
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_token_list([f"tok{i}".encode() for i in range(300)] + ["é😀".encode()])
    w.add_token_merges([f"t o{i}" for i in range(200)])
    w.add_token_scores([float(i) / 3 for i in range(301)])
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
    assert list(ours.fields) == list(ref.fields)
    for key, f in ours.fields.items():
        g = ref.fields[key]
        assert f.types == g.types and f.data == g.data, key
        assert all(np.array_equal(a, b) for a, b in zip(f.parts, g.parts, strict=True)), key
    assert [bytes(ours.fields["tokenizer.ggml.tokens"].parts[i]) for i in ours.fields["tokenizer.ggml.tokens"].data][-1] \
        == "é😀".encode()
    for t, u in zip(ours.tensors, ref.tensors, strict=True):
        assert t.name == u.name and np.array_equal(t.data, u.data) and np.array_equal(t.data, tensors[t.name])


def test_a_corrupt_file_raises_as_gguf_reader_does(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(Exception) as ours:
        open_gguf(path)
    with pytest.raises(Exception) as ref:
        gguf.GGUFReader(str(path))
    assert type(ours.value) is type(ref.value)


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
