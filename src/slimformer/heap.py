"""Giving freed heap memory back to the operating system (between blocks, after Hessian inversions).

The engine allocates and frees many same-sized multi-megabyte tensors per block (activations,
per-window Gram products, Hessian factorizations). glibc's malloc raises its mmap threshold
after such frees, so later tensors of those sizes come from the heap arenas instead of fresh
mappings; once freed they stay resident as free heap. Measured on SmolLM2 with SparseGPT (64
windows): live tensors grew by ~250 MiB over the stage while freed-but-resident heap grew by
~380 MiB. `malloc_trim(0)` returns those free pages; it costs a few milliseconds per call.
Elsewhere (macOS, musl, Windows) this is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_heap() -> bool:
    """Returns freed heap pages to the OS where the C library allows it; True if it ran."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
