"""Ctrl-C during a search: remembered, so that a KeyboardInterrupt a library wrapped in another
exception (pydantic does, when it lands inside a serializer) still ends the search as KILLED.

Python runs the handler between any two bytecodes of the main thread, finalizers included: a
KeyboardInterrupt raised inside a ``__del__`` (distributed's ``Future.__del__`` releasing a key, a
weakref callback) is printed as "Exception ignored" and lost, and the search went on to its end
with status 0 (CI, 2026-12-04). There the interrupt is delivered again a moment later instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_SIGINT = threading.Event()

#: How soon an interrupt that landed in a finalizer is delivered again.
REDELIVER_S = 0.05


def _on_sigint(signum, frame):
    _SIGINT.set()
    if _in_finalizer(frame):
        threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signal.SIGINT)).start()
        return
    raise KeyboardInterrupt


def _in_finalizer(frame) -> bool:
    """Whether ``frame`` runs inside a ``__del__`` or a weakref finalizer, where an exception is
    printed and dropped."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or (
            code.co_name == "__call__" and code.co_filename.endswith("weakref.py")
        ):
            return True
        frame = frame.f_back
    return False


def interrupted() -> bool:
    """True once Ctrl-C reached the search (see :func:`watching_sigint`), or while a
    KeyboardInterrupt is being handled."""
    return _SIGINT.is_set() or isinstance(sys.exc_info()[1], KeyboardInterrupt)


class watching_sigint:  # noqa: N801 - used as a context manager, named like one
    """For the block: Ctrl-C raises KeyboardInterrupt and is remembered (from the main thread
    only: elsewhere Python delivers no signal)."""

    def __enter__(self):
        _SIGINT.clear()
        self._main = threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(signal.SIGINT, _on_sigint) if self._main else None
        return self

    def __exit__(self, *exc):
        if self._main:
            signal.signal(signal.SIGINT, self._previous)
        return False
