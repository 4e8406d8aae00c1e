"""SIGTERM handled like Ctrl-C, so a terminated run cleans up as an interrupted one does.

``kill PID``, a batch scheduler's time limit and ``torchrun`` stopping the other processes
after one failed all send SIGTERM. Python's default is to die on the spot, leaving the
staging folder behind; raised as :class:`Terminated` (a ``KeyboardInterrupt``) it unwinds
through the same ``finally`` / ``except BaseException`` blocks.

>>> with sigterm_as_interrupt():
...     pass
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _raise(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
