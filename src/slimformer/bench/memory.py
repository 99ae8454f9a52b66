"""Peak resident memory of this process while a block of code runs (sampled in a thread).

The start is taken after freed heap memory is returned to the OS (heap.release_free_heap):
otherwise the increase would depend on how much garbage earlier work left resident, which
the measured code may silently reuse (SparseGPT's figure moved by 2x between runs that
differed only in what ran before)."""
from __future__ import annotations

import threading

import psutil

from ..heap import release_free_heap


class RssPeak:
    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssPeak":
        release_free_heap()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def increase(self) -> int:
        return self.peak - self.start
