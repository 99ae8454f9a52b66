"""GGML block types for weights, and slimformer's integer codes written into them exactly.

A GGML block covers 32 consecutive input columns of one row (llama.cpp's ggml-common.h):
- Q8_0: fp16 d, 32 x int8 q; w = d * q.
- Q4_0: fp16 d, 16 bytes; byte j holds element j in its low nibble and element j + 16 in its
  high nibble, u in [0, 15]; w = d * (u - 8).
- Q4_1: fp16 d, fp16 m, 16 bytes as Q4_0; w = d * u + m.

slimformer stores w = s * (q - z) with q in [-2^(b-1), 2^(b-1) - 1] per (row, group). When a group
is a whole number of 32-column blocks, every block of it repeats the group's scale, so:
int8 symmetric -> Q8_0 (d = s, q as is); int4 symmetric -> Q4_0 (d = s, u = q + 8);
int4 asymmetric -> Q4_1 (d = s, u = q + 8, m = -s * (z + 8)). The codes go in bit for bit; only
the scales are rounded to fp16, as every GGUF file rounds them.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigValueError
from ..nn.ggml_blocks import fp16_bytes as _fp16_bytes, nibbles as _nibbles

BLOCK = 32
# the types a float weight can be written in (export --type; the token table's type); the legacy
# ones by llama.cpp's reference round-to-nearest (the gguf package), the K-quants on slimformer's
# grid (ggml_grid.choose_grid, round-to-nearest), both after llama.cpp's width fallbacks
REFERENCE_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
DENSE_TYPES = ("f32", "f16", *REFERENCE_TYPES, "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")


def fitting_type(bits: int, group_size: int, symmetric: bool, in_features: int) -> str | None:
    """The GGML type that holds this grid exactly, or None."""
    if in_features % BLOCK or group_size % BLOCK:
        return None
    if bits == 8 and symmetric:
        return "q8_0"
    if bits == 4:
        return "q4_0" if symmetric else "q4_1"
    return None


FITS = "int8 symmetric -> q8_0, int4 symmetric -> q4_0, int4 asymmetric -> q4_1 (groups a multiple of " \
       "32 columns, or per-channel, and input width a multiple of 32)"


def _block_params(values: torch.Tensor, group_size: int, in_features: int) -> np.ndarray:
    """Per-(row, group) values repeated for every 32-column block: [rows, in / 32]."""
    width = group_size or in_features
    group_of_block = torch.arange(0, in_features, BLOCK) // width
    return values[:, group_of_block].float().numpy()


def pack_codes(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int,
               symmetric: bool) -> tuple[np.ndarray, str]:
    """slimformer codes q [rows, in] -> (GGML blocks as bytes [rows, in / 32 * block bytes], type)."""
    rows, in_f = q.shape
    kind = fitting_type(bits, group_size, symmetric, in_f)
    if kind is None:
        raise ConfigValueError(f"int{bits} g{group_size or 'channel'} {'sym' if symmetric else 'asym'} codes "
                               f"of width {in_f} have no exact GGUF type; GGUF holds {FITS}")
    nb = in_f // BLOCK
    d = _fp16_bytes(_block_params(scales, group_size, in_f))
    codes = q.to(torch.int16).numpy().reshape(rows, nb, BLOCK)
    if kind == "q8_0":
        body = [d, codes.astype(np.int8).view(np.uint8)]
    else:
        u = _nibbles((codes + 8).astype(np.uint8))
        body = [d, u]
        if kind == "q4_1":
            s = _block_params(scales, group_size, in_f)
            z = _block_params(zeros, group_size, in_f)
            body = [d, _fp16_bytes(-s * (z + 8)), u]
    return np.concatenate(body, axis=-1).reshape(rows, -1), kind


def unpack_blocks(data: np.ndarray, kind: str, rows: int, in_f: int) -> np.ndarray:
    """GGML blocks -> fp32 weight [rows, in] (written from the layout above, for checks)."""
    blocks = data.reshape(rows, in_f // BLOCK, -1)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)[..., None]
    if kind == "q8_0":
        return (d * blocks[..., 2:].view(np.int8)).reshape(rows, in_f)
    off = 4 if kind == "q4_1" else 2
    qs = blocks[..., off:]
    u = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
    if kind == "q4_0":
        return (d * (u - 8)).reshape(rows, in_f)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)[..., None]
    return (d * u + m).reshape(rows, in_f)


def dense_tensor(w: torch.Tensor, kind: str) -> tuple[np.ndarray, str]:
    """A float weight [rows, in] (or a vector) in the GGML type `kind`, or llama.cpp's fallback
    for it where rows are not whole 256-column super-blocks. Vectors stay F32."""
    a = w.detach().float().contiguous().numpy()
    if a.ndim == 1 or kind == "f32":
        return a, "f32"
    if kind == "f16":
        return a.astype(np.float16), "f16"
    if a.shape[-1] % BLOCK:
        raise ConfigValueError(f"a weight of width {a.shape[-1]} cannot be stored as {kind} (blocks of "
                               f"{BLOCK}); use --type f16 or f32")
    from ..nn.ggml_types import type_for_width
    t = type_for_width(kind, a.shape[-1])
    if t.name in REFERENCE_TYPES:
        from gguf import GGMLQuantizationType, quants
        return quants.quantize(a, getattr(GGMLQuantizationType, t.name.upper())), t.name
    from ..nn.ggml_blocks import pack
    from ..nn.ggml_grid import choose_grid
    parts = []
    for r in range(0, a.shape[0], ROWS):  # bounded temporaries for large tables (the scale search)
        x = torch.from_numpy(a[r:r + ROWS])
        grid = choose_grid(x, t)
        parts.append(pack(grid.quantize(x), t, grid.stored))
    return np.concatenate(parts), t.name


ROWS = 8192  # rows per chunk of a float weight rounded onto a K-quant grid
