"""Measure the peak memory growth of a block of code, in this process (tests, benchmarks).

Torch keeps no statistics for CPU memory, so :class:`PeakMemory` samples the bytes
allocated through malloc (glibc's ``mallinfo2``: arena blocks in use plus mmapped
blocks, which is where torch's CPU tensors live) from a background thread every
``interval`` seconds and reports the peak above the level at entry. Live bytes, unlike
the resident set size, do not depend on whether freed pages are reused, so earlier code
in the same process does not hide this block's growth. Where ``mallinfo2`` is missing it
falls back to the resident set size after ``malloc_trim(0)``. Long-lived allocations (the model
copies a soup method holds) are caught reliably; spikes shorter than ``interval`` may
be missed, so use it to compare methods, not to size machines.

>>> with PeakMemory() as peak:
...     block = bytearray(64 << 20)
>>> peak.peak_bytes > 32 << 20
True
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _mallinfo2()


def allocated_bytes() -> int:
    """Bytes currently allocated through malloc (or the resident set size without glibc)."""
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        return info.uordblks + info.hblkhd
    return resident_bytes()


def resident_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def trim_heap() -> None:
    """Return freed heap memory to the system (glibc only; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager: ``peak_bytes`` = peak allocated bytes inside the block minus those at entry."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_bytes(self) -> int:
        return max(0, self.peak - self.baseline)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, allocated_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        import gc

        gc.collect()
        trim_heap()
        self.baseline = self.peak = allocated_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, allocated_bytes())
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
