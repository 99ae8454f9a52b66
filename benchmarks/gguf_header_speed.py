"""Reading a GGUF header: slimformer's reader (model/gguf_header.py) against the gguf package's
GGUFReader, on the embedded models' files, same process (`cd benchmarks && python gguf_header_speed.py`)."""
from __future__ import annotations

import time

from gguf import GGUFReader

from slimformer.model.gguf_header import read_header
from slimformer.model.sources import resolve


def main() -> None:
    for alias in ("smollm2", "gemma3"):
        path = resolve(alias).location
        t0 = time.perf_counter()
        read_header(path)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        GGUFReader(str(path))
        theirs = time.perf_counter() - t0
        print(f"{alias}: read_header {ours:.2f} s, GGUFReader {theirs:.2f} s ({theirs / ours:.0f}x)")


if __name__ == "__main__":
    main()
