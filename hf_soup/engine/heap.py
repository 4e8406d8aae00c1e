"""Keep freed working arrays in the heap, so the next block's temporaries do not fault in fresh pages.

Methods whose math allocates many temporaries per block (TIES's sign election: about 20 float64
arrays of 1 MiB per 128 Ki-element block) otherwise get each from ``mmap`` and give it back
with ``munmap`` — when glibc's adaptive threshold is off, as it is in this process — and pay
a page fault per 4 KiB (TIES at the 0.31 B shape: 8.4 of 40 CPU seconds in the kernel, 3.5
with this). :func:`keep_freed_blocks` takes blocks below 4 MiB from the heap and keeps at
most 8 MiB of free heap (larger thresholds, as glibc's adaptive rule would reach, kept
70 MB more resident); elsewhere (no glibc) it does nothing. Process-wide, set once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_BELOW, _TRIM_ABOVE = 4 << 20, 8 << 20
_done = False
_lock = threading.Lock()


def keep_freed_blocks() -> bool:
    """Apply the thresholds once per process; ``True`` when glibc took them."""
    global _done
    with _lock:
        if _done:
            return True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))
        return _done


__all__ = ["keep_freed_blocks"]
