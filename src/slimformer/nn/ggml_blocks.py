"""GGML blocks as bytes: codes u and the stored numbers of a GgmlGrid, laid out as llama.cpp's
ggml-common.h declares each block (little-endian; fp16 as IEEE half):

- q8_0: d, 32 x int8 u.
- q4_0 / q4_1: d [, m], 16 bytes: byte j holds u_j in its low nibble and u_{j+16} in its high one.
- q5_0 / q5_1: d [, m], qh (a uint32 whose bit j is bit 4 of u_j), then the low nibbles as q4_0.
- q4_k: d, dmin, 12 bytes of 6-bit scales and mins (below), 128 bytes: in each 64-column chunk c,
  byte 32c + l holds u_{64c+l} (low nibble) and u_{64c+32+l} (high nibble).
- q5_k: d, dmin, the 12 scale bytes, qh (32 bytes: bit i of byte l is bit 4 of u_{32i+l}), then
  the low nibbles as q4_k.
- q6_k: ql (128 bytes), qh (64), 16 int8 scales, d. Column e = 128h + 32k + l (k = 0..3):
  low 4 bits in ql byte 64h + 32(k mod 2) + l, nibble k div 2; bits 4-5 in qh byte 32h + l at 2k.
- q3_k: hmask (32 bytes: bit i of byte l is bit 2 of u_{32i+l}), qs (64 bytes: in each 128-column
  half h, byte 32h + l holds bits 0-1 of u_{128h+32k+l} at bits 2k), 12 scale bytes (6-bit
  sc + 32: the low 4 bits of scale i in byte i mod 8, nibble i div 8; its top 2 bits in byte
  8 + i mod 4 at bits 2 (i div 4)), d.
- q2_k: 16 scale bytes (4-bit sc low, 4-bit m high), qs as q3_k's, d, dmin.
- The K-quants' 12 scale bytes for 8 sub-blocks (sc, m 6-bit): byte j < 4 holds sc_j and the top
  2 bits of sc_{j+4} (bits 6-7); byte 4 + j holds m_j and the top 2 bits of m_{j+4}; byte 8 + j
  the low 4 bits of sc_{j+4} and of m_{j+4}.
"""
from __future__ import annotations

import numpy as np
import torch

from .ggml_types import GgmlType


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)[..., None].view(np.uint8)  # [..., 2], little-endian


def nibbles(u: np.ndarray) -> np.ndarray:
    """u [..., 32] in [0, 15] -> [..., 16] bytes (element j low, j + 16 high)."""
    return (u[..., :16] | (u[..., 16:] << 4)).astype(np.uint8)


def _high_bits_u32(u: np.ndarray) -> np.ndarray:
    """Bit 4 of each of 32 codes as one little-endian uint32: [..., 32] -> [..., 4] bytes."""
    bits = ((u >> 4) & 1).astype(np.uint32)
    word = (bits << np.arange(32, dtype=np.uint32)).sum(-1, dtype=np.uint32)
    return word[..., None].view(np.uint8)


def _k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """[..., 8] 6-bit scales and mins -> [..., 12] bytes."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    lo = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    mid = m[..., :4] | ((m[..., 4:] >> 4) << 6)
    hi = (sc[..., 4:] & 0x0F) | ((m[..., 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], -1).astype(np.uint8)


def _k_low_nibbles(u: np.ndarray) -> np.ndarray:
    """[..., 256] -> [..., 128]: per 64-column chunk, 32 bytes of (first half low, second high)."""
    c = u.reshape(*u.shape[:-1], 4, 2, 32) & 0x0F
    return (c[..., 0, :] | (c[..., 1, :] << 4)).reshape(*u.shape[:-1], 128).astype(np.uint8)


def pack(u: torch.Tensor, t: GgmlType, stored: dict) -> np.ndarray:
    """Codes u [rows, in] (t.umin..t.umax) and the grid's stored numbers -> bytes [rows, row bytes]."""
    rows, cols = u.shape
    nb = cols // t.block
    c = u.to(torch.int16).numpy().reshape(rows, nb, t.block)
    st = {k: v.numpy() for k, v in stored.items()}
    d = fp16_bytes(st["d"])  # [rows, nb, 2]
    if t.name == "q8_0":
        parts = [d, c.astype(np.int8).view(np.uint8)]
    elif t.name in ("q4_0", "q4_1", "q5_0", "q5_1"):
        cu = c.astype(np.uint8)
        parts = [d] + ([fp16_bytes(st["m"])] if t.affine else [])
        if t.name.startswith("q5"):
            parts.append(_high_bits_u32(cu))
        parts.append(nibbles(cu & 0x0F))
    elif t.name in ("q4_k", "q5_k"):
        cu = c.astype(np.uint8)
        scales = _k_scales(st["sc"].reshape(rows, nb, 8), st["m"].reshape(rows, nb, 8))
        parts = [d, fp16_bytes(st["dmin"]), scales]
        if t.name == "q5_k":
            bits = ((cu.reshape(rows, nb, 8, 32) >> 4) & 1).astype(np.uint8)
            parts.append((bits << np.arange(8, dtype=np.uint8)[:, None]).sum(2, dtype=np.uint8))
        parts.append(_k_low_nibbles(cu))
    elif t.name in ("q3_k", "q2_k"):
        cu = c.astype(np.uint8)
        two = (cu.reshape(rows, nb, 2, 4, 32) & 0x03) << (2 * np.arange(4, dtype=np.uint8))[:, None]
        qs = two.sum(3, dtype=np.uint8).reshape(rows, nb, 64)
        if t.name == "q2_k":
            sc = st["sc"].reshape(rows, nb, 16).astype(np.uint8) | (st["m"].reshape(rows, nb, 16).astype(np.uint8) << 4)
            parts = [sc, qs, d, fp16_bytes(st["dmin"])]
        else:
            bits = ((cu.reshape(rows, nb, 8, 32) >> 2) & 1).astype(np.uint8)
            hmask = (bits << np.arange(8, dtype=np.uint8)[:, None]).sum(2, dtype=np.uint8)
            v = (st["sc"].reshape(rows, nb, 16).astype(np.int16) + 32).astype(np.uint8)  # 0..63
            low = (v[..., :8] & 0x0F) | ((v[..., 8:] & 0x0F) << 4)
            top = (v >> 4).reshape(rows, nb, 4, 4)  # [i div 4, i mod 4]
            high = (top << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(2, dtype=np.uint8)
            parts = [hmask, qs, low.astype(np.uint8), high, d]
    elif t.name == "q6_k":
        cu = c.astype(np.uint8).reshape(rows, nb, 2, 4, 32)  # [h, k, l]
        low, high = cu & 0x0F, (cu >> 4) & 0x03
        # ql byte 64h + 32(k mod 2) + l takes nibble k div 2: k = 0, 1 low nibbles, k = 2, 3 high
        ql = (low[..., 0:2, :] | (low[..., 2:4, :] << 4)).reshape(rows, nb, 128)
        qh = (high[..., 0, :] | (high[..., 1, :] << 2) | (high[..., 2, :] << 4)
              | (high[..., 3, :] << 6)).reshape(rows, nb, 64)
        parts = [ql.astype(np.uint8), qh.astype(np.uint8),
                 st["sc"].reshape(rows, nb, 16).astype(np.int8).view(np.uint8), d]
    else:
        raise ValueError(f"no block layout for {t.name}")
    out = np.concatenate(parts, axis=-1)
    assert out.shape[-1] == t.nbytes, (t.name, out.shape)
    return np.ascontiguousarray(out.reshape(rows, nb * t.nbytes))
