"""model/gguf_header.py reads a GGUF header as the gguf package's GGUFReader does, without decoding
the arrays nobody asked for; written by the gguf package's own GGUFWriter, one key of every type."""
from __future__ import annotations

import gguf  # a dependency of slimformer: absent is a failure, not a skip
import numpy as np
import pytest

from slimformer.errors import ModelNotFoundError
from slimformer.model.gguf_header import SMALL_ARRAY, read_header


def _write(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.125)
    w.add_uint64("t.u64", 2**40 + 3)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", 1 / 3)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo wörld")
    w.add_array("t.small", [3, 1, 4, 1, 5])
    w.add_array("t.flags", [True, False, True])
    w.add_array("t.big", list(range(SMALL_ARRAY + 7)))
    w.add_array("tokenizer.ggml.tokens", ["<s>", "▁a", "b", "ü"])
    w.add_tensor("blk.0.w", np.ones((3, 8), dtype=np.float32))
    w.add_tensor("blk.1.w", np.zeros((5,), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_header_equals_gguf_reader(tmp_path):
    path = tmp_path / "m.gguf"
    _write(path)
    ref = gguf.GGUFReader(str(path))
    h = read_header(path, arrays=("tokenizer.ggml.tokens",))
    for key, f in ref.fields.items():
        if key.startswith("GGUF.") or key == "t.big":
            continue
        want, got = f.contents(), h.values[key]
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, key
    assert h.values["tokenizer.ggml.tokens"] == ["<s>", "▁a", "b", "ü"]
    assert "t.big" not in h.values and h.lengths["t.big"] == SMALL_ARRAY + 7  # skipped, counted
    assert h.tensors == [(t.name, tuple(int(x) for x in t.shape), int(t.tensor_type)) for t in ref.tensors]
    plain = read_header(path)  # string arrays not asked for: length only
    assert "tokenizer.ggml.tokens" not in plain.values and plain.lengths["tokenizer.ggml.tokens"] == 4
    assert plain.values["t.str"] == "héllo wörld" and plain.tensors == h.tensors


def test_truncated_or_foreign_file_is_one_line_error(tmp_path):
    path = tmp_path / "m.gguf"
    _write(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:200])
    with pytest.raises(ModelNotFoundError, match="not a readable GGUF file"):
        read_header(cut)
    foreign = tmp_path / "x.gguf"
    foreign.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ModelNotFoundError, match="no GGUF magic"):
        read_header(foreign)


def test_types_and_prefix_arrays(tmp_path):
    path = tmp_path / "m.gguf"
    _write(path)
    h = read_header(path, arrays=("tokenizer.",))
    assert h.values["tokenizer.ggml.tokens"] == ["<s>", "▁a", "b", "ü"]
    ref = gguf.GGUFReader(str(path))
    for key, f in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        vtype, etype = h.types[key]
        assert vtype == int(f.types[0]) and (etype is None) == (len(f.types) == 1), key
        if etype is not None:
            assert etype == int(f.types[-1]), key
