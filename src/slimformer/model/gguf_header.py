"""A GGUF file's header (metadata keys and tensor descriptions) read without its tensor data.

The gguf package's GGUFReader builds a numpy view for every element of every array, which for a
262,144-token vocabulary (Gemma 3) takes ~30 s on this CPU before the first scalar key can be read.
Opening a GGUF needs a handful of scalars, the per-layer arrays and the vocabulary's length, so this
reads the layout the GGUF spec defines (ggml/docs/gguf.md: little-endian, version 2 or 3) and skips
the arrays nobody asked for; the vocabulary itself is decoded only when `arrays` names it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelNotFoundError

# value types of the spec: code -> struct format (STRING = 8 and ARRAY = 9 are handled apart)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
SMALL_ARRAY = 4096  # numeric / bool arrays up to this length are always read (per-layer facts)


@dataclass
class GGUFHeader:
    values: dict = field(default_factory=dict)        # key -> scalar, or list for arrays read
    lengths: dict = field(default_factory=dict)       # array key -> its element count (read or not)
    types: dict = field(default_factory=dict)         # key -> (value type, element type or None)
    tensors: list = field(default_factory=list)       # (name, shape, ggml type code)


class _Reader:
    def __init__(self, f):
        self.f = f

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("the header ends early")
        return struct.unpack("<" + fmt, data)

    def string(self) -> str:
        (n,) = self.take("Q")
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError("a string runs past the end of the file")
        return data.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            (n,) = self.take("Q")
            self.f.seek(n, 1)

    def value(self, vtype: int, key: str, arrays: tuple[str, ...], header: GGUFHeader):
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])[0]
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown value type {vtype} for {key}")
        etype, count = self.take("IQ")
        header.lengths[key] = count
        header.types[key] = (_ARRAY, etype)
        wanted = key in arrays or any(a.endswith(".") and key.startswith(a) for a in arrays)
        if etype == _STRING:
            if wanted:
                return [self.string() for _ in range(count)]
            self.skip_strings(count)
            return None
        if etype not in _SCALAR:
            raise ValueError(f"array {key} of type {etype} is not supported")
        fmt = _SCALAR[etype]
        if wanted or count <= SMALL_ARRAY:
            return list(self.take(f"{count}{fmt}")) if count else []
        self.f.seek(count * struct.calcsize("<" + fmt), 1)
        return None


def read_header(path: str | Path, arrays: tuple[str, ...] = ()) -> GGUFHeader:
    """Every scalar key, every small numeric array, the arrays named in `arrays` (a name, or a
    prefix ending in "."; string arrays such as tokenizer.ggml.tokens are decoded only then) and
    the tensor table."""
    path = Path(path)
    header = GGUFHeader()
    try:
        with open(path, "rb") as f:
            r = _Reader(f)
            if f.read(4) != b"GGUF":
                raise ValueError("no GGUF magic")
            (version,) = r.take("I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} (2 and 3 are read; big-endian files are not)")
            n_tensors, n_kv = r.take("QQ")
            for _ in range(n_kv):
                key = r.string()
                (vtype,) = r.take("I")
                header.types.setdefault(key, (vtype, None))
                v = r.value(vtype, key, arrays, header)
                if v is not None:
                    header.values[key] = v
            for _ in range(n_tensors):
                name = r.string()
                (n_dims,) = r.take("I")
                dims = r.take(f"{n_dims}Q")
                ttype, _offset = r.take("IQ")
                header.tensors.append((name, tuple(dims), ttype))
    except (OSError, ValueError, struct.error) as e:
        raise ModelNotFoundError(f"{path} is not a readable GGUF file ({e}); pass a complete .gguf "
                                 "file") from None
    return header
