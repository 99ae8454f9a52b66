"""GGML weight types as integer grids: what each block stores, and the value of every code.

A GGML row of `in` columns is cut into blocks (32 columns for the legacy types, 256 for the
K-quants), each block into sub-blocks that share one scale (and, for the affine types, one min).
Every type's value of a code u, per (row, sub-block), is one formula here,
    w = s * (u - z) + b,
with s and b float32 exactly as llama.cpp's (and the gguf package's) dequantizers compute them
from the stored numbers, and z an integer:

| type | block | sub | u | z | s | b | bytes / block |
| --- | --- | --- | --- | --- | --- | --- | --- |
| q8_0 | 32 | 32 | -128..127 | 0 | fp16 d | 0 | 34 |
| q4_0 | 32 | 32 | 0..15 | 8 | fp16 d | 0 | 18 |
| q4_1 | 32 | 32 | 0..15 | 0 | fp16 d | fp16 m | 20 |
| q5_0 | 32 | 32 | 0..31 | 16 | fp16 d | 0 | 22 |
| q5_1 | 32 | 32 | 0..31 | 0 | fp16 d | fp16 m | 24 |
| q4_k | 256 | 32 | 0..15 | 0 | fp16 d * 6-bit sc | -(fp16 dmin * 6-bit m) | 144 |
| q5_k | 256 | 32 | 0..31 | 0 | fp16 d * 6-bit sc | -(fp16 dmin * 6-bit m) | 176 |
| q6_k | 256 | 16 | 0..63 | 32 | fp16 d * int8 sc | 0 | 210 |
| q3_k | 256 | 16 | 0..7 | 4 | fp16 d * 6-bit signed sc (stored + 32) | 0 | 110 |
| q2_k | 256 | 16 | 0..3 | 0 | fp16 d * 4-bit sc | -(fp16 dmin * 4-bit m) | 84 |

(The layouts of the bytes are in ggml_blocks.py.) A symmetric type has b = 0 and the affine ones
z = 0, so each product is the one llama.cpp's reference dequantizer computes: the weights a
GGMLLinear multiplies with are the file's weights bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GgmlType:
    name: str
    block: int  # columns per block
    sub: int  # columns per sub-block (one scale)
    umin: int
    umax: int
    zero: int  # the code of value 0 for the symmetric types; 0 for the affine ones
    affine: bool  # a min per sub-block (b), instead of a zero code
    nbytes: int  # bytes per block
    super_scales: bool  # K-quants: sub-block scales quantized against one fp16 scale per block
    scale_max: int = 0  # K-quants: the largest integer sub-block scale (and min): 63, 15, or signed 127, 31

    @property
    def bpw(self) -> float:
        return self.nbytes * 8 / self.block

    @property
    def levels(self) -> int:
        return self.umax - self.umin + 1

    def fits(self, in_features: int) -> bool:
        return in_features % self.block == 0

    def row_bytes(self, in_features: int) -> int:
        return in_features // self.block * self.nbytes


TYPES = {t.name: t for t in (
    GgmlType("q8_0", 32, 32, -128, 127, 0, False, 34, False),
    GgmlType("q4_0", 32, 32, 0, 15, 8, False, 18, False),
    GgmlType("q4_1", 32, 32, 0, 15, 0, True, 20, False),
    GgmlType("q5_0", 32, 32, 0, 31, 16, False, 22, False),
    GgmlType("q5_1", 32, 32, 0, 31, 0, True, 24, False),
    GgmlType("q2_k", 256, 16, 0, 3, 0, True, 84, True, 15),
    GgmlType("q3_k", 256, 16, 0, 7, 4, False, 110, True, 31),
    GgmlType("q4_k", 256, 32, 0, 15, 0, True, 144, True, 63),
    GgmlType("q5_k", 256, 32, 0, 31, 0, True, 176, True, 63),
    GgmlType("q6_k", 256, 16, 0, 63, 32, False, 210, True, 127),
)}

# llama.cpp's own substitutes when a row is not a whole number of 256-column super-blocks
# (llama_tensor_get_type's fallback: SmolLM2's 576 and Gemma 3's 640 columns take them)
FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def ggml_type(name: str) -> GgmlType:
    from ..errors import ConfigValueError
    t = TYPES.get(str(name).lower())
    if t is None:
        raise ConfigValueError(f"GGML type {name!r} unknown; slimformer writes codes into {', '.join(TYPES)}")
    return t


def type_for_width(name: str, in_features: int) -> GgmlType:
    """The type a tensor of this width gets: `name`, or llama.cpp's fallback when rows do not
    fill its blocks. Raises when not even the fallback fits (width not a multiple of 32)."""
    from ..errors import ConfigValueError
    t = ggml_type(name)
    if not t.fits(in_features) and t.name in FALLBACK:
        t = TYPES[FALLBACK[t.name]]
    if not t.fits(in_features):
        raise ConfigValueError(f"a weight of width {in_features} fills no {t.name} blocks ({t.block} columns); "
                               "GGUF needs widths that are multiples of 32")
    return t
